"""Settings of the face stage (detection, alignment, embedding) as a recipe section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FaceSettings(BaseModel):
    """How generated images become aligned faces (the embed stage).

    Which embedders run is decided by the filter section (its filter, judge and privacy
    embedders); the detector's confidence floor is ``filter.min_det_score``."""

    model_config = ConfigDict(extra="forbid")

    detector: str = Field("yunet", description="yunet | dlib | insightface:PATH.onnx")
    selection: Literal["central", "largest", "score"] = "central"
    no_face: Literal["reject", "centre"] = Field(
        "reject", description="reject: record no_face; centre: embed a centred crop"
    )
    batch_size: int = Field(64, ge=1, description="faces per embedder call (speed only)")
