"""studies and summaries: the runner continues where it stopped, keeps a finished run and says which
code made it, names a failing run; summaries and README's tables come from the committed metrics.json
files, say which code made each row, and refuse a missing or broken one."""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import distributed
import numpy as np
import psutil
import pytest
import torch

from conftest import (
    EVALUATION,
    QUICK,
    REPO,
    history_row,
    holding_lock,
    tasks,
    wait_until,
    without_settings,
)
from harness import cluster, files, fingerprint, studies, summaries, tables
from harness.settings import SETTINGS


@pytest.fixture()
def study_env(mnist_root):
    """A study's environment: the verified data, and no other VAE_* variable (a study sets its runs' own)."""
    return {**without_settings(), "VAE_DATA_DIR": str(mnist_root)}


SMALL = {"epochs": 1, **QUICK}
TWO_RUNS = {"seed0": {"seed": 0, **SMALL}, "seed1": {"seed": 1, **SMALL}}


@pytest.mark.slow
def test_the_runner_runs_each_run_once_continues_and_names_a_failing_run(study_env, tmp_path):
    said = []
    studies.run_study("tiny", TWO_RUNS, tmp_path, study_env, echo=said.append)
    for run in TWO_RUNS:
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["settings"]["seed"] == TWO_RUNS[run]["seed"] and len(metrics["epochs"]) == 1
        assert metrics["provenance"]["threads"] == torch.get_num_threads()  # not Dask's one thread per worker
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {"seed0", "seed1"}
    finished = [line.split(":")[0] for line in said if ": finished on " in line]
    assert finished == ["tiny/seed0", "tiny/seed1"]  # in the plan's order, on the one worker

    made = {run: (tmp_path / run / "metrics.json").stat().st_mtime_ns for run in TWO_RUNS}
    said.clear()
    studies.run_study("tiny", TWO_RUNS, tmp_path, study_env, echo=said.append)
    assert said[1:] == ["[1/2] tiny/seed0: done already, kept", "[2/2] tiny/seed1: done already, kept"]
    assert made == {run: (tmp_path / run / "metrics.json").stat().st_mtime_ns for run in TWO_RUNS}

    (tmp_path / "seed1" / "metrics.json").unlink()  # as if interrupted: a checkpoint, no metrics
    said.clear()
    studies.run_study("tiny", TWO_RUNS, tmp_path, study_env, echo=said.append)
    assert said[1] == "[1/2] tiny/seed0: done already, kept" and "tiny/seed1: finished on tcp://127.0.0.1" in said[-1]
    assert (tmp_path / "seed1" / "metrics.json").is_file()
    assert made["seed0"] == (tmp_path / "seed0" / "metrics.json").stat().st_mtime_ns

    failing = {**TWO_RUNS, "broken": {"seed": 2, **SMALL, "test_size": 5}}
    with pytest.raises(
        studies.StudyFailed, match=r"study tiny: run broken refused: test_size must be .*got 5 \(from study tiny\)"
    ):
        studies.run_study("tiny", failing, tmp_path, study_env, echo=said.append)
    assert made["seed0"] == (tmp_path / "seed0" / "metrics.json").stat().st_mtime_ns


def constructed_run(folder, seed, test_loss, iw_bound, active, latent_dim=20, **overrides):
    epochs = [history_row(e, test_loss + 10 / e) for e in (1, 2, 3)]
    epochs[-1]["test_loss"] = test_loss
    settings = {**{name: s.default for name, s in SETTINGS.items()}, "seed": seed, "latent_dim": latent_dim}
    settings.update(overrides)
    evaluation = {
        **EVALUATION,
        "test_loss": test_loss,
        "iw_bound": iw_bound,
        "iw_bound_se": 0.25,
        "iw_samples": 50,
        "active_units": active,
        "kl_per_dimension": [0.5] * latent_dim,
    }
    metrics = {
        "settings": settings,
        "code": fingerprint.code_of(),
        "provenance": {"git_commit": "0123456789abcdef", "git_dirty": seed == 1},
        "finished": True,
        "epochs": epochs,
        "test_loss": test_loss,
        "evaluation": evaluation,
    }
    files.write_json(folder / "metrics.json", metrics)


