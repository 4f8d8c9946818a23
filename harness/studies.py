"""Studies: the notebook run once per configuration of `STUDIES`, continued where it stopped.

    python3 tasks.py study NAME              # run (or finish) a study, then rebuild its summary
    python3 tasks.py study NAME --summary    # rebuild the summary from the runs' metrics.json only

Each run executes the notebook headless (`headless.execute`) with its settings into
`results/studies/NAME/RUN/`. A run whose metrics.json is there, finished and made with the same
settings is not run again; an unfinished one starts from scratch in an empty folder. A run with the
settings of a finished run elsewhere in `results/` is copied from it (the same settings give the
same numbers, bit for bit), and a run that differs from an earlier run of the study only by more
epochs continues from that run's checkpoint (the same numbers as training from scratch).
"""

import os
import shutil
import signal
import sys
import time
from pathlib import Path

from harness import PREFIX, STOPS, files, fingerprint, headless
from harness.settings import (
    RECORD,
    SPEC,
    STUDY_RECORD,
    SettingsError,
    differences,
    from_environment,
    is_variable,
    shown,
)

BINARIZED = {"likelihood": "binarized", "iw_samples": 5000}  # the literature's setting and estimate
STUDIES = {  # each study: its runs, each run the settings it changes from the spec
    "seeds": {f"seed{seed}": {"seed": seed} for seed in range(5)},
    "likelihoods": {
        "bernoulli": {"likelihood": "bernoulli"},
        "continuous_bernoulli": {"likelihood": "continuous_bernoulli"},
        "binarized": BINARIZED,
    },
    "latent_sizes": {f"latent{size}": {"latent_dim": size} for size in (2, 5, 10, 20, 50)},
    "beta": {f"beta{beta:g}": {"beta": beta} for beta in (0.5, 1.0, 2.0, 4.0)},
    "objectives": {
        "elbo": BINARIZED,
        "elbo_warmup": {**BINARIZED, "kl_warmup": 10},
        "iwae5": {**BINARIZED, "objective": "iwae", "train_samples": 5},
        "iwae50": {**BINARIZED, "objective": "iwae", "train_samples": 50},
    },
    "budget": {
        **{f"epochs{n}": {**BINARIZED, "epochs": n} for n in (20, 60, 180, 540)},
        "epochs540_burda": {**BINARIZED, "epochs": 540, "lr_schedule": "burda"},  # Burda et al.'s rate schedule
    },
}
MACHINE_SETTINGS = ("data_dir", "device", "deterministic")  # passed through from the environment


class StudyFailed(Exception):
    """A run of a study failed or was refused; the finished runs are kept."""


