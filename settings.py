"""Reading, checking and resolving a run's settings, and where the run writes.

`resolve` is the one place where settings are read (the notebook's parameters cell, then the
`VAE_<NAME>` environment variables, which win), checked and resolved: a bad value, a bad
combination, an unavailable device or a results folder a run may not use is refused with a
`SettingsError` of one line, before any work. `results_folder` is the one function that decides
where a run writes. `pick_device` and `enable_determinism` choose and configure the device.
"""

import os
from pathlib import Path
from types import SimpleNamespace

import torch

import run_files
from spec import (
    MAX_TRAIN_ROWS,
    RESUME_MAY_CHANGE,
    SETTINGS,
    SPEC,
    TRAINING,
    SettingsError,
    differences,
    is_spec_run,
    run_name,
)
from study_plans import STUDIES

REPO = Path(__file__).resolve().parent
RECORD = REPO / "results"  # the committed record of the spec run
STUDY_RECORD = RECORD / "studies"  # the committed studies: results/studies/NAME/RUN/
RUNS = REPO / "runs"  # every other run inside the repository, one folder each (ignored by git)


# ---- reading ---------------------------------------------------------------------------------
def from_text(name, text, source):
    """The value of setting `name` written as text (an environment variable)."""
    kind = type(SETTINGS[name].default)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on", "0", "false", "no", "off", ""}:
                return lowered in {"1", "true", "yes", "on"}
            raise ValueError
        if kind is int:
            return int(text.replace("_", ""))
        return float(text) if kind is float else text
    except ValueError:
        raise SettingsError(f"{source}={text!r} is not valid: {name} takes {SETTINGS[name].accepts}.") from None


def from_environment(environ) -> dict:
    """Settings from `VAE_<NAME>` variables. A variable that looks like a setting and is none is refused."""
    values = {}
    for key, text in environ.items():
        if not key.upper().startswith("VAE_"):
            continue
        name = key[4:].lower()
        if name not in SETTINGS:
            known = ", ".join(f"VAE_{n.upper()}" for n in SETTINGS)
            raise SettingsError(f"{key} is not a setting. The settings are: {known}.")
        if key != f"VAE_{name.upper()}":
            raise SettingsError(f"{key} is not a setting: environment variables are upper case, VAE_{name.upper()}.")
        values[name] = from_text(name, text, key)
    return values


def typed(name, value):
    """A value from the parameters cell, as its setting's type (2 for a float, 1 for True, a device)."""
    kind = type(SETTINGS[name].default)
    if kind is float and type(value) is int:
        return float(value)
    if kind is bool and type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, os.PathLike | torch.device):
        return str(value)
    return value


# ---- checking --------------------------------------------------------------------------------
def check_values(values: dict, sources: dict):
    for name, value in values.items():
        setting = SETTINGS[name]
        if type(value) is not type(setting.default) or not setting.check(value):
            raise SettingsError(
                f"{name} must be {setting.accepts}; got {value!r} (from {sources.get(name, 'the default')})."
            )


def check_combination(s):
    if s.weights:
        if not (REPO / s.weights).is_file():
            raise SettingsError(f"weights={s.weights}: no such file. Give the path of a vae.pt.")
        if s.resume:
            raise SettingsError("weights evaluates given weights without training; set resume to False.")
        trained = sorted(TRAINING & {n for n in SPEC if getattr(s, n) != SPEC[n]})
        if trained:
            raise SettingsError(f"weights skips training, so {', '.join(trained)} would change nothing; leave them.")
    if s.objective == "elbo" and s.train_samples != 1:
        raise SettingsError(f"train_samples={s.train_samples} is the k of the iwae objective; with elbo it must be 1.")
    if s.objective == "iwae" and (s.beta != 1 or s.kl_warmup):
        raise SettingsError(
            "beta and kl_warmup weight the KL term of the elbo objective; iwae has no separate KL term. "
            "Use them with objective elbo, or leave them at 1 and 0."
        )
    if s.train_samples * s.batch_size > MAX_TRAIN_ROWS:
        raise SettingsError(
            f"train_samples x batch_size = {s.train_samples * s.batch_size:,} decoder rows per step; "
            f"at most {MAX_TRAIN_ROWS:,} fit in memory. Lower train_samples or batch_size."
        )
    if s.kl_warmup > s.epochs:
        raise SettingsError(
            f"kl_warmup={s.kl_warmup} is longer than the run (epochs={s.epochs}): the KL weight would never "
            "reach beta. Choose kl_warmup from 0 to epochs."
        )
    if s.name and s.results_dir:
        raise SettingsError("set name (a folder under runs/) or results_dir, not both.")


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def results_folder(settings) -> Path:
    """Where a run writes: results/ for the spec's run, runs/<name>/ for any other, or results_dir.

    A results_dir inside the repository must be under runs/, or a study's own results/studies/NAME/RUN/
    with that run's settings; the spec's run may name results/. Anything else is refused.
    """
    if not settings.results_dir:
        return RECORD if is_spec_run(settings) and not settings.name else RUNS / (settings.name or run_name(settings))
    where = (REPO / Path(settings.results_dir).expanduser()).resolve()
    too_long = [part for part in where.parts if len(part.encode()) > 255]
    if too_long:
        raise SettingsError(f"results_dir: the folder name {too_long[0][:40]}... is longer than 255 bytes.")
    if not inside(where, REPO):
        return where
    study = where.relative_to(STUDY_RECORD).parts if inside(where, STUDY_RECORD) else ()
    planned = STUDIES.get(study[0], {}).get(study[1]) if len(study) == 2 else None
    if planned is not None and not differences({**SPEC, **planned}, settings):
        return where  # a study's run, with its own settings, into its own folder
    if (where == RECORD and is_spec_run(settings)) or (inside(where, RUNS) and where != RUNS):
        return where
    raise SettingsError(
        f"results_dir={settings.results_dir}: inside the repository a run writes only under runs/ "
        f"({'results/ is the record of the spec run' if inside(where, RECORD) else 'the rest is the code'}). "
        f"Leave results_dir empty (this run then goes to runs/{run_name(settings)}/), or choose a folder "
        "under runs/ or outside the repository."
    )


