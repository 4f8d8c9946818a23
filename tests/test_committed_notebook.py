"""The notebook in git is one clean top-to-bottom run of the spec, in sync with results/ and README,
and reads right where people read it (GitHub, nbviewer: no widgets)."""

import json
import subprocess
import sys

import nbformat
import pytest

from conftest import REPO, run_notebook
from harness import files, record, settings
from harness.folders import RECORD

NOTEBOOK = REPO / "Variational_autoencoder.ipynb"
RESULTS = RECORD


def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells():
    return [c for c in notebook().cells if c.cell_type == "code"]


def committed_metrics():
    return json.loads((RESULTS / "metrics.json").read_text())


def test_the_notebook_is_one_clean_top_to_bottom_run():
    cells = code_cells()
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    errors = [i for i, c in enumerate(cells) for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert all("execution" not in c.metadata for c in cells), "run headless with record_timing=False"


def test_the_committed_run_is_the_spec_run_and_passed_its_check():
    assert settings.is_spec_run(committed_metrics()["settings"]) and committed_metrics()["finished"]
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in notebook().cells)
    last = "".join(o.get("text", "") for o in code_cells()[-1].outputs)
    assert last.strip() == "test loss after 20 epochs is at most 102.0 nats per image"


def test_the_saved_notebook_shows_a_finished_progress_bar_and_no_widgets():
    nb = notebook()
    assert "widgets" not in nb.metadata
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    training = "".join(o.get("text", "") for c in nb.cells if c.get("id") == "train-loop" for o in c.outputs)
    assert "epochs: 100%" in training and " 0%|" not in training and "\r" not in training
    assert training.count("\nepoch ") + training.startswith("epoch ") == 20 and "20 of 20 epochs trained" in training


def test_results_and_readme_come_from_the_committed_run():
    metrics = committed_metrics()
    outputs = json.dumps([o for c in code_cells() for o in c.outputs])
    assert f"final test loss {metrics['test_loss']:.2f} nats per image" in outputs
    assert len(metrics["epochs"]) == metrics["settings"]["epochs"] == 20
    readme = (REPO / "README.md").read_text()
    assert sorted(metrics["figures"]) == sorted(p.name for p in RESULTS.glob("*.png"))
    for figure in metrics["figures"]:
        if figure != "train_digits.png":
            assert f"results/{figure}" in readme, f"README does not show results/{figure}"


@pytest.mark.slow
def test_the_committed_weights_give_the_committed_evaluation(tmp_path, mnist_root):
    """What README promises: load results/vae.pt, evaluate, get README's numbers (within 0.1 nats)."""
    run_notebook({"data_dir": str(mnist_root)}, tmp_path / "run", weights=str(RESULTS / "vae.pt"))
    committed = committed_metrics()["evaluation"]
    reproduced = json.loads((tmp_path / "run" / "metrics.json").read_text())["evaluation"]
    for key in ("test_loss", "test_recon", "test_kl", "elbo", "iw_bound"):
        assert abs(reproduced[key] - committed[key]) <= 0.1, key
    assert reproduced["active_units"] == committed["active_units"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "best",
    [
        "objectives/iwae50",
        "budget/epochs540_burda",
        "burda540/elbo_warmup",
        "burda540/iwae5",
        "dreg540/iwae5_dreg_eps_seed2",
    ],
)
def test_the_committed_weights_of_each_studys_best_run_give_its_committed_test_loss(tmp_path, mnist_root, best):
    """results/studies/<study>/<run>/vae.pt, evaluated again (the k = 5000 bound aside: 9 minutes)."""
    study = RESULTS / "studies" / best
    record = json.loads((study / "metrics.json").read_text())
    seed = record["settings"]["seed"]  # it also draws the binarised test set
    given = {"data_dir": str(mnist_root), "likelihood": "binarized", "iw_samples": 1, "seed": seed}
    run_notebook(given, tmp_path / "run", weights=str(study / "vae.pt"))
    committed = record["evaluation"]
    reproduced = json.loads((tmp_path / "run" / "metrics.json").read_text())["evaluation"]
    for key in ("test_loss", "test_recon", "test_kl", "active_units", "kl_per_dimension"):
        assert reproduced[key] == pytest.approx(committed[key], abs=0.01), key


def test_a_notebook_saved_with_an_experiment_is_named_in_one_line_with_the_commands_that_restore_it(tmp_path):
    nb = notebook()
    (parameters,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = parameters.source.replace("epochs = 20", "epochs = 5")
    code_cell = next(c for c in nb.cells if c.cell_type == "code" and c.get("id") == "train-loop")
    code_cell.execution_count = 75  # a cell run again in Jupyter
    nbformat.write(nb, tmp_path / "Variational_autoencoder.ipynb")
    line = record.not_the_record(tmp_path / "Variational_autoencoder.ipynb")
    assert line.startswith("Variational_autoencoder.ipynb holds an experiment (epochs = 5 instead of 20; outputs not")
    assert "`python3 tasks.py restore`" in line and "`python3 tasks.py run`" in line and "\n" not in line
    assert record.not_the_record() is None  # the committed notebook is the record


def test_a_kernel_without_the_requirements_says_in_its_first_cell_which_kernel_to_choose():
    imports = code_cells()[0].source
    code = f"import sys\nsys.modules['matplotlib'] = None  # not installed\nexec({imports!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "lacks matplotlib" in line and "which requirements.txt installs" in line
    assert "`python3 tasks.py lab`" in line


def test_the_notebook_names_the_kernel_as_jupyter_writes_it_so_opening_it_changes_nothing():
    assert notebook().metadata.kernelspec == {"display_name": "Python 3 (ipykernel)", "language": "python",
                                              "name": "python3"}  # fmt: skip


def test_every_committed_record_is_whole_with_every_setting_of_the_code():
    records = sorted(RECORD.glob("**/metrics.json"))
    assert len(records) >= 26
    for path in records:
        metrics = files.read_metrics(path.parent)  # refuses a missing setting, a wrong type, a missing field
        assert list(metrics["settings"]) == list(settings.SETTINGS), path
        assert metrics["code"] is not None or "migrated" in metrics, path
