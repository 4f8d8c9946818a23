"""The notebook itself, run headless on a small subset: determinism, resume, failing well.

Each test executes the real notebook (nothing copied out of it) in a fresh kernel with a few
`VAE_*` settings, the way a user would with `VAE_EPOCHS=2 python3 tasks.py run`.
"""

import json

import nbclient
import nbformat
import pytest
import torch
from conftest import REPO

QUICK = {"VAE_TRAIN_SIZE": "1536", "VAE_TEST_SIZE": "256", "VAE_IW_SAMPLES": "2"}


def run_notebook(monkeypatch, results, mnist_root, **settings):
    """Execute the notebook with these settings; return the executed notebook."""
    for key, value in {**QUICK, **settings, "VAE_RESULTS_DIR": str(results),
                       "VAE_DATA_DIR": str(mnist_root)}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(REPO / "Variational_autoencoder.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(REPO)}})
    client.execute()
    return nb


def metrics_without_timings(results):
    metrics = json.loads((results / "metrics.json").read_text())
    for row in metrics["epochs"]:
        row.pop("seconds")
    metrics.pop("provenance")
    metrics["settings"].pop("results_dir")
    metrics["settings"].pop("resume")
    return metrics


def weights(results):
    return torch.load(results / "checkpoint.pt", weights_only=True)["model"]


def test_two_runs_with_the_same_seed_give_identical_numbers(monkeypatch, tmp_path, mnist_root):
    run_notebook(monkeypatch, tmp_path / "a", mnist_root, VAE_EPOCHS="1")
    run_notebook(monkeypatch, tmp_path / "b", mnist_root, VAE_EPOCHS="1")
    first, second = metrics_without_timings(tmp_path / "a"), metrics_without_timings(tmp_path / "b")
    assert first == second  # bit-identical floats, as JSON writes them
    assert (tmp_path / "a" / "samples.png").read_bytes() == (tmp_path / "b" / "samples.png").read_bytes()


def test_resuming_gives_the_same_weights_as_an_uninterrupted_run(monkeypatch, tmp_path, mnist_root):
    run_notebook(monkeypatch, tmp_path / "straight", mnist_root, VAE_EPOCHS="2")
    run_notebook(monkeypatch, tmp_path / "resumed", mnist_root, VAE_EPOCHS="1")
    nb = run_notebook(monkeypatch, tmp_path / "resumed", mnist_root, VAE_EPOCHS="2", VAE_RESUME="1")
    assert any("resuming after epoch 1" in json.dumps(cell.get("outputs", [])) for cell in nb.cells)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert metrics_without_timings(tmp_path / "straight") == metrics_without_timings(tmp_path / "resumed")


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(monkeypatch, tmp_path, mnist_root):
    results = tmp_path / "run"
    run_notebook(monkeypatch, results, mnist_root, VAE_EPOCHS="1")
    # A finite checkpoint whose log-variance head overflows exp() on the first batch of epoch 2.
    state = torch.load(results / "checkpoint.pt", weights_only=True)
    state["model"]["fc_log_var.bias"].fill_(100.0)
    torch.save(state, results / "checkpoint.pt")
    good = (results / "checkpoint.pt").read_bytes()
    with pytest.raises(nbclient.exceptions.CellExecutionError) as error:
        run_notebook(monkeypatch, results, mnist_root, VAE_EPOCHS="2", VAE_RESUME="1")
    assert "NonFiniteLossError" in str(error.value)
    assert "at epoch 2, batch 1 of 12" in str(error.value)
    assert (results / "checkpoint.pt").read_bytes() == good


def test_a_bad_setting_stops_the_notebook_before_any_work(monkeypatch, tmp_path, mnist_root):
    with pytest.raises(nbclient.exceptions.CellExecutionError) as error:
        run_notebook(monkeypatch, tmp_path / "run", mnist_root, VAE_BATCH_SIZE="0")
    assert "SettingsError" in str(error.value) and "batch_size must be a whole number >= 1" in str(error.value)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_from_other_settings_is_refused_on_resume(monkeypatch, tmp_path, mnist_root):
    results = tmp_path / "run"
    run_notebook(monkeypatch, results, mnist_root, VAE_EPOCHS="1")
    with pytest.raises(nbclient.exceptions.CellExecutionError) as error:
        run_notebook(monkeypatch, results, mnist_root, VAE_EPOCHS="2", VAE_RESUME="1", VAE_LATENT_DIM="8")
    assert "CheckpointError" in str(error.value) and "latent_dim: checkpoint 20, now 8" in str(error.value)
