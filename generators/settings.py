"""Recipe sections of the identity and generation stages."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class IdentitySettings(BaseModel):
    """How many synthetic identities, and how they are drawn."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(100, ge=1)
    method: Literal["uniform", "separated", "two_stage"] = "separated"
    tau: float = Field(0.3, gt=-1.0, le=1.0, description="max cosine between identities")


class GenerateSettings(BaseModel):
    """Which generator makes the candidate images, and how it samples."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["idiff_face"] = "idiff_face"
    model: str = Field("models/idiff-face-lfw", description="model folder (diffusers layout)")
    samples_per_identity: int = Field(8, ge=1)
    scheduler: Literal["dpmsolver++", "unipc", "ddim", "ddpm"] = "dpmsolver++"
    steps: int = Field(25, ge=1)
    guidance_scale: float = Field(1.0, ge=0.0)
    context_noise: float = Field(0.0, ge=0.0, description="std of per-sample identity jitter")
    batch_size: int = Field(64, ge=1)
    chunk_identities: int = Field(50, ge=1, description="identities per chunk (unit of work)")
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    jpeg_quality: int = Field(95, ge=50, le=100)
