"""harness.settings: every setting checked before any work, each refusal naming the setting and
what it accepts; headless runs pass them as the notebook's parameters."""

from pathlib import Path

import nbformat
import pytest
import torch

from conftest import REPO, claim, load
from harness import files, folders, settings


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
    in_code = folders.resolve(notebook, {"VAE_EPOCHS": "3"}, claim_folder=False)
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
        ({"VAE_Epochs": "2"}, "VAE_Epochs is not a setting. The settings are: VAE_SEED"),
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
        ({"VAE_BETA": "1e-320"}, "got 1e-320, subnormal: a kernel reads it as 0 (from VAE_BETA)"),
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
        folders.resolve({"epochs": 2.5}, {}, claim_folder=False)


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


def test_a_path_given_from_the_home_folder_is_read_there_as_in_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "vae.pt").write_bytes(b"")  # a file is all `read` asks of weights
    given = {"data_dir": "~/mnist", "results_dir": "~/out", "weights": "~/vae.pt"}
    read = settings.read(given, environ={})
    assert [read.data_dir, read.results_dir, read.weights] == [str(tmp_path / p) for p in ("mnist", "out", "vae.pt")]


def test_headless_passes_the_spec_runs_machine_settings_as_variables_and_an_experiments_as_papermill_does(
    monkeypatch, tmp_path
):
    from harness import headless

    seen = []

    def execute(client, env):  # what the kernel would get; JPY_SESSION_NAME names the cells it runs, as they are
        named = Path(env.pop("JPY_SESSION_NAME"))
        assert named.name == headless.NOTEBOOK.name and nbformat.read(named, as_version=4).cells == client.nb.cells
        seen.append({"env": env, "nb": client.nb})

    monkeypatch.setattr(headless.LiveClient, "execute", execute)
    monkeypatch.setattr(headless, "write_notebook", lambda nb, path: seen[-1].update(path=path))
    quiet = {"environ": {"PATH": "x", "VAE_EPOCHS": "3"}, "echo": lambda text: None}
    headless.execute({"data_dir": str(tmp_path), "device": "cpu"}, **quiet)
    spec_run = seen[-1]
    assert spec_run["env"] == {"PATH": "x", "VAE_DATA_DIR": str(tmp_path), "VAE_DEVICE": "cpu"}
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in spec_run["nb"].cells)
    assert spec_run["path"] == headless.NOTEBOOK
    headless.execute({"data_dir": str(tmp_path), "epochs": 2, "name": "two"}, **quiet)
    experiment = seen[-1]
    (injected,) = [c for c in experiment["nb"].cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "epochs = 2" in injected.source and f'results_dir = "{REPO / "runs" / "two"}"' in injected.source
    assert experiment["env"] == {"PATH": "x"} and experiment["path"] == REPO / "runs" / "two" / headless.NOTEBOOK.name


@pytest.mark.filterwarnings("ignore")  # torch's on loading sparse and making quantised tensors
@pytest.mark.parametrize(
    "tensor",
    [
        lambda: [1, 2],  # not a tensor
        lambda: torch.eye(3).to_sparse(),
        lambda: torch.zeros(3, device="meta"),
        lambda: torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.quint8),
    ],
    ids=["list", "sparse", "meta", "quantised"],
)
def test_a_weights_file_that_is_not_one_is_refused_before_any_folder_is_made(tmp_path, tensor):
    files.save_checkpoint(tmp_path / "vae.pt", {"model": tensor()})
    with pytest.raises(settings.SettingsError, match="is not a weights file"):
        claim(VAE_WEIGHTS=str(tmp_path / "vae.pt"), VAE_RESULTS_DIR=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
