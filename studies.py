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

BINARIZED = {"likelihood": "binarized", "iw_samples": 5000}  # the literature's setting and estimate
STUDIES = {
    "seeds": {f"seed{seed}": {"seed": seed} for seed in range(5)},
    "likelihoods": {
        "bernoulli": {"likelihood": "bernoulli"},
        "continuous_bernoulli": {"likelihood": "continuous_bernoulli"},
        "binarized": BINARIZED,
    },
    "latent_sizes": {f"latent{size}": {"latent_dim": size} for size in (2, 5, 10, 20, 50)},
    "beta": {f"beta{beta:g}": {"beta": beta} for beta in (0.5, 1.0, 2.0, 4.0)},
    "objectives": {
        "elbo": BINARIZED,
        "elbo_warmup": {**BINARIZED, "kl_warmup": 10},
        "iwae5": {**BINARIZED, "objective": "iwae", "train_samples": 5},
        "iwae50": {**BINARIZED, "objective": "iwae", "train_samples": 50},
    },
    "budget": {f"epochs{n}": {**BINARIZED, "epochs": n} for n in (20, 60, 180, 540)},
}
# Settings of the machine, not of the experiment: a study passes these through from the environment.
MACHINE_SETTINGS = ("VAE_DATA_DIR", "VAE_DEVICE", "VAE_DETERMINISTIC")
# Published importance-weighted estimates of -log p(x) on binarised MNIST, one stochastic layer.
PUBLISHED = [
    ("Burda et al. 2015, table 1 (VAE, k = 1 training)", 86.76, "784-200-200-50, 3,280 passes over the data, k = 5000"),
    ("Rezende & Mohamed 2015 (DLGM, diagonal Gaussian posterior)", 89.9, "reported as a bound: -log p(x) <= 89.9"),
]
# Burda et al. 2016, table 1, one stochastic layer (784-200-200-50, 3,280 passes): -log p(x), active units
BURDA = {("elbo", 1): (86.76, 19), ("iwae", 5): (85.54, 22), ("iwae", 50): (84.78, 25)}
BURDA_MODEL = "784-200-200-50 (tanh), 3,280 passes, Adam with a decaying rate, k = 5000"


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
    """Run every run of study `name` that is not complete yet, then write its summary.

    A run with the settings of a complete run elsewhere in `results/` is copied from it (the same
    settings give the same numbers, bit for bit); a run that differs from an earlier run of the
    study only by more epochs continues from that run's checkpoint (the same numbers as training
    from scratch, as resuming does).
    """
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
        same = same_run_elsewhere(overrides, root)
        if same is not None:
            copy_run(same, folder)
            timings[run] = timing_of(same)
            run_support.write_json(timings_path, timings)
            echo(f"{label}: the same settings as {same.relative_to(run_support.REPO)}, copied from there")
            continue
        env = {**base, **{f"VAE_{k.upper()}": str(v) for k, v in overrides.items()}, "VAE_RESULTS_DIR": str(folder)}
        shorter = shorter_run(runs, overrides, root)
        if shorter is not None:
            folder.mkdir(parents=True)
            shutil.copy2(shorter / "checkpoint.pt", folder / "checkpoint.pt")
            env["VAE_RESUME"] = "1"
        echo(f"{label}: running ({', '.join(f'{k}={v}' for k, v in overrides.items())})")
        if shorter is not None:
            echo(f"    continuing from {shorter.name}'s checkpoint")
        started = time.perf_counter()
        try:
            headless.execute(env, echo=epoch_lines)
        except headless.RunFailed as error:
            if error.code == headless.EXIT_INTERRUPTED:
                raise KeyboardInterrupt from None
            raise StudyFailed(f"study {name}: run {run} failed: {error}") from None
        except (run_support.SettingsError, run_support.CheckpointError) as error:
            raise StudyFailed(f"study {name}: run {run} refused: {error}") from None
        seconds = time.perf_counter() - started
        timings[run] = round(seconds + (timings.get(shorter.name, 0) if shorter else 0), 1)
        run_support.write_json(timings_path, timings)
        echo(f"{label}: finished in {seconds:.0f} s, test loss {load_metrics(folder)['test_loss']:.2f}")
    summarize(name, root)
    return root


