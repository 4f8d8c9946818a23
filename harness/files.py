"""The files of a run's folder, written safely and read with suspicion.

* writes      -- `write_text`, `write_json`, `save_checkpoint`: a temporary file renamed into place (`atomic_path`).
* records     -- `Record` and `Checkpoint`, the schemas of metrics.json and checkpoint.pt, read with today's settings.
* checkpoints -- `save_checkpoint` / `load_checkpoint` and `save_weights` / `load_weights`: a file that
                 does not load or does not fit is a `CheckpointError` of one line naming it and why.
* the lock    -- `lock_folder`: one writer per run folder, held until the process ends (`filelock`, an OS lock).
"""

import io
import json
import os
import re
import sys
from pathlib import Path

import filelock
import pydantic
import torch

from harness import OneLine, settings
from vae_utils import atomic_path


# ---- writes ----------------------------------------------------------------------------------
def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")  # every platform alike
    return Path(path)


def write_json(path, obj) -> Path:
    """JSON, atomically; NaN or infinity is refused (a JSON reader would reject the file)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


# ---- records ---------------------------------------------------------------------------------
class UnreadableRun(OneLine, ValueError):
    """A run's metrics.json is missing or cannot be read; the message names the file."""


class Part(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow", allow_inf_nan=False, strict=True)


class Epoch(Part):  # a row of the history, as `TrainingRun.record_epoch` writes it
    epoch: int
    train_loss: float
    test_loss: float
    test_recon: float
    test_kl: float
    seconds: float


class Evaluation(Part):  # the notebook's last cells
    test_loss: float
    test_recon: float
    test_kl: float
    elbo: float
    elbo_se: float
    iw_bound: float
    iw_bound_se: float
    iw_samples: int
    active_units: int
    kl_per_dimension: list[float] = []


class Run(Part):  # what a record and a checkpoint share. `code` is None for a run made before runs recorded it
    settings: dict
    code: dict | None = None
    resumed: list = []

    @pydantic.field_validator("settings")
    @classmethod
    def known_settings(cls, saved):
        wrong = settings.wrong(saved)
        if wrong:
            raise ValueError(", ".join(wrong[:3]))
        return settings.complete(saved)


class Record(Run):  # metrics.json
    provenance: dict = {}
    finished: bool
    epochs: list[Epoch]
    test_loss: float
    evaluation: Evaluation


class Checkpoint(Run, arbitrary_types_allowed=True):  # checkpoint.pt, as `TrainingRun.state` writes it
    epoch: int
    metrics: list[Epoch]
    model: dict
    optimizer: dict
    rng: torch.Tensor

    @pydantic.model_validator(mode="after")
    def one_row_per_epoch(self):
        assert self.epoch == len(self.metrics) >= 1, f"epoch {self.epoch} with {len(self.metrics)} rows of metrics"
        return self


METRICS = pydantic.TypeAdapter(Record)  # metrics.json
TIMINGS = pydantic.TypeAdapter(dict[str, pydantic.FiniteFloat], config=pydantic.ConfigDict(strict=True))  # seconds


def read_json(path: Path, schema: pydantic.TypeAdapter):
    """The JSON file at `path` read with `schema`; else UnreadableRun, one line naming it and its first fault."""
    try:
        return schema.validate_json(path.read_bytes())
    except FileNotFoundError:
        raise UnreadableRun(f"{path} is missing: that run has not finished.") from None
    except OSError as error:
        raise UnreadableRun(f"{path} cannot be read ({error}).") from None
    except pydantic.ValidationError as error:
        raise UnreadableRun(f"{path} is not a whole record: {first_fault(error)}.") from None


def first_fault(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    return f"{'.'.join(map(str, first['loc'])) or 'the file'}: {first['msg']}"


def read_metrics(folder, missing_ok=False):
    """The metrics.json of the run in `folder` (as a dict), its settings completed; None if missing and `missing_ok`."""
    path = Path(folder) / "metrics.json"
    return None if missing_ok and not path.exists() else read_json(path, METRICS).model_dump()


def read_timings(folder) -> dict:
    """A study's seconds of wall time per run (its timings.json), or {} before its first run finished."""
    path = Path(folder) / "timings.json"
    return read_json(path, TIMINGS) if path.exists() else {}


# ---- checkpoints -----------------------------------------------------------------------------
class CheckpointError(OneLine, RuntimeError):
    """A checkpoint or weights file cannot be used; the message names it and says why."""


def save_checkpoint(path, state: dict) -> Path:
    """torch.save to a temporary file, then rename: the previous checkpoint survives a crash. Through a buffer, so
    the archive's inner name is fixed: the same state gives the same bytes (a committed vae.pt is not rewritten)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def safe_load(path, what):
    """torch.load(weights_only=True: it runs no code), or CheckpointError with torch's reason in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- whatever torch.load raised, the file is unusable
        named = re.search(r"GLOBAL ([\w.]+)", str(error))  # torch's advice to load it unsafely is not repeated
        first = re.split(r"(?<=\.) ", (str(error).splitlines() or ["empty or cut short"])[0])[0]  # its first sentence
        reason = f"it names the Python object {named[1]} (refused unread)" if named else ""  # torch's own words
        reason = reason or f"not a whole file written by torch.save ({type(error).__name__}: {first})"  # are cryptic
        raise CheckpointError(f"{what} cannot be used: {reason[:200]}") from None


def load_checkpoint(path, model=None) -> dict:
    """A checkpoint written by `TrainingRun`, its settings completed (and with `model`: of its shapes)."""
    state = safe_load(path, f"the checkpoint {path}")
    try:
        checked = Checkpoint.model_validate(state)
    except pydantic.ValidationError as error:
        raise CheckpointError(f"{path} is not a checkpoint of this notebook: {first_fault(error)}.") from None
    state = {**state, "settings": checked.settings, "code": checked.code, "resumed": checked.resumed}  # defaults too
    if model is not None:
        check_weights(state["model"], model, path)
    return state


def save_weights(path, model) -> Path:
    """The trained weights alone (the state dict), for the `weights` setting or `model.load_state_dict`."""
    return save_checkpoint(path, model.state_dict())


def load_weights(path, model=None) -> dict:
    """A state dict of finite tensors written by `save_weights` (loaded into `model`), or CheckpointError."""
    weights = safe_load(path, f"weights={path}")
    tensors = list(weights.values()) if isinstance(weights, dict) else [None]
    dense = [isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type == "cpu" for t in tensors]
    if not tensors or not all(dense) or any(t.is_quantized for t in tensors):  # sparse, meta: no VAE's state
        raise CheckpointError(f"weights={path} is not a weights file (a state dict of dense tensors).")
    bad = [name for name, t in weights.items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise CheckpointError(f"weights={path} holds NaN or infinite values (in {bad[0]}): a diverged run's.")
    if model is not None:
        check_weights(weights, model, f"weights={path}")
        model.load_state_dict(weights)
    return weights


def check_weights(weights: dict, model, path):
    """CheckpointError unless `weights` has exactly the names and shapes of `model`'s parameters."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in weights.items()}
    if found != expected:
        diff = sorted(set(found) ^ set(expected)) or [
            f"{n} {found[n]} instead of {expected[n]}" for n in expected if found[n] != expected[n]
        ]
        raise CheckpointError(f"{path} holds another model: {', '.join(map(str, diff[:4]))}.")


# ---- one writer per run folder ---------------------------------------------------------------
class FolderInUse(RuntimeError):
    """Another process holds the run folder's lock."""


HELD = {}  # folder -> its held filelock: kept (and locked) for as long as this process lives


def lock_folder(folder: Path) -> None:
    """Take the run folder's lock (an OS lock on `folder/.lock`) for the rest of this process: the system releases
    it however the process ends, so a killed run leaves no stale lock. Taken again in this process (a cell run twice):
    a no-op. Another process's lock raises `FolderInUse` naming that process (from `folder/.lock.owner`)."""
    folder = Path(folder).resolve()
    if folder in HELD and (folder / ".lock").exists():  # a deleted folder takes its lock with it
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(folder / ".lock", thread_local=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        owner = folder / ".lock.owner"
        holder = owner.read_text(encoding="utf-8").strip() if owner.exists() else "another process"
        raise FolderInUse(f"{folder} is in use by {holder}: one run at a time writes a folder.") from None
    command = " ".join(sys.orig_argv)[:120]  # what this process was started as
    write_text(folder / ".lock.owner", f"process {os.getpid()} ({command})\n")
    HELD[folder] = lock


def check_free(folder: Path) -> None:
    """`FolderInUse` if another process holds the folder's lock; this process takes none."""
    if (Path(folder) / ".lock").exists() and Path(folder).resolve() not in HELD:
        lock_folder(folder)
        HELD.pop(Path(folder).resolve()).release(force=True)


def release_folders(keep=()) -> None:
    """Give up every lock this process holds but those of `keep` (a notebook that changes its results folder)."""
    for folder in [folder for folder in HELD if folder not in keep]:
        HELD.pop(folder).release(force=True)
