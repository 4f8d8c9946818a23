"""The notebook as a person uses it in Jupyter: a real kernel (jupyter_client), cells run one at a time,
run again, stopped with the kernel interrupt, Run All twice, the kernel restarted; and papermill.

Each habit must leave a record (metrics.json, checkpoint.pt, vae.pt) that describes the weights beside
it, with the numbers of an uninterrupted run.
"""

import json
import subprocess
import sys
import threading
import time

import nbformat
import pytest
import torch
from jupyter_client.manager import KernelManager

from conftest import QUICK, REPO, tracked_copy, without_settings
from harness import fingerprint

pytestmark = pytest.mark.slow
NOTEBOOK = REPO / "Variational_autoencoder.ipynb"


class Kernel:
    """A Jupyter kernel in the repository, as the browser drives it: one cell at a time, by cell id."""

    def __init__(self, env, cwd=REPO):
        self.env = env
        self.cells = [c for c in nbformat.read(cwd / NOTEBOOK.name, as_version=4).cells if c.cell_type == "code"]
        self.km = KernelManager()
        self.km.start_kernel(cwd=str(cwd), env=env, extra_arguments=["--IPKernelApp.log_level=ERROR"])
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.cell_id, self.kc.execute = None, self.send

    def source(self, cell_id):
        return next(c.source for c in self.cells if c.get("id") == cell_id)

    def send(self, code, silent=False, store_history=True, user_expressions=None, allow_stdin=None, stop_on_error=True):
        """`KernelClient.execute` as JupyterLab sends it: with the cell's id in the request's metadata."""
        content = dict(code=code, silent=silent, store_history=store_history, user_expressions=user_expressions or {},
                       allow_stdin=False, stop_on_error=stop_on_error)  # fmt: skip
        msg = self.kc.session.msg("execute_request", content, metadata={"cellId": self.cell_id})
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def run(self, cell_id, source=None) -> dict:
        """Run a cell (its code as saved, or `source`: edited); its printed text, and its error if it failed."""
        text, error = [], {}
        self.cell_id = cell_id

        def hook(msg):
            if msg["msg_type"] == "stream":
                text.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                error.update(ename=msg["content"]["ename"], evalue=msg["content"]["evalue"],
                             traceback=msg["content"]["traceback"])  # fmt: skip

        self.kc.execute_interactive(source or self.source(cell_id), timeout=600, output_hook=hook)
        self.cell_id = None  # what a test types outside the cells runs as a console's code, without an id
        return {"text": "".join(text), **error}

    def run_all(self, **edits) -> dict:
        """Run All, stopping at the first error as Jupyter does; `edits` change the parameters cell."""
        results = {}
        for cell in self.cells:
            source = cell.source
            if cell.get("id") == "parameters":
                source += "".join(f"\n{name} = {value!r}" for name, value in edits.items())
            results[cell.get("id")] = self.run(cell.get("id"), source)
            if "ename" in results[cell.get("id")]:
                break
        return results

    def interrupt_during(self, cell_id, when) -> dict:
        """Run a cell and press the stop button a moment after `when()` is true: in the next epoch's work (an
        epoch takes most of a second), not in the instant between two, which a loaded machine can stretch."""
        outcome = {}
        worker = threading.Thread(target=lambda: outcome.update(self.run(cell_id)))
        worker.start()
        deadline = time.monotonic() + 300
        while not when() and worker.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        self.km.interrupt_kernel()
        worker.join(timeout=300)
        return outcome

    def restart(self):
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=60)

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture()
def kernel(mnist_root, tmp_path):
    quick = {f"VAE_{name.upper()}": str(value) for name, value in QUICK.items()}
    env = {**without_settings(), **quick, "VAE_DATA_DIR": str(mnist_root), "VAE_RESULTS_DIR": str(tmp_path / "run")}
    kernel = Kernel({**env, "VAE_EPOCHS": "3", "VAE_TRAIN_SIZE": "10000"})  # epochs long enough to stop one
    yield kernel
    kernel.close()


def record(results) -> dict:
    """The run's record: per-epoch numbers (timings aside), the checkpoint's epoch and weights, vae.pt."""
    metrics = json.loads((results / "metrics.json").read_text())
    checkpoint = torch.load(results / "checkpoint.pt", weights_only=True)
    return {
        "epochs": [{k: v for k, v in row.items() if k != "seconds"} for row in metrics["epochs"]],
        "evaluation": metrics["evaluation"],
        "checkpoint_epoch": checkpoint["epoch"],
        "checkpoint_rows": len(checkpoint["metrics"]),
        "weights": checkpoint["model"],
        "vae.pt": torch.load(results / "vae.pt", weights_only=True),
    }


