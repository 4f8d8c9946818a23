"""What made a run, besides its settings and code: the machine, the versions and the git state.

`machine` is what a run's last digits depend on: a checkpoint records where its epochs ran (a run resumed
elsewhere says so), and on another machine than the record's the spec's run keeps out of results/;
`provenance` is what metrics.json records. Neither changes a number. `made_by`, `cpu_of` and `code_line`
name them in the studies' tables.
"""

import contextlib
import platform
import subprocess
from pathlib import Path

import torch

from harness import REPO


def machine(device) -> dict:
    """What a run's numbers depend on besides its settings and code: the device, the CPU and its threads (2 and 8
    threads of one CPU round differently). Not the GPU's name: asking for it starts CUDA in the asking process."""
    return {"device": str(device), "cpu": cpu_name(), "threads": torch.get_num_threads()}


def described(facts) -> str:  # a machine in words: `AMD EPYC, 2 threads` (`, cuda` on a GPU)
    device = "" if facts.get("device", "cpu") == "cpu" else f", {facts['device']}"
    return f"{facts.get('cpu')}, {facts.get('threads')} threads{device}"


def cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what `platform` knows (often only x86_64)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git(*args):
    """(output, None) or (None, the reason git could not answer)."""
    try:
        done = subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"git could not run: {error}"
    if done.returncode != 0:
        return None, f"git {args[0]} failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}"
    return done.stdout.strip(), None


def provenance(device, results) -> dict:
    """What produced a run: versions, device, threads and the git state of this folder.

    `git_dirty` says whether tracked files differ from `git_commit`, not counting the run's own
    results folder; either is `None` with `git_unknown` saying why when git cannot tell.
    """
    import torchvision

    commit, reason = git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        status = ["status", "--porcelain", "--untracked-files=no", "--", "."]
        results = Path(results).resolve()
        if results.is_relative_to(REPO):
            status.append(f":(exclude){results.relative_to(REPO)}")
        changes, reason = git(*status)
        dirty = None if changes is None else bool(changes)
    facts = {
        **machine(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
    }
    if torch.device(device).type == "cuda":  # runs on different GPUs belong in separate rows: name it
        facts["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if reason:
        facts["git_unknown"] = reason
    return facts


def made_by(metrics) -> str:
    """Which code made a run, as its record says: its commit, "and local changes" where the tree was dirty."""
    commit, dirty = metrics["provenance"].get("git_commit"), metrics["provenance"].get("git_dirty")
    return f"commit {commit[:7]}" + (" and local changes" if dirty else "") if commit else "unknown code"


def cpu_of(metrics) -> str:
    """The maker of the CPU a run's record names (Intel, AMD), or `?` for a record that names none."""
    cpu = metrics["provenance"].get("cpu") or "?"
    return cpu.split("(")[0].split()[0] if cpu.startswith(("Intel", "AMD")) else "?"


def code_line(runs: dict) -> str:
    """Which code made the runs of a table: each commit (and whether the tree was dirty) with its runs."""
    by_code = {}
    for run, metrics in runs.items():
        by_code.setdefault(made_by(metrics), []).append(run)
    return "Made by " + "; ".join(f"{code}: {', '.join(names)}" for code, names in by_code.items()) + "."
