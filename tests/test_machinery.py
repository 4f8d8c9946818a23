"""The machinery's shape: modules in layers, each setting declared once and read, a new setting that
edits no committed record, and the spec's run on a machine other than the record's kept out of results/."""

import ast
import json
import subprocess
import sys

import nbformat
import torch

from conftest import REPO, tracked_copy, without_settings
from harness import NOTEBOOK, files, fingerprint, folders, settings

# The layers, from the bottom: each module imports only modules before it (harness/__init__.py says the same).
LAYERS = ["settings", "plans", "mnist", "files", "fingerprint", "provenance", "folders", "run", "record", "headless",
          "summaries", "tables", "cluster", "studies"]  # fmt: skip


def imported_modules(path) -> set:
    """The harness modules a file imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
            found |= {node.module.removeprefix("harness.")} if "." in node.module else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("harness.") for a in node.names if a.name.startswith("harness.")}
    return found & set(LAYERS)


def test_every_module_imports_only_the_layers_below_it_and_none_exceeds_250_lines():
    modules = sorted(p.stem for p in (REPO / "harness").glob("*.py") if p.stem != "__init__")
    assert sorted(LAYERS) == modules, "a new module takes its place in LAYERS and harness/__init__.py"
    for position, name in enumerate(LAYERS):
        path = REPO / "harness" / f"{name}.py"
        above = imported_modules(path) - set(LAYERS[:position])
        assert not above, f"harness/{name}.py imports {sorted(above)}, which are not below it"
        assert len(path.read_text().splitlines()) <= 250, f"harness/{name}.py has more than 250 lines"
    assert imported_modules(REPO / "harness" / "__init__.py") == set()
    assert imported_modules(REPO / "tasks.py") == set()  # it runs before the virtual environment exists


def notebook_code() -> str:
    nb = nbformat.read(REPO / "Variational_autoencoder.ipynb", as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_the_parameters_cell_is_the_declaration_name_for_name_and_value_for_value():
    nb = nbformat.read(REPO / "Variational_autoencoder.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assigned = {s.targets[0].id: ast.literal_eval(s.value) for s in ast.parse(cell.source).body}
    assert list(assigned) == list(settings.SETTINGS)
    assert assigned == {name: s.default for name, s in settings.SETTINGS.items()}


def test_every_declared_setting_is_read_by_some_code():
    read = set()
    for source in [notebook_code(), *(p.read_text() for p in (REPO / "harness").glob("*.py"))]:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) in ("settings", "s"):
                read.add(node.attr)
    unread = [name for name in settings.SETTINGS if name not in read]
    assert unread == [], f"declared but read by no code (settings.NAME): {unread}"


READ_EVERYTHING = """
import json, sys
from harness import files, folders, tables
records = {str(p.relative_to(folders.REPO)): files.read_metrics(p.parent)
           for p in sorted(folders.RECORD.glob("**/metrics.json"))}
made = {name: text for name, text in tables.readme_tables().items() if name != "settings"}
print(json.dumps({"records": {k: {**m, "settings": {n: m["settings"][n] for n in sys.argv[1:]}}
                              for k, m in records.items()}, "tables": made}, sort_keys=True))
