#!/usr/bin/env python3
"""Set up and run this repo with nothing but Python 3.

    python3 tasks.py run     # execute the whole notebook headless, in place (writes results/)
    python3 tasks.py test    # lint, then the notebook under nbval and the unit tests
    python3 tasks.py bench   # the training-speed benchmark (benchmarks/benchmark.py)
    python3 tasks.py lab     # open the notebook in Jupyter

Every task first makes sure a virtual environment (`.venv`, or $VENV_DIR) holds
requirements.txt; it is created or updated only when requirements.txt changed. Extra arguments
after `test` or `bench` go to pytest or the benchmark.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
VENV = Path(os.environ.get("VENV_DIR", REPO / ".venv"))
NOTEBOOK = "Variational_autoencoder.ipynb"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def sh(*cmd):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    code = subprocess.call([str(c) for c in cmd], cwd=REPO)
    if code:
        sys.exit(code)


def setup():
    """Create the virtual environment and install requirements.txt into it, if not done yet."""
    requirements = REPO / "requirements.txt"
    stamp = VENV / ".requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if PYTHON.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return
    if not PYTHON.exists():
        print(f"creating a virtual environment in {VENV}", flush=True)
        if subprocess.call([sys.executable, "-m", "venv", str(VENV)]):
            sys.exit("Could not create the virtual environment. On Debian or Ubuntu install the "
                     "venv module first: sudo apt install python3-venv")
    sh(PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", requirements)
    stamp.write_text(digest + "\n")


def run(args):
    sh(PYTHON, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
       "--ExecutePreprocessor.timeout=7200", "--ExecutePreprocessor.record_timing=False",
       *args, NOTEBOOK)


def test(args):
    sh(PYTHON, "-m", "ruff", "check", ".")
    sh(PYTHON, "-m", "pytest", "--nbval", "--nbval-current-env", NOTEBOOK, "tests", *args)


def bench(args):
    sh(PYTHON, "benchmarks/benchmark.py", *args)


def lab(args):
    sh(PYTHON, "-m", "jupyter", "lab", NOTEBOOK, *args)


TASKS = {"run": run, "test": test, "bench": bench, "lab": lab, "setup": lambda args: None}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        sys.exit(__doc__.strip() + f"\n\nusage: python3 tasks.py {{{','.join(TASKS)}}} [args]")
    setup()
    TASKS[sys.argv[1]](sys.argv[2:])
