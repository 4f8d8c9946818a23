"""Each study's summary: its table and figure, from its runs' metrics.json files alone, beside the published
numbers.

`summarize(NAME)` rebuilds results/studies/NAME/summary.md (and the figure of a study with seeds in each row)
once every run is there; `SUMMARIES` names the studies whose table or figure is not `runs_table` alone.
README's and docs' generated blocks use the same tables (tables.py).
"""

import json
import statistics
from pathlib import Path

import matplotlib.pyplot as plt

from harness.files import UnreadableRun, read_metrics, read_timings, write_text
from harness.folders import STUDY_RECORD
from harness.plans import STUDIES
from harness.provenance import code_line, cpu_of
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
            label = "Burda et al. 2016 (their model, 3,280 passes)" if y == 0 else None
            ax.plot(published[0], y, "x", color="grey", label=label)
    ax.set_yticks(range(len(rows)), [objective_label(records[0]["settings"]) for _, records in rows])
    ax.invert_yaxis()
    ax.set(xlabel="test -log p(x), k = 5000 (nats per image)", title="each seed, and the spread over seeds")
    ax.legend(fontsize=8, loc="best")
    save_figure(fig, path)
    plt.close(fig)


WALL_TIME = "Minutes are wall time, the evaluation included: docs/studies.md says on which machines."


def table(header: list, rows: list, align: str) -> str:
    """A markdown table: its header's cells, its rows' cells, and each column's alignment (l or r)."""

    def line(cells):
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def runs_table(runs: dict, minutes) -> str:
    """One row per run: what it changes from the spec, its test -ELBO and its terms, its bound on -log p(x),
    active units, minutes and CPU; runs alike but for the seed end with their mean ± sd."""
    rows = []
    for run, m in runs.items():
        e, s = m["evaluation"], m["settings"]
        changed = ", ".join(f"{n} = {s[n]}" for n in SPEC if s[n] != SPEC[n]) or "none (the spec)"
        rows.append([run, changed, f"{m['test_loss']:.2f}", f"{e['test_recon']:.2f} / {e['test_kl']:.2f}",
                     f"{nll(m):.2f} ± {e['iw_bound_se']:.2f}", e["iw_samples"], f"{e['active_units']} of "
                     f"{s['latent_dim']}", f"{minutes.get(run, 0) / 60:.0f}", cpu_of(m)])  # fmt: skip
    if len(runs) > 1 and len(by_row(runs)) == 1:
        loss, loss_sd = spread(m["test_loss"] for m in runs.values())
        bound, bound_sd = spread(map(nll, runs.values()))
        units = spread(m["evaluation"]["active_units"] for m in runs.values())[0]
        rows.append([f"mean ± sd over {len(runs)} seeds", "", f"{loss:.2f} ± {loss_sd:.2f}", "",
                     f"{bound:.2f} ± {bound_sd:.2f}", "", f"{units:.1f}", "", ""])  # fmt: skip
    header = ["run", "settings changed from the spec", "test -ELBO", "reconstruction / KL",
              "-log p(x) <= (importance-weighted bound) ± se", "k", "active units", "minutes", "CPU"]  # fmt: skip
    return table(header, rows, "llrrrrrrl") + f"\n\n{WALL_TIME}"


def nll(m) -> float:
    return -m["evaluation"]["iw_bound"]


def seeded_rows(runs: dict) -> list:
    """(label, mean, sd, seeds) of -log p(x) for each row of runs alike but for the seed, in the study's order."""
    return [(objective_label(records[0]["settings"]), *spread([nll(m) for m in records]), len(records))
            for _, records in by_row(runs)]  # fmt: skip


def difference(row_a, row_b) -> tuple:
    """Row a's mean minus row b's, its sd from the seeds (None with one seed), and whether it is a finding."""
    (_, mean_a, sd_a, n_a), (_, mean_b, sd_b, n_b) = row_a, row_b
    if min(n_a, n_b) < 2:
        return mean_a - mean_b, None, "one seed: no spread yet"
    sd = (sd_a**2 / n_a + sd_b**2 / n_b) ** 0.5
    verdict = "yes: more than twice its sd" if abs(mean_a - mean_b) > 2 * sd else "no: within twice its sd"
    return mean_a - mean_b, sd, verdict