def same_run_elsewhere(overrides: dict, root: Path):
    """A complete run with exactly these settings in another folder of results/, or None."""
    record = run_support.REPO / run_support.RECORD
    for metrics in sorted(record.glob("**/metrics.json")):
        if root not in metrics.parents and is_complete(metrics.parent, overrides):
            return metrics.parent
    return None


def copy_run(source: Path, folder: Path):
    """The committed files of a run (metrics.json and figures), into `folder`."""
    folder.mkdir(parents=True)
    for path in [source / "metrics.json", *source.glob("*.png")]:
        shutil.copy2(path, folder / path.name)


def timing_of(folder: Path) -> float:
    path = folder.parent / "timings.json"
    return json.loads(path.read_text()).get(folder.name, 0.0) if path.exists() else 0.0


def shorter_run(runs: dict, overrides: dict, root: Path):
    """The longest earlier run of the study that differs only in fewer epochs and left its checkpoint."""
    epochs = overrides.get("epochs", run_support.SPEC["epochs"])
    candidates = []
    for run, other in runs.items():
        fewer = other.get("epochs", run_support.SPEC["epochs"])
        same_otherwise = {k: v for k, v in other.items() if k != "epochs"} == {
            k: v for k, v in overrides.items() if k != "epochs"
        }
        finished = (root / run / "checkpoint.pt").exists() and is_complete(root / run, other)
        if same_otherwise and fewer < epochs and finished:
            candidates.append((fewer, root / run))
    return max(candidates)[1] if candidates else None


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
def seeds_table(runs: dict, minutes=None) -> str:
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


def latent_sizes_table(runs: dict, minutes=None) -> str:
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
    seconds = sum(load_timings(run_support.REPO / run_support.STUDIES / name).values())
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