class StudyStopped(KeyboardInterrupt):
    """A run of a study was stopped (Ctrl-C, SIGTERM, SIGHUP); `code` is the exit status."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def is_complete(folder: Path, overrides: dict) -> bool:
    """metrics.json is there, of a finished run, made with these settings."""
    try:
        metrics = files.read_metrics(folder)
    except files.UnreadableRun:
        return False
    return (
        metrics["finished"] and "evaluation" in metrics and not differences(metrics["settings"], {**SPEC, **overrides})
    )


def run_study(name, runs=None, root=None, environ=None, echo=None) -> Path:
    """Run every run of study `name` that is not complete yet, then write its summary."""
    runs = STUDIES[name] if runs is None else runs
    echo = echo or (lambda line: print(line, flush=True))
    root = Path(root or STUDY_RECORD / name)
    from harness import tables

    environ = os.environ if environ is None else environ
    given = from_environment(environ)
    unused = [f"{PREFIX}{n.upper()}" for n in given if n not in MACHINE_SETTINGS]
    if unused:
        raise StudyFailed(
            f"study {name} sets each run's settings itself, so {', '.join(unused)} would be ignored: unset it "
            f"(only {', '.join(PREFIX + n.upper() for n in MACHINE_SETTINGS)} reach a study's runs)."
        )
    machine = {k: v for k, v in given.items() if k in MACHINE_SETTINGS}
    if machine:
        echo(f"every run of study {name} uses {', '.join(f'{k}={v}' for k, v in machine.items())}")
    try:  # one writer per study, and none of its runs' folders written by another process
        files.lock_folder(root, alone=False)
        for run in runs:
            files.check_free(root / run)
    except files.FolderInUse as error:
        raise StudyFailed(f"study {name} cannot start: {error}") from None
    kernel_env = {k: v for k, v in environ.items() if not is_variable(k)}
    timings = tables.load_timings(root)
    for number, (run, overrides) in enumerate(runs.items(), start=1):
        folder = root / run
        label = f"[{number}/{len(runs)}] {name}/{run}"
        if is_complete(folder, overrides):
            echo(f"{label}: done already, kept")
            continue
        try:
            files.check_free(folder)  # another process may have begun writing it since the study started
        except files.FolderInUse as error:
            raise StudyFailed(f"study {name}: run {run} cannot start: {error}") from None
        shutil.rmtree(folder, ignore_errors=True)  # half-finished or stale: start from scratch
        same = same_run_elsewhere(overrides, root)
        if same is not None:
            copy_run(same, folder)
            timings[run] = tables.load_timings(same.parent).get(same.name, 0.0)
            files.write_json(root / "timings.json", timings)
            echo(f"{label}: the same settings as {shown(same)}, copied from there")
            continue
        shorter = shorter_run(runs, overrides, root)
        parameters = {**machine, **overrides, "results_dir": str(folder)}
        if shorter is not None:
            folder.mkdir(parents=True)
            shutil.copy2(shorter / "checkpoint.pt", folder / "checkpoint.pt")
            parameters["resume"] = True
        echo(f"{label}: running ({', '.join(f'{k}={v}' for k, v in overrides.items()) or 'the spec'})")
        if shorter is not None:
            echo(f"    continuing from {shorter.name}'s checkpoint")
        started = time.perf_counter()
        try:
            headless.execute(parameters, environ=kernel_env, echo=epoch_lines, source=f"study {name}")
        except headless.RunFailed as error:
            if error.code > 128:
                stop = STOPS[error.code - 128]
                raise StudyStopped(
                    f"stopped ({stop}) during {name}/{run}, which starts again next time", error.code
                ) from None
            raise StudyFailed(f"study {name}: run {run} failed: {error}") from None
        except SettingsError as error:
            raise StudyFailed(f"study {name}: run {run} refused: {error}") from None
        seconds = time.perf_counter() - started
        timings[run] = round(seconds + (timings.get(shorter.name, 0) if shorter else 0), 1)
        files.write_json(root / "timings.json", timings)
        echo(f"{label}: finished in {seconds:.0f} s, test loss {files.read_metrics(folder)['test_loss']:.2f}")
    return root


def same_run_elsewhere(overrides: dict, root: Path):
    """A finished run with exactly these settings in another folder of results/, or None."""
    for metrics in sorted(RECORD.glob("**/metrics.json")):
        if root not in metrics.parents and is_complete(metrics.parent, overrides):
            return metrics.parent
    return None


def copy_run(source: Path, folder: Path):
    """The committed files of a run (metrics.json and figures), into `folder`."""
    folder.mkdir(parents=True)
    for path in [source / "metrics.json", *source.glob("*.png")]:
        shutil.copy2(path, folder / path.name)


def shorter_run(runs: dict, overrides: dict, root: Path):
    """The longest earlier run of the study that differs only by fewer epochs and left its checkpoint."""

    def without_epochs(settings):
        return {k: v for k, v in settings.items() if k != "epochs"}

    epochs = {**SPEC, **overrides}["epochs"]
    candidates = [
        ({**SPEC, **other}["epochs"], root / run)
        for run, other in runs.items()
        if without_epochs(other) == without_epochs(overrides)
        and {**SPEC, **other}["epochs"] < epochs
        and (root / run / "checkpoint.pt").exists()
        and is_complete(root / run, other)
        and not fingerprint.changes(files.load_checkpoint(root / run / "checkpoint.pt")["code"], fingerprint.code_of())
    ]
    return max(candidates)[1] if candidates else None


def epoch_lines(text):
    """Of what a run prints, show the one line per epoch."""
    for line in text.splitlines():
        if line.startswith("epoch "):
            print(f"    {line}", flush=True)


USAGE = f"usage: python3 tasks.py study {{{','.join(STUDIES)}}} [--summary]"


def main(argv):
    for signum in STOPS:  # between runs too, a stop ends the study in one line
        signal.signal(signum, headless.raise_stopped)
    if not argv or argv[0] not in STUDIES:
        sys.exit(f"error: {'no study named ' + repr(argv[0]) if argv else 'which study?'}. {USAGE}")
    from harness import tables

    name, options = argv[0], argv[1:]
    if options not in ([], ["--summary"]):
        sys.exit(f"error: unknown argument {next(o for o in options if o != '--summary')!r}. {USAGE}")
    try:
        if not options:
            run_study(name)
        print(tables.summarize(name))
    except (StudyFailed, SettingsError, files.UnreadableRun) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as error:
        headless.say(f"{error}; the finished runs of study {name} are kept: run the same command to go on.")
        sys.exit(getattr(error, "code", None) or 128 + getattr(error, "signum", 2))


if __name__ == "__main__":
    main(sys.argv[1:])
