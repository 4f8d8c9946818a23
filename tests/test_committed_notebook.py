"""The notebook in git must be one clean top-to-bottom run, in sync with results/ and README."""

import json

import nbformat

from conftest import REPO

NOTEBOOK = REPO / "Variational_autoencoder.ipynb"


def code_cells():
    return [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]


def test_the_notebook_is_one_clean_top_to_bottom_run():
    cells = code_cells()
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    errors = [i for i, c in enumerate(cells) for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert all("execution" not in c.metadata for c in cells), "run headless with record_timing=False"


def test_the_committed_run_is_the_spec_run_and_passed_its_check():
    cells = code_cells()
    last = "".join(o.get("text", "") for o in cells[-1].outputs)
    assert last.strip() == "test loss after 20 epochs is at most 101.0 nats per image"


def test_results_and_readme_come_from_the_committed_run():
    metrics = json.loads((REPO / "results" / "metrics.json").read_text())
    outputs = json.dumps([o for c in code_cells() for o in c.outputs])
    assert f"final test loss {metrics['test_loss']:.2f} nats per image" in outputs
    assert len(metrics["epochs"]) == metrics["settings"]["epochs"] == 20
    readme = (REPO / "README.md").read_text()
    for number in (metrics["test_loss"], metrics["evaluation"]["iw_bound"], metrics["evaluation"]["elbo"]):
        assert f"{number:.2f}" in readme, f"README.md does not show {number:.2f} from results/metrics.json"
    for figure in ("samples.png", "loss_curves.png", "reconstructions.png", "latent_space.png", "interpolation.png"):
        assert (REPO / "results" / figure).is_file() and f"results/{figure}" in readme
