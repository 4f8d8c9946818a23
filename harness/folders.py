"""Where a run writes, and what a folder may hold before a run writes into it; `resolve`, the settings cell.

Only the spec's run writes `results/`, the record of the current code (and only on a machine like
the one that made it: elsewhere it goes to `runs/spec-<cpu>-<N>-threads/`); a study's run writes its own
`results/studies/NAME/RUN/`; every other run inside the repository writes under `runs/`, and a
folder outside it is the user's. A run writes only into a new or empty folder or its own run's
(its settings, its code, its weights), and never goes on from another. Each rule is a
`SettingsError` of one line, before any work.
"""

import hashlib
import re
from pathlib import Path

from harness import REPO, files, fingerprint
from harness.plans import STUDIES
from harness.provenance import described, machine
from harness.settings import (
    RESUME_MAY_CHANGE,
    SPEC,
    SettingsError,
    differences,
    is_spec_run,
    pick_device,
    read,
    run_name,
    shown,
)

RECORD = REPO / "results"  # the committed record of the spec run
STUDY_RECORD = RECORD / "studies"  # the committed studies: results/studies/NAME/RUN/
RUNS = REPO / "runs"  # every other run inside the repository, one folder each (ignored by git)
CELL = {}  # a kernel's settings cell as it last claimed a folder: its settings, and the namespace and values it read


def resolve(parameters=None, environ=None, claim_folder=True, source="the parameters cell"):
    """The settings cell: the settings read and checked (`settings.read`), the weights checked whole,
    and the run's folder chosen (`results_dir` becomes it) and, with `claim_folder`, locked and checked."""
    s = read(parameters, environ, source)
    if s.weights:
        try:  # whole and finite, before the data is loaded or a folder made
            mu = files.load_weights(REPO / s.weights).get("fc_mu.bias")  # the VAE's mean head: latent_dim outputs
        except files.CheckpointError as error:
            raise SettingsError(str(error)) from None
        if mu is not None and mu.shape != (s.latent_dim,):
            size = len(mu) if mu.dim() == 1 else tuple(mu.shape)  # a VAE's mean head has latent_dim outputs
            raise SettingsError(f"weights={s.weights} hold a model of latent_dim={size}: set latent_dim to that.")
    try:  # the system's own words where a folder cannot be: not writable, a name too long, not a folder
        folder = results_folder(s)
        s.results_dir = shown(folder)
        foreign = not_a_runs(folder)
        if foreign:
            names = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
            raise SettingsError(
                f"{s.results_dir} holds files no run made ({names}): a run writes only into a new or "
                "empty folder, or its own. Choose another name or results_dir."
            )
        data = (REPO / s.data_dir).resolve()
        if data.is_relative_to(REPO) and not (data.is_relative_to(REPO / "data") or data.is_relative_to(RUNS)):
            raise SettingsError(f"data_dir={s.data_dir}: inside the repository MNIST goes only under data/ (the "
                                "default) or runs/, ignored by git: choose those, or a folder outside.")  # fmt: skip
        raw = REPO / s.data_dir / "MNIST" / "raw"
        blocking = next((p for p in (raw, *raw.parents) if p.exists()), raw)  # the nearest that exists: a folder?
        if not blocking.is_dir():
            raise SettingsError(f"data_dir={s.data_dir}: {blocking} is a file, so MNIST/raw cannot be made there. "
                                "Choose a folder that holds, or can hold, MNIST/raw.")  # fmt: skip
        if claim_folder:  # the folder this kernel's run holds is given up only once the new one is checked
            new, held = folder.resolve(), set(files.HELD)
            files.lock_folder(new)
            try:
                check_folder(s, folder)
            except SettingsError:
                files.release_folders(keep=held)  # refused: what was held before stays held, and only that
                raise
            files.release_folders(keep=[new])
            namespace = parameters or {}
            CELL.update(settings=dict(vars(s)), namespace=namespace, values={k: namespace.get(k) for k in vars(s)})
    except files.FolderInUse as error:
        raise SettingsError(str(error)) from None
    except OSError as error:
        raise SettingsError(f"results_dir={s.results_dir or error.filename}: {error.strerror or error}.") from None
    return s


