"""The notebook itself, run headless on a small subset, as a user runs it.

Each test executes the real notebook (nothing copied out of it) in a fresh kernel with a few
settings, through `headless.execute` or through `python3 tasks.py run`, and checks what the user
sees: the files, the messages, the exit status, and that nothing of a stopped run goes on.
"""

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import psutil
import pytest
import torch

from conftest import REPO, one_line, run_notebook, tasks, tracked_copy, wait_until, without_settings
from harness import fingerprint, headless, settings
from harness.run import epoch_line

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


def outputs(nb) -> str:
    return json.dumps([cell.get("outputs", []) for cell in nb.cells])


def test_two_runs_with_the_same_seed_give_identical_numbers(quick, tmp_path):
    run_notebook(quick, tmp_path / "a", epochs=1)
    run_notebook(quick, tmp_path / "b", epochs=1)
    assert metrics_without_timings(tmp_path / "a") == metrics_without_timings(tmp_path / "b")
    for figure in ("samples.png", "manifold.png"):
        assert (tmp_path / "a" / figure).read_bytes() == (tmp_path / "b" / figure).read_bytes()


@pytest.mark.parametrize(("lr_schedule", "epoch_2_rate"), [("constant", 1e-3), ("burda", 1e-3 * 10 ** (-1 / 7))])
def test_resuming_gives_the_same_weights_as_an_uninterrupted_run_and_records_what_changed(
    quick, tmp_path, lr_schedule, epoch_2_rate
):
    run_notebook(quick, tmp_path / "straight", epochs=2, lr_schedule=lr_schedule)
    run_notebook(quick, tmp_path / "resumed", epochs=1, lr_schedule=lr_schedule)
    nb = run_notebook(quick, tmp_path / "resumed", epochs=2, resume=True, iw_samples=3, lr_schedule=lr_schedule)
    for run in ("straight", "resumed"):  # Burda et al.'s schedule: epoch 2 is stage 1, at 10^(-1/7) of lr
        checkpoint = torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)
        assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(epoch_2_rate, rel=1e-12)
    assert "resuming after epoch 1" in outputs(nb)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    first, second = metrics_without_timings(tmp_path / "straight"), metrics_without_timings(tmp_path / "resumed")
    assert first["epochs"] == second["epochs"]
    record = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["resumed"]
    assert record == [{"after_epoch": 1, "changed": {"epochs": [1, 2], "iw_samples": [2, 3]}}]


def test_the_executed_notebook_of_an_experiment_records_its_settings_in_papermills_injected_cell(quick, tmp_path):
    nb = run_notebook(quick, tmp_path / "run", epochs=1)
    (injected,) = [cell for cell in nb.cells if "injected-parameters" in cell.metadata.get("tags", [])]
    assert "epochs = 1" in injected.source and "train_size = 1536" in injected.source
    assert nb.cells.index(injected) == 1 + next(i for i, c in enumerate(nb.cells) if c.get("id") == "parameters")


def test_given_weights_skip_training_and_give_the_same_evaluation(quick, tmp_path):
    run_notebook(quick, tmp_path / "trained", epochs=1)
    nb = run_notebook(quick, tmp_path / "from-weights", weights=str(tmp_path / "trained" / "vae.pt"))
    assert "no training: evaluating the weights" in outputs(nb)
    trained = json.loads((tmp_path / "trained" / "metrics.json").read_text())["evaluation"]
    given = json.loads((tmp_path / "from-weights" / "metrics.json").read_text())["evaluation"]
    assert given == trained
    assert not (tmp_path / "from-weights" / "checkpoint.pt").exists()


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(quick, tmp_path):
    results = tmp_path / "run"
    run_notebook(quick, results, epochs=1)
    # A finite checkpoint whose log-variance head overflows exp() on the first batch of epoch 2.
    state = torch.load(results / "checkpoint.pt", weights_only=True)
    good = {k: v.clone() for k, v in state["model"].items()}
    state["model"]["fc_log_var.bias"].fill_(100.0)
    torch.save(state, results / "checkpoint.pt")
    good = (results / "checkpoint.pt").read_bytes()
    with pytest.raises(headless.RunFailed) as error:
        run_notebook(quick, results, epochs=2, resume=True)
    assert error.value.ename == "NonFiniteLossError"
    assert "at epoch 2, batch 1 of 12" in str(error.value) and "lr = 0.0001 (VAE_LR=0.0001)" in str(error.value)
    assert (results / "checkpoint.pt").read_bytes() == good


