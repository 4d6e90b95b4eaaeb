"""facefoundry.checkpoints: round trips, and crashes that must leave the previous checkpoint."""

from __future__ import annotations

import json
import os

import pytest
import torch

from facefoundry import checkpoints
from facefoundry.checkpoints import atomic_folder, load_checkpoint, save_checkpoint


def _trained(seed: int = 0, steps: int = 3):
    """A small model and an AdamW optimizer with moments (and a step count) to save."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        optimizer.step()
    return model, optimizer


def _save(folder, model, optimizer, step):
    ema = {k: v.detach().clone() * 0.5 for k, v in model.state_dict().items()}
    return save_checkpoint(
        folder, {"model": model, "ema": ema}, optimizer, {"step": step, "history": [1.5]}
    )


def _assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == json.loads(json.dumps(b["param_groups"]))  # tuples -> lists
    assert a["state"].keys() == b["state"].keys()
    for index, values in a["state"].items():
        assert values.keys() == b["state"][index].keys()
        for name, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][name]))


def test_round_trip_restores_weights_optimizer_and_state(tmp_path):
    model, optimizer = _trained()
    folder = _save(tmp_path / "checkpoint", model, optimizer, step=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # nothing left over
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "state.safetensors"]
    assert (folder / "state.safetensors").read_bytes()[:2] != b"\x80\x04"  # not a pickle

    other, other_optimizer = _trained(seed=1, steps=1)  # different weights and moments
    checkpoint = load_checkpoint(folder)
    assert checkpoint.state["step"] == 3 and checkpoint.state["history"] == [1.5]
    checkpoint.restore(other_optimizer, model=other)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
    assert set(checkpoint.weights) == {"model", "ema"}
    assert torch.equal(checkpoint.weights["ema"]["0.weight"], model[0].weight.detach() * 0.5)
    _assert_same_optimizer(other_optimizer.state_dict(), optimizer.state_dict())

    # the restored pair takes exactly the step the original takes
    batch = torch.randn(5, 4)
    for m, o in ((model, optimizer), (other, other_optimizer)):
        o.zero_grad()
        m(batch).pow(2).mean().backward()
        o.step()
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)


def test_saving_again_replaces_the_checkpoint_whole(tmp_path):
    model, optimizer = _trained()
    _save(tmp_path / "checkpoint", model, optimizer, step=3)
    _save(tmp_path / "checkpoint", model, optimizer, step=4)
    assert load_checkpoint(tmp_path / "checkpoint").state["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert load_checkpoint(tmp_path / "nothing") is None
    with pytest.raises(ValueError, match="no dots"):
        save_checkpoint(tmp_path / "bad", {"optim": model}, None, {})


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = _trained()
    _save(tmp_path / "checkpoint", model, optimizer, step=3)
    before = (tmp_path / "checkpoint" / "state.safetensors").read_bytes()

    import safetensors.torch

    def crash(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path / "checkpoint", model, optimizer, step=4)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # temp folder removed
    assert (tmp_path / "checkpoint" / "state.safetensors").read_bytes() == before
    assert load_checkpoint(tmp_path / "checkpoint").state["step"] == 3


def test_a_crash_inside_the_swap_keeps_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model, optimizer = _trained()
    _save(tmp_path / "checkpoint", model, optimizer, step=3)
    replace, calls = os.replace, []

    def crash_on_second_rename(src, dst):  # checkpoint -> checkpoint.old done, then a crash
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("killed")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second_rename)
    with pytest.raises(OSError, match="killed"):
        _save(tmp_path / "checkpoint", model, optimizer, step=4)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.old"]
    checkpoint = load_checkpoint(tmp_path / "checkpoint")  # falls back to the previous one
    assert checkpoint.state["step"] == 3
    other, other_optimizer = _trained(seed=1, steps=1)
    checkpoint.restore(other_optimizer, model=other)
    assert torch.equal(other[0].weight, model[0].weight)

    # the next save puts a complete checkpoint in place and only then drops the old one
    _save(tmp_path / "checkpoint", model, optimizer, step=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert load_checkpoint(tmp_path / "checkpoint").state["step"] == 5


def test_a_killed_writer_leaves_only_a_temporary_folder_that_is_ignored(tmp_path):
    model, optimizer = _trained()
    _save(tmp_path / "checkpoint", model, optimizer, step=3)
    stale = tmp_path / f"checkpoint{checkpoints.TMP_MARK}99999"  # as a kill -9 leaves it
    stale.mkdir()
    (stale / "state.safetensors").write_bytes(b"half")
    assert load_checkpoint(tmp_path / "checkpoint").state["step"] == 3
    _save(tmp_path / "checkpoint", model, optimizer, step=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # stale one removed


def test_atomic_folder_holds_any_files_and_save_weights_writes_one_file(tmp_path):
    with atomic_folder(tmp_path / "model") as folder:
        (folder / "sub").mkdir()
        (folder / "sub" / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "model") as folder:
        (folder / "sub").mkdir()
        raise RuntimeError("failed half way")
    assert (tmp_path / "model" / "sub" / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    from safetensors.torch import load_file

    model, _ = _trained()
    path = checkpoints.save_weights(tmp_path / "weights.safetensors", model)
    loaded = load_file(str(path))
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