"""


def test_a_new_setting_with_a_default_edits_no_record_and_changes_no_table(tmp_path):
    copy = tracked_copy(tmp_path)
    declared = copy / "harness" / "settings.py"
    text = declared.read_text()
    line = '    "warmup_lr": Setting(0, "epochs of a linear learning-rate warm-up", 0, words="a whole number >= 0"),\n'
    declared.write_text(text.replace('    "lr_schedule": Setting(', line + '    "lr_schedule": Setting(', 1))
    names = [n for n in settings.SETTINGS if n not in ("results_dir",)]  # where a record is: its own folder
    seen = {}
    for where in (REPO, copy):
        done = subprocess.run([sys.executable, "-c", READ_EVERYTHING, *names], cwd=where, capture_output=True,
                              text=True, timeout=300, env={"PATH": "/bin", "PYTHONPATH": str(where)})  # fmt: skip
        assert done.returncode == 0, done.stderr
        seen[where] = json.loads(done.stdout)
    assert seen[copy] == seen[REPO]  # every record read, every table made, as before
    status = subprocess.run(["git", "status", "--porcelain"], cwd=copy, capture_output=True, text=True).stdout
    assert status.split() == ["M", "harness/settings.py"]  # and no committed record was touched


def test_the_spec_run_on_another_cpu_than_the_records_goes_to_runs_and_says_so(monkeypatch, capsys, tmp_path):
    record = files.read_metrics(folders.RECORD)
    assert not fingerprint.changes(record["code"], fingerprint.code_of()), "results/ is not this code's run"
    made = {key: record["provenance"][key] for key in ("device", "cpu", "threads")}
    monkeypatch.setattr(folders, "machine", lambda device: made)  # the record's own machine
    assert folders.resolve(None, {}, claim_folder=False).results_dir == "results"
    monkeypatch.setattr(folders, "machine", lambda device: {**made, "cpu": "Another CPU @ 3.0GHz", "threads": 4})
    capsys.readouterr()
    assert folders.resolve(None, {}, claim_folder=False).results_dir == "runs/spec-Another-CPU-3.0GHz-4-threads"
    said = capsys.readouterr().out
    record_machine = f"{made['cpu']}, {made['threads']} threads"
    assert said == (f"results/ holds this code's spec run from another machine ({record_machine}); this one "
                    "(Another CPU @ 3.0GHz, 4 threads) goes to runs/spec-Another-CPU-3.0GHz-4-threads/\n")  # fmt: skip
    (tmp_path / "to-results").symlink_to(folders.RECORD)
    for named in ("results", "runs/../results", str(folders.RECORD), str(tmp_path / "to-results")):  # asked for
        spec = folders.resolve(None, {"VAE_RESULTS_DIR": named}, claim_folder=False)
        assert spec.results_dir == "runs/spec-Another-CPU-3.0GHz-4-threads", named
    assert folders.resolve(None, {"VAE_EPOCHS": "2"}, claim_folder=False).results_dir == "runs/epochs=2"
    old_spec = {**record, "settings": {**record["settings"], "iw_samples": 100}}  # made before a default changed
    read_metrics = files.read_metrics
    monkeypatch.setattr(files, "read_metrics", lambda folder, **kw: old_spec)  # results/: not today's spec's run
    assert folders.resolve(None, {}, claim_folder=False).results_dir == "results"  # so made anew on any machine
    monkeypatch.setattr(files, "read_metrics", read_metrics)
    monkeypatch.setattr(folders, "machine", lambda device: {**made, "device": str(device)})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # device auto picks a GPU: other digits again
    assert folders.resolve(None, {}, claim_folder=False).results_dir.endswith(f"-{made['threads']}-threads-cuda")


def test_the_spec_run_with_more_threads_than_the_records_does_not_write_results():  # as a machine of more cores
    threads = files.read_metrics(folders.RECORD)["provenance"]["threads"] + 6  # 8 and 2 threads give 100.42, 100.55
    code = f"import torch; torch.set_num_threads({threads}); from harness import folders; print(folders.resolve("
    code += "None, {}, claim_folder=False).results_dir)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**without_settings(), "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    said, folder = done.stdout.splitlines()
    assert folder.startswith("runs/spec-") and folder.endswith(f"-{threads}-threads"), done.stdout
    assert said.endswith(f"{threads} threads) goes to {folder}/"), said


def test_the_harness_reads_and_writes_text_as_utf_8_whatever_the_platforms_default(tmp_path):  # Windows: cp1252
    code = f"""
import warnings
from harness import files, fingerprint, keep_language_info, record, tables
with warnings.catch_warnings(record=True) as caught:  # each text file opened without an encoding warns
    warnings.simplefilter("always", EncodingWarning)
    fingerprint.code_of(), record.not_the_record(), tables.readme_tables()
    files.write_text({str(tmp_path / "written.md")!r}, "± μ")
    keep_language_info({{"content": {{"metadata": {{}}}}}}, "{NOTEBOOK.name}", type("", (), {{"root_dir": "."}}))
print(sorted({{f"{{w.filename}}:{{w.lineno}}" for w in caught if "/harness/" in w.filename}}))
"""
    env = {**without_settings(), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-X", "warn_default_encoding", "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
    assert (tmp_path / "written.md").read_bytes() == "± μ".encode()
