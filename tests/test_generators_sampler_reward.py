"""The sampler-reward fine-tune (issue 16) on a tiny SFace-conditioned model: the
differentiable sampler is diffusers' DDIM, the terms measure what they say, training
steps follow the condition more, and a resumed run is the unbroken run."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from facefoundry.errors import UsageError
from facefoundry.generators.identities import PRIOR_FILE, save_identity_prior
from facefoundry.generators.idiff_face.model import IDiffFaceModel
from facefoundry.generators.idiff_face.sampler_reward import (
    RewardSettings,
    ddim_sample,
    dedup_cosine,
    identity_reward_terms,
    layout_term,
    reward_tune,
    variety_term,
)
from facefoundry.generators.idiff_face.schedule import training_scheduler
from facefoundry.generators.training_data import FaceTrainingSet
from facefoundry.recognition.sface_torch import load_sface_torch, normalise
from tests.helpers.generators import tiny_config


def _model(seed: int = 0) -> IDiffFaceModel:
    torch.manual_seed(seed)
    config = tiny_config(id_dim=128, cpd_p=0.0, conditioning_embedder="sface")
    return IDiffFaceModel(config).eval()


def _folder(tmp_path, people: int = 6):
    """A tiny model folder with its identity prior, and a training set beside it."""
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((people, 128)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    folder = _model().save_pretrained(tmp_path / "start")
    save_identity_prior(embeddings, folder / PRIOR_FILE)
    faces = rng.integers(0, 256, (people, 16, 16, 3), dtype=np.uint8)
    data = FaceTrainingSet(
        faces, embeddings, np.arange(people), [str(i) for i in range(people)], {"name": "sface"}
    ).save(tmp_path / "data.npz")
    return folder, data


def _unet_weights(folder) -> dict[str, torch.Tensor]:
    """The UNet tensors a model folder holds."""
    return load_file(str(next((folder / "unet").glob("*.safetensors"))))


@pytest.mark.parametrize("kind", ["v_prediction", "epsilon"])
def test_the_differentiable_sampler_is_diffusers_ddim_step_for_step(kind):
    from diffusers import DDIMScheduler

    model = _model()
    model.config.prediction_type = kind
    schedule = training_scheduler(model.config)
    condition = normalise(torch.randn(3, 128, generator=torch.Generator().manual_seed(1)))
    noise = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    reference = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule=model.config.beta_schedule,
        prediction_type=kind,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    reference.set_timesteps(8)
    x = noise
    drop = torch.tensor([False] * 3 + [True] * 3)
    with torch.no_grad():
        for t in reference.timesteps:
            both = model(torch.cat([x, x]), t.repeat(6), torch.cat([condition, condition]), drop)
            cond, uncond = both.chunk(2)
            x = reference.step(uncond + 3.0 * (cond - uncond), t, x).prev_sample
        ours = ddim_sample(model, schedule.alphas_cumprod.float(), condition, noise, 8, 3.0)
    assert torch.allclose(ours, x, atol=1e-4)
    # and every model call is in the graph: the weights get a gradient from the image
    ddim_sample(model, schedule.alphas_cumprod.float(), condition, noise, 2, 3.0).sum().backward()
    assert model.conditioner.to_context.weight.grad.abs().sum() > 0
    assert model.unet.conv_in.weight.grad.abs().sum() > 0


def test_grad_steps_keeps_the_faces_and_differentiates_only_the_last_calls():
    """DRaFT-K: the same faces, but only the last K of the sampler's model calls build a
    graph (counted at the UNet), so the reward reaches the low-noise steps alone."""
    model = _model()
    alphas = training_scheduler(model.config).alphas_cumprod.float()
    condition = normalise(torch.randn(2, 128, generator=torch.Generator().manual_seed(1)))
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    in_graph = []
    hook = model.unet.register_forward_hook(
        lambda module, inputs, output: in_graph.append(torch.is_grad_enabled())
    )
    full = ddim_sample(model, alphas, condition, noise, 4, 3.0)
    assert in_graph == [True] * 4
    in_graph.clear()
    last_two = ddim_sample(model, alphas, condition, noise, 4, 3.0, grad_steps=2)
    hook.remove()
    assert in_graph == [False, False, True, True]
    assert torch.equal(full, last_two)
    last_two.sum().backward()
    assert model.unet.conv_in.weight.grad.abs().sum() > 0
    with torch.no_grad():  # outside a graph it stays outside
        assert not ddim_sample(model, alphas, condition, noise, 4, 3.0, grad_steps=2).requires_grad
    with pytest.raises(ValueError, match="at most the 4 sampling steps"):
        RewardSettings(steps=4, grad_steps=5)


def test_the_identity_terms_measure_following_and_crowding():
    recognizer = load_sface_torch().eval()
    generator = torch.Generator().manual_seed(0)
    faces = torch.rand(4, 3, 16, 16, generator=generator) * 2 - 1
    with torch.no_grad():
        from facefoundry.generators.idiff_face.identity_loss import embed_predicted

        own = embed_predicted(faces, recognizer)
    far = -normalise(own[::2] + own[1::2])  # opposite the two identities: no crowding
    apart = identity_reward_terms(faces, own, recognizer, far, 0.4, 0.1, generator, shift_pixels=0)
    # conditioned on their own embeddings, unshifted faces follow exactly
    assert float(apart["follow"]) == pytest.approx(0.0, abs=1e-5)
    assert float(apart["separation"]) == 0.0 and float(apart["neighbours"]) == 0.0
    # a bank holding the identities' own centroids: each has one neighbour past the
    # threshold, and the term is (1 - margin) per identity
    bank = torch.cat([far, apart["centroids"]])
    crowded = identity_reward_terms(faces, own, recognizer, bank, 0.4, 0.1, generator, 0)
    assert float(crowded["neighbours"]) >= 1.0
    assert float(crowded["separation"]) >= 0.7 - 1e-5
    with pytest.raises(ValueError, match="two per identity"):
        identity_reward_terms(faces[:3], own[:3], recognizer, bank, 0.4, 0.1, generator, 0)


def test_the_bank_threshold_is_the_filters_own_merge_cosine():
    from facefoundry.generators.idiff_face.model import read_config

    checksum = read_config("models/idiff-face-lfw").conditioning_checksum
    # SFace at FMR 1e-4 on LFW impostor pairs (filters/calibration_tables.py)
    assert dedup_cosine(checksum) == pytest.approx(0.41877, abs=1e-5)


def test_the_layout_term_sees_lighting_not_fine_detail():
    generator = torch.Generator().manual_seed(0)
    faces = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    assert float(layout_term(faces, faces)) == 0.0
    # a checkerboard of period 2 pixels averages away in 4 x 4 pools; a brightness
    # change of the same size does not
    checker = (torch.arange(32).view(1, -1) + torch.arange(32).view(-1, 1)) % 2 * 0.4 - 0.2
    assert float(layout_term(faces + checker, faces)) < 1e-10
    assert float(layout_term(faces + 0.2, faces)) == pytest.approx(0.04, rel=1e-4)


def test_the_variety_anchor_frees_what_an_identitys_faces_share_not_how_they_differ():
    generator = torch.Generator().manual_seed(1)
    anchor = torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1  # 2 identities x 2
    assert float(variety_term(anchor, anchor)) == 0.0
    # a new identity: the same change to both faces of each identity (a darker
    # left half for the first, a brighter nose region for the second)
    shared = torch.zeros_like(anchor)
    shared[0:2, :, :, :16] = -0.3
    shared[2:4, :, 12:20, 12:20] = 0.3
    assert float(variety_term(anchor + shared, anchor)) < 1e-12
    assert float(layout_term(anchor + shared, anchor)) > 1e-3
    # one face turned (its features moved a pixel) while its twin did not: a change in
    # how the two differ, which 2 x 2 pools see
    turned = anchor.clone()
    turned[0] = torch.roll(anchor[0], shifts=1, dims=-1)
    assert float(variety_term(turned, anchor)) > 1e-3


def test_reward_steps_follow_the_condition_more_and_a_resumed_run_is_the_unbroken_one(tmp_path):
    folder, data = _folder(tmp_path)
    settings = RewardSettings(
        iterations=4,
        identities=2,
        steps=2,
        learning_rate=3e-3,
        bank=8,
        denoise_batch=4,
        layout_weight=1.0,
        variety_weight=1.0,
        checkpoint_every=2,
    )
    straight = reward_tune(folder, data, tmp_path / "straight", settings, progress=False)
    state = json.loads((tmp_path / "straight" / "checkpoint" / "state.json").read_text())
    assert [row["iteration"] for row in state["history"]] == [1, 2, 3, 4]
    assert all(0 < row["pair_spread_vs_start"] < 10 for row in state["history"])
    assert state["history"][0]["variety"] == 0.0 < state["history"][-1]["variety"]
    for name in ("identity_prior.safetensors", "unet/config.json"):
        assert (straight / name).is_file()
    assert not (straight / "realisation_map.npz").exists()
    # 2 steps, stop, then resume to 4: the same weights as 4 in one go
    half = settings.model_copy(update={"iterations": 2})
    reward_tune(folder, data, tmp_path / "broken", half, progress=False)
    other = settings.model_copy(update={"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="learning_rate 0.003 -> 0.001"):
        reward_tune(folder, data, tmp_path / "broken", other, progress=False)
    elsewhere = shutil.copytree(folder, tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="init_from"):
        reward_tune(elsewhere, data, tmp_path / "broken", settings, progress=False)
    resumed = reward_tune(folder, data, tmp_path / "broken", settings, progress=False)
    a = _unet_weights(straight)
    b = _unet_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = _unet_weights(folder)
    assert any(not torch.equal(a[k], start[k]) for k in a)


def test_the_follow_term_falls_over_a_few_steps_on_a_fixed_draw():
    model = _model()
    model.requires_grad_(True)
    recognizer = load_sface_torch().eval().requires_grad_(False)
    alphas = training_scheduler(model.config).alphas_cumprod.float()
    condition = normalise(torch.randn(2, 128, generator=torch.Generator().manual_seed(3)))
    condition = condition.repeat_interleave(2, 0)
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    bank = normalise(torch.randn(8, 128, generator=torch.Generator().manual_seed(5)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    values = []
    for _ in range(6):
        faces = ddim_sample(model, alphas, condition, noise, 2, 3.0)
        terms = identity_reward_terms(
            faces, condition, recognizer, bank, 0.4, 0.1, torch.Generator().manual_seed(0), 0
        )
        values.append(terms["follow"].item())
        optimizer.zero_grad()
        terms["follow"].backward()
        optimizer.step()
    assert values[-1] < values[0] - 0.01


def test_a_run_saved_before_newer_settings_resumes_at_their_defaults(tmp_path):
    folder, data = _folder(tmp_path)
    settings = RewardSettings(
        iterations=1, identities=2, steps=1, bank=4, denoise_batch=2, layout_weight=0.0
    )
    reward_tune(folder, data, tmp_path / "run", settings, progress=False)
    state_file = tmp_path / "run" / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    for name in ("variety_weight", "variety_grid", "follow_weight", "grad_steps"):  # after s40
        del state["settings"][name]
    state_file.write_text(json.dumps(state))
    more = settings.model_copy(update={"iterations": 2})
    reward_tune(folder, data, tmp_path / "run", more, progress=False)
    assert json.loads(state_file.read_text())["iteration"] == 2
    anchored = more.model_copy(update={"iterations": 3, "variety_weight": 1.0})
    with pytest.raises(UsageError, match="variety_weight 0.0 -> 1.0"):
        reward_tune(folder, data, tmp_path / "run", anchored, progress=False)


def test_the_follow_weight_scales_the_follow_term_alone(tmp_path):
    """With every other term off, a step moves the weights only if the follow term counts."""
    folder, data = _folder(tmp_path)
    only_follow = RewardSettings(
        iterations=1,
        identities=2,
        steps=2,
        learning_rate=3e-3,
        bank=4,
        separation_weight=0.0,
        denoise_weight=0.0,
        layout_weight=0.0,
    )
    start = _unet_weights(folder)
    for weight, moves in ((1.0, True), (0.0, False)):
        settings = only_follow.model_copy(update={"follow_weight": weight})
        tuned = reward_tune(folder, data, tmp_path / f"w{weight}", settings, progress=False)
        after = _unet_weights(tuned)
        assert any(not torch.equal(after[k], start[k]) for k in start) == moves
