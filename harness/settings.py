"""A run's settings: `SETTINGS` declares each once (default, what it accepts, words, and `before`: the value
of a record made before it existed); `read` checks the parameters cell and `VAE_<NAME>` variables against it,
each refusal a `SettingsError` of one line; `complete` reads a saved run's settings with today's declaration."""

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from harness import PREFIX, REPO, OneLine
from vae_utils import GRADIENTS, LIKELIHOODS, LR_SCHEDULES, OBJECTIVES


class SettingsError(OneLine, ValueError):
    """A value that cannot be used; the message names the setting and what it accepts."""


@dataclass(frozen=True)
class Setting:
    default: object
    help: str  # what it does
    low: float | None = None  # numbers: the smallest accepted
    high: float | None = None  # numbers: the largest accepted
    choices: tuple = ()
    pattern: str | None = None  # text: a regular expression the whole value matches
    words: str = ""  # what it accepts, where the fields above do not say it
    note: str = ""  # said after what it accepts
    numbers: bool = True  # another value changes the recorded numbers: an experiment, not the spec's run
    before: object = ...  # the value of a record made before this setting existed (... : the default)

    @property
    def accepts(self) -> str:
        if self.words:
            text = self.words
        elif self.choices:
            text = " or ".join(self.choices) if len(self.choices) == 2 else "one of " + ", ".join(self.choices)
        elif isinstance(self.default, bool):
            text = "True or False (1/0, yes/no in the environment)"
        elif isinstance(self.default, float):
            text = f"a number > {self.low:g} and <= {self.high:g}"
        else:
            high = "2**63 - 1" if self.high == 2**63 - 1 else self.high
            text = f"a whole number from {self.low} to {high}" if self.high else f"a whole number >= {self.low}"
        return f"{text} {self.note}" if self.note else text

    def check(self, value) -> bool:
        if type(value) is not type(self.default):
            return False
        if isinstance(value, float):  # the default (the spec's value), or in (low, high] (NaN is not) and normal
            return value == self.default or (self.low < value <= self.high and abs(value) >= TINY)
        if isinstance(value, int) and not isinstance(value, bool):
            return self.low <= value and (self.high is None or value <= self.high)
        if self.choices:
            return value in self.choices
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None


# fmt: off
SETTINGS = {
    "seed": Setting(0, "seeds the initial weights and the training generator", 0, 2**63 - 1),
    "epochs": Setting(20, "epochs of training (with resume: the total)", 1),
    "batch_size": Setting(128, "mini-batch size", 1),
    "lr": Setting(1e-3, "Adam learning rate", 0, 0.01, note="(0.03 and more diverge within the first batches)"),
    "adam_eps": Setting(1e-8, "Adam's epsilon (Burda et al. 2016: 1e-4)", 0, 1),
    "lr_schedule": Setting("constant", "`burda`: `lr` / 10^(1/7) after 1, 3, 9, 27, ... epochs", choices=LR_SCHEDULES),
    "latent_dim": Setting(20, "size of z", 2, 784, note="(the figures need two dimensions)"),
    "likelihood": Setting("bernoulli", "p(x|z); `binarized`: pixels drawn as 0 or 1", choices=LIKELIHOODS),
    "objective": Setting("elbo", "`iwae`: the importance-weighted bound of `train_samples` draws", choices=OBJECTIVES),
    "gradient": Setting("plain", "`dreg` (with `iwae`): Tucker et al.'s doubly reparameterised encoder gradient",
                        choices=GRADIENTS),
    "train_samples": Setting(1, "k of the `iwae` objective; 1 with `elbo`", 1, 5000, note="(with objective iwae)"),
    "beta": Setting(1.0, "weight of the KL term while training (beta-VAE); the test loss is always the ELBO", 0, 100),
    "kl_warmup": Setting(0, "epochs over which the KL weight rises linearly from 0 to `beta`", 0,
                         words="a whole number of epochs from 0 to epochs"),
    "iw_samples": Setting(50, "k of the evaluation's bound; `5000` is the paper's (minutes on a CPU)", 1, 10_000),
    "train_size": Setting(60_000, "train on the first N images", 1, 60_000, note="(the MNIST training set)"),
    "test_size": Setting(10_000, "evaluate on the first N test images", 6, 10_000,
                         note="(the figures use 6 test digits)"),
    "weights": Setting("", "skip training: evaluate and draw from these weights",
                       words="the path of a weights file written by a run (vae.pt), or nothing"),
    "device": Setting("auto", "`auto` picks CUDA, then MPS, then the CPU", pattern=r"auto|cpu|mps|cuda(:[0-9]{1,3})?",
                      words="auto, cpu, mps, cuda or cuda:N (N from 0 to 999)", numbers=False),
    "deterministic": Setting(False, "deterministic kernels on GPUs (CPU runs are already)", numbers=False),
    "name": Setting("", "the run's folder under `runs/` (default: made from the settings)", numbers=False,
                    pattern=r"|(?!\.+$)[\w.=,-]{1,100}", words="a folder name of at most 100 letters, digits, ._=,-"),
    "results_dir": Setting("", "where the run writes (instead of `runs/<name>/`)",
                           words="a folder under runs/ or outside the repository", numbers=False),
    "data_dir": Setting("data", "where `MNIST/raw` lives", pattern=r".+",
                        words="a folder for MNIST/raw (in the repository: under data/ or runs/)", numbers=False),
    "resume": Setting(False, "continue the unfinished run in the run's folder from its `checkpoint.pt`", numbers=False),
}
# fmt: on
SPEC = {name: s.default for name, s in SETTINGS.items() if s.numbers}
RESUME_MAY_CHANGE = {"epochs", "iw_samples"}  # evaluation-only or the length of training
TRAINING = {"epochs", "batch_size", "lr", "adam_eps", "lr_schedule", "objective", "gradient", "train_samples", "beta",
            "kl_warmup"}  # fmt: skip