def test_a_divergence_on_the_last_step_of_an_epoch_is_never_checkpointed(quick, tmp_path):
    results = tmp_path / "run"
    one_batch = {"train_size": 100}  # one step per epoch: the first step is also the last
    run_notebook(quick, results, epochs=1, **one_batch)
    # Adam's first moment of fc_mu.bias (parameter 5) is infinite: the loss of the step is finite,
    # the update after it is not.
    state = torch.load(results / "checkpoint.pt", weights_only=True)
    state["optimizer"]["state"][5]["exp_avg"].fill_(float("inf"))
    torch.save(state, results / "checkpoint.pt")
    good = (results / "checkpoint.pt").read_bytes()
    with pytest.raises(headless.RunFailed) as error:
        run_notebook(quick, results, epochs=2, resume=True, **one_batch)
    assert error.value.ename == "NonFiniteLossError"
    assert "at epoch 2, in the evaluation after it" in str(error.value)
    assert (results / "checkpoint.pt").read_bytes() == good


def test_a_bad_setting_is_refused_in_one_line_before_any_work(quick_env, tmp_path):
    run = tasks("run", env={**quick_env, "VAE_EPOCHS": "0", "VAE_RESULTS_DIR": str(tmp_path / "run")})
    assert run.returncode == 2
    assert run.stderr.strip() == "error: SettingsError: epochs must be a whole number >= 1; got 0 (from VAE_EPOCHS)."
    assert "Traceback" not in run.stdout + run.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--epochs", "2"], {}, "error: `python3 tasks.py run` takes no arguments; got '--epochs 2'."),
        ([], {"VAE_EPOCH": "2"}, "VAE_EPOCH is not a setting. The settings are: VAE_SEED, VAE_EPOCHS"),
        ([], {"VAE_RESULTS_DIR": "."}, "inside the repository a run writes only under runs/"),
        ([], {"VAE_RESULTS_DIR": "results/studies"}, "results/ is the record of the spec run"),
        ([], {"VAE_NAME": "n" * 300}, "name must be a folder name of at most 100 letters"),
        ([], {"VAE_DEVICE": "cuda:99999999999999999999"}, "device must be auto, cpu, mps, cuda or cuda:N"),
    ],
)
def test_what_a_user_may_type_wrong_is_refused_in_one_line_and_nothing_starts(quick_env, args, env, words):
    before = {p: p.stat().st_mtime_ns for p in (REPO / "Variational_autoencoder.ipynb", REPO / "results")}
    run = tasks("run", *args, env={**quick_env, "VAE_EPOCHS": "1", **env})
    assert run.returncode == 2, run.stderr
    assert words in run.stderr and len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert before == {p: p.stat().st_mtime_ns for p in before}


