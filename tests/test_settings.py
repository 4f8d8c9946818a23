"""harness.settings: every setting checked before any work, a run's folder chosen by one rule, one
writer per folder, and a folder that holds another run (or an unfinished one) never overwritten."""

import re
from pathlib import Path

import pytest
import torch

from conftest import REPO, checkpoint_state, claim, holding_lock, load
from harness import files, folders, settings


@pytest.fixture()
def folder(tmp_path):
    yield {"VAE_RESULTS_DIR": str(tmp_path / "run")}
    files.release_folders()


# ---- settings --------------------------------------------------------------------------------
def test_the_defaults_are_the_spec_and_go_to_results():
    s = load()
    assert {name: getattr(s, name) for name in settings.SPEC} == settings.SPEC
    assert (s.epochs, s.batch_size, s.lr, s.latent_dim) == (20, 128, 1e-3, 20)
    assert s.results_dir == "results" and settings.is_spec_run(s)


def test_the_environment_wins_over_the_parameters_cell_which_wins_over_the_defaults(folder):
    s = load(VAE_EPOCHS="2", VAE_LR="0.01", VAE_RESUME="1", VAE_LIKELIHOOD="binarized", **folder)
    assert (s.epochs, s.lr, s.resume, s.likelihood) == (2, 0.01, True, "binarized")
    notebook = {"epochs": 2, "batch_size": 64, "beta": 2, "resume": 1, "unrelated": "ignored", "lr": 1e-3}
    in_code = settings.resolve(notebook, {"VAE_EPOCHS": "3"}, claim_folder=False)
    assert (in_code.epochs, in_code.batch_size, in_code.beta, in_code.resume) == (3, 64, 2.0, True)


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"VAE_EPOCHS": "-1"}, "epochs must be a whole number >= 1; got -1 (from VAE_EPOCHS)"),
        ({"VAE_EPOCHS": "0"}, "epochs must be a whole number >= 1; got 0 (from VAE_EPOCHS)"),
        ({"VAE_BATCH_SIZE": "0"}, "batch_size must be a whole number >= 1; got 0"),
        ({"VAE_DEVICE": "tpu"}, "device must be auto, cpu, mps, cuda or cuda:N (N from 0 to 999); got 'tpu'"),
        ({"VAE_DEVICE": "cuda:99999999999999999999"}, "device must be auto, cpu, mps, cuda or cuda:N"),
        ({"VAE_DEVICE": "cuda:\u0661"}, "device must be auto, cpu, mps, cuda or cuda:N"),  # an Arabic-Indic one
        ({"VAE_NAME": "x" * 300}, "name must be a folder name of at most 100 letters"),
        ({"vae_epochs": "2"}, "vae_epochs is not a setting: environment variables are upper case, VAE_EPOCHS"),
        ({"Vae_Epoch": "2"}, "Vae_Epoch is not a setting. The settings are: VAE_SEED"),
        ({"VAE_LIKELIHOOD": "gaussian"}, "likelihood must be one of bernoulli, continuous_bernoulli, binarized"),
        ({"VAE_LR": "0"}, "lr must be a number > 0 and <= 0.01 (0.03 and more diverge"),
        ({"VAE_LR": "nan"}, "lr must be a number > 0 and <= 0.01"),
        ({"VAE_LR": "0.03"}, "lr must be a number > 0 and <= 0.01"),
        ({"VAE_EPOCHS": "ten"}, "VAE_EPOCHS='ten' is not valid: epochs takes a whole number >= 1"),
        ({"VAE_RESUME": "maybe"}, "resume takes True or False (1/0, yes/no in the environment)"),
        ({"VAE_TRAIN_SIZE": "70000"}, "train_size must be a whole number from 1 to 60000"),
        ({"VAE_TEST_SIZE": "5"}, "test_size must be a whole number from 6 to 10000"),
        ({"VAE_LATENT_DIM": "1"}, "latent_dim must be a whole number from 2 to 784"),
        ({"VAE_IW_SAMPLES": "100000"}, "iw_samples must be a whole number from 1 to 10000"),
        ({"VAE_SEED": str(2**64)}, "seed must be a whole number from 0 to 2**63 - 1"),
        ({"VAE_NAME": "../escape"}, "name must be a folder name"),
        ({"VAE_EPOCH": "5"}, "VAE_EPOCH is not a setting. The settings are: VAE_SEED, VAE_EPOCHS"),
        ({"VAE_WEIGHTS": "no/such/vae.pt"}, "weights=no/such/vae.pt: no such file"),
        ({"VAE_NAME": "a", "VAE_RESULTS_DIR": "/tmp/b"}, "set name (a folder under runs/) or results_dir, not both"),
        ({"VAE_OBJECTIVE": "vae"}, "objective must be elbo or iwae; got 'vae'"),
        ({"VAE_LR_SCHEDULE": "cosine"}, "lr_schedule must be constant or burda; got 'cosine'"),
        ({"VAE_BETA": "0"}, "beta must be a number > 0 and <= 100"),
        ({"VAE_BETA": "inf"}, "beta must be a number > 0 and <= 100"),
        ({"VAE_KL_WARMUP": "-1"}, "kl_warmup must be a whole number of epochs from 0 to epochs"),
        ({"VAE_KL_WARMUP": "30"}, "kl_warmup=30 is longer than the run (epochs=20)"),
        ({"VAE_TRAIN_SIZE": "5", "VAE_TRAIN_SAMPLES": "5"}, "train_samples=5 is the k of the iwae objective"),
        ({"VAE_OBJECTIVE": "iwae", "VAE_TRAIN_SAMPLES": "5", "VAE_BETA": "2"}, "iwae has no separate KL term"),
        ({"VAE_OBJECTIVE": "iwae", "VAE_KL_WARMUP": "5"}, "iwae has no separate KL term"),
        ({"VAE_OBJECTIVE": "iwae", "VAE_TRAIN_SAMPLES": "1000"}, "train_samples x batch_size = 128,000 decoder rows"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_and_what_it_accepts(environ, words):
    with pytest.raises(settings.SettingsError) as error:
        load(**environ)
    assert words in str(error.value)


def test_a_bad_value_in_the_parameters_cell_is_named_with_where_it_came_from():
    with pytest.raises(
        settings.SettingsError, match=r"epochs must be a whole number >= 1; got 2.5 \(from the parameters cell\)"
    ):
        settings.resolve({"epochs": 2.5}, {}, claim_folder=False)


def test_an_unavailable_device_is_refused_up_front():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(settings.SettingsError, match="not available on this machine; use device auto or cpu"):
        load(VAE_DEVICE="cuda:3")


def test_weights_cannot_be_combined_with_settings_of_training(tmp_path):
    weights = tmp_path / "vae.pt"
    weights.write_bytes(b"")
    with pytest.raises(settings.SettingsError, match="skips training, so epochs would change nothing"):
        load(VAE_WEIGHTS=str(weights), VAE_EPOCHS="3")
    with pytest.raises(settings.SettingsError, match="set resume to False"):
        load(VAE_WEIGHTS=str(weights), VAE_RESUME="1")
    with pytest.raises(settings.SettingsError, match="skips training, so beta, kl_warmup would change nothing"):
        load(VAE_WEIGHTS=str(weights), VAE_BETA="2", VAE_KL_WARMUP="1")
    with pytest.raises(settings.SettingsError, match="skips training, so lr_schedule would change nothing"):
        load(VAE_WEIGHTS=str(weights), VAE_LR_SCHEDULE="burda")


# ---- where a run writes ------------------------------------------------------------------------
def test_an_experiment_gets_a_folder_of_its_own_named_from_its_settings():
    assert load(VAE_EPOCHS="2", VAE_TRAIN_SIZE="1024").results_dir == "runs/epochs=2,train_size=1024"
    iwae = load(VAE_OBJECTIVE="iwae", VAE_TRAIN_SAMPLES="5", VAE_LIKELIHOOD="binarized")
    assert iwae.results_dir == "runs/likelihood=binarized,objective=iwae,train_samples=5"
    assert load(VAE_EPOCHS="2", VAE_NAME="short").results_dir == "runs/short"
    assert load(VAE_DEVICE="cpu").results_dir == "results"  # the device changes no setting of the spec
    long = load(VAE_EPOCHS="3", VAE_LR="0.002", VAE_BATCH_SIZE="64", VAE_LATENT_DIM="7", VAE_BETA="3.5",
                VAE_KL_WARMUP="2", VAE_TRAIN_SIZE="1000", VAE_TEST_SIZE="500", VAE_SEED="123456789")  # fmt: skip
    assert len(Path(long.results_dir).name) <= 100


@pytest.mark.parametrize(
    "where",
    [".", "./", "results", "results/", "results/figures", "results/studies", "results/studies/seeds",
     "results/studies/seeds/seed9", "tests", "README.md", "runs", "docs/../results"],
)  # fmt: skip
def test_an_experiment_writes_only_under_runs_or_outside_the_repository(where):
    with pytest.raises(settings.SettingsError) as error:
        load(VAE_EPOCHS="2", VAE_RESULTS_DIR=str(REPO / where))
    assert "inside the repository a run writes only under runs/" in str(error.value)
    assert "runs/epochs=2/" in str(error.value)


def test_a_study_run_may_write_its_own_folder_and_nothing_else():
    assert load(VAE_SEED="1", VAE_RESULTS_DIR=str(REPO / "results/studies/seeds/seed1")).seed == 1
    with pytest.raises(settings.SettingsError, match="writes only under runs/"):  # seed1's folder, seed 2's settings
        load(VAE_SEED="2", VAE_RESULTS_DIR=str(REPO / "results/studies/seeds/seed1"))
    assert load(VAE_RESULTS_DIR=str(REPO / "results")).results_dir == "results"  # the spec's run, named


def test_a_results_folder_that_is_a_file_or_not_writable_is_refused(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(settings.SettingsError, match=r"results_dir=.*file/run: .*file is not a folder"):
        load(VAE_RESULTS_DIR=str(a_file / "run"))
    monkeypatch.setattr(settings.os, "access", lambda path, mode: False)
    with pytest.raises(settings.SettingsError, match=r"results_dir=.*: .* is not writable"):
        load(VAE_RESULTS_DIR=str(tmp_path / "run"))


def test_an_unfinished_run_is_not_replaced_by_a_fresh_one(folder):
    checkpoint = Path(folder["VAE_RESULTS_DIR"]) / "checkpoint.pt"
    files.save_checkpoint(checkpoint, checkpoint_state(load(**folder), epoch=3))  # 3 of 20 epochs
    before = checkpoint.read_bytes()
    with pytest.raises(settings.SettingsError) as error:
        claim(**folder)
    assert "holds an unfinished run (epoch 3 of 20). To continue it set resume = True in the parameters cell" in str(
        error.value
    )
    assert "(headless: VAE_RESUME=1); to start afresh delete it" in str(error.value)
    assert checkpoint.read_bytes() == before
    assert claim(VAE_RESUME="1", **folder).resume


def test_a_finished_run_with_the_same_settings_may_be_run_again(folder):
    checkpoint = Path(folder["VAE_RESULTS_DIR"]) / "checkpoint.pt"
    files.save_checkpoint(checkpoint, checkpoint_state(load(**folder), epoch=20))
    assert claim(**folder).results_dir == folder["VAE_RESULTS_DIR"]


def test_a_folder_holding_a_run_with_other_settings_is_not_overwritten(folder):
    results = Path(folder["VAE_RESULTS_DIR"])
    files.write_json(
        results / "metrics.json", {"settings": vars(load(VAE_LR="0.01", **folder)), "code": None, "epochs": []}
    )
    with pytest.raises(settings.SettingsError, match=r"holds a run with other settings \(lr: 0.01 there, 0.001 now\)"):
        claim(**folder)


def test_a_checkpoint_from_other_settings_or_past_the_epochs_is_refused(folder):
    checkpoint = Path(folder["VAE_RESULTS_DIR"]) / "checkpoint.pt"
    files.save_checkpoint(checkpoint, checkpoint_state(load(**folder)))
    with pytest.raises(settings.SettingsError) as error:
        claim(
            VAE_LATENT_DIM="10", VAE_LR="0.01", VAE_LR_SCHEDULE="burda", VAE_TEST_SIZE="100", VAE_RESUME="1", **folder
        )
    for difference in (
        "latent_dim: 20 there, 10 now",
        "lr: 0.001 there, 0.01 now",
        "lr_schedule: 'constant' there, 'burda' now",
        "test_size: 10000 there, 100 now",
    ):
        assert difference in str(error.value)
    with pytest.raises(settings.SettingsError, match="is at epoch 3, past epochs=2; set epochs to at least 3"):
        claim(VAE_EPOCHS="2", VAE_RESUME="1", **folder)


def test_a_folder_in_use_by_another_process_is_refused_naming_it(folder):
    with holding_lock(folder["VAE_RESULTS_DIR"]) as holder, pytest.raises(settings.SettingsError) as error:
        claim(**folder)
    assert re.search(rf"is in use by process {holder.pid} \(.*python.*\)", str(error.value))
    assert claim(**folder).results_dir == folder["VAE_RESULTS_DIR"]  # the OS released it: no stale lock


def test_the_same_process_may_claim_its_folder_again_and_gives_up_the_old_one_for_a_new(tmp_path):
    claim(VAE_RESULTS_DIR=str(tmp_path / "a"))
    claim(VAE_RESULTS_DIR=str(tmp_path / "a"))  # a cell run twice
    claim(VAE_RESULTS_DIR=str(tmp_path / "b"))  # settings changed in the same kernel
    assert list(files.HELD) == [(tmp_path / "b").resolve()]
    files.release_folders()


def test_headless_passes_the_spec_runs_machine_settings_as_variables_and_an_experiments_as_papermill_does(
    monkeypatch, tmp_path
):
    from harness import headless

    seen = []
    monkeypatch.setattr(headless.LiveClient, "execute", lambda self, **kw: seen.append({**kw, "nb": self.nb}))
    monkeypatch.setattr(headless, "write_notebook", lambda nb, path: seen[-1].update(path=path))
    quiet = {"environ": {"PATH": "x", "VAE_EPOCHS": "3"}, "echo": lambda text: None}
    headless.execute({"data_dir": str(tmp_path), "device": "cpu"}, **quiet)
    spec_run = seen[-1]
    notebook = {"JPY_SESSION_NAME": str(headless.NOTEBOOK)}  # the notebook the kernel runs, named as Jupyter does
    assert spec_run["env"] == {"PATH": "x", "VAE_DATA_DIR": str(tmp_path), "VAE_DEVICE": "cpu", **notebook}
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in spec_run["nb"].cells)
    assert spec_run["path"] == headless.NOTEBOOK
    headless.execute({"data_dir": str(tmp_path), "epochs": 2, "name": "two"}, **quiet)
    experiment = seen[-1]
    (injected,) = [c for c in experiment["nb"].cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "epochs = 2" in injected.source and f'results_dir = "{REPO / "runs" / "two"}"' in injected.source
    assert (
        experiment["env"] == {"PATH": "x", **notebook}
        and experiment["path"] == REPO / "runs" / "two" / headless.NOTEBOOK.name
    )


# ---- nothing you made is replaced ------------------------------------------------------------------
def test_a_folder_holding_files_no_run_made_is_refused_and_left_as_it_was(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "Variational_autoencoder.ipynb").write_text("my edited copy")
    (mine / "samples.png").write_bytes(b"my picture")
    with pytest.raises(settings.SettingsError, match=r"holds files no run made \(Variational_autoencoder.ipynb, sa"):
        claim(VAE_RESULTS_DIR=str(mine))
    assert sorted(p.name for p in mine.iterdir()) == ["Variational_autoencoder.ipynb", "samples.png"]
    assert (mine / "samples.png").read_bytes() == b"my picture"
    assert claim(VAE_RESULTS_DIR=str(tmp_path / "empty")).results_dir == str(tmp_path / "empty")  # new: fine


@pytest.mark.parametrize("target", [".", "results", "results/studies/seeds/seed1", "docs"])
def test_a_name_that_leads_through_a_symlink_into_the_repository_is_refused(tmp_path, monkeypatch, target):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "link").symlink_to(REPO / target)
    monkeypatch.setattr(folders, "RUNS", runs)
    with pytest.raises(settings.SettingsError, match="inside the repository a run writes only under runs/"):
        load(VAE_NAME="link", VAE_SEED="2")
    (tmp_path / "outside").mkdir()
    (runs / "elsewhere").symlink_to(tmp_path / "outside")  # a folder of the user's, outside the repository: theirs
    assert load(VAE_NAME="elsewhere", VAE_SEED="2").results_dir == str(tmp_path / "outside")


def test_mnist_may_not_go_into_the_record():
    with pytest.raises(settings.SettingsError, match=r"data_dir=results/data: MNIST does not go into results/"):
        load(VAE_DATA_DIR="results/data")


def test_a_weights_file_that_is_not_one_is_refused_before_any_folder_is_made(tmp_path):
    files.save_checkpoint(tmp_path / "vae.pt", {"model": [1, 2]})
    with pytest.raises(settings.SettingsError, match="is not a weights file"):
        claim(VAE_WEIGHTS=str(tmp_path / "vae.pt"), VAE_RESULTS_DIR=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
