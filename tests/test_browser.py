"""The notebook in a real browser: JupyterLab and Notebook 7 on 127.0.0.1, driven in headless Chromium.

Opening the notebook and leaving it open changes nothing (past several autosave intervals, shortened
through JupyterLab's own setting); a bad value and a stop each show their one line; Run All after an
edit of the parameters cell writes the run's own folder; the stop button, then the training cell
again, finishes the run. Debian's `chromium` and `chromium-driver` are needed (`.ci/run` installs
them); without them these tests are skipped, saying so.
"""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import tasks
from conftest import QUICK, REPO, without_settings

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER), reason="no browser: apt-get install chromium chromium-driver (Debian's packages)"
    ),
]
NOTEBOOK = "Variational_autoencoder.ipynb"
AUTOSAVE = 2  # seconds, instead of JupyterLab's 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def workspace(tmp_path, mnist_root):
    """A folder Jupyter serves: a copy of the notebook (its bytes as committed) beside the repo's code."""
    root = tmp_path / "workspace"
    root.mkdir()
    shutil.copy(REPO / NOTEBOOK, root / NOTEBOOK)
    for name in ("harness", "vae_utils.py"):
        (root / name).symlink_to(REPO / name)
    return root


def jupyter(app, root, tmp_path, **environ):
    """`jupyter lab` or `jupyter notebook` on 127.0.0.1, its settings and state in `tmp_path`."""
    settings = tmp_path / "lab-settings" / "@jupyterlab"
    for plugin, values in {
        "docmanager-extension/plugin": {"autosaveInterval": AUTOSAVE},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "notebook-extension/tracker": {"windowingMode": "none"},  # every cell in the page, not only those in view
    }.items():
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    port, token = free_port(), "browser-test"
    state = {
        "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
        "JUPYTER_RUNTIME_DIR": "rt",
    }
    env = {**without_settings(), **environ, **{name: str(tmp_path / folder) for name, folder in state.items()},
           "PYTHONPATH": tasks.repo_path()}  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", app, "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", *tasks.LAB],  # as `tasks.py lab` starts it
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "Jupyter did not start"
            time.sleep(0.5)
    path = f"/lab/tree/{NOTEBOOK}" if app == "lab" else f"/notebooks/{NOTEBOOK}"
    return server, f"{base}{path}?token={token}"


