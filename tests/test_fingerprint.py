"""harness.fingerprint: a run's code is what its numbers depend on, and nothing else; a change is named."""

import hashlib
import json
import random
import shutil
import subprocess
import sys
import threading
from types import SimpleNamespace

import nbformat
import pytest

from conftest import REPO
from harness import NOTEBOOK, fingerprint, folders


def edited(tmp_path, cell_id, edit, name="edited.ipynb"):
    """A copy of the notebook with one cell's source edited (`edit(source) -> source`)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if c.get("id") == cell_id)
    cell.source = edit(cell.source)
    nbformat.write(nb, tmp_path / name)
    return tmp_path / name


def changed(path, **kw):
    return fingerprint.changes(fingerprint.code_of(), fingerprint.code_of(path, **kw))


def test_comments_docstrings_blank_lines_and_layout_change_nothing_but_code_does():
    code = "def f(x):\n    return x + 1\n"
    same = '# a comment\ndef f(x):\n    """What f does."""\n\n    return x+1  # why\n'
    assert fingerprint.digest(code) == fingerprint.digest(same)
    assert fingerprint.digest(code) != fingerprint.digest(code.replace("+ 1", "+ 2"))
    assert fingerprint.digest('y = f"{a + 1:.2f} b"') == fingerprint.digest('y = f"{a+1:.2f} b"')


def test_an_edited_model_cell_is_named_by_its_section(tmp_path):
    tanh = edited(tmp_path, "vae-class", lambda s: s.replace("nn.ReLU()", "nn.Tanh()"))
    assert changed(tanh) == ["the notebook's 'The model'"]
    step = edited(tmp_path, "train-epoch", lambda s: s.replace("zero_grad(set_to_none=True)", "zero_grad()"))
    assert changed(step) == ["the notebook's 'Training'"]


def test_prose_comments_and_the_parameters_cell_are_not_the_code(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells[0].source += "\n\nA paragraph more."
    nbformat.write(nb, tmp_path / "prose.ipynb")
    assert changed(tmp_path / "prose.ipynb") == []
    assert changed(edited(tmp_path, "vae-class", lambda s: "# why this model\n" + s)) == []
    assert changed(edited(tmp_path, "parameters", lambda s: s.replace("epochs = 20", "epochs = 5"))) == []
    heading = next(c for c in nb.cells if c.source.startswith("## The model"))
    heading.source = heading.source.replace("## The model", "## The encoder and the decoder", 1)
    nbformat.write(nb, tmp_path / "heading.ipynb")  # a section renamed: the same code, named otherwise
    assert changed(tmp_path / "heading.ipynb") == []


def test_an_edited_loss_in_vae_utils_is_named(tmp_path):
    for name in fingerprint.FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    assert changed(NOTEBOOK, root=tmp_path) == []
    source = (tmp_path / "vae_utils.py").read_text()
    (tmp_path / "vae_utils.py").write_text(source.replace("return -0.5 * (1 + log_var", "return -0.4 * (1 + log_var"))
    assert changed(NOTEBOOK, root=tmp_path) == ["vae_utils.py"]


def test_in_a_kernel_a_cell_counts_as_it_was_last_run_and_a_cell_the_file_lacks_counts_too(monkeypatch):
    monkeypatch.setattr(fingerprint, "RAN", {})
    saved = fingerprint.code_of()
    vae_class = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.get("id") == "vae-class")
    fingerprint.remember(SimpleNamespace(cell_id="vae-class", raw_cell=vae_class.source.replace("ReLU", "Tanh")))
    assert fingerprint.changes(saved, fingerprint.code_of()) == ["the notebook's 'The model'"]
    fingerprint.remember(SimpleNamespace(cell_id="vae-class", raw_cell=vae_class.source))  # run again as saved
    fingerprint.remember(SimpleNamespace(cell_id="a-note", raw_cell="# to try next: beta = 4"))  # no code
    fingerprint.remember(SimpleNamespace(cell_id="a-setting", raw_cell="epochs = 3"))  # read by the settings cell
    assert fingerprint.changes(saved, fingerprint.code_of()) == []
    fingerprint.remember(SimpleNamespace(cell_id="scratch", raw_cell="model.fc_mu.weight.data.zero_()"))
    assert fingerprint.changes(saved, fingerprint.code_of()) == ["cells run that the notebook file does not hold"]
    fingerprint.remember(SimpleNamespace(cell_id=None, raw_cell="print(1)"))  # a console: no cell
    assert set(fingerprint.RAN) == {"vae-class", "a-note", "a-setting", "scratch"}
    assert fingerprint.changes(saved, fingerprint.code_of()) == ["cells run that the notebook file does not hold"]


def test_a_kernel_without_cell_ids_that_ran_code_the_notebook_lacks_refuses_to_name_its_code(monkeypatch):
    saved = fingerprint.code_of()
    for cell in nbformat.read(NOTEBOOK, as_version=4).cells:  # papermill, nbconvert or nbval: no ids
        if cell.cell_type == "code":
            fingerprint.remember(SimpleNamespace(cell_id=None, raw_cell=cell.source))
    for note in ("# to try next: beta = 4", "epochs = 3"):  # papermill's injected cell gives settings values
        fingerprint.remember(SimpleNamespace(cell_id=None, raw_cell=note))
    assert fingerprint.changes(saved, fingerprint.code_of()) == []
    fingerprint.remember(SimpleNamespace(cell_id=None, raw_cell="model.fc_mu.weight.data.zero_()"))  # a copy's cell
    with pytest.raises(fingerprint.NotANotebook, match=r"ran code that .* does not hold \('model.fc_mu.weight"):
        fingerprint.code_of()


def test_a_runs_code_counts_each_cell_as_it_ran_and_each_file_as_the_kernel_imported_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "RAN", {})
    for name in fingerprint.FILES:
        shutil.copy(REPO / name, tmp_path / name)
    cells = fingerprint.cells_of(NOTEBOOK)  # read as the run starts
    at_start = fingerprint.code_of(cells=cells, root=tmp_path)
    source = (tmp_path / "vae_utils.py").read_text()
    (tmp_path / "vae_utils.py").write_text(source.replace("return -0.5 * (1 + log_var", "return -0.4 * (1 + log_var"))
    assert fingerprint.changes(at_start, fingerprint.code_of(cells=cells, root=tmp_path, files=at_start)) == []
    loop = next(c for c in cells if c.get("id") == "train-loop")
    fingerprint.remember(SimpleNamespace(cell_id="train-loop", raw_cell="".join(loop["source"]) + "\nrun.epoch += 1"))
    now = fingerprint.code_of(cells=cells, root=tmp_path, files=at_start)
    assert fingerprint.changes(at_start, now) == ["the notebook's 'Training'"]


def test_a_notebook_read_while_jupyter_saves_it_in_place_is_read_again_until_whole(tmp_path, monkeypatch):
    """Jupyter truncates the file, then writes it: a kernel reading it in between finds it empty or cut short."""
    monkeypatch.setattr(fingerprint, "RAN", {})
    whole = NOTEBOOK.read_text()
    being_saved = tmp_path / "Variational_autoencoder.ipynb"
    being_saved.write_text(whole[: len(whole) // 2])
    threading.Timer(0.5, being_saved.write_text, args=(whole,)).start()
    assert fingerprint.code_of(being_saved) == fingerprint.code_of(NOTEBOOK)


def test_a_missing_notebook_is_named_in_one_line_not_taken_for_a_bad_results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "NOTEBOOK", tmp_path / "gone.ipynb")  # deleted, or renamed
    said = r"gone.ipynb cannot be read \(No such file or directory\): `python3 tasks.py restore` brings back"
    with pytest.raises(fingerprint.NotANotebook, match=said):
        folders.resolve({"epochs": 1, "results_dir": str(tmp_path / "run")}, environ={})


def test_a_record_made_before_runs_recorded_their_code_is_other_code():
    assert fingerprint.changes(None, fingerprint.code_of()) == [
        "all of it (the run was made before runs recorded their code)"
    ]


def test_the_committed_record_was_made_by_the_current_code():
    metrics = json.loads((REPO / "results" / "metrics.json").read_text())
    assert fingerprint.changes(metrics["code"], fingerprint.code_of()) == [], "re-run: python3 tasks.py run"


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12's tokenizer refuses NUL bytes: the oracle is 3.10/3.11's")
def test_a_sections_digest_is_what_python_3_11_tokenize_made_of_its_cells_digests():
    rng = random.Random(0)
    cases = [[], ["0b1e0b2"], ["12e34", "00ab", "0e"]]  # binary and float literals, zeros: the tokenizer's odd words
    cases += [["".join(rng.choices("0123456789abcdef", k=12)) for _ in range(rng.randint(1, 6))] for _ in range(3000)]
    for digests in cases:
        assert fingerprint.of_digests(digests) == fingerprint.digest("\0".join(digests)), digests


@pytest.mark.parametrize("fstring", ['f"{{a}} {b}"', 'f"{a}{{"', 'f"{{}}"', 'f"{a!r:>{w}}"', 'rf"\\d{n}"', "f'{x=}'"])
def test_an_f_string_counts_as_its_text_without_spaces_on_every_python(fstring):  # 3.12 splits it into tokens
    words = ["x", "=", fstring.replace(" ", ""), "NEWLINE"]  # the code's words, as `digest` keeps them
    assert fingerprint.digest(f"x = {fstring}") == hashlib.sha256("\0".join(words).encode()).hexdigest()[:12]


def test_an_ipython_shell_line_counts_as_its_words_on_every_python():  # 3.11 tokenized the space before `$` too
    words = ["!", "echo", "$", "HOME", "NEWLINE"]
    assert fingerprint.digest("!echo $HOME") == hashlib.sha256("\0".join(words).encode()).hexdigest()[:12]


def test_vae_utils_imports_nothing_of_the_repo_and_the_notebook_runs_without_fcntl(mnist_root, tmp_path):
    """As on Windows: `fcntl` cannot be imported. The notebook's cells, run in order, as a short run."""
    cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    script = tmp_path / "cells.py"
    script.write_text(
        "import sys\nsys.modules['fcntl'] = None  # import fcntl raises ImportError\nimport vae_utils\n"
        "assert not [m for m in sys.modules if m.startswith('harness')], 'vae_utils imports harness'\n"
        + "\n".join(f"exec({source!r})" for source in cells)
    )
    env = {"VAE_EPOCHS": "1", "VAE_TRAIN_SIZE": "512", "VAE_TEST_SIZE": "64", "VAE_IW_SAMPLES": "2",
           "VAE_DATA_DIR": str(mnist_root), "VAE_RESULTS_DIR": str(tmp_path / "run"), "MPLBACKEND": "Agg",
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}  # fmt: skip
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epoch  1" in done.stdout and json.loads((tmp_path / "run" / "metrics.json").read_text())["finished"]


def test_a_cell_that_computes_a_settings_value_is_code_not_parameters():
    assert fingerprint.is_parameters("epochs = 5\nlr = 1e-3\nname = 'x'")
    assert not fingerprint.is_parameters("seed = model.fc_mu.weight.data.mul_(0.5)")
    assert not fingerprint.is_parameters("epochs = 5\nbeta = float(epochs)")
