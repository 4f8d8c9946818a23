"""The code a run's numbers depend on: a fingerprint, and an account of its parts a person can read.

The parts are each section of the notebook that holds code (its code cells, less the parameters
cell: the settings are recorded on their own), `vae_utils.py`, and the data loader `mnist.load_mnist`
(how MNIST is fetched and verified changes no number: its files' checksums are fixed).
Only code counts: comments, docstrings, blank lines, the notebook's prose and outputs change nothing.
In a kernel, a cell counts as the kernel last ran it (Jupyter sends each cell's id with its code),
so an edit that was run but not saved counts, and a cell the notebook file does not hold counts too;
a file counts as the kernel imported it (an edit saved since runs only once the kernel imports it again).
"""

import ast
import functools
import hashlib
import inspect
import io
import json
import os
import re
import sys
import time
import tokenize
from pathlib import Path

from harness import NOTEBOOK, REPO, OneLine, mnist
from harness.settings import SETTINGS

FILES = ("vae_utils.py",)
LOADER = "harness/mnist.py: load_mnist"
RAN = {}  # cell id -> the code this kernel last ran for it, in the order first run
UNNAMED = []  # the code it ran without a cell id: every cell of a run by nbclient, papermill or nbval (or a console's)
IMPORTED = {}  # in a kernel: part -> (its digest, its module's functions' code) as the kernel imported the file
NOTED = set()  # (part, digest) of the edits on disk this kernel has said it does not run


def remember(info):
    """IPython's `pre_run_cell` event: note the code of the cell about to run."""
    if getattr(info, "cell_id", None):
        RAN[info.cell_id] = info.raw_cell
    else:
        UNNAMED.append(info.raw_cell)


def kernel_shell():
    """This process's IPython shell (in a kernel), or None."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def watch_kernel():
    """In an IPython kernel, note every cell's code from now on (imported with the notebook's first cell)."""
    shell = kernel_shell()
    if shell is not None and remember not in shell.events.callbacks["pre_run_cell"]:
        shell.events.register("pre_run_cell", remember)
        files_as_run(REPO, at_import=True)  # now, just after the first cell imported them


def files_as_run(root, at_import=False) -> dict:
    """The digests of `vae_utils.py` and the loader. In a kernel (`watch_kernel`), as it imported them: Python
    runs a module as it was read at import, so an edit saved since counts only once the module is imported
    again (a restarted kernel; importlib.reload or %autoreload, which give its functions new code)."""
    parts = {}
    for part, module, path in [*((name, sys.modules.get(Path(name).stem), Path(root) / name) for name in FILES),
                               (LOADER, mnist, Path(mnist.__file__))]:  # fmt: skip
        code = [f.__code__ for f in getattr(module, "__dict__", {}).values() if inspect.isfunction(f)]
        kept, ran = IMPORTED.get(part, (None, []))
        if kept and [*map(id, ran)] == [*map(id, code)] and Path(module.__file__).resolve() == path.resolve():
            now = digest(path.read_text(encoding="utf-8")) if part in FILES and path.is_file() else kept  # as saved now
            if now != kept and (part, now) not in NOTED:
                NOTED.add((part, now))
                print(f"note: {part} was saved after this kernel imported it, so the kernel runs (and a record names) "
                      "the code it imported: restart the kernel to run the edit.")  # fmt: skip
            parts[part] = kept
            continue
        parts[part] = digest(
            inspect.getsource(mnist.load_mnist) if part == LOADER else path.read_text(encoding="utf-8")
        )
        if code and (at_import or part in IMPORTED):  # (imported again: as it is now)
            IMPORTED[part] = (parts[part], code)
    return parts


@functools.lru_cache(maxsize=4096)  # each epoch's check digests every cell again: the same texts
def digest(code: str) -> str:
    """The code's tokens, hashed: without comments, docstrings and layout (and alike on every Python)."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type not in SKIPPED
                  and not (t.type == tokenize.ERRORTOKEN and t.string.isspace())]  # 3.11's space before $  # fmt: skip
    except (tokenize.TokenError, SyntaxError):  # not Python (a magic): the text itself
        return hashlib.sha256(code.strip().encode()).hexdigest()[:12]
    words, fstring, depth, docstring = [], [], 0, False
    for i, t in enumerate(tokens):
        if docstring:  # the end of the docstring's line
            docstring = False
            continue
        depth += t.type == FSTRING_START
        if depth:  # Python 3.12 splits an f-string into tokens: join them as 3.11 keeps it
            fstring.append(t.string.replace("{", "{{").replace("}", "}}") if t.type == FSTRING_MIDDLE else t.string)
            depth -= t.type == FSTRING_END
            if not depth:
                words.append("".join(fstring).replace(" ", ""))
                fstring = []
            continue
        before = tokens[i - 1].type if i else tokenize.NEWLINE
        after = tokens[i + 1].type if i + 1 < len(tokens) else tokenize.NEWLINE
        if t.type == tokenize.STRING and before in LAYOUT and after == tokenize.NEWLINE:
            docstring = True  # a docstring, or a string alone as a statement: it does nothing
            continue
        if t.type in LAYOUT:
            words.append(tokenize.tok_name[t.type])
        elif t.type == tokenize.STRING and "f" in re.match(r"[A-Za-z]*", t.string).group().lower():
            words.append(t.string.replace(" ", ""))
        else:
            words.append(t.string)
    return hashlib.sha256("\0".join(words).encode()).hexdigest()[:12]


