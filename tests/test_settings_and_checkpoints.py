"""Settings are checked before any work; checkpoints are loaded safely or refused clearly."""

import pytest
import torch
from conftest import RunsCode

import vae_utils

DEFAULTS = {
    "seed": 0, "epochs": 20, "batch_size": 128, "lr": 1e-3, "latent_dim": 20, "device": "auto",
    "likelihood": "bernoulli", "iw_samples": 50, "train_size": 60_000, "test_size": 10_000,
    "data_dir": "data", "results_dir": "results", "resume": False, "deterministic": False,
}


def load(**environ):
    return vae_utils.load_settings(environ, **DEFAULTS)


def test_defaults_and_overrides():
    settings = load(VAE_EPOCHS="2", VAE_LR="0.01", VAE_RESUME="1", VAE_LIKELIHOOD="binarized", PATH="/bin")
    assert (settings.epochs, settings.lr, settings.resume, settings.likelihood) == (2, 0.01, True, "binarized")
    assert settings.batch_size == 128 and settings.deterministic is False


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"VAE_EPOCHS": "-1"}, "epochs must be a whole number >= 1, got -1 (from VAE_EPOCHS)"),
        ({"VAE_BATCH_SIZE": "0"}, "batch_size must be a whole number >= 1, got 0"),
        ({"VAE_DEVICE": "tpu"}, "device must be one of auto, cpu, cuda, mps or cuda:N; got 'tpu'"),
        ({"VAE_LIKELIHOOD": "gaussian"}, "likelihood must be one of bernoulli, continuous_bernoulli, binarized"),
        ({"VAE_LR": "0"}, "lr must be a finite number > 0"),
        ({"VAE_EPOCHS": "ten"}, "VAE_EPOCHS='ten' is not valid: epochs takes a whole number"),
        ({"VAE_RESUME": "maybe"}, "resume takes 1/0, true/false, yes/no"),
        ({"VAE_TRAIN_SIZE": "70000"}, "train_size must be between 1 and 60000"),
        ({"VAE_EPOCH": "5"}, "VAE_EPOCH is not a setting. The settings are: VAE_SEED, VAE_EPOCHS"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_and_the_accepted_values(environ, words):
    with pytest.raises(vae_utils.SettingsError) as error:
        load(**environ)
    assert words in str(error.value)


def test_an_unavailable_device_is_refused_up_front():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(vae_utils.SettingsError, match="not available on this machine; use VAE_DEVICE=auto or cpu"):
        load(VAE_DEVICE="cuda")


# ---- checkpoints ----------------------------------------------------------------------------
def checkpoint_state(settings):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3,
            "metrics": [{"epoch": 1, "test_loss": 1.5}], "settings": vars(settings),
            "rng": torch.Generator().manual_seed(0).get_state()}


def test_a_checkpoint_round_trips(tmp_path):
    settings = load()
    path = vae_utils.save_checkpoint(tmp_path / "checkpoint.pt", checkpoint_state(settings))
    state = vae_utils.load_checkpoint(path, settings)
    assert state["epoch"] == 3 and state["metrics"][0]["test_loss"] == 1.5
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_checkpoint_from_other_settings_is_refused_naming_the_difference(tmp_path):
    path = vae_utils.save_checkpoint(tmp_path / "checkpoint.pt", checkpoint_state(load()))
    with pytest.raises(vae_utils.CheckpointError) as error:
        vae_utils.load_checkpoint(path, load(VAE_LATENT_DIM="10", VAE_LR="0.01"))
    assert "latent_dim: checkpoint 20, now 10" in str(error.value)
    assert "lr: checkpoint 0.001, now 0.01" in str(error.value)


def test_a_checkpoint_past_the_requested_epochs_is_refused(tmp_path):
    path = vae_utils.save_checkpoint(tmp_path / "checkpoint.pt", checkpoint_state(load()))
    with pytest.raises(vae_utils.CheckpointError, match="set VAE_EPOCHS to at least 3"):
        vae_utils.load_checkpoint(path, load(VAE_EPOCHS="2"))


def test_a_tampered_checkpoint_is_refused_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": RunsCode(marker)}, path)
    with pytest.raises(vae_utils.CheckpointError, match="is not a loadable checkpoint"):
        vae_utils.load_checkpoint(path, load())
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_a_foreign_or_empty_file_is_refused(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(vae_utils.CheckpointError, match="Delete it to start afresh"):
        vae_utils.load_checkpoint(path, load())


def test_a_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(vae_utils.CheckpointError, match="not a checkpoint of this notebook"):
        vae_utils.load_checkpoint(path, load())


def test_the_non_finite_error_names_epoch_batch_and_checkpoint(tmp_path):
    error = vae_utils.NonFiniteLossError(2, 7, 469, tmp_path / "checkpoint.pt")
    assert "epoch 2, batch 7 of 469" in str(error) and "No checkpoint had been written yet" in str(error)
    assert vae_utils.first_nonfinite(torch.tensor([1.0, 2.0, float("nan"), float("inf")])) == 3
    assert vae_utils.first_nonfinite(torch.tensor([1.0, 2.0])) is None
