"""The studies' figures, drawn from metrics.json files alone (and a run's samples.png), and the published
numbers the figures and tables stand beside."""

import json
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.image import imread
from matplotlib.ticker import MaxNLocator

from harness.settings import SPEC
from vae_utils import save_figure

# Burda et al. 2016, table 1, one stochastic layer: (objective, k) -> (-log p(x), active units)
BURDA = {("elbo", 1): (86.76, 19), ("iwae", 5): (85.54, 22), ("iwae", 50): (84.78, 25)}

# Published importance-weighted estimates of -log p(x) on binarised MNIST, one stochastic layer.
PUBLISHED = [
    (
        "Burda et al. 2015, table 1 (VAE, k = 1 training)",
        BURDA[("elbo", 1)][0],
        "784-200-200-50, 3,280 passes over the data, k = 5000",
    ),
    ("Rezende & Mohamed 2015 (DLGM, diagonal Gaussian posterior)", 89.9, "reported as a bound: -log p(x) <= 89.9"),
]
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


def seeds_figure(runs: dict, path: Path):
    """Test loss per epoch over seeds: every seed, the mean and one sd; the second half closer."""
    curves = np.array([[row["test_loss"] for row in m["epochs"]] for m in runs.values()])
    epochs = np.arange(1, curves.shape[1] + 1)
    mean, sd = curves.mean(axis=0), curves.std(axis=0, ddof=1) if len(curves) > 1 else 0 * curves[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    late = epochs > len(epochs) // 2
    for ax, shown, title in ((axes[0], epochs > 0, "all epochs"), (axes[1], late, "second half, closer")):
        ax.fill_between(epochs[shown], (mean - sd)[shown], (mean + sd)[shown], alpha=0.3, label="± 1 sd")
        ax.plot(epochs[shown], mean[shown], "o-", label=f"mean over {len(curves)} seeds")
        for curve in curves:
            ax.plot(epochs[shown], curve[shown], "-", color="grey", linewidth=0.6, alpha=0.6)
        ax.set(xlabel="epoch", ylabel="test loss (nats per image)", title=f"test loss per epoch: {title}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend()
    save_figure(fig, path)
    plt.close(fig)


def latent_sizes_figure(runs: dict, path: Path):
    """Test loss and active units against the latent size."""
    rows = sorted(runs.values(), key=lambda m: m["settings"]["latent_dim"])
    sizes = [m["settings"]["latent_dim"] for m in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(sizes, [m["test_loss"] for m in rows], "o-", color="C0", label="test loss")
    ax.set(
        xscale="log",
        xlabel="latent size",
        ylabel="test loss (nats per image)",
        xticks=sizes,
        xticklabels=sizes,
        title="more latent dimensions, and how many are used",
    )
    ax.minorticks_off()
    units = ax.twinx()
    units.plot(sizes, [m["evaluation"]["active_units"] for m in rows], "s-", color="C3", label="active units")
    units.plot(sizes, sizes, ":", color="grey", label="all units active")
    units.set_ylabel("active units")
    ax.legend(handles=ax.lines + units.lines, loc="upper center")
    save_figure(fig, path)
    plt.close(fig)


def beta_figure(runs: dict, path: Path):
    """Rate against distortion for each beta, and each beta's samples side by side."""
    rows = sorted(runs.items(), key=lambda kv: kv[1]["settings"]["beta"])
    fig = plt.figure(figsize=(12, 6.2))
    ax = fig.add_subplot(1, 2, 1)
    rate = [m["evaluation"]["test_kl"] for _, m in rows]
    distortion = [m["evaluation"]["test_recon"] for _, m in rows]
    ax.plot(rate, distortion, "o-")
    for (_, m), r, d in zip(rows, rate, distortion, strict=True):
        ax.annotate(f"beta = {m['settings']['beta']:g}", (r, d), textcoords="offset points", xytext=(6, 4))
    ax.set(xlabel="rate: KL(q(z|x) || p(z)), nats per image", ylabel="distortion: -log p(x|z), nats per image")
    ax.set_title("rate and distortion on the test set (Alemi et al. 2018)")
    for i, (run, m) in enumerate(rows):
        sample = fig.add_subplot(2, 4, 3 + (i // 2) * 4 + i % 2)
        sample.imshow(imread(path.parent / run / "samples.png"), cmap="gray")
        sample.set_title(f"beta = {m['settings']['beta']:g}", fontsize=10)
        sample.axis("off")
    save_figure(fig, path)
    plt.close(fig)


def scheduled(metrics) -> bool:
    """The run lowered its learning rate on Burda et al.'s schedule (`lr_schedule = "burda"`)."""
    return metrics["settings"]["lr_schedule"] != "constant"


def budget_figure(runs: dict, path: Path):
    """-log p(x) and the train and test -ELBO against passes over the data, beside the published VAE.

    The runs at a constant rate as one line; a run on Burda et al.'s rate schedule, dashed, beside it.
    """
    constant = sorted((m for m in runs.values() if not scheduled(m)), key=lambda m: m["settings"]["epochs"])
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for rows, style, marker, how in (
        (constant, "-", "o-", "constant rate"),
        ([m for m in runs.values() if scheduled(m)], "--", "*", "Burda et al.'s rate schedule"),
    ):
        if not rows:
            continue
        longest = rows[-1]["epochs"]
        epochs = [row["epoch"] for row in longest]
        ax.plot(epochs, [row["train_loss"] for row in longest], style, color="C0", lw=0.8, label=f"train -ELBO, {how}")
        ax.plot(epochs, [row["test_loss"] for row in longest], style, color="C1", lw=0.8, label=f"test -ELBO, {how}")
        passes = [m["settings"]["epochs"] for m in rows]
        ax.plot(
            passes,
            [-m["evaluation"]["iw_bound"] for m in rows],
            marker,
            color="C3",
            ms=8 if marker == "*" else 6,
            label=f"test -log p(x), k = 5000, {how}",
        )
    ax.axhline(BURDA[("elbo", 1)][0], color="grey", ls=":", label="Burda et al. 2016, VAE (3,280 passes)")
    late = [row["test_loss"] for m in runs.values() for row in m["epochs"] if row["epoch"] >= 5]
    ax.set_ylim(BURDA[("elbo", 1)][0] - 3, max(late) + 3)  # the first epochs' 170 nats would flatten the rest
    ax.set(xscale="log", xlabel="passes over the training data", ylabel="nats per image")
    ax.set_title("does the gap close with more training?")
    ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, path)
    plt.close(fig)
