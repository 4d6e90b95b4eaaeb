"""Recipe sections of the identity stage and what every generator family shares.

Each family's own ``generate`` section lives beside its code
(``idiff_face/settings.py``, ``id_booth/settings.py``, ``multi_id/settings.py``) and
extends :class:`GeneratorSettings`; ``generators/families.py`` joins them into one
union told apart by ``generate.family``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class ProbeSettings(BaseModel):
    """Realised identities (``generators/probe.py``): probe each candidate with a few
    images and keep those that draw a detectable face separated from the kept ones (the
    filter's detector, embedder, ``min_det_score`` and ``tau_inter``)."""

    model_config = ConfigDict(extra="forbid")

    candidates: float = Field(3.0, ge=1.0, description="candidate pool = count x this, at most")
    samples: int = Field(1, ge=1, description="probe images per candidate")
    condition: Literal["original", "probe"] = Field(
        "original", description="condition the samples on the drawn vector or the probe's"
    )
    min_condition_cos: float | None = Field(
        None, ge=-1.0, le=1.0, description="probe must follow its condition (filter embedder)"
    )
    select: Literal["first", "separated", "largest"] = Field(
        "first",
        description="first: greedy in candidate order at the filter's tau_inter; separated: "
        "probe the whole pool, keep count at the tightest separation (probe_select bench); "
        "largest: as separated, the largest separated set (fewest collisions first)",
    )


class IdentitySettings(BaseModel):
    """How many synthetic identities, and how they are drawn."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(100, ge=1)
    method: Literal["uniform", "separated", "two_stage", "fitted"] = "separated"
    tau: float = Field(0.3, gt=-1.0, le=1.0, description="max cosine between identities")
    spread: float = Field(
        1.0,
        gt=0.0,
        le=10.0,
        description="fitted only: scale of the draws' deviations from the prior mean",
    )
    select: Literal["drawn", "predicted"] = Field(
        "drawn",
        description="predicted: draw `pool` x count candidates and keep those whose faces the "
        "model's realisation map predicts apart (generators/realisation.py)",
    )
    pool: float = Field(
        4.0, ge=1.0, le=100.0, description="predicted only: candidates per wanted identity"
    )
    probe: ProbeSettings | None = Field(
        None, description="realise identities with probe images first (None: off)"
    )


class GeneratorSettings(BaseModel):
    """Fields every family reads: its model folder, how many samples, how they are batched.

    ``batch_size``, ``chunk_identities`` and ``device`` decide how work is split, never
    what is drawn (samples are seeded one by one), so they do not re-run generation."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the family's model folder")
    samples_per_identity: int = Field(8, ge=1)
    batch_size: int = Field(
        64, ge=1, description="samples per model call on CUDA; CPU always runs seeds.CPU_BATCH"
    )
    chunk_identities: int = Field(50, ge=1, description="identities per chunk (unit of work)")
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    jpeg_quality: int = Field(95, ge=50, le=100)

    SCHEDULING_FIELDS: ClassVar[tuple[str, ...]] = ("batch_size", "chunk_identities", "device")
