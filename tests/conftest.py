"""Shared fixtures. Tests never write into the repo: every run goes to a temporary folder."""

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
import torch

from harness import REPO, files, fingerprint, folders, headless, mnist, provenance, settings

# Small notebook runs: a subset of MNIST, a cheap bound. Enough to exercise every cell.
QUICK = {"train_size": 1536, "test_size": 256, "iw_samples": 2}


def pytest_configure(config):
    # The notebook under nbval (and every kernel a test starts) runs the spec's defaults; only the
    # data folder and the device may be chosen by the caller. Results go to a temporary folder.
    for key in [k for k in os.environ if settings.is_variable(k) and k not in ("VAE_DATA_DIR", "VAE_DEVICE")]:
        del os.environ[key]
    os.environ["VAE_RESULTS_DIR"] = tempfile.mkdtemp(prefix="vae-test-results-")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ.get("VAE_RESULTS_DIR", ""), ignore_errors=True)


class RunsCode:
    """Pickles to a call of os.system: loading it with plain pickle would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="session")
def mnist_root():
    """The real, verified MNIST (fetched once if needed, like the notebook does)."""
    root = Path(os.environ.get("VAE_DATA_DIR", REPO / "data"))
    return mnist.ensure_mnist(root if root.is_absolute() else REPO / root)


@pytest.fixture()
def mnist_copy(mnist_root, tmp_path):
    """A private copy of the four verified raw files, for tests that damage them."""
    raw = mnist.raw_folder(tmp_path)
    raw.mkdir(parents=True)
    for name in mnist.MNIST_MD5:
        shutil.copy(mnist.raw_folder(mnist_root) / name, raw / name)
    return tmp_path


def without_settings(environ=None) -> dict:
    return {k: v for k, v in (os.environ if environ is None else environ).items() if not settings.is_variable(k)}


@pytest.fixture()
def quick_env(mnist_root):
    """The environment of a small run: QUICK settings, the verified data, no other VAE_* variable."""
    quick = {f"VAE_{name.upper()}": str(value) for name, value in QUICK.items()}
    return {**without_settings(), **quick, "VAE_DATA_DIR": str(mnist_root)}


@pytest.fixture()
def quick(mnist_root):
    """The parameters of a small run: QUICK settings and the verified data."""
    return {**QUICK, "data_dir": str(mnist_root)}


def run_notebook(parameters, results, **settings):
    """Execute the notebook headless, as `tasks.py run` does, with these settings into `results`.

    Returns the executed notebook; a failure raises `headless.RunFailed` (its `ename` names the error).
    """
    parameters = {**parameters, **settings, "results_dir": str(results)}
    output = headless.execute(parameters, environ=without_settings(), echo=lambda text: None)
    return nbformat.read(output, as_version=4)


def tracked_copy(tmp_path):
    """The repository's tracked files, copied as they are in the working tree, in a git repository of their own."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    copy = tmp_path / "repo"
    for name in filter(None, (n.decode() for n in names)):
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *command], cwd=copy, check=True, capture_output=True)
    return copy


def tasks(*args, env, cwd=REPO, timeout=900):
    """`python3 tasks.py ARGS` as a user runs it; returns the finished process (text output)."""
    return subprocess.run(
        ["python3", "tasks.py", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@functools.cache
def records_machine() -> dict:
    """The machine that made results/ as its record says (read once for the session); {} without a readable record."""
    with contextlib.suppress(files.UnreadableRun):
        made = files.read_metrics(folders.RECORD)["provenance"]
        return {key: made[key] for key in provenance.machine("cpu") if key in made}  # what tells machines apart
    return {}


@pytest.fixture(autouse=True)
def on_the_records_machine(monkeypatch):
    """In this process the spec's run resolves to results/ on any machine, as on the one that made the
    record; test_machinery's test of the spec run on another machine names the machine it pretends to be."""
    here = folders.machine
    monkeypatch.setattr(folders, "machine", lambda device: {**here(device), **records_machine()})
    folders.CELL.clear()  # each test is a kernel of its own, where no settings cell has run yet
    monkeypatch.setattr(fingerprint, "UNNAMED", [])  # and no cell ran without an id


@pytest.fixture()
def folder(tmp_path):
    """A run folder's settings (VAE_RESULTS_DIR), and this process's folder locks given up afterwards."""
    yield {"VAE_RESULTS_DIR": str(tmp_path / "run")}
    files.release_folders()


def load(**environ):
    """Settings from these VAE_* variables alone; the folder is not claimed."""
    return folders.resolve(None, environ, claim_folder=False)


def claim(**environ):
    """Settings as the notebook resolves them: the folder claimed (locked) and checked."""
    return folders.resolve(None, environ)


def checkpoint_state(s, epoch=3, epochs=None):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    saved = {**vars(s), **({"epochs": epochs} if epochs else {})}
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "metrics": [history_row(e) for e in range(1, epoch + 1)], "settings": saved,
            "rng": torch.Generator().get_state(), "resumed": [], "code": fingerprint.code_of()}  # fmt: skip


EVALUATION = {"test_loss": 1.5, "test_recon": 1.0, "test_kl": 0.5, "elbo": -1.5, "elbo_se": 0.1, "iw_bound": -1.4,
              "iw_bound_se": 0.1, "iw_samples": 2, "active_units": 3}  # fmt: skip


def record(saved_settings, code=None, **fields):
    """A whole metrics.json of a finished run with these settings."""
    return {"settings": saved_settings, "code": code, "epochs": [history_row(1)], "finished": True, "test_loss": 1.5,
            "evaluation": dict(EVALUATION), **fields}  # fmt: skip


def history_row(epoch, test_loss=1.5):
    """One epoch of a run's history, as `TrainingRun.record_epoch` writes it."""
    return {"epoch": epoch, "train_loss": test_loss, "test_loss": test_loss, "test_recon": test_loss, "test_kl": 0.0,
            "seconds": 0.1}  # fmt: skip


@contextlib.contextmanager
def holding_lock(folder):
    """Another process that holds `folder`'s lock, as a run writing it would; yields that process."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from harness import files; files.lock_folder(sys.argv[1]); "
         "print(1, flush=True); time.sleep(60)", str(folder)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "1"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def wait_until(condition, seconds=180):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def one_line(err: str) -> str:
    """The one line a stopped or failed command said on stderr; a failure shows everything it said."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, repr(err)
    return lines[0]
