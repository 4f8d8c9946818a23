"""Run the notebook headless, the way `python3 tasks.py run` and the studies do.

    python headless.py            # the settings come from the VAE_* environment variables

The settings are checked first (`run_support.load_settings`): a bad one is refused in one line
before a kernel starts. The spec's run re-executes the notebook in place; any other run writes
its executed notebook into its own results folder. While the notebook runs, the terminal shows the
section running and everything the notebook prints, as it prints it (nbclient's `on_cell_execute`
hook and its `output` method). A failure ends with one line: the error, the cell, and where the
executed notebook is. Ctrl-C stops the kernel and says what was kept.
"""

import asyncio
import os
import signal
import sys
from pathlib import Path

import nbclient
import nbformat

import run_support
from vae_utils import atomic_path

NOTEBOOK = run_support.REPO / "Variational_autoencoder.ipynb"
EXIT_SETTINGS, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class RunFailed(Exception):
    """The notebook did not finish; the message is the one line to show."""

    def __init__(self, message, code=EXIT_FAILED):
        super().__init__(message)
        self.code = code


class LiveClient(nbclient.NotebookClient):
    """A NotebookClient that echoes each section title and each printed line as they happen."""

    def __init__(self, nb, echo, **kw):
        super().__init__(nb, **kw)
        self.echo = echo
        self.section, self.cell_index, self.interrupted = None, None, False
        self.on_cell_execute = self.announce
        self.on_notebook_start = self.catch_ctrl_c

    def catch_ctrl_c(self, notebook):
        """Ctrl-C interrupts the running cell (nbclient's own handler would kill the kernel mid-cell)."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self.interrupt)

    def interrupt(self):
        self.interrupted = True
        self.interrupting = asyncio.ensure_future(nbclient.util.ensure_async(self.km.interrupt_kernel()))

    def announce(self, cell, cell_index):
        self.cell_index = cell_index
        section = section_of(self.nb, cell_index)
        if section != self.section:
            self.section = section
            self.echo(f"-- {section}\n")

    def output(self, outs, msg, display_id, cell_index):
        if msg["msg_type"] == "stream":
            self.echo(msg["content"]["text"])
        return super().output(outs, msg, display_id, cell_index)


def section_of(nb, cell_index) -> str:
    """The last markdown heading at or before `cell_index`."""
    for cell in reversed(nb.cells[: cell_index + 1]):
        if cell.cell_type == "markdown" and cell.source.startswith("#"):
            return cell.source.splitlines()[0].lstrip("# ").strip()
    return "start"


def write_notebook(nb, path: Path):
    with atomic_path(path) as tmp:
        nbformat.write(nb, tmp)


def destinations(settings) -> tuple:
    """Where the executed notebook goes: (when it finishes, when it fails)."""
    if settings.results_dir == str(run_support.RECORD):  # the spec's run: in place, never half-written
        return NOTEBOOK, run_support.REPO / run_support.RUNS / "failed-spec-run.ipynb"
    executed = run_support.REPO / settings.results_dir / NOTEBOOK.name
    return executed, executed


def execute(environ, echo=None) -> Path:
    """Check the settings in `environ`, then execute the notebook with them; return where it went.

    Raises SettingsError or CheckpointError before a kernel starts, and RunFailed with a one-line
    message when the notebook fails or is interrupted.
    """
    echo = echo or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    settings = run_support.load_settings(environ)
    output, failed_output = destinations(settings)
    results = run_support.REPO / settings.results_dir
    if output == NOTEBOOK:
        echo(f"the spec's run: the notebook in place, results in {settings.results_dir}/\n")
    else:
        echo(f"an experiment ({run_support.run_name(settings)}): everything goes to {settings.results_dir}/\n")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:  # a failed run must not show the committed run's outputs below the failure
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = LiveClient(
        nb,
        echo,
        timeout=None,
        record_timing=False,
        coalesce_streams=True,  # a progress bar is saved as its last state
        extra_arguments=["--IPKernelApp.log_level=ERROR"],  # not the kernel's start-up warnings
        resources={"metadata": {"path": str(run_support.REPO)}},
    )
    try:
        client.execute(env=dict(environ))
    except nbclient.exceptions.CellExecutionError as error:
        write_notebook(nb, failed_output)
        if client.interrupted or error.ename == "KeyboardInterrupt":
            raise RunFailed(_interrupted_message(results), EXIT_INTERRUPTED) from None
        where = f"code cell [{nb.cells[client.cell_index].execution_count}] ({client.section})"
        raise RunFailed(
            f"{error.ename}: {error.evalue}\n  in {where}; the executed notebook: {failed_output}"
        ) from None
    except (KeyboardInterrupt, Exception) as error:  # noqa: BLE001 -- the kernel died or never started
        write_notebook(nb, failed_output)
        if client.interrupted or isinstance(error, KeyboardInterrupt):
            raise RunFailed(_interrupted_message(results), EXIT_INTERRUPTED) from None
        raise RunFailed(f"the kernel stopped: {type(error).__name__}: {error}; see {failed_output}") from None
    write_notebook(nb, output)
    return output


def _interrupted_message(results: Path) -> str:
    checkpoint = results / "checkpoint.pt"
    if not checkpoint.exists():
        return "interrupted: the kernel is stopped; no epoch had finished, so there is no checkpoint."
    epoch = run_support.load_checkpoint(checkpoint)["epoch"]
    return (
        f"interrupted: the kernel is stopped; {checkpoint} keeps epoch {epoch}: "
        "run the same command with VAE_RESUME=1 to continue."
    )


def main():
    """`python3 tasks.py run`: the settings come from the VAE_* environment variables."""
    try:
        print(f"done: {execute(os.environ)}", flush=True)
    except (run_support.SettingsError, run_support.CheckpointError) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(EXIT_SETTINGS)
    except RunFailed as error:
        print(f"error: {error}" if error.code != EXIT_INTERRUPTED else str(error), file=sys.stderr)
        sys.exit(error.code)


if __name__ == "__main__":
    main()
