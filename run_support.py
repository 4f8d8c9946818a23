"""The machinery around a run of the notebook: settings, device, checkpoints, provenance.

* settings    -- `SETTINGS`, one table of every setting (default, what it accepts, whether it
                 changes the recorded numbers); `load_settings` reads the `VAE_<NAME>` environment
                 variables, checks every value and their combination, chooses the results folder
                 (`results/` for the spec run, `runs/<name>/` for anything else) and checks it,
                 all before any work.
* device      -- `pick_device`, `enable_determinism`.
* files       -- `write_json`; `save_checkpoint` / `load_checkpoint`, which trusts a checkpoint
                 only when it is what it claims (`CheckpointError` otherwise).
* failures    -- `NonFiniteLossError`, `first_nonfinite`.
* provenance  -- `provenance`: versions, device and git state, or `null` with the reason.
"""

import io
import json
import math
import os
import platform
import re
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from vae_utils import LIKELIHOODS, OBJECTIVES, atomic_path

REPO = Path(__file__).resolve().parent
RECORD = Path("results")  # the committed record of the spec run
RUNS = Path("runs")  # every other run, one folder each (ignored by git)
STUDIES = RECORD / "studies"  # the committed studies, one folder each


class SettingsError(ValueError):
    """A setting (or its `VAE_<NAME>` environment variable) has a value that cannot be used."""


@dataclass(frozen=True)
class Setting:
    default: object
    accepts: str  # what the setting accepts, in words
    check: Callable  # value -> bool
    changes_numbers: bool  # another value is an experiment, not the spec's run
    help: str  # what it does


def _whole(low, high=None):
    return lambda value: low <= value and (high is None or value <= high)


def _any(value):
    return True


# fmt: off
SETTINGS = {  # name: Setting(default, what it accepts, its check, changes the numbers?, what it does)
    "seed": Setting(0, "a whole number from 0 to 2**63 - 1", _whole(0, 2**63 - 1), True,
                    "seeds the initial weights and the training generator"),
    "epochs": Setting(20, "a whole number >= 1", _whole(1), True, "epochs of training (with resume: the total)"),
    "batch_size": Setting(128, "a whole number >= 1", _whole(1), True, "mini-batch size"),
    "lr": Setting(1e-3, "a number > 0 and <= 0.01 (0.03 and more diverge within the first batches)",
                  lambda v: math.isfinite(v) and 0 < v <= 0.01, True, "Adam learning rate"),
    "latent_dim": Setting(20, "a whole number from 2 to 784 (the figures need two dimensions)", _whole(2, 784),
                          True, "size of z"),
    "likelihood": Setting("bernoulli", "one of " + ", ".join(LIKELIHOODS), lambda v: v in LIKELIHOODS, True,
                          "`bernoulli` (the spec), `continuous_bernoulli`, `binarized`"),
    "objective": Setting("elbo", "elbo or iwae", lambda v: v in OBJECTIVES, True,
                         "`elbo` (the spec) or `iwae`, the importance-weighted bound of `train_samples` draws"),
    "train_samples": Setting(1, "a whole number from 1 to 5000 (with objective iwae)", _whole(1, 5000), True,
                             "k of the `iwae` objective; 1 with `elbo`"),
    "beta": Setting(1.0, "a number > 0 and <= 100", lambda v: math.isfinite(v) and 0 < v <= 100, True,
                    "weight of the KL term while training (beta-VAE); the test loss is always the ELBO"),
    "kl_warmup": Setting(0, "a whole number of epochs from 0 to epochs", _whole(0), True,
                         "epochs over which the KL weight rises linearly from 0 to `beta`"),
    "iw_samples": Setting(50, "a whole number from 1 to 10000", _whole(1, 10_000), True,
                          "k of the importance-weighted bound; `5000` is the paper's (minutes on a CPU)"),
    "train_size": Setting(60_000, "a whole number from 1 to 60000 (the MNIST training set)", _whole(1, 60_000),
                          True, "train on the first N images"),
    "test_size": Setting(10_000, "a whole number from 6 to 10000 (the figures use 6 test digits)",
                         _whole(6, 10_000), True, "evaluate on the first N test images"),
    "weights": Setting("", "the path of a weights file written by a run (vae.pt), or nothing", _any, True,
                       "skip training: evaluate and draw from these weights"),
    "device": Setting("auto", "auto, cpu, cuda, cuda:N or mps",
                      lambda v: bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)), False,
                      "`auto` picks CUDA, then MPS, then the CPU"),
    "deterministic": Setting(False, "1/0, true/false, yes/no", _any, False,
                             "`torch.use_deterministic_algorithms` (GPUs; CPU runs are already)"),
    "name": Setting("", "a folder name: letters, digits and . _ = , -",
                    lambda v: v == "" or (bool(re.fullmatch(r"[\w.=,-]+", v)) and v not in {".", ".."}), False,
                    "the run's folder under `runs/` (default: made from the settings)"),
    "results_dir": Setting("", "a folder you can write to", _any, False, "where the run writes (overrides the name)"),
    "data_dir": Setting("data", "a folder that holds, or can hold, MNIST/raw", lambda v: v != "", False,
                        "where `MNIST/raw` lives"),
    "resume": Setting(False, "1/0, true/false, yes/no", _any, False,
                      "`1` continues the run from `checkpoint.pt` in its folder"),
}
# fmt: on
SPEC = {name: s.default for name, s in SETTINGS.items() if s.changes_numbers}
RESUME_MAY_CHANGE = {"epochs", "iw_samples"}  # evaluation-only or the length of training
TRAINING = {
    "epochs",
    "batch_size",
    "lr",
    "objective",
    "train_samples",
    "beta",
    "kl_warmup",
}  # change nothing without it
MAX_TRAIN_ROWS = 2**16  # decoder rows per training step (train_samples x batch_size): about 1.5 GB


