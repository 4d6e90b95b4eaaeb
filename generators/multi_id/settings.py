"""Recipe section ``generate.multi_id``: every knob of the multi-identity generator."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MultiIdSettings(BaseModel):
    """Layout, adapter, loss and sampling settings of the WithAnyone-style generator."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("models/multi-id", description="folder: unet/ + adapter.safetensors")
    faces_per_image: int = Field(2, ge=1, le=8, description="K identities per group image")
    tokens_per_identity: int = Field(8, ge=1, le=64)
    id_dim: int = Field(128, ge=1, description="identity embedding size (128 sface, 512 arcface)")
    box_min: float = Field(0.25, gt=0.0, le=1.0, description="face box side, fraction of image")
    box_max: float = Field(0.45, gt=0.0, le=1.0)
    box_margin: float = Field(0.02, ge=0.0, lt=0.5, description="gap to borders and other boxes")
    # training
    diffusion_weight: float = Field(1.0, ge=0.0)
    id_loss_weight: float = Field(0.1, ge=0.0)
    infonce_weight: float = Field(0.05, ge=0.0)
    temperature: float = Field(0.07, gt=0.0)
    low_noise_fraction: float = Field(0.6, gt=0.0, le=1.0, description="ID losses for t<=f*T")
    learning_rate: float = Field(1e-4, gt=0.0)
    # sampling
    samples_per_identity: int = Field(8, ge=1)
    scheduler: Literal["dpmsolver++", "unipc", "ddim", "ddpm"] = "dpmsolver++"
    steps: int = Field(25, ge=1)
    batch_size: int = Field(16, ge=1, description="group images per sampling batch")
    chunk_identities: int = Field(50, ge=1)
    # crop-back
    detector: str = "yunet"
    embedder: str = "sface"
    gate: Literal["iou", "centre"] = "centre"
    min_iou: float = Field(0.3, ge=0.0, le=1.0)
    min_similarity: float = Field(-1.0, ge=-1.0, le=1.0, description="-1: filters decide")
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    jpeg_quality: int = Field(95, ge=50, le=100)

    @model_validator(mode="after")
    def _check(self) -> MultiIdSettings:
        if self.box_min > self.box_max:
            raise ValueError(f"box_min {self.box_min} is larger than box_max {self.box_max}")
        return self
