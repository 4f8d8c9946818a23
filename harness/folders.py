"""Where a run writes, and what a folder may hold before a run writes into it.

Only the spec's run writes `results/`, the record; a study's run writes its own
`results/studies/NAME/RUN/`; every other run inside the repository writes under `runs/`, and a folder
outside it is the user's. A run writes only into a new or empty folder or its own run's, and never
goes on from a run of other settings. Each rule is a `SettingsError` of one line, before any work.
"""

import os
from pathlib import Path

from harness import REPO, files
from harness.settings import RESUME_MAY_CHANGE, SPEC, SettingsError, differences, is_spec_run, run_name

RECORD = REPO / "results"  # the committed record of the spec run
STUDY_RECORD = RECORD / "studies"  # the committed studies: results/studies/NAME/RUN/
RUNS = REPO / "runs"  # every other run inside the repository, one folder each (ignored by git)


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def results_folder(settings) -> Path:
    """Where a run writes: results/ for the spec's run, runs/<name>/ for any other, or results_dir.

    Decided on the resolved path (symlinks followed): inside the repository a run writes only under
    runs/, or into a study's own results/studies/NAME/RUN/ with that run's settings; only the spec's
    run writes results/. Anything else is refused; a folder outside the repository is the user's.
    """
    from harness.studies import STUDIES

    if settings.results_dir:
        asked, named = Path(settings.results_dir).expanduser(), f"results_dir={settings.results_dir}"
    else:
        spec_record = is_spec_run(settings) and not settings.name
        asked = RECORD if spec_record else RUNS / (settings.name or run_name(settings))
        named = "the spec's run" if spec_record else f"name={settings.name or run_name(settings)}"
    where = (REPO / asked).resolve()
    too_long = [part for part in where.parts if len(part.encode()) > 255]
    if too_long:
        raise SettingsError(f"{named}: the folder name {too_long[0][:40]}... is longer than 255 bytes.")
    study = where.relative_to(STUDY_RECORD).parts if inside(where, STUDY_RECORD) else ()
    planned = STUDIES.get(study[0], {}).get(study[1]) if len(study) == 2 else None
    if (
        not inside(where, REPO)
        or (planned is not None and not differences({**SPEC, **planned}, settings))  # a study's run, its own folder
        or (where == RECORD and is_spec_run(settings))
        or (inside(where, RUNS.resolve()) and where != RUNS.resolve())
    ):
        return where
    raise SettingsError(
        f"{named} is {where}: inside the repository a run writes only under "
        f"runs/ ({'results/ is the record of the spec run' if inside(where, RECORD) else 'the rest is the code'}). "
        f"Leave results_dir empty (this run then goes to runs/{run_name(settings)}/), or choose a folder "
        "under runs/ or outside the repository."
    )


def not_a_runs(folder: Path) -> list:
    """The files of a folder that no run made: a run writes only into a new or empty folder, or a run's own."""
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if folder == RECORD or not names or {".lock", "metrics.json", "checkpoint.pt"} & set(names):
        return []  # results/ is the spec run's; a lock or a record says a run made the folder
    return names


def shown(path: Path) -> str:
    """A path as the user reads it: relative to the repository when inside it."""
    return str(path.relative_to(REPO)) if inside(path, REPO) else str(path)


def writable_folder(path: Path, name: str):
    """SettingsError unless `path` is a folder that exists or can be made, and can be written."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(f"{name}={shown(path)}: {existing} is not a folder. Choose a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(f"{name}={shown(path)}: {existing} is not writable. Choose a folder you can write to.")


def check_folder(settings, folder: Path):
    """Refuse a folder holding another run, or an unfinished run when `resume` is not set."""
    fixed = [name for name in SPEC if name not in RESUME_MAY_CHANGE]
    checkpoint = folder / "checkpoint.pt"
    try:
        previous = files.read_metrics(folder, missing_ok=True)
        state = files.load_checkpoint(checkpoint) if checkpoint.exists() else None
    except (files.UnreadableRun, files.CheckpointError) as error:
        if folder == RECORD:  # the record of the spec run, of older code: the spec's run makes it anew
            return
        raise SettingsError(f"{error} Delete it to start afresh, or choose another name or results_dir.") from None
    for what, saved in ((settings.results_dir, previous), (checkpoint, state)):
        found = differences(saved["settings"], settings, fixed if state else SPEC) if saved else []
        if found:
            raise SettingsError(
                f"{what} holds a run with other settings ({'; '.join(found)}). Choose another name or "
                "results_dir, or delete that folder."
            )
    if state is None:
        return
    if state["epoch"] > settings.epochs:
        raise SettingsError(
            f"{checkpoint} is at epoch {state['epoch']}, past epochs={settings.epochs}; set epochs to at least "
            f"{state['epoch']}, or choose another name."
        )
    if state["epoch"] < settings.epochs and not settings.resume:
        raise SettingsError(
            f"{checkpoint} holds an unfinished run (epoch {state['epoch']} of {settings.epochs}). To continue it "
            "set resume = True in the parameters cell (headless: VAE_RESUME=1); to start afresh delete it or "
            "choose another name."
        )


def choose(settings, claim_folder=True) -> Path:
    """Choose and check the run's folder (`settings.results_dir` becomes it) and data_dir.

    With `claim_folder`, take the folder's lock (one writer per run folder) and check what it holds.
    """
    folder = results_folder(settings)
    settings.results_dir = shown(folder)
    writable_folder(folder, "results_dir")
    foreign = not_a_runs(folder)
    if foreign:
        shown_names = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise SettingsError(
            f"{settings.results_dir} holds files no run made ({shown_names}): a run writes only into a new or "
            "empty folder, or its own. Choose another name or results_dir."
        )
    data = (REPO / settings.data_dir).resolve()
    if inside(data, RECORD):
        raise SettingsError(f"data_dir={settings.data_dir}: MNIST does not go into results/, the record. Choose "
                            "another folder (the default is data/).")  # fmt: skip
    if not (data / "MNIST" / "raw").is_dir():
        writable_folder(data, "data_dir")
    if claim_folder:
        try:
            files.lock_folder(folder)
        except files.FolderInUse as error:
            raise SettingsError(str(error)) from None
        check_folder(settings, folder)
    return folder
