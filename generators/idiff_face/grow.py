"""Add identity cross-attention to a trained model without changing what it draws.

The small default model reads its identity through cross-attention at 8 x 8 only (and
the time embedding); the finer levels see identity only as a global scale/shift. Growing
cross-attention into a finer level keeps every trained weight: the new transformer
blocks start with a zero output projection, so they add nothing until training moves
them, and the grown model predicts exactly what the old one did.
"""

from __future__ import annotations

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
    for name in _new_attention_blocks(result.missing_keys):
        transformer = grown.get_submodule(name)
        _zero(transformer.proj_out)
    return grown


def _new_attention_blocks(missing_keys: list[str]) -> list[str]:
    """'unet.down_blocks.1.attentions.0' for every new transformer, from its missing keys."""
    names = set()
    for key in missing_keys:
        head, _, rest = key.partition(".attentions.")
        names.add(f"{head}.attentions.{rest.split('.')[0]}")
    return sorted(names)


def _zero(layer: nn.Module) -> None:
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.zero_()
