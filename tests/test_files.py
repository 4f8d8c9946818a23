"""harness.files: records read through one schema (a record that predates a setting is read with its
`before`), checkpoints and weights refused in one line when they do not load or fit, safe writes."""

import json

import pytest
import torch

from conftest import RunsCode, checkpoint_state, load, record
from harness import files, settings


def test_json_with_nan_is_refused_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        files.write_json(tmp_path / "metrics.json", {"test_loss": float("nan")})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "is missing: that run has not finished"), ('{"settings": {"seed"', "is not a whole record: the file"),
     ("[1, 2]", "is not a whole record: the file")],
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
    without = {k: v for k, v in checkpoint_state(load()).items() if k not in ("code", "resumed")}  # older ones
    state = files.load_checkpoint(files.save_checkpoint(tmp_path / "older" / "checkpoint.pt", without))
    assert state["code"] is None and state["resumed"] == []


def test_every_wrong_checkpoint_is_refused_in_one_line_naming_it_and_runs_no_code(tmp_path):
    marker, good = tmp_path / "pwned", checkpoint_state(load())
    cases = {
        "empty": b"",
        "text": b"not a checkpoint at all",
        "forbidden global": {"model": RunsCode(marker)},
        "a list": [1, 2],
        "missing keys": {"weights": torch.zeros(3)},
        "metrics of another length": {**good, "metrics": []},
        "a setting out of range": {**good, "settings": {**good["settings"], "epochs": 0}},
        "settings that are text": {**good, "settings": "seed=0"},
        "a history row of text": {**good, "metrics": [{**good["metrics"][0], "test_recon": "x"}, *good["metrics"][1:]]},
        "a history that is no list": {**good, "metrics": {"epoch": 1}, "epoch": 1},
        "a generator state that is text": {**good, "rng": "abc"},
        "truncated": None,
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.pt"
        if content is None:
            path.write_bytes(files.save_checkpoint(tmp_path / "whole.pt", good).read_bytes()[:2000])
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(files.CheckpointError) as error:
            files.load_checkpoint(path)
        message = str(error.value)
        assert str(path) in message and len(message.splitlines()) == 1, (name, message)
        assert "weights_only=False" not in message and "Re-running" not in message, (name, message)
        if name in ("empty", "text", "truncated"):  # torch.load's own words ("KeyError: 105") do not say what is wrong
            assert "not a whole file written by torch.save" in message, (name, message)
    assert not marker.exists()


def test_a_checkpoint_of_another_model_is_refused_naming_the_shapes(tmp_path):
    path = files.save_checkpoint(tmp_path / "checkpoint.pt", checkpoint_state(load()))
    with pytest.raises(files.CheckpointError, match=r"holds another model: weight \(2, 3\) instead of \(4, 3\)"):
        files.load_checkpoint(path, model=torch.nn.Linear(3, 4))


def test_weights_are_loaded_safely_or_refused_and_nan_weights_are_refused_before_any_work(tmp_path):
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
    with torch.no_grad():
        model.bias[1] = float("nan")
    files.save_weights(tmp_path / "nan.pt", model)
    with pytest.raises(files.CheckpointError, match=r"holds NaN or infinite values \(in bias\)"):
        files.load_weights(tmp_path / "nan.pt")


def test_the_same_weights_saved_twice_are_the_same_bytes(tmp_path):
    model = torch.nn.Linear(3, 2)
    first = files.save_weights(tmp_path / "a" / "vae.pt", model).read_bytes()
    second = files.save_weights(tmp_path / "b" / "vae.pt", model).read_bytes()
    assert first == second  # a re-run with the same numbers leaves a committed vae.pt as it was


def whole_record():
    return record(vars(load()))


@pytest.mark.parametrize(
    ("spoil", "field"),
    [(lambda m: m["settings"].update(beta="2"), "settings: Value error, settings.beta = '2'"),
     (lambda m: m["settings"].update(likelihood="<!-- end: main -->"), "settings: Value error, settings.likelihood"),
     (lambda m: m["epochs"][0].pop("test_kl"), "epochs.0.test_kl: Field required"),
     (lambda m: m["evaluation"].update(iw_bound="-96"), "evaluation.iw_bound: Input should be a valid number"),
     (lambda m: m["evaluation"].update(iw_bound=float("nan")), "evaluation.iw_bound: Input should be a finite number"),
     (lambda m: m.pop("finished"), "finished: Field required")],
)  # fmt: skip
def test_a_record_with_a_field_missing_or_of_the_wrong_type_is_named_with_its_file_and_field(tmp_path, spoil, field):
    files.write_json(tmp_path / "metrics.json", whole_record())
    assert files.read_metrics(tmp_path)["finished"]
    metrics = whole_record()
    spoil(metrics)
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))  # a bare NaN too, as a hand edit leaves it
    with pytest.raises(files.UnreadableRun) as error:
        files.read_metrics(tmp_path)
    assert f"{tmp_path / 'metrics.json'} is not a whole record: {field}" in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_a_record_or_checkpoint_that_predates_a_setting_is_read_with_its_before_value(tmp_path, monkeypatch):
    metrics, state = whole_record(), checkpoint_state(load())
    del metrics["settings"]["lr_schedule"], state["settings"]["lr_schedule"]
    files.write_json(tmp_path / "metrics.json", metrics)
    files.save_checkpoint(tmp_path / "checkpoint.pt", state)
    assert files.read_metrics(tmp_path)["settings"]["lr_schedule"] == "constant"
    assert files.load_checkpoint(tmp_path / "checkpoint.pt")["settings"]["lr_schedule"] == "constant"
    declared = settings.SETTINGS["lr_schedule"]  # as if the code had scheduled the rate before the setting existed
    monkeypatch.setitem(settings.SETTINGS, "lr_schedule", settings.Setting(**{**vars(declared), "before": "burda"}))
    assert files.read_metrics(tmp_path)["settings"]["lr_schedule"] == "burda"
    assert files.load_checkpoint(tmp_path / "checkpoint.pt")["settings"]["lr_schedule"] == "burda"
