"""The notebook itself, run headless on a small subset, as a user runs it.

Each test executes the real notebook (nothing copied out of it) in a fresh kernel with a few
`VAE_*` settings, through nbclient or through `python3 tasks.py run`, and checks what the user
sees: the files, the messages, the exit status.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import nbclient
import psutil
import pytest
import torch

from conftest import REPO, run_notebook, tasks

pytestmark = pytest.mark.slow


def metrics_without_timings(results):
    metrics = json.loads((results / "metrics.json").read_text())
    for row in metrics["epochs"]:
        row.pop("seconds")
    for key in ("provenance", "resumed"):
        metrics.pop(key)
    for key in ("results_dir", "resume"):
        metrics["settings"].pop(key)
    return metrics


def weights(results):
    return torch.load(results / "checkpoint.pt", weights_only=True)["model"]


def test_two_runs_with_the_same_seed_give_identical_numbers(quick_env, tmp_path):
    run_notebook(quick_env, tmp_path / "a", epochs=1)
    run_notebook(quick_env, tmp_path / "b", epochs=1)
    assert metrics_without_timings(tmp_path / "a") == metrics_without_timings(tmp_path / "b")
    for figure in ("samples.png", "manifold.png"):
        assert (tmp_path / "a" / figure).read_bytes() == (tmp_path / "b" / figure).read_bytes()


def test_resuming_gives_the_same_weights_as_an_uninterrupted_run_and_records_what_changed(quick_env, tmp_path):
    run_notebook(quick_env, tmp_path / "straight", epochs=2)
    run_notebook(quick_env, tmp_path / "resumed", epochs=1)
    nb = run_notebook(quick_env, tmp_path / "resumed", epochs=2, resume=1, iw_samples=3)
    assert any("resuming after epoch 1" in json.dumps(cell.get("outputs", [])) for cell in nb.cells)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    first, second = metrics_without_timings(tmp_path / "straight"), metrics_without_timings(tmp_path / "resumed")
    assert first["epochs"] == second["epochs"]
    record = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["resumed"]
    assert record == [{"after_epoch": 1, "changed": {"epochs": [1, 2], "iw_samples": [2, 3]}}]


def test_given_weights_skip_training_and_give_the_same_evaluation(quick_env, tmp_path):
    run_notebook(quick_env, tmp_path / "trained", epochs=1)
    nb = run_notebook(quick_env, tmp_path / "from-weights", weights=tmp_path / "trained" / "vae.pt")
    assert any("no training: evaluating the weights" in json.dumps(c.get("outputs", [])) for c in nb.cells)
    trained = json.loads((tmp_path / "trained" / "metrics.json").read_text())["evaluation"]
    given = json.loads((tmp_path / "from-weights" / "metrics.json").read_text())["evaluation"]
    assert given == trained
    assert not (tmp_path / "from-weights" / "checkpoint.pt").exists()


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(quick_env, tmp_path):
    results = tmp_path / "run"
    run_notebook(quick_env, results, epochs=1)
    # A finite checkpoint whose log-variance head overflows exp() on the first batch of epoch 2.
    state = torch.load(results / "checkpoint.pt", weights_only=True)
    state["model"]["fc_log_var.bias"].fill_(100.0)
    torch.save(state, results / "checkpoint.pt")
    good = (results / "checkpoint.pt").read_bytes()
    with pytest.raises(nbclient.exceptions.CellExecutionError) as error:
        run_notebook(quick_env, results, epochs=2, resume=1)
    assert error.value.ename == "NonFiniteLossError"
    assert "at epoch 2, batch 1 of 12" in error.value.evalue and "VAE_LR=0.0001" in error.value.evalue
    assert (results / "checkpoint.pt").read_bytes() == good


def test_a_divergence_on_the_last_step_of_an_epoch_is_never_checkpointed(quick_env, tmp_path):
    results = tmp_path / "run"
    one_batch = {"train_size": 100}  # one step per epoch: the first step is also the last
    run_notebook(quick_env, results, epochs=1, **one_batch)
    # Adam's first moment of fc_mu.bias (parameter 5) is infinite: the loss of the step is finite,
    # the update after it is not.
    state = torch.load(results / "checkpoint.pt", weights_only=True)
    state["optimizer"]["state"][5]["exp_avg"].fill_(float("inf"))
    torch.save(state, results / "checkpoint.pt")
    good = (results / "checkpoint.pt").read_bytes()
    with pytest.raises(nbclient.exceptions.CellExecutionError) as error:
        run_notebook(quick_env, results, epochs=2, resume=1, **one_batch)
    assert error.value.ename == "NonFiniteLossError"
    assert "at epoch 2, in the evaluation after it" in error.value.evalue
    assert (results / "checkpoint.pt").read_bytes() == good


def test_a_bad_setting_is_refused_in_one_line_before_any_work(quick_env, tmp_path):
    run = tasks("run", env={**quick_env, "VAE_EPOCHS": "0", "VAE_RESULTS_DIR": str(tmp_path / "run")})
    assert run.returncode != 0
    assert run.stderr.strip() == "error: SettingsError: epochs must be a whole number >= 1; got 0 (from VAE_EPOCHS)."
    assert "Traceback" not in run.stdout + run.stderr
    assert not (tmp_path / "run").exists()


def test_in_jupyter_a_bad_setting_stops_the_notebook_in_its_settings_cell(quick_env, tmp_path):
    with pytest.raises(nbclient.exceptions.CellExecutionError) as error:
        run_notebook(quick_env, tmp_path / "run", batch_size=0)
    assert error.value.ename == "SettingsError" and "batch_size must be a whole number >= 1" in error.value.evalue
    assert not (tmp_path / "run").exists()


def test_a_failure_in_a_cell_ends_with_the_error_the_cell_and_the_executed_notebook(quick_env, tmp_path):
    results = tmp_path / "run"
    env = {**quick_env, "VAE_RESULTS_DIR": str(results), "VAE_EPOCHS": "1"}
    assert tasks("run", env=env).returncode == 0
    state = torch.load(results / "checkpoint.pt", weights_only=True)
    state["model"]["fc_log_var.bias"].fill_(100.0)
    torch.save(state, results / "checkpoint.pt")
    run = tasks("run", env={**env, "VAE_EPOCHS": "2", "VAE_RESUME": "1"})
    assert run.returncode == 1 and "Traceback" not in run.stdout + run.stderr
    first, second = run.stderr.strip().splitlines()
    assert first.startswith("error: NonFiniteLossError: The loss became NaN or infinite at epoch 2, batch 1 of 12")
    notebook = results / "Variational_autoencoder.ipynb"
    assert second == f"  in code cell [14] (Training); the executed notebook: {notebook}"
    assert "NonFiniteLossError" in notebook.read_text()


def test_a_headless_run_shows_each_section_and_epoch_as_it_happens(quick_env, tmp_path):
    env = {**quick_env, "VAE_RESULTS_DIR": str(tmp_path / "run"), "VAE_EPOCHS": "2"}
    lines = []
    with subprocess.Popen(["python3", "tasks.py", "run"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) as run:
        for line in run.stdout:
            lines.append((time.perf_counter(), line))
    assert run.returncode == 0
    text = "".join(line for _, line in lines)
    for section in ("-- Settings", "-- Training", "-- How good is the model?", "-- Sampling new digits"):
        assert section in text
    arrival = {key: next(t for t, line in lines if key in line) for key in ("epoch  1", "epoch  2", "done:")}
    assert arrival["epoch  1"] < arrival["epoch  2"] < arrival["done:"]  # streamed, not printed at the end
    assert arrival["done:"] - arrival["epoch  1"] > 0.5


def test_ctrl_c_stops_the_kernel_keeps_the_checkpoint_and_prints_one_line(quick_env, tmp_path):
    results = tmp_path / "run"
    env = {**quick_env, "VAE_RESULTS_DIR": str(results), "VAE_EPOCHS": "500"}
    run = subprocess.Popen(["python3", "tasks.py", "run"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (results / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    kernels = [p for p in psutil.Process(run.pid).children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]
    assert kernels, "no kernel is running"
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in out + err
    last = err.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("interrupted: the kernel is stopped; ")
    epoch = torch.load(results / "checkpoint.pt", weights_only=True)["epoch"]
    assert f"keeps epoch {epoch}: run the same command with VAE_RESUME=1 to continue." in last[0]
    psutil.wait_procs(kernels, timeout=10)
    assert not any(p.is_running() for p in kernels)
    assert not list(results.glob(".*.tmp"))


def test_the_readme_experiment_leaves_the_committed_record_untouched(quick_env, tmp_path):
    """`VAE_EPOCHS=1 python3 tasks.py run` in a fresh copy of the repo, then `git status`."""
    copy = tmp_path / "repo"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).exists():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=copy, check=True)
    subprocess.run([*git, "add", "-A"], cwd=copy, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=copy, check=True)
    env = {**quick_env, "VAE_EPOCHS": "1", "VENV_DIR": str(REPO / ".venv")}
    run = tasks("run", env=env, cwd=copy)
    assert run.returncode == 0, run.stderr
    status = subprocess.run(["git", "status", "--porcelain"], cwd=copy, capture_output=True, text=True).stdout
    assert status == ""
    (folder,) = (copy / "runs").iterdir()
    assert folder.name == "epochs=1,iw_samples=2,train_size=1536,test_size=256"
    for made in ("Variational_autoencoder.ipynb", "metrics.json", "samples.png", "vae.pt"):
        assert (folder / made).is_file()