def test_a_failure_in_a_cell_ends_with_the_error_the_cell_and_the_executed_notebook(quick_env, tmp_path):
    results = tmp_path / "run"
    env = {**quick_env, "VAE_RESULTS_DIR": str(results), "VAE_EPOCHS": "1"}
    assert tasks("run", env=env).returncode == 0
    state = torch.load(results / "checkpoint.pt", weights_only=True)
    good = {k: v.clone() for k, v in state["model"].items()}
    state["model"]["fc_log_var.bias"].fill_(100.0)
    torch.save(state, results / "checkpoint.pt")
    run = tasks("run", env={**env, "VAE_EPOCHS": "2", "VAE_RESUME": "1"})
    assert run.returncode == 1 and "Traceback" not in run.stdout + run.stderr
    first, second = run.stderr.strip().splitlines()
    assert first.startswith("error: NonFiniteLossError: The loss became NaN or infinite at epoch 2, batch 1 of 12")
    notebook = results / "failed-run.ipynb"  # beside the finished 1-epoch run's notebook, which stays
    assert "NonFiniteLossError" not in (results / "Variational_autoencoder.ipynb").read_text()
    executed = json.loads(notebook.read_text())
    count = next(c["execution_count"] for c in executed["cells"] if c.get("id") == "train-loop")
    assert second == f"  in code cell [{count}] (Training); the executed notebook: {notebook}"
    assert "NonFiniteLossError" in notebook.read_text()
    torch.save({**state, "model": good}, results / "checkpoint.pt")  # mended: the run goes on and finishes
    assert tasks("run", env={**env, "VAE_EPOCHS": "2", "VAE_RESUME": "1"}).returncode == 0
    assert not notebook.exists()  # the finished run's folder holds its own notebook, not a failure it got past


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


# ---- every way to stop a run ---------------------------------------------------------------------
STARTED = []  # runs a test started: ended at its teardown even if the test failed


@pytest.fixture(autouse=True)
def end_started_runs():
    yield
    while STARTED:
        run = STARTED.pop()
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)  # the kernel's parent poller then ends the kernel
            run.wait()


