"""harness.folders: a run's folder chosen by one rule, one writer per folder, and a folder that holds
another run (or an unfinished one, or files no run made) never overwritten."""

import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO, checkpoint_state, claim, holding_lock, load, record
from harness import files, fingerprint, folders, settings


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
    assert load(VAE_WEIGHTS="results/vae.pt").results_dir == "runs/weights=results-vae.pt"  # two runs' vae.pt: two
    iwae5 = load(VAE_WEIGHTS=str(REPO / "results/studies/burda540/iwae5/vae.pt"), VAE_LIKELIHOOD="binarized")
    assert iwae5.results_dir == "runs/likelihood=binarized,weights=iwae5-vae.pt"


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
    assert load(VAE_RESULTS_DIR=str(REPO / "results")).results_dir == load().results_dir  # the spec's run, named


@pytest.mark.parametrize("run", ["seeds/seed1", "dreg540/iwae5_dreg"])  # made before fingerprints, by this code
def test_a_committed_study_runs_finished_record_is_kept_from_a_run_given_its_folder(run):
    folder = REPO / "results/studies" / run
    saved = files.read_metrics(folder)["settings"]
    given = {f"VAE_{k.upper()}": str(v) for k, v in saved.items() if k in settings.SPEC}  # the run's own settings
    with pytest.raises(settings.SettingsError, match=f"studies/{run} holds a finished run of a committed study"):
        folders.check_folder(load(**given, VAE_RESULTS_DIR=str(folder)), folder)