def test_the_seeds_summary_gives_every_run_then_the_mean_and_sample_standard_deviation(tmp_path):
    losses, bounds, active = (
        [100.0, 102.0, 104.0, 101.0, 103.0],
        [-96.0, -97.0, -99.0, -97.0, -96.0],
        [12, 12, 13, 12, 11],
    )
    for seed in range(5):
        constructed_run(tmp_path / f"seed{seed}", seed, losses[seed], bounds[seed], active[seed])
    constructed_run(tmp_path / "seed9", 9, 90.0, -90.0, 20)  # not in the plan: neither a row nor in the mean
    table = summaries.summarize("seeds", tmp_path)
    assert "seed9" not in table and "seed = 9" not in table
    assert "| seed0 | none (the spec) | 100.00 |" in table and "| seed3 | seed = 3 | 101.00 |" in table
    assert "| 97.00 ± 0.25 | 50 | 12 of 20 |" in table  # seed 1's -log p(x) bound, its se and k
    sd_loss, sd_bound = statistics.stdev(losses), statistics.stdev(bounds)  # the sample sd (n - 1): 1.58, 1.22
    assert f"| mean ± sd over 5 seeds | | 102.00 ± {sd_loss:.2f} | | 97.00 ± {sd_bound:.2f} | | 12.0 |" in table
    assert (tmp_path / "summary.md").read_text().count("|") > 10 and not list(tmp_path.glob("*.png"))


def test_the_objectives_summary_gives_each_rows_mean_and_sd_over_seeds_and_which_differences_exceed_them(
    tmp_path,
):
    nll = {"elbo": [94.1, 94.6, 93.9], "elbo_warmup": [91.5, 91.2, 91.9], "iwae5": [89.9, 90.4, 89.5],
           "iwae50": [89.6, 89.0, 90.1]}  # fmt: skip
    for run, settings in studies.STUDIES["objectives"].items():
        row, seed = run.split("_seed")[0], settings.get("seed", 0)
        overrides = {k: v for k, v in settings.items() if k != "seed"}
        constructed_run(tmp_path / run, seed, nll[row][seed] + 5, -nll[row][seed], 12, **overrides)
    table = summaries.summarize("objectives", tmp_path)
    for row, label in (("elbo", "ELBO"), ("iwae50", "IWAE, k = 50")):
        mean, sd = np.mean(nll[row]), np.std(nll[row], ddof=1)  # numpy as the oracle: the sample sd
        assert f"| {label} | 0, 1, 2 | {mean:.2f} ± {sd:.2f} | 0.25 | {mean + 5:.2f} ± {sd:.2f} |" in table
    finding = {
        tuple(line.split(" | ")[:2]): line.split(" | ")[-1] for line in table.splitlines() if line.endswith("its sd |")
    }
    assert finding["| ELBO", "ELBO, KL warm-up over 10 epochs"] == "yes: more than twice its sd |"
    assert finding["| IWAE, k = 5", "IWAE, k = 50"] == "no: within twice its sd |"  # 0.37 apart, sd 0.43
    assert (tmp_path / "objectives.png").is_file()
    clean, dirty = ([run for run in studies.STUDIES["objectives"] if run.endswith("_seed1") == d] for d in (0, 1))
    assert table.endswith(f"Made by commit 0123456: {', '.join(clean)}; commit 0123456 and local changes: "
                          f"{', '.join(dirty)}.")  # fmt: skip


def test_the_dreg_summary_stands_beside_the_committed_iwae5_rows_and_the_published_ones(tmp_path):
    nll = {"iwae5_dreg": [85.5, 85.4, 85.6], "iwae5_dreg_eps": [85.2, 85.3, 85.1]}
    for run, settings in studies.STUDIES["dreg540"].items():
        row, seed = run.split("_seed")[0], settings.get("seed", 0)
        overrides = {k: v for k, v in settings.items() if k != "seed"}
        constructed_run(tmp_path / run, seed, nll[row][seed] + 7, -nll[row][seed], 17, **overrides)
    table = summaries.summarize("dreg540", tmp_path)
    committed = [-files.read_metrics(REPO / "results/studies/burda540" / run)["evaluation"]["iw_bound"]
                 for run in ("iwae5", "iwae5_seed1", "iwae5_seed2")]  # fmt: skip
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if "| 0, 1, 2 |" in line}
    assert f"| 0, 1, 2 | {np.mean(committed):.2f} ± {np.std(committed, ddof=1):.2f} |" in rows["| IWAE, k = 5"]
    assert "| 0, 1, 2 | 85.50 ± 0.10 |" in rows["| IWAE, k = 5, DReG"]
    assert "| 0, 1, 2 | 85.20 ± 0.10 |" in rows["| IWAE, k = 5, DReG, Adam's ε 0.0001"]
    assert "| nbip/IWAE, a TensorFlow 2 reproduction of Burda et al. | 5 | 85.18 | 84.90 |" in table
    assert "The IWAE k = 5 row is study burda540's. Made by commit" in table
    assert (tmp_path / "dreg540.png").is_file()