PATHS = ("weights", "results_dir", "data_dir")  # relative to the repository in the notebook
TINY = sys.float_info.min  # the smallest normal float: the kernel flushes smaller ones (subnormals) to 0
MAX_TRAIN_ROWS = 2**16  # decoder rows per training step (train_samples x batch_size): about 1.5 GB


def is_spec_run(settings) -> bool:  # every setting that changes the recorded numbers has the spec's value
    return not differences(SPEC, settings)


def values_of(settings) -> dict:  # a saved run's (a dict) read with today's declaration
    return complete(settings) if isinstance(settings, dict) else vars(settings)


def differences(saved, current, names=SPEC) -> list:  # `name: X there, Y now` for each of `names` that differs
    saved, current = values_of(saved), values_of(current)
    return [f"{n}: {saved[n]!r} there, {current[n]!r} now" for n in names if saved[n] != current[n]]


def run_name(settings) -> str:
    """A folder name made from the settings that differ from the spec, e.g. `epochs=2,lr=0.01`."""
    values = values_of(settings)
    shown = {**values, "weights": "-".join(Path(values["weights"]).parts[-2:])}  # every run's weights are vae.pt
    parts = [f"{n}={shown[n]}" for n in SPEC if values[n] != SPEC[n]]
    name = ",".join(parts) or "spec"
    if len(name) > 100:  # file systems allow 255 bytes: a long weights name or many settings
        name = f"{name[:80]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def is_variable(key) -> bool:  # each VAE_* variable is a setting, or refused
    return key.startswith(PREFIX)


def complete(saved: dict) -> dict:  # every setting of today; one the saved run predates: its `before`
    return {n: saved.get(n, s.default if s.before is ... else s.before) for n, s in SETTINGS.items()}


def wrong(saved: dict) -> list:  # the saved settings today's declaration refuses (no record is guessed at)
    return [f"settings.{n} = {v!r} (not {SETTINGS[n].accepts})" for n, v in complete(saved).items()
            if not SETTINGS[n].check(v)]  # fmt: skip


def from_text(name, text, source):  # the value of setting `name` written as text (an environment variable)
    kind = type(SETTINGS[name].default)
    word, yes = text.strip().lower(), {"1", "true", "yes", "on"}
    try:
        if kind is bool and word not in {*yes, "0", "false", "no", "off", ""}:
            raise ValueError
        return word in yes if kind is bool else int(text.replace("_", "")) if kind is int else kind(text)
    except ValueError:
        raise SettingsError(f"{source}={text!r} is not valid: {name} takes {SETTINGS[name].accepts}.") from None


def from_environment(environ) -> dict:  # settings from `VAE_<NAME>` variables; one that is no setting is refused
    values = {}
    for key, text in environ.items():
        if not is_variable(key):
            continue
        name = key[len(PREFIX) :].lower()
        if name not in SETTINGS or key != f"{PREFIX}{name.upper()}":
            known = ", ".join(f"{PREFIX}{n.upper()}" for n in SETTINGS)
            raise SettingsError(f"{key} is not a setting. The settings are: {known}.")
        values[name] = from_text(name, text, key)
    return values


