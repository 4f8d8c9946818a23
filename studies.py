"""Studies: the notebook run once per configuration, and README's result tables from their metrics.

    python3 tasks.py study seeds          # run (or finish) a study, then rebuild its summary
    python3 tasks.py study seeds --summary   # rebuild the summary from the runs' metrics.json only
    python3 tasks.py tables [--write]     # README's result tables from the committed metrics.json files

A study is a list of setting overrides (`STUDIES`); each run executes the notebook headless with
those `VAE_*` settings into `results/studies/NAME/RUN/`. A run whose metrics.json is there and was
made with the same settings is not run again; any other run starts from scratch in an empty folder.
"""

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import headless
import run_support

STUDIES = {
    "seeds": {f"seed{seed}": {"seed": seed} for seed in range(5)},
    "likelihoods": {
        "bernoulli": {"likelihood": "bernoulli"},
        "continuous_bernoulli": {"likelihood": "continuous_bernoulli"},
        "binarized": {"likelihood": "binarized", "iw_samples": 5000},
    },
    "latent_sizes": {f"latent{size}": {"latent_dim": size} for size in (2, 5, 10, 20, 50)},
}
# Settings of the machine, not of the experiment: a study passes these through from the environment.
MACHINE_SETTINGS = ("VAE_DATA_DIR", "VAE_DEVICE", "VAE_DETERMINISTIC")
# Published importance-weighted estimates of -log p(x) on binarised MNIST, one stochastic layer.
PUBLISHED = [
    ("Burda et al. 2015, table 1 (VAE, k = 1 training)", 86.76, "784-200-200-50, 3,280 passes over the data, k = 5000"),
    ("Rezende & Mohamed 2015 (DLGM, diagonal Gaussian posterior)", 89.9, "reported as a bound: -log p(x) <= 89.9"),
]


class StudyFailed(Exception):
    """A run of a study failed; the finished runs are kept."""


def is_complete(folder: Path, overrides: dict) -> bool:
    """metrics.json is there, complete, and made with these settings."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        made_with, _ = metrics["settings"], metrics["evaluation"]["iw_bound"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return not run_support._differences(made_with, {**run_support.SPEC, **overrides}, run_support.SPEC)


def run_study(name, runs=None, root=None, environ=None, echo=None) -> Path:
    """Run every run of study `name` that is not complete yet, then write its summary."""
    runs = STUDIES[name] if runs is None else runs
    echo = echo or (lambda line: print(line, flush=True))
    root = Path(root or run_support.REPO / run_support.STUDIES / name)
    environ = dict(os.environ if environ is None else environ)
    base = {k: v for k, v in environ.items() if not k.startswith("VAE_") or k in MACHINE_SETTINGS}
    timings_path = root / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for number, (run, overrides) in enumerate(runs.items(), start=1):
        folder = root / run
        label = f"[{number}/{len(runs)}] {name}/{run}"
        if is_complete(folder, overrides):
            echo(f"{label}: done already, kept")
            continue
        shutil.rmtree(folder, ignore_errors=True)  # half-finished or stale: start from scratch
        env = {**base, **{f"VAE_{k.upper()}": str(v) for k, v in overrides.items()}, "VAE_RESULTS_DIR": str(folder)}
        echo(f"{label}: running ({', '.join(f'{k}={v}' for k, v in overrides.items())})")
        started = time.perf_counter()
        try:
            headless.execute(env, echo=epoch_lines)
        except headless.RunFailed as error:
            if error.code == headless.EXIT_INTERRUPTED:
                raise KeyboardInterrupt from None
            raise StudyFailed(f"study {name}: run {run} failed: {error}") from None
        except (run_support.SettingsError, run_support.CheckpointError) as error:
            raise StudyFailed(f"study {name}: run {run} refused: {error}") from None
        timings[run] = round(time.perf_counter() - started, 1)
        run_support.write_json(timings_path, timings)
        echo(f"{label}: finished in {timings[run]:.0f} s, test loss {load_metrics(folder)['test_loss']:.2f}")
    summarize(name, root)
    return root


def epoch_lines(text):
    """Of what a run prints, show the one line per epoch."""
    for line in text.splitlines():
        if line.startswith("epoch "):
            print(f"    {line}", flush=True)


def load_metrics(folder: Path) -> dict:
    return json.loads((Path(folder) / "metrics.json").read_text())


def mean_and_sd(values):
    """Mean and sample standard deviation (n - 1); the sd of a single value is 0."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# ---- summaries: tables and figures from metrics.json alone -----------------------------------
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
        mean, sd = mean_and_sd(values)
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


