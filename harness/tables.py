"""Tables and figures from metrics.json files alone: each study's summary, and README's generated blocks.

    python3 tasks.py tables [--write]     # every generated block of README.md and docs/, from the committed files

A generated block is written `<!-- table: NAME -->...<!-- end: NAME -->` in README.md or a page of
docs/; `--write` rewrites them, and a test checks that the committed text is what the code makes.
"""

import json
import re
import statistics
import sys
from pathlib import Path

from harness import PREFIX, REPO
from harness.figures import (
    BURDA,
    beta_figure,
    budget_figure,
    by_row,
    latent_sizes_figure,
    objective_label,
    scheduled,
    seeded_figure,
    seeds_figure,
)
from harness.files import UnreadableRun, read_metrics, write_text
from harness.settings import RECORD, SETTINGS, STUDY_RECORD
from harness.studies import STUDIES

# Published importance-weighted estimates of -log p(x) on binarised MNIST, one stochastic layer.
PUBLISHED = [
    ("Burda et al. 2015, table 1 (VAE, k = 1 training)", 86.76, "784-200-200-50, 3,280 passes over the data, k = 5000"),
    ("Rezende & Mohamed 2015 (DLGM, diagonal Gaussian posterior)", 89.9, "reported as a bound: -log p(x) <= 89.9"),
]
BURDA_MODEL = "784-200-200-50 (tanh), 3,280 passes, Adam with a decaying rate, k = 5000"

DOCUMENTS = ["README.md", "docs/studies.md", "docs/settings.md", "docs/performance.md"]
BENCHMARK = REPO / "benchmarks" / "results.json"
WALL_TIME = (
    "Minutes are wall time on the shared 2-core machine, the k = 5000 evaluation (about 9 of them when the "
    "machine is idle) included; where tests ran beside a study, or it was paused for them, they are longer."
)


def seeds_table(runs: dict) -> str:
    first = next(iter(runs.values()))
    k, latent = first["evaluation"]["iw_samples"], first["settings"]["latent_dim"]
    rows = [
        ("test loss (negative ELBO)", [m["test_loss"] for m in runs.values()], ".2f"),
        (f"importance-weighted bound, k = {k}", [m["evaluation"]["iw_bound"] for m in runs.values()], ".2f"),
        (f"active units (of {latent})", [m["evaluation"]["active_units"] for m in runs.values()], ".1f"),
    ]
    seeds = ", ".join(str(m["settings"]["seed"]) for m in runs.values())
    lines = [f"| over {len(runs)} seeds ({seeds}) | mean | sd |", "|---|---:|---:|"]
    for label, values, fmt in rows:
        mean, sd = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {label} | {mean:{fmt}} | {sd:{fmt}} |")
    return "\n".join(lines)