def start(env, results, epochs="500"):
    """`python3 tasks.py run` in a session of its own (as a terminal would start it), into `results`."""
    env = {**env, "VAE_RESULTS_DIR": str(results), "VAE_EPOCHS": epochs}
    run = subprocess.Popen(["python3", "tasks.py", "run"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    STARTED.append(run)
    return run


def the_run(run) -> list:
    """The run's process and everything it started (the kernel among them)."""
    parent = psutil.Process(run.pid)
    return [parent, *parent.children(recursive=True)]


@pytest.mark.parametrize(
    ("how", "signum", "code", "name"),
    [
        ("Ctrl-C in the terminal", signal.SIGINT, 130, "Ctrl-C"),
        ("stopped twice, to tasks.py alone (as a study stops its runs)", signal.SIGINT, 130, "Ctrl-C"),
        ("kill, to tasks.py alone", signal.SIGTERM, 143, "SIGTERM"),
        ("kill, to its process group", signal.SIGTERM, 143, "SIGTERM"),
        ("the terminal closed", signal.SIGHUP, 129, "SIGHUP"),
    ],
)
def test_every_way_to_stop_a_run_ends_all_of_it_keeps_the_checkpoint_and_says_so_in_one_line(
    quick_env, tmp_path, how, signum, code, name
):
    results = tmp_path / "run"
    run = start(quick_env, results)
    wait_until(lambda: (results / "checkpoint.pt").exists())
    processes = the_run(run)
    assert any("ipykernel" in " ".join(p.cmdline()) for p in processes), "no kernel is running"
    if "alone" in how:
        os.kill(run.pid, signum)
    else:
        os.killpg(run.pid, signum)
    if "twice" in how:  # before the first has ended the run: the second kills the kernel mid-cell
        time.sleep(0.3)
        os.kill(run.pid, signum)
    out, err = run.communicate(timeout=60)
    assert run.returncode == code and "Traceback" not in out + err, err
    last = one_line(err)
    epoch = torch.load(results / "checkpoint.pt", weights_only=True)["epoch"]
    assert last == (
        f"stopped ({name}): the kernel is shut down; {results / 'checkpoint.pt'} keeps epoch {epoch}: "
        "run the same command with VAE_RESUME=1 to go on."
    )
    psutil.wait_procs(processes, timeout=10)
    assert not any(p.is_running() for p in processes), "something of the run outlived it"
    assert not list(results.glob(".*.tmp"))


def test_ctrl_c_before_the_kernel_starts_ends_in_one_line(quick_env, tmp_path):
    run = start(quick_env, tmp_path / "run")
    time.sleep(1.5)  # tasks.py has become headless.py, which is still loading torch
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in out + err, err
    assert err.strip().endswith("nothing was written.") and len(err.strip().splitlines()) == 1


def test_ctrl_c_while_the_kernel_starts_ends_in_one_line_and_leaves_no_kernel(quick_env, tmp_path):
    run = start(quick_env, tmp_path / "run")

    def a_kernel_starts():
        with contextlib.suppress(psutil.Error):  # a short-lived child gone while it is read
            return any("ipykernel" in " ".join(p.cmdline()) for p in the_run(run))

    wait_until(a_kernel_starts, 120)
    time.sleep(0.1)  # nbclient has a client for the kernel, which is still loading IPython
    processes = the_run(run)
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in out + err, err
    assert err.strip() == "stopped (Ctrl-C): the kernel is shut down; no epoch had finished, so there is no checkpoint."
    psutil.wait_procs(processes, timeout=10)
    assert not any(p.is_running() for p in processes), "something of the run outlived it"


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_process(quick_env, tmp_path):
    results = tmp_path / "run"
    first = start(quick_env, results)
    try:
        wait_until(lambda: (results / "checkpoint.pt").exists())
        second = tasks("run", env={**quick_env, "VAE_RESULTS_DIR": str(results), "VAE_EPOCHS": "500"})
        resumed = tasks(
            "run", env={**quick_env, "VAE_RESULTS_DIR": str(results), "VAE_EPOCHS": "500", "VAE_RESUME": "1"}
        )
        for refused in (second, resumed):
            assert refused.returncode == 2 and "Traceback" not in refused.stderr
            assert "is in use by process" in refused.stderr and "ipykernel" in refused.stderr
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.communicate(timeout=60)


def test_a_run_stopped_during_its_evaluation_is_evaluated_without_training_again(quick_env, tmp_path):
    results = tmp_path / "run"
    env = {**quick_env, "VAE_IW_SAMPLES": "5000", "VAE_TEST_SIZE": "2000"}  # a slow bound: time to stop it
    run = start(env, results, epochs="2")
    for line in run.stdout:
        if line.startswith("-- How good is the model?"):
            break
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "keeps all 2 epochs: run the same command again to evaluate it." in err
    checkpoint = (results / "checkpoint.pt").read_bytes()
    again = tasks("run", env={**env, "VAE_RESULTS_DIR": str(results), "VAE_EPOCHS": "2", "VAE_IW_SAMPLES": "2"})
    assert again.returncode == 0, again.stderr
    assert "is trained (2 epochs): its checkpoint is loaded" in again.stdout
    assert (results / "checkpoint.pt").read_bytes() == checkpoint  # nothing trained again
    shown = [line for line in again.stdout.splitlines() if line.startswith("epoch ")]  # the loaded run's lines
    assert shown == [epoch_line(row) for row in torch.load(results / "checkpoint.pt", weights_only=True)["metrics"]]
    assert [row["epoch"] for row in json.loads((results / "metrics.json").read_text())["epochs"]] == [1, 2]


def test_the_readme_experiment_leaves_the_committed_record_untouched(quick_env, tmp_path):
    """`VAE_EPOCHS=1 python3 tasks.py run` in a fresh copy of the repo, then `git status`."""
    copy = tracked_copy(tmp_path)
    env = {**quick_env, "VAE_EPOCHS": "1", "VENV_DIR": sys.prefix}
    run = tasks("run", env=env, cwd=copy)
    assert run.returncode == 0, run.stderr
    status = subprocess.run(["git", "status", "--porcelain"], cwd=copy, capture_output=True, text=True).stdout
    assert status == ""
    (folder,) = (copy / "runs").iterdir()
    assert folder.name == "epochs=1,iw_samples=2,train_size=1536,test_size=256"
    for made in ("Variational_autoencoder.ipynb", "metrics.json", "samples.png", "vae.pt"):
        assert (folder / made).is_file()


def test_a_notebook_that_is_not_whole_json_is_named_in_one_line_by_every_command_before_any_work(quick_env, tmp_path):
    copy, env = tracked_copy(tmp_path), {**quick_env, "VENV_DIR": sys.prefix}
    notebook = copy / "Variational_autoencoder.ipynb"
    text = notebook.read_text()
    notebook.write_text(text.replace('"seed = 0', '<<<<<<< HEAD\n"seed = 0', 1))  # a merge conflict
    record = subprocess.run([sys.executable, "-m", "harness.record"], cwd=copy,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    study = tasks("study", "seeds", env=without_settings(env), cwd=copy)
    for done, code in ((tasks("run", env=env, cwd=copy), 2), (study, 1), (record, 1)):
        assert done.returncode == code and "Traceback" not in done.stderr, done.stderr
        assert f"{notebook} is not a whole notebook (JSONDecodeError: Expecting value: line" in one_line(done.stderr)
    assert not (copy / "runs").exists() and not (copy / "results" / "studies" / "seeds" / ".lock").exists()


EDIT_AFTER_READING = """
import json
from harness import NOTEBOOK, headless
read = headless.prepare
def prepare(*args):  # the notebook is read; an edit is saved before the kernel gets to the run's start
    made = read(*args)
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        cell["source"] = "".join(cell["source"]).replace("linspace(0, 1, 10,", "linspace(0, 1, 12,")
    NOTEBOOK.write_text(json.dumps(nb))
    return made[0], NOTEBOOK, made[2]  # the executed notebook goes in place, as the spec's run's does
headless.prepare = prepare
headless.main()
"""


def test_an_edit_saved_while_a_headless_run_starts_is_kept_and_is_not_the_code_its_record_names(quick_env, tmp_path):
    copy = tracked_copy(tmp_path)
    env = {**quick_env, "VAE_EPOCHS": "1", "VAE_NAME": "edited"}
    done = subprocess.run([sys.executable, "-c", EDIT_AFTER_READING], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    executed = copy / "runs" / "spec-run.ipynb"  # not written over the edit
    assert f"that edit is kept, and the run's notebook is {executed}\n" in done.stdout
    assert "linspace(0, 1, 12," in (copy / "Variational_autoencoder.ipynb").read_text()  # the edit
    assert "linspace(0, 1, 10," in executed.read_text() and "final test loss" in executed.read_text()  # what ran
    folder = copy / "runs" / "edited"
    ran = fingerprint.code_of(executed, root=copy)
    for made in (json.loads((folder / "metrics.json").read_text()), torch.load(folder / "checkpoint.pt")):
        assert fingerprint.changes(ran, made["code"]) == []
    assert fingerprint.changes(ran, fingerprint.code_of(copy / "Variational_autoencoder.ipynb", root=copy)) == [
        "the notebook's 'Interpolation'"
    ]  # the edit was saved, and is not the code of that run


def test_a_missing_notebook_ends_a_run_in_one_line_before_any_work(quick_env, tmp_path):
    copy = tracked_copy(tmp_path)
    (copy / "Variational_autoencoder.ipynb").unlink()  # deleted, or renamed
    for env in ({**quick_env, "VAE_EPOCHS": "1"}, without_settings()):  # an experiment, and the spec's run
        done = subprocess.run([sys.executable, "-m", "harness.headless"], cwd=copy, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 2 and one_line(done.stderr) == (
            f"error: NotANotebook: {copy / 'Variational_autoencoder.ipynb'} cannot be read (No such file or "
            "directory): `python3 tasks.py restore` brings back the committed one."
        )
    assert not (copy / "runs").exists()


def files_of(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def test_an_edited_model_is_refused_in_the_old_runs_folder_and_an_edited_comment_trains_nothing(
    quick, tmp_path, monkeypatch
):
    run_notebook(quick, tmp_path / "run", epochs=1)
    before = files_of(tmp_path / "run")
    saved = nbformat.read(headless.NOTEBOOK, as_version=4)
    tanh, commented = copy.deepcopy(saved), copy.deepcopy(saved)
    (cell,) = [c for c in tanh.cells if c.get("id") == "vae-class"]
    cell.source = cell.source.replace("nn.ReLU()", "nn.Tanh()")
    (cell,) = [c for c in commented.cells if c.get("id") == "vae-class"]
    cell.source = "# a comment, and a paragraph of prose: not the code\n" + cell.source
    commented.cells[0].source += "\n\nA paragraph more."
    commented.metadata.kernelspec.name = "bare"  # another kernel chosen in the browser: this environment's runs it
    for nb, name in ((tanh, "tanh"), (commented, "commented")):
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    monkeypatch.setattr(headless, "NOTEBOOK", tmp_path / "tanh.ipynb")  # the notebook, edited
    with pytest.raises(headless.RunFailed) as refused:
        run_notebook(quick, tmp_path / "run", epochs=1)
    assert "holds a run of other code (changed: the notebook's 'The model'): it is kept" in str(refused.value)
    assert refused.value.code == 2 and files_of(tmp_path / "run") == before
    monkeypatch.setattr(headless, "NOTEBOOK", tmp_path / "commented.ipynb")
    executed = run_notebook(quick, tmp_path / "run", epochs=1)
    (start,) = [c for c in executed.cells if c.get("id") == "optimizer"]
    assert "its checkpoint is loaded" in start.outputs[0]["text"]


def test_a_kernel_that_dies_names_what_its_checkpoint_keeps_and_the_command_that_goes_on(quick_env, tmp_path):
    results = tmp_path / "run"
    run = start(quick_env, results)
    wait_until(lambda: (results / "checkpoint.pt").exists())
    (kernel,) = [p for p in the_run(run) if "ipykernel" in " ".join(p.cmdline())]
    kernel.kill()  # as the kernel killed for memory would be
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1 and "Traceback" not in out + err, err
    last = one_line(err)
    assert last.startswith("error: the kernel died (DeadKernelError") and "killed for memory?" in last
    assert f"{results / 'checkpoint.pt'} keeps epoch" in last and "with VAE_RESUME=1 to go on" in last


def test_a_reader_that_leaves_the_pipe_is_not_a_stop_the_run_goes_on_without_output(quick_env, tmp_path):
    """`python3 tasks.py run | head -3`."""
    results = tmp_path / "run"
    run = start(quick_env, results, epochs="2")
    for _ in range(3):
        run.stdout.readline()
    run.stdout.close()  # head has read its three lines and left
    assert run.wait(timeout=600) == 0, run.stderr.read()
    assert "BrokenPipe" not in run.stderr.read()
    assert json.loads((results / "metrics.json").read_text())["finished"]


def test_a_failed_notebook_that_cannot_be_written_leaves_the_real_error_and_says_why(tmp_path, monkeypatch):
    def full_disk(nb, path):
        raise OSError(28, f"No space left on the device to write {path}")

    monkeypatch.setattr(headless, "write_notebook", full_disk)
    path = tmp_path / "failed-run.ipynb"
    said = headless.keep_failed(None, path)
    assert (
        said == f"the executed notebook could not be written ([Errno 28] No space left on the device to write {path})."
    )


@pytest.mark.parametrize("experiment", [{}, {"epochs": 1, "train_size": 512}])  # the spec's run, and an experiment
def test_a_parameters_cell_other_than_the_declaration_is_refused_before_a_kernel_starts(
    monkeypatch, mnist_root, tmp_path, experiment
):
    declared = settings.SETTINGS["iw_samples"]
    monkeypatch.setitem(settings.SETTINGS, "iw_samples", settings.Setting(**{**vars(declared), "default": 100}))
    monkeypatch.setitem(settings.SPEC, "iw_samples", 100)  # the cell's 50 now is a value saved in Jupyter
    with pytest.raises(headless.RunFailed, match=r"parameters cell is not the declaration .*iw_samples = 50 instead"):
        headless.execute({"data_dir": str(mnist_root), **experiment}, environ={}, echo=lambda text: None)
    assert not (REPO / "runs" / "epochs=1,train_size=512").exists()
