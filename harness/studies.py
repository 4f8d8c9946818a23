"""Studies: the notebook run once per configuration of `plans.STUDIES`, each run a task on a Dask cluster.

    python3 tasks.py study NAME [--runs RUN,...] [--scheduler ADDRESS]   # run (or finish) a study, then its summary
    python3 tasks.py study NAME --summary                               # the summary from the runs' metrics.json

A run already finished with these settings is kept, whichever code made it (its record names that
code, and so does this command, in one line); each run left is checked before any work, then run on
a Dask cluster (`harness.cluster`): an embedded local one by default, or any cluster by `--scheduler
ADDRESS` (or DASK_SCHEDULER_ADDRESS).
"""

from harness import stopped_in_one_line

if __name__ == "__main__":
    stopped_in_one_line("before the study started: nothing was run")  # the imports below take seconds

import argparse
import os
import sys
from pathlib import Path

from harness import PREFIX, files, fingerprint, stop_by_raising
from harness.cluster import MACHINE_SETTINGS, StudyFailed, run_on_cluster
from harness.folders import STUDY_RECORD, check_folder, resolve
from harness.plans import STUDIES
from harness.provenance import made_by
from harness.settings import SPEC, SettingsError, differences, from_environment
from harness.summaries import summarize


def is_complete(folder: Path, overrides: dict) -> bool:
    """metrics.json is there, of a finished run, made with these settings."""
    try:
        metrics = files.read_metrics(folder)
    except files.UnreadableRun:
        return False
    return metrics["finished"] and not differences(metrics["settings"], {**SPEC, **overrides})


def kept(folder: Path, code) -> str:
    """What a finished run's line says: kept, and which code made it when that is not this code."""
    metrics = files.read_metrics(folder)
    changed = fingerprint.changes(metrics["code"], code)
    if not changed:
        return "done already, kept"
    return (f"done already by other code ({made_by(metrics)}; changed since: {'; '.join(changed)}), kept: "
            f"delete {folder} to run it with this code")  # fmt: skip


def run_study(name, runs=None, root=None, environ=None, echo=None, scheduler=None) -> Path:
    """Run every run of study `name` that is not complete yet on a Dask cluster, and write what comes back."""
    runs = STUDIES[name] if runs is None else runs
    echo = echo or (lambda line: print(line, flush=True))
    root = Path(root or STUDY_RECORD / name)
    given = from_environment(os.environ if environ is None else environ)
    unused = [f"{PREFIX}{n.upper()}" for n in given if n not in MACHINE_SETTINGS]
    if unused:
        raise StudyFailed(
            f"study {name} sets each run's settings itself, so {', '.join(unused)} would be ignored: unset it "
            f"(only {', '.join(PREFIX + n.upper() for n in MACHINE_SETTINGS)} reach a study's runs)."
        )
    machine = {k: v for k, v in given.items() if k in MACHINE_SETTINGS}
    if machine:
        echo(f"every run of study {name} uses {', '.join(f'{k}={v}' for k, v in machine.items())}")
    code, todo = fingerprint.code_of(), {}  # the notebook read whole, before the study's folder is claimed
    try:  # one writer per study, and none of its runs' folders written by another process
        files.lock_folder(root)
        for run in runs:
            files.check_free(root / run)
    except files.FolderInUse as error:
        raise StudyFailed(f"study {name} cannot start: {error}") from None
    for number, (run, overrides) in enumerate(runs.items(), start=1):
        if is_complete(root / run, overrides):
            echo(f"[{number}/{len(runs)}] {name}/{run}: {kept(root / run, code)}")
            continue
        try:  # every run's settings and folder checked here, before any task starts: a record it cannot read,
            # or a run of other settings (a plan edited since), is kept as it is, not replaced
            parameters = {**machine, **overrides, "results_dir": str(root / run)}
            check_folder(resolve(parameters, environ={}, claim_folder=False, source=f"study {name}"), root / run)
        except SettingsError as error:
            raise StudyFailed(f"study {name}: run {run} refused: {error}") from None
        todo[run] = overrides
    if todo:
        run_on_cluster(name, todo, root, machine, echo, scheduler)
    return root


def arguments(argv):
    parser = argparse.ArgumentParser(
        prog="python3 tasks.py study",
        description="Run a study, or make its summary.",
        usage="%(prog)s NAME [--summary | --runs RUN,... --scheduler ADDRESS]",
    )
    parser.add_argument("name", choices=STUDIES, help="the study")
    parser.add_argument("--summary", action="store_true", help="only the summary, from the runs' metrics.json")
    parser.add_argument("--runs", type=lambda text: text.split(","), action="extend", help="only these runs: a,b")
    parser.add_argument("--scheduler", help="a Dask scheduler's address (default: an embedded local cluster)")
    args = parser.parse_args(argv)
    if args.summary and (args.runs or args.scheduler is not None):
        parser.error("--summary takes no --runs or --scheduler")
    if args.scheduler is not None and not args.scheduler.strip():  # "" (an unset $ADDRESS) is no address
        parser.error("--scheduler needs an address, e.g. tcp://127.0.0.1:8786")
    unknown = [run for run in args.runs or () if run not in STUDIES[args.name]]
    if unknown:
        parser.error(
            f"study {args.name} has no run {unknown[0]!r}: --runs takes some of {', '.join(STUDIES[args.name])}"
        )
    return args


def main(argv):
    stop_by_raising()  # a stop (Ctrl-C, SIGTERM, SIGHUP) ends every run of the study, then the command
    args = arguments(argv)
    name, plan = args.name, STUDIES[args.name]
    try:
        if not args.summary:
            runs = {run: plan[run] for run in plan if run in args.runs} if args.runs else None
            root = run_study(name, runs=runs, scheduler=args.scheduler)
            left = [run for run in plan if not is_complete(root / run, plan[run])]
            if left:  # a chosen few: the study's summary waits for the rest
                print(f"study {name}: {len(left)} of {len(plan)} runs still to run ({', '.join(left)}); "
                      "its summary is written when they are done")  # fmt: skip
                return
        print(summarize(name, STUDY_RECORD / name))
    except (StudyFailed, SettingsError, files.UnreadableRun, fingerprint.NotANotebook) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as error:
        print(f"{error}; the finished runs of study {name} are kept: run the same command to go on.", file=sys.stderr)
        sys.exit(getattr(error, "code", None) or 130)


if __name__ == "__main__":
    main(sys.argv[1:])
