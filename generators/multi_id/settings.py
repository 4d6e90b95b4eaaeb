"""Recipe section ``generate`` for ``family: multi_id``, and the adapter's training settings.

Training settings are their own model (used by ``generator train-multi-id``), so changing
a loss weight never re-runs generation."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facefoundry.generators.settings import GeneratorSettings


class GroupLayout(BaseModel):
    """How many faces a group image holds and where their boxes may go."""

    model_config = ConfigDict(extra="forbid")

    faces_per_image: int = Field(2, ge=1, le=8, description="K identities per group image")
    box_min: float = Field(0.25, gt=0.0, le=1.0, description="face box side, fraction of image")
    box_max: float = Field(0.45, gt=0.0, le=1.0)
    box_margin: float = Field(0.02, ge=0.0, lt=0.5, description="gap to borders and other boxes")

    @model_validator(mode="after")
    def _check(self):
        if self.box_min > self.box_max:
            raise ValueError(f"box_min {self.box_min} is larger than box_max {self.box_max}")
        return self


class MultiIdSettings(GroupLayout, GeneratorSettings):
    """Layout, sampling and crop-back settings of the WithAnyone-style generator."""

    family: Literal["multi_id"] = "multi_id"
    model: str = Field("models/multi-id", description="folder: unet/ + adapter.safetensors")
    batch_size: int = Field(16, ge=1, description="group images per sampling batch")
    scheduler: Literal["dpmsolver++", "unipc", "ddim", "ddpm"] = "dpmsolver++"
    steps: int = Field(25, ge=1)
    # crop-back
    detector: str = "yunet"
    embedder: str = "sface"
    gate: Literal["iou", "centre"] = "centre"
    min_iou: float = Field(0.3, ge=0.0, le=1.0)
    min_similarity: float = Field(-1.0, ge=-1.0, le=1.0, description="-1: filters decide")
    crop_upscale: int = Field(1, ge=1, le=8, description="enlarge small canvases before detection")


class MultiIdTrainSettings(GroupLayout):
    """Adapter training: loss weights, schedule and the group canvases it trains on."""

    diffusion_weight: float = Field(1.0, ge=0.0)
    id_loss_weight: float = Field(0.1, ge=0.0)
    infonce_weight: float = Field(0.05, ge=0.0)
    temperature: float = Field(0.07, gt=0.0)
    low_noise_fraction: float = Field(0.6, gt=0.0, le=1.0, description="ID losses for t<=f*T")
    learning_rate: float = Field(1e-4, gt=0.0)
    region_masks: bool = Field(True, description="False: no-mask ablation (attend everywhere)")
    face_counts: list[int] | None = Field(
        None, description="faces per canvas cycled per step (e.g. [2, 3, 4]); None: K fixed"
    )
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _check_counts(self):
        if self.face_counts is not None and (
            not self.face_counts or not all(1 <= k <= 8 for k in self.face_counts)
        ):
            raise ValueError(f"face_counts must be 1..8 faces each, got {self.face_counts}")
        return self
