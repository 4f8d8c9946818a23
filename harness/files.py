"""The files of a run's folder, written safely and read with suspicion.

* writes      -- `write_text`, `write_json`, `save_checkpoint` through `vae_utils.atomic_path`: a
                 temporary file renamed into place, so a stopped run never leaves a half-written file.
* metrics     -- `read_metrics`, the one reader of metrics.json.
* checkpoints -- `save_checkpoint` / `load_checkpoint` and `save_weights` / `load_weights`, which
                 trust a file only when it is what it claims (`CheckpointError` otherwise).
* the lock    -- `lock_folder`: one writer per run folder, held until the process ends (`filelock`:
                 the operating system's lock on every platform).
"""

import io
import json
import os
import re
import zipfile
from pathlib import Path

import filelock
import torch

from vae_utils import atomic_path


# ---- writes ----------------------------------------------------------------------------------
def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path, obj) -> Path:
    """JSON, atomically; NaN or infinity is refused (a JSON reader would reject the file)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


class UnreadableRun(ValueError):
    """A run's metrics.json is missing or cannot be read; the message names the file."""


def read_metrics(folder, missing_ok=False):
    """The metrics.json of the run in `folder`; None when it is missing and `missing_ok`."""
    path = Path(folder) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise UnreadableRun(f"{path} is missing: that run has not finished.") from None
    except (OSError, ValueError) as error:
        raise UnreadableRun(f"{path} cannot be read ({type(error).__name__}: {error}).") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("settings"), dict):
        raise UnreadableRun(f"{path} is not the metrics.json of a run: it has no settings.")
    wrong = wrong_fields(metrics["settings"], metrics.get("epochs"))
    wrong += [] if isinstance(metrics.get("code"), dict | type(None)) and "code" in metrics else ["code (missing)"]
    wrong += [f"{key} (not a number)" for key in ("test_loss",) if key in metrics and not is_number(metrics[key])]
    evaluation = metrics.get("evaluation", {})
    wrong += [
        f"evaluation.{key} (not a number)" for key in EVALUATION if key in evaluation and not is_number(evaluation[key])
    ]
    if wrong:
        raise UnreadableRun(f"{path} is not a whole record: wrong {', '.join(wrong[:4])}.")
    return metrics


ROW = ("epoch", "train_loss", "test_loss", "test_recon", "test_kl", "seconds")  # an epoch of the history
EVALUATION = ("test_loss", "test_recon", "test_kl", "elbo", "elbo_se", "iw_bound", "iw_bound_se", "iw_samples",
              "active_units")  # fmt: skip


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def wrong_fields(settings: dict, history) -> list:
    """What a saved run (metrics.json, a checkpoint) lacks or holds wrongly: no setting is ever guessed."""
    from harness.settings import SETTINGS

    wrong = [f"settings.{n} (missing)" for n in SETTINGS if n not in settings]
    wrong += [f"settings.{n} = {settings[n]!r} (not {s.accepts})" for n, s in SETTINGS.items()
              if n in settings and not s.check(settings[n])]  # fmt: skip
    if not isinstance(history, list):
        return [*wrong, "the epochs' history (missing)"]
    return wrong + [
        f"epoch row {i} (fields {', '.join(ROW)} must be numbers)"
        for i, row in enumerate(history, start=1)
        if not isinstance(row, dict) or not all(is_number(row.get(k)) for k in ROW)
    ]


