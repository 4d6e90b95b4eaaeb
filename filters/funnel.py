"""Reject reasons, in the order the rules run, and the funnel: what each rule removed.

Each candidate sample gets at most one reason: the first rule that rejects it.
Identity rules reject all remaining samples of an identity. The funnel counts,
rule by rule, the samples and identities removed and what remains, so that
input - sum(removed) == kept for both.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

logger = logging.getLogger(__name__)

# sample rules, in order
BAD_IMAGE = "bad_image"  # could not be decoded
NO_FACE = "no_face"  # no face detected (a centred fallback crop counts as none)
BAD_EMBEDDING = "bad_embedding"  # NaN, infinite, zero or missing vector
MULTIPLE_FACES = "multiple_faces"
LOW_DET_SCORE = "low_det_score"
LOW_CENTROID_COS = "low_centroid_cos"  # below the absolute cosine to the identity centroid
QUANTILE_TRIM = "quantile_trim"  # in the lowest quantile of its identity
# identity rules, in order
NO_SAMPLES_LEFT = "no_samples_left"  # identity-level only: every sample was rejected
TOO_FEW_SAMPLES = "too_few_samples"
PRIVACY = "privacy"
DUPLICATE_IDENTITY = "duplicate_identity"

SAMPLE_REASONS = (
    BAD_IMAGE,
    NO_FACE,
    BAD_EMBEDDING,
    MULTIPLE_FACES,
    LOW_DET_SCORE,
    LOW_CENTROID_COS,
    QUANTILE_TRIM,
)
IDENTITY_REASONS = (NO_SAMPLES_LEFT, TOO_FEW_SAMPLES, PRIVACY, DUPLICATE_IDENTITY)
ALL_REASONS = SAMPLE_REASONS + IDENTITY_REASONS


def _ordered(found: set[str], known: tuple[str, ...]) -> list[str]:
    """Every known rule (zeros included), after any unknown reason (e.g. a new face status)."""
    return sorted(r for r in found if r not in known) + list(known)


def build_funnel(reasons: np.ndarray, groups: np.ndarray, identity_reasons: np.ndarray) -> dict:
    """Counts per rule for samples (``reasons``, None = kept) and identities (``identity_reasons``)."""
    reasons = np.asarray(reasons, dtype=object)
    identity_reasons = np.asarray(identity_reasons, dtype=object)
    funnel = {}
    for label, values, known in (
        ("samples", reasons, SAMPLE_REASONS + IDENTITY_REASONS[1:]),
        ("identities", identity_reasons, IDENTITY_REASONS),
    ):
        counts = Counter(values.tolist())
        remaining = len(values)
        steps = []
        for rule in _ordered({r for r in counts if r is not None}, known):
            removed = int(counts.get(rule, 0))
            remaining -= removed
            steps.append({"rule": rule, "removed": removed, "remaining": remaining})
        kept = int(counts.get(None, 0))
        funnel[label] = {"input": int(len(values)), "steps": steps, "kept": kept}
    check_funnel(funnel)
    return funnel


def check_funnel(funnel: dict) -> None:
    """Raise if a funnel does not add up (input - removed == kept, remaining decreasing)."""
    for label in ("samples", "identities"):
        part = funnel[label]
        removed = sum(step["removed"] for step in part["steps"])
        if part["input"] - removed != part["kept"]:
            raise AssertionError(
                f"funnel {label}: input {part['input']} - removed {removed} != kept {part['kept']}"
            )
        if part["steps"] and part["steps"][-1]["remaining"] != part["kept"]:
            raise AssertionError(f"funnel {label}: the last step does not end at kept")
