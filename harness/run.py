"""A run's training state and its record, kept consistent however the notebook's cells are run.

`TrainingRun.start` begins a run (from scratch, from the folder's checkpoint, or given weights) and says
which; `epochs` gives the epochs left, `record_epoch` checks and checkpoints one, `record` writes metrics.json
and vae.pt together. A stop or failure inside an epoch puts model, optimiser and generator back at the last
complete epoch (in a kernel at once, with one line; else at the run's next call): no record or checkpoint
holds a mid-epoch model, and going on gives exactly the uninterrupted run.
"""

import copy
import math
from pathlib import Path

import torch

from harness import REPO, OneLine, Stopped, files, fingerprint
from harness.folders import RECORD, another_spec, assigned_since, claimed_since, other_code, weights_code
from harness.provenance import machine, provenance
from harness.settings import SPEC

IGNORED_ON_RESUME = {"resume", "results_dir", "name"}
fingerprint.watch_kernel()  # imported by the notebook's first cell: from then on the kernel notes each cell's code


class NonFiniteLossError(OneLine, FloatingPointError):
    """The loss became NaN or infinite; training stopped at the last complete epoch."""

    def __init__(self, epoch, where, checkpoint, lr):
        kept = f"The last good checkpoint, {checkpoint}, is kept as it was" if Path(checkpoint).exists() else ""
        kept = kept or "No checkpoint had been written yet"
        super().__init__(
            f"The loss became NaN or infinite at epoch {epoch}, {where}; training stopped. {kept}. "
            f"Run again with a lower learning rate, e.g. lr = {lr / 10:g} (VAE_LR={lr / 10:g}): it starts "
            "afresh in a folder of its own (with name or results_dir set, choose a new one)."
        )


class RunRefused(OneLine, RuntimeError):
    """The run cannot go on as the cells stand: why, and what to do."""