def claimed_since(settings) -> list:
    """`name = value` for each setting the settings cell has claimed another value of since `settings` were read."""
    claimed = CELL.get("settings", {})
    return [f"{k} = {claimed[k]!r}" for k, v in vars(settings).items() if claimed.get(k, v) != v]


def assigned_since() -> list:
    """`name = value` for each setting a cell (the parameters cell run again alone) has set since the settings cell
    read it: the cells below still run the settings it checked."""
    now, then = CELL.get("namespace", {}), CELL.get("values", {})
    return [f"{k} = {now.get(k)!r}" for k, v in then.items() if not same(now.get(k), v)]


def same(a, b) -> bool:  # a cell may put anything in a setting's name (a tensor): unequal unless plainly equal
    try:
        return bool(a == b)  # 1 for 1.0 is no change: the settings cell reads either as beta = 1.0
    except Exception:  # noqa: BLE001
        return False


def results_folder(settings) -> Path:
    """Where a run writes: results/ for the spec's run, runs/<name>/ for any other, or results_dir.

    Decided on the resolved path (symlinks followed): inside the repository a run writes only under
    runs/, or into a study's own results/studies/NAME/RUN/ with that run's settings; only the spec's
    run writes results/. Anything else is refused; a folder outside the repository is the user's.
    """
    if settings.results_dir:
        asked, named = Path(settings.results_dir), f"results_dir={settings.results_dir}"
    else:
        spec_record = is_spec_run(settings) and not settings.name
        asked = RECORD if spec_record else RUNS / (settings.name or run_name(settings))
        named = "the spec's run" if spec_record else f"name={settings.name or run_name(settings)}"
    where = (REPO / asked).resolve()
    if where == RECORD and is_spec_run(settings):  # results/ by default, by name or through a link
        where = record_or_elsewhere(settings)
    study = where.relative_to(STUDY_RECORD).parts if where.is_relative_to(STUDY_RECORD) else ()
    planned = STUDIES.get(study[0], {}).get(study[1]) if len(study) == 2 else None
    if (
        not where.is_relative_to(REPO)
        or (planned is not None and not differences({**SPEC, **planned}, settings))  # a study's run, its own folder
        or (where == RECORD and is_spec_run(settings))
        or (where.is_relative_to(RUNS.resolve()) and where != RUNS.resolve())
    ):
        return where
    said = named if settings.results_dir == str(where) else f"{named} is {where}"  # and where it leads: `..`, a link
    raise SettingsError(
        f"{said}: inside the repository a run writes only under runs/ "
        f"({'results/ is the record of the spec run' if where.is_relative_to(RECORD) else 'the rest is the code'}). "
        f"Leave results_dir empty (this run then goes to runs/{run_name(settings)}/), or choose a folder "
        "under runs/ or outside the repository."
    )


def record_or_elsewhere(settings):
    """results/, unless it holds this code's (and spec's) run made on another machine: then `runs/spec-<machine>/`.

    The last digits of a run differ between CPUs (their kernels round differently), thread counts and devices:
    the record stays the machine's that made it, and the same command on another machine is not a change to it.
    """
    try:
        record = files.read_metrics(RECORD)
    except files.UnreadableRun:
        return RECORD
    made, here = record["provenance"], machine(pick_device(settings.device))
    same = all(made.get(key, value) == value for key, value in here.items())  # a fact it lacks: none known to differ
    if same or another_spec(record, settings, RECORD) or fingerprint.changes(record["code"], fingerprint.code_of()):
        return RECORD
    folder = RUNS / ("spec-" + re.sub(r"[^\w.-]+", "-", described(here)).strip("-")[:80])
    print(f"results/ holds this code's spec run from another machine ({described(made)}); "
          f"this one ({described(here)}) goes to {shown(folder)}/")  # fmt: skip
    return folder


def not_a_runs(folder: Path) -> list:
    """The files of a folder that no run made: a run writes only into a new or empty folder, or a run's own."""
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if folder == RECORD or not names or {".lock", "metrics.json", "checkpoint.pt"} & set(names):
        return []  # results/ is the spec run's; a lock or a record says a run made the folder
    return names