def settings_table() -> str:
    """README's table of settings, from `SETTINGS`."""

    def shown(value):
        return str(int(value)) if isinstance(value, bool) else str(value) or "(none)"

    lines = ["| variable | default | what it does | accepts |", "|---|---|---|---|"]
    for name, setting in SETTINGS.items():
        lines.append(f"| `VAE_{name.upper()}` | {shown(setting.default)} | {setting.help} | {setting.accepts} |")
    return "\n".join(lines)


def _parse(name, text):
    kind = type(SETTINGS[name].default)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError
        if kind is int:
            return int(text.replace("_", ""))
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise SettingsError(
            f"VAE_{name.upper()}={text!r} is not valid: {name} takes {SETTINGS[name].accepts}."
        ) from None


def is_spec_run(settings) -> bool:
    """True when every setting that changes the recorded numbers has the spec's value."""
    return all(_get(settings, name) == value for name, value in SPEC.items())


def run_name(settings) -> str:
    """A folder name made from the settings that differ from the spec, e.g. `epochs=2,lr=0.01`."""
    parts = []
    for name, value in SPEC.items():
        mine = _get(settings, name)
        if mine != value:
            parts.append(f"{name}={Path(mine).name if name == 'weights' else mine}")
    return ",".join(parts) or "spec"


