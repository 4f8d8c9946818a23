#!/usr/bin/env python3
"""Set up and run this repo with nothing but Python 3.

    python3 tasks.py run             # the whole notebook, headless (the spec's run: in place, results/)
    python3 tasks.py test            # ruff, then the notebook under nbval and every test
    python3 tasks.py test --fast     # the quick tier (no notebook runs), for the inner loop
    python3 tasks.py study NAME      # run a study (seeds, beta, objectives, budget, ...) into results/studies/
    python3 tasks.py tables          # README's and docs/'s generated tables (--write to update them)
    python3 tasks.py bench           # the training-speed benchmark (benchmarks/benchmark.py)
    python3 tasks.py lint            # ruff check and ruff format --check (the test command runs them too)
    python3 tasks.py format          # ruff format and ruff check --fix
    python3 tasks.py lab             # open the notebook in Jupyter
    python3 tasks.py restore         # the committed notebook back, after experiments saved in Jupyter

Settings come from VAE_* environment variables (docs/settings.md lists them): `VAE_EPOCHS=2 python3
tasks.py run` is an experiment and writes to runs/<name>/, never to the committed notebook or results/.
Every task first makes sure a virtual environment (`.venv`, or $VENV_DIR) holds requirements.txt;
it is created or updated only when requirements.txt changed. Extra arguments go to pytest, the
benchmark or Jupyter; the other tasks take none.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from harness import REPO, STOPS, stopped_in_one_line  # the package's __init__ needs nothing but Python

VENV = Path(os.environ.get("VENV_DIR") or REPO / ".venv").expanduser().absolute()  # commands run in the repo
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def sh(*cmd, echo=True):
    """Run a command in the repo; a failing one ends this task with its exit status."""
    if echo:
        print("+", " ".join(str(c) for c in cmd), flush=True)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's to handle
    try:
        code = subprocess.call([str(c) for c in cmd], cwd=REPO)
    finally:
        signal.signal(signal.SIGINT, previous)
    if code:
        sys.exit(code)


def become(module, *args):
    """Replace this process with `python -m module args` (same process id, signals and terminal): nothing
    is left behind when it is stopped, and a stop reaches the command itself. Paths stay relative to
    where you stand; the repository is on the module path."""
    sys.stdout.flush()
    for signum in STOPS:
        signal.signal(signum, signal.SIG_DFL)  # an ignored signal would stay ignored in the new program
    os.execve(str(PYTHON), [str(PYTHON), "-m", module, *map(str, args)], {**os.environ, "PYTHONPATH": repo_path()})


def repo_path() -> str:  # PYTHONPATH with the repository first: `harness` importable from anywhere
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)


def setup():
    """Create the virtual environment and install requirements.txt into it, if not done yet.

    A stop while the environment is made can leave it without pip: the next command sees that and
    makes it again. requirements.txt's stamp is written only after the install, so a stopped install
    is redone by the next command.
    """
    requirements = REPO / "requirements.txt"
    stamp = VENV / ".requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if PYTHON.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return
    if PYTHON.exists() and subprocess.call([PYTHON, "-m", "pip", "--version"], stdout=subprocess.DEVNULL, stderr=2):
        print(f"{VENV} has no working pip (an interrupted set-up?): making it again", flush=True)
        shutil.rmtree(VENV)
    if not PYTHON.exists():
        print(f"creating a virtual environment in {VENV}", flush=True)
        if subprocess.call([sys.executable, "-m", "venv", str(VENV)]):
            sys.exit(
                "Could not create the virtual environment. On Debian or Ubuntu install the "
                "venv module first: sudo apt install python3-venv"
            )
    sh(PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", requirements)
    stamp.write_text(digest + "\n")


def run(args):
    become("harness.headless")


def lint(args):
    sh(PYTHON, "-m", "ruff", "check", ".")
    sh(PYTHON, "-m", "ruff", "format", "--check", ".")


def test(args):
    lint([])
    record = subprocess.call([PYTHON, "-m", "harness.record"], cwd=REPO)  # one line, not four failed tests
    if record:
        sys.exit(record)
    if "--fast" in args:
        sh(PYTHON, "-m", "pytest", "-m", "not slow", *[a for a in args if a != "--fast"])
    else:
        sh(PYTHON, "-m", "pytest", "--nbval", "--nbval-current-env", "Variational_autoencoder.ipynb", "tests", *args)


def format_(args):
    sh(PYTHON, "-m", "ruff", "format", ".")
    sh(PYTHON, "-m", "ruff", "check", "--fix", ".")


def lab(args):
    os.environ["PYTHONPATH"] = repo_path()  # Jupyter imports its save hook (`LAB`) from the repository
    sh(PYTHON, "-m", "jupyter", "lab", "Variational_autoencoder.ipynb", *LAB, *args)


def restore(args):
    if subprocess.call(["git", "checkout", "--", "Variational_autoencoder.ipynb"], cwd=REPO):
        sys.exit("error: git could not restore the notebook (is this a git checkout?)")
    print("Variational_autoencoder.ipynb is the committed record again")


TASKS = {  # task -> what it does with its arguments; those in NO_ARGUMENTS take none
    "lint": lint,
    "run": run,
    "test": test,
    "study": lambda args: become("harness.studies", *args),
    "tables": lambda args: become("harness.tables", *args),
    "bench": lambda args: become("benchmarks.benchmark", *args),
    "format": format_,
    "lab": lab,
    "restore": restore,
    "setup": lambda args: None,
}
LAB = ["--ContentsManager.pre_save_hook=harness.keep_language_info"]  # opening the notebook leaves it as it is
NO_ARGUMENTS = {"lint", "run", "format", "restore", "setup"}


if __name__ == "__main__":
    stopped_in_one_line("while setting up: nothing was run")
    if sys.version_info < (3, 10):  # noqa: UP036 -- this runs on any python3: torch 2.14 and this code need 3.10
        sys.exit(f"error: this repo needs Python 3.10 or newer; {sys.executable} is {sys.version.split()[0]}.")
    usage = f"usage: python3 tasks.py {{{','.join(TASKS)}}} [args]"
    if sys.argv[1:2] in ([], ["-h"], ["--help"]):  # what each task does
        print(__doc__.strip() + "\n\n" + usage)
        sys.exit(0 if sys.argv[1:] else 2)
    if sys.argv[1] not in TASKS:
        sys.exit(f"error: no task {sys.argv[1]!r}. {usage}")
    task, args = sys.argv[1], sys.argv[2:]
    if task in NO_ARGUMENTS and args:
        hint = " Settings are VAE_* variables, e.g. VAE_EPOCHS=2 python3 tasks.py run." if task == "run" else ""
        print(f"error: `python3 tasks.py {task}` takes no arguments; got {' '.join(args)!r}.{hint}", file=sys.stderr)
        sys.exit(2)  # a usage error, as argparse's
    setup()
    TASKS[task](args)
