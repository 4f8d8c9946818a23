"""studies: the runner continues where it stopped, names a failing run, and README's tables are
generated from the committed metrics.json files."""

import json
import statistics

import pytest

import run_support
import studies
from conftest import QUICK, REPO

SMALL = {"epochs": 1, "train_size": int(QUICK["VAE_TRAIN_SIZE"]), "test_size": 256, "iw_samples": 2}
TWO_RUNS = {"seed0": {"seed": 0, **SMALL}, "seed1": {"seed": 1, **SMALL}}


@pytest.mark.slow
def test_the_runner_runs_each_run_once_continues_and_names_a_failing_run(quick_env, tmp_path):
    said = []
    studies.run_study("tiny", TWO_RUNS, tmp_path, quick_env, echo=said.append)
    for run in TWO_RUNS:
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["settings"]["seed"] == TWO_RUNS[run]["seed"] and len(metrics["epochs"]) == 1
    assert (tmp_path / "summary.md").is_file() and set(json.loads((tmp_path / "timings.json").read_text())) == {
        "seed0",
        "seed1",
    }

    made = {run: (tmp_path / run / "metrics.json").stat().st_mtime_ns for run in TWO_RUNS}
    said.clear()
    studies.run_study("tiny", TWO_RUNS, tmp_path, quick_env, echo=said.append)
    assert said == ["[1/2] tiny/seed0: done already, kept", "[2/2] tiny/seed1: done already, kept"]
    assert made == {run: (tmp_path / run / "metrics.json").stat().st_mtime_ns for run in TWO_RUNS}

    (tmp_path / "seed1" / "metrics.json").unlink()  # as if interrupted: a checkpoint, no metrics
    said.clear()
    studies.run_study("tiny", TWO_RUNS, tmp_path, quick_env, echo=said.append)
    assert said[0] == "[1/2] tiny/seed0: done already, kept" and said[1].startswith("[2/2] tiny/seed1: running")
    assert (tmp_path / "seed1" / "metrics.json").is_file()
    assert made["seed0"] == (tmp_path / "seed0" / "metrics.json").stat().st_mtime_ns

    failing = {**TWO_RUNS, "broken": {"seed": 2, **SMALL, "test_size": 5}}
    with pytest.raises(studies.StudyFailed, match=r"study tiny: run broken refused: test_size must be .*got 5"):
        studies.run_study("tiny", failing, tmp_path, quick_env, echo=said.append)
    assert made["seed0"] == (tmp_path / "seed0" / "metrics.json").stat().st_mtime_ns


def constructed_run(folder, seed, test_loss, iw_bound, active, latent_dim=20):
    epochs = [{"epoch": e, "test_loss": test_loss + 10 / e} for e in (1, 2, 3)]
    epochs[-1]["test_loss"] = test_loss
    settings = {**run_support.SPEC, "seed": seed, "latent_dim": latent_dim}
    evaluation = {
        "iw_bound": iw_bound,
        "iw_samples": 50,
        "active_units": active,
        "kl_per_dimension": [0.5] * latent_dim,
    }
    metrics = {"settings": settings, "epochs": epochs, "test_loss": test_loss, "evaluation": evaluation}
    run_support.write_json(folder / "metrics.json", metrics)


def test_the_seeds_summary_gives_the_mean_and_sample_standard_deviation(tmp_path):
    losses, bounds, active = [100.0, 102.0, 104.0], [-96.0, -97.0, -99.0], [12, 12, 13]
    for seed in range(3):
        constructed_run(tmp_path / f"seed{seed}", seed, losses[seed], bounds[seed], active[seed])
    table = studies.summarize("seeds", tmp_path)
    assert "| test loss (negative ELBO) | 102.00 | 2.00 |" in table
    assert f"| importance-weighted bound, k = 50 | -97.33 | {statistics.stdev(bounds):.2f} |" in table
    assert "| active units (of 20) | 12.3 | 0.6 |" in table
    assert (tmp_path / "test_loss_by_seed.png").is_file() and (tmp_path / "summary.md").read_text().count("|") > 10


def test_the_latent_sizes_summary_orders_by_size_and_draws_its_figure(tmp_path):
    for size, loss in ((20, 100.5), (2, 140.0), (5, 110.0)):
        constructed_run(tmp_path / f"latent{size}", 0, loss, -loss + 3, min(size, 12), latent_dim=size)
    rows = [line for line in studies.summarize("latent_sizes", tmp_path).splitlines() if line[2:3].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["2", "5", "20"]
    assert "… (8 more)" in rows[-1]
    assert (tmp_path / "latent_size.png").is_file()


def test_readme_tables_are_what_the_code_makes_of_the_committed_metrics():
    readme = (REPO / "README.md").read_text()
    tables = studies.readme_tables()
    for name in tables:
        assert f"<!-- table: {name} -->" in readme, f"README has no generated block {name}"
    assert studies.readme_with_tables(readme, tables) == readme, "run `python3 tasks.py tables --write`"
