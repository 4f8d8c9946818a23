"""Run the notebook headless: the one way `tasks.py run`, the studies, the tests and the benchmark do it.

    python -m harness.headless    # the settings come from the VAE_* environment variables

The settings are checked (`folders.resolve`) before a kernel starts and reach the notebook as papermill's injected
parameters; the spec's run re-executes the notebook in place (machine settings go as variables). The terminal shows
each section and printed line as it comes; a failure ends in one line (the error, the cell, the executed notebook). A
stop (Ctrl-C, SIGTERM, SIGHUP) interrupts the kernel, says what the checkpoint keeps, and exits with 128 + the signal.
"""

from harness import stopped_in_one_line

if __name__ == "__main__":  # a stop while the imports below load (seconds) ends in one line too
    stopped_in_one_line("before the kernel started: nothing was written")

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path

import nbclient
import nbformat
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from harness import NOTEBOOK, PREFIX, REPO, STOPS, Stopped, files, fingerprint, folders, raise_stopped, record, settings
from vae_utils import atomic_path

FAILED_SPEC_RUN, SAVED_OVER = folders.RUNS / "failed-spec-run.ipynb", folders.RUNS / "spec-run.ipynb"
EXIT_SETTINGS, EXIT_FAILED = 2, 1


class RunFailed(Exception):  # the notebook did not finish: the one line to show, and `code`, the exit status
    def __init__(self, message, code=EXIT_FAILED, ename=None):
        super().__init__(message)
        self.code, self.ename = code, ename


class LiveClient(nbclient.NotebookClient):  # echoes each section and printed line; a signal stops the kernel
    def __init__(self, nb, echo, **kw):
        super().__init__(nb, **kw)
        self.echo = echo
        self.section, self.cell_index, self.signum = None, None, None
        self.on_cell_execute = self.announce
        self.on_notebook_start = self.stop_if_signalled
        self.on_notebook_complete = self.stop_interrupting

    async def async_start_new_kernel(self, **kwargs):
        # nbclient has just set handlers that kill the kernel mid-cell: ours interrupt it instead.
        loop = asyncio.get_running_loop()
        for signum in STOPS:
            loop.add_signal_handler(signum, self.stop, signum)
        await super().async_start_new_kernel(**kwargs)

    async def _async_cleanup_kernel(self):
        # A second stop kills the kernel mid-cleanup: nbclient's exit hook would clean up twice (a traceback).
        if self.km is not None:
            await super()._async_cleanup_kernel()

    _cleanup_kernel = nbclient.util.run_sync(_async_cleanup_kernel)  # nbclient's exit hook, bound to the above

    def stop(self, signum):
        """First signal: interrupt the kernel (the training cell rolls back and ends). Second: kill it."""
        first, self.signum = self.signum is None, signum
        if self.kc is None or (first and self.cell_index is None):  # starting (an interrupt would hit its imports,
            return  # a traceback): `stop_if_signalled` ends the run before its first cell
        if first:
            self.stopping = asyncio.ensure_future(self.interrupt_until_stopped())
        else:
            self.killing = asyncio.ensure_future(nbclient.util.ensure_async(self.km.shutdown_kernel(now=True)))

    async def interrupt_until_stopped(self):
        """Interrupt the kernel every second until the run ends: an interrupt that lands while the
        kernel is between two cells, or has not begun the one just sent, is otherwise lost."""
        with contextlib.suppress(Exception):
            while await nbclient.util.ensure_async(self.km.is_alive()):
                await nbclient.util.ensure_async(self.km.interrupt_kernel())
                await asyncio.sleep(1)

    def stop_interrupting(self, notebook):
        if getattr(self, "stopping", None) is not None:
            self.stopping.cancel()

    def stop_if_signalled(self, notebook):
        if self.signum is not None:
            raise Stopped(self.signum)

    def announce(self, cell, cell_index):
        self.stop_if_signalled(self.nb)  # a stop that came between two cells: the next one does not start
        self.cell_index = cell_index
        if (section := fingerprint.section_of(self.nb.cells, cell_index)) != self.section:
            self.section = section
            self.echo(f"-- {section}\n")

    def output(self, outs, msg, display_id, cell_index):
        if msg["msg_type"] == "stream":
            self.echo(msg["content"]["text"])
        return super().output(outs, msg, display_id, cell_index)


