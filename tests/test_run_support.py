"""run_support: settings checked before any work, runs in their own folders, checkpoints trusted only
when they are what they claim, provenance that says what it cannot tell."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

import run_support
from conftest import RunsCode


def load(**environ):
    """Settings from these VAE_* variables alone, with results in a folder of the test's."""
    return run_support.load_settings(environ)


@pytest.fixture()
def folder(tmp_path):
    return {"VAE_RESULTS_DIR": str(tmp_path / "run")}


# ---- settings --------------------------------------------------------------------------------
def test_the_defaults_are_the_spec_and_go_to_results():
    settings = load()
    assert {name: getattr(settings, name) for name in run_support.SPEC} == run_support.SPEC
    assert (settings.epochs, settings.batch_size, settings.lr, settings.latent_dim) == (20, 128, 1e-3, 20)
    assert settings.results_dir == "results" and run_support.is_spec_run(settings)


def test_overrides_come_from_the_environment_and_from_the_notebook(folder):
    settings = load(VAE_EPOCHS="2", VAE_LR="0.01", VAE_RESUME="1", VAE_LIKELIHOOD="binarized", **folder)
    assert (settings.epochs, settings.lr, settings.resume, settings.likelihood) == (2, 0.01, True, "binarized")
    in_code = run_support.load_settings({"VAE_EPOCHS": "3"}, epochs=2, batch_size=64)
    assert (in_code.epochs, in_code.batch_size) == (3, 64)  # the environment wins, as CI overrides the notebook


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"VAE_EPOCHS": "-1"}, "epochs must be a whole number >= 1; got -1 (from VAE_EPOCHS)"),
        ({"VAE_EPOCHS": "0"}, "epochs must be a whole number >= 1; got 0 (from VAE_EPOCHS)"),
        ({"VAE_BATCH_SIZE": "0"}, "batch_size must be a whole number >= 1; got 0"),
        ({"VAE_DEVICE": "tpu"}, "device must be auto, cpu, cuda, cuda:N or mps; got 'tpu'"),
        ({"VAE_LIKELIHOOD": "gaussian"}, "likelihood must be one of bernoulli, continuous_bernoulli, binarized"),
        ({"VAE_LR": "0"}, "lr must be a number > 0 and <= 0.01 (0.03 and more diverge"),
        ({"VAE_LR": "nan"}, "lr must be a number > 0 and <= 0.01"),
        ({"VAE_LR": "0.03"}, "lr must be a number > 0 and <= 0.01"),
        ({"VAE_EPOCHS": "ten"}, "VAE_EPOCHS='ten' is not valid: epochs takes a whole number >= 1"),
        ({"VAE_RESUME": "maybe"}, "resume takes 1/0, true/false, yes/no"),
        ({"VAE_TRAIN_SIZE": "70000"}, "train_size must be a whole number from 1 to 60000"),
        ({"VAE_TEST_SIZE": "5"}, "test_size must be a whole number from 6 to 10000"),
        ({"VAE_LATENT_DIM": "1"}, "latent_dim must be a whole number from 2 to 784"),
        ({"VAE_IW_SAMPLES": "100000"}, "iw_samples must be a whole number from 1 to 10000"),
        ({"VAE_SEED": str(2**64)}, "seed must be a whole number from 0 to 2**63 - 1"),
        ({"VAE_NAME": "../escape"}, "name must be a folder name"),
        ({"VAE_EPOCH": "5"}, "VAE_EPOCH is not a setting. The settings are: VAE_SEED, VAE_EPOCHS"),
        ({"VAE_WEIGHTS": "no/such/vae.pt"}, "VAE_WEIGHTS=no/such/vae.pt: no such file"),
        ({"VAE_NAME": "a", "VAE_RESULTS_DIR": "/tmp/b"}, "set VAE_NAME (a folder under runs/) or VAE_RESULTS_DIR"),
        ({"VAE_OBJECTIVE": "vae"}, "objective must be elbo or iwae; got 'vae'"),
        ({"VAE_BETA": "0"}, "beta must be a number > 0 and <= 100"),
        ({"VAE_BETA": "inf"}, "beta must be a number > 0 and <= 100"),
        ({"VAE_KL_WARMUP": "-1"}, "kl_warmup must be a whole number of epochs from 0 to epochs"),
        ({"VAE_KL_WARMUP": "30"}, "kl_warmup=30 is longer than the run (epochs=20)"),
        ({"VAE_TRAIN_SIZE": "5", "VAE_TRAIN_SAMPLES": "5"}, "train_samples=5 is the k of the iwae objective"),
        ({"VAE_OBJECTIVE": "iwae", "VAE_TRAIN_SAMPLES": "5", "VAE_BETA": "2"}, "iwae has no separate KL term"),
        ({"VAE_OBJECTIVE": "iwae", "VAE_KL_WARMUP": "5"}, "iwae has no separate KL term"),
        ({"VAE_OBJECTIVE": "iwae", "VAE_TRAIN_SAMPLES": "1000"}, "train_samples x batch_size = 128,000 decoder rows"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_and_what_it_accepts(environ, words):
    with pytest.raises(run_support.SettingsError) as error:
        load(**environ)
    assert words in str(error.value)


def test_an_unavailable_device_is_refused_up_front():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(run_support.SettingsError, match="not available on this machine; use VAE_DEVICE=auto or cpu"):
        load(VAE_DEVICE="cuda")


def test_weights_cannot_be_combined_with_settings_of_training(tmp_path):
    weights = tmp_path / "vae.pt"
    weights.write_bytes(b"")
    with pytest.raises(run_support.SettingsError, match="skips training, so epochs would change nothing"):
        load(VAE_WEIGHTS=str(weights), VAE_EPOCHS="3")
    with pytest.raises(run_support.SettingsError, match="unset VAE_RESUME"):
        load(VAE_WEIGHTS=str(weights), VAE_RESUME="1")
    with pytest.raises(run_support.SettingsError, match="skips training, so beta, kl_warmup would change nothing"):
        load(VAE_WEIGHTS=str(weights), VAE_BETA="2", VAE_KL_WARMUP="1")


# ---- where a run writes ------------------------------------------------------------------------
def test_an_experiment_gets_a_folder_of_its_own_named_from_its_settings():
    settings = load(VAE_EPOCHS="2", VAE_TRAIN_SIZE="1024")
    assert settings.results_dir == "runs/epochs=2,train_size=1024"
    iwae = load(VAE_OBJECTIVE="iwae", VAE_TRAIN_SAMPLES="5", VAE_LIKELIHOOD="binarized")
    assert iwae.results_dir == "runs/likelihood=binarized,objective=iwae,train_samples=5"
    assert load(VAE_EPOCHS="2", VAE_NAME="short").results_dir == "runs/short"
    assert load(VAE_DEVICE="cpu").results_dir == "results"  # the device changes no setting of the spec


def test_an_experiment_may_not_write_into_the_committed_record():
    for where in ("results", "results/", "results/figures"):
        with pytest.raises(run_support.SettingsError, match="holds the record of the spec run"):
            load(VAE_EPOCHS="2", VAE_RESULTS_DIR=where)
    assert load(VAE_SEED="1", VAE_RESULTS_DIR="results/studies/seeds/seed1").seed == 1  # a study's own folder


def test_a_results_folder_that_is_a_file_or_not_writable_is_refused_naming_VAE_RESULTS_DIR(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(run_support.SettingsError, match=r"VAE_RESULTS_DIR=.*file/run: .*file is not a folder"):
        load(VAE_RESULTS_DIR=str(a_file / "run"))
    monkeypatch.setattr(run_support.os, "access", lambda path, mode: False)
    with pytest.raises(run_support.SettingsError, match=r"VAE_RESULTS_DIR=.*: .* is not writable"):
        load(VAE_RESULTS_DIR=str(tmp_path / "run"))


def checkpoint_state(settings, epoch=3, epochs=None):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    saved = {**vars(settings), **({"epochs": epochs} if epochs else {})}
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "metrics": [{"epoch": e, "test_loss": 1.5} for e in range(1, epoch + 1)], "settings": saved,
            "rng": torch.Generator().get_state(), "resumed": []}  # fmt: skip


def test_an_unfinished_run_is_not_replaced_by_a_fresh_one(folder):
    settings = load(**folder)
    checkpoint = Path(folder["VAE_RESULTS_DIR"]) / "checkpoint.pt"
    run_support.save_checkpoint(checkpoint, checkpoint_state(settings, epoch=3))  # 3 of 20 epochs
    before = checkpoint.read_bytes()
    with pytest.raises(run_support.SettingsError) as error:
        load(**folder)
    assert "holds an unfinished run (epoch 3 of 20). VAE_RESUME=1 continues it" in str(error.value)
    assert "to start afresh, delete it" in str(error.value)
    assert checkpoint.read_bytes() == before
    assert load(VAE_RESUME="1", **folder).resume


def test_a_finished_run_with_the_same_settings_may_be_run_again(folder):
    settings = load(**folder)
    checkpoint = Path(folder["VAE_RESULTS_DIR"]) / "checkpoint.pt"
    run_support.save_checkpoint(checkpoint, checkpoint_state(settings, epoch=20))
    assert load(**folder).results_dir == folder["VAE_RESULTS_DIR"]


def test_a_folder_holding_a_run_with_other_settings_is_not_overwritten(folder):
    results = Path(folder["VAE_RESULTS_DIR"])
    run_support.write_json(results / "metrics.json", {"settings": vars(load(VAE_LR="0.01", **folder))})
    with pytest.raises(
        run_support.SettingsError, match=r"holds a run with other settings \(lr: 0.01 there, 0.001 now\)"
    ):
        load(**folder)


def test_the_advice_after_a_diverged_run_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setattr(run_support, "RUNS", tmp_path / "runs")
    settings = load(VAE_LR="0.005")
    checkpoint = Path(settings.results_dir) / "checkpoint.pt"
    run_support.save_checkpoint(checkpoint, checkpoint_state(settings, epoch=2))  # diverged at epoch 3
    advice = str(run_support.NonFiniteLossError(3, "batch 7 of 469", checkpoint, settings.lr))
    assert "at epoch 3, batch 7 of 469" in advice and "is kept as it was" in advice
    assert "VAE_LR=0.0005" in advice
    follow = load(VAE_LR="0.0005")  # the advice, taken: a fresh run in a folder of its own
    assert follow.results_dir != settings.results_dir and not follow.resume


def test_first_nonfinite_finds_the_first_bad_step():
    assert run_support.first_nonfinite(torch.tensor([1.0, 2.0, float("nan"), float("inf")])) == 3
    assert run_support.first_nonfinite(torch.tensor([1.0, 2.0])) is None


def test_json_with_nan_is_refused_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        run_support.write_json(tmp_path / "metrics.json", {"test_loss": float("nan")})
    assert list(tmp_path.iterdir()) == []


# ---- checkpoints -----------------------------------------------------------------------------
def test_a_checkpoint_round_trips(tmp_path):
    settings = load()
    path = run_support.save_checkpoint(tmp_path / "checkpoint.pt", checkpoint_state(settings))
    state = run_support.load_checkpoint(path, settings)
    assert state["epoch"] == 3 and state["metrics"][0]["test_loss"] == 1.5
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_checkpoint_from_other_settings_is_refused_naming_each_difference(tmp_path):
    path = run_support.save_checkpoint(tmp_path / "checkpoint.pt", checkpoint_state(load()))
    with pytest.raises(run_support.CheckpointError) as error:
        run_support.load_checkpoint(path, load(VAE_LATENT_DIM="10", VAE_LR="0.01", VAE_TEST_SIZE="100"))
    for difference in ("latent_dim: 20 in the checkpoint, 10 now", "lr: 0.001 in the checkpoint, 0.01 now",
                       "test_size: 10000 in the checkpoint, 100 now"):  # fmt: skip
        assert difference in str(error.value)


def test_a_checkpoint_past_the_requested_epochs_is_refused(tmp_path):
    path = run_support.save_checkpoint(tmp_path / "checkpoint.pt", checkpoint_state(load()))
    with pytest.raises(run_support.CheckpointError, match="set VAE_EPOCHS to at least 3"):
        run_support.load_checkpoint(path, load(VAE_EPOCHS="2"))


def test_a_resume_records_the_settings_it_changed():
    saved = vars(load())
    changed = run_support.resume_changes(saved, load(VAE_EPOCHS="30", VAE_IW_SAMPLES="5", VAE_RESUME="1"))
    assert changed == {"epochs": [20, 30], "iw_samples": [50, 5]}


def wrong_checkpoints(tmp_path, marker):
    """Every way a checkpoint can be wrong, and the reason its error must state."""
    good = checkpoint_state(load())
    cases = {
        "empty": (b"", "is truncated or not a PyTorch file"),
        "text": (b"not a checkpoint at all", "not a PyTorch file"),
        "forbidden global": ({"model": RunsCode(marker)}, "names the Python object posix.system"),
        "a list": ([1, 2], "it holds a list"),
        "missing keys": ({"weights": torch.zeros(3)}, "wrong model (expected dict, found NoneType)"),
        "epoch as text": ({**good, "epoch": "3"}, "wrong epoch (expected int, found str)"),
        "model not tensors": ({**good, "model": {"weight": [1.0]}}, "wrong model (not all tensors)"),
        "metrics of another length": ({**good, "metrics": []}, "epoch 3 with 0 epochs of metrics"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / f"{name}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        yield name, path, reason
    truncated = tmp_path / "truncated.pt"
    run_support.save_checkpoint(truncated, good)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    yield "truncated", truncated, "is truncated or not a PyTorch file"


def test_every_wrong_checkpoint_is_refused_with_its_real_reason_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    for name, path, reason in wrong_checkpoints(tmp_path, marker):
        with pytest.raises(run_support.CheckpointError) as error:
            run_support.load_checkpoint(path, load())
        message = str(error.value)
        assert reason in message, (name, message)
        assert "weights_only=False" not in message and len(message.splitlines()) == 1, (name, message)
    assert not marker.exists()


def test_a_checkpoint_of_another_model_is_refused_naming_the_shapes(tmp_path):
    settings = load()
    state = checkpoint_state(settings)
    path = run_support.save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(run_support.CheckpointError, match=r"holds another model: weight \(2, 3\) instead of \(4, 3\)"):
        run_support.load_checkpoint(path, settings, model=torch.nn.Linear(3, 4))
    with pytest.raises(run_support.CheckpointError, match=r"holds another model: 0\.bias, 0\.weight, bias, weight"):
        run_support.load_checkpoint(path, settings, model=torch.nn.Sequential(torch.nn.Linear(3, 2)))


def test_weights_are_loaded_safely_or_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = run_support.save_weights(tmp_path / "vae.pt", model)
    copy = torch.nn.Linear(3, 2)
    run_support.load_weights(path, copy)
    assert torch.equal(copy.weight, model.weight)
    with pytest.raises(run_support.CheckpointError, match="holds another model"):
        run_support.load_weights(path, torch.nn.Linear(3, 5))
    marker = tmp_path / "pwned"
    torch.save({"weight": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(run_support.CheckpointError, match="names the Python object"):
        run_support.load_weights(tmp_path / "evil.pt", copy)
    assert not marker.exists()


# ---- provenance ------------------------------------------------------------------------------
def git(*args):
    return subprocess.run(["git", *args], cwd=run_support.REPO, capture_output=True, text=True, check=True).stdout


def test_provenance_tells_the_truth_about_git_for_a_results_folder_outside_the_repo(tmp_path):
    facts = run_support.provenance("cpu", tmp_path)
    assert facts["git_commit"] == git("rev-parse", "HEAD").strip()
    assert facts["git_dirty"] == bool(git("status", "--porcelain", "--untracked-files=no").strip())
    assert "git_unknown" not in facts


def test_provenance_says_null_and_why_when_git_cannot_tell(tmp_path, monkeypatch):
    monkeypatch.setattr(run_support, "REPO", tmp_path)  # not a git checkout
    facts = run_support.provenance("cpu", tmp_path / "results")
    assert facts["git_commit"] is None and facts["git_dirty"] is None
    assert "not a git repository" in facts["git_unknown"]
    json.dumps(facts)  # and it is still JSON


def test_the_same_weights_saved_twice_are_the_same_bytes(tmp_path):
    model = torch.nn.Linear(3, 2)
    first = run_support.save_weights(tmp_path / "a" / "vae.pt", model).read_bytes()
    second = run_support.save_weights(tmp_path / "b" / "vae.pt", model).read_bytes()
    assert first == second  # a re-run with the same numbers leaves a committed vae.pt as it was
