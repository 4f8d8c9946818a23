"""README's and docs' generated blocks, from the committed metrics.json files and the benchmark's figures.

    python3 tasks.py tables [--write]     # every generated block of README.md and docs/, from the committed files

A generated block is written `<!-- table: NAME -->...<!-- end: NAME -->` in README.md or a page of
docs/; `--write` rewrites them, and a test checks that the committed text is what the code makes.
Each study's own table comes from summaries.py.
"""

from harness import stopped_in_one_line

if __name__ == "__main__":
    stopped_in_one_line("before any table was made: every document is as it was")  # the imports take seconds

import argparse
import re
import sys

from pydantic import BaseModel, FiniteFloat, TypeAdapter

from harness import PREFIX, REPO, stop_by_raising
from harness.files import UnreadableRun, read_json, read_metrics, read_timings, write_text
from harness.folders import RECORD, STUDY_RECORD
from harness.plans import STUDIES
from harness.settings import SETTINGS
from harness.summaries import study_table, table

DOCUMENTS = ["README.md", "docs/studies.md", "docs/settings.md", "docs/performance.md"]
BENCHMARK = REPO / "benchmarks" / "results.json"


class Contender(BaseModel):  # the benchmark's results.json, as its tables read it
    seconds_per_epoch: FiniteFloat
    images: int
    test_loss: FiniteFloat | None = None


class Figures(BaseModel):
    machine: str
    epochs: int
    rounds: int
    peak_gflops: FiniteFloat
    contenders: dict[str, Contender]
    ratios: dict[str, dict[str, FiniteFloat]]


def main_table(metrics: dict) -> str:
    e, s = metrics["evaluation"], metrics["settings"]
    rows = [
        ["test loss (negative ELBO, analytic KL)", f"{metrics['test_loss']:.2f}"],
        ["of which reconstruction / KL", f"{e['test_recon']:.2f} / {e['test_kl']:.2f}"],
        ["ELBO, one sample per image (k = 1)", f"{e['elbo']:.2f} ± {e['elbo_se']:.2f}"],
        [
            f"importance-weighted bound, k = {e['iw_samples']} (Burda et al. 2015)",
            f"{e['iw_bound']:.2f} ± {e['iw_bound_se']:.2f}",
        ],
        [f"active units (Var μ > {e['active_unit_threshold']})", f"{e['active_units']} of {s['latent_dim']}"],
    ]
    header = [f"after {len(metrics['epochs'])} epochs (test set, {s['test_size']:,} images, nats per image)", "value"]
    return table(header, rows, "lr")


def timing_line(name) -> str:
    timings, planned = read_timings(STUDY_RECORD / name), len(STUDIES[name])
    done = sum(run in timings and (STUDY_RECORD / name / run / "metrics.json").exists() for run in STUDIES[name])
    runs = f"{planned} runs" if done == planned else f"{done} of {planned} runs"
    return f"{runs}, {sum(timings.values()) / 60:.0f} minutes of wall time"


def settings_table() -> str:
    """The table of settings, from `settings.SETTINGS`."""

    def shown(value):
        return repr(value) if isinstance(value, str | bool) else f"{value:_}" if isinstance(value, int) else str(value)

    rows = [[f"`{name}` (`{PREFIX}{name.upper()}`)", f"`{shown(setting.default)}`", setting.help, setting.accepts]
            for name, setting in SETTINGS.items()]  # fmt: skip
    return table(["setting", "default", "what it does", "accepts"], rows, "llll")