def write_notebook(nb, path: Path):
    with atomic_path(path) as tmp:
        nbformat.write(nb, tmp)


def parameters_from(environ) -> dict:  # the settings given as VAE_* variables, paths from where the user stands
    parameters = settings.from_environment(environ)
    for name in settings.PATHS:
        if parameters.get(name):
            parameters[name] = str(Path(parameters[name]).expanduser().resolve())
    return parameters


def execute(parameters: dict, environ=None, echo=None, source="the parameters cell") -> Path:
    """Execute the notebook with these settings; where the executed notebook went. SettingsError before a kernel
    starts; RunFailed (one line) when the notebook fails (a refusal of the settings cell too) or is stopped."""
    echo = echo or to_stdout
    resolved = folders.resolve(parameters, environ={}, claim_folder=False, source=source)
    folder = REPO / resolved.results_dir
    kernel_env = {k: v for k, v in (os.environ if environ is None else environ).items() if not settings.is_variable(k)}
    saved = NOTEBOOK.is_file() and NOTEBOOK.read_bytes()  # read before `prepare`: the spec's run writes over only this
    nb, output, failed_output = prepare(parameters, resolved, folder, kernel_env, echo)
    client = LiveClient(
        nb,
        echo,
        timeout=None,
        kernel_name="python3",  # this environment's own kernel, whatever kernel a saved notebook names
        record_timing=False,
        coalesce_streams=True,  # a progress bar is saved as its last state
        extra_arguments=["--IPKernelApp.log_level=ERROR"],  # not the kernel's start-up warnings
        resources={"metadata": {"path": str(REPO)}},
    )
    with tempfile.TemporaryDirectory() as snapshot:  # the cells it runs, for its record (not an edit saved meanwhile)
        kernel_env["JPY_SESSION_NAME"] = str(Path(snapshot) / NOTEBOOK.name)  # the notebook run, as Jupyter names it
        nbformat.write(nb, kernel_env["JPY_SESSION_NAME"])
        try:
            client.execute(env=kernel_env)
        except (KeyboardInterrupt, Exception) as error:  # noqa: BLE001 -- a cell failed, a stop, or the kernel died
            raise failure(error, client, folder, failed_output) from None
    if output == NOTEBOOK and NOTEBOOK.exists() and NOTEBOOK.read_bytes() != saved:  # an edit saved during the run
        output = SAVED_OVER  # is the user's work, kept: the run's notebook goes beside the runs
        echo(f"the notebook was saved during the run: that edit is kept, and the run's notebook is {output}\n")
    write_notebook(nb, output)
    failed_output.unlink(missing_ok=True)  # a failure (or stop) this run has got past
    return output


def prepare(parameters: dict, resolved, folder: Path, kernel_env: dict, echo) -> tuple:
    """The notebook to execute, without outputs, and where it goes when it finishes and when it fails. Its
    parameters cell must be the declaration, but for the values given. An experiment gets papermill's injected
    parameters; the spec's run keeps the committed cell (machine settings go to `kernel_env` as variables)."""
    given = {k: v for k, v in parameters.items() if k not in ("name", "results_dir")}
    # A value saved in the cell (an experiment in Jupyter) would join the run unseen, its folder named without it.
    if wrong := record.parameters_not_the_spec(given=given):
        raise RunFailed(f"the notebook's parameters cell is not the declaration in harness/settings.py "
                        f"({'; '.join(wrong)}): make them agree (`python3 tasks.py restore` brings back the committed "
                        "cell), and give an experiment's values as VAE_* variables.", EXIT_SETTINGS)  # fmt: skip
    nb = load_notebook_node(str(NOTEBOOK))  # papermill's reader: every cell has its tags
    for cell in nb.cells:  # a failed run must not show the committed run's outputs below the failure
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    if folder != folders.RECORD:
        what = "the spec's run" if settings.is_spec_run(resolved) else f"an experiment ({settings.run_name(resolved)})"
        echo(f"{what}: everything goes to {resolved.results_dir}/\n")
        nb = parameterize_notebook(nb, {**given, "results_dir": str(folder)})
        return nb, folder / NOTEBOOK.name, folder / "failed-run.ipynb"  # a finished run's notebook stays
    echo(f"the spec's run: the notebook in place, results in {resolved.results_dir}/\n")
    kernel_env.update({f"{PREFIX}{name.upper()}": str(value) for name, value in given.items()})
    return nb, NOTEBOOK, FAILED_SPEC_RUN


