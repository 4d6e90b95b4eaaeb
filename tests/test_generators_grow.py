"""Growing a trained model (cross-attention, depth, width, modulation): the same or nearly
the same predictions, then it trains."""

import re

import pytest
import torch

from facefoundry.errors import UsageError
from facefoundry.generators.idiff_face.grow import (
    grow_attention,
    grow_depth,
    grow_modulation,
    grow_width,
)
from facefoundry.generators.idiff_face.model import IDiffFaceModel, count_parameters
from tests.helpers.generators import tiny_config


def _inputs(config, rows: int = 3):
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(rows, 3, config.sample_size, config.sample_size, generator=generator)
    identity = torch.randn(rows, config.id_dim, generator=generator)
    return sample, torch.tensor([10, 500, 900]), identity


def _fit_noise_target(model, steps: int = 5) -> list[float]:
    """Adam steps toward a fixed random target; the losses, first to last."""
    sample, timesteps, identity = _inputs(model.config)
    target = torch.randn_like(sample)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(sample, timesteps, identity), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_grown_model_predicts_exactly_what_the_old_one_did_and_has_new_attention():
    torch.manual_seed(0)
    old = IDiffFaceModel(tiny_config(attention_levels=(1,))).eval()
    grown = grow_attention(old, (0,)).eval()
    assert grown.config.attention_levels == (0, 1)
    assert count_parameters(grown) > count_parameters(old)
    sample, timesteps, identity = _inputs(old.config)
    with torch.no_grad():
        torch.testing.assert_close(
            grown(sample, timesteps, identity), old(sample, timesteps, identity)
        )
    # every old weight carried over unchanged
    grown_state = grown.state_dict()
    for key, value in old.state_dict().items():
        assert torch.equal(grown_state[key], value), key


def test_new_attention_receives_gradient_and_training_moves_the_prediction():
    torch.manual_seed(0)
    old = IDiffFaceModel(tiny_config(attention_levels=(1,)))
    grown = grow_attention(old, (0,))
    losses = _fit_noise_target(grown)
    new_out = grown.unet.down_blocks[0].attentions[0].proj_out.weight
    assert new_out.abs().sum() > 0  # the zero-initialised projection learned something
    assert losses[-1] < losses[0]


def test_growing_a_level_that_does_not_exist_is_a_clear_error():
    model = IDiffFaceModel(tiny_config(attention_levels=(1,)))
    with pytest.raises(UsageError, match="do not exist"):
        grow_attention(model, (2,))


@pytest.mark.parametrize("levels", [(1,), (0, 1)])
def test_deeper_model_predicts_exactly_what_the_old_one_did(levels):
    torch.manual_seed(0)
    old = IDiffFaceModel(tiny_config(attention_levels=levels)).eval()
    grown = grow_depth(old).eval()
    twice = grow_depth(grown).eval()
    assert grown.config.layers_per_block == 2 and twice.config.layers_per_block == 3
    assert count_parameters(old) < count_parameters(grown) < count_parameters(twice)
    assert len(grown.unet.up_blocks[0].resnets) == 3
    sample, timesteps, identity = _inputs(old.config)
    with torch.no_grad():
        expected = old(sample, timesteps, identity)
        torch.testing.assert_close(grown(sample, timesteps, identity), expected)
        torch.testing.assert_close(twice(sample, timesteps, identity), expected)
    # every old weight is carried unchanged; in up blocks, blocks 1.. moved one on
    grown_state = grown.state_dict()
    for key, value in old.state_dict().items():
        moved = re.sub(
            r"(up_blocks\.\d+\.(?:resnets|attentions)\.)([1-9]\d*)\.",
            lambda match: f"{match.group(1)}{int(match.group(2)) + 1}.",
            key,
        )
        assert torch.equal(grown_state[moved], value), key


def test_new_blocks_receive_gradient_and_the_deeper_model_trains():
    torch.manual_seed(0)
    grown = grow_depth(IDiffFaceModel(tiny_config(attention_levels=(1,))))
    losses = _fit_noise_target(grown)
    new_down = grown.unet.down_blocks[0].resnets[1].conv2.weight
    new_up = grown.unet.up_blocks[1].resnets[1].conv2.weight
    assert new_down.abs().sum() > 0 and new_up.abs().sum() > 0  # left zero, now learning
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("levels", [(1,), (0, 1)])
def test_wider_model_predicts_exactly_what_the_old_one_did(levels):
    torch.manual_seed(0)
    old = IDiffFaceModel(tiny_config(attention_levels=levels)).eval()
    wide = grow_width(old).eval()
    assert wide.config.block_out_channels == (16, 32)
    assert wide.config.context_dim == 2 * old.config.context_dim
    assert wide.config.norm_num_groups == old.config.norm_num_groups  # groups hold copies
    assert count_parameters(wide) > 3.5 * count_parameters(old)
    sample, timesteps, identity = _inputs(old.config)
    guided = torch.tensor([True, False, True])  # the learned empty context, widened too
    with torch.no_grad():
        torch.testing.assert_close(
            wide(sample, timesteps, identity), old(sample, timesteps, identity)
        )
        torch.testing.assert_close(
            wide(sample, timesteps, identity, guided), old(sample, timesteps, identity, guided)
        )


