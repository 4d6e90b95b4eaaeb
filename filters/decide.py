"""All filter rules on in-memory arrays, in order, with every decision and its scores kept.

Order: face rules (status, unusable vector, several faces, detection score) ->
consistency rules against the centroid of the samples that passed the face rules
(absolute cosine, then per-identity quantile of the survivors) -> identity rules:
no samples left, fewer than ``min_samples``, privacy (the kept samples' centroid
vs the reference set), de-duplication (greedy, most consistent identity first).
Each rule sees only the survivors of the previous ones, so each rejected sample
has exactly one reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from facefoundry.filters.dedup import greedy_dedup, largest_dedup
from facefoundry.filters.funnel import (
    DUPLICATE_IDENTITY,
    LOW_CENTROID_COS,
    NO_SAMPLES_LEFT,
    PRIVACY,
    QUANTILE_TRIM,
    TOO_FEW_SAMPLES,
    build_funnel,
)
from facefoundry.filters.groups import centroid_cosines, centroids, group_counts, group_mean
from facefoundry.filters.privacy import ReferenceSet, privacy_check
from facefoundry.filters.sample_rules import (
    below_absolute,
    face_reasons,
    pair_consistency,
    quantile_trim,
)
from facefoundry.filters.samples import SampleTable, embedder_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rules:
    """Resolved rule parameters: every threshold is a cosine for the named embedder (None = off)."""

    embedder: str = "sface"
    max_faces: int | None = 1
    min_det_score: float = 0.0
    min_centroid_cos: float | None = None
    centroid_quantile: float = 0.0
    min_samples: int = 1
    tau_priv: float | None = None
    privacy_embedder: str | None = None
    tau_inter: float | None = None
    dedup: str = "greedy"  # "greedy" (priority order) or "largest" (filters/dedup.py)


@dataclass
class IdentityDecisions:
    """Per identity (index = group code): counts, the identity-level reason and its scores."""

    n_candidates: np.ndarray
    n_after_sample_rules: np.ndarray
    n_kept: np.ndarray
    reason: np.ndarray  # None = kept
    centroid_consistency: np.ndarray  # mean cos of kept samples to their centroid
    pair_consistency: np.ndarray  # mean pairwise cos of kept samples (dedup priority)
    duplicate_of: np.ndarray  # group code of the kept partner, -1
    duplicate_cos: np.ndarray
    nearest_real: np.ndarray  # reference identity name or None
    nearest_real_cos: np.ndarray


@dataclass
class FilterResult:
    """Per sample: kept, reason (None = kept), cosine to the consistency centroid; per identity."""

    kept: np.ndarray
    reason: np.ndarray
    centroid_cos: np.ndarray
    identities: IdentityDecisions
    funnel: dict = field(default_factory=dict)


def apply_filters(
    table: SampleTable,
    rules: Rules,
    reference: ReferenceSet | None = None,
    *,
    block: int = 2048,
    backend: str = "auto",
    screen: str = "none",
    progress: bool = False,
) -> FilterResult:
    """Run every rule on a SampleTable; see the module docstring for the order."""
    vectors = table.vectors(rules.embedder)
    groups, n_groups = table.groups, table.n_groups
    reasons = face_reasons(
        table.status,
        vectors,
        table.n_faces,
        table.det_score,
        max_faces=rules.max_faces,
        min_det_score=rules.min_det_score,
    )
    alive = np.array([r is None for r in reasons.tolist()], dtype=bool)

    # intra-class consistency against the centroid of the face-rule survivors
    centres, _ = centroids(vectors, groups, n_groups, alive)
    centre_cos = np.full(len(table), np.nan, dtype=np.float32)
    centre_cos[alive] = centroid_cosines(vectors[alive], groups[alive], centres)
    if rules.min_centroid_cos is not None:
        low = below_absolute(centre_cos, alive, rules.min_centroid_cos)
        reasons[low] = LOW_CENTROID_COS
        alive &= ~low
    trimmed = quantile_trim(centre_cos, groups, n_groups, alive, rules.centroid_quantile)
    reasons[trimmed] = QUANTILE_TRIM
    alive &= ~trimmed

    # identity rules
    n_candidates = group_counts(groups, n_groups)
    n_after = group_counts(groups, n_groups, alive)
    id_reason = np.full(n_groups, None, dtype=object)
    id_reason[n_after == 0] = NO_SAMPLES_LEFT
    few = (n_after > 0) & (n_after < rules.min_samples)
    id_reason[few] = TOO_FEW_SAMPLES
    reasons[alive & few[groups]] = TOO_FEW_SAMPLES
    alive &= ~few[groups]

    final, _ = centroids(vectors, groups, n_groups, alive)
    final_cos = centroid_cosines(vectors, groups, final)
    consistency = group_mean(final_cos, groups, n_groups, alive)
    pairs = pair_consistency(vectors, groups, n_groups, alive)

    nearest_real = np.full(n_groups, None, dtype=object)
    nearest_real_cos = np.full(n_groups, np.nan, dtype=np.float32)
    if reference is not None:
        model = embedder_name(rules.privacy_embedder or rules.embedder)
        if reference.embedder != model:
            raise ValueError(f"reference set is {reference.embedder}, privacy uses {model}")
        private = table.vectors(model)
        private_ok = alive & np.isfinite(private).all(axis=1)
        live = np.flatnonzero(id_reason == None)  # noqa: E711 - element-wise
        if len(live):
            real_centres, _ = centroids(private, groups, n_groups, private_ok)
            check = privacy_check(
                real_centres[live],
                reference,
                2.0 if rules.tau_priv is None else rules.tau_priv,
                block=block,
                backend=backend,
            )
            nearest_real[live] = check.nearest
            nearest_real_cos[live] = check.nearest_cos
            if rules.tau_priv is not None:
                flagged = np.zeros(n_groups, dtype=bool)
                flagged[live[check.flagged]] = True
                id_reason[flagged] = PRIVACY
                reasons[alive & flagged[groups]] = PRIVACY
                alive &= ~flagged[groups]

    duplicate_of = np.full(n_groups, -1, dtype=np.int64)
    duplicate_cos = np.full(n_groups, np.nan, dtype=np.float32)
    if rules.tau_inter is not None:
        live = np.flatnonzero(id_reason == None)  # noqa: E711
        if len(live) > 1:
            if rules.dedup == "largest":
                result = largest_dedup(final[live], rules.tau_inter, pairs[live], block=block)
            else:
                result = greedy_dedup(
                    final[live],
                    rules.tau_inter,
                    priority=pairs[live],
                    block=block,
                    backend=backend,
                    screen=screen,
                    progress=progress,
                )
            merged = live[~result.kept]
            duplicate_of[merged] = live[result.partner[~result.kept]]
            duplicate_cos[merged] = result.partner_cos[~result.kept]
            dup = np.zeros(n_groups, dtype=bool)
            dup[merged] = True
            id_reason[dup] = DUPLICATE_IDENTITY
            reasons[alive & dup[groups]] = DUPLICATE_IDENTITY
            alive &= ~dup[groups]

    decisions = IdentityDecisions(
        n_candidates=n_candidates,
        n_after_sample_rules=n_after,
        n_kept=group_counts(groups, n_groups, alive),
        reason=id_reason,
        centroid_consistency=consistency.astype(np.float32),
        pair_consistency=pairs.astype(np.float32),
        duplicate_of=duplicate_of,
        duplicate_cos=duplicate_cos,
        nearest_real=nearest_real,
        nearest_real_cos=nearest_real_cos,
    )
    funnel = build_funnel(reasons, groups, id_reason)
    logger.info(
        "kept %d of %d samples, %d of %d identities",
        alive.sum(),
        len(alive),
        funnel["identities"]["kept"],
        n_groups,
    )
    return FilterResult(alive, reasons, centre_cos, decisions, funnel)
