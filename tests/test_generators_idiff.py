"""IDiff-Face on tiny seeded models: real forward passes, real training steps."""

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facefoundry.generators.idiff_face.model import (
    IDiffFaceModel,
    ModelFolderError,
    contextual_partial_dropout,
)
from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
from facefoundry.generators.idiff_face.train import Trainer, TrainSettings, budget_steps
from facefoundry.generators.training_data import FaceTrainingSet
from tests.helpers.generators import tiny_config, tiny_vae


def tiny_data(n: int = 8, dim: int = 12) -> FaceTrainingSet:
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    embeddings = rng.standard_normal((n, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return FaceTrainingSet(
        faces,
        embeddings,
        np.arange(n),
        [str(i) for i in range(n)],
        {"name": "toy", "checksum": "0"},
    )


def test_forward_and_backward_reach_every_part():
    torch.manual_seed(0)
    model = IDiffFaceModel(tiny_config())
    x = torch.randn(3, 3, 16, 16)
    out = model(x, torch.tensor([1, 500, 999]), torch.randn(3, 12))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert model.conditioner.to_context.weight.grad.abs().sum() > 0
    assert model.unet.conv_in.weight.grad.abs().sum() > 0


def test_cpd_drops_elements_not_whole_vectors_at_the_configured_rate():
    torch.manual_seed(0)
    context = torch.ones(2000, 4, 64)
    dropped = contextual_partial_dropout(context, 0.25)
    zero_fraction = (dropped == 0).float().mean().item()
    assert abs(zero_fraction - 0.25) < 0.01
    per_token = (dropped == 0).float().mean(-1)
    assert (per_token < 1).all(), "no token should be dropped as a whole"
    assert torch.allclose(dropped[dropped != 0], torch.tensor(1 / 0.75))
    model = IDiffFaceModel(tiny_config(cpd_p=0.5)).train()
    identity = torch.randn(1, 12)
    a, b = model.conditioner(identity), model.conditioner(identity)
    assert not torch.equal(a, b)  # dropout is active in training ...
    model.eval()
    assert torch.equal(model.conditioner(identity), model.conditioner(identity))  # ... not in eval


def test_a_few_training_steps_lower_the_loss(tmp_path):
    torch.manual_seed(0)
    settings = TrainSettings(
        steps=40,
        batch_size=8,
        learning_rate=3e-3,
        warmup_steps=1,
        checkpoint_every=1000,
        p_uncond=0.0,
        hflip=False,
    )
    trainer = Trainer(IDiffFaceModel(tiny_config(cpd_p=0.0)), tiny_data(), settings, tmp_path)
    with torch.no_grad():
        before = float(trainer.loss_at(10_000))
    for _ in range(40):
        trainer.train_step()
    with torch.no_grad():
        after = float(trainer.loss_at(10_000))
    assert after < 0.8 * before


def test_save_and_resume_give_the_identical_next_step(tmp_path):
    settings = TrainSettings(
        steps=10, batch_size=4, learning_rate=1e-3, warmup_steps=2, checkpoint_every=1000
    )
    torch.manual_seed(0)
    first = Trainer(IDiffFaceModel(tiny_config()), tiny_data(), settings, tmp_path)
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()
    expected = first.train_step()

    torch.manual_seed(123)  # a different initialisation, overwritten by the checkpoint
    second = Trainer(IDiffFaceModel(tiny_config()), tiny_data(), settings, tmp_path)
    assert second.load_checkpoint()
    assert second.step == 3
    assert second.train_step() == expected


def test_resuming_with_other_settings_names_what_changed(tmp_path, caplog):
    from facefoundry.generators.idiff_face.train import changed_settings

    settings = TrainSettings(steps=4, batch_size=4, checkpoint_every=1000)
    first = Trainer(IDiffFaceModel(tiny_config()), tiny_data(), settings, tmp_path)
    first.train_step()
    first.save_checkpoint()
    saved = json.loads((tmp_path / "checkpoint" / "state.json").read_text())["settings"]
    assert changed_settings(saved, settings.model_copy(update={"threads": 2})) == {}
    older = {k: v for k, v in saved.items() if k != "condition_source"}  # predates it
    assert changed_settings(older, settings) == {}
    other = settings.model_copy(update={"condition_source": "other", "learning_rate": 2e-3})
    with caplog.at_level(logging.WARNING):
        assert Trainer(
            IDiffFaceModel(tiny_config()), tiny_data(), other, tmp_path
        ).load_checkpoint()
    assert "condition_source 'image' -> 'other'" in caplog.text
    assert f"learning_rate {settings.learning_rate!r} -> 0.002" in caplog.text


def test_a_trained_model_continues_at_another_cpd_rate(tmp_path, caplog):
    """--cpd-p changes no weight: a trained model or a checkpoint continues at the new rate."""
    from pydantic import ValidationError

    from facefoundry.generators.idiff_face.model import read_config
    from facefoundry.generators.idiff_face.train import train_idiff_face

    data = tiny_data().save(tmp_path / "tiny.npz")
    settings = TrainSettings(steps=1, batch_size=4, warmup_steps=1, checkpoint_every=1000)
    base = train_idiff_face(data, tmp_path / "base", tiny_config(), settings, progress=False)
    assert read_config(base).cpd_p == 0.25
    run = tmp_path / "off"
    off = train_idiff_face(data, run, None, settings, progress=False, init_from=base, cpd_p=0.0)
    assert read_config(off).cpd_p == 0.0
    assert not IDiffFaceModel.from_pretrained(off).train().conditioner.config.cpd_p
    more = settings.model_copy(update={"steps": 2})
    assert read_config(train_idiff_face(data, run, None, more, progress=False)).cpd_p == 0.0
    with caplog.at_level(logging.WARNING):
        again = settings.model_copy(update={"steps": 3})
        resumed = train_idiff_face(data, run, None, again, progress=False, cpd_p=0.5)
    assert read_config(resumed).cpd_p == 0.5
    assert "Contextual Partial Dropout 0.5 instead of 0.0" in caplog.text
    with pytest.raises(ValidationError):
        train_idiff_face(data, tmp_path / "bad", tiny_config(), settings, cpd_p=1.0)
    assert not (tmp_path / "bad").exists()


def test_training_grows_modulation_once_and_resumes_the_grown_model(tmp_path):
    """--grow-modulation converts the starting weights (fitted on the training set's own
    faces); a resumed run continues the converted checkpoint instead of converting again."""
    from facefoundry.generators.idiff_face.model import read_config
    from facefoundry.generators.idiff_face.train import train_idiff_face

    data = tiny_data().save(tmp_path / "tiny.npz")
    settings = TrainSettings(steps=1, batch_size=4, warmup_steps=1, checkpoint_every=1)
    base = train_idiff_face(data, tmp_path / "base", tiny_config(), settings, progress=False)
    run = tmp_path / "modulated"
    grown = train_idiff_face(
        data, run, None, settings, progress=False, init_from=base, grow_modulated=True
    )
    assert read_config(grown).time_scale_shift and not read_config(base).time_scale_shift
    more = settings.model_copy(update={"steps": 2})
    resumed = train_idiff_face(data, run, None, more, progress=False)
    assert read_config(resumed).time_scale_shift
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 2


def test_checkpoints_and_model_folders_are_safetensors(tmp_path):
    settings = TrainSettings(steps=2, batch_size=4, checkpoint_every=1000)
    trainer = Trainer(IDiffFaceModel(tiny_config()), tiny_data(), settings, tmp_path)
    trainer.fit(progress=False)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix not in (".json",)]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 2
    reloaded = IDiffFaceModel.from_pretrained(tmp_path / "model")
    assert reloaded.config == trainer.config


def test_budget_steps_fill_the_remaining_time_within_bounds():
    # 100 s left at 5 steps/s from step 40: 540; the upper bound and the next step hold
    assert budget_steps(40, 20.0, 120.0, 5.0, 10_000) == 540
    assert budget_steps(40, 20.0, 120.0, 5.0, 300) == 300
    assert budget_steps(40, 130.0, 120.0, 5.0, 10_000) == 41


def test_a_time_budgeted_run_replans_its_schedule_to_end_on_time(tmp_path):
    settings = TrainSettings(
        steps=100_000, batch_size=2, warmup_steps=1, checkpoint_every=100_000, log_every=2
    )
    trainer = Trainer(IDiffFaceModel(tiny_config()), tiny_data(), settings, tmp_path)
    result = trainer.fit(progress=False, max_seconds=3.0, schedule_to_budget=True)
    assert result["seconds"] < 6.0
    # the step count was re-planned from the measured rate, far below the upper bound,
    # and the cosine schedule ran (close) to its end instead of being cut off
    assert 4 <= trainer.settings.steps < 100_000
    assert trainer.step >= 0.8 * trainer.settings.steps
    assert trainer.history[-1]["lr"] < 0.3 * settings.learning_rate
    unplanned = Trainer(IDiffFaceModel(tiny_config()), tiny_data(), settings, tmp_path / "b")
    unplanned.fit(progress=False, max_seconds=1.0)
    assert unplanned.settings.steps == 100_000  # without it, max_seconds only stops


@pytest.mark.parametrize("scheduler", ["dpmsolver++", "sde-dpmsolver++"])
def test_same_seed_same_image_and_any_image_regenerates_alone(scheduler):
    """To the byte, and the model's last output to the bit: on CPU every model call has one
    shape, whatever the batch (PyTorch picks CPU kernels by batch size); the stochastic
    solver draws its fresh noise from each image's own generator."""
    torch.manual_seed(0)
    pipeline = IDiffFacePipeline(IDiffFaceModel(tiny_config()), scheduler, device="cpu")
    outputs = []
    pipeline.model.register_forward_hook(lambda module, args, output: outputs.append(output))
    identities = np.random.default_rng(1).standard_normal((3, 12)).astype(np.float32)
    a = pipeline(identities, [7, 8, 9], steps=5)
    last = outputs[-1][:3]
    b = pipeline(identities, [7, 8, 9], steps=5)
    assert a.shape == (3, 112, 112, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    for k in range(3):
        alone = pipeline(identities[k : k + 1], [7 + k], steps=5)
        assert torch.equal(outputs[-1][0], last[k])
        assert np.array_equal(alone[0], a[k])
    for batch_size in (1, 2):
        assert np.array_equal(pipeline(identities, [7, 8, 9], steps=5, batch_size=batch_size), a)
    other = pipeline(identities, [7, 8, 10], steps=5)
    assert not np.array_equal(other[2], a[2])
    if scheduler.startswith("sde"):  # the fresh noise is really drawn
        ode = IDiffFacePipeline(pipeline.model, "dpmsolver++", device="cpu")
        assert not np.array_equal(ode(identities, [7, 8, 9], steps=5), a)


def test_guidance_and_reference_ddpm_sampler_run():
    torch.manual_seed(0)
    model = IDiffFaceModel(tiny_config())
    identities = np.random.default_rng(2).standard_normal((2, 12)).astype(np.float32)
    guided = IDiffFacePipeline(model, "unipc", device="cpu")(
        identities, [1, 2], steps=4, guidance_scale=3.0, output_size=32
    )
    assert guided.shape == (2, 32, 32, 3)
    ddpm = IDiffFacePipeline(model, "ddpm", device="cpu")(
        identities, [1, 2], steps=20, output_size=16
    )
    assert ddpm.shape == (2, 16, 16, 3)


def test_guidance_interval_covering_every_step_is_plain_guidance_bit_for_bit():
    torch.manual_seed(0)
    pipeline = IDiffFacePipeline(IDiffFaceModel(tiny_config()), "dpmsolver++", device="cpu")
    rows = []
    pipeline.model.register_forward_hook(lambda module, args, output: rows.append(len(output)))
    identities = np.random.default_rng(3).standard_normal((2, 12)).astype(np.float32)

    def sample(**kwargs):
        rows.clear()
        images = pipeline(identities, [4, 5], steps=6, output_size=32, **kwargs)
        return images, list(rows)

    plain, plain_rows = sample(guidance_scale=3.0)
    covering, covering_rows = sample(guidance_scale=3.0, guidance_interval=(0, 999))
    assert np.array_equal(covering, plain) and covering_rows == plain_rows
    unguided, _ = sample(guidance_scale=1.0)
    outside, outside_rows = sample(guidance_scale=3.0, guidance_interval=(2000, 3000))
    assert np.array_equal(outside, unguided)
    assert set(outside_rows) == {8}  # conditional only: one CPU batch, never doubled
    middle, middle_rows = sample(guidance_scale=3.0, guidance_interval=(300, 700))
    assert 0 < middle_rows.count(16) < len(plain_rows)
    assert not np.array_equal(middle, plain) and not np.array_equal(middle, unguided)


def test_shared_noise_correlates_an_identitys_starting_noise_and_zero_is_plain_sampling():
    torch.manual_seed(0)
    pipeline = IDiffFacePipeline(IDiffFaceModel(tiny_config()), "dpmsolver++", device="cpu")
    first_inputs = []
    pipeline.model.register_forward_hook(lambda module, args, output: first_inputs.append(args[0]))
    identities = np.random.default_rng(3).standard_normal((3, 12)).astype(np.float32)
    seeds, shared = [4, 5, 6], [11, 11, 12]  # samples 0 and 1 share their identity's seed
    plain = pipeline(identities, seeds, steps=3, output_size=32)
    assert np.array_equal(
        pipeline(identities, seeds, steps=3, output_size=32, shared_noise=0.0, shared_seeds=shared),
        plain,
    )
    first_inputs.clear()
    pipeline(identities, seeds, steps=3, output_size=32, shared_noise=0.5, shared_seeds=shared)
    start = first_inputs[0][:3].flatten(1)
    correlation = torch.corrcoef(start)
    assert correlation[0, 1] > 0.3 and abs(correlation[0, 2]) < 0.2
    assert abs(float(start.std()) - 1.0) < 0.15  # still unit variance
    with pytest.raises(ValueError, match="shared seed"):
        pipeline(identities, seeds, steps=3, shared_noise=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pipeline(identities, seeds, steps=3, shared_noise=1.0, shared_seeds=shared)


def test_detail_guidance_adds_one_branch_and_vanishes_when_the_twin_is_the_condition():
    from facefoundry.generators.identities import fit_identity_prior
    from facefoundry.generators.idiff_face.detail_guidance import major_axes, major_axis_twins

    torch.manual_seed(0)
    pipeline = IDiffFacePipeline(IDiffFaceModel(tiny_config()), "dpmsolver++", device="cpu")
    rows = []
    pipeline.model.register_forward_hook(lambda module, args, output: rows.append(len(output)))
    rng = np.random.default_rng(4)
    pipeline._axes = {}
    prior = fit_identity_prior(rng.standard_normal((200, 12)) * np.r_[4.0, 2.0, np.ones(10)])
    for axes in (3, 12):
        pipeline._axes[axes] = major_axes(prior, axes)
    identities = rng.standard_normal((2, 12)).astype(np.float32)
    identities /= np.linalg.norm(identities, axis=1, keepdims=True)

    def sample(**kwargs):
        rows.clear()
        images = pipeline(identities, [4, 5], steps=6, output_size=32, **kwargs)
        return images.astype(np.int16), list(rows)

    plain, plain_rows = sample(guidance_scale=3.0)
    detailed, detail_rows = sample(guidance_scale=3.0, detail_guidance=2.0, detail_axes=3)
    # one fixed CPU batch (8 rows): u + cond = 16 rows, + the twins = 24
    assert set(plain_rows) == {16} and set(detail_rows) == {24}
    assert np.abs(detailed - plain).mean() > 1
    # a twin that keeps every axis is the condition: the extra term is (numerically) zero
    mean, basis = pipeline._axes[12]
    twins = major_axis_twins(torch.as_tensor(identities), mean, basis)
    assert torch.allclose(twins, torch.as_tensor(identities), atol=1e-6)
    same, _ = sample(guidance_scale=3.0, detail_guidance=2.0, detail_axes=12)
    assert np.abs(same - plain).max() <= 1
    # without classifier-free guidance: cond + h (cond - twin), two branches
    unguided, unguided_rows = sample(guidance_scale=1.0, detail_guidance=2.0, detail_axes=3)
    assert set(unguided_rows) == {16}
    assert np.abs(unguided - detailed).mean() > 1
    # a pipeline built from a bare model has no identity prior to take axes from
    bare = IDiffFacePipeline(IDiffFaceModel(tiny_config()), "dpmsolver++", device="cpu")
    with pytest.raises(ValueError, match="identity prior"):
        bare(identities, [4, 5], steps=2, detail_guidance=1.0)


def test_alternating_detail_guidance_takes_two_branches_and_starts_as_plain_guidance():
    from facefoundry.generators.identities import fit_identity_prior
    from facefoundry.generators.idiff_face.detail_guidance import major_axes, major_axis_twins

    torch.manual_seed(0)
    pipeline = IDiffFacePipeline(IDiffFaceModel(tiny_config()), "dpmsolver++", device="cpu")
    calls = []
    pipeline.model.register_forward_hook(
        lambda module, args, output: calls.append((args[2].clone(), args[3]))
    )
    rng = np.random.default_rng(4)
    prior = fit_identity_prior(rng.standard_normal((200, 12)) * np.r_[4.0, 2.0, np.ones(10)])
    pipeline._axes = {3: major_axes(prior, 3)}
    identities = rng.standard_normal((2, 12)).astype(np.float32)
    identities /= np.linalg.norm(identities, axis=1, keepdims=True)

    def sample(steps, **kwargs):
        calls.clear()
        images = pipeline(
            identities, [4, 5], steps=steps, output_size=32, guidance_scale=3.0, **kwargs
        )
        return images.astype(np.int16)

    detail = {"detail_guidance": 2.0, "detail_axes": 3}
    # one step: only the unconditional branch has been evaluated, so no detail term yet
    assert np.array_equal(sample(1, detail_alternate=True, **detail), sample(1))
    alternating = sample(6, detail_alternate=True, **detail)
    assert len(calls) == 6 and {len(identity) for identity, _ in calls} == {16}  # 2 x batch 8
    twins = major_axis_twins(torch.as_tensor(identities), *pipeline._axes[3])
    for step, (identity, drop) in enumerate(calls):
        condition, reference = identity.chunk(2)
        if step % 2:  # (condition, twin), nothing dropped
            assert drop is None and torch.allclose(reference[:2], twins)
        else:  # (unconditional, condition) as plain guidance orders them
            assert drop.tolist() == [True] * 8 + [False] * 8
            assert torch.equal(condition, reference)
    every_step = sample(6, **detail)
    plain = sample(6)
    assert np.abs(alternating - plain).mean() > 1
    assert np.abs(alternating - every_step).mean() > 0  # stale differences: not the same
    with pytest.raises(ValueError, match="detail_alternate"):
        pipeline(identities, [4, 5], steps=2, guidance_scale=3.0, detail_alternate=True)
    with pytest.raises(ValueError, match="detail_alternate"):
        pipeline(identities, [4, 5], steps=2, detail_alternate=True, **detail)


def test_alternating_guidance_interval_leaves_high_noise_steps_to_the_condition_alone():
    from facefoundry.generators.identities import fit_identity_prior
    from facefoundry.generators.idiff_face.detail_guidance import major_axes

    torch.manual_seed(0)
    pipeline = IDiffFacePipeline(IDiffFaceModel(tiny_config()), "dpmsolver++", device="cpu")
    calls = []
    pipeline.model.register_forward_hook(
        lambda module, args, output: calls.append((int(args[1][0]), len(args[2]), args[3]))
    )
    rng = np.random.default_rng(4)
    prior = fit_identity_prior(rng.standard_normal((200, 12)) * np.r_[4.0, 2.0, np.ones(10)])
    pipeline._axes = {3: major_axes(prior, 3)}
    identities = rng.standard_normal((2, 12)).astype(np.float32)
    identities /= np.linalg.norm(identities, axis=1, keepdims=True)
    detail = {"detail_guidance": 2.0, "detail_axes": 3}

    def sample(guidance_scale=3.0, **kwargs):
        calls.clear()
        images = pipeline(
            identities, [4, 5], steps=6, output_size=32, guidance_scale=guidance_scale, **kwargs
        )
        return images, list(calls)

    alternating, alternating_calls = sample(detail_alternate=True, **detail)
    covering, covering_calls = sample(detail_alternate=True, guidance_interval=(0, 999), **detail)
    assert np.array_equal(covering, alternating)
    assert [c[:2] for c in covering_calls] == [c[:2] for c in alternating_calls]
    unguided, _ = sample(guidance_scale=1.0)
    outside, outside_calls = sample(detail_alternate=True, guidance_interval=(2000, 3000), **detail)
    assert np.array_equal(outside, unguided) and {c[1] for c in outside_calls} == {8}
    late, late_calls = sample(detail_alternate=True, guidance_interval=(0, 900), **detail)
    first, second, third, fourth = late_calls[:4]
    assert first[0] > 900 and first[1] == 8 and first[2] is None  # the condition alone
    # the first guided step is an odd one, yet it evaluates the unconditional branch
    # (no difference to reuse yet); the twin follows on the next odd step
    assert second[1] == 16 and second[2] is not None and second[2].any()
    assert third[2] is not None and fourth[2] is None
    assert not np.array_equal(late, alternating) and not np.array_equal(late, unguided)
    with pytest.raises(ValueError, match="inverted"):
        pipeline(identities, [4, 5], steps=2, guidance_scale=3.0, guidance_interval=(900, 0))


def test_wrong_embedding_dimension_and_missing_model_are_clear_errors(tmp_path):
    model = IDiffFaceModel(tiny_config())
    with pytest.raises(ValueError, match="12-d"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.randn(1, 128))
    with pytest.raises(ModelFolderError, match="missing"):
        IDiffFaceModel.from_pretrained(tmp_path / "nothing-here")
    settings = TrainSettings(steps=1, batch_size=2)
    with pytest.raises(ValueError, match="expects 12-d"):
        Trainer(model, tiny_data(dim=16), settings, tmp_path)


def test_latent_model_trains_and_samples_through_a_tiny_vae(tmp_path):
    vae = tiny_vae()
    config = tiny_config(latent=True, in_channels=4, sample_size=16, image_size=16)
    trainer = Trainer(
        IDiffFaceModel(config), tiny_data(), TrainSettings(steps=2, batch_size=2), tmp_path, vae=vae
    )
    assert trainer.samples.shape == (8, 4, 16, 16)
    assert np.isfinite(trainer.train_step())
    pipeline = IDiffFacePipeline(trainer.model, "ddim", vae=vae, device="cpu")
    images = pipeline(np.ones((1, 12), np.float32), [3], steps=3, output_size=24)
    assert images.shape == (1, 24, 24, 3)


# --- identity term (issue 16) ----------------------------------------------------------


def test_identity_weights_vanish_above_max_t_and_are_one_at_t0():
    from facefoundry.generators.idiff_face.identity_loss import identity_weights

    t = torch.arange(1000)
    w = identity_weights(t, 1000, 0.6)
    assert w[0] == 1.0
    assert (w[t > 600] == 0).all()
    assert (w[t < 600] > 0).all()
    assert torch.allclose(w[300], torch.tensor(0.25))
    assert (w[1:601] <= w[:600]).all()  # monotone non-increasing


def _identity_trainer(tmp_path, identity_weight: float, people: int = 4, **settings):
    torch.manual_seed(0)
    config = tiny_config(id_dim=128, cpd_p=0.0, conditioning_embedder="sface")
    values = dict(
        steps=5,
        batch_size=4,
        learning_rate=3e-3,
        warmup_steps=1,
        checkpoint_every=1000,
        p_uncond=0.0,
        hflip=False,
        identity_weight=identity_weight,
    )
    values.update(settings)
    return Trainer(
        IDiffFaceModel(config), tiny_data(n=people, dim=128), TrainSettings(**values), tmp_path
    )


def _fixed_low_noise_batch(trainer):
    x0 = trainer.samples[:4]
    identity = trainer.embeddings[:4]
    timesteps = torch.tensor([10, 40, 80, 150])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    return x0, identity, timesteps, noise, torch.zeros(4, dtype=torch.bool)


def test_identity_weight_zero_leaves_the_denoising_loss_exactly_unchanged(tmp_path):
    import torch.nn.functional as F

    from facefoundry.generators.idiff_face.schedule import min_snr_weights

    trainer = _identity_trainer(tmp_path, 0.0)
    assert trainer.recognizer is None
    x0, identity, timesteps, noise, drop = trainer._batch(3)
    torch.manual_seed(0)
    model = trainer.model.eval()  # the pre-change formula, written out
    noisy = trainer.noise.add_noise(x0, noise, timesteps)
    target = trainer.noise.get_velocity(x0, noise, timesteps)
    with torch.no_grad():
        per_sample = F.mse_loss(model(noisy, timesteps, identity, drop), target, reduction="none")
        weights = min_snr_weights(trainer.noise, timesteps, trainer.settings.min_snr_gamma)
        expected = (per_sample.mean((1, 2, 3)) * weights).mean()
        assert torch.equal(trainer.loss_at(3), expected)
        terms = trainer.loss_terms(3)
    assert terms["identity"] is None and torch.equal(terms["loss"], terms["denoise"])
    assert TrainSettings().identity_weight == 0.0  # off by default
    weighted = _identity_trainer(tmp_path, 0.5)  # same seed, same weights
    weighted.model.eval()
    with torch.no_grad():
        terms = weighted.loss_terms(3)
    assert torch.equal(terms["denoise"], expected)
    assert torch.allclose(terms["loss"], expected + 0.5 * terms["identity"])


def test_min_snr_weights_cap_the_low_noise_levels_and_switch_off():
    """v-prediction's min-SNR weight is min(SNR, gamma) / (SNR + 1): SNR / (SNR + 1) at
    high noise (SNR <= gamma), gamma / (SNR + 1) at low noise; None or 0 is the plain loss."""
    from facefoundry.generators.idiff_face.config import IDiffFaceConfig
    from facefoundry.generators.idiff_face.schedule import min_snr_weights, training_scheduler

    scheduler = training_scheduler(IDiffFaceConfig())
    timesteps = torch.tensor([10, 100, 250, 500, 900])
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    assert torch.equal(min_snr_weights(scheduler, timesteps, None), torch.ones(5))
    assert torch.equal(min_snr_weights(scheduler, timesteps, 0.0), torch.ones(5))
    with pytest.raises(ValueError, match="min_snr_gamma"):
        min_snr_weights(scheduler, timesteps, -1.0)
    five = min_snr_weights(scheduler, timesteps, 5.0)
    twenty = min_snr_weights(scheduler, timesteps, 20.0)
    assert torch.allclose(five, torch.clamp(snr, max=5.0) / (snr + 1))
    assert five[0] < 0.01 and five[-1] == pytest.approx(float(snr[-1] / (snr[-1] + 1)))
    assert bool((twenty >= five).all()) and twenty[1] > 3 * five[1]  # t = 100: SNR ~ 35
    assert torch.equal(twenty[3:], five[3:])  # above t = 500 the SNR is under 5 for both


def test_identity_term_decreases_with_training_and_logs(tmp_path):
    trainer = _identity_trainer(tmp_path, 1.0, log_every=5)
    batch = _fixed_low_noise_batch(trainer)

    def identity_term() -> float:
        trainer.model.eval()
        with torch.no_grad():
            return float(trainer.terms(*batch)["identity"])

    before = identity_term()
    assert before > 0
    trainer.fit(progress=False)  # 5 regular training steps (denoising + identity)
    trained = identity_term()
    assert trained < before  # measured 0.8176 -> 0.8137, monotone over the 5 steps
    assert trainer.history and np.isfinite(trainer.history[-1]["identity"])
    optimizer = torch.optim.Adam(trainer.model.parameters(), lr=3e-3)
    for _ in range(5):  # steps on the identity term alone: its gradient reaches the model
        trainer.model.train()
        term = trainer.terms(*batch)["identity"]
        optimizer.zero_grad()
        term.backward()
        assert trainer.model.unet.conv_in.weight.grad.abs().sum() > 0
        assert trainer.model.conditioner.to_context.weight.grad.abs().sum() > 0
        optimizer.step()
    assert identity_term() < trained


def test_contrast_term_is_infonce_against_other_people_with_the_same_person_masked():
    from facefoundry.generators.idiff_face.identity_loss import embed_predicted, identity_terms

    torch.manual_seed(0)
    recognizer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 112 * 112, 128))
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    condition = F.normalize(torch.randn(3, 128), dim=1)
    others = F.normalize(torch.randn(5, 128), dim=1)
    weights = torch.tensor([1.0, 0.5, 0.0])  # the last row does not count
    with torch.no_grad():
        terms = identity_terms(x0, condition, recognizer, weights, others, scale=10.0)
        embedded = embed_predicted(x0[:2], recognizer)
    logits = 10.0 * torch.cat(
        [(embedded * condition[:2]).sum(1, keepdim=True), embedded @ others.T], 1
    )
    per_row = -torch.log_softmax(logits, dim=1)[:, 0]
    assert torch.allclose(terms["contrast"], (weights[:2] * per_row).sum() / 3, atol=1e-5)
    assert torch.allclose(
        terms["identity"], (weights[:2] * (1 - (embedded * condition[:2]).sum(1))).sum() / 3
    )
    # row 0's own person among the negatives (its centroid) is not a negative for row 0
    with_own = torch.cat([others, condition[:1]])
    first = torch.tensor([1.0, 0.0, 0.0])
    with torch.no_grad():
        masked = identity_terms(x0, condition, recognizer, first, with_own, scale=10.0)
    assert torch.allclose(masked["contrast"], per_row[0] / 3, atol=1e-5)


def test_contrast_term_trains_and_logs_without_the_cosine_term(tmp_path):
    trainer = _identity_trainer(
        tmp_path, 0.0, identity_contrast_weight=0.5, identity_contrast_scale=8.0, log_every=5
    )
    assert trainer.recognizer is not None and trainer.negatives.shape == (4, 128)
    batch = _fixed_low_noise_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        terms = trainer.terms(*batch)
    before = float(terms["contrast"])
    assert before > 0
    assert torch.allclose(terms["loss"], terms["denoise"] + 0.5 * terms["contrast"])
    trainer.fit(progress=False)
    assert np.isfinite(trainer.history[-1]["contrast"])
    optimizer = torch.optim.Adam(trainer.model.parameters(), lr=3e-3)
    for _ in range(5):  # the contrast term alone moves the model
        trainer.model.train()
        term = trainer.terms(*batch)["contrast"]
        optimizer.zero_grad()
        term.backward()
        optimizer.step()
    trainer.model.eval()
    with torch.no_grad():
        assert float(trainer.terms(*batch)["contrast"]) < before


def test_whitening_equalises_the_axes_and_the_whitened_terms_train(tmp_path):
    from facefoundry.generators.idiff_face.identity_loss import to_space, whitening

    # a cloud stretched 5x along one axis: whitened, every axis has the same spread
    generator = torch.Generator().manual_seed(0)
    cloud = torch.randn(20000, 8, generator=generator) * torch.tensor([5.0] + [1.0] * 7)
    space = whitening(cloud + 3.0, shrinkage=0.0)
    whitened = (cloud + 3.0 - space["mean"]) @ space["matrix"]
    assert torch.allclose(whitened.std(0), torch.ones(8), atol=0.03)
    # on the raw sphere two vectors that differ only off the dominant axis look alike;
    # whitened, that difference counts
    a, b = torch.tensor([[5.0, 1, 0, 0, 0, 0, 0, 0]]), torch.tensor([[5.0, -1, 0, 0, 0, 0, 0, 0]])
    centred = whitening(cloud, shrinkage=0.0)
    raw_cos = float(F.cosine_similarity(a, b))
    white_cos = float((to_space(a, centred) * to_space(b, centred)).sum())
    assert raw_cos > 0.9 and white_cos < raw_cos - 0.3

    trainer = _identity_trainer(
        tmp_path, 1.0, identity_contrast_weight=0.5, identity_space="whitened", log_every=5
    )
    assert trainer.identity_space is not None
    batch = _fixed_low_noise_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        before = trainer.terms(*batch)
    raw = _identity_trainer(tmp_path / "raw", 1.0, identity_contrast_weight=0.5)
    with torch.no_grad():
        raw_terms = raw.terms(*batch)
    assert not torch.allclose(before["identity"], raw_terms["identity"])
    optimizer = torch.optim.Adam(trainer.model.parameters(), lr=3e-3)
    for _ in range(5):
        trainer.model.train()
        loss = trainer.terms(*batch)["identity"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trainer.model.eval()
    with torch.no_grad():
        assert float(trainer.terms(*batch)["identity"]) < float(before["identity"])


def test_identity_term_decodes_latent_models_through_the_vae(tmp_path):
    vae = tiny_vae()
    config = tiny_config(latent=True, in_channels=4, id_dim=128)
    settings = TrainSettings(steps=1, batch_size=4, identity_weight=1.0)
    trainer = Trainer(IDiffFaceModel(config), tiny_data(dim=128), settings, tmp_path, vae=vae)
    terms = trainer.loss_terms(0)
    assert float(terms["identity"].detach()) > 0
    terms["loss"].backward()
    assert trainer.model.unet.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())  # the VAE stays frozen


def test_identity_loss_rejects_non_sface_conditioning(tmp_path):
    settings = TrainSettings(steps=1, batch_size=2, identity_weight=0.1)
    with pytest.raises(ValueError, match="SFace 128-d"):
        Trainer(IDiffFaceModel(tiny_config()), tiny_data(), settings, tmp_path)
    config = tiny_config(id_dim=128, conditioning_embedder="onnx:arcface.onnx")
    with pytest.raises(ValueError, match="arcface"):
        Trainer(IDiffFaceModel(config), tiny_data(dim=128), settings, tmp_path)


def _rows_of(conditions, embeddings):
    """The training row each condition is (conditions are copies of training embeddings)."""
    return (conditions[:, None, :] == embeddings[None]).all(-1).float().argmax(1)


def _first_batch(labels, **settings):
    """Step 0's batch of a tiny trainer over people ``labels``, and the trainer."""
    data = tiny_data(n=len(labels))
    data.labels = labels
    trainer = Trainer(
        IDiffFaceModel(tiny_config()), data, TrainSettings(steps=1, **settings), "unused"
    )
    return trainer._batch(0), trainer


def test_person_batches_draw_people_uniformly_not_images():
    # one person with 90 images, nine with 1: per image the big person fills ~91% of
    # rows, per person ~10%
    labels = np.array([0] * 90 + list(range(1, 10)))
    share = {}
    for sampling in ("image", "person"):
        (_, identity, *_), trainer = _first_batch(labels, batch_size=2000, batch_sampling=sampling)
        rows = _rows_of(identity, trainer.embeddings)
        share[sampling] = float((torch.from_numpy(labels)[rows] == 0).float().mean())
    assert share["image"] > 0.85
    assert 0.05 < share["person"] < 0.15


def test_other_photo_conditions_share_the_person_and_leave_the_batch_as_it_was():
    # people of 3, 1 and 2 photos, rows interleaved
    labels = np.array([0, 1, 2, 0, 2, 0])
    batches = {}
    for source in ("image", "other"):
        batches[source], trainer = _first_batch(labels, batch_size=600, condition_source=source)
    own = _rows_of(batches["image"][1], trainer.embeddings)
    cond = _rows_of(batches["other"][1], trainer.embeddings)
    same_person = torch.from_numpy(labels)[own] == torch.from_numpy(labels)[cond]
    assert bool(same_person.all())
    single = torch.from_numpy(labels)[own] == 1
    assert bool((cond[single] == own[single]).all())  # one photo: their own embedding
    assert bool((cond[~single] != own[~single]).all())  # otherwise never their own
    for row in (0, 3, 5):  # every other photo of the person is used
        assert set(cond[own == row].tolist()) == {0, 3, 5} - {row}
    (x0, _, t, noise, drop), (x0_, _, t_, noise_, drop_) = batches["image"], batches["other"]
    assert torch.equal(x0, x0_) and torch.equal(t, t_)  # only the condition changed
    assert torch.equal(noise, noise_) and torch.equal(drop, drop_)


def test_layout_anchor_sees_lighting_and_framing_not_detail():
    from facefoundry.generators.idiff_face.train import layout_mse

    face = torch.rand(2, 3, 32, 32) * 2 - 1
    checker = (torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1)) % 2 * 0.4 - 0.2
    assert float(layout_mse(face + checker, face)) < 1e-10  # detail finer than a cell
    assert float(layout_mse(face + 0.3, face)) == pytest.approx(0.09, rel=1e-5)  # lighting
    shifted = torch.roll(face, shifts=8, dims=-1)  # the face moved a quarter of the frame
    assert float(layout_mse(shifted, face)) > 0.01