def other_code(saved, code, folder: Path, resume: bool) -> str | None:
    """Why `folder`'s saved run (a record or checkpoint) may not be continued or kept by a run of `code`, or None.

    In results/ (the record of the current code) the spec's run starts afresh over another code's run.
    """
    changed = fingerprint.changes(saved.get("code"), code) if saved else []
    if not changed or (folder == RECORD and not resume):
        return None
    held = f"{shown(folder)}/ holds a run of other code (changed: {'; '.join(changed)})"
    if folder == RECORD:  # with resume; deleting results/ would delete the committed studies too
        return f"{held}. Unset resume: the spec's run then makes results/ anew."
    return (f"{held}: it is kept. Give this run another folder (name = '...', headless VAE_NAME=...), or delete "
            f"{shown(folder)}/ to train this code there.")  # fmt: skip


def another_spec(saved, settings, folder: Path) -> list:
    """`name: X there, Y now` where results/ holds the record of another spec (a default changed since): the spec's
    run makes it anew, as over another code's. Empty for any other folder, with resume, or for this spec's run."""
    return differences(saved["settings"], settings) if saved and folder == RECORD and not settings.resume else []


def digest(path) -> str:
    return hashlib.sha256(Path(REPO / path).read_bytes()).hexdigest()[:16]


def check_folder(settings, folder: Path):
    """Refuse a folder holding another run (settings, code, weights), or an unfinished one without `resume`."""
    checkpoint = folder / "checkpoint.pt"
    try:
        previous = files.read_metrics(folder, missing_ok=True)
        state = files.load_checkpoint(checkpoint) if checkpoint.exists() else None
    except (files.UnreadableRun, files.CheckpointError) as error:
        if folder == RECORD:  # the record of the spec run, of older code: the spec's run makes it anew
            return
        raise SettingsError(f"{error} Delete it to start afresh, or choose another name or results_dir.") from None
    if previous and previous["finished"] and folder.is_relative_to(STUDY_RECORD):  # only a study adds to a study
        raise SettingsError(f"{shown(folder)} holds a finished run of a committed study: it is kept (its study keeps "
                            "it too). Choose another name or results_dir.")  # fmt: skip
    # results/ holding the record (or checkpoint) of the spec as it was: the spec's run makes it anew
    previous, state = (None if another_spec(saved, settings, folder) else saved for saved in (previous, state))
    code = fingerprint.code_of()
    may_change = RESUME_MAY_CHANGE if settings.resume or not previous else {"epochs"}  # an evaluation stays as it is
    fixed = [name for name in SPEC if name not in may_change]
    for what, saved in ((shown(folder), previous), (checkpoint, state)):
        found = differences(saved["settings"], settings, fixed if state else SPEC) if saved else []
        if found:
            resume = "" if settings.resume else " (or set resume to change them)"
            advice = f"Choose another name or results_dir, or delete that folder{resume}"
            if folder == RECORD:  # with resume: results/ holds the record of another spec, and the studies
                advice = "Unset resume: the spec's run then makes results/ anew"
            raise SettingsError(f"{what} holds a run with other settings ({'; '.join(found)}). {advice}.")
        refused = other_code(saved, code, folder, settings.resume)
        if refused:
            raise SettingsError(refused)
    if settings.weights and previous and previous.get("weights_from", {}).get("sha256") != digest(settings.weights):
        raise SettingsError(
            f"{shown(folder)} holds the evaluation of other weights than {settings.weights} holds now: it is kept. "
            "Choose another name or results_dir."
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


def weights_code(path, code) -> dict:
    """Which code made the weights in `path`, from the metrics.json beside them, for the record."""
    sha256 = digest(path)
    try:
        saved = files.read_metrics((REPO / path).parent).get("code")
    except files.UnreadableRun:
        return {"code": None, "sha256": sha256, "said": "their code is unknown: no metrics.json of a run beside them"}
    changed = fingerprint.changes(saved, code)
    said = f"made by other code: {'; '.join(changed)} changed" if changed else "made by this code"
    return {"code": saved, "sha256": sha256, "said": said}
