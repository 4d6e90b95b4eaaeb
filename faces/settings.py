"""Settings of the face stage (detection, alignment, embedding) as a recipe section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FaceSettings(BaseModel):
    """How images become aligned faces and embeddings."""

    model_config = ConfigDict(extra="forbid")

    detector: str = Field("yunet", description="yunet | dlib | insightface:PATH.onnx")
    embedder: str = Field("sface", description="sface | dlib | onnx:PATH | insightface:DIR")
    selection: Literal["central", "largest", "score"] = "central"
    no_face: Literal["reject", "centre"] = "reject"
    min_det_score: float = Field(0.6, ge=0.0, le=1.0)
    workers: int = Field(2, ge=1)
    batch_size: int = Field(64, ge=1)
