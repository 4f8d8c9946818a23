"""A run's training state and its record, kept consistent however the notebook's cells are run.

`TrainingRun.start` begins a run, from scratch, from the folder's checkpoint (a finished run, or
`resume`), or from given weights, and says which. `record_epoch` scores nothing itself: it takes
an epoch's losses, refuses a non-finite one, and saves the checkpoint. `stop_safely` wraps the
training loop: a stop (the kernel interrupt, Ctrl-C) or a failure puts the model, the optimiser
and the generator back at the end of the last complete epoch, so that running the cell again
goes on exactly as an uninterrupted run would. `record` writes metrics.json and vae.pt together.
"""

import contextlib
import copy
import math
import platform
import subprocess
from pathlib import Path

import torch

import run_files
from settings import REPO, inside
from spec import SPEC

IGNORED_ON_RESUME = {"resume", "results_dir", "name"}


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


class RunStopped(KeyboardInterrupt):
    """Training was stopped; the model is back at the last complete epoch. Shown as its one line."""

    def _render_traceback_(self):  # IPython shows this instead of a traceback
        return [str(self)]


class TrainingRun:
    def __init__(self, settings, model, optimizer, generator):
        self.settings, self.model, self.optimizer, self.generator = settings, model, optimizer, generator
        self.folder = REPO / settings.results_dir
        self.checkpoint = self.folder / "checkpoint.pt"
        self.history, self.resumed, self.epoch = [], [], 0
        self.trains = not settings.weights
        self.snapshot = self.state()

    @classmethod
    def start(cls, settings, model, optimizer, generator) -> "TrainingRun":
        """A new run, the folder's run continued, or given weights; prints which."""
        run = cls(settings, model, optimizer, generator)
        if settings.weights:
            run_files.load_weights(settings.weights, model)
            print(f"no training: evaluating the weights in {settings.weights}")
        elif run.checkpoint.exists():  # settings.check_folder allowed it: finished, or resume
            state = run_files.load_checkpoint(run.checkpoint, model)
            run.restore(state)
            if run.epoch < settings.epochs:
                changed = resume_changes(state["settings"], settings)
                run.resumed = [*state["resumed"], {"after_epoch": run.epoch, "changed": changed}]
                print(f"resuming after epoch {run.epoch} from {run.checkpoint}")
            else:
                print(f"the run in {settings.results_dir} is trained ({run.epoch} epochs): its checkpoint is loaded")
        else:
            if settings.resume:
                print(f"resume is set but there is no {run.checkpoint}: starting from scratch")
            print(f"training from scratch: {settings.epochs} epochs, results in {settings.results_dir}/")
        run.snapshot = run.state()
        return run

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
        }
        return copy.deepcopy(state)

    def restore(self, state: dict):
        state = copy.deepcopy(state)  # the optimiser would otherwise update the saved tensors in place
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["rng"])
        self.history, self.epoch, self.resumed = state["metrics"], state["epoch"], state["resumed"]

    def epochs_to_train(self) -> range:
        """The epochs left, numbered on from the last complete one (none when the run is finished)."""
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
        run_files.save_checkpoint(self.checkpoint, state)  # then the run is at this epoch, not before
        self.history, self.epoch, self.snapshot = list(state["metrics"]), epoch, state
        terms = f"{test_recon:6.2f} recon + {test_kl:5.2f} KL"
        return f"epoch {epoch:2d}  train {train_loss:7.2f}  test {test_loss:7.2f} = {terms}"

    def record(self, evaluation: dict, device) -> dict:
        """metrics.json (settings, provenance, history, evaluation, figures) and, when trained, vae.pt."""
        if self.trains:
            run_files.save_weights(self.folder / "vae.pt", self.model)
        metrics = {
            "settings": vars(self.settings),
            "provenance": provenance(device, self.folder),
            "finished": self.epoch == self.settings.epochs or not self.trains,
            "epochs": self.history,
            "resumed": self.resumed,
            "test_loss": evaluation["test_loss"],
            "evaluation": evaluation,
            "figures": sorted(path.name for path in self.folder.glob("*.png")),
        }
        run_files.write_json(self.folder / "metrics.json", metrics)
        return metrics


def first_nonfinite(step_losses) -> int | None:
    """1-based index of the first non-finite value in a 1-D tensor of per-step losses, or None."""
    bad = (~torch.isfinite(step_losses)).nonzero()
    return int(bad[0, 0]) + 1 if len(bad) else None


def resume_changes(saved: dict, settings) -> dict:
    """Settings that differ from the checkpoint's and are allowed to: recorded in metrics.json."""
    return {
        name: [saved.get(name, SPEC.get(name)), value]
        for name, value in vars(settings).items()
        if name not in IGNORED_ON_RESUME and saved.get(name, SPEC.get(name)) != value
    }


# ---- provenance ------------------------------------------------------------------------------
def git(*args):
    """(output, None) or (None, the reason git could not answer)."""
    try:
        done = subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"git could not run: {error}"
    if done.returncode != 0:
        return None, f"git {args[0]} failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}"
    return done.stdout.strip(), None


def provenance(device, results) -> dict:
    """What produced a run: versions, device, threads and the git state of this folder.

    `git_dirty` says whether tracked files differ from `git_commit`, not counting the run's own
    results folder; either is `None` with `git_unknown` saying why when git cannot tell.
    """
    import torchvision

    commit, reason = git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        status = ["status", "--porcelain", "--untracked-files=no", "--", "."]
        results = Path(results).resolve()
        if inside(results, REPO):
            status.append(f":(exclude){results.relative_to(REPO)}")
        changes, reason = git(*status)
        dirty = None if changes is None else bool(changes)
    facts = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
    }
    if reason:
        facts["git_unknown"] = reason
    return facts