def typed(name, value):  # a value from the parameters cell as its setting's type (2 a float, 1 True, a device)
    kind = type(SETTINGS[name].default)
    if kind is float and type(value) is int:
        return float(value)
    if kind is bool and type(value) is int and value in (0, 1):
        return bool(value)
    return str(value) if isinstance(value, os.PathLike | torch.device) else value


def check_combination(s):
    if s.weights:
        if not (REPO / s.weights).is_file():
            raise SettingsError(f"weights={s.weights}: no such file. Give the path of a vae.pt.")
        if s.resume:
            raise SettingsError("weights evaluates given weights without training; set resume to False.")
        trained = sorted(n for n in TRAINING if getattr(s, n) != SPEC[n])
        if trained:
            raise SettingsError(f"weights skips training, so {', '.join(trained)} would change nothing; leave them.")
        s.weights = shown((REPO / s.weights).resolve())  # one file, one value: given relative or absolute
    if s.gradient == "dreg" and s.objective != "iwae":
        raise SettingsError("gradient dreg is the encoder gradient of the iwae objective; with elbo it must be plain.")
    if s.objective == "elbo" and s.train_samples != 1:
        raise SettingsError(f"train_samples={s.train_samples} is the k of the iwae objective; with elbo it must be 1.")
    if s.objective == "iwae" and (s.beta != 1 or s.kl_warmup):
        raise SettingsError("beta and kl_warmup weight the KL term of the elbo objective; iwae has no separate KL "
                            "term. Use them with objective elbo, or leave them at 1 and 0.")  # fmt: skip
    if s.train_samples * s.batch_size > MAX_TRAIN_ROWS:
        rows = s.train_samples * s.batch_size
        raise SettingsError(f"train_samples x batch_size = {rows:,} decoder rows per step; at most "
                            f"{MAX_TRAIN_ROWS:,} fit in memory. Lower train_samples or batch_size.")  # fmt: skip
    if s.kl_warmup > s.epochs:
        raise SettingsError(f"kl_warmup={s.kl_warmup} is longer than the run (epochs={s.epochs}): the KL weight would "
                            "never reach beta. Choose kl_warmup from 0 to epochs.")  # fmt: skip
    if s.name and s.results_dir:
        raise SettingsError("set name (a folder under runs/) or results_dir, not both.")


def read(parameters=None, environ=None, source="the parameters cell") -> SimpleNamespace:
    """The run's settings, checked: the defaults, the parameters cell's values (`parameters`: the notebook's
    `globals()`, of which only settings are read), then `VAE_<NAME>` variables. `source` names them in an error."""
    environ = os.environ if environ is None else environ
    values, sources = {name: s.default for name, s in SETTINGS.items()}, {}
    for name, value in (parameters or {}).items():
        if name in SETTINGS:
            values[name] = typed(name, value)
            sources[name] = f"{PREFIX}{name.upper()}" if source == "VAE_*" else source
    for name, value in from_environment(environ).items():
        if name in sources and source == "the parameters cell" and values[name] != value:  # said where it is seen
            print(f"{PREFIX}{name.upper()}={value!r} overrides the parameters cell's {name} = {values[name]!r}")
        values[name], sources[name] = value, f"{PREFIX}{name.upper()}"
    for name, value in values.items():
        if not SETTINGS[name].check(value):
            where = sources.get(name, "the default")
            tiny = ", subnormal: a kernel reads it as 0" if isinstance(value, float) and 0 < value < TINY else ""
            raise SettingsError(f"{name} must be {SETTINGS[name].accepts}; got {value!r}{tiny} (from {where}).")
    settings = SimpleNamespace(**{n: os.path.expanduser(v) if n in PATHS else v for n, v in values.items()})  # ~ = home
    check_combination(settings)
    if settings.device != "auto":
        pick_device(settings.device)  # fails now, not after the data is loaded
    return settings


def shown(path: Path) -> str:  # a path as the user reads it: relative to the repository when inside it
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; a named device must be available."""
    if name == "auto":
        mps = torch.backends.mps.is_available()
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    device = torch.device(name)
    cuda = torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if not {"cpu": True, "cuda": cuda, "mps": torch.backends.mps.is_available()}[device.type]:
        raise SettingsError(f"device {name!r} is not available on this machine; use device auto or cpu.")
    return device


def enable_determinism() -> None:
    """Deterministic kernels everywhere (CPU runs are already); before CUDA starts, which reads the variable."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
