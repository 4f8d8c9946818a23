"""The settings of a run: each one with its default (the spec's value), what it accepts and what it does.

`SETTINGS` is the one table of them; `SPEC` holds those that change the recorded numbers.
`is_spec_run`, `run_name` and `differences` compare a run's settings with the spec's, or with a
saved run's (metrics.json, a checkpoint). Reading and checking them is `settings.resolve`'s job.
"""

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vae_utils import LIKELIHOODS, LR_SCHEDULES, OBJECTIVES


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names it and what it accepts."""


@dataclass(frozen=True)
class Setting:
    default: object
    accepts: str  # what the setting accepts, in words
    check: Callable  # value -> bool
    changes_numbers: bool  # another value is an experiment, not the spec's run
    help: str  # what it does


def whole_number(low, high=None):
    return lambda value: low <= value and (high is None or value <= high)


def anything(value):
    return True


# fmt: off
SETTINGS = {  # name: Setting(default, what it accepts, its check, changes the numbers?, what it does)
    "seed": Setting(0, "a whole number from 0 to 2**63 - 1", whole_number(0, 2**63 - 1), True,
                    "seeds the initial weights and the training generator"),
    "epochs": Setting(20, "a whole number >= 1", whole_number(1), True, "epochs of training (with resume: the total)"),
    "batch_size": Setting(128, "a whole number >= 1", whole_number(1), True, "mini-batch size"),
    "lr": Setting(1e-3, "a number > 0 and <= 0.01 (0.03 and more diverge within the first batches)",
                  lambda v: math.isfinite(v) and 0 < v <= 0.01, True, "Adam learning rate"),
    "lr_schedule": Setting("constant", "constant or burda", lambda v: v in LR_SCHEDULES, True,
                           "`constant` (the spec) or `burda`: `lr` divided by 10^(1/7) after 1, 3, 9, 27, ... "
                           "epochs (Burda et al. 2016)"),
    "latent_dim": Setting(20, "a whole number from 2 to 784 (the figures need two dimensions)", whole_number(2, 784),
                          True, "size of z"),
    "likelihood": Setting("bernoulli", "one of " + ", ".join(LIKELIHOODS), lambda v: v in LIKELIHOODS, True,
                          "`bernoulli` (the spec), `continuous_bernoulli`, `binarized`"),
    "objective": Setting("elbo", "elbo or iwae", lambda v: v in OBJECTIVES, True,
                         "`elbo` (the spec) or `iwae`, the importance-weighted bound of `train_samples` draws"),
    "train_samples": Setting(1, "a whole number from 1 to 5000 (with objective iwae)", whole_number(1, 5000), True,
                             "k of the `iwae` objective; 1 with `elbo`"),
    "beta": Setting(1.0, "a number > 0 and <= 100", lambda v: math.isfinite(v) and 0 < v <= 100, True,
                    "weight of the KL term while training (beta-VAE); the test loss is always the ELBO"),
    "kl_warmup": Setting(0, "a whole number of epochs from 0 to epochs", whole_number(0), True,
                         "epochs over which the KL weight rises linearly from 0 to `beta`"),
    "iw_samples": Setting(50, "a whole number from 1 to 10000", whole_number(1, 10_000), True,
                          "k of the importance-weighted bound; `5000` is the paper's (minutes on a CPU)"),
    "train_size": Setting(60_000, "a whole number from 1 to 60000 (the MNIST training set)", whole_number(1, 60_000),
                          True, "train on the first N images"),
    "test_size": Setting(10_000, "a whole number from 6 to 10000 (the figures use 6 test digits)",
                         whole_number(6, 10_000), True, "evaluate on the first N test images"),
    "weights": Setting("", "the path of a weights file written by a run (vae.pt), or nothing", anything, True,
                       "skip training: evaluate and draw from these weights"),
    "device": Setting("auto", "auto, cpu, mps, cuda or cuda:N (N from 0 to 999)",
                      lambda v: bool(re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", v)), False,
                      "`auto` picks CUDA, then MPS, then the CPU"),
    "deterministic": Setting(False, "True or False (1/0, yes/no in the environment)", anything, False,
                             "`torch.use_deterministic_algorithms` (GPUs; CPU runs are already)"),
    "name": Setting("", "a folder name of at most 100 letters, digits and . _ = , -",
                    lambda v: v == "" or (bool(re.fullmatch(r"[\w.=,-]{1,100}", v)) and v.strip(".") != ""), False,
                    "the run's folder under `runs/` (default: made from the settings)"),
    "results_dir": Setting("", "a folder under runs/ or outside the repository", anything, False,
                           "where the run writes (instead of `runs/<name>/`)"),
    "data_dir": Setting("data", "a folder that holds, or can hold, MNIST/raw", lambda v: v != "", False,
                        "where `MNIST/raw` lives"),
    "resume": Setting(False, "True or False (1/0, yes/no in the environment)", anything, False,
                      "continue the unfinished run in the run's folder from its `checkpoint.pt`"),
}
# fmt: on
SPEC = {name: s.default for name, s in SETTINGS.items() if s.changes_numbers}
RESUME_MAY_CHANGE = {"epochs", "iw_samples"}  # evaluation-only or the length of training
TRAINING = {
    "epochs",
    "batch_size",
    "lr",
    "lr_schedule",
    "objective",
    "train_samples",
    "beta",
    "kl_warmup",
}  # nothing without it
PATHS = ("weights", "results_dir", "data_dir")  # relative to the repository in the notebook
MAX_TRAIN_ROWS = 2**16  # decoder rows per training step (train_samples x batch_size): about 1.5 GB


def is_spec_run(settings) -> bool:
    """True when every setting that changes the recorded numbers has the spec's value."""
    return all(setting_of(settings, name) == value for name, value in SPEC.items())


def setting_of(settings, name):
    """A setting from settings or from a saved dict of them (metrics.json, a checkpoint); the default if absent."""
    values = settings if isinstance(settings, dict) else vars(settings)
    return values.get(name, SETTINGS[name].default)


def differences(saved, current, names=SPEC) -> list:
    """`name: X there, Y now` for each setting of `names` that differs."""
    return [
        f"{name}: {setting_of(saved, name)!r} there, {setting_of(current, name)!r} now"
        for name in names
        if setting_of(saved, name) != setting_of(current, name)
    ]


def run_name(settings) -> str:
    """A folder name made from the settings that differ from the spec, e.g. `epochs=2,lr=0.01`."""
    parts = []
    for name, value in SPEC.items():
        mine = setting_of(settings, name)
        if mine != value:
            parts.append(f"{name}={Path(mine).name if name == 'weights' else mine}")
    name = ",".join(parts) or "spec"
    if len(name) > 100:  # file systems allow 255 bytes: a long weights name or many settings
        name = f"{name[:80]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name