def same(first: dict, second: dict):
    assert first["epochs"] == second["epochs"] and first["evaluation"] == second["evaluation"]
    assert first["checkpoint_epoch"] == second["checkpoint_epoch"] == first["checkpoint_rows"] == len(first["epochs"])
    for part in ("weights", "vae.pt"):
        assert all(torch.equal(first[part][n], second[part][n]) for n in first[part]), part


@pytest.fixture()
def uninterrupted(kernel, tmp_path):
    """The record of one Run All, the reference every habit must reproduce."""
    results = kernel.run_all()
    assert not any("ename" in r for r in results.values()), results
    lines = [line for line in results["train-loop"]["text"].splitlines() if line.startswith("epoch ")]
    return {**record(tmp_path / "run"), "lines": lines}


def test_the_training_cell_run_again_after_the_run_finished_trains_nothing(kernel, uninterrupted, tmp_path):
    again = kernel.run("train-loop")
    assert "ename" not in again and "epoch  1" not in again["text"] and "3 of 3 epochs trained" in again["text"]
    kernel.run("evaluation")
    kernel.run("metrics")
    same(record(tmp_path / "run"), uninterrupted)


def test_more_epochs_in_the_same_kernel_are_trained_on_and_numbered_on(kernel, uninterrupted, tmp_path):
    kernel.kc.execute_interactive("import os; os.environ['VAE_EPOCHS'] = '4'", timeout=60)  # as if edited
    refused = kernel.run("settings", kernel.source("settings"))
    assert refused.get("ename") == "SettingsError" and "set resume = True in the parameters cell" in refused["evalue"]
    kernel.kc.execute_interactive("os.environ['VAE_RESUME'] = '1'", timeout=60)
    for cell in ("settings", "device", "optimizer"):
        assert "ename" not in kernel.run(cell)
    more = kernel.run("train-loop")
    assert "epoch  4" in more["text"] and "epoch  1" not in more["text"] and "4 of 4 epochs trained" in more["text"]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert [row["epoch"] for row in checkpoint["metrics"]] == [1, 2, 3, 4]


def test_the_stop_button_during_training_then_the_cell_again_gives_the_uninterrupted_run(
    kernel, uninterrupted, tmp_path
):
    kernel.kc.execute_interactive("import shutil; shutil.rmtree(str(results))", timeout=60)  # start afresh
    for cell in ("settings", "device", "vae-instance", "optimizer"):
        assert "ename" not in kernel.run(cell)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    stopped = kernel.interrupt_during("train-loop", lambda: checkpoint.exists())  # during epoch 2
    assert stopped.get("ename") == "Stopped" and stopped["traceback"] == [stopped["evalue"]]
    assert stopped["evalue"].startswith("Stopped during epoch 2: the model is back at the end of epoch 1")
    again = kernel.run("train-loop")
    assert "epoch  2" in again["text"] and "epoch  1" not in again["text"]
    for cell in ("curves", "evaluation", "metrics"):
        assert "ename" not in kernel.run(cell)
    same(record(tmp_path / "run"), uninterrupted)


def test_run_all_twice_in_one_kernel_gives_the_result_of_run_all_once(kernel, uninterrupted, tmp_path):
    second = kernel.run_all()
    assert not any("ename" in r for r in second.values())
    assert "its checkpoint is loaded" in second["optimizer"]["text"]
    same(record(tmp_path / "run"), uninterrupted)


def test_restart_after_a_stop_then_run_all_goes_on_with_resume_and_says_so_without(kernel, uninterrupted, tmp_path):
    kernel.kc.execute_interactive("import shutil; shutil.rmtree(str(results))", timeout=60)
    for cell in ("settings", "device", "vae-instance", "optimizer"):
        kernel.run(cell)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    kernel.interrupt_during("train-loop", lambda: checkpoint.exists())
    kernel.restart()
    refused = kernel.run_all()
    assert refused["settings"]["ename"] == "SettingsError"
    assert refused["settings"]["traceback"] == [f"SettingsError: {refused['settings']['evalue']}"]  # one line
    assert (
        "holds an unfinished run (epoch 1 of 3). To continue it set resume = True in the parameters cell"
        in (refused["settings"]["evalue"])
    )
    kernel.restart()
    resumed = kernel.run_all(resume=True)
    assert not any("ename" in r for r in resumed.values())
    assert "resuming after epoch 1" in resumed["optimizer"]["text"]
    same(record(tmp_path / "run"), uninterrupted)