class Page:
    """The notebook open in headless Chromium, and what a person does with it."""

    def __init__(self, url):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
            options.add_argument(argument)
        self.driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        self.driver.get(url)
        code = sum(c["cell_type"] == "code" for c in json.loads((REPO / NOTEBOOK).read_text())["cells"])
        self.wait(lambda: len(self.cells()) == code and self.kernel_idle(), 120)

    def wait(self, condition, seconds=300):
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"timed out; the page shows: {self.shows()}"
            time.sleep(0.3)

    def shows(self) -> str:
        """What a failed wait reports: the kernel's state and the end of what the cells printed."""
        states = self.driver.find_elements("css selector", ".jp-Notebook-ExecutionIndicator")
        state = states[0].get_attribute("data-status") if states else "unknown"
        printed = "\n".join(o.text for o in self.driver.find_elements("css selector", ".jp-OutputArea-output"))
        return f"kernel {state}; outputs end: {printed[-600:]!r}"

    def cells(self):
        return self.driver.find_elements("css selector", ".jp-Notebook .jp-CodeCell")

    def cell(self, text):
        """The code cell whose source holds `text`."""
        return next(c for c in self.cells() if text in c.find_element("css selector", ".jp-InputArea").text)

    def output(self, text) -> str:
        return "\n".join(o.text for o in self.cell(text).find_elements("css selector", ".jp-OutputArea-output"))

    def kernel_idle(self) -> bool:
        return bool(self.driver.find_elements("css selector", '.jp-Notebook-ExecutionIndicator[data-status="idle"]'))

    def append_to(self, text, line):
        """Type `line` at the end of the cell holding `text`, as a person does."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        self.cell(text).find_element("css selector", ".cm-content").click()
        ActionChains(self.driver).key_down(Keys.CONTROL).send_keys(Keys.END).key_up(Keys.CONTROL).perform()
        ActionChains(self.driver).send_keys(Keys.ENTER, line, Keys.ESCAPE).perform()

    def menu(self, title, command):
        """Click the menu `title`, then its item `command` (a JupyterLab command id)."""
        labels = self.driver.find_elements("css selector", ".lm-MenuBar-itemLabel")
        next(label for label in labels if label.text == title).click()
        self.wait(lambda: self.driver.find_elements("css selector", f'li[data-command="{command}"]'), 10)
        self.driver.find_element("css selector", f'li[data-command="{command}"]').click()

    def run_cell(self, text):
        """Select the cell holding `text` and press Shift+Enter."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        self.cell(text).find_element("css selector", ".jp-InputPrompt").click()
        ActionChains(self.driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()

    def close(self):
        self.driver.quit()


@pytest.fixture(params=["lab", "notebook"])
def opened(request, workspace, tmp_path, mnist_root):
    quick = {f"VAE_{name.upper()}": str(value) for name, value in QUICK.items()}
    env = {
        **quick,
        "VAE_DATA_DIR": str(mnist_root),
        "VAE_RESULTS_DIR": str(tmp_path / "run"),
        "VAE_TRAIN_SIZE": "20000",
    }
    server, url = jupyter(request.param, workspace, tmp_path, **env)
    page = None
    try:
        page = Page(url)
        yield page, workspace / NOTEBOOK, tmp_path / "run"
    finally:
        if page is not None:
            page.close()
        server.terminate()
        server.wait(timeout=30)


def test_opening_the_notebook_and_leaving_it_open_changes_nothing(opened):
    page, notebook, _ = opened
    committed = (REPO / NOTEBOOK).read_bytes()
    time.sleep(4 * AUTOSAVE + 2)
    assert notebook.read_bytes() == committed, "opening the notebook changed it"
    assert not page.driver.find_elements("css selector", ".jp-mod-dirty"), "the notebook is marked as changed"


def test_a_bad_value_shows_its_one_line_and_run_all_writes_the_runs_own_folder(opened):
    page, _, run = opened
    page.append_to("seed = 0", "batch_size = 0")
    page.menu("Run", "runmenu:run-all")
    page.wait(lambda: "SettingsError" in page.output("resolve(globals())"), 120)
    shown = page.output("resolve(globals())")
    assert "batch_size must be a whole number >= 1; got 0 (from the parameters cell)" in shown
    assert "Traceback" not in shown and "settings.py" not in shown and not run.exists()
    # A person reads the error, then edits. A Run All sent while the kernel may still be aborting the
    # first one's queued cells can be aborted with them: the likely cause of one timeout under load (Lab).
    page.wait(page.kernel_idle, 60)
    page.append_to("seed = 0", "batch_size = 128")
    page.append_to("seed = 0", "epochs = 2")
    page.menu("Run", "runmenu:run-all")
    page.wait(lambda: (run / "metrics.json").exists() and page.kernel_idle(), 600)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] and metrics["settings"]["epochs"] == 2 and len(metrics["epochs"]) == 2


def test_the_stop_button_then_the_training_cell_again_finishes_the_run(opened):
    page, _, run = opened
    page.append_to("seed = 0", "epochs = 3")
    page.menu("Run", "runmenu:run-all")
    page.wait(lambda: (run / "checkpoint.pt").exists(), 600)  # epoch 1 done, epoch 2 under way
    page.menu("Kernel", "kernelmenu:interrupt")
    page.wait(lambda: "Stopped during epoch" in page.output("run.epochs(model, optimizer)"), 120)
    stopped = page.output("run.epochs(model, optimizer)")
    assert "Traceback" not in stopped and "Run this cell again to go on" in stopped
    page.wait(page.kernel_idle, 60)
    page.run_cell("run.epochs(model, optimizer)")
    page.wait(lambda: "3 of 3 epochs trained" in page.output("run.epochs(model, optimizer)"), 600)
