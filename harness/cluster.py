"""A study's runs as tasks on a Dask cluster: what Dask does (ordering, waiting, rerunning) is Dask's.

By default an embedded `LocalCluster`: one worker per GPU, or one on a machine without (no two runs share
the cores); an address sends the runs to an existing cluster instead. Each run is a task, a function that
names this repository only as text (a scheduler on a login node need not import it). A worker runs
`python -m harness.headless` in its own checkout, which must hold the study's code, in a folder of its
`runs/.studies/` named for the run's settings and code, checkpointing every epoch (a stopped study goes on
from each run's last epoch); it sends the run's files back, written here atomically under the folder's lock.
Dask reruns a task whose worker died; a failed run is named and the others go on; a stop reaches every run.
"""

import contextlib
import hashlib
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from harness import PREFIX, REPO, STOPS, Stopped, files, fingerprint
from harness.settings import SPEC, is_variable, shown
from vae_utils import atomic_path

MACHINE_SETTINGS = ("data_dir", "device", "deterministic")  # passed through from the environment


class StudyFailed(Exception):
    """A run of a study failed or was refused; the finished runs are kept."""


def task():
    """The function each run's task calls, made here so that it is pickled by value: the scheduler unpickles
    it without importing this repository, and the worker imports it by name from its own checkout."""

    def run_in_checkout(*args):
        return importlib.import_module("harness.cluster").run_on_worker(*args)

    return run_in_checkout


def run_on_cluster(name, todo, root, machine, echo, scheduler):
    """Submit `todo`'s runs as tasks (shorter ones first), and keep what comes back."""
    import distributed

    code, failed, done = fingerprint.code_of(), {}, []
    timings = files.read_timings(root)
    with cluster(scheduler) as (client, where):
        echo(f"study {name}: {len(todo)} runs on {where}; Dask's dashboard: {client.dashboard_link}")
        stop = distributed.Event(f"stop-{name}-{uuid.uuid4().hex[:8]}", client=client)
        order = sorted(todo, key=lambda r: {**SPEC, **todo[r]}["epochs"])  # shorter runs first, then the plan's order
        futures = {}
        for position, run in enumerate(order):  # Dask starts the highest priority first; by itself it keeps no order
            arguments = (name, shown(root), run, {**machine, **todo[run]}, code, stop.name)
            key, priority = f"{name}/{run}-{uuid.uuid4().hex[:8]}", len(order) - position
            futures[run] = client.submit(task(), *arguments, key=key, pure=False, priority=priority)
        runs = {future.key: run for run, future in futures.items()}
        try:
            for future in distributed.as_completed(list(futures.values())):
                run = runs[future.key]
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
                echo(f"{name}/{run}: finished on {worker} in {seconds:.0f} s, test loss {loss:.2f}; "
                     f"{len(todo) - len(done) - len(failed)} runs left")  # fmt: skip
        except OSError as error:  # the scheduler went away: what came back is kept
            raise StudyFailed(f"study {name}: the cluster went away ({error}); the same command goes on.") from None
        except KeyboardInterrupt as error:
            stop.set()  # every running task stops its run (its kernel is shut down), then the cluster goes
            distributed.wait([f for r, f in futures.items() if r not in done], timeout=60)
            client.cancel(list(futures.values()))
            signum = getattr(error, "signum", signal.SIGINT)
            finished = f"finished: {', '.join(done)}" if done else "no run had finished"
            raise Stopped(signum, f"stopped ({STOPS[signum]}) during study {name}; {finished}") from None
    if failed:
        raise StudyFailed(
            f"study {name}: {len(failed)} of {len(todo)} runs failed ("
            + "; ".join(f"{run}: {why}" for run, why in failed.items())
            + "). The others are kept; the same command runs the missing ones again."
        )


@contextlib.contextmanager
def cluster(scheduler=None):
    """A client of the cluster at `scheduler` (or DASK_SCHEDULER_ADDRESS), or of an embedded local cluster."""
    import dask
    import distributed
    import torch

    address = scheduler or dask.config.get("scheduler-address", None)
    if address:
        try:
            # Dask's own connect timeout: 30 s unless DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT says otherwise
            client = distributed.Client(address, timeout=dask.config.get("distributed.comm.timeouts.connect"))
        except (OSError, ValueError) as error:  # nothing answers there, or not an address
            raise StudyFailed(
                f"no Dask scheduler answers at {address} ({error}): start one (docs/studies.md), or leave "
                "--scheduler and DASK_SCHEDULER_ADDRESS unset for the embedded local cluster."
            ) from None
        with client:
            yield client, f"the cluster at {address}"
        return
    gpus = torch.cuda.device_count()
    before = {name: os.environ.get(name) for name in DASK_ENVIRON}  # the nanny sets them in this process too
    try:
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
    finally:  # as it was: a run started later from this process gets every core
        for name, value in before.items():
            os.environ.pop(name, None) if value is None else os.environ.update({name: value})