def test_a_study_without_seeds_in_its_rows_gives_each_run_in_the_plans_order_naming_what_it_changes(tmp_path):
    for size, loss in ((20, 100.5), (2, 140.0), (50, 100.9), (5, 110.0), (10, 102.0)):
        constructed_run(tmp_path / f"latent{size}", 0, loss, -loss + 3, min(size, 12), latent_dim=size)
    rows = [line.split(" | ") for line in summaries.summarize("latent_sizes", tmp_path).splitlines()[2:7]]
    assert [row[0] for row in rows] == ["| latent2", "| latent5", "| latent10", "| latent20", "| latent50"]
    assert [row[1] for row in rows] == ["latent_dim = 2", "latent_dim = 5", "latent_dim = 10", "none (the spec)",
                                        "latent_dim = 50"]  # fmt: skip
    assert rows[0][2:7] == ["140.00", "1.00 / 0.50", "137.00 ± 0.25", "50", "2 of 2"]
    assert "mean ± sd" not in "".join(map(str, rows))


def test_readme_and_docs_tables_are_what_the_code_makes_of_the_committed_files():
    texts = {doc: (REPO / doc).read_text() for doc in tables.DOCUMENTS}
    generated = tables.readme_tables()
    for name in generated:
        assert any(f"<!-- table: {name} -->" in text for text in texts.values()), f"no generated block {name}"
    for doc, text in texts.items():
        assert tables.with_tables(text, generated) == text, f"{doc}: run `python3 tasks.py tables --write`"


def test_a_summary_over_fewer_runs_than_the_study_defines_is_refused_and_not_written(tmp_path):
    for seed in (0, 1, 2, 4):  # seed3 missing
        constructed_run(tmp_path / f"seed{seed}", seed, 100.0 + seed, -97.0, 12)
    with pytest.raises(files.UnreadableRun, match=r"seed3/metrics.json is missing \(1 of 5 runs not done\)"):
        summaries.summarize("seeds", tmp_path)
    assert not (tmp_path / "summary.md").exists()


