"""Studies: the notebook run once per configuration of `STUDIES`, each run a task on a Dask cluster.

    python3 tasks.py study NAME [--scheduler ADDRESS]   # run (or finish) a study, then rebuild its summary
    python3 tasks.py study NAME --summary               # rebuild the summary from the runs' metrics.json only

The plans, and what is left to run: a run already finished with these settings is not run again,
and one with the settings of a finished run elsewhere in `results/` is copied from it (the same
settings give the same numbers, bit for bit); each run's settings are checked before any work. The
rest run on a Dask cluster (`harness.cluster`): an embedded local one by default, or any cluster by
`--scheduler ADDRESS` (or DASK_SCHEDULER_ADDRESS).
"""

import os
import shutil
import signal
import sys
from pathlib import Path

from harness import PREFIX, STOPS, files, fingerprint, headless
from harness.folders import RECORD, STUDY_RECORD, shown
from harness.settings import SPEC, SettingsError, differences, from_environment, resolve

BINARIZED = {"likelihood": "binarized", "iw_samples": 5000}  # the literature's setting and estimate
OBJECTIVES = {"elbo": {}, "elbo_warmup": {"kl_warmup": 10}, "iwae5": {"objective": "iwae", "train_samples": 5},
              "iwae50": {"objective": "iwae", "train_samples": 50}}  # fmt: skip
BURDA540 = {**BINARIZED, "epochs": 540, "lr_schedule": "burda"}  # 540 passes on Burda et al.'s rate schedule


def seeded(rows: dict, base: dict, seeds=(0, 1, 2)) -> dict:
    """Each row's run with each seed: `run` for seed 0 (its run from before seeds were added), `run_seedN`."""
    return {
        run + (f"_seed{seed}" if seed else ""): {**base, **row, **({"seed": seed} if seed else {})}
        for run, row in rows.items()
        for seed in seeds
    }


STUDIES = {  # each study: its runs, each run the settings it changes from the spec
    "seeds": {f"seed{seed}": {"seed": seed} for seed in range(5)},
    "likelihoods": {
        "bernoulli": {"likelihood": "bernoulli"},
        "continuous_bernoulli": {"likelihood": "continuous_bernoulli"},
        "binarized": BINARIZED,
    },
    "latent_sizes": {f"latent{size}": {"latent_dim": size} for size in (2, 5, 10, 20, 50)},
    "beta": {f"beta{beta:g}": {"beta": beta} for beta in (0.5, 1.0, 2.0, 4.0)},
    "objectives": seeded(OBJECTIVES, BINARIZED),  # 20 epochs, 3 seeds each
    "budget": {
        **{f"epochs{n}": {**BINARIZED, "epochs": n} for n in (20, 60, 180, 540)},
        "epochs540_burda": BURDA540,
    },
    "burda540": seeded({run: OBJECTIVES[run] for run in ("elbo", "elbo_warmup", "iwae5")}, BURDA540),
}
MACHINE_SETTINGS = ("data_dir", "device", "deterministic")  # passed through from the environment


class StudyFailed(Exception):
    """A run of a study failed or was refused; the finished runs are kept."""


class StudyStopped(KeyboardInterrupt):
    """The study was stopped (Ctrl-C, SIGTERM, SIGHUP); `code` is the exit status."""

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


def run_study(name, runs=None, root=None, environ=None, echo=None, scheduler=None) -> Path:
    """Run every run of study `name` that is not complete yet on a Dask cluster, and write what comes back."""
    from harness import summaries

    runs = STUDIES[name] if runs is None else runs
    echo = echo or (lambda line: print(line, flush=True))
    root = Path(root or STUDY_RECORD / name)
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
    timings, todo = summaries.load_timings(root), {}
    for number, (run, overrides) in enumerate(runs.items(), start=1):
        label = f"[{number}/{len(runs)}] {name}/{run}"
        same = None if is_complete(root / run, overrides) else same_run_elsewhere(overrides, root)
        if same is None and not is_complete(root / run, overrides):
            try:  # every run's settings checked here, before any task starts
                parameters = {**machine, **overrides, "results_dir": str(root / run)}
                resolve(parameters, environ={}, claim_folder=False, source=f"study {name}")
            except SettingsError as error:
                raise StudyFailed(f"study {name}: run {run} refused: {error}") from None
            todo[run] = overrides
            continue
        if same is not None:
            copy_run(same, root / run)
            timings[run] = summaries.load_timings(same.parent).get(same.name, 0.0)
            files.write_json(root / "timings.json", timings)
        echo(
            f"{label}: " + (f"the same settings as {shown(same)}, copied from there" if same else "done already, kept")
        )
    if todo:
        from harness import cluster

        known = {**STUDIES.get(name, {}), **runs}  # a chosen few may go on from any finished run of the study
        cluster.run(name, known, todo, root, machine, timings, echo, scheduler)
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