def test_drawn_rows_score_the_models_own_faces_for_new_conditions_and_resume(tmp_path):
    from facefoundry.generators.idiff_face.drawn_pool import POOL_FILE

    def trainer():
        return _identity_trainer(
            tmp_path,
            0.5,
            people=32,
            steps=3,
            log_every=3,
            p_uncond=0.1,
            hflip=True,
            identity_contrast_weight=0.25,
            drawn_rows=3,
            drawn_identities=6,
            drawn_weight=0.5,
            drawn_anchor_weight=2.0,
        )

    first = trainer()
    pool = first.drawn
    assert pool["faces"].shape == (6, 3, 16, 16) and pool["conditions"].shape == (6, 128)
    assert pool["faces"].abs().max() <= 1.0 and pool["faces"].std() > 0
    # negatives: the 32 training people, then every drawn condition
    assert torch.allclose(pool["negatives"][32:], F.normalize(pool["conditions"], dim=1))
    x0, condition, timesteps, noise = first.drawn_batch(0)
    assert timesteps.max() < 0.6 * first.config.num_train_timesteps  # where the terms count
    first.model.eval()
    with torch.no_grad():
        terms = first.loss_terms(0)
        regular = first.terms(*(t for t in first._batch(0)))
    assert float(terms["drawn_identity"]) > 0 and float(terms["drawn_contrast"]) > 0
    assert float(terms["drawn_anchor"]) > 0  # the re-noised faces' layout is not exact
    drawn = 0.5 * terms["drawn_identity"] + 0.25 * terms["drawn_contrast"]
    # drawn_weight 0.5 scales both drawn terms; the layout anchor has its own weight
    expected = regular["loss"] + 0.5 * drawn + 2.0 * terms["drawn_anchor"]
    assert torch.allclose(terms["loss"], expected, atol=1e-6)
    first.model.train()  # the drawn terms alone reach the model's weights
    first.drawn_terms(x0, condition, timesteps, noise)["drawn_contrast"].backward()
    assert first.model.conditioner.to_context.weight.grad.abs().sum() > 0
    first.model.zero_grad()
    first.fit(progress=False)
    assert np.isfinite(first.history[-1]["drawn_contrast"])
    # a resumed run reads the same pool instead of drawing a new one
    assert (tmp_path / POOL_FILE).is_file()
    again = trainer()
    assert torch.equal(again.drawn["faces"], pool["faces"])
    with pytest.raises(ValueError, match="identity terms only"):
        Trainer(
            IDiffFaceModel(tiny_config(id_dim=128, conditioning_embedder="sface")),
            tiny_data(n=32, dim=128),
            TrainSettings(drawn_rows=2),
            tmp_path / "other",
        )
