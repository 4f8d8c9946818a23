"""Is the notebook in the working tree the record, one clean top-to-bottom spec run? One line if not.

    python -m harness.record      # `python3 tasks.py test` asks this first; exit 1 with the line if not

Saving in Jupyter writes whatever the notebook holds into the tracked file: edited settings, the
outputs of cells run in any order. That is an experiment, not the record, and the committed-notebook
tests would fail on it; this says so in one line, with the two commands that put the record back.
"""

import ast
import sys

from harness import NOTEBOOK
from harness.fingerprint import NotANotebook, cells_of
from harness.settings import SPEC


def parameters_not_the_spec(path=NOTEBOOK, given=()) -> list:
    """`name = X instead of Y` for each setting the notebook's parameters cells give another value than the spec
    (but those `given`, whose values a run passes itself)."""
    found = []
    for cell in cells_of(path, seconds=0):
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            try:
                for statement in ast.parse("".join(cell["source"])).body:
                    name, value = statement.targets[0].id, ast.literal_eval(statement.value)
                    if name in SPEC and name not in given and value != SPEC[name]:
                        found.append(f"{name} = {value!r} instead of {SPEC[name]!r}")
            except (SyntaxError, ValueError, AttributeError, IndexError):
                found.append("a parameters cell that is not plain assignments of values")
    return found


def not_the_record(path=NOTEBOOK) -> str | None:
    """Why the notebook at `path` is not one clean spec run, or None when it is."""
    try:
        cells, found = [c for c in cells_of(path, seconds=0) if c["cell_type"] == "code"], parameters_not_the_spec(path)
    except NotANotebook as error:
        return str(error)
    counts = [c.get("execution_count") for c in cells]
    errors = any(o.get("output_type") == "error" for c in cells for o in c.get("outputs", []))
    if counts != list(range(1, len(cells) + 1)) or errors:
        found.append("outputs not from one clean top-to-bottom run" + (" (an error among them)" if errors else ""))
    if not found:
        return None
    return (
        f"{path.name} holds an experiment ({'; '.join(found)}), not the record: `python3 tasks.py restore` "
        "brings back the committed notebook, `python3 tasks.py run` re-makes the record from the code."
    )


if __name__ == "__main__":
    line = not_the_record()
    if line:
        sys.exit(f"error: {line}")
