"""The machinery of this repo: it runs, records, guards and tabulates runs of the notebook.

The method is the notebook and `vae_utils.py`; nothing here changes a number a run reports. One
concern a module: `settings` (every setting, checked once), `folders` (where a run writes), `files`
(safe writes, metrics.json, checkpoints trusted only when whole, the folder lock), `fingerprint`
(the code a run's numbers depend on), `run` (a run's state and record in the notebook), `provenance`
(the machine, versions and git state that made it), `mnist` (the verified data, docs/data.md),
`headless` (the notebook run without Jupyter), `studies` (sets of runs) and `cluster` (their tasks
on Dask), `summaries` (each study's table), `tables` (README's and docs' generated blocks) and
`figures`, all from metrics.json, and `record` (is the working tree's notebook the record?).

This file imports nothing heavy: `tasks.py` reads it before the virtual environment exists.
"""

import signal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "Variational_autoencoder.ipynb"
PREFIX = "VAE_"  # a setting NAME is the environment variable VAE_NAME
STOPS = {  # the signals that stop a run, and how a message names them (no SIGHUP on Windows)
    getattr(signal, name): shown
    for name, shown in (("SIGINT", "Ctrl-C"), ("SIGTERM", "SIGTERM"), ("SIGHUP", "SIGHUP"))
    if hasattr(signal, name)
}