def test_a_bad_value_in_the_parameters_cell_stops_the_notebook_in_the_settings_cell(kernel, tmp_path):
    results = kernel.run_all(batch_size=0)
    assert results["settings"]["ename"] == "SettingsError"
    assert "batch_size must be a whole number >= 1; got 0 (from the parameters cell)" in results["settings"]["evalue"]
    assert list(results)[-1] == "settings" and not (tmp_path / "run").exists()


def test_the_harness_errors_a_person_mends_show_one_line_in_the_kernel_not_a_traceback(kernel, tmp_path):
    kernel.run("imports")
    no_mnist = kernel.run(None, f"mnist.SOURCES.clear(); mnist.ensure_mnist(r'{tmp_path / 'empty'}')")  # offline
    not_weights = kernel.run(None, "from harness import files; files.load_weights('README.md')")
    for error, ename in ((no_mnist, "MNISTUnavailableError"), (not_weights, "CheckpointError")):
        assert error["ename"] == ename and error["traceback"] == [f"{ename}: {error['evalue']}"]
    assert "Could not get a verified copy of MNIST" in no_mnist["evalue"]


def test_the_environment_wins_over_the_parameters_cell(kernel, tmp_path):
    results = kernel.run_all(epochs=1, latent_dim=5)  # VAE_EPOCHS=3 is set in the kernel's environment
    settings = json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]
    assert (settings["epochs"], settings["latent_dim"]) == (3, 5)
    assert not any("ename" in r for r in results.values())
    assert "VAE_EPOCHS=3 overrides the parameters cell's epochs = 1" in results["settings"]["text"]


