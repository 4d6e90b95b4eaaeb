"""The WithAnyone-style multi-identity generator (generators/multi_id) on tiny models.

Crop-back uses real LFW faces: under CI=true LFW must be present (tests/conftest.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facefoundry.generators.multi_id.attention import (
    adapter_parameters,
    remove_identity_adapter,
)
from facefoundry.generators.multi_id.layout import box_masks, sample_layout, validate_layout
from facefoundry.generators.multi_id.losses import (
    crop_faces,
    hungarian,
    identity_loss,
    info_nce,
    low_noise_weight,
)
from facefoundry.generators.multi_id.settings import MultiIdSettings, MultiIdTrainSettings
from tests.helpers.generators import ID_DIM, adapted, tiny_id_network

BOXES = [[0.05, 0.05, 0.45, 0.45], [0.55, 0.55, 0.95, 0.95]]


def forward(unet, adapter, ids, boxes, record=False, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(ids), unet.config.in_channels, 16, 16, generator=g)
    prompt = torch.randn(len(ids), 3, 16, generator=g)
    with torch.no_grad(), adapter.condition(ids, boxes, (16, 16), record=record):
        return unet(x, torch.tensor([500] * len(ids)), encoder_hidden_states=prompt).sample


def test_zero_init_adapter_leaves_the_base_model_unchanged():
    unet, adapter = adapted(live=False)
    ids = torch.randn(1, 2, ID_DIM)
    boxes = torch.tensor([BOXES])
    with_adapter = forward(unet, adapter, ids, boxes)
    remove_identity_adapter(unet)
    base = forward(unet, adapter, ids, boxes)
    assert torch.equal(with_adapter, base)


def identity_terms_per_layer(unet, adapter, ids, boxes, seed=3):
    """Each attn2 layer's identity term for the same fixed layer input (a 16 x 16 input
    gives 16 x 16 and 8 x 8 grids here), so only the identities differ between calls."""
    terms = {}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad(), adapter.condition(ids, boxes, (16, 16), record=True):
        for name in adapter.layer_names:
            attn = unet.get_submodule(name)
            side = 16 if name.startswith(("down_blocks.0", "up_blocks.1")) else 8
            hidden = torch.randn(len(ids), side * side, attn.to_q.in_features, generator=g)
            prompt = torch.randn(len(ids), 3, 16, generator=g)
            attn(hidden, encoder_hidden_states=prompt)
            terms[name] = adapter.processor(name).last_identity_term
    return terms


def test_mask_routing_is_exact_per_layer():
    unet, adapter = adapted()
    torch.manual_seed(5)
    ids = torch.randn(1, 2, ID_DIM)
    boxes = torch.tensor([BOXES])
    before = identity_terms_per_layer(unet, adapter, ids, boxes)
    changed = ids.clone()
    changed[0, 1] = torch.randn(ID_DIM)  # identity B only
    after = identity_terms_per_layer(unet, adapter, changed, boxes)
    assert len(before) == 4  # down (1), mid (1), up (2) cross-attention layers
    for name, term in before.items():
        side = int(math.isqrt(term.shape[1]))
        masks = box_masks(boxes, side, side)[0]
        delta = (after[name] - term).abs()[0].amax(-1)
        assert masks[0].any() and masks[1].any()
        assert float(delta[masks[0]].max()) == 0.0, f"{name}: identity B leaked into region A"
        assert float(delta[masks[1]].max()) > 1e-4, f"{name}: region B ignored identity B"
        outside = ~(masks[0] | masks[1])
        assert float(term[0][outside].abs().max()) == 0.0
    # through the whole UNet the conditioning is live: the output depends on identity B
    assert not torch.equal(
        forward(unet, adapter, ids, boxes), forward(unet, adapter, changed, boxes)
    )


def test_identity_loss_and_hungarian_against_hand_values():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    ids = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    loss, assignment = identity_loss(pred, ids)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert assignment[0].tolist() == [1, 0]
    pred = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    loss, assignment = identity_loss(pred, torch.eye(2)[None])
    assert assignment[0].tolist() == [0, 1]
    assert float(loss) == pytest.approx((0 + 1 - 1 / math.sqrt(2)) / 2, abs=1e-6)
    # weights: only the low-noise image counts
    loss, _ = identity_loss(
        torch.cat([pred, -pred]), torch.eye(2)[None].repeat(2, 1, 1), torch.tensor([1.0, 0.0])
    )
    assert float(loss) == pytest.approx((1 - 1 / math.sqrt(2)) / 2, abs=1e-6)
    # greedy would take (0, 0) = 0.9 first; the optimum is the anti-diagonal-ish 0.8+0.8+0.7
    sim = np.array([[0.9, 0.8, 0.0], [0.8, 0.1, 0.0], [0.0, 0.0, 0.7]])
    rows, cols = hungarian(sim)
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 1, 1: 0, 2: 2}


def test_info_nce_against_hand_value():
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positives = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negatives = torch.tensor([[-1.0, 0.0]])
    loss = info_nce(pred, positives, negatives, temperature=0.5)
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-2)))
    row1 = -math.log(math.exp(2) / (math.exp(0) + math.exp(2) + math.exp(0)))
    assert float(loss) == pytest.approx((row0 + row1) / 2, abs=1e-5)
    weighted = info_nce(pred, positives, negatives, 0.5, weight=torch.tensor([0.0, 1.0]))
    assert float(weighted) == pytest.approx(row1, abs=1e-5)
    t = torch.tensor([0, 599, 600, 601, 999])
    assert low_noise_weight(t, 1000, 0.6).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_face_crop_follows_the_box_and_keeps_the_gradient():
    image = torch.zeros(1, 3, 64, 64)
    image[:, :, 16:32, 32:48] = 1.0
    image.requires_grad_(True)
    crops = crop_faces(image, torch.tensor([[[0.5, 0.25, 0.75, 0.5], [0.0, 0.0, 0.25, 0.25]]]))
    assert crops.shape == (2, 3, 112, 112)
    assert float(crops[0, :, 8:-8, 8:-8].detach().min()) > 0.99
    assert float(crops[1].detach().abs().max()) == 0.0
    crops[0].sum().backward()
    assert float(image.grad[:, :, 16:32, 32:48].sum()) > 0
    assert float(image.grad[:, :, :8, :8].abs().sum()) == 0.0


def test_layouts_are_seeded_and_bad_layouts_are_rejected():
    a = sample_layout(4, seed=7, box_min=0.2, box_max=0.3, margin=0.02)
    assert np.array_equal(a, sample_layout(4, seed=7, box_min=0.2, box_max=0.3, margin=0.02))
    validate_layout(a)
    sides = a[:, 2] - a[:, 0]
    assert np.allclose(sides, a[:, 3] - a[:, 1]) and (sides >= 0.2).all() and (sides <= 0.3).all()
    with pytest.raises(ValueError, match="overlap"):
        validate_layout([[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.8, 0.8]])
    with pytest.raises(ValueError, match="out of frame"):
        validate_layout([[0.7, 0.7, 1.2, 1.2]])
    with pytest.raises(ValueError, match="no area"):
        validate_layout([[0.5, 0.5, 0.5, 0.6]])
    with pytest.raises(ValueError, match="could not place"):
        sample_layout(8, seed=0, box_min=0.45, box_max=0.45)
    with pytest.raises(ValueError, match="box_min"):
        MultiIdSettings(box_min=0.5, box_max=0.3)
    with pytest.raises(ValueError):
        MultiIdSettings(faces_per_imag=2)


def _three_faces(lfw, detector, embedder):
    """A 480 px canvas with three LFW people at known boxes, and their SFace vectors."""
    import cv2

    from facefoundry.evaluation.lfw import image_name
    from facefoundry.faces import align_face, decode_image, select_face

    people = ["Colin_Powell", "Serena_Williams", "George_W_Bush"]
    originals = [decode_image(lfw.read(image_name(p, 1)), p) for p in people]
    vectors = []
    for image in originals:
        face = select_face(detector.detect(image), image.shape)
        vectors.append(embedder.embed_aligned(align_face(image, face.landmarks))[0])
    vectors = np.stack(vectors)
    canvas = np.full((480, 480, 3), 127, np.uint8)
    corners = [(10, 10), (250, 10), (130, 250)]
    for (x, y), image in zip(corners, originals, strict=True):
        canvas[y : y + 220, x : x + 220] = cv2.resize(image[15:235, 15:235], (220, 220))
    boxes = [[x / 480, y / 480, (x + 220) / 480, (y + 220) / 480] for x, y in corners]
    return canvas, boxes, vectors


def test_crop_back_emits_exactly_the_assigned_faces(lfw):
    from facefoundry.faces import get_detector, get_embedder

    detector, embedder = get_detector("yunet"), get_embedder("sface")
    canvas, boxes, vectors = _three_faces(lfw, detector, embedder)
    empty = [0.0, 0.55, 0.2, 0.75]  # a fourth identity whose box holds no face
    fourth = np.random.default_rng(0).standard_normal(128).astype(np.float32)
    from facefoundry.generators.multi_id.generate import crop_back

    samples, rejects = crop_back(
        canvas, np.array(boxes + [empty]), np.vstack([vectors, fourth]), detector, embedder, "g0"
    )
    assert [s.slot for s in samples] == [0, 1, 2]
    for s in samples:
        assert s.face.shape == (112, 112, 3)
        assert s.provenance["source_key"] == "g0" and s.provenance["assignment_score"] > 0.5
    assert [(r.kind, r.index, r.reason) for r in rejects] == [("identity", 3, "no_face")]
    # identities 0 and 1 swapped: the box gate forbids following the embedding, and a
    # similarity floor turns both into recorded rejects instead of mislabelled samples
    swapped = vectors[[1, 0, 2]]
    samples, rejects = crop_back(
        canvas, np.array(boxes), swapped, detector, embedder, "g1", min_similarity=0.3
    )
    assert [s.slot for s in samples] == [2]
    reasons = sorted((r.kind, r.index, r.reason) for r in rejects)
    assert ("identity", 0, "no_accepted_face") in reasons
    assert ("identity", 1, "no_accepted_face") in reasons
    assert sum(r == "low_similarity" for _, _, r in reasons) == 2


def _batch(k=2, b=2, size=16, seed=0):
    from facefoundry.generators.multi_id.train import MultiIdBatch

    g = torch.Generator().manual_seed(seed)
    return MultiIdBatch(
        images=torch.rand(b, 3, size, size, generator=g) * 2 - 1,
        identities=torch.nn.functional.normalize(torch.randn(b, k, ID_DIM, generator=g), dim=-1),
        boxes=torch.tensor([BOXES] * b),
    )


def test_training_steps_change_only_the_adapter():
    from diffusers import DDPMScheduler

    from facefoundry.generators.multi_id.train import make_optimizer, training_step

    unet, adapter = adapted(live=False)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    settings = MultiIdTrainSettings(low_noise_fraction=1.0, id_loss_weight=1.0, infonce_weight=1.0)
    trainable = {id(p) for p in adapter_parameters(adapter)}
    frozen = {n: p.detach().clone() for n, p in unet.named_parameters() if id(p) not in trainable}
    start = {n: p.detach().clone() for n, p in adapter.named_parameters()}
    optimizer = make_optimizer(adapter, 1e-2)
    generator = torch.Generator().manual_seed(0)
    network = tiny_id_network()
    for _ in range(3):
        out = training_step(
            unet, adapter, scheduler, _batch(), network, optimizer, settings,
            negatives=torch.randn(5, 16), generator=generator,
        )  # fmt: skip
        assert all(math.isfinite(v) for v in out.values()) and out["low_noise_images"] == 2
        assert out["identity"] > 0
    assert all(torch.equal(p, frozen[n]) for n, p in unet.named_parameters() if n in frozen)
    assert all(not p.requires_grad for n, p in unet.named_parameters() if n in frozen)
    moved = [n for n, p in adapter.named_parameters() if not torch.equal(p, start[n])]
    assert any("to_out_id" in n for n in moved) and any("to_k_id" in n for n in moved)
    assert any(n.startswith("tokenizer") for n in moved)


def test_latent_training_step_decodes_x0_through_the_vae():
    from diffusers import AutoencoderKL, DDPMScheduler

    from facefoundry.generators.multi_id.train import make_optimizer, training_step

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(4, 4),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=2,
        layers_per_block=1,
        sample_size=32,
    ).eval()
    vae.requires_grad_(False)
    unet, adapter = adapted(in_channels=4)
    settings = MultiIdTrainSettings(low_noise_fraction=1.0)
    out = training_step(
        unet, adapter, DDPMScheduler(), _batch(size=32), tiny_id_network(),
        make_optimizer(adapter), settings, vae=vae, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert math.isfinite(out["loss"]) and out["identity"] > 0


def test_adapter_save_load_round_trip(tmp_path):
    from facefoundry.generators.multi_id.train import load_adapter, save_adapter

    unet, adapter = adapted(seed=0)
    ids, boxes = torch.randn(1, 2, ID_DIM), torch.tensor([BOXES])
    expected = forward(unet, adapter, ids, boxes)
    path = save_adapter(adapter, tmp_path / "adapter.safetensors")
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    other_unet, other = adapted(seed=0, live=False)
    other.tokenizer.mlp[0].weight.data.zero_()
    load_adapter(other, path)
    assert torch.equal(forward(other_unet, other, ids, boxes), expected)


def test_sampling_and_generate_chunk_record_rejects(tmp_path):
    import pyarrow.parquet as pq
    from diffusers import DDPMScheduler

    from facefoundry.generators.identities import make_identities
    from facefoundry.generators.multi_id.generate import generate_chunk, sample_groups
    from facefoundry.generators.multi_id.model import make_sampler, save_model
    from facefoundry.shards.tarformat import iter_members

    unet, adapter = adapted(size=32)
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    layout = sample_layout(2, seed=1, box_min=0.3, box_max=0.4)
    images = sample_groups(
        unet, adapter, make_sampler(scheduler, "dpmsolver++"), np.random.randn(1, 2, ID_DIM),
        layout[None], [11], steps=2,
    )  # fmt: skip
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8
    again = sample_groups(
        unet, adapter, make_sampler(scheduler, "ddim"), np.random.randn(1, 2, ID_DIM),
        layout[None], [11], steps=2,
    )  # fmt: skip
    assert again.shape == images.shape
    # a group image is the same bytes drawn alone or in a batch (fixed CPU call shapes)
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((3, 2, ID_DIM))
    layouts = np.stack([sample_layout(2, seed=s, box_min=0.3, box_max=0.4) for s in (1, 2, 3)])
    sampler = make_sampler(scheduler, "dpmsolver++")
    together = sample_groups(unet, adapter, sampler, vectors, layouts, [5, 6, 7], steps=2)
    for i in range(3):
        alone = sample_groups(
            unet, adapter, sampler, vectors[i : i + 1], layouts[i : i + 1], [5 + i], steps=2
        )
        assert np.array_equal(alone[0], together[i])
    with pytest.raises(ValueError, match="overlap"):
        sample_groups(unet, adapter, scheduler, np.zeros((1, 2, ID_DIM)), [BOXES[:1] * 2], [1])

    model = save_model(tmp_path / "model", unet, adapter, scheduler)
    identities = make_identities(3, ID_DIM, seed=0).save(tmp_path / "identities.parquet")
    settings = MultiIdSettings(
        model=str(model), faces_per_image=2, samples_per_identity=2, steps=2, box_min=0.3,
        box_max=0.4, batch_size=4, device="cpu",
    )  # fmt: skip
    parquet = generate_chunk(identities, [0, 1, 2], tmp_path / "out", 0, settings, recipe_seed=0)
    rows = pq.read_table(parquet).to_pylist()
    rejects = pq.read_table(tmp_path / "out" / "rejects-00000.parquet").to_pylist()
    tar = tmp_path / "out" / "part-00000.tar"
    with open(tar, "rb") as handle:
        names = [m.name for m in iter_members(handle, source=str(tar), max_member_bytes=1 << 20)]
    assert len(names) == 2 * len(rows)
    # 3 identities x 2 samples, K=2: 2 groups per sample (one padded) = 8 identity slots
    slots = [r for r in rejects if r["kind"] == "identity"]
    assert len(rows) + len(slots) == 8
    covered = {(r["identity"], r["sample"]) for r in rows + slots}
    assert covered == {(i, s) for i in range(3) for s in range(2)}
    assert all(r["reason"] for r in rejects)
    # complete chunks are skipped on re-run
    assert generate_chunk(identities, [0, 1, 2], tmp_path / "out", 0, settings, 0) == parquet


def test_crop_back_upscales_small_canvases_before_reading_faces(lfw):
    import cv2

    from facefoundry.faces import get_detector, get_embedder
    from facefoundry.generators.multi_id.generate import crop_back

    detector, embedder = get_detector("yunet"), get_embedder("sface")
    canvas, boxes, vectors = _three_faces(lfw, detector, embedder)
    small = cv2.resize(canvas, (64, 64), interpolation=cv2.INTER_AREA)  # ~29 px faces
    plain, _ = crop_back(small, np.array(boxes), vectors, detector, embedder, "s")
    enlarged, _ = crop_back(small, np.array(boxes), vectors, detector, embedder, "s", upscale=4)
    assert [s.slot for s in enlarged] == [0, 1, 2]
    worst_plain = min([s.provenance["assignment_score"] for s in plain] + [1.0] * (3 - len(plain)))
    worst = min(s.provenance["assignment_score"] for s in enlarged)
    assert worst > worst_plain + 0.1  # the face whose 64 px landmarks were off is read right
    for sample in enlarged:  # provenance stays in the canvas's own pixels
        x1, y1, x2, y2 = sample.provenance["detection_box"]
        box = np.array(boxes[sample.slot]) * 64
        assert box[0] - 8 < (x1 + x2) / 2 < box[2] + 8 and x2 - x1 < 40
