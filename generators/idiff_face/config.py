"""The IDiff-Face model's settings: architecture, identity conditioning and noise schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class IDiffFaceConfig(BaseModel):
    """Everything needed to rebuild an IDiff-Face model from its folder.

    The paper's model is a latent DDPM (216M-parameter UNet, epsilon prediction, linear
    betas); the small CPU default is a pixel-space UNet with v-prediction on a cosine
    schedule, which converged far faster in measured runs (see the model card).
    """

    model_config = ConfigDict(extra="forbid")

    sample_size: int = 32  # pixels (pixel space) or latent size (latent space)
    in_channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    # which resolution levels (0 = full) carry identity cross-attention
    attention_levels: tuple[int, ...] = (2,)
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    id_dim: int = Field(128, description="identity embedding size: 128 sface, 512 ArcFace")
    context_tokens: int = 4
    context_dim: int = 64
    cpd_p: float = Field(0.25, ge=0.0, lt=1.0, description="Contextual Partial Dropout rate")
    id_in_time_embedding: bool = True  # also add the projected identity to the timestep embedding
    # True: every residual block scales and shifts its normalised features by the
    # time(+identity) embedding (ADM's adaptive group norm) instead of adding a bias
    # before the norm, so identity modulates every resolution, the finest included
    time_scale_shift: bool = False
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "squaredcos_cap_v2", "scaled_linear"] = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    latent: bool = False  # True: a diffusers autoencoder in vae/ maps images <-> latents
    image_size: int = 32  # decoded image size before resizing to the 112 px output
    conditioning_embedder: str = "sface"
    conditioning_checksum: str = ""


PAPER_CONFIG = IDiffFaceConfig(
    # IDiff-Face (ICCV 2023): 128 px images through a VQ-f4 autoencoder -> 3 x 32 x 32,
    # 96 base channels x [1, 2, 2, 2], attention at the 3 lower resolutions, 32-channel
    # heads, 2 res-blocks per level, 512-d ArcFace-style embedding -> 256-d context.
    sample_size=32,
    block_out_channels=(96, 192, 192, 192),
    layers_per_block=2,
    attention_levels=(1, 2, 3),
    attention_head_dim=32,
    norm_num_groups=32,
    id_dim=512,
    context_tokens=1,
    context_dim=256,
    cpd_p=0.25,
    id_in_time_embedding=False,
    beta_schedule="linear",
    prediction_type="epsilon",
    latent=True,
    image_size=128,
    conditioning_embedder="onnx:arcface.onnx",
)


# Twice the default's channels (5.7 M parameters, about 2x its CPU sampling time): the
# "wider variant" of issue 16, for training where a GPU is lent (`generator train --config
# wide`; benchmarks/gpu_idiff.py's variant C has the same channels).
WIDE_CONFIG = IDiffFaceConfig(
    block_out_channels=(64, 128, 128),
    attention_head_dim=16,
    norm_num_groups=16,
)
