"""harness.run: a stop or a failure puts the run back at its last complete epoch, the record is written
together, the advice after a divergence is accepted, provenance says what it cannot tell."""

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import EVALUATION, checkpoint_state, load
from harness import Stopped, files, folders, provenance, settings
from harness import run as training


def test_the_advice_after_a_diverged_run_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setattr(folders, "RUNS", tmp_path / "runs")
    diverged = load(VAE_LR="0.005")
    checkpoint = Path(diverged.results_dir) / "checkpoint.pt"
    files.save_checkpoint(checkpoint, checkpoint_state(diverged, epoch=2))  # diverged at epoch 3
    advice = str(training.NonFiniteLossError(3, "batch 7 of 469", checkpoint, diverged.lr))
    assert "at epoch 3, batch 7 of 469" in advice and "is kept as it was" in advice
    assert "lr = 0.0005 (VAE_LR=0.0005)" in advice
    follow = load(VAE_LR="0.0005")  # the advice, taken: a fresh run in a folder of its own
    assert follow.results_dir != diverged.results_dir and not follow.resume


def test_a_resume_records_the_settings_it_changed(tmp_path):
    run = tiny_run(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train(run, stop_in=2)
    resumed = tiny_run(tmp_path, epochs=5)  # as VAE_EPOCHS=5 VAE_RESUME=1 would
    assert resumed.resumed == [{"after_epoch": 1, "changed": {"epochs": [3, 5]}}]


def tiny_run(tmp_path, epochs=3):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    run_settings = SimpleNamespace(**{**vars(load()), "epochs": epochs, "train_size": 8, "results_dir": str(tmp_path)})
    return training.TrainingRun.start(run_settings, model, optimizer, torch.Generator().manual_seed(0))


def step(run):
    """One epoch of a toy training: a gradient step and a draw from the run's generator."""
    noise = torch.randn(8, 4, generator=run.generator)
    loss = run.model(noise).pow(2).sum()
    run.optimizer.zero_grad()
    loss.backward()
    run.optimizer.step()
    return loss.detach().reshape(1)


def train(run, stop_in=None):
    """The notebook's training cell: a stop (KeyboardInterrupt) in epoch `stop_in`, after half its work."""
    for epoch in run.epochs(run.model, run.optimizer):
        step(run)
        if epoch == stop_in:
            raise KeyboardInterrupt
        run.record_epoch(epoch, losses := step(run), losses.item(), (1.0, 1.0, 0.0), 0.0)


def test_a_stop_mid_epoch_puts_the_run_back_at_its_last_complete_epoch_and_going_on_gives_the_same_run(tmp_path):
    straight = tiny_run(tmp_path / "straight")
    train(straight)
    stopped = tiny_run(tmp_path / "stopped")
    with pytest.raises(KeyboardInterrupt):
        train(stopped, stop_in=2)
    assert stopped.epoch == 1 and [row["epoch"] for row in stopped.history] == [1]
    assert files.load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")["epoch"] == 1
    with pytest.raises(training.RunRefused, match=r"training stopped during epoch 2.*back at epoch 1 now"):
        stopped.record(EVALUATION, "cpu", stopped.model)  # no record of a model between two epochs
    assert not (tmp_path / "stopped" / "metrics.json").exists()
    train(stopped)  # the training cell, run again: on from epoch 1's end
    assert [row["epoch"] for row in stopped.history] == [1, 2, 3] and list(
        stopped.epochs(stopped.model, stopped.optimizer)
    ) == []
    assert stopped.history == straight.history and torch.equal(stopped.model.weight, straight.model.weight)


def test_in_a_kernel_a_stop_mid_epoch_goes_back_at_once_and_says_so_in_one_line(tmp_path):
    run, shown = tiny_run(tmp_path), []
    shell = SimpleNamespace(showtraceback=lambda exc_tuple, tb_offset=None: shown.append(exc_tuple))
    with pytest.raises(KeyboardInterrupt) as stop:
        train(run, stop_in=2)
    before = run.model.weight.detach().clone()
    training.on_stop(shell, KeyboardInterrupt, stop.value, None)
    etype, value, _ = shown[-1]
    assert etype is Stopped and value._render_traceback_() == [str(value)]
    assert str(value).startswith("Stopped during epoch 2: the model is back at the end of epoch 1, as in")
    assert run.in_epoch is None and not torch.equal(run.model.weight, before)  # put back at once
    at_epoch_1 = run.model.weight.detach().clone()
    training.on_stop(shell, KeyboardInterrupt, KeyboardInterrupt(), None)  # between two epochs: one line too
    assert shown[-1][1]._render_traceback_() == ["Stopped outside an epoch. Run this cell again to go on."]
    assert torch.equal(run.model.weight, at_epoch_1) and run.epoch == 1  # nothing to put back


def test_a_failure_inside_also_goes_back_and_the_checkpoint_holds_the_last_good_epoch(tmp_path):
    run = tiny_run(tmp_path)
    epochs = run.epochs(run.model, run.optimizer)
    next(epochs)
    run.record_epoch(1, step(run), 1.0, (1.0, 1.0, 0.0), 0.0)
    good = run.model.weight.detach().clone()
    next(epochs)
    step(run)
    with pytest.raises(training.NonFiniteLossError, match="at epoch 2, batch 1 of 1"):
        run.record_epoch(2, torch.tensor([float("nan")]), float("nan"), (1.0, 1.0, 0.0), 0.0)
    assert files.load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    next(run.epochs(run.model, run.optimizer))  # the run's next call puts the model back
    assert torch.equal(run.model.weight, good)


def test_a_run_resumed_on_another_machine_says_so_in_its_record(tmp_path, capsys):
    run = tiny_run(tmp_path)
    run.record_epoch(1, step(run), 1.0, (1.0, 1.0, 0.0), 0.0)
    state = files.load_checkpoint(tmp_path / "checkpoint.pt")
    here = {"device": "cpu", "cpu": provenance.cpu_name(), "threads": torch.get_num_threads()}
    assert state["machine"] == here
    elsewhere = {**here, "threads": here["threads"] + 7}  # another thread count rounds otherwise
    files.save_checkpoint(tmp_path / "checkpoint.pt", {**state, "machine": elsewhere})
    resumed = tiny_run(tmp_path)
    assert resumed.resumed == [{"after_epoch": 1, "changed": {"machine": [elsewhere, here]}}]
    said = capsys.readouterr().out
    assert f"epochs 1 to 1 ran on another machine (threads: {here['threads'] + 7} there, {here['threads']} now)" in said
    files.save_checkpoint(tmp_path / "checkpoint.pt", state)  # the same machine: nothing to say
    assert tiny_run(tmp_path).resumed == [{"after_epoch": 1, "changed": {}}]


def test_the_record_holds_the_history_the_evaluation_and_the_weights_beside_it(tmp_path):
    run = tiny_run(tmp_path, epochs=1)
    run.record_epoch(1, step(run), 1.0, (1.0, 0.5, 0.5), 0.1)
    metrics = run.record(EVALUATION, "cpu", run.model)
    assert metrics["code"] == run.code  # no cell ran since it started (its files count as when it started)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["finished"] and [row["epoch"] for row in metrics["epochs"]] == [1]
    weights = torch.load(tmp_path / "vae.pt", weights_only=True)
    assert torch.equal(weights["weight"], run.model.weight)


def as_if_made_by_other_code(folder):
    """Rewrite the folder's checkpoint as a run of other code (an edited loss) would have left it."""
    state = files.load_checkpoint(folder / "checkpoint.pt")
    state["code"] = {"fingerprint": "other", "parts": {**state["code"]["parts"], "vae_utils.py": "edited"}}
    files.save_checkpoint(folder / "checkpoint.pt", state)


def test_a_finished_run_of_other_code_is_kept_elsewhere_and_replaced_in_results(tmp_path, monkeypatch, capsys):
    run = tiny_run(tmp_path, epochs=1)
    run.record_epoch(1, step(run), 1.0, (1.0, 0.5, 0.5), 0.1)
    run.record(EVALUATION, "cpu", run.model)
    as_if_made_by_other_code(tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(training.RunRefused, match=r"holds a run of other code \(changed: vae_utils.py\): it is kept"):
        tiny_run(tmp_path, epochs=1)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    monkeypatch.setattr(training, "RECORD", tmp_path)  # the same folder as results/, the spec run's record
    monkeypatch.setattr(folders, "RECORD", tmp_path)
    with pytest.raises(settings.SettingsError, match=r"\(changed: vae_utils.py\)\. Unset resume: the spec's run"):
        folders.check_folder(SimpleNamespace(**{**vars(run.settings), "resume": True}), tmp_path)  # not "delete"
    afresh = tiny_run(tmp_path, epochs=1)
    assert afresh.epoch == 0 and next(afresh.epochs(afresh.model, afresh.optimizer)) == 1
    assert "held a run of other code; results/ is the current code's record" in capsys.readouterr().out


def test_results_holding_the_record_of_another_spec_is_made_anew_and_any_other_folder_is_kept(tmp_path, monkeypatch,
                                                                                                 capsys):  # fmt: skip
    run = tiny_run(tmp_path, epochs=1)
    run.record_epoch(1, step(run), 1.0, (1.0, 0.5, 0.5), 0.1)
    run.record(EVALUATION, "cpu", run.model)
    new_spec = SimpleNamespace(**{**vars(run.settings), "lr": 2e-3})  # as after a default changed in SETTINGS
    with pytest.raises(settings.SettingsError, match=r"holds a run with other settings \(lr: 0.001 there, 0.002 now\)"):
        folders.check_folder(new_spec, tmp_path)  # a folder of runs/: the user's run is kept
    monkeypatch.setattr(training, "RECORD", tmp_path)  # the same folder as results/, the spec run's record
    monkeypatch.setattr(folders, "RECORD", tmp_path)
    folders.check_folder(new_spec, tmp_path)  # results/: the record of the spec as it was, made anew
    state = files.load_checkpoint(tmp_path / "checkpoint.pt")  # now a checkpoint of the new spec's, one epoch short
    new_state = {**state, "settings": {**state["settings"], "lr": 2e-3, "epochs": 2}}
    files.save_checkpoint(tmp_path / "checkpoint.pt", new_state)
    with pytest.raises(settings.SettingsError, match=r"holds an unfinished run \(epoch 1 of 2\). To continue it set"):
        folders.check_folder(SimpleNamespace(**{**vars(new_spec), "epochs": 2}), tmp_path)  # resume still asked for
    files.save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(settings.SettingsError, match=r"\(lr: 0.001 there, 0.002 now\)\. Unset resume: the spec's run"):
        folders.check_folder(SimpleNamespace(**{**vars(new_spec), "resume": True}), tmp_path)  # not "delete results/"
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    afresh = training.TrainingRun.start(new_spec, model, torch.optim.Adam(model.parameters()), torch.Generator())
    assert afresh.epoch == 0 and next(afresh.epochs(afresh.model, afresh.optimizer)) == 1
    said = "held a run of other settings (lr: 0.001 there, 0.002 now); results/ is the current code's record"
    assert said in capsys.readouterr().out


def test_a_model_or_optimiser_not_the_runs_is_refused_before_training(tmp_path):
    run = tiny_run(tmp_path)
    other = torch.nn.Linear(4, 2)
    with pytest.raises(training.RunRefused, match="a cell above was run again alone"):
        next(run.epochs(other, run.optimizer))
    with pytest.raises(training.RunRefused, match="a cell above was run again alone"):
        training.TrainingRun.start(run.settings, other, run.optimizer, run.generator)


def test_a_setting_a_cell_set_after_the_settings_cell_is_refused_unless_it_is_the_value_checked(tmp_path):
    namespace = {"epochs": 3, "train_size": 8, "beta": 1.0, "results_dir": str(tmp_path / "run")}
    folders.resolve(namespace, environ={})  # the settings cell, reading the kernel's namespace
    run = tiny_run(tmp_path / "run")
    for written_again in (1, 1.0, torch.tensor(1.0)):  # the same value: the cells below run what was asked
        namespace["beta"] = written_again
        run.epochs(run.model, run.optimizer)
    for other in (2.0, torch.ones(3), "1.0"):
        namespace["beta"] = other
        with pytest.raises(training.RunRefused, match=r"^a cell set beta = .* after the settings cell checked"):
            run.epochs(run.model, run.optimizer)
    del namespace["beta"]
    with pytest.raises(training.RunRefused, match=r"^a cell set beta = None after"):
        run.record(EVALUATION, "cpu", run.model)


# ---- provenance ------------------------------------------------------------------------------
def git(*args):
    return subprocess.run(["git", *args], cwd=settings.REPO, capture_output=True, text=True, check=True).stdout


def test_provenance_tells_the_truth_about_git_for_a_results_folder_outside_the_repo(tmp_path):
    facts = provenance.provenance("cpu", tmp_path)
    assert facts["git_commit"] == git("rev-parse", "HEAD").strip()
    assert facts["git_dirty"] == bool(git("status", "--porcelain", "--untracked-files=no").strip())
    assert "git_unknown" not in facts


def test_provenance_says_null_and_why_when_git_cannot_tell(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "REPO", tmp_path)  # not a git checkout
    facts = provenance.provenance("cpu", tmp_path / "results")
    assert facts["git_commit"] is None and facts["git_dirty"] is None
    assert "not a git repository" in facts["git_unknown"]
    json.dumps(facts)  # and it is still JSON


def test_spec_defaults_are_what_the_notebook_names():
    assert settings.SPEC["epochs"] == 20 and settings.SPEC["objective"] == "elbo" and settings.SPEC["beta"] == 1.0
