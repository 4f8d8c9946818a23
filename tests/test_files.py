"""harness.files: checkpoints and weights trusted only when they are what they claim, safe writes, one reader
of metrics.json."""

import pytest
import torch

from conftest import RunsCode, checkpoint_state, load
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