def test_papermill_runs_an_experiment_into_its_own_folder_and_leaves_git_clean(mnist_root, tmp_path):
    """`papermill Variational_autoencoder.ipynb runs/out.ipynb -p epochs 2`, from the repository."""
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    output = tmp_path / "out.ipynb"
    parameters = [f"-p {name} {value}" for name, value in {**QUICK, "epochs": 2, "data_dir": mnist_root}.items()]
    papermill = [sys.executable, "-m", "papermill", "--no-progress-bar", str(NOTEBOOK), str(output)]
    run = subprocess.run(
        [*papermill, *" ".join(parameters).split()],
        cwd=REPO, env=without_settings(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    folder = REPO / "runs" / "epochs=2,iw_samples=2,train_size=1536,test_size=256"
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        assert len(metrics["epochs"]) == 2 and metrics["settings"]["epochs"] == 2
        executed = nbformat.read(output, as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
        after = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
        assert after == status
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def test_papermill_on_an_edited_copy_of_the_notebook_records_the_copys_code_or_refuses_in_one_line(
    mnist_root, tmp_path
):
    """A researcher's variant, run with papermill: the kernel cannot know which notebook it runs unless told."""
    variant = nbformat.read(NOTEBOOK, as_version=4)
    for cell in variant.cells:
        cell.source = cell.source.replace("linspace(0, 1, 10,", "linspace(0, 1, 12,")
    nbformat.write(variant, tmp_path / "variant.ipynb")
    parameters = [f"-p {name} {value}" for name, value in {**QUICK, "epochs": 1, "data_dir": mnist_root}.items()]
    for told in ({}, {"JPY_SESSION_NAME": str(tmp_path / "variant.ipynb")}):
        results = tmp_path / ("told" if told else "untold")
        run = subprocess.run(
            [sys.executable, "-m", "papermill", "--no-progress-bar", str(tmp_path / "variant.ipynb"),
             str(tmp_path / "out.ipynb"), *" ".join(parameters).split(), "-p", "results_dir", str(results)],
            cwd=REPO, env={**without_settings(), **told}, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if not told:  # refused at the record, which would have named the repository's notebook as its code
            assert run.returncode != 0 and "NotANotebook: this kernel ran code that" in run.stderr
            assert not (results / "metrics.json").exists()
            continue
        assert run.returncode == 0, run.stderr[-2000:]
        made = json.loads((results / "metrics.json").read_text())["code"]
        assert fingerprint.changes(fingerprint.code_of(tmp_path / "variant.ipynb"), made) == []
        assert fingerprint.changes(fingerprint.code_of(NOTEBOOK), made) == ["the notebook's 'Interpolation'"]


def test_an_edited_model_run_in_the_kernel_never_loads_the_old_weights(kernel, uninterrupted, tmp_path):
    tanh = kernel.source("vae-class").replace("nn.ReLU()", "nn.Tanh()")
    assert "ename" not in kernel.run("vae-class", tanh)  # edited and run, not saved: the kernel's code counts
    for cell in ("vae-instance", "objective", "evaluate", "train-epoch"):
        assert "ename" not in kernel.run(cell)
    refused = kernel.run("optimizer")
    assert refused.get("ename") == "RunRefused" and refused["traceback"] == [f"RunRefused: {refused['evalue']}"]
    assert "holds a run of other code (changed: the notebook's 'The model'): it is kept" in refused["evalue"]
    same(record(tmp_path / "run"), uninterrupted)  # the old run is kept as it was


def test_a_comment_added_to_the_model_retrains_nothing(kernel, uninterrupted, tmp_path):
    commented = "# a note on the model, and no change to it\n" + kernel.source("vae-class")
    for cell in ("vae-class", "vae-instance", "objective", "evaluate", "train-epoch"):
        assert "ename" not in kernel.run(cell, commented if cell == "vae-class" else None)
    assert "its checkpoint is loaded" in kernel.run("optimizer")["text"]
    shown = kernel.run("train-loop")["text"]  # the loaded run's epoch lines, as it printed them
    assert [line for line in shown.splitlines() if line.startswith("epoch ")] == uninterrupted["lines"]


def test_the_model_cell_run_again_alone_is_refused_before_any_training(kernel, uninterrupted, tmp_path):
    assert "ename" not in kernel.run("vae-instance")  # a new model; the optimiser and the run hold the old one
    refused = kernel.run("train-loop")
    assert refused.get("ename") == "RunRefused" and "a cell above was run again alone" in refused["evalue"]
    assert "ename" not in kernel.run("optimizer")  # from the model's cell on again: the run belongs together
    assert "ename" not in kernel.run("train-loop")
    same(record(tmp_path / "run"), uninterrupted)


def test_the_settings_cell_run_again_with_other_settings_keeps_the_old_run_from_training_or_recording(
    mnist_root, tmp_path
):
    quick = {f"VAE_{name.upper()}": str(value) for name, value in QUICK.items() if name != "iw_samples"}
    kernel = Kernel({**without_settings(), **quick, "VAE_EPOCHS": "1", "VAE_DATA_DIR": str(mnist_root)})
    try:
        assert not any("ename" in r for r in kernel.run_all(results_dir=str(tmp_path / "a")).values())
        before = (tmp_path / "a" / "metrics.json").read_bytes()
        assert "ename" not in kernel.run("settings")  # run again as it stands
        assert "ename" not in kernel.run("train-loop")  # the same settings: the finished run trains nothing
        edited = kernel.source("parameters") + f"\nresults_dir = {str(tmp_path / 'b')!r}\niw_samples = 7"
        assert "ename" not in kernel.run("parameters", edited) and "ename" not in kernel.run("settings")
        for cell in ("train-loop", "device", "evaluation", "metrics"):  # the cells below, as a person picks them
            outcome = kernel.run(cell)
            if cell in ("train-loop", "metrics"):  # the old run's: it would record iw_samples = 50 beside k = 7
                assert outcome.get("ename") == "RunRefused" and "with iw_samples = 7, results_dir" in outcome["evalue"]
        assert (tmp_path / "a" / "metrics.json").read_bytes() == before
        assert "ename" not in kernel.run("optimizer")  # a run of the new settings, in its own folder
        assert "ename" not in kernel.run("train-loop") and "ename" not in kernel.run("metrics")
        assert json.loads((tmp_path / "b" / "metrics.json").read_text())["settings"]["iw_samples"] == 7
    finally:
        kernel.close()


def test_the_parameters_cell_run_again_alone_is_refused_where_it_would_be_ignored_and_breaks_no_cell_below(
    kernel, uninterrupted, tmp_path
):
    assert "ename" not in kernel.run("parameters")  # as it stands: device = "auto" again, the same settings
    for cell in ("load-data", "train-loop", "evaluation", "metrics"):  # each uses the device the device cell picked
        assert "ename" not in kernel.run(cell), cell
    edited = kernel.source("parameters") + "\nkl_warmup = 2"
    assert "ename" not in kernel.run("parameters", edited)  # and on, without the settings cell
    for cell in ("train-loop", "metrics"):  # the run is of kl_warmup = 0: it would train and record that unseen
        refused = kernel.run(cell)
        assert refused.get("ename") == "RunRefused" and refused["traceback"] == [f"RunRefused: {refused['evalue']}"]
        assert refused["evalue"].startswith("a cell set kl_warmup = 2 after the settings cell checked the settings")
    assert "ename" not in kernel.run("parameters")  # the value the settings cell checked, back again
    assert "ename" not in kernel.run("metrics")
    same(record(tmp_path / "run"), uninterrupted)


def test_a_cell_run_after_a_stop_keeps_the_training_cell_from_going_on_from_the_checkpoint(kernel, tmp_path):
    ids = [cell.get("id") for cell in kernel.cells]
    for cell in ids[: ids.index("train-loop")]:
        assert "ename" not in kernel.run(cell)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    kernel.interrupt_during("train-loop", lambda: checkpoint.exists())  # during epoch 2
    saved = torch.load(checkpoint, weights_only=True)
    assert "ename" not in kernel.run("a-new-cell", "model.fc_mu.weight.data.mul_(0.5)")  # it changes the numbers
    refused = kernel.run("train-loop")
    assert refused.get("ename") == "RunRefused" and refused["traceback"] == [f"RunRefused: {refused['evalue']}"]
    said = "(changed: cells run that the notebook file does not hold): the model is back at epoch 1"
    assert said in refused["evalue"]
    after = torch.load(checkpoint, weights_only=True)
    assert after["epoch"] == 1 and after["code"] == saved["code"]
    same_weights = "print(torch.equal(model.fc_mu.weight.cpu(), torch.load(run.checkpoint)['model']['fc_mu.weight']))"
    assert kernel.run(None, same_weights)["text"].strip() == "True"  # the halving went with the refused epoch


def test_cells_edited_and_run_without_saving_are_the_code_the_checkpoint_and_the_record_name(kernel, tmp_path):
    edits = {
        "train-loop": ("/ len(train_x)", "/ (1 * len(train_x))"),  # the same numbers, other code
        "evaluation": ("active = vae_utils.active_units(mu)", "active = vae_utils.active_units(mu) + 0"),
    }
    ran = {}
    for cell in kernel.cells:
        source = cell.source.replace(*edits[cell.get("id")]) if cell.get("id") in edits else cell.source
        assert source != cell.source or cell.get("id") not in edits
        ran[cell.get("id")] = kernel.run(cell.get("id"), source)
        assert "ename" not in ran[cell.get("id")]
    said = "note: cells ran other code than the run started with (the notebook's 'How good is the model?')"
    assert said in ran["metrics"]["text"]
    saved = fingerprint.code_of()  # the notebook file's code: the edits were not saved
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert fingerprint.changes(saved, checkpoint["code"]) == ["the notebook's 'Training'"]
    assert fingerprint.changes(saved, metrics["code"]) == [
        "the notebook's 'Training'",
        "the notebook's 'How good is the model?'",
    ]


def test_vae_utils_saved_after_the_kernel_imported_it_is_not_the_code_it_runs_or_records_until_a_restart(
    mnist_root, tmp_path
):
    copy = tracked_copy(tmp_path)
    quick = {f"VAE_{name.upper()}": str(value) for name, value in QUICK.items()}
    kernel = Kernel({**without_settings(), **quick, "VAE_DATA_DIR": str(mnist_root), "VAE_EPOCHS": "1"}, cwd=copy)
    runs = {name: tmp_path / name for name in ("before", "edited", "restarted")}
    try:
        assert not any("ename" in r for r in kernel.run_all(results_dir=str(runs["before"])).values())
        source = (copy / "vae_utils.py").read_text()  # the KL, edited and saved
        (copy / "vae_utils.py").write_text(source.replace("return -0.5 * (1 + log_var", "return -0.4 * (1 + log_var"))
        edited = kernel.run_all(results_dir=str(runs["edited"]))
        assert not any("ename" in r for r in edited.values())
        assert "note: vae_utils.py was saved after this kernel imported it" in edited["settings"]["text"]
        kernel.restart()
        assert not any("ename" in r for r in kernel.run_all(results_dir=str(runs["restarted"])).values())
    finally:
        kernel.close()
    made = {name: json.loads((folder / "metrics.json").read_text()) for name, folder in runs.items()}
    assert made["edited"]["code"] == made["before"]["code"]  # the code it imported ran: the same numbers
    assert made["edited"]["evaluation"] == made["before"]["evaluation"]
    assert fingerprint.changes(made["before"]["code"], made["restarted"]["code"]) == ["vae_utils.py"]
    assert made["restarted"]["evaluation"]["test_kl"] != made["before"]["evaluation"]["test_kl"]
