"""The studies' figure, drawn from metrics.json files alone, and the published numbers the figure and the
tables stand beside."""

import json
import statistics
from pathlib import Path

import matplotlib.pyplot as plt

from harness.settings import SPEC
from vae_utils import save_figure

# Burda et al. 2016, table 1, one stochastic layer: (objective, k) -> (-log p(x), active units)
BURDA = {("elbo", 1): (86.76, 19), ("iwae", 5): (85.54, 22), ("iwae", 50): (84.78, 25)}

BURDA_MODEL = "784-200-200-50 (tanh), 3,280 passes, Adam with a decaying rate, k = 5000"

# Published -log p(x) of IWAE with and without DReG, one stochastic layer, Burda et al.'s recipe (batches of 20,
# 3,280 passes, Adam's ε 1e-4): (who, k, IWAE, DReG); nbip/IWAE's README, its `main.py` and `tasks/task02.py`.
PUBLISHED_DREG = [
    ("Burda et al. 2016, table 1", 5, BURDA[("iwae", 5)][0], None),
    ("nbip/IWAE, a TensorFlow 2 reproduction of Burda et al.", 5, 85.18, 84.90),
    ("nbip/IWAE, a TensorFlow 2 reproduction of Burda et al.", 50, 84.59, 84.32),
]


def spread(values) -> tuple:
    """Mean and sample standard deviation (0 for one value): every table's and figure's mean ± sd."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def objective_label(settings) -> str:
    label = "ELBO" if settings["objective"] == "elbo" else f"IWAE, k = {settings['train_samples']}"
    label += ", DReG" if settings["gradient"] == "dreg" else ""
    label += f", Adam's ε {settings['adam_eps']:g}" if settings["adam_eps"] != 1e-8 else ""
    return label + (f", KL warm-up over {settings['kl_warmup']} epochs" if settings["kl_warmup"] else "")


def by_row(runs: dict) -> list:
    """The runs grouped into rows of the same settings but the seed (of those that change the numbers: not the
    machine's, nor the folders), in the study's order: (names, records)."""
    rows = {}
    for run, m in runs.items():
        key = json.dumps({k: m["settings"][k] for k in SPEC if k != "seed"}, sort_keys=True)
        rows.setdefault(key, ([], []))
        rows[key][0].append(run)
        rows[key][1].append(m)
    return list(rows.values())


def seeded_figure(runs: dict, path: Path):
    """-log p(x) of every seed of every row, with the row's mean and one sd, beside Burda et al.'s number."""
    rows = by_row(runs)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.7 * len(rows)))
    for y, (_, records) in enumerate(rows):
        values = [-m["evaluation"]["iw_bound"] for m in records]
        mean, sd = spread(values)
        ax.errorbar(mean, y, xerr=sd, fmt="|", ms=14, color="C0", capsize=4, label="mean ± 1 sd" if not y else None)
        ax.plot(values, [y] * len(values), "o", color="C0", alpha=0.5, label="one seed" if not y else None)
        s = records[0]["settings"]
        published = BURDA.get((s["objective"], s["train_samples"])) if not s["kl_warmup"] else None
        if published:
            ax.plot(
                published[0],
                y,
                "x",
                color="grey",
                label="Burda et al. 2016 (their model, 3,280 passes)" if y == 0 else None,
            )
    ax.set_yticks(range(len(rows)), [objective_label(records[0]["settings"]) for _, records in rows])
    ax.invert_yaxis()
    ax.set(xlabel="test -log p(x), k = 5000 (nats per image)", title="each seed, and the spread over seeds")
    ax.legend(fontsize=8, loc="best")
    save_figure(fig, path)
    plt.close(fig)