def failure(error, client, folder: Path, failed_output: Path) -> RunFailed:
    """The one line and exit status of a run that did not finish: refused, stopped, failed in a cell, or its
    kernel died. The executed notebook is kept, except where the settings cell refused (nothing was done)."""
    in_cell, nb = isinstance(error, nbclient.exceptions.CellExecutionError), client.nb
    ename = error.ename if in_cell else None
    if ename == "RunRefused" or (ename == "SettingsError" and client.section == "Settings"):
        return RunFailed(f"{ename}: {error.evalue}", EXIT_SETTINGS, ename)  # the folder is left as it was
    signum = client.signum or getattr(error, "signum", None)
    if signum is None and (ename in ("KeyboardInterrupt", "Stopped") or isinstance(error, KeyboardInterrupt)):
        signum = signal.SIGINT
    kept = keep_failed(nb, failed_output) if in_cell or signum is None else ""
    if signum is not None:
        return stopped(signum, folder)
    if in_cell:
        where = f"code cell [{nb.cells[client.cell_index].execution_count}] ({client.section})"
        return RunFailed(f"{ename}: {error.evalue}\n  in {where}; {kept}", ename=ename)
    return RunFailed(f"the kernel died ({type(error).__name__}: {str(error)[:200]}; killed for memory?); "
                     f"{kept_by(folder)} {kept}")  # fmt: skip


def keep_failed(nb, path: Path) -> str:  # a failed run's notebook: where it is, or why it is not (a full disk)
    try:
        write_notebook(nb, path)
    except OSError as error:
        return f"the executed notebook could not be written ({error})."
    return f"the executed notebook: {path}"


def stopped(signum, folder: Path) -> RunFailed:  # a stop's one line, and its exit status
    return RunFailed(f"stopped ({STOPS[signum]}): the kernel is shut down; {kept_by(folder)}", 128 + signum)


def kept_by(folder: Path) -> str:  # what the run's checkpoint keeps, and the command that goes on
    if not (checkpoint := folder / "checkpoint.pt").exists():
        return "no epoch had finished, so there is no checkpoint."
    try:
        state = files.load_checkpoint(checkpoint)
    except files.CheckpointError as error:
        return str(error)
    if state["epoch"] >= state["settings"]["epochs"]:
        return f"{checkpoint} keeps all {state['epoch']} epochs: run the same command again to evaluate it."
    return f"{checkpoint} keeps epoch {state['epoch']}: run the same command with VAE_RESUME=1 to go on."


def to_stdout(text):  # the terminal's copy of what the notebook prints; a reader gone (`| head`) is no stop
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # the run goes on without output
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main():  # `python3 tasks.py run`: the settings come from the VAE_* environment variables
    for signum in STOPS:  # before the kernel starts, a stop signal ends this process at once, in one line
        signal.signal(signum, raise_stopped if signum != signal.SIGINT else signal.default_int_handler)
    try:
        parameters = parameters_from(os.environ)
        to_stdout(f"done: {execute(parameters, source='VAE_*')}\n")
    except (settings.SettingsError, fingerprint.NotANotebook) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(EXIT_SETTINGS)
    except RunFailed as error:
        say(str(error) if error.code > 128 else f"error: {error}")
        sys.exit(error.code)
    except KeyboardInterrupt as error:
        say(f"{str(error) or 'stopped (Ctrl-C)'} before the kernel started: nothing was written.")
        sys.exit(getattr(error, "code", 130))


def say(line):
    with contextlib.suppress(OSError):  # the terminal is gone (SIGHUP): the exit status still tells
        print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
