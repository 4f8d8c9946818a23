"""Studies: the notebook run once per configuration of `STUDIES`, each run a task on a Dask cluster.

    python3 tasks.py study NAME [--scheduler ADDRESS]   # run (or finish) a study, then rebuild its summary
    python3 tasks.py study NAME --summary               # rebuild the summary from the runs' metrics.json only

By default the study starts an embedded `LocalCluster` and stops it at the end: one worker per GPU
(each run sees only its worker's GPU), one worker on a machine without (so no two runs share the
cores). `--scheduler ADDRESS`, or Dask's own DASK_SCHEDULER_ADDRESS, sends the runs to an existing
cluster instead. Each run is a task; a run that goes on from a shorter run's checkpoint (a longer
budget) depends on it. A worker runs `python -m harness.headless` in its own checkout, which must
hold the study's code (the fingerprint of a run), into a temporary folder, and sends the run's files
back: they are written into `results/studies/NAME/RUN/` here, atomically, under the folder's lock.
Dask reruns a task whose worker died; a run that fails is named and the others go on. A run already
finished with these settings is not run again, and one with the settings of a finished run elsewhere
in `results/` is copied from it (the same settings give the same numbers, bit for bit).
"""

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import PREFIX, REPO, STOPS, files, fingerprint, headless
from harness.settings import (
    RECORD,
    SPEC,
    STUDY_RECORD,
    SettingsError,
    differences,
    from_environment,
    is_variable,
    resolve,
    shown,
)
from vae_utils import atomic_path

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
    from harness import tables

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
    timings, todo = tables.load_timings(root), {}
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
            timings[run] = tables.load_timings(same.parent).get(same.name, 0.0)
            files.write_json(root / "timings.json", timings)
        echo(
            f"{label}: " + (f"the same settings as {shown(same)}, copied from there" if same else "done already, kept")
        )
    if todo:
        run_on_cluster(name, runs, todo, root, machine, timings, echo, scheduler)
    return root


def run_on_cluster(name, runs, todo, root, machine, timings, echo, scheduler):
    """Submit `todo`'s runs as tasks (a chain's longer run after its shorter one), and keep what comes back."""
    import distributed

    code, failed, done = fingerprint.code_of(), {}, []
    with cluster(scheduler) as (client, where):
        echo(f"study {name}: {len(todo)} runs on {where}; Dask's dashboard: {client.dashboard_link}")
        stop = distributed.Event(f"stop-{name}-{uuid.uuid4().hex[:8]}", client=client)
        futures = {}
        for run in sorted(todo, key=lambda r: {**SPEC, **todo[r]}["epochs"]):  # shorter runs first
            start = shorter_run(runs, todo[run], root, futures)
            if isinstance(start, Path):
                start = client.scatter((start / "checkpoint.pt").read_bytes())
            futures[run] = client.submit(
                run_on_worker, name, run, {**machine, **todo[run]}, start, code, stop.name, key=f"{name}/{run}-"
                f"{uuid.uuid4().hex[:8]}", pure=False, resources=None,
            )  # fmt: skip
        waiting = dict(futures)
        try:
            while waiting:
                finished, _ = distributed.wait(list(waiting.values()), timeout=None, return_when="FIRST_COMPLETED")
                for run in [r for r, f in waiting.items() if f in finished]:
                    future = waiting.pop(run)
                    try:
                        made, seconds, worker = future.result()
                    except Exception as error:  # noqa: BLE001 -- any failure of a run: named, the others go on
                        failed[run] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"
                        echo(f"{name}/{run}: failed: {failed[run]}")
                        continue
                    keep(root / run, made)
                    timings[run] = round(seconds, 1)
                    files.write_json(root / "timings.json", timings)
                    done.append(run)
                    loss = files.read_metrics(root / run)["test_loss"]
                    echo(f"{name}/{run}: finished on {worker} in {seconds:.0f} s, test loss {loss:.2f}")
                if waiting:
                    echo(f"    {progress(client, futures, waiting, done)}")
        except OSError as error:  # the scheduler went away: what came back is kept
            raise StudyFailed(f"study {name}: the cluster went away ({error}); the same command goes on.") from None
        except KeyboardInterrupt as error:
            stop.set()  # every running task stops its run (its kernel is shut down), then the cluster goes
            distributed.wait(list(waiting.values()), timeout=60)
            client.cancel(list(futures.values()))
            code = getattr(error, "code", None) or 128 + getattr(error, "signum", signal.SIGINT)
            finished = f"finished: {', '.join(done)}" if done else "no run had finished"
            raise StudyStopped(
                f"stopped ({STOPS.get(code - 128, 'Ctrl-C')}) during study {name}; {finished}", code
            ) from None
    if failed:
        raise StudyFailed(
            f"study {name}: {len(failed)} of {len(todo)} runs failed ("
            + "; ".join(f"{run}: {why}" for run, why in failed.items())
            + "). The others are kept; the same command runs the missing ones again."
        )


def progress(client, futures, waiting, done) -> str:
    """Runs done, running (each with its worker) and waiting, from the scheduler's view."""
    processing = {key: worker for worker, keys in client.processing().items() for key in keys}
    running = [f"{run} on {processing[f.key]}" for run, f in waiting.items() if f.key in processing]
    return f"{len(done)} done, running: {', '.join(running) or 'none'}, {len(waiting) - len(running)} waiting"


