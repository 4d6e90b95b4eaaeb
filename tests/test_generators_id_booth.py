"""ID-Booth on a tiny randomly initialised SD pipeline (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from facefoundry.generators.denoise import predicted_x0
from facefoundry.generators.id_booth.base import BasePipelineError, check_base_folder, load_base
from facefoundry.generators.id_booth.identity_loss import (
    similarity_matrix,
    timestep_weights,
    triplet_loss,
    warp_to_template,
)
from facefoundry.generators.id_booth.lora import load_lora, save_lora, snapshot
from facefoundry.generators.id_booth.sample import sample_images
from facefoundry.generators.id_booth.settings import IDBoothSettings
from facefoundry.generators.id_booth.tiny import make_tiny_sd
from facefoundry.generators.id_booth.train import IDBoothTrainer
from facefoundry.recognition.backbones import get_model


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd"), seed=0, image_size=32)


@pytest.fixture(scope="module")
def real_faces(lfw):
    """Six real LFW faces aligned to the template (three people, two photos each)."""
    from facefoundry.faces import align_face, decode_image, get_detector, select_face

    detector = get_detector("yunet")
    names = [
        "Abel_Pacheco/Abel_Pacheco_0001.jpg",
        "Abel_Pacheco/Abel_Pacheco_0002.jpg",
        "Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg",
        "Akhmed_Zakayev/Akhmed_Zakayev_0002.jpg",
        "Amber_Tamblyn/Amber_Tamblyn_0001.jpg",
        "Amber_Tamblyn/Amber_Tamblyn_0002.jpg",
    ]
    faces = []
    for name in names:
        image = decode_image(lfw.read(name), name)
        face = select_face(detector.detect(image), image.shape)
        faces.append(align_face(image, face.landmarks))
    return np.stack(faces)


def settings(tiny_sd, **overrides) -> IDBoothSettings:
    values = dict(
        model=str(tiny_sd),
        resolution=32,
        train_steps=3,
        learning_rate=1e-2,
        face_crop="aligned",
        steps=3,
        prior_count=2,
    )
    values.update(overrides)
    return IDBoothSettings(**values)


def identity_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return get_model("mbf_small", num_features=32)


def base_weights(unet) -> dict[str, torch.Tensor]:
    """Base-model parameters under their original names (peft wraps them as base_layer)."""
    return {k.replace(".base_layer", ""): v for k, v in snapshot(unet).items() if "lora_" not in k}


def test_only_lora_parameters_change(tiny_sd, tmp_path):
    base = load_base(tiny_sd)
    before = base_weights(base.unet)
    rng = np.random.default_rng(0)
    trainer = IDBoothTrainer(
        base,
        settings(tiny_sd),
        rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
        identity_net(),
    )
    result = trainer.fine_tune("a", rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), tmp_path)
    after = base_weights(base.unet)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    from safetensors.torch import load_file

    adapter = load_file(str(result.adapter))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: it trained
    assert all(np.isfinite(h["loss"]) for h in result.history)
    assert all("triplet" in h for h in result.history)  # aligned crops: never skipped


def test_triplet_equals_a_hand_computation():
    a = torch.tensor([[1.0, 0.0, 0.0]])
    p = torch.tensor([[0.6, 0.8, 0.0]])
    n = torch.tensor([[0.0, 0.0, 2.0]])
    # d(a, p) = 1 - 0.6 = 0.4; d(a, n) = 1 - 0 = 1.0
    assert triplet_loss(a, p, n, margin=1.0).item() == pytest.approx(0.4 - 1.0 + 1.0)
    assert triplet_loss(a, p, n, margin=0.5).item() == pytest.approx(0.0)
    assert triplet_loss(a, n, p, margin=0.2).item() == pytest.approx(1.0 - 0.4 + 0.2)


def test_timestep_weights_are_one_minus_t_over_T_squared():
    t = torch.tensor([0, 250, 500, 1000])
    assert timestep_weights(t, 1000).tolist() == pytest.approx([1.0, 0.5625, 0.25, 0.0])


def test_predicted_x0_inverts_add_noise():
    from diffusers import DDPMScheduler

    for kind in ("epsilon", "v_prediction"):
        scheduler = DDPMScheduler(prediction_type=kind)
        x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
        t = torch.tensor([10, 500, 990])
        noisy = scheduler.add_noise(x0, noise, t)
        output = noise if kind == "epsilon" else scheduler.get_velocity(x0, noise, t)
        recovered = predicted_x0(scheduler.alphas_cumprod, noisy, output, t, kind)
        assert torch.allclose(recovered, x0, atol=1e-3)


def test_differentiable_crop_matches_the_aligner_and_keeps_the_gradient(lfw):
    from facefoundry.faces import align_face, decode_image, get_detector, select_face
    from facefoundry.faces.align import ARCFACE_TEMPLATE

    name = "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    image = decode_image(lfw.read(name), name)
    face = select_face(get_detector("yunet").detect(image), image.shape)
    expected = align_face(image, face.landmarks).astype(np.float32)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float().requires_grad_(True)
    matrix = torch.from_numpy(similarity_matrix(face.landmarks, ARCFACE_TEMPLATE))[None]
    crop = warp_to_template(tensor, matrix)
    got = crop[0].permute(1, 2, 0).detach().numpy()
    assert np.abs(got - expected).mean() < 2.0  # grey levels, bilinear both ways
    crop.mean().backward()
    assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_no_face_skips_the_triplet_term(tiny_sd, tmp_path, real_faces):
    """Detect mode: the tiny random model draws no face, so every triplet is skipped,
    while the references (real faces) are found."""
    base = load_base(tiny_sd)
    trainer = IDBoothTrainer(
        base,
        settings(tiny_sd, face_crop="detect", resolution=112, train_steps=2),
        real_faces[2:4],
        identity_net(),
    )
    result = trainer.fine_tune("b", real_faces[:1], tmp_path)
    assert result.skipped_no_face == 2
    assert all("triplet" not in h for h in result.history)
    assert all(np.isfinite(h["loss"]) for h in result.history)


def test_lora_save_load_round_trip_gives_identical_images(tiny_sd, tmp_path):
    base = load_base(tiny_sd)
    rng = np.random.default_rng(1)
    trainer = IDBoothTrainer(
        base, settings(tiny_sd), rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    )
    trainer.fine_tune("c", rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), tmp_path / "c")
    prompts, seeds = ["photo of sks person"] * 2, [3, 4]
    plain = sample_images(base, prompts, seeds, steps=3, resolution=32)
    load_lora(base.unet, "c", tmp_path / "c")
    first = sample_images(base, prompts, seeds, steps=3, resolution=32)
    save_lora(
        base.unet, "c", tmp_path / "c2", json.loads((tmp_path / "c" / "adapter.json").read_text())
    )
    base.unet.delete_adapters("c")
    load_lora(base.unet, "c2", tmp_path / "c2")
    second = sample_images(base, prompts, seeds, steps=3, resolution=32)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, plain)  # the adapter does change the images
    alone = sample_images(base, prompts[1:], seeds[1:], steps=3, resolution=32)
    assert np.array_equal(alone[0], second[1])  # any image regenerates alone


def test_an_image_is_the_same_bytes_alone_and_at_any_batch_size(tiny_sd, monkeypatch):
    """PyTorch picks CPU kernels by batch size (a small convolution: its own kernel alone,
    oneDNN's in a batch), so sampling runs every model call at one shape: the final latents,
    not only the rounded pixels, are bitwise the same however the samples are batched."""
    base = load_base(tiny_sd)
    decoded = []
    decode = base.vae.decode
    monkeypatch.setattr(base.vae, "decode", lambda z, **kw: decoded.append(z) or decode(z, **kw))
    prompts, seeds = ["photo of sks person", "a person", "sks person, smiling"], [3, 4, 5]
    together = sample_images(base, prompts, seeds, steps=3, resolution=32)
    latents = decoded[-1][:3]
    for k in range(3):
        alone = sample_images(base, prompts[k : k + 1], seeds[k : k + 1], steps=3, resolution=32)
        assert torch.equal(decoded[-1][0], latents[k])
        assert np.array_equal(alone[0], together[k])
    for batch_size in (1, 2):
        images = sample_images(base, prompts, seeds, steps=3, resolution=32, batch_size=batch_size)
        assert np.array_equal(images, together)


def test_an_adapter_does_not_depend_on_what_ran_before(tiny_sd, tmp_path):
    from safetensors.torch import load_file

    base = load_base(tiny_sd)
    rng = np.random.default_rng(2)
    priors, instance = rng.integers(0, 256, (2, 2, 32, 32, 3), dtype=np.uint8)
    trainer = IDBoothTrainer(base, settings(tiny_sd, train_steps=2), priors)
    adapters = []
    for run in range(2):
        torch.randn(1000 * run)  # earlier work drew from the global generator
        result = trainer.fine_tune("d", instance[:1], tmp_path / str(run))
        adapters.append(load_file(str(result.adapter)))
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


def test_missing_or_malformed_base_pipeline_is_a_clear_error(tiny_sd, tmp_path):
    with pytest.raises(BasePipelineError, match="does not exist"):
        check_base_folder(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BasePipelineError, match="model_index.json"):
        check_base_folder(empty)
    (empty / "model_index.json").write_text("{not json")
    with pytest.raises(BasePipelineError, match="not valid JSON"):
        check_base_folder(empty)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(BasePipelineError, match="vae"):
        check_base_folder(broken)
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_sd, pickled)
    for weights in (pickled / "unet").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(BasePipelineError, match="safetensors"):
        check_base_folder(pickled)
    assert check_base_folder(tiny_sd) == "sd"


def test_generate_chunk_writes_the_stage_contract_and_reuses_adapters(
    tiny_sd, tmp_path, real_faces
):
    from PIL import Image

    from facefoundry.generators.id_booth.generate import generate_chunk
    from facefoundry.generators.identities import make_identities

    references = tmp_path / "refs"
    for person in range(2):
        folder = references / f"person{person}"
        folder.mkdir(parents=True)
        Image.fromarray(real_faces[2 * person]).save(folder / "a.jpg")
    table = make_identities(2, 16, seed=0, method="uniform")
    table_path = table.save(tmp_path / "identities.parquet")
    gen = settings(
        tiny_sd,
        references=str(references),
        train_steps=2,
        samples_per_identity=2,
        batch_size=4,
        device="cpu",
    )
    out = tmp_path / "generate"
    ids = [int(i) for i in table.ids]
    parquet = generate_chunk(table_path, ids, out, 0, gen, 7, identity_net())
    rows = pq.read_table(parquet).to_pylist()
    assert [(r["identity"], r["sample"]) for r in rows] == [(i, s) for i in ids for s in range(2)]
    assert all(r["generator"] == "id_booth" and "sks" in r["prompt"] for r in rows)
    assert (out / "part-00000.tar").stat().st_size > 0
    adapters = sorted((out / ".cache" / "adapters").glob("*/*/adapter.safetensors"))
    assert len(adapters) == 2
    stamps = [a.stat().st_mtime_ns for a in adapters]
    parquet.unlink()  # redo the chunk: adapters are reused, images identical
    first_tar = (out / "part-00000.tar").read_bytes()
    generate_chunk(table_path, ids, out, 0, gen, 7, identity_net())
    assert [a.stat().st_mtime_ns for a in adapters] == stamps
    assert (out / "part-00000.tar").read_bytes() == first_tar


# --- the pixel-space base: an IDiff-Face model folder (issue 17) ---------------------------
@pytest.fixture(scope="module")
def tiny_idiff(tmp_path_factory):
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from tests.helpers.generators import tiny_config

    torch.manual_seed(0)
    model = IDiffFaceModel(tiny_config())
    with torch.no_grad():  # a non-zero "learned" empty context, as a trained model has
        model.conditioner.empty_context.normal_()
    return model.save_pretrained(tmp_path_factory.mktemp("tiny-idiff"))


def test_id_booth_runs_on_a_pixel_idiff_face_base_and_trains_only_lora(tiny_idiff, tmp_path):
    from facefoundry.generators.id_booth.pixel_base import PIXEL_TARGET_MODULES, PixelBase
    from facefoundry.generators.id_booth.prompts import encode_prompts
    from tests.helpers.generators import tiny_id_network

    assert check_base_folder(tiny_idiff) == "pixel"
    base = load_base(tiny_idiff)
    assert isinstance(base, PixelBase) and base.resolution == 16
    # class prompt and negative prompt -> the empty context; the token -> a fixed other one
    prompts = encode_prompts(base, ["photo of a person", "", "photo of sks person"], 16)
    empty = base.conditioner.empty_context
    assert torch.equal(prompts.states[0], empty) and torch.equal(prompts.states[1], empty)
    assert not torch.allclose(prompts.states[2], empty)
    assert torch.equal(prompts.class_labels, prompts.states.flatten(1))
    unet_before = base_weights(base.unet)
    conditioner_before = {k: v.clone() for k, v in base.conditioner.state_dict().items()}
    rng = np.random.default_rng(0)
    trainer = IDBoothTrainer(
        base,
        settings(
            tiny_idiff,
            resolution=16,
            train_steps=3,
            target_modules=PIXEL_TARGET_MODULES,
            triplet_weight=1.0,
        ),
        rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8),
        tiny_id_network(),
    )
    result = trainer.fine_tune("p", rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8), tmp_path)
    assert all("triplet" in h and np.isfinite(h["loss"]) for h in result.history)
    after = base_weights(base.unet)
    assert unet_before.keys() == after.keys()
    assert all(torch.equal(unet_before[k], after[k]) for k in after)
    assert all(
        torch.equal(v, base.conditioner.state_dict()[k]) for k, v in conditioner_before.items()
    )
    from safetensors.torch import load_file

    adapter = load_file(str(result.adapter))
    assert any("class_embedding" in k for k in adapter)  # both identity paths adapted
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    # sampling through the same path: the adapter changes the images of the instance prompt
    plain = sample_images(base, ["photo of sks person"] * 2, [1, 2], steps=3, resolution=16)
    load_lora(base.unet, "p", tmp_path)
    tuned = sample_images(base, ["photo of sks person"] * 2, [1, 2], steps=3, resolution=16)
    base.unet.delete_adapters("p")
    assert tuned.shape == (2, 16, 16, 3) and not np.array_equal(plain, tuned)
    with pytest.raises(ValueError, match="16 px"):
        encode_prompts(base, ["photo of sks person"], 32)


def test_chunk_faces_are_aligned_112_from_face_and_scene_bases():
    """The chunk contract: a face base's output is resized, a scene's face is found and
    aligned (a blank scene is resized whole, for the embed stage to reject)."""
    import cv2

    from facefoundry.evaluation.lfw import Lfw, image_name
    from facefoundry.faces import decode_image
    from facefoundry.generators.id_booth.generate import aligned_faces

    small = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    resized = aligned_faces(small, "aligned")
    assert resized.shape == (2, 112, 112, 3)
    assert abs(float(resized.mean()) - float(small.mean())) < 3
    name = image_name("Abel_Pacheco", 1)
    scene = decode_image(dict(Lfw().read_many([name]))[name], name)  # 250 x 250, face inside
    faces = aligned_faces(np.stack([scene, np.zeros_like(scene)]), "detect")
    assert faces.shape == (2, 112, 112, 3)
    whole = cv2.resize(scene, (112, 112), interpolation=cv2.INTER_CUBIC)
    assert np.abs(faces[0].astype(int) - whole.astype(int)).mean() > 20  # cut out, not resized
    assert faces[0].std() > 20 and faces[1].max() == 0  # no face: the blank, resized whole