def shown(path: Path) -> str:
    """A path as the user reads it: relative to the repository when inside it."""
    return str(path.relative_to(REPO)) if inside(path, REPO) else str(path)


# ---- the one pass ----------------------------------------------------------------------------
def resolve(parameters=None, environ=None, claim_folder=True, source="the parameters cell") -> SimpleNamespace:
    """The run's settings: the defaults, the parameters cell's values, then `VAE_<NAME>` variables.

    `parameters` may be the notebook's namespace (`globals()`): only the names of settings are read;
    `source` names where they came from in an error (`VAE_*`: each by its environment variable).
    Every value, their combination, the device and the results folder are checked; `results_dir`
    comes back chosen. With `claim_folder`, this process also takes the folder's lock (one writer
    per run folder) and checks what the folder holds (another run, an unfinished one).
    """
    environ = os.environ if environ is None else environ
    values = {name: s.default for name, s in SETTINGS.items()}
    sources = {}
    for name, value in (parameters or {}).items():
        if name in SETTINGS:
            values[name] = typed(name, value)
            sources[name] = f"VAE_{name.upper()}" if source == "VAE_*" else source
    for name, value in from_environment(environ).items():
        values[name], sources[name] = value, f"VAE_{name.upper()}"
    check_values(values, sources)
    settings = SimpleNamespace(**values)
    check_combination(settings)
    if settings.device != "auto":
        pick_device(settings.device)  # fails now, not after the data is loaded
    folder = results_folder(settings)
    settings.results_dir = shown(folder)
    writable_folder(folder, "results_dir")
    if not (REPO / settings.data_dir / "MNIST" / "raw").is_dir():
        writable_folder(REPO / settings.data_dir, "data_dir")
    if claim_folder:
        try:
            run_files.lock_folder(folder)
        except run_files.FolderInUse as error:
            raise SettingsError(str(error)) from None
        check_folder(settings, folder)
    return settings


def writable_folder(path: Path, name: str):
    """SettingsError unless `path` is a folder that exists or can be made, and can be written."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(f"{name}={shown(path)}: {existing} is not a folder. Choose a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(f"{name}={shown(path)}: {existing} is not writable. Choose a folder you can write to.")


def check_folder(settings, folder: Path):
    """Refuse a folder holding another run, or an unfinished run when `resume` is not set."""
    fixed = [name for name in SPEC if name not in RESUME_MAY_CHANGE]
    previous = run_files.read_metrics(folder, missing_ok=True)
    checkpoint = folder / "checkpoint.pt"
    found = differences(previous["settings"], settings, fixed if checkpoint.exists() else SPEC) if previous else []
    if found:
        raise SettingsError(
            f"{settings.results_dir} holds a run with other settings ({'; '.join(found)}). "
            "Choose another name or results_dir, or delete that folder."
        )
    if not checkpoint.exists():
        return
    try:
        state = run_files.load_checkpoint(checkpoint)
    except run_files.CheckpointError as error:
        raise SettingsError(f"{error} Delete it to start afresh.") from None
    found = differences(state["settings"], settings, fixed)
    if found:
        raise SettingsError(
            f"{checkpoint} was made with other settings ({'; '.join(found)}). Choose another name or "
            "results_dir, or delete that folder."
        )
    if state["epoch"] > settings.epochs:
        raise SettingsError(
            f"{checkpoint} is at epoch {state['epoch']}, past epochs={settings.epochs}; set epochs to at least "
            f"{state['epoch']}, or choose another name."
        )
    if state["epoch"] < settings.epochs and not settings.resume:
        raise SettingsError(
            f"{checkpoint} holds an unfinished run (epoch {state['epoch']} of {settings.epochs}). To continue it "
            "set resume = True in the parameters cell (headless: VAE_RESUME=1); to start afresh delete it or "
            "choose another name."
        )


# ---- the device ------------------------------------------------------------------------------
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
        raise SettingsError(f"device {name!r} is not available on this machine; use device auto or cpu.")
    return device


def enable_determinism() -> None:
    """Ask PyTorch for deterministic kernels everywhere (CPU runs are deterministic already).

    Call before the first CUDA operation: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