@pytest.mark.parametrize(
    ("path", "text", "words"),
    [("seed2/metrics.json", '{"settings": {"seed": 2', "seed2/metrics.json is not a whole record: the file"),
     ("timings.json", '{"seed0": 1', "seeds/timings.json is not a whole record: the file: Invalid JSON"),
     ("timings.json", '{"seed0": NaN}', "seeds/timings.json is not a whole record: seed0: Input should be a finite"),
     ("timings.json", '{"seed0": "60"}', "seeds/timings.json is not a whole record: seed0: Input should be a valid"),
     ("timings.json", "[60]", "seeds/timings.json is not a whole record: the file: Input should be an object")],
)  # fmt: skip
def test_a_broken_record_or_timings_file_in_a_study_is_named_by_the_tables_command_in_one_line(
    tmp_path, monkeypatch, path, text, words
):
    for seed in range(5):
        constructed_run(tmp_path / "seeds" / f"seed{seed}", seed, 100.0, -97.0, 12)
    (tmp_path / "seeds" / path).write_text(text)  # as a hand edit or a merge leaves it
    monkeypatch.setattr(tables, "STUDY_RECORD", tmp_path)
    with pytest.raises(SystemExit) as stop:
        tables.main([])
    assert str(stop.value).startswith("error: ") and words in str(stop.value), stop.value
    assert len(str(stop.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("spoil", "words"),
    [(lambda text: text[:40], "the file: Invalid JSON"),
     (lambda text: text.replace('"rounds"', '"r"'), "rounds: Field"),
     (lambda text: re.sub(r'"seconds_per_epoch": [\d.]+', '"seconds_per_epoch": NaN', text, count=1), "finite")],
)  # fmt: skip
def test_a_broken_benchmark_output_is_named_by_the_tables_command_in_one_line(tmp_path, monkeypatch, spoil, words):
    (tmp_path / "results.json").write_text(spoil(tables.BENCHMARK.read_text()))
    monkeypatch.setattr(tables, "BENCHMARK", tmp_path / "results.json")
    with pytest.raises(SystemExit) as stop:
        tables.main([])
    assert str(stop.value).startswith(f"error: {tmp_path / 'results.json'} is not a whole record: ")
    assert words in str(stop.value) and len(str(stop.value).splitlines()) == 1


def test_a_finished_run_made_by_other_code_is_kept_and_the_study_says_which_code_in_one_line(tmp_path):
    constructed_run(tmp_path / "same", 7, 100.0, -97.0, 12)
    other = json.loads((tmp_path / "same" / "metrics.json").read_text())
    other["code"] = {"fingerprint": "0123456789abcdef", "parts": {**other["code"]["parts"], "vae_utils.py": "edited"}}
    files.write_json(tmp_path / "other" / "metrics.json", other)
    said, before = [], (tmp_path / "other" / "metrics.json").read_bytes()
    studies.run_study("mine", {"same": {"seed": 7}, "other": {"seed": 7}}, tmp_path, {}, echo=said.append)
    assert said == ["[1/2] mine/same: done already, kept",
                    "[2/2] mine/other: done already by other code (commit 0123456; changed since: vae_utils.py), "
                    f"kept: delete {tmp_path / 'other'} to run it with this code"]  # fmt: skip
    assert (tmp_path / "other" / "metrics.json").read_bytes() == before


@pytest.mark.parametrize(
    "record, words",
    [('{"settings": {"seed": 2', "seed2/metrics.json is not a whole record: the file: Invalid JSON"),
     ("seed 3", "seed2 holds a run with other settings (seed: 3 there, 2 now)")],
)  # fmt: skip
def test_a_study_refuses_a_run_folder_it_cannot_read_or_of_other_settings_and_keeps_it(tmp_path, record, words):
    constructed_run(tmp_path / "seed2", 3, 100.0, -97.0, 12, **SMALL)  # a plan's row edited since (seed 3 -> 2)
    if not record.startswith("seed"):
        (tmp_path / "seed2" / "metrics.json").write_text(record)  # cut short
    before = {p.name: p.read_bytes() for p in (tmp_path / "seed2").iterdir()}
    with pytest.raises(studies.StudyFailed, match="^study tiny: run seed2 refused: .*" + re.escape(words)):
        studies.run_study("tiny", {"seed2": {"seed": 2, **SMALL}}, tmp_path, {}, echo=lambda line: None)
    assert {p.name: p.read_bytes() for p in (tmp_path / "seed2").iterdir() if p.name != ".lock"} == before


def test_a_study_refuses_the_variables_it_would_ignore_naming_them(tmp_path):
    with pytest.raises(studies.StudyFailed, match=r"so VAE_EPOCHS would be ignored: unset it \(only VAE_DATA_DIR"):
        studies.run_study("tiny", TWO_RUNS, tmp_path, {"VAE_EPOCHS": "1"}, echo=lambda line: None)
    assert not tmp_path.joinpath("seed0").exists()


def test_a_study_never_deletes_a_folder_another_process_writes_and_refuses_to_start(tmp_path):
    folder = tmp_path / "seed1"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"half-written by the other run")
    with holding_lock(folder) as holder:
        with pytest.raises(studies.StudyFailed, match=rf"cannot start: .*seed1 is in use by process {holder.pid}"):
            studies.run_study("tiny", TWO_RUNS, tmp_path, {}, echo=lambda line: None)
        assert (folder / "checkpoint.pt").read_bytes() == b"half-written by the other run"
        assert not (tmp_path / "seed0").exists()


