"""Settings of the filter stage (a recipe section): rules, thresholds, embedders, sampling.

Every similarity threshold is a :class:`Threshold`: either a cosine similarity
(``{cos: 0.4}``, or a bare number) that is only meaningful for one embedder, or a
false-match rate (``{fmr: 1e-4}``) that is turned into that embedder's cosine with
a calibration on real impostor pairs (LFW), see ``filters.calibrate``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OFF = "none"  # reference: none turns the privacy rule off


class Threshold(BaseModel):
    """A cosine-similarity threshold, given directly or as a false-match rate.

    ``cos``: cosine similarity (-1..1, not a distance) for the embedder named in
    ``embedder`` (None: whichever embedder applies the rule; a cosine set for one
    model is refused for another). ``fmr``: the fraction of real impostor image
    pairs that score above the threshold; resolved per embedder by calibration.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cos: float | None = Field(None, ge=-1.0, le=1.0)
    fmr: float | None = Field(None, gt=0.0, lt=1.0)
    embedder: str | None = Field(None, description="embedder a cosine was chosen for")

    @model_validator(mode="after")
    def _one_kind(self) -> Threshold:
        if (self.cos is None) == (self.fmr is None):
            raise ValueError("a threshold needs exactly one of 'cos' or 'fmr'")
        return self

    def describe(self) -> str:
        if self.cos is not None:
            return f"cos {self.cos:g}" + (f" ({self.embedder})" if self.embedder else "")
        return f"FMR {self.fmr:g}"


def _as_threshold(value: object) -> object:
    """Accept a bare number as a cosine, and ``"fmr:1e-4"`` / ``"cos:0.4"`` strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return {"cos": float(value)}
    if isinstance(value, str) and ":" in value:
        kind, number = value.split(":", 1)
        if kind.strip() in ("cos", "fmr"):
            return {kind.strip(): float(number)}
    return value


class FilterSettings(BaseModel):
    """What the filter stage removes and how it reports.

    Rules run in this order (each sees only the survivors of the previous ones):
    sample rules: unusable embedding/no face, several faces, low detection score,
    cosine to the identity centroid below ``min_centroid_cos``, the lowest
    ``centroid_quantile`` of each identity; identity rules: fewer than
    ``min_samples`` samples, privacy (``tau_priv`` to the reference set),
    de-duplication (``tau_inter`` between centroids; ``dedup`` chooses the survivors:
    ``greedy`` the most consistent first, ``largest`` the most identities the rule
    allows).

    Privacy reference: ``reference`` (a path), else by default the generator's own
    training people when its model folder records them (``training_set.yaml``, e.g. LFW
    DevTrain for ``models/idiff-face-lfw``), compared at the threshold calibrated on
    unseen real people (``evaluation.leakage``); ``reference: none`` or ``tau_priv: null``
    turns the rule off.
    """

    model_config = ConfigDict(extra="forbid")

    # embedders: the filter decides, the judge reports (independent by default)
    embedder: str = Field("sface", description="filtering embedder: sface | dlib | onnx:PATH")
    judge_embedder: str = Field("dlib", description="embedder that scores the metrics")
    privacy_embedder: str | None = Field(
        None, description="embedder for the privacy rule (default: the filtering embedder)"
    )
    allow_same_judge: bool = Field(
        False, description="allow judge_embedder == embedder (the report is then not independent)"
    )

    # sample rules
    max_faces: int | None = Field(1, ge=1, description="reject images with more faces; None: off")
    min_det_score: float = Field(0.7, ge=0.0, le=1.0, description="detector confidence, 0..1")
    min_centroid_cos: Threshold | None = Field(
        default_factory=lambda: Threshold(fmr=1e-2),
        description="reject samples whose cosine to their identity centroid is below this",
    )
    centroid_quantile: float = Field(
        0.1, ge=0.0, lt=1.0, description="trim the lowest fraction per identity (DCFace: 0.1)"
    )

    # identity rules
    min_samples: int = Field(2, ge=1, description="drop identities with fewer kept samples (k)")
    tau_priv: Threshold | None = Field(
        default_factory=lambda: Threshold(fmr=1e-3),
        description="drop identities whose centroid exceeds this to any reference identity "
        "(a given reference's threshold; the generator's training people use their own "
        "calibrated one); null: privacy off",
    )
    reference: str | None = Field(
        None,
        description="real reference embeddings: a parquet file or a folder of parts; null "
        "(default): the generator's training people when its model folder records them "
        "(training_set.yaml: LFW people, threshold calibrated on unseen LFW people), else "
        "skipped; none: privacy off",
    )
    privacy_against: Literal["centroids", "samples"] = Field(
        "centroids", description="compare to reference identity centroids or to every image"
    )
    tau_inter: Threshold | None = Field(
        default_factory=lambda: Threshold(fmr=1e-4),
        description="merge away identities whose centroids exceed this to a kept identity",
    )
    dedup: Literal["greedy", "largest"] = Field(
        "greedy",
        description="which identities survive tau_inter: greedy (most consistent first) or "
        "largest (the most the rule allows, fewest collisions first)",
    )

    # calibration, search, metrics
    calibration: str | None = Field(
        None, description="calibration JSON file or folder (default: cache, then built-in)"
    )
    search_backend: Literal["auto", "torch", "faiss"] = Field(
        "auto", description="exact cosine search: faiss when installed (auto), else torch"
    )
    screen: Literal["auto", "none", "bf16"] = Field(
        "auto",
        description="bf16 pre-screen with an exact float32 re-check (auto: if the CPU has bf16)",
    )
    block_size: int = Field(2048, ge=64, description="rows per block of the blocked search")
    impostor_pairs: int = Field(200_000, ge=100, description="seeded impostor pairs for metrics")
    genuine_pairs: int = Field(
        200_000, ge=100, description="genuine pairs: all if fewer, else a seeded sample"
    )
    metric_threshold: Threshold = Field(
        default_factory=lambda: Threshold(fmr=1e-3),
        description="cosine 1 - r for DCFace uniqueness and consistency (radius r)",
    )
    metrics_with_filter_embedder: bool = Field(
        True, description="also report metrics with the filtering embedder"
    )
    seed: int = 0

    @field_validator("min_centroid_cos", "tau_priv", "tau_inter", "metric_threshold", mode="before")
    @classmethod
    def _threshold(cls, value: object) -> object:
        return _as_threshold(value)

    @field_validator("reference", mode="before")
    @classmethod
    def _reference(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in (OFF, "off"):
            return OFF
        return value

    @model_validator(mode="after")
    def _independent_judge(self) -> FilterSettings:
        if self.judge_embedder == self.embedder and not self.allow_same_judge:
            raise ValueError(
                f"judge_embedder equals the filtering embedder ({self.embedder}): the report "
                "would grade the filter with its own model. Pick another judge (e.g. dlib for "
                "sface) or set allow_same_judge: true."
            )
        return self

    @property
    def privacy_model(self) -> str:
        return self.privacy_embedder or self.embedder

    @property
    def reference_off(self) -> bool:
        """``reference: none``: no privacy rule, not even the generator's training people."""
        return self.reference == OFF
