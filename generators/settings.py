"""Recipe sections of the identity and generation stages."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from facefoundry.generators.id_booth.settings import IDBoothSettings
from facefoundry.generators.with_anyone.settings import MultiIdSettings


class IdentitySettings(BaseModel):
    """How many synthetic identities, and how they are drawn."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(100, ge=1)
    method: Literal["uniform", "separated", "two_stage", "fitted"] = "separated"
    tau: float = Field(0.3, gt=-1.0, le=1.0, description="max cosine between identities")


class GenerateSettings(BaseModel):
    """Which generator makes the candidate images, and how it samples."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["idiff_face", "id_booth", "multi_id"] = "idiff_face"
    model: str = Field(
        "models/idiff-face-lfw",
        description="IDiff-Face model folder (id_booth: draws the reference images)",
    )
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
    id_booth: IDBoothSettings = Field(default_factory=IDBoothSettings)
    multi_id: MultiIdSettings = Field(
        default_factory=MultiIdSettings,
        description="family multi_id: its own model, layout and sampling settings",
    )