def timing_line(name) -> str:
    path = run_support.REPO / run_support.STUDIES / name / "timings.json"
    seconds = sum(json.loads(path.read_text()).values()) if path.exists() else 0
    return f"{len(STUDIES[name])} runs, {seconds / 60:.0f} minutes of wall time"


def seeds_figure(runs: dict, path: Path):
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from vae_utils import save_figure

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
    import matplotlib.pyplot as plt

    from vae_utils import save_figure

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


SUMMARIES = {  # study -> (table, figure file and function)
    "seeds": (seeds_table, "test_loss_by_seed.png", seeds_figure),
    "likelihoods": (lambda runs: likelihoods_table(runs) + "\n\n" + published_table(runs), None, None),
    "latent_sizes": (latent_sizes_table, "latent_size.png", latent_sizes_figure),
}


def summarize(name, root=None) -> str:
    """Rebuild study `name`'s table and figure from its runs' metrics.json files; return the table."""
    root = Path(root or run_support.REPO / run_support.STUDIES / name)
    runs = {p.parent.name: load_metrics(p.parent) for p in sorted(root.glob("*/metrics.json"))}
    order = list(STUDIES.get(name, {}))
    runs = dict(sorted(runs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    table_of, figure, draw = SUMMARIES.get(name, (seeds_table, None, None))
    table = table_of(runs)
    run_support.write_text(root / "summary.md", f"# Study `{name}`\n\n{table}\n")
    if figure:
        draw(runs, root / figure)
    return table


# ---- README's tables --------------------------------------------------------------------------
def readme_tables() -> dict:
    """Every generated block of README.md, by name, from the committed metrics.json files."""
    record = run_support.REPO / run_support.RECORD
    studies = run_support.REPO / run_support.STUDIES
    tables = {"main": main_table(load_metrics(record)), "settings": run_support.settings_table()}
    bench = run_support.REPO / "benchmarks" / "results.json"
    if bench.exists():
        from benchmarks.benchmark import table

        tables["bench"] = table(json.loads(bench.read_text()))
    for name, (table_of, _, _) in SUMMARIES.items():
        runs = {
            run: load_metrics(studies / name / run)
            for run in STUDIES[name]
            if (studies / name / run / "metrics.json").exists()
        }
        tables[name] = table_of(runs) if runs else f"(study `{name}` not run yet: `python3 tasks.py study {name}`)"
        tables[f"{name}-time"] = timing_line(name)
    return tables


def readme_with_tables(text: str, tables: dict) -> str:
    """README text with each `<!-- table: NAME -->...<!-- end -->` block replaced by `tables[NAME]`."""
    for name, table in tables.items():
        begin, end = f"<!-- table: {name} -->", f"<!-- end: {name} -->"
        if begin in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            separator = "\n" if "\n" in table else ""
            text = f"{head}{begin}{separator}{table}{separator}{end}{tail}"
    return text


def main(argv):
    if argv and argv[0] == "--tables":
        tables = readme_tables()
        if "--write" in argv:
            readme = run_support.REPO / "README.md"
            run_support.write_text(readme, readme_with_tables(readme.read_text(), tables))
            print(f"wrote {len(tables)} tables into {readme}")
        else:
            for name, table in tables.items():
                print(f"<!-- table: {name} -->\n{table}\n<!-- end: {name} -->\n")
        return
    if not argv or argv[0] not in STUDIES:
        sys.exit(f"usage: python3 tasks.py study {{{','.join(STUDIES)}}} [--summary]")
    name = argv[0]
    if "--summary" in argv:
        print(summarize(name))
        return
    try:
        run_study(name, environ={**os.environ})
    except StudyFailed as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(f"study {name} interrupted: finished runs are kept; run the same command to continue.")
    print(summarize(name))


if __name__ == "__main__":
    main(sys.argv[1:])
