"""A run's training state and its record, kept consistent however the notebook's cells are run.

`TrainingRun.start` begins a run, from scratch, from the folder's checkpoint (a finished run, or
`resume`), or from given weights, and says which; a run is its settings and its code
(`fingerprint.code_of`), and a checkpoint or record of other code is never continued or reloaded.
`record_epoch` scores nothing itself: it takes an epoch's losses, refuses a non-finite one, and
saves the checkpoint. `stop_safely` wraps the training loop: a stop (the kernel interrupt, Ctrl-C)
or a failure puts the model, the optimiser and the generator back at the end of the last complete
epoch, so that running the cell again goes on exactly as an uninterrupted run would. `record`
writes metrics.json and vae.pt together.
"""

import contextlib
import copy
import math
from pathlib import Path

import torch

from harness import REPO, files, fingerprint
from harness.folders import RECORD
from harness.provenance import machine_of, provenance

IGNORED_ON_RESUME = {"resume", "results_dir", "name"}
fingerprint.watch_kernel()  # imported by the notebook's first cell: from then on the kernel notes each cell's code


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped at the last complete epoch."""

    def __init__(self, epoch, where, checkpoint, lr):
        kept = (
            f"The last good checkpoint, {checkpoint}, is kept as it was"
            if Path(checkpoint).exists()
            else "No checkpoint had been written yet"
        )
        super().__init__(
            f"The loss became NaN or infinite at epoch {epoch}, {where}; training stopped. {kept}. "
            f"Run again with a lower learning rate, e.g. lr = {lr / 10:g} (VAE_LR={lr / 10:g}): it starts "
            "afresh in a folder of its own (with name or results_dir set, choose a new one)."
        )


class RunRefused(RuntimeError):
    """The run cannot go on as the cells stand; the message says why and what to do. One line in Jupyter."""

    def _render_traceback_(self):
        return [f"RunRefused: {self}"]


class RunStopped(KeyboardInterrupt):
    """Training was stopped; the model is back at the last complete epoch. Shown as its one line."""

    def _render_traceback_(self):  # IPython shows this instead of a traceback
        return [str(self)]


class TrainingRun:
    def __init__(self, settings, model, optimizer, generator):
        self.settings, self.model, self.optimizer, self.generator = settings, model, optimizer, generator
        self.folder = REPO / settings.results_dir
        self.checkpoint = self.folder / "checkpoint.pt"
        self.history, self.resumed, self.epoch, self.show_history = [], [], 0, False
        self.trains = not settings.weights
        self.code = fingerprint.code_of()
        self.machine = machine_of(model)  # once: it reads /proc/cpuinfo, and each checkpoint records it
        self.snapshot = self.state()

    @classmethod
    def start(cls, settings, model, optimizer, generator) -> "TrainingRun":
        """A new run, the folder's run continued, or given weights; prints which."""
        run = cls(settings, model, optimizer, generator)
        run.check(model, optimizer)
        try:
            state = files.load_checkpoint(run.checkpoint, model) if run.checkpoint.exists() else None
            previous = files.read_metrics(run.folder, missing_ok=True)
        except (files.CheckpointError, files.UnreadableRun):
            if run.folder != RECORD:
                raise
            state, previous = None, {"code": None}  # results/ of older code: the spec's run makes it anew
        if settings.weights:
            files.load_weights(settings.weights, model)
            run.weights_from = weights_code(settings.weights, run.code)
            print(f"no training: evaluating the weights in {settings.weights} ({run.weights_from['said']})")
        elif run.made_by_other_code(state or previous):
            print(f"training from scratch: {settings.epochs} epochs; {run.why_afresh}")
        elif state is not None:  # folders.check_folder allowed it: finished, or resume
            run.restore(state)
            if run.epoch < settings.epochs:
                changed = resume_changes(state["settings"], settings)
                before, now = state.get("machine"), run.machine
                if before is not None and before != now:  # its numbers agree with an uninterrupted run's only
                    changed["machine"] = [before, now]  # to float rounding: the record says so
                    elsewhere = "; ".join(f"{k}: {before.get(k)!r} there, {v!r} now" for k, v in now.items()
                                          if before.get(k) != v)  # fmt: skip
                    print(f"note: epochs 1 to {run.epoch} ran on another machine ({elsewhere}); "
                          "the record's `resumed` says so")  # fmt: skip
                run.resumed = [*state["resumed"], {"after_epoch": run.epoch, "changed": changed}]
                print(f"resuming after epoch {run.epoch} from {run.checkpoint}")
            else:
                print(f"the run in {settings.results_dir} is trained ({run.epoch} epochs): its checkpoint is loaded")
                run.show_history = True  # the training cell shows the epochs it loaded, as the run printed them
        else:
            if settings.resume:
                print(f"resume is set but there is no {run.checkpoint}: starting from scratch")
            print(f"training from scratch: {settings.epochs} epochs, results in {settings.results_dir}/")
        run.snapshot = run.state()
        return run

    def made_by_other_code(self, saved) -> bool:
        """True when the folder holds a run of other code and the spec's run trains afresh over it.

        In results/ (the record of the current code) the spec's run starts afresh; any other folder
        is kept as it is and the run refused. False when the folder holds nothing, or this code's run.
        """
        changed = fingerprint.changes(saved["code"], self.code) if saved else []
        if not changed:
            return False
        what = f"{self.settings.results_dir}/ holds a run of other code (changed: {'; '.join(changed)})"
        if self.folder == RECORD and not self.settings.resume:
            self.why_afresh = f"{what}, and results/ is the record of the current code"
            return True
        raise RunRefused(
            f"{what}: it is kept. Give this run another folder (name = '...', headless VAE_NAME=...), "
            f"or delete {self.settings.results_dir}/ to train this code there."
        )

    def check(self, model, optimizer):
        """Refuse a model and optimiser that are not this run's (a cell run again alone), before any training."""
        params = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if model is not self.model or optimizer is not self.optimizer or params != {id(p) for p in model.parameters()}:
            raise RunRefused(
                "the model and the optimiser are not the run's (a cell above was run again alone): "
                "run the cells again from the model's cell on (or Run All)."
            )

    def state(self) -> dict:
        """Everything needed to go on: weights, optimiser, epoch, metrics, settings, generator (copies)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "metrics": self.history,
            "settings": vars(self.settings),
            "rng": self.generator.get_state(),
            "resumed": self.resumed,
            "code": self.code,
            "machine": self.machine,  # where the epochs so far ran (another thread count rounds otherwise)
        }
        return copy.deepcopy(state)

    def restore(self, state: dict):
        state = copy.deepcopy(state)  # the optimiser would otherwise update the saved tensors in place
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["rng"])
        self.history, self.epoch, self.resumed = state["metrics"], state["epoch"], state["resumed"]

    def epochs_to_train(self, model, optimizer) -> range:
        """The epochs left, numbered on from the last complete one (none when the run is finished).

        `model` and `optimizer` are the ones the training cell uses: they must be this run's.
        """
        self.check(model, optimizer)
        if self.show_history:
            self.show_history = False
            for row in self.history:
                print(epoch_line(row))
        return range(self.epoch + 1, self.settings.epochs + 1) if self.trains else range(0)

    @contextlib.contextmanager
    def stop_safely(self):
        """On a stop or a failure inside, go back to the last complete epoch; a stop says so in one line."""
        try:
            yield
        except BaseException as error:
            stopped_in = self.epoch + 1
            self.restore(self.snapshot)
            if not isinstance(error, KeyboardInterrupt) or isinstance(error, RunStopped):
                raise
            kept = f"the end of epoch {self.epoch}, as in {self.checkpoint}" if self.epoch else "its initial weights"
            raise RunStopped(
                f"Stopped during epoch {stopped_in}: the model is back at {kept}. Run this cell again to go on."
            ) from None

    def record_epoch(self, epoch, step_losses, test_terms, seconds) -> str:
        """Check an epoch's losses, add them to the history and save the checkpoint; the line to print."""
        bad_step = first_nonfinite(step_losses)
        if bad_step is not None:
            where = f"batch {bad_step} of {len(step_losses)}"
            raise NonFiniteLossError(epoch, where, self.checkpoint, self.settings.lr)
        train_loss = step_losses.sum().item() / self.settings.train_size
        test_loss, test_recon, test_kl = test_terms
        if not all(map(math.isfinite, (train_loss, test_loss, test_recon, test_kl))):
            raise NonFiniteLossError(epoch, "in the evaluation after it", self.checkpoint, self.settings.lr)
        row = dict(epoch=epoch, train_loss=train_loss, test_loss=test_loss, test_recon=test_recon,
                   test_kl=test_kl, seconds=round(seconds, 3))  # fmt: skip
        state = {**self.state(), "epoch": epoch, "metrics": [*self.history, row]}
        files.save_checkpoint(self.checkpoint, state)  # then the run is at this epoch, not before
        self.history, self.epoch, self.snapshot = list(state["metrics"]), epoch, state
        return epoch_line(row)

    def record(self, evaluation: dict, device, model) -> dict:
        """metrics.json (settings, code, provenance, history, evaluation, figures) and, when trained, vae.pt.

        `model` is the one the evaluation used: it must be this run's.
        """
        self.check(model, self.optimizer)
        if self.trains:
            files.save_weights(self.folder / "vae.pt", self.model)
        metrics = {
            "settings": vars(self.settings),
            "code": fingerprint.code_of(),
            **({"weights_from": self.weights_from} if self.settings.weights else {}),
            "provenance": provenance(device, self.folder),
            "finished": self.epoch == self.settings.epochs or not self.trains,
            "epochs": self.history,
            "resumed": self.resumed,
            "test_loss": evaluation["test_loss"],
            "evaluation": evaluation,
            "figures": sorted(path.name for path in self.folder.glob("*.png")),
        }
        files.write_json(self.folder / "metrics.json", metrics)
        return metrics


