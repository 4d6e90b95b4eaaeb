"""Settings of the face stage (detection, alignment, embedding) as a recipe section."""

from __future__ import annotations

import os
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
    workers: int | None = Field(
        None,
        ge=1,
        description="processes that share each embed part, one thread each (speed only; "
        "default: the cores / orchestration.max_workers on the threads runner, 1 on Dask, "
        "whose workers are already the processes)",
    )


def embed_workers(faces: FaceSettings, runner: str = "threads", max_workers: int = 1) -> int:
    """Processes per embed part: ``faces.workers``, else the cores left to each chunk
    task on the threads runner (cores / max_workers), 1 on Dask (one process per task)."""
    if faces.workers is not None:
        return faces.workers
    if runner != "threads":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max_workers)
