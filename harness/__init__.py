"""The machinery of this repo: it runs, records, guards and tabulates runs of the notebook.

The method is the notebook and `vae_utils.py`; nothing here changes a number a run reports. The
modules in layers, each importing only from those above it in this list (a test holds them to it):
`settings` (every setting, declared once) and `plans` (the studies' runs); `mnist` (the verified
data, docs/data.md); `files` (safe writes, the record's schema, checkpoints, the folder lock);
`fingerprint` (the code a run's numbers depend on) and `provenance` (the machine and git state);
`folders` (where a run writes; the settings cell's `resolve`); `run` (a run's state and record in the
notebook); `record` (is the notebook the record?) and `headless` (the notebook run without Jupyter);
`summaries` and `tables` (each study's table and figure, README's and docs' generated
blocks); `cluster` (a study's runs as Dask tasks) and `studies` (the command).

This file imports nothing heavy: `tasks.py` reads it before the virtual environment exists.
"""

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "Variational_autoencoder.ipynb"
PREFIX = "VAE_"  # a setting NAME is the environment variable VAE_NAME
STOPS = {  # the signals that stop a run, and how a message names them (no SIGHUP on Windows)
    getattr(signal, name): shown
    for name, shown in (("SIGINT", "Ctrl-C"), ("SIGTERM", "SIGTERM"), ("SIGHUP", "SIGHUP"))
    if hasattr(signal, name)
}


class OneLine:
    """An error its message alone mends (what was wrong, what to do): IPython shows that, not a traceback."""

    def _render_traceback_(self):
        return [f"{type(self).__name__}: {self}"]


class Stopped(KeyboardInterrupt):
    """A run or study stopped (a stop signal, or Jupyter's stop button); `code` is the exit status a command
    ends with (128 + the signal). The one exception that says "stopped"; in a kernel, its one line is shown."""

    def __init__(self, signum=signal.SIGINT, message=None):
        super().__init__(message or f"stopped ({STOPS[signum]})")
        self.signum, self.code = signum, 128 + signum

    def _render_traceback_(self):  # IPython shows this instead of a traceback
        return [str(self)]


def raise_stopped(signum, frame):
    raise Stopped(signum)


def stop_by_raising():
    """From now on a stop signal (Ctrl-C, SIGTERM, SIGHUP) raises `Stopped`: the command cleans up, then ends in
    its one line with 128 + the signal."""
    for signum in STOPS:
        signal.signal(signum, raise_stopped)


def stopped_in_one_line(what: str):
    """From now on, a stop signal ends this process at once with one line, `stopped (Ctrl-C) WHAT.`

    A command's first call, before its imports (seconds of them): a stop then has nothing to clean up.
    """

    def stop(signum, frame):
        print(f"stopped ({STOPS[signum]}) {what}.", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    for signum in STOPS:
        signal.signal(signum, stop)


def keep_language_info(model, path, contents_manager, **kwargs):
    """Jupyter's pre-save hook (`tasks.py lab`): the notebook keeps the Python version it names, the one that ran it;
    a kernel of another version would write its own there on opening the notebook, changing the tracked file."""
    if Path(path).name != NOTEBOOK.name:  # another notebook names its kernel's Python
        return
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # no such file yet, or not a notebook
        saved = json.loads((Path(contents_manager.root_dir) / path).read_bytes())["metadata"]["language_info"]
        model["content"]["metadata"]["language_info"] = saved