def test_a_second_study_of_the_same_name_is_refused_while_the_first_runs(tmp_path):
    with holding_lock(tmp_path) as holder, pytest.raises(studies.StudyFailed, match=rf"in use by process {holder.pid}"):
        studies.run_study("tiny", TWO_RUNS, tmp_path, {}, echo=lambda line: None)


def test_generated_blocks_are_made_anew_and_a_document_whose_markers_do_not_pair_is_refused():
    made = {"main": "| a |"}
    assert tables.with_tables("x <!-- table: main -->tampered<!-- end: main --> y", made) == (
        "x <!-- table: main -->| a |<!-- end: main --> y"
    )
    nested = "<!-- table: main --><!-- table: b --><!-- end: b --><!-- end: main -->"
    for broken in ("<!-- table: main --> no end", nested, "<!-- end: main --><!-- table: main -->"):
        with pytest.raises(files.UnreadableRun, match="markers do not pair"):
            tables.with_tables(broken, made, "README.md")
    with pytest.raises(files.UnreadableRun, match="holds an HTML comment"):
        tables.with_tables("<!-- table: main --><!-- end: main -->", {"main": "<!-- end: main -->injected"})


def handles_stops(pid) -> bool:
    """The command has become `python -m harness...` and set its own stop handlers (Linux's SigCgt mask: SIGTERM
    is caught): before that, Python is still starting, and a signal ends it as it ends any program, silently."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return "harness" in " ".join(psutil.Process(pid).cmdline()) and bool(caught >> (signal.SIGTERM - 1) & 1)


def test_ctrl_c_during_tables_is_one_line_even_in_its_first_second(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(tables, "readme_tables", interrupted)
    with pytest.raises(SystemExit) as stop:
        tables.main(["--write"])
    assert stop.value.code == 130 and capsys.readouterr().err.startswith("stopped (Ctrl-C)")
    for command in ("tables", "study seeds --summary", "run"):  # a stop while the command's imports load
        process = subprocess.Popen([sys.executable, "tasks.py", *command.split()], cwd=REPO, env=without_settings(),
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_until(lambda process=process: handles_stops(process.pid), 60)
        process.send_signal(signal.SIGINT)
        err = process.communicate(timeout=60)[1]
        assert process.returncode in (130, 0) and "Traceback" not in err, (command, err)
        assert process.returncode == 0 or len(err.strip().splitlines()) == 1, (command, err)


# ---- on a real Dask cluster ---------------------------------------------------------------------
TINY = {"train_size": 384, "test_size": 64, "iw_samples": 2}
THREE_RUNS = {
    "short": {**TINY, "epochs": 1},
    "long": {**TINY, "epochs": 2},
    "other": {**TINY, "epochs": 1, "seed": 1},
}


@pytest.fixture()
def dask_cluster(tmp_path):
    """A real scheduler and two workers on 127.0.0.1, started with Dask's own command-line tools as docs/studies.md
    says: the scheduler outside the repository, unable to import it (as on a login node), the workers in it."""
    dask, file = Path(sys.executable).parent / "dask", tmp_path / "scheduler.json"
    env = {**without_settings(), "PYTHONPATH": str(REPO)}
    scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", file]
    outside = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    started = [
        subprocess.Popen(scheduler, cwd=tmp_path, env=outside, start_new_session=True, stderr=subprocess.DEVNULL)
    ]
    wait_until(file.exists)
    address = json.loads(file.read_text())["address"]
    for name in ("w0", "w1"):
        started.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--host",
                                         "127.0.0.1", "--name", name], cwd=REPO, env=env, start_new_session=True,
                                        stderr=subprocess.DEVNULL))  # fmt: skip
    with distributed.Client(address) as client:
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 2)
    yield address, started[1:]
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def runs_under(processes) -> list:
    """The headless runs (and their kernels) that the workers' processes started."""
    return [child for p in processes for child in psutil.Process(p.pid).children(recursive=True)
            if any(word in " ".join(child.cmdline()) for word in ("harness.headless", "ipykernel"))]  # fmt: skip


def the_numbers(folder) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in metrics["epochs"]]
    return {"epochs": rows, "evaluation": metrics["evaluation"], "vae.pt": (folder / "vae.pt").read_bytes()}