def test_widening_is_seeded_and_splits_weights_unevenly():
    torch.manual_seed(0)
    old = IDiffFaceModel(tiny_config())
    first, again, other = grow_width(old, seed=0), grow_width(old, seed=0), grow_width(old, seed=1)
    key = "unet.down_blocks.0.resnets.0.conv1.weight"
    assert torch.equal(first.state_dict()[key], again.state_dict()[key])
    assert not torch.equal(first.state_dict()[key], other.state_dict()[key])
    conv = first.state_dict()[key]
    # the two copies of an input channel carry different shares that sum to the old weight
    assert not torch.allclose(conv[:, 0], conv[:, 1])
    old_conv = old.state_dict()[key]
    torch.testing.assert_close((conv[:, 0::2] + conv[:, 1::2])[0::2], old_conv)


def test_copied_channels_diverge_and_the_wider_model_trains():
    torch.manual_seed(0)
    wide = grow_width(IDiffFaceModel(tiny_config()))
    before = wide.unet.conv_in.weight.detach().clone()
    assert torch.equal(before[0], before[1])  # output channel 0's two copies
    losses = _fit_noise_target(wide)
    after = wide.unet.conv_in.weight.detach()
    assert not torch.allclose(after[0], after[1])
    assert losses[-1] < losses[0]


def _noisy_batch(config, rows: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    size = config.sample_size
    return (
        torch.randn(rows, 3, size, size, generator=generator),
        torch.randint(0, config.num_train_timesteps, (rows,), generator=generator),
        torch.randn(rows, config.id_dim, generator=generator),
    )


def _relative_error(prediction: torch.Tensor, reference: torch.Tensor) -> float:
    return ((prediction - reference).pow(2).mean() / reference.pow(2).mean()).sqrt().item()


def test_modulated_model_starts_close_to_the_old_one_where_a_plain_conversion_does_not():
    """Fitted on one batch, judged on another: within a few percent of the old model's
    predictions, while copying the old bias into the shift (no fit) is ~20% off."""
    torch.manual_seed(0)
    old = IDiffFaceModel(tiny_config()).eval()
    grown = grow_modulation(old, *_noisy_batch(old.config, 256, seed=1))
    assert grown.config.time_scale_shift and not old.config.time_scale_shift
    assert grown.unet.down_blocks[0].resnets[0].time_embedding_norm == "scale_shift"
    plain_state = old.state_dict()
    for key in plain_state:
        if key.endswith(("time_emb_proj.weight", "time_emb_proj.bias")):
            plain_state[key] = torch.cat([torch.zeros_like(plain_state[key]), plain_state[key]])
    plain = IDiffFaceModel(grown.config)
    plain.load_state_dict(plain_state)
    held_out = _noisy_batch(old.config, 64, seed=2)
    with torch.no_grad():
        reference = old(*held_out)
        fitted_error = _relative_error(grown(*held_out), reference)
        plain_error = _relative_error(plain.eval()(*held_out), reference)
    assert fitted_error < 0.06
    assert fitted_error < plain_error / 4


def test_modulation_replaces_only_the_time_projections_and_the_model_trains(tmp_path):
    torch.manual_seed(0)
    old = IDiffFaceModel(tiny_config())
    grown = grow_modulation(old, *_noisy_batch(old.config, 128, seed=1))
    grown_state = grown.state_dict()
    for key, value in old.state_dict().items():
        if "time_emb_proj" in key:
            assert grown_state[key].shape[0] == 2 * value.shape[0], key  # scale, then shift
        else:
            assert torch.equal(grown_state[key], value), key
    reloaded = IDiffFaceModel.from_pretrained(grown.save_pretrained(tmp_path / "m"))
    assert reloaded.config.time_scale_shift
    sample, timesteps, identity = _inputs(old.config)
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(sample, timesteps, identity), grown(sample, timesteps, identity)
        )
    losses = _fit_noise_target(grown.train())
    assert losses[-1] < losses[0]


def test_a_modulated_model_is_not_converted_twice():
    model = IDiffFaceModel(tiny_config(time_scale_shift=True))
    with pytest.raises(UsageError, match="already scale and shift"):
        grow_modulation(model, *_noisy_batch(model.config, 8, seed=1))
