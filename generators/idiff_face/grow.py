"""Grow a trained model without changing what it draws: more attention, more depth.

The small default model reads its identity through cross-attention at 8 x 8 only (and
the time embedding); the finer levels see identity only as a global scale/shift. Growing
cross-attention into a finer level keeps every trained weight: the new transformer
blocks start with a zero output projection, so they add nothing until training moves
them, and the grown model predicts exactly what the old one did.

Growing depth (``grow_depth``) adds one residual block (and its attention, where the
level has one) to every down and up block, started as the identity, so capacity can
grow from the trained weights instead of from scratch (Net2DeeperNet's idea); growing
width (``grow_width``) duplicates every channel (Net2WiderNet's). ``grow_modulation``
changes how the embedding enters each residual block (a scale and shift after the norm
instead of a bias before it); it cannot be exact, so it is fitted on a batch.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from facefoundry.errors import UsageError
from facefoundry.generators.idiff_face.model import IDiffFaceModel


def grow_attention(model: IDiffFaceModel, levels: tuple[int, ...]) -> IDiffFaceModel:
    """A copy of ``model`` with cross-attention also at ``levels`` (0 = full resolution)."""
    config = model.config
    known = range(len(config.block_out_channels))
    unknown = [level for level in levels if level not in known]
    if unknown:
        raise UsageError(
            f"attention level(s) {unknown} do not exist: this model has levels 0-{known[-1]}"
        )
    new_levels = tuple(sorted(set(config.attention_levels) | set(levels)))
    grown = IDiffFaceModel(config.model_copy(update={"attention_levels": new_levels}))
    result = grown.load_state_dict(model.state_dict(), strict=False)
    if result.unexpected_keys or any(".attentions." not in key for key in result.missing_keys):
        raise RuntimeError(
            "growing attention changed more than the new attention blocks: "
            f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    for name in _new_blocks(result.missing_keys):
        transformer = grown.get_submodule(name)
        _zero(transformer.proj_out)
    return grown


def _zero(layer: nn.Module) -> None:
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.zero_()


def grow_depth(model: IDiffFaceModel) -> IDiffFaceModel:
    """A copy of ``model`` with one more residual block per down and up block.

    Down block: the new block comes last, so its output (a skip connection) equals the
    one before it. Up block: blocks pop skips in reverse, so the new block goes second;
    the first (an old block) now reads the new, equal skip, and the old blocks after
    the new one read the skips they always did. Every new block starts as the identity
    on its main input: a zero last convolution, a shortcut that passes the main input
    and drops the skip, a zero attention output.
    """
    config = model.config
    depth = config.layers_per_block
    grown = IDiffFaceModel(config.model_copy(update={"layers_per_block": depth + 1}))
    state = {_grown_key(key): value for key, value in model.state_dict().items()}
    result = grown.load_state_dict(state, strict=False)
    new_blocks = _new_blocks(result.missing_keys)
    expected = {
        f"unet.{side}.{b}.{kind}.{index}"
        for b in range(len(config.block_out_channels))
        for side, index in (("down_blocks", depth), ("up_blocks", 1))
        for kind in ("resnets", "attentions")
    }
    if result.unexpected_keys or not new_blocks <= expected:
        raise RuntimeError(
            "growing depth changed more than the new blocks: "
            f"new {sorted(new_blocks - expected)[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    for name in new_blocks:
        block = grown.get_submodule(name)
        if ".attentions." in name:
            _zero(block.proj_out)
        else:
            _start_as_identity(block)
    return grown


def _grown_key(key: str) -> str:
    """An old weight's name in the grown model: up blocks' blocks 1.. move one on."""
    match = re.match(r"(unet\.up_blocks\.\d+\.(?:resnets|attentions)\.)(\d+)(\..*)", key)
    if match is None or match.group(2) == "0":
        return key
    return f"{match.group(1)}{int(match.group(2)) + 1}{match.group(3)}"


def _new_blocks(missing_keys: list[str]) -> set[str]:
    """'unet.up_blocks.0.resnets.1' (or '...attentions.0') for every block the old state
    did not fill."""
    names = set()
    for key in missing_keys:
        match = re.match(r"(unet\.\w+\.\d+\.(?:resnets|attentions)\.\d+)\.", key)
        names.add(match.group(1) if match else key)
    return names


def _start_as_identity(resnet: nn.Module) -> None:
    """A diffusers residual block that returns its main input: zero last convolution and,
    where channels change (an up block's concatenated skip), a shortcut that keeps the
    first ``out`` channels (the main input) and drops the rest (the skip)."""
    _zero(resnet.conv2)
    shortcut = resnet.conv_shortcut
    if shortcut is None:
        return
    out_channels = shortcut.weight.shape[0]
    with torch.no_grad():
        shortcut.weight.zero_()
        shortcut.weight[:, :out_channels, 0, 0] = torch.eye(out_channels)
        if shortcut.bias is not None:
            shortcut.bias.zero_()


def grow_width(model: IDiffFaceModel, seed: int = 0) -> IDiffFaceModel:
    """A copy of ``model`` with twice the channels everywhere, predicting what it did.

    Net2WiderNet with every channel duplicated in place (old channel ``i`` becomes ``2i``
    and ``2i + 1``): a GroupNorm group, a LayerNorm, an up block's concatenated skip and
    an attention head each hold exactly the duplicates of what they held before, so
    their statistics are unchanged with the same number of groups and heads. A layer
    reading duplicated inputs splits each old weight between the two copies at a
    random share (seeded), which sums to the old weight and lets the copies diverge
    once training starts. The context tokens double too (capacity in the identity
    path); the query is scaled by 1/sqrt(2) because the heads' dot products double.
    """
    config = model.config
    wide = IDiffFaceModel(
        config.model_copy(
            update={
                "block_out_channels": tuple(2 * c for c in config.block_out_channels),
                "attention_head_dim": 2 * config.attention_head_dim,
                "context_dim": 2 * config.context_dim,
            }
        )
    )
    generator = torch.Generator().manual_seed(seed)
    old_state = model.state_dict()
    state = {}
    for key, new in wide.state_dict().items():
        if key not in old_state:
            raise RuntimeError(f"widening made a weight the old model lacks: {key}")
        old = old_state[key]
        if key == "unet.time_embedding.linear_1.weight":
            state[key] = _widen_sinusoid_input(old, new.shape)
            continue
        value = old
        for dim, (before, after) in enumerate(zip(old.shape, new.shape, strict=True)):
            if after == before:
                continue
            if after != 2 * before:
                raise RuntimeError(f"{key}: {tuple(old.shape)} -> {tuple(new.shape)}")
            value = value.repeat_interleave(2, dim=dim)
            if dim == 1 and key != "conditioner.empty_context":  # a layer reading copies
                share = torch.rand(value.shape, generator=generator) * 0.5 + 0.25
                first = share.narrow(1, 0, share.shape[1]).clone()
                first[:, 1::2] = 1 - share[:, 0::2]
                value = value * first
        if key.endswith("to_q.weight") or key.endswith("to_q.bias"):
            value = value / 2**0.5
        state[key] = value
    wide.load_state_dict(state)
    return wide


def _widen_sinusoid_input(old: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The time embedding's first layer: a 2C-channel sinusoid holds the C-channel one's
    frequencies at its even indices (cos half, then sin half), so the old columns go
    there and the new frequencies start at zero."""
    outputs, inputs = shape
    half_old, half_new = old.shape[1] // 2, inputs // 2
    value = torch.zeros(outputs, inputs, dtype=old.dtype)
    rows = old.repeat_interleave(outputs // old.shape[0], dim=0)
    value[:, 0:half_new:2] = rows[:, :half_old]
    value[:, half_new::2] = rows[:, half_old:]
    return value


def grow_modulation(
    model: IDiffFaceModel, noisy: torch.Tensor, timesteps: torch.Tensor, identity: torch.Tensor
) -> IDiffFaceModel:
    """A copy of ``model`` whose residual blocks scale and shift their normalised features
    by the time(+identity) embedding (ADM's adaptive group norm) instead of adding it as
    a bias before the norm: identity then modulates every resolution, 32 x 32 included.

    Not exact (a bias before a group norm is divided by each sample's deviation), so the
    new projection is fitted by least squares on a calibration batch (noisy inputs at
    their timesteps and conditions): per group, GN(h + b) = gamma (h - m) / s' + gamma
    (b - mean b) / s' + beta equals GN(h) (1 + scale) + shift for scale = s / s' - 1 and
    shift = gamma (b - mean b) / s' - beta x scale, each regressed on the embedding.
    """
    config = model.config
    if config.time_scale_shift:
        raise UsageError("this model's residual blocks already scale and shift (time_scale_shift)")
    grown = IDiffFaceModel(config.model_copy(update={"time_scale_shift": True}))
    state = model.state_dict()
    with torch.no_grad():
        for name, seen in _norm_statistics(model, noisy, timesteps, identity).items():
            norm = model.unet.get_submodule(name).norm2
            width = seen["bias"].shape[1] // norm.num_groups
            grouped = seen["bias"].reshape(len(noisy), norm.num_groups, width)
            centred = (grouped - grouped.mean(-1, keepdim=True)).reshape(seen["bias"].shape)
            scale = (seen["plain"] / seen["biased"] - 1).repeat_interleave(width, dim=1)
            divisor = seen["biased"].repeat_interleave(width, dim=1)
            shift = norm.weight * centred / divisor - norm.bias * scale
            weight, bias = _least_squares(seen["input"], torch.cat([scale, shift], dim=1))
            state[f"unet.{name}.time_emb_proj.weight"] = weight
            state[f"unet.{name}.time_emb_proj.bias"] = bias
    grown.load_state_dict(state)
    return grown.eval()


def _least_squares(
    inputs: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer's weight and bias mapping ``inputs`` to ``targets`` (ridge-damped)."""
    design = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1).double()
    gram = design.T @ design + ridge * len(inputs) * torch.eye(design.shape[1], dtype=design.dtype)
    solution = torch.linalg.solve(gram, design.T @ targets.double()).float()
    return solution[:-1].T.contiguous(), solution[-1].contiguous()


def _norm_statistics(
    model: IDiffFaceModel, noisy: torch.Tensor, timesteps: torch.Tensor, identity: torch.Tensor
) -> dict[str, dict[str, torch.Tensor]]:
    """Per residual block, per sample: the embedding the projection reads (``input``), the
    bias it adds (``bias``), and per group the deviation of the convolution's output h
    (``plain``) and of h + bias (``biased``, what the group norm divides by)."""
    from diffusers.models.resnet import ResnetBlock2D

    seen: dict[str, dict[str, torch.Tensor]] = {}
    hooks = []

    def deviation(value: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
        grouped = value.float().reshape(value.shape[0], norm.num_groups, -1)
        return (grouped.var(-1, unbiased=False) + norm.eps).sqrt()

    for name, block in model.unet.named_modules():
        if not isinstance(block, ResnetBlock2D) or block.time_emb_proj is None:
            continue
        record = seen.setdefault(name, {})
        norm = block.norm2

        def projection(_m, inputs, output, record=record) -> None:
            record["input"], record["bias"] = inputs[0].float(), output.float()

        def after_conv(_m, _i, output, record=record, norm=norm) -> None:
            record["plain"] = deviation(output, norm)

        def before_norm(_m, inputs, record=record, norm=norm) -> None:
            record["biased"] = deviation(inputs[0], norm)

        hooks.append(block.time_emb_proj.register_forward_hook(projection))
        hooks.append(block.conv1.register_forward_hook(after_conv))
        hooks.append(norm.register_forward_pre_hook(before_norm))
    try:
        with torch.no_grad():
            model.eval()(noisy, timesteps, identity)
    finally:
        for hook in hooks:
            hook.remove()
    return seen
