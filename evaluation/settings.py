"""Settings of the verification stage as a recipe section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EvalSettings(BaseModel):
    """Which benchmarks score a trained (or off-the-shelf) recognizer."""

    model_config = ConfigDict(extra="forbid")

    lfw: str | None = Field(None, description="LFW folder; default $FACEFOUNDRY_DATA_DIR/lfw")
    pairs: list[Literal["view2", "devtest"]] = ["devtest", "view2"]
    detector: str = "yunet"
    flip_tta: bool = True
    bins: list[str] = Field(default_factory=list, description="insightface .bin files (trusted)")
    workers: int = Field(2, ge=1)
    folds: list[int] | None = Field(None, description="only these folds (0-based); quick runs")


class CompareSettings(BaseModel):
    """The equal-scale comparison (``evaluation/compare_real.py``): the same recognizer
    trained on real LFW DevTrain faces shaped like the kept synthetic set."""

    model_config = ConfigDict(extra="forbid")

    real: Literal["auto", "matched", "devtrain"] = Field(
        "auto", description="matched people, all of DevTrain, or whichever is closer in size"
    )