@pytest.mark.slow
def test_a_study_on_two_workers_with_one_killed_mid_run_gives_the_numbers_of_one_machine(
    dask_cluster, study_env, tmp_path
):
    address, workers = dask_cluster
    said = []
    studies.run_study("tiny", THREE_RUNS, tmp_path / "here", study_env, echo=said.append)  # the embedded cluster
    assert any("on a local cluster of 1 worker" in line for line in said)
    errors = []

    def on_the_cluster():
        try:
            studies.run_study("tiny", THREE_RUNS, tmp_path / "there", study_env, echo=said.append, scheduler=address)
        except Exception as error:  # noqa: BLE001 -- reported below
            errors.append(error)

    study = threading.Thread(target=on_the_cluster)
    study.start()
    wait_until(lambda: runs_under(workers))  # a run under way on a worker: its machine is lost
    lost = next(w for w in workers if runs_under([w]))
    os.killpg(lost.pid, signal.SIGKILL)
    study.join(timeout=600)
    assert not errors and not study.is_alive(), errors
    for run in THREE_RUNS:
        assert the_numbers(tmp_path / "there" / run) == the_numbers(tmp_path / "here" / run), run
        assert not list((tmp_path / "there" / run).glob(".*.tmp"))


STOPPABLE = {**THREE_RUNS, "other": {**TINY, "train_size": 2048, "epochs": 30, "seed": 1}}