# ---- checkpoints -----------------------------------------------------------------------------
class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, not ours, or from other settings."""


CHECKPOINT_TYPES = {
    "model": dict,
    "optimizer": dict,
    "epoch": int,
    "metrics": list,
    "settings": dict,
    "rng": torch.Tensor,
    "resumed": list,
    "code": dict | type(None),  # None: made before runs recorded their code
    "machine": dict | type(None),  # None: made before checkpoints recorded their machine
}
RNG = {len(torch.Generator().get_state()), 16}  # the bytes of a CPU generator's state, and of CUDA's


def save_checkpoint(path, state: dict) -> Path:
    """torch.save to a temporary file, then rename: the previous checkpoint survives a crash.

    Saved through a buffer, so the archive's inner name is always the same: the same state gives
    the same bytes (a re-run with the same numbers does not rewrite a committed vae.pt).
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def safe_load(path, what):
    """torch.load(weights_only=True), or CheckpointError with the reason in one line.

    torch.save writes a zip archive: anything else (empty, truncated, another format) is refused
    before torch reads it. A forbidden global is named, without torch's advice to turn off the
    safe loader.
    """
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise CheckpointError(f"{what} cannot be used: it is truncated or not a PyTorch file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- whatever torch.load raised, the file is unusable
        text = str(error)
        forbidden = re.search(r"GLOBAL ([\w.]+)", text)
        if forbidden:
            reason = (
                f"it names the Python object {forbidden.group(1)}, which a checkpoint never holds "
                "(refused unread: loading it could run code)"
            )
        else:
            first = next((line for line in text.splitlines() if line.strip() and "weights_only" not in line), "")
            reason = f"{type(error).__name__}: {first[:200]}"
        raise CheckpointError(f"{what} cannot be used: {reason}.") from None


def load_checkpoint(path, model=None) -> dict:
    """Load a checkpoint written by `save_checkpoint` with `weights_only=True` (it runs no code).

    Raises `CheckpointError`, stating the reason, when the file cannot be read, is not a checkpoint
    of this notebook (keys, types), or holds another model (with `model`: names or shapes differ).
    Whether its settings fit the run is `folders.check_folder`'s question.
    """
    state = safe_load(path, f"the checkpoint {path}")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this notebook: it holds a {type(state).__name__}.")
    state.setdefault("code", None)
    state.setdefault("machine", None)
    wrong = [
        f"{key} (expected {getattr(kind, '__name__', 'dict')}, found {type(state.get(key)).__name__})"
        for key, kind in CHECKPOINT_TYPES.items()
        if not isinstance(state.get(key), kind)
    ]
    if not wrong and not all(isinstance(t, torch.Tensor) for t in state["model"].values()):
        wrong.append("model (not all tensors)")
    if not wrong and (state["epoch"] < 1 or len(state["metrics"]) != state["epoch"]):
        wrong.append(f"epoch {state['epoch']} with {len(state['metrics'])} epochs of metrics")
    if not wrong:
        wrong = wrong_fields(state["settings"], state["metrics"])
    if not wrong and (state["rng"].dtype != torch.uint8 or state["rng"].dim() != 1 or len(state["rng"]) not in RNG):
        wrong.append(f"rng (a generator state of {len(state['rng'])} {state['rng'].dtype} values)")
    if wrong:
        raise CheckpointError(f"{path} is not a checkpoint of this notebook: wrong {', '.join(wrong)}.")
    if model is not None:
        check_weights(state["model"], model, path)
        shapes = [tuple(p.shape) for p in model.parameters()]
        moments = [(i, t) for i, st in state["optimizer"].get("state", {}).items() for t in st.values()]
        if any(t.dim() and (not 0 <= int(i) < len(shapes) or tuple(t.shape) != shapes[int(i)]) for i, t in moments):
            raise CheckpointError(f"{path} holds an optimiser of another model (its moments' shapes differ).")
    return state


def save_weights(path, model) -> Path:
    """The trained weights alone (the state dict), for the `weights` setting or `model.load_state_dict`."""
    return save_checkpoint(path, model.state_dict())


def load_weights(path, model=None) -> dict:
    """A state dict written by `save_weights`, loaded safely (into `model`, checked against it), or CheckpointError.

    Without `model` it is only checked whole: the settings check does that before any data is loaded.
    """
    weights = safe_load(path, f"weights={path}")
    if not isinstance(weights, dict) or not weights or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"weights={path} is not a weights file (a state dict of tensors).")
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
        raise CheckpointError(f"{path} holds another model: {', '.join(map(str, diff[:4]))} (another latent_dim?).")


# ---- one writer per run folder ---------------------------------------------------------------
class FolderInUse(RuntimeError):
    """Another process holds the run folder's lock."""


HELD = {}  # folder -> its held filelock: kept (and locked) for as long as this process lives


def lock_folder(folder: Path, alone=True) -> None:
    """Take the run folder's lock (an OS lock on `folder/.lock`) for the rest of this process.

    The operating system releases it when the process ends, however it ends: a killed run leaves
    no stale lock. Taking it again in the same process (a notebook cell run twice) is a no-op; with
    `alone`, the process gives up the others it holds (a notebook whose settings changed). Another
    process's lock raises `FolderInUse` naming that process (from `folder/.lock.owner`).
    """
    folder = Path(folder).resolve()
    if folder in HELD and (folder / ".lock").exists():  # a deleted folder takes its lock with it
        return
    if alone:
        release_folders()
    folder.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(folder / ".lock", thread_local=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        owner = folder / ".lock.owner"
        holder = owner.read_text().strip() if owner.exists() else "another process"
        raise FolderInUse(f"{folder} is in use by {holder}: one run at a time writes a folder.") from None
    write_text(folder / ".lock.owner", f"process {os.getpid()} ({describe_process(os.getpid())})\n")
    HELD[folder] = lock


def check_free(folder: Path) -> None:
    """`FolderInUse` if another process holds the folder's lock; this process takes none."""
    if (Path(folder) / ".lock").exists() and Path(folder).resolve() not in HELD:
        lock_folder(folder, alone=False)
        HELD.pop(Path(folder).resolve()).release(force=True)


def release_folders() -> None:
    """Give up every lock this process holds (a notebook that changes its results folder)."""
    for lock in HELD.values():
        lock.release(force=True)
    HELD.clear()


def describe_process(pid) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "a Python process"
    return command.strip()[:120] or "a Python process"
