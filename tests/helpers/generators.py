"""Tiny seeded generator models for tests: real forward passes in milliseconds."""

from __future__ import annotations

import torch
from torch import nn

from facefoundry.generators.idiff_face.config import IDiffFaceConfig
from facefoundry.generators.multi_id.attention import install_identity_adapter


def tiny_config(**overrides) -> IDiffFaceConfig:
    values = dict(
        sample_size=16,
        block_out_channels=(8, 16),
        attention_levels=(1,),
        attention_head_dim=4,
        norm_num_groups=4,
        id_dim=12,
        context_tokens=2,
        context_dim=8,
        image_size=16,
    )
    values.update(overrides)
    return IDiffFaceConfig(**values)


ID_DIM = 128


def tiny_unet(seed: int = 0, in_channels: int = 3, size: int = 16):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    ).eval()


def tiny_id_network() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Flatten(), nn.Linear(4 * 14 * 14, 16))


def adapted(seed: int = 0, size: int = 16, in_channels: int = 3, live: bool = True):
    unet = tiny_unet(seed, in_channels, size)
    torch.manual_seed(seed + 100)
    adapter = install_identity_adapter(unet, ID_DIM, num_tokens=4)
    if live:  # a trained adapter: give the zero-initialised output projections weights
        for processor in adapter.processors.values():
            nn.init.normal_(processor.to_out_id.weight, std=0.5)
    return unet, adapter


def tiny_vae():
    """A one-level AutoencoderKL (4 latent channels) for latent-model tests."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