def beta_table(runs: dict, minutes=None) -> str:
    lines = [
        "| beta | distortion: test reconstruction | rate: test KL | test loss (beta = 1) "
        "| importance-weighted bound (k) | active units |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for m in sorted(runs.values(), key=lambda m: m["settings"].get("beta", 1.0)):
        e = m["evaluation"]
        lines.append(
            f"| {m['settings'].get('beta', 1.0):g} | {e['test_recon']:.2f} | {e['test_kl']:.2f} | {m['test_loss']:.2f} "
            f"| {e['iw_bound']:.2f} ({e['iw_samples']}) | {e['active_units']} of {m['settings']['latent_dim']} |"
        )
    return "\n".join(lines)


def beta_figure(runs: dict, path: Path):
    import matplotlib.pyplot as plt
    from matplotlib.image import imread

    from vae_utils import save_figure

    rows = sorted(runs.items(), key=lambda kv: kv[1]["settings"].get("beta", 1.0))
    fig = plt.figure(figsize=(12, 6.2))
    ax = fig.add_subplot(1, 2, 1)
    rate = [m["evaluation"]["test_kl"] for _, m in rows]
    distortion = [m["evaluation"]["test_recon"] for _, m in rows]
    ax.plot(rate, distortion, "o-")
    for (_, m), r, d in zip(rows, rate, distortion, strict=True):
        ax.annotate(f"beta = {m['settings'].get('beta', 1.0):g}", (r, d), textcoords="offset points", xytext=(6, 4))
    ax.set(xlabel="rate: KL(q(z|x) || p(z)), nats per image", ylabel="distortion: -log p(x|z), nats per image")
    ax.set_title("rate and distortion on the test set (Alemi et al. 2018)")
    for i, (run, m) in enumerate(rows):
        sample = fig.add_subplot(2, 4, 3 + (i // 2) * 4 + i % 2)
        sample.imshow(imread(path.parent / run / "samples.png"), cmap="gray")
        sample.set_title(f"beta = {m['settings'].get('beta', 1.0):g}", fontsize=10)
        sample.axis("off")
    save_figure(fig, path)
    plt.close(fig)


def objectives_table(runs: dict, minutes=None) -> str:
    minutes = minutes or {}
    lines = [
        "| objective (binarised MNIST, 20 epochs) | -log p(x), k = 5000 | test -ELBO | active units | minutes "
        "| Burda et al. 2016: -log p(x) (active units) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run, m in runs.items():
        s, e = m["settings"], m["evaluation"]
        objective, k = s.get("objective", "elbo"), s.get("train_samples", 1)
        label = "ELBO" if objective == "elbo" else f"IWAE, k = {k}"
        if s.get("kl_warmup"):
            label += f", KL warm-up over {s['kl_warmup']} epochs"
        published = BURDA.get((objective, k)) if not s.get("kl_warmup") else None
        lines.append(
            f"| {label} | {-e['iw_bound']:.2f} ± {e['iw_bound_se']:.2f} | {m['test_loss']:.2f} "
            f"| {e['active_units']} of {s['latent_dim']} | {minutes.get(run, 0) / 60:.0f} "
            f"| {f'{published[0]:.2f} ({published[1]})' if published else '-'} |"
        )
    lines.append(f"\nBurda et al.'s model: {BURDA_MODEL}. This repo's: 784-512-256-20 (ReLU), 20 epochs, Adam 1e-3.")
    return "\n".join(lines)


def budget_table(runs: dict, minutes=None) -> str:
    minutes = minutes or {}
    lines = [
        "| passes over the data | -log p(x), k = 5000 | test -ELBO | train -ELBO (last epoch) "
        "| active units | minutes |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for run, m in sorted(runs.items(), key=lambda kv: kv[1]["settings"]["epochs"]):
        e = m["evaluation"]
        lines.append(
            f"| {m['settings']['epochs']} | {-e['iw_bound']:.2f} ± {e['iw_bound_se']:.2f} | {m['test_loss']:.2f} "
            f"| {m['epochs'][-1]['train_loss']:.2f} | {e['active_units']} | {minutes.get(run, 0) / 60:.0f} |"
        )
    lines.append(f"| Burda et al. 2016, VAE: 3,280 | {BURDA[('elbo', 1)][0]:.2f} | | | {BURDA[('elbo', 1)][1]} | |")
    return "\n".join(lines)


def budget_figure(runs: dict, path: Path):
    import matplotlib.pyplot as plt

    from vae_utils import save_figure

    rows = sorted(runs.values(), key=lambda m: m["settings"]["epochs"])
    longest = rows[-1]["epochs"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    epochs = [row["epoch"] for row in longest]
    ax.plot(epochs, [row["train_loss"] for row in longest], "-", color="C0", lw=0.8, label="train -ELBO, per epoch")
    ax.plot(epochs, [row["test_loss"] for row in longest], "-", color="C1", lw=0.8, label="test -ELBO, per epoch")
    passes = [m["settings"]["epochs"] for m in rows]
    ax.plot(passes, [-m["evaluation"]["iw_bound"] for m in rows], "o-", color="C3", label="test -log p(x), k = 5000")
    ax.axhline(BURDA[("elbo", 1)][0], color="grey", ls="--", label="Burda et al. 2016, VAE (3,280 passes)")
    ax.set(xscale="log", xlabel="passes over the training data", ylabel="nats per image")
    ax.set_title("does the gap close with more training?")
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)


SUMMARIES = {  # study -> (table, figure file and function)
    "seeds": (seeds_table, "test_loss_by_seed.png", seeds_figure),
    "likelihoods": (lambda runs, minutes=None: likelihoods_table(runs) + "\n\n" + published_table(runs), None, None),
    "latent_sizes": (latent_sizes_table, "latent_size.png", latent_sizes_figure),
    "beta": (beta_table, "rate_distortion.png", beta_figure),
    "objectives": (objectives_table, None, None),
    "budget": (budget_table, "budget.png", budget_figure),
}


def summarize(name, root=None) -> str:
    """Rebuild study `name`'s table and figure from its runs' metrics.json files; return the table."""
    root = Path(root or run_support.REPO / run_support.STUDIES / name)
    runs = {p.parent.name: load_metrics(p.parent) for p in sorted(root.glob("*/metrics.json"))}
    order = list(STUDIES.get(name, {}))
    runs = dict(sorted(runs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    table_of, figure, draw = SUMMARIES.get(name, (seeds_table, None, None))
    table = table_of(runs, load_timings(root))
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
        not_yet = f"(study `{name}` not run yet: `python3 tasks.py study {name}`)"
        tables[name] = table_of(runs, load_timings(studies / name)) if runs else not_yet
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
