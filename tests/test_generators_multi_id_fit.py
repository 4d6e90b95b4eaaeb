"""Training the multi-identity adapter from data: group canvases, fit/resume and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facefoundry.generators.multi_id.group_data import GroupCanvasSet
from facefoundry.generators.multi_id.layout import validate_layout
from facefoundry.generators.multi_id.settings import MultiIdTrainSettings
from facefoundry.generators.training_data import FaceTrainingSet
from tests.helpers.generators import ID_DIM, adapted, tiny_id_network


def face_set(people: int = 8, per_person: int = 2, size: int = 16, dim: int = ID_DIM, seed=0):
    rng = np.random.default_rng(seed)
    n = people * per_person
    embeddings = rng.standard_normal((n, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return FaceTrainingSet(
        faces=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        embeddings=embeddings,
        labels=np.repeat(np.arange(people), per_person),
        names=[f"p{i}" for i in range(n)],
        embedder={"name": "random"},
    )


def test_group_canvas_pastes_k_different_people_at_their_boxes():
    data = face_set()
    canvases = GroupCanvasSet(data, faces_per_image=3, canvas=64, background="grey", seed=3)
    batch = canvases.batch(step=5, batch_size=2)
    assert batch.images.shape == (2, 3, 64, 64) and batch.targets is None
    assert batch.identities.shape == (2, 3, ID_DIM) and batch.boxes.shape == (2, 3, 4)
    assert float(batch.images.min()) >= -1 and float(batch.images.max()) <= 1
    for i in range(2):
        faces, boxes = canvases.pick(5, i)
        assert len(set(data.labels[faces].tolist())) == 3
        validate_layout(boxes)  # inside the frame, pairwise disjoint
        assert torch.equal(batch.boxes[i], torch.from_numpy(boxes))
        assert torch.equal(batch.identities[i], torch.from_numpy(data.embeddings[faces]))
        covered = torch.zeros(64, 64, dtype=torch.bool)
        for face, box in zip(faces, boxes, strict=True):
            x1, y1, x2, y2 = (int(round(v * 64)) for v in box)
            source = torch.from_numpy(data.faces[face]).permute(2, 0, 1)[None].float()
            expected = F.interpolate(
                source / 127.5 - 1, (y2 - y1, x2 - x1), mode="bilinear", antialias=True
            )[0]
            pasted = batch.images[i, :, y1:y2, x1:x2]
            assert torch.allclose(pasted, expected.clamp(-1, 1), atol=1e-5)
            mean = source.mean((0, 2, 3)) / 127.5 - 1  # independent of the resampler
            assert torch.allclose(pasted.mean((1, 2)), mean, atol=0.08)
            covered[y1:y2, x1:x2] = True
        assert float(batch.images[i][:, ~covered].abs().max()) == 0.0  # mid-grey elsewhere
    again = GroupCanvasSet(data, faces_per_image=3, canvas=64, background="grey", seed=3)
    repeat = again.batch(step=5, batch_size=2)
    assert torch.equal(repeat.images, batch.images) and torch.equal(repeat.boxes, batch.boxes)
    other = GroupCanvasSet(data, faces_per_image=3, canvas=64, seed=4).batch(5, 2)
    assert not torch.equal(other.images, batch.images)
    noisy = GroupCanvasSet(data, faces_per_image=3, canvas=64, seed=3).batch(5, 2)
    assert torch.equal(noisy.images, GroupCanvasSet(data, 3, 64, seed=3).batch(5, 2).images)
    with pytest.raises(ValueError, match="different people"):
        GroupCanvasSet(face_set(people=2), faces_per_image=3)


def _model_folder(tmp_path):
    from diffusers import DDPMScheduler

    from facefoundry.generators.multi_id.model import save_model

    unet, adapter = adapted(live=False)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    return save_model(tmp_path / "base", unet, adapter, scheduler)


SETTINGS = MultiIdTrainSettings(
    faces_per_image=2, low_noise_fraction=1.0, learning_rate=1e-2, device="cpu"
)


def _fit(model, out, steps, checkpoint_every=100):
    from facefoundry.generators.multi_id.fit import fit_adapter

    return fit_adapter(
        model, face_set(), out, tiny_id_network(), steps=steps, batch_size=2,
        settings=SETTINGS, seed=7, checkpoint_every=checkpoint_every, progress=False,
        negatives=torch.randn(3, 16, generator=torch.Generator().manual_seed(0)),
    )  # fmt: skip


def test_fit_adapter_trains_only_the_adapter_and_writes_model_and_history(tmp_path):
    from facefoundry.generators.multi_id.model import load_model

    base = _model_folder(tmp_path)
    out = _fit(base, tmp_path / "run", steps=3, checkpoint_every=2)
    assert out == tmp_path / "run" / "model"
    unet0, adapter0, _, _ = load_model(base)
    unet1, adapter1, _, _ = load_model(out)
    frozen0, frozen1 = unet0.state_dict(), unet1.state_dict()
    base_keys = [k for k in frozen0 if "processor" not in k]
    assert base_keys and all(torch.equal(frozen0[k], frozen1[k]) for k in base_keys)
    start, end = adapter0.state_dict(), adapter1.state_dict()
    moved = [k for k in start if not torch.equal(start[k], end[k])]
    assert any("to_out_id" in k for k in moved) and any(k.startswith("tokenizer") for k in moved)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
    assert all(np.isfinite(h["loss"]) and h["identity"] > 0 for h in history)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    assert json.loads((out / "fit_step.json").read_text()) == {"step": 3}
    for name in ("checkpoint/state.safetensors", "model/adapter.safetensors"):
        assert (tmp_path / "run" / name).read_bytes()[:2] != b"\x80\x04"  # not a pickle
    left = sorted(p.name for p in (tmp_path / "run").iterdir())  # no temporary or old folders
    assert left == ["checkpoint", "history.json", "model"]


def test_resumed_fit_matches_an_uninterrupted_one(tmp_path):
    from facefoundry.generators.multi_id.model import load_model

    base = _model_folder(tmp_path)
    straight = _fit(base, tmp_path / "straight", steps=4)
    _fit(base, tmp_path / "resumed", steps=2)
    resumed = _fit(base, tmp_path / "resumed", steps=4)
    a, b = load_model(straight)[1].state_dict(), load_model(resumed)[1].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    first = json.loads((tmp_path / "straight" / "history.json").read_text())
    second = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["step"] for h in second] == [1, 2, 3, 4]
    assert [h["loss"] for h in second] == pytest.approx([h["loss"] for h in first], abs=1e-6)


def test_cli_init_and_train_multi_id(tmp_path, capsys, caplog):
    from facefoundry.flows.cli import main

    data = face_set(dim=16).save(tmp_path / "faces.npz")
    model, out = tmp_path / "model", tmp_path / "run"
    init = ["generator", "init-multi-id", "--unet", "tiny", "--out", str(model)]
    assert main([*init, "--id-dim", "16", "--tokens", "2"]) == 0
    assert (model / "multi_id.json").is_file() and (model / "unet" / "config.json").is_file()
    train = ["generator", "train-multi-id", str(data), "--model", str(model), "--out", str(out)]
    assert main([*train, "--steps", "2", "--batch-size", "2", "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["model"] == str(out / "model")
    assert "identity and InfoNCE losses are off" in caplog.text
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and all(h["identity"] == 0 for h in history)
    for action in ("init-multi-id", "train-multi-id"):
        with pytest.raises(SystemExit) as done:
            main(["generator", action, "--help"])
        assert done.value.code == 0
    assert "--identity-model" in capsys.readouterr().out