def _get(settings, name):
    values = settings if isinstance(settings, dict) else vars(settings)
    return values.get(name, SETTINGS[name].default)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def load_settings(environ=None, **overrides) -> SimpleNamespace:
    """The run's settings: the defaults of `SETTINGS`, `overrides`, then `VAE_<NAME>` variables.

    Every value, their combination and the results folder are checked before any work; a bad one
    raises `SettingsError` naming the setting and what it accepts. A `VAE_*` variable that names no
    setting is an error too, so a typo (`VAE_EPOCH=5`) cannot silently run the defaults.
    `results_dir` comes back chosen: `results/` for the spec run, `runs/<name>/` for any other.
    """
    environ = os.environ if environ is None else environ
    values = {name: s.default for name, s in SETTINGS.items()}
    for name, value in overrides.items():
        if name not in SETTINGS:
            raise SettingsError(f"{name!r} is not a setting. The settings are: {', '.join(SETTINGS)}.")
        values[name] = value
    source = dict.fromkeys(overrides, "the notebook")
    for key, text in environ.items():
        if key.startswith("VAE_"):
            name = key[4:].lower()
            if name not in SETTINGS:
                known = ", ".join(f"VAE_{n.upper()}" for n in SETTINGS)
                raise SettingsError(f"{key} is not a setting. The settings are: {known}.")
            values[name], source[name] = _parse(name, text), key
    for name, value in values.items():
        setting = SETTINGS[name]
        if type(value) is not type(setting.default) or not setting.check(value):
            raise SettingsError(
                f"{name} must be {setting.accepts}; got {value!r} (from {source.get(name, 'default')})."
            )
    settings = SimpleNamespace(**values)
    _check_combination(settings)
    if settings.device != "auto":
        pick_device(settings.device)  # fails now, not after the data is loaded
    settings.results_dir = str(_choose_results_dir(settings))
    _check_folders(settings)
    return settings


def _check_combination(settings):
    if settings.weights:
        if not (REPO / settings.weights).is_file():
            raise SettingsError(f"VAE_WEIGHTS={settings.weights}: no such file. Give the path of a vae.pt.")
        if settings.resume:
            raise SettingsError("VAE_WEIGHTS evaluates given weights without training; unset VAE_RESUME.")
        trained = TRAINING & {n for n in SPEC if _get(settings, n) != SPEC[n]}
        if trained:
            raise SettingsError(
                f"VAE_WEIGHTS skips training, so {', '.join(sorted(trained))} would change nothing; "
                "unset " + ", ".join(f"VAE_{n.upper()}" for n in sorted(trained)) + "."
            )
    if settings.objective == "elbo" and settings.train_samples != 1:
        raise SettingsError(
            f"train_samples={settings.train_samples} is the k of the iwae objective; with objective elbo it must be 1."
        )
    if settings.objective == "iwae" and (settings.beta != 1 or settings.kl_warmup):
        raise SettingsError(
            "beta and kl_warmup weight the KL term of the elbo objective; iwae has no separate KL term. "
            "Use them with objective elbo, or leave them at 1 and 0."
        )
    if settings.train_samples * settings.batch_size > MAX_TRAIN_ROWS:
        raise SettingsError(
            f"train_samples x batch_size = {settings.train_samples * settings.batch_size:,} decoder rows per step; "
            f"at most {MAX_TRAIN_ROWS:,} fit in memory. Lower train_samples or batch_size."
        )
    if settings.kl_warmup > settings.epochs:
        raise SettingsError(
            f"kl_warmup={settings.kl_warmup} is longer than the run (epochs={settings.epochs}): the KL weight "
            "would never reach beta. Choose kl_warmup from 0 to epochs."
        )
    if settings.name and settings.results_dir:
        raise SettingsError("set VAE_NAME (a folder under runs/) or VAE_RESULTS_DIR, not both.")


def _choose_results_dir(settings) -> Path:
    if settings.results_dir:
        chosen = Path(settings.results_dir)
        where = (chosen if chosen.is_absolute() else REPO / chosen).resolve()
        if not is_spec_run(settings) and _inside(where, REPO / RECORD) and not _inside(where, REPO / STUDIES):
            raise SettingsError(
                f"VAE_RESULTS_DIR={settings.results_dir}: {RECORD}/ holds the record of the spec run, and "
                f"this run is an experiment ({run_name(settings)}). Unset VAE_RESULTS_DIR (it then "
                f"goes to {RUNS / run_name(settings)}/) or choose a folder outside {RECORD}/."
            )
        return chosen
    if settings.name:
        return RUNS / settings.name
    return RECORD if is_spec_run(settings) else RUNS / run_name(settings)


