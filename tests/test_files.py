"""harness.files: checkpoints and weights trusted only when they are what they claim, safe writes, one reader
of metrics.json."""

import re

import pytest
import torch

from conftest import RunsCode, checkpoint_state, history_row, load
from harness import files


def test_json_with_nan_is_refused_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        files.write_json(tmp_path / "metrics.json", {"test_loss": float("nan")})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "is missing: that run has not finished"), ('{"settings": {"seed"', "cannot be read (JSONDecodeError"),
     ("[1, 2]", "is not the metrics.json of a run")],
)  # fmt: skip
def test_a_missing_or_broken_metrics_json_is_named_in_one_line(tmp_path, content, reason):
    if content is not None:
        (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(files.UnreadableRun) as error:
        files.read_metrics(tmp_path)
    assert str(tmp_path / "metrics.json") in str(error.value) and reason in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_a_checkpoint_round_trips(tmp_path):
    path = files.save_checkpoint(tmp_path / "checkpoint.pt", checkpoint_state(load()))
    state = files.load_checkpoint(path)
    assert state["epoch"] == 3 and state["metrics"][0]["test_loss"] == 1.5
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


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
        "machine as text": ({**good, "machine": "cpu"}, "wrong machine (expected dict, found str)"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / f"{name}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        yield name, path, reason
    truncated = tmp_path / "truncated.pt"
    files.save_checkpoint(truncated, good)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    yield "truncated", truncated, "is truncated or not a PyTorch file"


def test_every_wrong_checkpoint_is_refused_with_its_real_reason_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    for name, path, reason in wrong_checkpoints(tmp_path, marker):
        with pytest.raises(files.CheckpointError) as error:
            files.load_checkpoint(path)
        message = str(error.value)
        assert reason in message, (name, message)
        assert "weights_only=False" not in message and len(message.splitlines()) == 1, (name, message)
    assert not marker.exists()


def test_a_checkpoint_of_another_model_is_refused_naming_the_shapes(tmp_path):
    path = files.save_checkpoint(tmp_path / "checkpoint.pt", checkpoint_state(load()))
    with pytest.raises(files.CheckpointError, match=r"holds another model: weight \(2, 3\) instead of \(4, 3\)"):
        files.load_checkpoint(path, model=torch.nn.Linear(3, 4))
    with pytest.raises(files.CheckpointError, match=r"holds another model: 0\.bias, 0\.weight, bias, weight"):
        files.load_checkpoint(path, model=torch.nn.Sequential(torch.nn.Linear(3, 2)))


def test_weights_are_loaded_safely_or_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = files.save_weights(tmp_path / "vae.pt", model)
    copy = torch.nn.Linear(3, 2)
    files.load_weights(path, copy)
    assert torch.equal(copy.weight, model.weight)
    with pytest.raises(files.CheckpointError, match="holds another model"):
        files.load_weights(path, torch.nn.Linear(3, 5))
    marker = tmp_path / "pwned"
    torch.save({"weight": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(files.CheckpointError, match="names the Python object"):
        files.load_weights(tmp_path / "evil.pt", copy)
    assert not marker.exists()


def test_the_same_weights_saved_twice_are_the_same_bytes(tmp_path):
    model = torch.nn.Linear(3, 2)
    first = files.save_weights(tmp_path / "a" / "vae.pt", model).read_bytes()
    second = files.save_weights(tmp_path / "b" / "vae.pt", model).read_bytes()
    assert first == second  # a re-run with the same numbers leaves a committed vae.pt as it was


def whole_record():
    return {"settings": vars(load()), "code": None, "epochs": [history_row(1)], "finished": True, "test_loss": 1.5,
            "evaluation": {"test_loss": 1.5, "iw_bound": -1.4, "active_units": 3}}  # fmt: skip


@pytest.mark.parametrize(
    ("spoil", "field"),
    [(lambda m: m["settings"].update(beta="2"), "settings.beta = '2'"),
     (lambda m: m["settings"].pop("lr_schedule"), "settings.lr_schedule (missing)"),
     (lambda m: m["settings"].update(likelihood="<!-- end: main -->"), "settings.likelihood"),
     (lambda m: m["epochs"][0].pop("test_kl"), "epoch row 1"),
     (lambda m: m["evaluation"].update(iw_bound="-96"), "evaluation.iw_bound (not a number)"),
     (lambda m: m.pop("code"), "code (missing)")],
)  # fmt: skip
def test_a_record_with_a_field_missing_or_of_the_wrong_type_is_named_with_its_file_and_field(tmp_path, spoil, field):
    files.write_json(tmp_path / "metrics.json", whole_record())
    assert files.read_metrics(tmp_path)["finished"]
    metrics = whole_record()
    spoil(metrics)
    files.write_json(tmp_path / "metrics.json", metrics)
    with pytest.raises(files.UnreadableRun) as error:
        files.read_metrics(tmp_path)
    assert f"{tmp_path / 'metrics.json'} is not a whole record: wrong {field}" in str(error.value)


def test_a_checkpoint_with_a_wrong_generator_state_or_history_row_is_refused_when_loaded(tmp_path):
    for spoil, words in (
        (lambda s: s.update(rng=torch.zeros(7, dtype=torch.uint8)), "wrong rng (a generator state of 7"),
        (lambda s: s["metrics"][1].pop("train_loss"), "wrong epoch row 2"),
        (lambda s: s["settings"].pop("objective"), "wrong settings.objective (missing)"),
    ):
        state = checkpoint_state(load())
        spoil(state)
        files.save_checkpoint(tmp_path / "checkpoint.pt", state)
        with pytest.raises(files.CheckpointError, match=re.escape(words)):
            files.load_checkpoint(tmp_path / "checkpoint.pt")


def test_a_checkpoint_whose_optimiser_belongs_to_another_model_is_refused(tmp_path):
    state = checkpoint_state(load())  # a Linear(3, 2) and its Adam moments
    files.save_checkpoint(tmp_path / "checkpoint.pt", state)
    files.load_checkpoint(tmp_path / "checkpoint.pt", torch.nn.Linear(3, 2))
    state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(5, 5)
    files.save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(files.CheckpointError, match="an optimiser of another model"):
        files.load_checkpoint(tmp_path / "checkpoint.pt", torch.nn.Linear(3, 2))