def shorter_run(runs: dict, overrides: dict, root: Path, futures: dict):
    """The start of a longer run: the future of the longest shorter run of the study being run (it
    differs only by fewer epochs), or the folder of one finished by this code with its checkpoint."""

    def without_epochs(settings):
        return {k: v for k, v in settings.items() if k != "epochs"}

    epochs = {**SPEC, **overrides}["epochs"]
    running = [
        ({**SPEC, **runs[run]}["epochs"], run)
        for run in futures
        if without_epochs(runs[run]) == without_epochs(overrides) and {**SPEC, **runs[run]}["epochs"] < epochs
    ]
    if running:
        return futures[max(running)[1]]
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


USAGE = f"usage: python3 tasks.py study {{{','.join(STUDIES)}}} [--summary | [--runs RUN,...] [--scheduler ADDRESS]]"


def options_of(options: list):
    """`--summary` alone, or each of `--runs NAMES` and `--scheduler ADDRESS` at most once; None if not."""
    if options == ["--summary"]:
        return {"--summary": True}
    if len(options) % 2:
        return None
    given = dict(zip(options[::2], options[1::2], strict=True))
    if len(given) * 2 != len(options) or not set(given) <= {"--runs", "--scheduler"}:  # each once, no other
        return None
    return given if all(value.strip() for value in given.values()) else None  # "" (an unset $ADDRESS) is no value


def chosen_runs(name: str, names: str) -> dict:
    """The runs of study `name` that `--runs a,b` names, in the study's order; a name it lacks is refused."""
    wanted = names.split(",")
    unknown = [run for run in wanted if run not in STUDIES[name]]
    if unknown:
        raise StudyFailed(f"study {name} has no run {unknown[0]!r}: --runs takes some of {', '.join(STUDIES[name])}")
    return {run: overrides for run, overrides in STUDIES[name].items() if run in wanted}


def main(argv):
    for signum in STOPS:  # between runs too, a stop ends the study in one line
        signal.signal(signum, headless.raise_stopped)
    if not argv or argv[0] not in STUDIES:
        sys.exit(f"error: {'no study named ' + repr(argv[0]) if argv else 'name the study to run'}. {USAGE}")
    from harness import summaries

    name, given = argv[0], options_of(argv[1:])
    if given is None:
        sys.exit(f"error: unknown arguments {' '.join(argv[1:])!r}. {USAGE}")
    try:
        runs = chosen_runs(name, given["--runs"]) if "--runs" in given else None
        if "--summary" not in given:
            root = run_study(name, runs=runs, scheduler=given.get("--scheduler"))
            left = [run for run in STUDIES[name] if not is_complete(root / run, STUDIES[name][run])]
            if left:  # a chosen few: the study's summary waits for the rest
                print(
                    f"study {name}: {len(left)} of {len(STUDIES[name])} runs still to run ({', '.join(left)}); "
                    f"its summary is written when they are done"
                )
                return
        print(summaries.summarize(name))
    except (StudyFailed, SettingsError, files.UnreadableRun) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as error:
        headless.say(f"{error}; the finished runs of study {name} are kept: run the same command to go on.")
        sys.exit(getattr(error, "code", None) or 128 + getattr(error, "signum", 2))


if __name__ == "__main__":  # as harness.studies, whose StudyFailed is the one cluster.py raises
    from harness import studies

    studies.main(sys.argv[1:])