# What Dask's nanny sets for its worker's own process (distributed.nanny.pre-spawn-environ): one thread for
# each numeric library, and MALLOC_TRIM_THRESHOLD_, which returns freed memory to the system at once. A run
# is the one heavy process of its worker: it takes every core torch sees and the usual allocator, as
# `tasks.py run` does (with Dask's environment an epoch took 2.5 to 3.5 times as long, a fifth in the kernel).
DASK_ENVIRON = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")


def run_on_worker(study, where, run, parameters, code, stop) -> tuple:
    """On a worker: the run, headless, in this checkout (in its `scratch` folder); its files, seconds, worker."""
    import distributed

    worker, stopping = distributed.get_worker(), distributed.Event(stop)
    if stopping.is_set():  # queued on the worker when the study stopped: nothing is started
        raise StudyFailed("the study was stopped before this run started")
    here = fingerprint.code_of()
    changed = fingerprint.changes(code, here)
    if changed:
        raise StudyFailed(
            f"worker {worker.address} has other code than the study ({here['fingerprint']} there, "
            f"{code['fingerprint']} here; changed: {'; '.join(changed)}): check out the study's commit there."
        )
    folder = scratch(study, where, run, parameters, code)
    wait_until_free(folder)  # a rerun after its worker died: the dying run lets go of its folder first
    env = {k: v for k, v in os.environ.items() if not is_variable(k) and k not in ("VAE_STUDY_GPUS", *DASK_ENVIRON)}
    env.update({f"{PREFIX}{k.upper()}": str(v) for k, v in parameters.items()}, VAE_RESULTS_DIR=str(folder))
    if int(os.environ.get("VAE_STUDY_GPUS", "0")) > 1:  # the embedded cluster: one GPU per worker
        env["CUDA_VISIBLE_DEVICES"] = str(worker.name)
    if (folder / "checkpoint.pt").exists():  # this run's own, from before a stop: later than any start
        env["VAE_RESUME"] = "1"
    elif folder.exists():  # stopped before its first epoch: nothing to go on from
        shutil.rmtree(folder)
    spent = folder / ".seconds"  # the wall time of this run's earlier parts, when it was stopped and goes on
    before = float(spent.read_text()) if spent.exists() else 0.0
    started, log = time.perf_counter(), folder.with_name(folder.name + ".log")
    try:
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "harness.headless"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip
            while process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=1)
                if process.poll() is None and stopping.is_set():
                    process.send_signal(signal.SIGINT)  # the run stops, its checkpoint kept: its kernel is shut down
                    process.wait()
    finally:
        seconds = before + time.perf_counter() - started
        if folder.is_dir():
            files.write_text(spent, f"{seconds:.1f}\n")
    if process.returncode:
        raise StudyFailed(log.read_text().strip().splitlines()[-1] if log.read_text().strip() else "no output")
    made = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    shutil.rmtree(folder)
    log.unlink()
    return made, seconds, worker.address


def scratch(study, where, run, parameters, code) -> Path:
    """The folder a run works in on this worker: one per study (and its folder `where`), run, settings and
    code. The same run's folders of other settings or code are removed: they could never be continued."""
    key = json.dumps([str(where), parameters, code["fingerprint"]], sort_keys=True)
    folder = REPO / "runs" / ".studies" / f"{study}-{run}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f"{study}-{run}-" + "?" * 12):
        if stale.is_dir() and stale != folder:
            with contextlib.suppress(files.FolderInUse):
                files.check_free(stale)
                shutil.rmtree(stale, ignore_errors=True)
                stale.with_name(stale.name + ".log").unlink(missing_ok=True)
    return folder


def wait_until_free(folder: Path, seconds=120):
    """Wait while another process holds the folder's lock; then `FolderInUse` says which process."""
    for _ in range(seconds):
        try:
            return files.check_free(folder)
        except files.FolderInUse:
            time.sleep(1)
    files.check_free(folder)


def die_with_parent():
    """Linux: the run gets SIGTERM (and stops, in one line) when its worker dies, so no run outlives it."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def keep(folder: Path, made: dict):
    """A run's files from its worker, written into `folder` atomically under the folder's lock."""
    files.check_free(folder)
    shutil.rmtree(folder, ignore_errors=True)  # a stopped run's leftovers: the finished run replaces them
    files.lock_folder(folder)
    try:
        metrics = json.loads(made["metrics.json"])
        metrics["settings"]["results_dir"] = shown(folder)  # where the record is, not the worker's scratch folder
        made = {**made, "metrics.json": (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode()}
        for name, data in sorted(made.items(), key=lambda item: item[0] == "metrics.json"):  # the record last
            with atomic_path(folder / name) as tmp:
                tmp.write_bytes(data)
    finally:
        files.HELD.pop(folder.resolve()).release(force=True)