def scratch_checkpoint(run):
    """The checkpoint a run of study tiny keeps in its worker's scratch folder (runs/.studies/), or None."""
    found = sorted(REPO.glob(f"runs/.studies/tiny-{run}-????????????/checkpoint.pt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


@pytest.mark.slow
def test_ctrl_c_on_a_study_stops_every_run_it_started_and_leaves_no_task_kernel_or_lock(
    dask_cluster, study_env, tmp_path
):
    address, workers = dask_cluster
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\nfrom pathlib import Path\nfrom harness import folders, studies\n"
        f"studies.STUDIES['tiny'] = {STOPPABLE!r}\nfolders.STUDY_RECORD = studies.STUDY_RECORD = Path(sys.argv[1])\n"
        "if __name__ == '__main__':\n    studies.main(['tiny', '--scheduler', sys.argv[2]])\n"
    )
    for old in REPO.glob("runs/.studies/tiny-other-*"):  # an earlier test's leftovers are not this one's
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    study = subprocess.Popen([sys.executable, driver, tmp_path / "study", address], cwd=REPO, text=True,
                             env={**study_env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)  # fmt: skip
    wait_until(lambda: scratch_checkpoint("other"), 300)  # run "other" has finished an epoch, of 30
    study.send_signal(signal.SIGINT)
    _, err = study.communicate(timeout=120)
    assert study.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("stopped (Ctrl-C) during study tiny")
    wait_until(lambda: not runs_under(workers), 30)  # no run, no kernel outlives the study
    with distributed.Client(address) as client:
        assert not any(client.processing().values()), "a task outlived the study"
    files.check_free(tmp_path / "study" / "tiny")  # nor its lock
    for run in STOPPABLE:
        files.check_free(tmp_path / "study" / "tiny" / run)

    kept = files.load_checkpoint(scratch_checkpoint("other"))["epoch"]  # the stop kept the last whole epoch
    assert 1 <= kept < 30
    spent = scratch_checkpoint("other").with_name(".seconds")  # the stopped part's wall time, kept beside it
    assert float(spent.read_text()) > 0
    spent.write_text("1000.0\n")  # as if it had run for 1,000 s: the record counts it with the part to come
    studies.run_study("tiny", STOPPABLE, tmp_path / "study" / "tiny", study_env, echo=lambda line: None)
    metrics = json.loads((tmp_path / "study" / "tiny" / "other" / "metrics.json").read_text())
    assert [r["after_epoch"] for r in metrics["resumed"]] == [kept] and len(metrics["epochs"]) == 30
    assert 1000 < json.loads((tmp_path / "study" / "tiny" / "timings.json").read_text())["other"] < 1000 + 600
    assert scratch_checkpoint("other") is None  # a finished run's scratch folder is gone


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "error: the following arguments are required: name"),
        (["seed"], "error: argument name: invalid choice: 'seed'"),
        (["seeds", "--summary", "--scheduler"], "error: argument --scheduler: expected one argument"),
        (["seeds", "--scheduler", ""], "error: --scheduler needs an address"),  # an unset $ADDRESS: not local
        (["seeds", "--runs"], "error: argument --runs: expected one argument"),
        (["seeds", "--runs", "seed0", "--frobnicate"], "error: unrecognized arguments: --frobnicate"),
        (["seeds", "--summary", "--runs", "seed0"], "error: --summary takes no --runs or --scheduler"),
        (["seeds", "--runs", "seed7"], "error: study seeds has no run 'seed7': --runs takes some of seed0, seed1"),
    ],
)
def test_what_a_user_may_type_wrong_for_a_study_is_refused_in_one_line_and_nothing_starts(study_env, args, words):
    before = sorted(REPO.glob("runs/.studies/*"))
    done = tasks("study", *args, env=study_env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    usage, line = done.stderr.strip().splitlines()  # argparse's usage line, then the error
    assert usage.startswith("usage: python3 tasks.py study") and line.startswith(f"python3 tasks.py study: {words}")
    assert sorted(REPO.glob("runs/.studies/*")) == before


def study_command(tmp_path, *options):
    """`python3 tasks.py study tiny OPTIONS` as tasks.py runs it (python -m harness.studies), into tmp_path/study."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import runpy, sys, warnings\nfrom pathlib import Path\nfrom harness import folders, studies\n"
        f"studies.STUDIES['tiny'] = {TWO_RUNS!r}\nfolders.STUDY_RECORD = studies.STUDY_RECORD = Path(sys.argv[1])\n"
        "if __name__ == '__main__':  # not again in the local cluster's worker, which imports this file\n"
        "    sys.argv[1:] = ['tiny', *sys.argv[2:]]\n"
        "    warnings.filterwarnings('ignore', '.harness.studies. found in sys.modules')  # imported above, to set\n"
        "    runpy.run_module('harness.studies', run_name='__main__')\n"
    )
    return [sys.executable, driver, tmp_path / "study", *options]


@pytest.mark.slow
def test_a_study_runs_only_the_runs_named_by_runs_and_leaves_its_summary_for_the_rest(study_env, tmp_path):
    env = {**study_env, "PYTHONPATH": str(REPO)}
    done = subprocess.run(study_command(tmp_path, "--runs", "seed1"), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "study tiny: 1 of 2 runs still to run (seed0); " + (
        "its summary is written when they are done"
    )
    made = tmp_path / "study" / "tiny"
    assert (made / "seed1" / "metrics.json").is_file() and not (made / "seed0").exists()
    assert not (made / "summary.md").exists()

    for wrong, unknown in {"seed7": "seed7", "seed1,": "", "seed0,seed1,seeds": "seeds"}.items():  # nothing runs
        done = subprocess.run(study_command(tmp_path, "--runs", wrong), cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        line = done.stderr.strip().splitlines()[-1]
        assert line.endswith(f"error: study tiny has no run {unknown!r}: --runs takes some of seed0, seed1"), line
    assert not (made / "seed0").exists()


def test_a_study_whose_cluster_cannot_be_reached_ends_the_command_in_one_line(study_env, tmp_path):
    with socket.socket() as free:  # a port on which nothing listens
        free.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{free.getsockname()[1]}"
    env = {**study_env, "PYTHONPATH": str(REPO), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    done = subprocess.run(study_command(tmp_path, "--scheduler", address), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: no Dask scheduler answers at {address} (") and line.endswith("local cluster."), line
    assert not (tmp_path / "study" / "tiny" / "seed0").exists()


def test_a_worker_with_other_code_than_the_study_is_refused_naming_both():
    other = {**fingerprint.code_of(), "fingerprint": "0123456789abcdef"}
    other["parts"] = {**other["parts"], "vae_utils.py": "edited"}
    with (
        distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as local,
        distributed.Client(local) as client,
    ):
        future = client.submit(cluster.task(), "tiny", "study", "short", {}, other, "stop-x")
        with pytest.raises(
            studies.StudyFailed,
            match=r"has other code than the study \(.* there, 0123456789abcdef here; changed: vae_utils.py\)",
        ):
            future.result()