class TrainingRun:
    current = None  # this process's run, for the kernel's stop handler

    def __init__(self, settings, model, optimizer, generator):
        self.settings, self.model, self.optimizer, self.generator = settings, model, optimizer, generator
        self.folder = REPO / settings.results_dir
        self.checkpoint = self.folder / "checkpoint.pt"
        self.history, self.resumed, self.epoch, self.in_epoch, self.show_history = [], [], 0, None, False
        self.trains = not settings.weights
        self.cells = fingerprint.cells_of(fingerprint.notebook_in_use())  # as the run starts: a later save is no run
        self.code = fingerprint.code_of(cells=self.cells)  # then `code_now` before each write: the cells as they ran
        self.machine = machine(next(model.parameters()).device)  # once (it reads /proc/cpuinfo); each checkpoint has it
        self.snapshot = self.state()

    @classmethod
    def start(cls, settings, model, optimizer, generator) -> "TrainingRun":
        """A new run, the folder's run continued, or given weights; prints which."""
        run = TrainingRun.current = cls(settings, model, optimizer, generator)
        run.check(model, optimizer)
        try:
            state = files.load_checkpoint(run.checkpoint, model) if run.checkpoint.exists() else None
            previous = files.read_metrics(run.folder, missing_ok=True)
        except (files.CheckpointError, files.UnreadableRun):
            if run.folder != RECORD:
                raise
            state, previous = None, None  # results/ of older code: the spec's run makes it anew
        anew = another_spec(state, settings, run.folder)  # results/ of another spec: the spec's run makes it anew
        refused = other_code(state or previous, run.code, run.folder, settings.resume)
        if refused:  # the code changed since the settings cell checked the folder
            raise RunRefused(refused)
        if settings.weights:
            files.load_weights(REPO / settings.weights, model)
            run.weights_from = weights_code(settings.weights, run.code)
            print(f"no training: evaluating the weights in {settings.weights} ({run.weights_from['said']})")
        elif state is not None and not anew and not fingerprint.changes(state["code"], run.code):
            run.restore(state)
            changed = {name: [state["settings"][name], value] for name, value in vars(settings).items()
                       if name not in IGNORED_ON_RESUME and state["settings"][name] != value}  # fmt: skip
            if run.epoch == settings.epochs:  # a finished run, evaluated again: only a change of its numbers counts
                changed = {name: values for name, values in changed.items() if name in SPEC}
            before, now = state.get("machine"), run.machine
            if run.epoch < settings.epochs and before is not None and before != now:
                changed["machine"] = [before, now]  # its numbers agree with an uninterrupted run's only to rounding
                elsewhere = "; ".join(f"{k}: {before.get(k)!r} there, {v!r} now" for k, v in now.items()
                                      if before.get(k) != v)  # fmt: skip
                print(f"note: epochs 1 to {run.epoch} ran on another machine ({elsewhere}); "
                      "the record's `resumed` says so")  # fmt: skip
            if changed or run.epoch < settings.epochs:
                run.resumed = [*state["resumed"], {"after_epoch": run.epoch, "changed": changed}]
            if run.epoch < settings.epochs:
                print(f"resuming after epoch {run.epoch} from {run.checkpoint}")
            else:
                print(f"the run in {settings.results_dir} is trained ({run.epoch} epochs): its checkpoint is loaded")
                run.show_history = True  # the training cell shows the epochs it loaded, as the run printed them
        else:
            if state is not None:
                other = f"other settings ({'; '.join(anew)})" if anew else "other code"
                print(f"{settings.results_dir}/ held a run of {other}; results/ is the current code's record")
            elif settings.resume:
                print(f"resume is set but there is no {run.checkpoint}: starting from scratch")
            print(f"training from scratch: {settings.epochs} epochs, results in {settings.results_dir}/")
        run.snapshot = run.state()
        return run

    def check(self, model, optimizer):
        """Refuse a model, optimiser or settings (the cells read the latest) that are not the run's, before any work."""
        params = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if model is not self.model or optimizer is not self.optimizer or params != {id(p) for p in model.parameters()}:
            raise RunRefused("the model and the optimiser are not the run's (a cell above was run again alone): "
                             "run the cells again from the model's cell on (or Run All).")  # fmt: skip
        if changed := claimed_since(self.settings):
            raise RunRefused(f"the settings cell ran again since the run started, with {', '.join(changed)}: run the "
                             "cells again from the optimiser's cell on (or Run All) for a run of these.")  # fmt: skip
        if changed := assigned_since():
            raise RunRefused(f"a cell set {', '.join(changed)} after the settings cell checked the settings, and the "
                             "cells below run what it checked: run the settings cell, then the cells from the "
                             "optimiser's on (or Run All).")  # fmt: skip

    def code_now(self) -> dict:
        """The run's code as its cells have run by now (a cell edited and run since it started counts), its files
        as the kernel imported them."""
        return fingerprint.code_of(cells=self.cells, files=self.code)

    def state(self) -> dict:
        """Everything needed to go on: weights, optimiser, epoch, metrics, settings, generator (copies)."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                 "metrics": self.history, "settings": vars(self.settings), "rng": self.generator.get_state(),
                 "resumed": self.resumed, "code": self.code,
                 "machine": self.machine}  # where the epochs ran (another thread count rounds otherwise)  # fmt: skip
        return copy.deepcopy(state)

    def restore(self, state: dict):
        state = copy.deepcopy(state)  # the optimiser would otherwise update the saved tensors in place
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:  # whatever does not fit: one line
            first = str(error).strip().splitlines()[0][:200]
            raise files.CheckpointError(f"{self.checkpoint} does not fit this run: {first}") from None
        self.history, self.epoch, self.resumed = state["metrics"], state["epoch"], state["resumed"]

    def back_to_last_epoch(self) -> int | None:
        """After a stop or failure inside an epoch: the model, optimiser and generator as the last one ended.
        Returns the epoch that was stopped, or None when none was."""
        stopped, self.in_epoch = self.in_epoch, None
        if stopped is not None:
            self.restore(self.snapshot)
        return stopped

    def epochs(self, model, optimizer):
        """The epochs left, numbered on from the last complete one; `model` and `optimizer` must be this run's."""
        self.check(model, optimizer)
        self.back_to_last_epoch()
        if self.show_history:  # now, before the caller's progress bar starts
            self.show_history = False
            for row in self.history:
                print(epoch_line(row))
        return self.epochs_left()

    def epochs_left(self):
        for epoch in range(self.epoch + 1, self.settings.epochs + 1) if self.trains else ():
            self.in_epoch = epoch
            yield epoch
            if self.in_epoch is not None:
                self.back_to_last_epoch()
                raise RunRefused(f"epoch {epoch} ended without run.record_epoch(...): the model is back at epoch "
                                 f"{self.epoch}. Call it at the end of each epoch.")  # fmt: skip

    def record_epoch(self, epoch, step_losses, train_loss, test_terms, seconds) -> str:
        """Check an epoch's losses, add them to the history and save the checkpoint; the line to print."""
        bad = (~torch.isfinite(step_losses)).nonzero()
        if len(bad):
            where = f"batch {int(bad[0, 0]) + 1} of {len(step_losses)}"
            raise NonFiniteLossError(epoch, where, self.checkpoint, self.settings.lr)
        test_loss, test_recon, test_kl = test_terms
        if not all(map(math.isfinite, (train_loss, test_loss, test_recon, test_kl))):
            raise NonFiniteLossError(epoch, "in the evaluation after it", self.checkpoint, self.settings.lr)
        code = self.code_now()
        if changed := fingerprint.changes(self.code, code):
            if self.epoch:  # epoch self.epoch's checkpoint is of self.code: only that code goes on from it
                self.back_to_last_epoch()
                raise RunRefused(f"cells ran other code since epoch {self.epoch} was checkpointed (changed: "
                                 f"{'; '.join(changed)}): the model is back at epoch {self.epoch}, and only the code "
                                 "that made a checkpoint goes on from it. Restart the kernel and Run All with resume = "
                                 "True, or give the new code a folder of its own (name = '...').")  # fmt: skip
            self.code = code  # nothing was checkpointed yet: the run is this code's
        row = dict(epoch=epoch, train_loss=train_loss, test_loss=test_loss, test_recon=test_recon,
                   test_kl=test_kl, seconds=round(seconds, 3))  # fmt: skip
        state = {**self.state(), "epoch": epoch, "metrics": [*self.history, row]}
        files.save_checkpoint(self.checkpoint, state)  # then the run is at this epoch, not before
        self.history, self.epoch, self.snapshot, self.in_epoch = list(state["metrics"]), epoch, state, None
        return epoch_line(row)

    def record(self, evaluation: dict, device, model) -> dict:
        """metrics.json (settings, code, provenance, history, evaluation, figures) and, when trained, vae.pt.

        `model` is the one the evaluation used: it must be this run's, at the end of a complete epoch.
        """
        self.check(model, self.optimizer)
        stopped = self.back_to_last_epoch()
        if stopped is not None:
            raise RunRefused(f"training stopped during epoch {stopped}, so the cells above evaluated a model "
                             f"between two epochs; it is back at epoch {self.epoch} now: run the cells again "
                             "from the training cell on.")  # fmt: skip
        code = self.code_now()
        if changed := fingerprint.changes(self.code, code):
            print(f"note: cells ran other code than the run started with ({'; '.join(changed)}): metrics.json says so")
        if self.trains:
            files.save_weights(self.folder / "vae.pt", self.model)
        metrics = {
            "settings": vars(self.settings),
            "code": code,
            **({"weights_from": self.weights_from} if self.settings.weights else {}),
            "provenance": provenance(device, self.folder),
            "finished": self.epoch == self.settings.epochs or not self.trains,
            "epochs": self.history,
            "resumed": self.resumed,
            "test_loss": evaluation["test_loss"],
            "evaluation": evaluation,
            "figures": sorted(path.name for path in self.folder.glob("*.png")),
        }
        files.Record.model_validate(metrics)  # the one schema, on the way in too
        files.write_json(self.folder / "metrics.json", metrics)
        return metrics


def on_stop(shell, etype, value, tb, tb_offset=None):
    """The kernel's handler of a stop, in one line: inside an epoch, the model goes back to the last complete one."""
    run = TrainingRun.current
    stopped = run.back_to_last_epoch() if run is not None else None
    kept = f"the end of epoch {run.epoch}, as in {run.checkpoint}" if run and run.epoch else "its initial weights"
    said = f"Stopped during epoch {stopped}: the model is back at {kept}" if stopped else "Stopped outside an epoch"
    if not isinstance(value, Stopped):  # between two epochs, or in another cell: no model was half trained
        value, etype, tb = Stopped(message=f"{said}. Run this cell again to go on."), Stopped, None
    shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


if (shell := fingerprint.kernel_shell()) is not None:  # in a kernel, `on_stop` handles each KeyboardInterrupt
    shell.set_custom_exc((KeyboardInterrupt,), on_stop)


def epoch_line(row) -> str:
    terms = f"{row['test_recon']:6.2f} recon + {row['test_kl']:5.2f} KL"
    return f"epoch {row['epoch']:2d}  train {row['train_loss']:7.2f}  test {row['test_loss']:7.2f} = {terms}"
