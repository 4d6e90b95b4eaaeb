"""Recipe section ``train``: the recognizer recipe (no torch import: recipes load fast)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FRTrainSettings(BaseModel):
    """The recognizer recipe; defaults are the small CPU recipe (see BENCHMARKS.md)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = "mbf_small"
    embedding_dim: int = 128
    loss: str = Field("cosface", pattern="^(arcface|cosface|adaface)$")
    scale: float | None = None
    margin: float | None = None
    partial_fc: float = Field(1.0, gt=0.0, le=1.0, description="sample rate of class centres")
    optimizer: str = Field("sgd", pattern="^(sgd|adamw)$")
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = Field(128, ge=2)
    epochs: int = Field(20, ge=1)
    warmup_epochs: float = 1.0
    schedule: str = Field("cosine", pattern="^(cosine|step)$")
    step_milestones: list[float] = [0.5, 0.75, 0.9]
    hflip: bool = True
    randaugment: tuple[int, int] | None = None  # (num_ops, magnitude), e.g. (4, 16)
    seed: int = 0
    loader_workers: int = 1
    threads: int | None = None
    validate_every_epochs: int = 1
    val_pairs: str | None = "devtest"
    val_bins: list[str] = Field(default_factory=list, description="trusted insightface .bin sets")
    early_stop_patience: int | None = None
    max_minutes: float | None = None
    mixed_precision: str = Field("auto", pattern="^(auto|no|bf16|fp16)$")
