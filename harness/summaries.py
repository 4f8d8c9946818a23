"""Each study's summary: its table and figure, from its runs' metrics.json files alone.

`summarize(NAME)` rebuilds results/studies/NAME/summary.md and the study's figure once every run is
there; `SUMMARIES` says which table and figure each study has. README's and docs' generated blocks
use the same tables (tables.py).
"""

import json
from pathlib import Path

from harness.figures import (
    BURDA,
    BURDA_MODEL,
    PUBLISHED,
    PUBLISHED_DREG,
    beta_figure,
    budget_figure,
    by_row,
    latent_sizes_figure,
    objective_label,
    scheduled,
    seeded_figure,
    seeds_figure,
    spread,
)
from harness.files import UnreadableRun, read_metrics, write_text
from harness.folders import STUDY_RECORD
from harness.plans import STUDIES
from harness.provenance import code_line, cpu_of

WALL_TIME = (
    "Minutes are wall time on a shared 2-core machine (an Intel Xeon or an AMD EPYC: each record's provenance "
    "names the CPU; the same run took from about as long to twice as long on the AMD one, as the shared machine "
    "allowed), the k = 5000 evaluation (about 9 minutes on the Intel machine when idle, 10 to 17 on the AMD) "
    "included, and every part of a run that was stopped and went on; where "
    "tests ran beside a study they are longer."
)


def load_timings(root: Path) -> dict:
    """Seconds of wall time per run of a study (timings.json), or {}."""
    path = Path(root) / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def table(header: list, rows: list, align: str) -> str:
    """A markdown table: its header's cells, its rows' cells, and each column's alignment (l or r)."""

    def line(cells):
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def seeds_table(runs: dict) -> str:
    first = next(iter(runs.values()))
    k, latent = first["evaluation"]["iw_samples"], first["settings"]["latent_dim"]
    rows = [
        ("test loss (negative ELBO)", [m["test_loss"] for m in runs.values()], ".2f"),
        (f"importance-weighted bound, k = {k}", [m["evaluation"]["iw_bound"] for m in runs.values()], ".2f"),
        (f"active units (of {latent})", [m["evaluation"]["active_units"] for m in runs.values()], ".1f"),
    ]
    seeds = ", ".join(str(m["settings"]["seed"]) for m in runs.values())
    cells = [[label, *(f"{v:{fmt}}" for v in spread(values))] for label, values, fmt in rows]
    return table([f"over {len(runs)} seeds ({seeds})", "mean", "sd"], cells, "lrr")


def likelihoods_table(runs: dict) -> str:
    rows = []
    for m in runs.values():
        e = m["evaluation"]
        rows.append([f"`{m['settings']['likelihood']}`", f"{m['test_loss']:.2f}",
                     f"{e['elbo']:.2f} ± {e['elbo_se']:.2f}", f"{e['iw_bound']:.2f} ± {e['iw_bound_se']:.2f}",
                     e["iw_samples"], e["active_units"]])  # fmt: skip
    header = ["likelihood", "test loss", "ELBO (k = 1)", "importance-weighted bound", "k", "active units"]
    return table(header, rows, "lrrrrr")


def published_table(runs: dict) -> str:
    rows = []
    for m in runs.values():
        if m["settings"]["likelihood"] == "binarized":
            e, s = m["evaluation"], m["settings"]
            rows.append([f"this repo (784-512-256-{s['latent_dim']}, {s['epochs']} epochs)",
                         f"{-e['iw_bound']:.2f} ± {e['iw_bound_se']:.2f}",
                         f"k = {e['iw_samples']}, {s['test_size']:,} test images, seed {s['seed']}"])  # fmt: skip
    rows += [[who, f"{value:.2f}", notes] for who, value, notes in PUBLISHED]
    return table(["model", "-log p(x), nats (binarised MNIST test set)", "notes"], rows, "lrl")


def latent_sizes_table(runs: dict) -> str:
    rows = []
    for m in sorted(runs.values(), key=lambda m: m["settings"]["latent_dim"]):
        e, kl = m["evaluation"], sorted(m["evaluation"]["kl_per_dimension"], reverse=True)
        shown = " ".join(f"{v:.2f}" for v in kl[:12]) + (f" … ({len(kl) - 12} more)" if len(kl) > 12 else "")
        rows.append([m["settings"]["latent_dim"], f"{m['test_loss']:.2f}", f"{e['iw_bound']:.2f} ({e['iw_samples']})",
                     e["active_units"], shown])  # fmt: skip
    header = ["latent size", "test loss", "importance-weighted bound (k)", "active units",
              "KL per dimension, largest first (nats)"]  # fmt: skip
    return table(header, rows, "rrrrl")