@contextlib.contextmanager
def cluster(scheduler=None):
    """A client of the cluster at `scheduler` (or DASK_SCHEDULER_ADDRESS), or of an embedded local cluster."""
    import dask
    import distributed
    import torch

    address = scheduler or dask.config.get("scheduler-address", None)
    if address:
        try:
            client = distributed.Client(address, timeout="30s")
        except (OSError, ValueError) as error:  # nothing answers there, or not an address
            raise StudyFailed(
                f"no Dask scheduler answers at {address} ({error}): start one (docs/studies.md), or leave "
                "--scheduler and DASK_SCHEDULER_ADDRESS unset for the embedded local cluster."
            ) from None
        with client:
            yield client, f"the cluster at {address}"
        return
    gpus = torch.cuda.device_count()
    with (
        distributed.LocalCluster(n_workers=max(1, gpus), threads_per_worker=1, host="127.0.0.1",
                                 dashboard_address="127.0.0.1:0", env={"VAE_STUDY_GPUS": str(gpus)},
                                 silence_logs=logging.CRITICAL) as local,  # a failed run is named here, once
        distributed.Client(local) as client,
    ):  # fmt: skip
        yield (
            client,
            f"a local cluster of {max(1, gpus)} worker{'s' if gpus > 1 else ''}"
            + (", one per GPU" if gpus else " (no GPU: one run at a time)"),
        )


def run_on_worker(study, run, parameters, start, code, stop) -> tuple:
    """On a worker: the run, headless, in this checkout into a temporary folder; its files, seconds, worker."""
    import distributed

    worker = distributed.get_worker()
    changed = fingerprint.changes(code, fingerprint.code_of())
    if changed:
        raise StudyFailed(
            f"worker {worker.address} has other code than the study ({fingerprint.code_of()['fingerprint']} there, "
            f"{code['fingerprint']} here; changed: {'; '.join(changed)}): check out the study's commit there."
        )
    with tempfile.TemporaryDirectory(prefix=f"vae-{study}-{run}-") as tmp:
        folder, log = Path(tmp) / "run", Path(tmp) / "log"
        env = {k: v for k, v in os.environ.items() if not is_variable(k) and k != "VAE_STUDY_GPUS"}
        env.update({f"{PREFIX}{k.upper()}": str(v) for k, v in parameters.items()}, VAE_RESULTS_DIR=str(folder))
        if int(os.environ.get("VAE_STUDY_GPUS", "0")) > 1:  # the embedded cluster: one GPU per worker
            env["CUDA_VISIBLE_DEVICES"] = str(worker.name)
        if start is not None:
            folder.mkdir()
            (folder / "checkpoint.pt").write_bytes(start[0]["checkpoint.pt"] if isinstance(start, tuple) else start)
            env["VAE_RESUME"] = "1"
        started = time.perf_counter()
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "harness.headless"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip
            stopping = distributed.Event(stop)
            while process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=1)
                if process.poll() is None and stopping.is_set():
                    process.send_signal(signal.SIGINT)  # the run stops: its kernel is shut down
                    process.wait()
        if process.returncode:
            raise StudyFailed(log.read_text().strip().splitlines()[-1] if log.read_text().strip() else "no output")
        made = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
        return made, time.perf_counter() - started, worker.address


def die_with_parent():
    """Linux: the run gets SIGTERM (and stops, in one line) when its worker dies, so no run outlives it."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def keep(folder: Path, made: dict):
    """A run's files from its worker, written into `folder` atomically under the folder's lock."""
    files.check_free(folder)
    shutil.rmtree(folder, ignore_errors=True)  # a stopped run's leftovers: the finished run replaces them
    files.lock_folder(folder, alone=False)
    try:
        metrics = json.loads(made["metrics.json"])
        metrics["settings"]["results_dir"] = shown(folder)  # where the record is, not the worker's temporary folder
        made = {**made, "metrics.json": (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode()}
        for name, data in sorted(made.items(), key=lambda item: item[0] == "metrics.json"):  # the record last
            with atomic_path(folder / name) as tmp:
                tmp.write_bytes(data)
    finally:
        files.HELD.pop(folder.resolve()).release(force=True)


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


USAGE = f"usage: python3 tasks.py study {{{','.join(STUDIES)}}} [--summary | --scheduler ADDRESS]"


def main(argv):
    for signum in STOPS:  # between runs too, a stop ends the study in one line
        signal.signal(signum, headless.raise_stopped)
    if not argv or argv[0] not in STUDIES:
        sys.exit(f"error: {'no study named ' + repr(argv[0]) if argv else 'which study?'}. {USAGE}")
    from harness import tables

    name, options = argv[0], argv[1:]
    if not (options in ([], ["--summary"]) or (len(options) == 2 and options[0] == "--scheduler")):
        sys.exit(f"error: unknown arguments {' '.join(options)!r}. {USAGE}")
    try:
        if options != ["--summary"]:
            run_study(name, scheduler=options[1] if options else None)
        print(tables.summarize(name))
    except (StudyFailed, SettingsError, files.UnreadableRun) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as error:
        headless.say(f"{error}; the finished runs of study {name} are kept: run the same command to go on.")
        sys.exit(getattr(error, "code", None) or 128 + getattr(error, "signum", 2))


if __name__ == "__main__":
    main(sys.argv[1:])