def seeded_table(runs: dict, minutes) -> str:
    """One row per objective: -log p(x) and the test -ELBO as mean ± sd over its seeds, beside the standard
    error over test images; then each pair of rows, and whether their difference exceeds the seeds' spread."""
    first = next(iter(runs.values()))["settings"]
    budget = f"{first['epochs']} epochs" + (", Burda et al.'s rate schedule" if first["lr_schedule"] == "burda" else "")
    rows, cells = seeded_rows(runs), []
    for (names, records), (_, mean, sd, _) in zip(by_row(runs), rows, strict=True):
        s, several = records[0]["settings"], len(records) > 1
        elbo, elbo_sd = spread([m["test_loss"] for m in records])
        published = BURDA.get((s["objective"], s["train_samples"])) if not s["kl_warmup"] else None
        cells.append([
            objective_label(s), ", ".join(str(m["settings"]["seed"]) for m in records),
            f"{mean:.2f}" + (f" ± {sd:.2f}" if several else ""),
            f"{spread(m['evaluation']['iw_bound_se'] for m in records)[0]:.2f}",
            f"{elbo:.2f}" + (f" ± {elbo_sd:.2f}" if several else ""),
            "/".join(str(m["evaluation"]["active_units"]) for m in records) + f" of {s['latent_dim']}",
            f"{sum(minutes.get(run, 0) for run in names) / 60:.0f}",
            "/".join(cpu_of(m) for m in records),
            f"{published[0]:.2f} ({published[1]})" if published else "-",
        ])  # fmt: skip
    header = [f"objective (binarised MNIST, {budget})", "seeds", "-log p(x), k = 5000: mean ± sd over seeds",
              "± se over images", "test -ELBO", "active units", "minutes", "CPU of each seed",
              "Burda et al. 2016: -log p(x) (active units)"]  # fmt: skip
    pairs = []
    for a, row_a in enumerate(rows):
        for row_b in rows[a + 1 :]:
            diff, sd, verdict = difference(row_a, row_b)
            diff = round(diff, 2) + 0.0  # a difference that rounds to zero is 0.00, not -0.00
            pairs.append([row_a[0], row_b[0], f"{diff:.2f}", "" if sd is None else f"{sd:.2f}", verdict])
    pairs_header = ["-log p(x) of", "minus that of", "difference of means", "its sd from seeds", "finding?"]
    return "\n".join([
        table(header, cells, "lrrrrrrlr"), "", table(pairs_header, pairs, "llrrl"),
        "\nThe sd over seeds is the spread of whole training runs (the seed sets the initial weights, the batches, "
        "the noise and the binarisation); the se over images is the evaluation's own uncertainty, the mean over "
        "the row's runs. With three seeds, twice the sd of a difference is a rough rule, not a test.",
        f"\nBurda et al.'s model: {BURDA_MODEL}. This repo's: 784-512-256-20 (ReLU), {budget}, Adam 1e-3.",
        WALL_TIME,
    ])  # fmt: skip


BASELINE = ("burda540", ("iwae5", "iwae5_seed1", "iwae5_seed2"))  # dreg540's rows stand beside these


def baseline() -> tuple:
    """burda540's IWAE k = 5 runs (named `burda540/RUN`) and their seconds, for dreg540's table and figure."""
    study, names = BASELINE
    runs = {f"{study}/{run}": read_metrics(STUDY_RECORD / study / run) for run in names}
    return runs, {f"{study}/{run}": s for run, s in read_timings(STUDY_RECORD / study).items()}


def dreg_table(runs: dict, minutes) -> str:
    """dreg540's rows beside burda540's IWAE k = 5 (the same schedule and evaluation), then the published rows."""
    before, seconds = baseline()
    published = [[who, k, f"{iwae:.2f}", f"{dreg:.2f}" if dreg else "-"] for who, k, iwae, dreg in PUBLISHED_DREG]
    header = ["published -log p(x): one stochastic layer, batches of 20, 3,280 passes", "k", "IWAE", "IWAE, DReG"]
    return "\n".join([
        seeded_table({**before, **runs}, {**seconds, **minutes}), "",
        f"The IWAE k = 5 row is study {BASELINE[0]}'s. {code_line(before)}", "",
        table(header, published, "lrrr"),
    ])  # fmt: skip


SUMMARIES = {  # study -> (table of its runs and their minutes, figure file and function); else OTHERS
    "objectives": (seeded_table, "objectives.png", seeded_figure),
    "burda540": (seeded_table, "burda540.png", seeded_figure),
    "dreg540": (dreg_table, "dreg540.png", lambda runs, path: seeded_figure({**baseline()[0], **runs}, path)),
}


OTHERS = (runs_table, None, None)  # a table of every run, and no figure


def study_table(name, runs: dict, minutes: dict) -> str:
    """Study `name`'s table of these runs, and which code made them."""
    return SUMMARIES.get(name, OTHERS)[0](runs, minutes) + "\n\n" + code_line(runs)


def summarize(name, root=None) -> str:
    """Rebuild study `name`'s summary.md and figure from its runs' metrics.json files; return the table.

    Every run the study defines must be there: a summary over fewer runs is refused, not written.
    """
    root = Path(root or STUDY_RECORD / name)
    planned = list(STUDIES.get(name, {}))
    missing = [run for run in planned if not (root / run / "metrics.json").exists()]
    if missing:
        raise UnreadableRun(
            f"study {name}: {root / missing[0] / 'metrics.json'} is missing ({len(missing)} of {len(planned)} runs "
            f"not done); `python3 tasks.py study {name}` finishes them. The summary is left as it was."
        )
    runs = {run: read_metrics(root / run) for run in planned}  # the plan's runs, as README's table has them
    table = study_table(name, runs, read_timings(root))
    write_text(root / "summary.md", f"# Study `{name}`\n\n{table}\n")
    _, figure, draw = SUMMARIES.get(name, OTHERS)
    if figure:
        draw(runs, root / figure)
    return table