def likelihoods_table(runs: dict) -> str:
    lines = [
        "| likelihood | test loss | ELBO (k = 1) | importance-weighted bound | k | active units |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in runs.values():
        e = m["evaluation"]
        lines.append(
            f"| `{m['settings']['likelihood']}` | {m['test_loss']:.2f} | {e['elbo']:.2f} ± {e['elbo_se']:.2f} "
            f"| {e['iw_bound']:.2f} ± {e['iw_bound_se']:.2f} | {e['iw_samples']} | {e['active_units']} |"
        )
    return "\n".join(lines)


def published_table(runs: dict) -> str:
    lines = ["| model | -log p(x), nats (binarised MNIST test set) | notes |", "|---|---:|---|"]
    for m in runs.values():
        if m["settings"]["likelihood"] == "binarized":
            e, s = m["evaluation"], m["settings"]
            lines.append(
                f"| this repo (784-512-256-{s['latent_dim']}, {s['epochs']} epochs) | "
                f"{-e['iw_bound']:.2f} ± {e['iw_bound_se']:.2f} | k = {e['iw_samples']}, "
                f"{s['test_size']:,} test images, seed {s['seed']} |"
            )
    lines += [f"| {who} | {value:.2f} | {notes} |" for who, value, notes in PUBLISHED]
    return "\n".join(lines)


def latent_sizes_table(runs: dict) -> str:
    lines = [
        "| latent size | test loss | importance-weighted bound (k) | active units "
        "| KL per dimension, largest first (nats) |",
        "|---:|---:|---:|---:|---|",
    ]
    for m in sorted(runs.values(), key=lambda m: m["settings"]["latent_dim"]):
        e = m["evaluation"]
        kl = sorted(e["kl_per_dimension"], reverse=True)
        shown = " ".join(f"{v:.2f}" for v in kl[:12]) + (f" … ({len(kl) - 12} more)" if len(kl) > 12 else "")
        lines.append(
            f"| {m['settings']['latent_dim']} | {m['test_loss']:.2f} | {e['iw_bound']:.2f} ({e['iw_samples']}) "
            f"| {e['active_units']} | {shown} |"
        )
    return "\n".join(lines)


def main_table(metrics: dict) -> str:
    e = metrics["evaluation"]
    return "\n".join(
        [
            f"| after {len(metrics['epochs'])} epochs (test set, {metrics['settings']['test_size']:,} images, "
            "nats per image) | value |",
            "|---|---:|",
            f"| test loss (negative ELBO, analytic KL) | {metrics['test_loss']:.2f} |",
            f"| of which reconstruction / KL | {e['test_recon']:.2f} / {e['test_kl']:.2f} |",
            f"| ELBO, one sample per image (k = 1) | {e['elbo']:.2f} ± {e['elbo_se']:.2f} |",
            f"| importance-weighted bound, k = {e['iw_samples']} (Burda et al. 2015) "
            f"| {e['iw_bound']:.2f} ± {e['iw_bound_se']:.2f} |",
            f"| active units (Var μ > {e['active_unit_threshold']}) "
            f"| {e['active_units']} of {metrics['settings']['latent_dim']} |",
        ]
    )


def load_timings(root: Path) -> dict:
    """Seconds of wall time per run of a study (timings.json), or {}."""
    path = Path(root) / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def timing_line(name) -> str:
    timings, planned = load_timings(STUDY_RECORD / name), len(STUDIES[name])
    done = sum(run in timings and (STUDY_RECORD / name / run / "metrics.json").exists() for run in STUDIES[name])
    runs = f"{planned} runs" if done == planned else f"{done} of {planned} runs"
    return f"{runs}, {sum(timings.values()) / 60:.0f} minutes of wall time"


def beta_table(runs: dict) -> str:
    lines = [
        "| beta | distortion: test reconstruction | rate: test KL | test loss (beta = 1) "
        "| importance-weighted bound (k) | active units |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for m in sorted(runs.values(), key=lambda m: m["settings"]["beta"]):
        e = m["evaluation"]
        lines.append(
            f"| {m['settings']['beta']:g} | {e['test_recon']:.2f} | {e['test_kl']:.2f} | {m['test_loss']:.2f} "
            f"| {e['iw_bound']:.2f} ({e['iw_samples']}) | {e['active_units']} of {m['settings']['latent_dim']} |"
        )
    return "\n".join(lines)


def spread(values) -> tuple:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def nll(m) -> float:
    return -m["evaluation"]["iw_bound"]


def seeded_table(runs: dict, minutes) -> str:
    """One row per objective: -log p(x) and the test -ELBO as mean ± sd over its seeds, beside the standard
    error over test images; then each pair of rows, and whether their difference exceeds the seeds' spread."""
    first = next(iter(runs.values()))["settings"]
    budget = f"{first['epochs']} epochs" + (", Burda et al.'s rate schedule" if first["lr_schedule"] == "burda" else "")
    title = f"objective (binarised MNIST, {budget})"
    lines = [
        f"| {title} | seeds | -log p(x), k = 5000: mean ± sd over seeds | ± se over images | test -ELBO "
        "| active units | minutes | Burda et al. 2016: -log p(x) (active units) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for names, records in by_row(runs):
        s = records[0]["settings"]
        (mean, sd), (elbo, elbo_sd) = spread([nll(m) for m in records]), spread([m["test_loss"] for m in records])
        se = statistics.fmean(m["evaluation"]["iw_bound_se"] for m in records)
        published = BURDA.get((s["objective"], s["train_samples"])) if not s["kl_warmup"] else None
        units = "/".join(str(m["evaluation"]["active_units"]) for m in records)
        rows.append((objective_label(s), mean, sd, len(records)))
        seeds = ", ".join(str(m["settings"]["seed"]) for m in records)
        lines.append(
            f"| {objective_label(s)} | {seeds} | {mean:.2f}{f' ± {sd:.2f}' if len(records) > 1 else ''} "
            f"| {se:.2f} | {elbo:.2f}{f' ± {elbo_sd:.2f}' if len(records) > 1 else ''} | {units} of {s['latent_dim']} "
            f"| {sum(minutes.get(run, 0) for run in names) / 60:.0f} "
            f"| {f'{published[0]:.2f} ({published[1]})' if published else '-'} |"
        )
    lines += ["", "| -log p(x), the first row minus the second | difference of means | its sd from seeds | finding? |",
              "|---|---:|---:|---|"]  # fmt: skip
    for a, (label_a, mean_a, sd_a, n_a) in enumerate(rows):
        for label_b, mean_b, sd_b, n_b in rows[a + 1 :]:
            if min(n_a, n_b) < 2:
                lines.append(f"| {label_a}, minus {label_b} | {mean_a - mean_b:.2f} | | one seed: no spread yet |")
                continue
            sd = (sd_a**2 / n_a + sd_b**2 / n_b) ** 0.5
            verdict = "yes: more than twice its sd" if abs(mean_a - mean_b) > 2 * sd else "no: within twice its sd"
            lines.append(f"| {label_a}, minus {label_b} | {mean_a - mean_b:.2f} | {sd:.2f} | {verdict} |")
    lines.append(
        "\nThe sd over seeds is the spread of whole training runs (the seed sets the initial weights, the batches, "
        "the noise and the binarisation); the se over images is the evaluation's own uncertainty, the mean over "
        "the row's runs. With three seeds, twice the sd of a difference is a rough rule, not a test."
    )
    lines.append(f"\nBurda et al.'s model: {BURDA_MODEL}. This repo's: 784-512-256-20 (ReLU), {budget}, Adam 1e-3.")
    return "\n".join([*lines, WALL_TIME])


def budget_table(runs: dict, minutes) -> str:
    lines = [
        "| passes over the data | -log p(x), k = 5000 | test -ELBO | train -ELBO (last epoch) "
        "| active units | minutes |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for run, m in sorted(runs.items(), key=lambda kv: (scheduled(kv[1]), kv[1]["settings"]["epochs"])):
        e = m["evaluation"]
        passes = f"{m['settings']['epochs']}" + (", Burda et al.'s rate schedule" if scheduled(m) else "")
        lines.append(
            f"| {passes} | {-e['iw_bound']:.2f} ± {e['iw_bound_se']:.2f} | {m['test_loss']:.2f} "
            f"| {m['epochs'][-1]['train_loss']:.2f} | {e['active_units']} | {minutes.get(run, 0) / 60:.0f} |"
        )
    lines.append(f"| Burda et al. 2016, VAE: 3,280 | {BURDA[('elbo', 1)][0]:.2f} | | | {BURDA[('elbo', 1)][1]} | |")
    lines.append(f"\n{WALL_TIME}")
    return "\n".join(lines)


SUMMARIES = {  # study -> (table of its runs and their minutes, figure file and function)
    "seeds": (lambda runs, minutes: seeds_table(runs), "test_loss_by_seed.png", seeds_figure),
    "likelihoods": (lambda runs, minutes: likelihoods_table(runs) + "\n\n" + published_table(runs), None, None),
    "latent_sizes": (lambda runs, minutes: latent_sizes_table(runs), "latent_size.png", latent_sizes_figure),
    "beta": (lambda runs, minutes: beta_table(runs), "rate_distortion.png", beta_figure),
    "objectives": (seeded_table, "objectives.png", seeded_figure),
    "budget": (budget_table, "budget.png", budget_figure),
    "burda540": (seeded_table, "burda540.png", seeded_figure),
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
    table = table_of(runs, load_timings(root))
    write_text(root / "summary.md", f"# Study `{name}`\n\n{table}\n")
    if figure:
        draw(runs, root / figure)
    return table


# ---- README's tables --------------------------------------------------------------------------
def settings_table() -> str:
    """The table of settings, from `settings.SETTINGS`."""

    def shown(value):
        return repr(value) if isinstance(value, str | bool) else f"{value:_}" if isinstance(value, int) else str(value)

    lines = ["| setting | default | what it does | accepts |", "|---|---|---|---|"]
    for name, setting in SETTINGS.items():
        lines.append(
            f"| `{name}` (`{PREFIX}{name.upper()}`) | `{shown(setting.default)}` | {setting.help} | {setting.accepts} |"
        )
    return "\n".join(lines)


def benchmark_table(figures: dict) -> str:
    """The benchmark's tables: each contender's seconds per epoch, then each ratio with its range over rounds."""
    epochs, rounds = figures["epochs"], figures["rounds"]
    lines = [
        f"| contender ({rounds} rounds of {epochs} epochs, interleaved) | s / epoch (median) | images / s "
        f"| test loss after {epochs} epochs |",
        "|---|---:|---:|---:|",
    ]
    for name, row in figures["contenders"].items():
        loss = f"{row['test_loss']:.2f}" if "test_loss" in row else ""
        shown = name + (f" ({row['images']:,} images)" if row["images"] != 60_000 else "")
        lines.append(
            f"| {shown} | {row['seconds_per_epoch']:.2f} | {row['images'] / row['seconds_per_epoch']:,.0f} | {loss} |"
        )
    lines += ["", f"| ratio, per round | median | range over {rounds} rounds |", "|---|---:|---:|"]
    for name, ratio in figures["ratios"].items():
        shown = "{:.0%}" if "share" in name else "{:.2f}x"
        low, high = shown.format(ratio["low"]), shown.format(ratio["high"])
        lines.append(f"| {name} | {shown.format(ratio['median'])} | {low} to {high} |")
    lines.append(f"\nMeasured on {figures['machine']}; peak GEMM {figures['peak_gflops']:.0f} GFLOP/s (2048³).")
    return "\n".join(lines)


def costs_table(figures: dict) -> str:
    """What a run of each objective costs on the benchmark's machine, from its measured epochs (60,000 images)."""
    lines = ["| objective (60,000 images an epoch) | s / epoch | 20 epochs | 540 epochs |", "|---|---:|---:|---:|"]
    for name, row in figures["contenders"].items():
        if name.startswith("this repo"):
            epoch = row["seconds_per_epoch"] * 60_000 / row["images"]
            label = name.removeprefix("this repo, ") if "IWAE" in name else "ELBO (the spec)"
            lines.append(f"| {label} | {epoch:.1f} | {20 * epoch / 60:.0f} min | {540 * epoch / 3600:.1f} h |")
    lines.append("\nTraining alone: a study's k = 5000 evaluation comes on top.")
    return "\n".join(lines)


def headline(folder=STUDY_RECORD) -> str:
    """README's sentence on binarised MNIST: the spec's objective at 20 epochs, and the best any study reached,
    each a row's mean over its seeds (± their sd) or, for a row of one run, its number ± the standard error."""
    found = []
    for study in ("objectives", "budget", "burda540"):
        done = {
            r: read_metrics(folder / study / r)
            for r in STUDIES[study]
            if (folder / study / r / "metrics.json").exists()
        }
        for _, records in by_row({run: m for run, m in done.items() if m["finished"]}):
            s = records[0]["settings"]
            how = f"IWAE k = {s['train_samples']}" if s["objective"] == "iwae" else "the ELBO"
            how += f" with a {s['kl_warmup']}-epoch KL warm-up" if s["kl_warmup"] else ""
            how += " on Burda et al.'s rate schedule" if scheduled(records[0]) else ""
            mean, sd = spread([nll(m) for m in records])
            spread_of = f"sd over {len(records)} seeds" if len(records) > 1 else "one seed, se over test images"
            found.append((mean, sd if len(records) > 1 else records[0]["evaluation"]["iw_bound_se"], spread_of,
                          f"{how}, {s['epochs']} epochs"))  # fmt: skip
    if not found:
        return "(the objectives and budget studies are not run yet)"
    spec_like = next((f for f in found if f[3] == "the ELBO, 20 epochs"), found[0])
    best = min(found)
    text = f"**{spec_like[0]:.2f} ± {spec_like[1]:.2f} nats** ({spec_like[2]}; {spec_like[3]})"
    if best != spec_like:
        text += f" and **{best[0]:.2f} ± {best[1]:.2f}** at best ({best[2]}; {best[3]}),"
    return text


def readme_tables() -> dict:
    """Every generated block of README.md and docs/, by name, from the committed files."""
    tables = {"main": main_table(read_metrics(RECORD)), "settings": settings_table(), "headline": headline()}
    if BENCHMARK.exists():
        tables["bench"] = benchmark_table(json.loads(BENCHMARK.read_text()))
        tables["costs"] = costs_table(json.loads(BENCHMARK.read_text()))
    for name, (table_of, _, _) in SUMMARIES.items():
        folder = STUDY_RECORD / name
        runs = {run: read_metrics(folder / run) for run in STUDIES[name] if (folder / run / "metrics.json").exists()}
        tables[name] = table_of(runs, load_timings(folder)) if runs else f"(study `{name}` not run yet)"
        if len(runs) < len(STUDIES[name]):
            tables[name] += (
                f"\n\n{len(runs)} of {len(STUDIES[name])} runs done: `python3 tasks.py study {name}` goes on."
            )
        tables[f"{name}-time"] = timing_line(name)
    return tables


MARKER = re.compile(r"<!-- (table|end): ([\w-]+) -->")


def with_tables(text: str, tables: dict, document="the document") -> str:
    """Text with each `<!-- table: NAME -->...<!-- end: NAME -->` block made anew from `tables[NAME]`.

    A document whose markers do not pair (a begin without its end, nested, repeated) is refused,
    and so is a table that holds a marker itself: nothing is written then.
    """
    markers = [(m.group(1), m.group(2)) for m in MARKER.finditer(text)] + [None]
    for begin, end in zip(markers[0:-1:2], markers[1::2], strict=True):
        if begin[0] != "table" or end != ("end", begin[1]):
            raise UnreadableRun(f"{document}: its <!-- table: NAME --> and <!-- end: NAME --> markers do not pair.")
    for name, table in tables.items():
        if "<!--" in table or "-->" in table:
            raise UnreadableRun(f"the table {name} holds an HTML comment, from a record: refused, nothing written.")
        separator = "\n" if "\n" in table else ""
        block = f"<!-- table: {name} -->{separator}{table}{separator}<!-- end: {name} -->"
        text = re.sub(
            rf"<!-- table: {name} -->.*?<!-- end: {name} -->", lambda _, block=block: block, text, flags=re.DOTALL
        )
    return text


def main(argv):
    try:
        make(argv)
    except KeyboardInterrupt:
        sys.exit("stopped (Ctrl-C): each document is as it was or whole (each is written by renaming).")


def make(argv):
    unknown = [a for a in argv if a != "--write"]
    if unknown:
        sys.exit(f"error: unknown argument {unknown[0]!r}. usage: python3 tasks.py tables [--write]")
    try:
        tables = readme_tables()
    except UnreadableRun as error:
        sys.exit(f"error: {error}")
    if "--write" not in argv:
        for name, table in tables.items():
            print(f"<!-- table: {name} -->\n{table}\n<!-- end: {name} -->\n")
        return
    try:  # every document is checked before any is written
        made = {doc: with_tables((REPO / doc).read_text(), tables, doc) for doc in DOCUMENTS if (REPO / doc).exists()}
    except UnreadableRun as error:
        sys.exit(f"error: {error}")
    for document, text in made.items():
        write_text(REPO / document, text)
    print(f"wrote {len(tables)} tables into {', '.join(DOCUMENTS)}")


if __name__ == "__main__":
    main(sys.argv[1:])
