"""tasks.py, the two commands' set-up: an interrupted set-up is detected and redone by the next command."""

import subprocess
import sys

import tasks


def test_a_virtual_environment_left_without_pip_is_made_again(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # as Ctrl-C leaves it
    installs = []
    monkeypatch.setattr(tasks, "VENV", venv)
    monkeypatch.setattr(tasks, "PYTHON", venv / "bin" / "python")
    monkeypatch.setattr(tasks, "sh", lambda *cmd: installs.append(cmd))  # the install itself is not the question
    tasks.setup()
    assert subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"], capture_output=True).returncode == 0
    assert installs and installs[0][1:4] == ("-m", "pip", "install")
    assert (venv / ".requirements.sha256").exists()


def test_an_unknown_task_is_named_in_one_line_with_the_usage():
    done = subprocess.run([sys.executable, "tasks.py", "frobnicate"], cwd=tasks.REPO, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("error: no task 'frobnicate'. usage: python3 tasks.py {")
    assert len(done.stderr.strip().splitlines()) == 1