def _writable_folder(path: Path, variable: str):
    """SettingsError unless `path` is a folder that exists or can be made, and can be written."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(f"{variable}={path}: {existing} is not a folder. Choose a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(f"{variable}={path}: {existing} is not writable. Choose a folder you can write to.")


def _check_folders(settings):
    results = REPO / settings.results_dir
    _writable_folder(results, "VAE_RESULTS_DIR")
    data = REPO / settings.data_dir
    if not (data / "MNIST" / "raw").is_dir():
        _writable_folder(data, "VAE_DATA_DIR")
    checkpoint = results / "checkpoint.pt"
    if settings.resume and checkpoint.exists():
        load_checkpoint(checkpoint, settings)
        return
    previous = _previous_run(results)
    if previous is not None:
        differences = _differences(previous, vars(settings), SPEC)
        if differences:
            raise SettingsError(
                f"{settings.results_dir} holds a run with other settings ({'; '.join(differences)}). "
                "Choose another VAE_NAME or VAE_RESULTS_DIR, or delete that folder."
            )
    if checkpoint.exists():
        try:
            state = load_checkpoint(checkpoint)
        except CheckpointError as error:
            raise SettingsError(f"{error} Delete it to start afresh.") from None
        if state["epoch"] < state["settings"].get("epochs", 0):
            raise SettingsError(
                f"{checkpoint} holds an unfinished run (epoch {state['epoch']} of "
                f"{state['settings']['epochs']}). VAE_RESUME=1 continues it; to start afresh, delete "
                "it or choose another VAE_NAME."
            )


def _previous_run(results: Path):
    """The settings of the run recorded in `results` (its metrics.json), or None."""
    try:
        return json.loads((results / "metrics.json").read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _differences(saved: dict, current: dict, names) -> list:
    return [
        f"{name}: {_get(saved, name)!r} there, {_get(current, name)!r} now"
        for name in names
        if _get(saved, name) != _get(current, name)
    ]


def enable_determinism() -> None:
    """Ask PyTorch for deterministic kernels everywhere (CPU runs are deterministic already).

    Call before the first CUDA operation: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; a named device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count()),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise SettingsError(f"device {name!r} is not available on this machine; use VAE_DEVICE=auto or cpu.")
    return device


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path, obj) -> Path:
    """JSON, atomically; NaN or infinity is refused (a JSON reader would reject the file)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


# ---- failures while training -----------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the next checkpoint."""

    def __init__(self, epoch, where, checkpoint, lr):
        kept = (
            f"The last good checkpoint, {checkpoint}, is kept as it was"
            if Path(checkpoint).exists()
            else "No checkpoint had been written yet"
        )
        super().__init__(
            f"The loss became NaN or infinite at epoch {epoch}, {where}; training stopped. {kept}. "
            f"Run again with a lower learning rate, e.g. VAE_LR={lr / 10:g}: it starts afresh in a "
            "folder of its own (with VAE_NAME or VAE_RESULTS_DIR set, choose a new one)."
        )
        self.epoch = epoch


def first_nonfinite(step_losses) -> int | None:
    """1-based index of the first non-finite value in a 1-D tensor of per-step losses, or None."""
    bad = (~torch.isfinite(step_losses)).nonzero()
    return int(bad[0, 0]) + 1 if len(bad) else None


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
}


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


def _safe_load(path, what):
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


