"""The multi-identity generator on a trained base (issue 17): the IDiff-Face UNet turned
into a group-canvas base, the canvas fine-tune, and the no-mask ablation switch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefoundry.generators.multi_id.settings import MultiIdTrainSettings
from tests.helpers.generators import ID_DIM, adapted, tiny_id_network
from tests.test_generators_multi_id_fit import face_set


@pytest.fixture(scope="module")
def tiny_idiff(tmp_path_factory):
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from tests.helpers.generators import tiny_config

    torch.manual_seed(0)
    model = IDiffFaceModel(tiny_config(id_in_time_embedding=True))
    with torch.no_grad():  # a non-zero "learned" empty context, as a trained model has
        model.conditioner.empty_context.normal_()
        model.unet.time_embedding.linear_2.bias.normal_()
    return model.save_pretrained(tmp_path_factory.mktemp("tiny-idiff"))


def test_base_unet_folds_the_empty_identity_into_the_time_embedding_exactly(tiny_idiff):
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from facefoundry.generators.multi_id.base import base_unet_from_idiff_face

    model = IDiffFaceModel.from_pretrained(tiny_idiff)
    base = base_unet_from_idiff_face(tiny_idiff, canvas=16)
    assert base.class_embedding is None and base.config.class_embed_type is None
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 400, 999])
    empty = model.conditioner.empty_context[None].expand(3, -1, -1)
    with torch.no_grad():
        expected = model.unet(x, t, encoder_hidden_states=empty, class_labels=empty.flatten(1))
        folded = base(x, t, encoder_hidden_states=empty).sample
        unfolded = model.unet(
            x, t, encoder_hidden_states=empty, class_labels=torch.zeros_like(empty.flatten(1))
        )
    assert torch.allclose(folded, expected.sample, atol=1e-5)
    assert not torch.allclose(folded, unfolded.sample, atol=1e-3)  # the fold mattered
    wide = base_unet_from_idiff_face(tiny_idiff, canvas=32)
    assert wide.config.sample_size == 32
    with torch.no_grad():  # fully convolutional: a 2x canvas runs with the same weights
        assert wide(torch.randn(1, 3, 32, 32), t[:1], encoder_hidden_states=empty[:1]).sample.shape == (
            1, 3, 32, 32,
        )  # fmt: skip


def _fit_base(folder, out, steps):
    from facefoundry.generators.multi_id.base import fit_base

    return fit_base(
        folder, face_set(people=6, dim=12), out, steps=steps, batch_size=2, learning_rate=1e-3,
        face_counts=(2, 3), box_min=0.35, box_max=0.45, canvas=32, seed=3, progress=False,
    )  # fmt: skip


def test_fit_base_trains_every_weight_resumes_exactly_and_feeds_init_multi_id(tiny_idiff, tmp_path):
    from diffusers import UNet2DConditionModel

    from facefoundry.generators.multi_id.base import base_unet_from_idiff_face
    from facefoundry.generators.multi_id.fit import init_model_folder
    from facefoundry.generators.multi_id.model import load_model

    straight = _fit_base(tiny_idiff, tmp_path / "straight", steps=3)
    _fit_base(tiny_idiff, tmp_path / "resumed", steps=2)
    resumed = _fit_base(tiny_idiff, tmp_path / "resumed", steps=3)
    a = UNet2DConditionModel.from_pretrained(straight / "unet").state_dict()
    b = UNet2DConditionModel.from_pretrained(resumed / "unet").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    start = base_unet_from_idiff_face(tiny_idiff, canvas=32).state_dict()
    moved = [k for k in start if not torch.equal(start[k], a[k])]
    assert any("down_blocks" in k for k in moved) and any("attn2" in k for k in moved)
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
    assert all(np.isfinite(h["diffusion"]) for h in history)
    step = json.loads((straight / "fit_step.json").read_text())
    assert step["step"] == 3 and step["face_counts"] == [2, 3] and step["canvas"] == 32
    # the base is what init-multi-id takes: its UNet, and the IDiff-Face schedule
    model = init_model_folder(tmp_path / "model", straight, id_dim=12, tokens=2)
    unet, adapter, scheduler, _ = load_model(model)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert unet.config.sample_size == 32 and adapter.tokenizer.id_dim == 12


def test_region_masks_off_lets_every_position_see_every_identity(tmp_path):
    from diffusers import DDPMScheduler

    from facefoundry.generators.multi_id.layout import box_masks
    from facefoundry.generators.multi_id.model import load_model, save_model

    unet, adapter = adapted()
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    ids = torch.randn(1, 2, ID_DIM, generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 1] = torch.randn(ID_DIM, generator=torch.Generator().manual_seed(1))
    name = adapter.layer_names[0]
    attn, processor = unet.get_submodule(name), adapter.processor(name)
    hidden = torch.randn(
        1, 16 * 16, attn.to_q.in_features, generator=torch.Generator().manual_seed(2)
    )
    mask_a = box_masks(boxes, 16, 16)[0, 0]
    outside = ~box_masks(boxes, 16, 16)[0].any(0)

    def terms():
        out = []
        for vectors in (ids, changed):
            with torch.no_grad(), adapter.condition(vectors, boxes, (16, 16), record=True):
                attn(hidden, encoder_hidden_states=torch.zeros(1, 1, 16))
            out.append(processor.last_identity_term[0])
        return out

    assert adapter.region_masks
    masked = terms()
    assert float((masked[1] - masked[0])[mask_a].abs().max()) == 0.0  # B never reaches A
    assert float(masked[0][outside].abs().max()) == 0.0
    adapter.set_region_masks(False)
    free = terms()
    assert float((free[1] - free[0])[mask_a].abs().max()) > 1e-3  # now it does
    assert float(free[0][outside].abs().max()) > 1e-3
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    folder = save_model(tmp_path / "nomask", unet, adapter, scheduler)
    assert json.loads((folder / "multi_id.json").read_text())["region_masks"] is False
    assert load_model(folder)[1].region_masks is False


def test_fit_adapter_cycles_face_counts_and_records_the_mask_setting(tmp_path):
    from diffusers import DDPMScheduler

    from facefoundry.generators.multi_id.fit import fit_adapter
    from facefoundry.generators.multi_id.model import load_model, save_model

    unet, adapter = adapted(live=False)
    base = save_model(tmp_path / "base", unet, adapter, DDPMScheduler(num_train_timesteps=1000))
    settings = MultiIdTrainSettings(
        face_counts=[2, 3], region_masks=False, low_noise_fraction=1.0, device="cpu"
    )
    out = fit_adapter(
        base, face_set(), tmp_path / "run", tiny_id_network(), steps=2, batch_size=2,
        settings=settings, seed=1, progress=False,
    )  # fmt: skip
    assert load_model(out)[1].region_masks is False
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["faces_per_image"] for h in history] == [2, 3]
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["settings"]["face_counts"] == [2, 3]
    with pytest.raises(ValueError, match="face_counts"):
        MultiIdTrainSettings(face_counts=[0, 2])


def test_cli_train_multi_id_base_runs_and_explains_itself(tiny_idiff, tmp_path, capsys):
    from facefoundry.flows.cli import main

    data = face_set(people=6, dim=12).save(tmp_path / "faces.npz")
    out = tmp_path / "base-run"
    args = ["generator", "train-multi-id-base", str(data), "--idiff-face", str(tiny_idiff)]
    args += ["--out", str(out), "--steps", "1", "--batch-size", "2", "--canvas", "32"]
    assert main([*args, "--face-counts", "2,3", "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["base"] == str(out / "base") and (out / "base" / "unet").is_dir()
    with pytest.raises(SystemExit) as bad:
        main([*args, "--face-counts", "2,9"])
    assert bad.value.code == 2 and "1..8" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["generator", "train-multi-id-base", "--help"])
    assert done.value.code == 0 and "group canvases" in capsys.readouterr().out


def test_adapter_from_idiff_face_reproduces_its_identity_cross_attention_in_a_box(
    tiny_idiff, tmp_path
):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from facefoundry.generators.multi_id.base import (
        base_unet_from_idiff_face,
        idiff_face_schedule,
        write_base_folder,
    )
    from facefoundry.generators.multi_id.fit import init_model_folder
    from facefoundry.generators.multi_id.model import load_model

    base = write_base_folder(
        tmp_path / "base",
        base_unet_from_idiff_face(tiny_idiff, 16),
        idiff_face_schedule(tiny_idiff),
    )
    folder = init_model_folder(tmp_path / "m", base, id_dim=12, tokens=2, identity_from=tiny_idiff)
    unet, adapter, _, _ = load_model(folder)
    assert adapter.tokenizer.hidden == 0  # linear, as IDiff-Face's context projection
    conditioner = IDiffFaceModel.from_pretrained(tiny_idiff).conditioner
    identity = torch.nn.functional.normalize(torch.randn(1, 1, 12), dim=-1)
    whole = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    for name in adapter.layer_names:
        attn = unet.get_submodule(name)
        hidden = torch.randn(1, 16, attn.to_q.in_features)  # a 4 x 4 layer of a 16 px input
        with torch.no_grad(), adapter.condition(identity, whole, (16, 16)):
            routed = attn(hidden, encoder_hidden_states=torch.zeros(1, 1, 8))
        context = conditioner.to_context(identity[0]).view(1, 2, 8)
        processor = attn.processor
        attn.set_processor(AttnProcessor2_0())
        with torch.no_grad():
            plain = attn(hidden, encoder_hidden_states=context)
        attn.set_processor(processor)
        assert torch.allclose(routed, plain, atol=1e-5), name
    with pytest.raises(ValueError, match="cannot take IDiff-Face's identity path"):
        init_model_folder(tmp_path / "bad", base, id_dim=12, tokens=3, identity_from=tiny_idiff)