def of_digests(digests) -> str:
    """One digest of several (a section's cells'): the `digest` of them joined by NUL bytes as Python 3.10 and 3.11
    tokenize that text (names, numbers, error tokens: `HEX_WORDS`), which every record holds; 3.12 refuses NULs."""
    text = "\0".join(digests)
    return hashlib.sha256("\0".join(HEX_WORDS.findall(text) + ["NEWLINE"] * bool(text)).encode()).hexdigest()[:12]


HEX_WORDS = re.compile(r"\x00|[a-f]\w*|[0-9]+e[0-9]+|0b[01]+|0+|[1-9][0-9]*")  # first match wins, as in tokenize
SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
LAYOUT = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
FSTRING_START, FSTRING_END = getattr(tokenize, "FSTRING_START", -1), getattr(tokenize, "FSTRING_END", -1)
FSTRING_MIDDLE = getattr(tokenize, "FSTRING_MIDDLE", -1)  # 3.12 gives its {{ as {, and }} as }


def is_parameters(code: str) -> bool:
    """The parameters cell (or papermill's injected one): only settings given plain values (`epochs = 5`).

    A cell that computes a value (`seed = model.fc_mu.weight.data.mul_(0.5)`) is code, whatever its names.
    """
    try:
        body = ast.parse(code).body
        return all(
            isinstance(s, ast.Assign) and getattr(s.targets[0], "id", None) in SETTINGS and literal(s.value)
            for s in body
        )
    except SyntaxError:
        return False


def literal(node) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError):
        return False
    return True


def notebook_in_use() -> Path:
    """The notebook this kernel runs: Jupyter names it in JPY_SESSION_NAME (headless: a copy of the cells it runs)."""
    named = os.environ.get("JPY_SESSION_NAME", "")
    return Path(named) if named.endswith(".ipynb") and Path(named).is_file() else NOTEBOOK


class NotANotebook(OneLine, ValueError):
    """The notebook file is not a whole notebook (a merge conflict, or a save cut short), or not the one run."""


def cells_of(path, seconds=10.0) -> list:
    """A notebook's cells. Jupyter saves a notebook by writing the file in place (its "atomic" writing keeps a
    copy to put back on failure), so a kernel that reads it while Run All saves can find it empty or cut
    short: read it again until it is whole, for `seconds`; then NotANotebook."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return json.loads(Path(path).read_bytes())["cells"]
        except OSError as error:  # gone or unreadable: reading again mends nothing
            raise NotANotebook(f"{path} cannot be read ({error.strerror or error}): `python3 tasks.py restore` "
                               "brings back the committed one.") from None  # fmt: skip
        except (ValueError, KeyError, TypeError) as error:  # not JSON, not UTF-8, not a notebook
            if time.monotonic() > deadline:
                raise NotANotebook(f"{path} is not a whole notebook ({type(error).__name__}: {error}): a merge "
                                   "conflict, or a save cut short? `python3 tasks.py restore` brings back the "
                                   "committed one.") from None  # fmt: skip
            time.sleep(0.05)


def heading(cell) -> str | None:
    """A markdown cell's section heading (its first line, without the #s), or None."""
    source = "".join(cell["source"])  # a list of lines in the file, one text in nbformat
    is_heading = cell["cell_type"] == "markdown" and source[:1] == "#"
    return source.splitlines()[0].lstrip("# ").strip() if is_heading else None


def section_of(cells, index) -> str:
    """The section of the cell at `index`: the last heading at or before it."""
    return ([h for cell in cells[: index + 1] if (h := heading(cell))] or ["start"])[-1]


def code_of(notebook=None, root=REPO, cells=None, files=None) -> dict:
    """The run's code: `{"fingerprint": ..., "parts": {part: digest}}`; the files are read under `root`.

    A run started earlier passes the notebook's `cells` as it read them then, and its code then as `files`:
    a cell run since counts as it ran, a file as the kernel imported it (an edit on disk changes neither).
    """
    cells, known = cells or cells_of(notebook or notebook_in_use()), set()
    held = {digest("".join(cell["source"])) for cell in cells if cell["cell_type"] == "code"}
    if not RAN and (ran := [c for c in UNNAMED if not is_parameters(c) and digest(c) not in held]):  # no cell ids
        raise NotANotebook(f"this kernel ran code that {notebook or notebook_in_use()} does not hold "
                           f"({ran[0][:60]!r}), so a record would name the wrong code: run the notebook itself (once "
                           "saved, in a fresh kernel), or name the one run in JPY_SESSION_NAME.")  # fmt: skip
    sections = {}
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            known.add(cell.get("id"))
            code = RAN.get(cell.get("id"), "".join(cell["source"]))
            sections.setdefault(f"the notebook's {section_of(cells, index)!r}", []).append(code)
    extra = [code for cell_id, code in RAN.items() if cell_id not in known and not is_parameters(code)]
    if extra:
        sections["cells run that the notebook file does not hold"] = extra
    parts = {
        part: of_digests(digest(code) for code in codes if not is_parameters(code)) for part, codes in sections.items()
    }
    parts.update({name: files["parts"][name] for name in (*FILES, LOADER)} if files else files_as_run(root))
    fingerprint = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return {"fingerprint": fingerprint, "parts": parts}


def changes(saved, current) -> list:
    """The parts of the code that differ between a saved run's code and `current`."""
    if not isinstance(saved, dict) or not isinstance(saved.get("parts"), dict):
        return ["all of it (the run was made before runs recorded their code)"]
    if [*saved["parts"].values()] == [*current["parts"].values()]:  # the same code, its sections' headings renamed
        return []
    names = list(current["parts"]) + [p for p in saved["parts"] if p not in current["parts"]]
    return [p for p in names if saved["parts"].get(p) != current["parts"].get(p)]