def load_checkpoint(path, settings=None, model=None) -> dict:
    """Load a checkpoint written by `save_checkpoint` with `weights_only=True` (it runs no code).

    Raises `CheckpointError`, stating the reason, when the file cannot be read, is not a checkpoint
    of this notebook (keys, types), holds another model (with `model`: names or shapes differ), or
    was made with settings that change the numbers (with `settings`: each difference is named).
    """
    state = _safe_load(path, f"the checkpoint {path}")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this notebook: it holds a {type(state).__name__}.")
    state.setdefault("resumed", [])
    wrong = [
        f"{key} (expected {kind.__name__}, found {type(state.get(key)).__name__})"
        for key, kind in CHECKPOINT_TYPES.items()
        if not isinstance(state.get(key), kind)
    ]
    if not wrong and not all(isinstance(t, torch.Tensor) for t in state["model"].values()):
        wrong.append("model (not all tensors)")
    if not wrong and (state["epoch"] < 1 or len(state["metrics"]) != state["epoch"]):
        wrong.append(f"epoch {state['epoch']} with {len(state['metrics'])} epochs of metrics")
    if wrong:
        raise CheckpointError(f"{path} is not a checkpoint of this notebook: wrong {', '.join(wrong)}.")
    if model is not None:
        check_weights(state["model"], model, path)
    if settings is not None:
        must_match = [name for name in SPEC if name not in RESUME_MAY_CHANGE]
        differences = _differences(state["settings"], vars(settings), must_match)
        if differences:
            raise CheckpointError(
                f"{path} was made with other settings "
                f"({'; '.join(differences).replace(' there', ' in the checkpoint')}). "
                "Resume with the checkpoint's settings, or start a new run in another folder."
            )
        if state["epoch"] > settings.epochs:
            raise CheckpointError(
                f"{path} is at epoch {state['epoch']}, past epochs={settings.epochs}; "
                f"set VAE_EPOCHS to at least {state['epoch']}."
            )
    return state


def save_weights(path, model) -> Path:
    """The trained weights alone (the state dict), for `VAE_WEIGHTS` or `model.load_state_dict`."""
    return save_checkpoint(path, model.state_dict())


def load_weights(path, model) -> None:
    """Load a state dict written by `save_weights` into `model`, safely, or raise CheckpointError."""
    weights = _safe_load(path, f"VAE_WEIGHTS={path}")
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"VAE_WEIGHTS={path} is not a weights file (a state dict of tensors).")
    check_weights(weights, model, f"VAE_WEIGHTS={path}")
    model.load_state_dict(weights)


def check_weights(weights: dict, model, path):
    """CheckpointError unless `weights` has exactly the names and shapes of `model`'s parameters."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in weights.items()}
    if found != expected:
        diff = sorted(set(found) ^ set(expected)) or [
            f"{n} {found[n]} instead of {expected[n]}" for n in expected if found[n] != expected[n]
        ]
        raise CheckpointError(f"{path} holds another model: {', '.join(map(str, diff[:4]))} (another VAE_LATENT_DIM?).")


def resume_changes(saved: dict, settings) -> dict:
    """Settings that differ from the checkpoint's and are allowed to: recorded in metrics.json."""
    ignore = {"resume", "results_dir", "name"}
    return {
        name: [_get(saved, name), value]
        for name, value in vars(settings).items()
        if name not in ignore and _get(saved, name) != value
    }


# ---- provenance ------------------------------------------------------------------------------
def _git(*args):
    """(output, None) or (None, the reason git could not answer)."""
    try:
        done = subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"git could not run: {error}"
    if done.returncode != 0:
        return None, f"git {args[0]} failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}"
    return done.stdout.strip(), None


def provenance(device, results_dir) -> dict:
    """What produced a run: versions, device, threads and the git state of this folder.

    `git_dirty` says whether tracked files differ from `git_commit`, not counting the run's own
    results folder; either is `None` with `git_unknown` saying why when git cannot tell.
    """
    import torchvision

    commit, reason = _git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        status = ["status", "--porcelain", "--untracked-files=no", "--", "."]
        results = (REPO / results_dir).resolve()
        if _inside(results, REPO):
            status.append(f":(exclude){results.relative_to(REPO)}")
        changes, reason = _git(*status)
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