def benchmark_table(figures: dict) -> str:
    """The benchmark's tables: each contender's seconds per epoch, then each ratio with its range over rounds."""
    epochs, rounds, rows, ratios = figures["epochs"], figures["rounds"], [], []
    for name, row in figures["contenders"].items():
        rows.append([name + (f" ({row['images']:,} images)" if row["images"] != 60_000 else ""),
                     f"{row['seconds_per_epoch']:.2f}", f"{row['images'] / row['seconds_per_epoch']:,.0f}",
                     f"{row['test_loss']:.2f}" if "test_loss" in row else ""])  # fmt: skip
    for name, ratio in figures["ratios"].items():
        shown = "{:.0%}" if "share" in name else "{:.2f}x"
        ratios.append(
            [name, shown.format(ratio["median"]), f"{shown.format(ratio['low'])} to {shown.format(ratio['high'])}"]
        )
    header = [f"contender ({rounds} rounds of {epochs} epochs, interleaved)", "s / epoch (median)", "images / s",
              f"test loss after {epochs} epochs"]  # fmt: skip
    return "\n".join([
        table(header, rows, "lrrr"), "",
        table(["ratio, per round", "median", f"range over {rounds} rounds"], ratios, "lrr"),
        f"\nMeasured on {figures['machine']}; peak GEMM {figures['peak_gflops']:.0f} GFLOP/s (2048³).",
    ])  # fmt: skip


def costs_table(figures: dict) -> str:
    """What a run of each objective costs on the benchmark's machine, from its measured epochs (60,000 images)."""
    rows = []
    for name, row in figures["contenders"].items():
        if name.startswith("this repo"):
            epoch = row["seconds_per_epoch"] * 60_000 / row["images"]
            label = name.removeprefix("this repo, ") if "IWAE" in name else "ELBO (the spec)"
            rows.append([label, f"{epoch:.1f}", f"{20 * epoch / 60:.0f} min", f"{540 * epoch / 3600:.1f} h"])
    header = ["objective (60,000 images an epoch)", "s / epoch", "20 epochs", "540 epochs"]
    return table(header, rows, "lrrr") + "\n\nTraining alone: a study's k = 5000 evaluation comes on top."


def readme_tables() -> dict:
    """Every generated block of README.md and docs/, by name, from the committed files."""
    tables = {"main": main_table(read_metrics(RECORD)), "settings": settings_table()}
    if BENCHMARK.exists():
        figures = read_json(BENCHMARK, TypeAdapter(Figures)).model_dump(exclude_none=True)
        tables["bench"], tables["costs"] = benchmark_table(figures), costs_table(figures)
    for name in STUDIES:
        folder = STUDY_RECORD / name
        runs = {run: read_metrics(folder / run) for run in STUDIES[name] if (folder / run / "metrics.json").exists()}
        tables[name] = study_table(name, runs, read_timings(folder)) if runs else "(not run yet)"
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
    for name, made in tables.items():
        if "<!--" in made or "-->" in made:
            raise UnreadableRun(f"the table {name} holds an HTML comment, from a record: refused, nothing written.")
        separator = "\n" if "\n" in made else ""
        block = f"<!-- table: {name} -->{separator}{made}{separator}<!-- end: {name} -->"
        text = re.sub(
            rf"<!-- table: {name} -->.*?<!-- end: {name} -->", lambda _, block=block: block, text, flags=re.DOTALL
        )
    return text


def main(argv):
    stop_by_raising()
    try:
        make(argv)
    except UnreadableRun as error:  # a record, timings or document it cannot use: nothing was written
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as stop:
        print(
            f"{str(stop) or 'stopped (Ctrl-C)'}: each document is as it was or whole (each is written by renaming).",
            file=sys.stderr,
        )
        sys.exit(getattr(stop, "code", 130))


def make(argv):
    parser = argparse.ArgumentParser(prog="python3 tasks.py tables", description="README's and docs' generated tables.")
    parser.add_argument("--write", action="store_true", help="write them into the documents (else print them)")
    write = parser.parse_args(argv).write
    tables = readme_tables()
    if not write:
        for name, made in tables.items():
            print(f"<!-- table: {name} -->\n{made}\n<!-- end: {name} -->\n")
        return
    # every document is checked before any is written
    made = {
        doc: with_tables((REPO / doc).read_text(encoding="utf-8"), tables, doc)
        for doc in DOCUMENTS
        if (REPO / doc).exists()
    }
    for document, text in made.items():
        write_text(REPO / document, text)
    print(f"wrote {len(tables)} tables into {', '.join(DOCUMENTS)}")


if __name__ == "__main__":
    main(sys.argv[1:])