def beta_table(runs: dict) -> str:
    rows = []
    for m in sorted(runs.values(), key=lambda m: m["settings"]["beta"]):
        e, s = m["evaluation"], m["settings"]
        rows.append([f"{s['beta']:g}", f"{e['test_recon']:.2f}", f"{e['test_kl']:.2f}", f"{m['test_loss']:.2f}",
                     f"{e['iw_bound']:.2f} ({e['iw_samples']})",
                     f"{e['active_units']} of {s['latent_dim']}"])  # fmt: skip
    header = ["beta", "distortion: test reconstruction", "rate: test KL", "test loss (beta = 1)",
              "importance-weighted bound (k)", "active units"]  # fmt: skip
    return table(header, rows, "rrrrrr")


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


def budget_table(runs: dict, minutes) -> str:
    rows = []
    for run, m in sorted(runs.items(), key=lambda kv: (scheduled(kv[1]), kv[1]["settings"]["epochs"])):
        e = m["evaluation"]
        rows.append([f"{m['settings']['epochs']}" + (", Burda et al.'s rate schedule" if scheduled(m) else ""),
                     f"{-e['iw_bound']:.2f} ± {e['iw_bound_se']:.2f}", f"{m['test_loss']:.2f}",
                     f"{m['epochs'][-1]['train_loss']:.2f}", e["active_units"],
                     f"{minutes.get(run, 0) / 60:.0f}"])  # fmt: skip
    rows.append(["Burda et al. 2016, VAE: 3,280", f"{BURDA[('elbo', 1)][0]:.2f}", "", "", BURDA[("elbo", 1)][1], ""])
    header = ["passes over the data", "-log p(x), k = 5000", "test -ELBO", "train -ELBO (last epoch)", "active units",
              "minutes"]  # fmt: skip
    return table(header, rows, "rrrrrr") + f"\n\n{WALL_TIME}"


BASELINE = ("burda540", ("iwae5", "iwae5_seed1", "iwae5_seed2"))  # dreg540's rows stand beside these


def baseline() -> tuple:
    """burda540's IWAE k = 5 runs (named `burda540/RUN`) and their seconds, for dreg540's table and figure."""
    study, names = BASELINE
    runs = {f"{study}/{run}": read_metrics(STUDY_RECORD / study / run) for run in names}
    return runs, {f"{study}/{run}": s for run, s in load_timings(STUDY_RECORD / study).items()}


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


SUMMARIES = {  # study -> (table of its runs and their minutes, figure file and function)
    "seeds": (lambda runs, minutes: seeds_table(runs), "test_loss_by_seed.png", seeds_figure),
    "likelihoods": (lambda runs, minutes: likelihoods_table(runs) + "\n\n" + published_table(runs), None, None),
    "latent_sizes": (lambda runs, minutes: latent_sizes_table(runs), "latent_size.png", latent_sizes_figure),
    "beta": (lambda runs, minutes: beta_table(runs), "rate_distortion.png", beta_figure),
    "objectives": (seeded_table, "objectives.png", seeded_figure),
    "budget": (budget_table, "budget.png", budget_figure),
    "burda540": (seeded_table, "burda540.png", seeded_figure),
    "dreg540": (dreg_table, "dreg540.png", lambda runs, path: seeded_figure({**baseline()[0], **runs}, path)),
}


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
    runs = {p.parent.name: read_metrics(p.parent) for p in sorted(root.glob("*/metrics.json"))}
    runs = dict(sorted(runs.items(), key=lambda kv: planned.index(kv[0]) if kv[0] in planned else len(planned)))
    table_of, figure, draw = SUMMARIES.get(name, SUMMARIES["seeds"])
    table = table_of(runs, load_timings(root)) + "\n\n" + code_line(runs)
    write_text(root / "summary.md", f"# Study `{name}`\n\n{table}\n")
    if figure:
        draw(runs, root / figure)
    return table
