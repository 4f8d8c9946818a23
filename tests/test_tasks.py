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


def test_venv_dir_is_read_from_where_you_stand_and_an_empty_one_is_the_default(tmp_path):
    def venv(value):  # tasks.py's environment for VENV_DIR=value, started from tmp_path
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tasks.REPO), "VENV_DIR": value}
        code = "import tasks; print(tasks.VENV)"
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)

    assert venv("env").stdout.strip() == str(tmp_path / "env")  # every command then runs in the repository
    assert venv("").stdout.strip() == str(tasks.REPO / ".venv")  # not the folder you stand in


def test_help_says_what_each_task_does_and_succeeds():
    for flag in ("-h", "--help"):
        done = subprocess.run([sys.executable, "tasks.py", flag], cwd=tasks.REPO, capture_output=True, text=True)
        assert done.returncode == 0 and not done.stderr
        assert "python3 tasks.py study NAME" in done.stdout and done.stdout.rstrip().endswith("[args]")