def epoch_line(row) -> str:
    terms = f"{row['test_recon']:6.2f} recon + {row['test_kl']:5.2f} KL"
    return f"epoch {row['epoch']:2d}  train {row['train_loss']:7.2f}  test {row['test_loss']:7.2f} = {terms}"


def weights_code(path, code) -> dict:
    """Which code made the weights in `path`, from the metrics.json beside them, for the record."""
    try:
        saved = files.read_metrics(Path(REPO / path).parent).get("code")
    except files.UnreadableRun:
        return {"code": None, "said": "their code is unknown: no metrics.json of a run beside them"}
    changed = fingerprint.changes(saved, code)
    said = f"made by other code: {'; '.join(changed)} changed" if changed else "made by this code"
    return {"code": saved, "said": said}


def first_nonfinite(step_losses) -> int | None:
    """1-based index of the first non-finite value in a 1-D tensor of per-step losses, or None."""
    bad = (~torch.isfinite(step_losses)).nonzero()
    return int(bad[0, 0]) + 1 if len(bad) else None


def resume_changes(saved: dict, settings) -> dict:
    """Settings that differ from the checkpoint's and are allowed to: recorded in metrics.json."""
    return {
        name: [saved[name], value]
        for name, value in vars(settings).items()
        if name not in IGNORED_ON_RESUME and saved[name] != value
    }