def test_a_results_folder_that_cannot_be_made_is_refused_in_one_line_in_the_systems_words(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(settings.SettingsError, match=r"results_dir=.*file/run: Not a directory\.$"):
        claim(VAE_RESULTS_DIR=str(a_file / "run"))
    with pytest.raises(settings.SettingsError, match=r"results_dir=.*: File name too long\.$"):
        claim(VAE_RESULTS_DIR=str(tmp_path / ("x" * 300)))


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
    files.write_json(results / "metrics.json", record(vars(load(VAE_LR="0.01", **folder))))
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


def test_the_same_process_may_claim_its_folder_again_and_gives_up_the_old_one_for_a_new_only(tmp_path):
    claim(VAE_RESULTS_DIR=str(tmp_path / "a"))
    claim(VAE_RESULTS_DIR=str(tmp_path / "a"))  # a cell run twice
    claim(VAE_RESULTS_DIR=str(tmp_path / "b"))  # settings changed in the same kernel
    assert list(files.HELD) == [(tmp_path / "b").resolve()]
    files.write_json(tmp_path / "b" / "metrics.json", record(vars(load(VAE_RESULTS_DIR=str(tmp_path / "b")))))
    files.write_json(tmp_path / "c" / "metrics.json", record(vars(load(VAE_LR="0.01"))))
    for refused, lr in (("c", "0.001"), ("b", "0.01")):  # another run's folder; b's own, other settings: b stays held
        with pytest.raises(settings.SettingsError, match="holds a run with other settings"):
            claim(VAE_RESULTS_DIR=str(tmp_path / refused), VAE_LR=lr)
        assert list(files.HELD) == [(tmp_path / "b").resolve()]
    with holding_lock(tmp_path / "d"), pytest.raises(settings.SettingsError, match="is in use by"):
        claim(VAE_RESULTS_DIR=str(tmp_path / "d"))
    assert list(files.HELD) == [(tmp_path / "b").resolve()]
    files.release_folders()


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


@pytest.mark.parametrize("where", ["results/data", ".", "harness", "data/../docs"])
def test_mnist_goes_nowhere_in_the_repository_but_under_data_or_runs(where):
    with pytest.raises(settings.SettingsError, match=rf"data_dir={re.escape(where)}: inside the repository MNIST goes"):
        load(VAE_DATA_DIR=where)
    assert load(VAE_DATA_DIR="runs/mnist").data_dir == "runs/mnist"


@pytest.mark.parametrize("where", ["a_file", "a_file/below"])
def test_a_data_dir_where_a_file_stands_in_the_way_is_refused_before_any_work(tmp_path, where):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(settings.SettingsError, match=r"a_file is a file, so MNIST/raw cannot be made there"):
        load(VAE_DATA_DIR=str(tmp_path / where))
    assert load(VAE_DATA_DIR=str(tmp_path / "new" / "folder")).data_dir == str(tmp_path / "new" / "folder")


# ---- what a hostile pass found ------------------------------------------------------------------
def test_a_folder_of_another_codes_run_is_refused_in_the_settings_cell_before_anything_is_written(folder):
    results = Path(folder["VAE_RESULTS_DIR"])
    other = {"fingerprint": "0123456789abcdef", "parts": {"vae_utils.py": "edited"}}
    files.write_json(results / "metrics.json", record(vars(load(**folder)), code=other))
    (results / "train_digits.png").write_bytes(b"the old run's")
    with pytest.raises(settings.SettingsError, match=r"holds a run of other code \(changed: .*vae_utils.py"):
        claim(**folder)
    assert (results / "train_digits.png").read_bytes() == b"the old run's"


def test_a_finished_run_is_evaluated_again_with_another_iw_samples_only_with_resume(folder):
    checkpoint = Path(folder["VAE_RESULTS_DIR"]) / "checkpoint.pt"
    files.save_checkpoint(checkpoint, checkpoint_state(load(**folder), epoch=20))
    assert claim(VAE_IW_SAMPLES="5", **folder).iw_samples == 5  # stopped in its evaluation: no record to keep yet
    files.write_json(checkpoint.parent / "metrics.json", record(vars(load(**folder)), fingerprint.code_of()))
    with pytest.raises(settings.SettingsError, match=r"other settings \(iw_samples: 50 there, 5 now\)"):
        claim(VAE_IW_SAMPLES="5", **folder)
    assert claim(VAE_IW_SAMPLES="5", VAE_RESUME="1", **folder).iw_samples == 5


def test_an_evaluation_of_weights_whose_file_changed_since_is_kept(folder, tmp_path):
    weights = files.save_weights(tmp_path / "trained" / "vae.pt", torch.nn.Linear(3, 2))
    given = {"VAE_WEIGHTS": str(weights), **folder}
    evaluated = vars(load(**given))
    made = record(evaluated, fingerprint.code_of(), weights_from={"sha256": folders.digest(weights)})
    files.write_json(Path(folder["VAE_RESULTS_DIR"]) / "metrics.json", made)
    assert claim(**given).weights == evaluated["weights"]  # the same file: evaluated again in place
    files.save_weights(weights, torch.nn.Linear(3, 2))  # retrained with another seed
    with pytest.raises(settings.SettingsError, match="holds the evaluation of other weights than"):
        claim(**given)


def test_the_same_weights_given_relative_or_absolute_are_one_setting(tmp_path, monkeypatch):
    weights = files.save_weights(REPO / "runs" / "test-weights" / "vae.pt", torch.nn.Linear(3, 2))
    try:
        monkeypatch.chdir(REPO)
        assert load(VAE_WEIGHTS="runs/test-weights/vae.pt").weights == load(VAE_WEIGHTS=str(weights)).weights
    finally:
        shutil.rmtree(weights.parent)


def test_weights_holding_nan_or_of_another_latent_size_are_refused_before_any_folder_is_made(tmp_path):
    model = torch.nn.ModuleDict({"fc_mu": torch.nn.Linear(3, 5)})  # a mean head of 5 outputs, no record beside
    weights = files.save_weights(tmp_path / "trained" / "vae.pt", model)
    with pytest.raises(settings.SettingsError, match=r"hold a model of latent_dim=5: set latent_dim to that"):
        claim(VAE_WEIGHTS=str(weights), VAE_RESULTS_DIR=str(tmp_path / "run"))
    scalar = files.save_checkpoint(tmp_path / "scalar.pt", {"fc_mu.bias": torch.tensor(1.0)})  # no latent size
    with pytest.raises(settings.SettingsError, match=r"hold a model of latent_dim=\(\): set latent_dim to that"):
        claim(VAE_WEIGHTS=str(scalar), VAE_RESULTS_DIR=str(tmp_path / "run"))
    with torch.no_grad():
        model.fc_mu.weight[0, 0] = float("nan")
    files.save_weights(weights, model)
    with pytest.raises(settings.SettingsError, match=r"holds NaN or infinite values \(in fc_mu.weight\)"):
        claim(VAE_WEIGHTS=str(weights), VAE_RESULTS_DIR=str(tmp_path / "run"), VAE_LATENT_DIM="5")
    assert not (tmp_path / "run").exists()
