"""ROC figures of verification scores, shared by ``evaluation/`` and ``filters/``.

Scores are similarities (higher = same identity). The curve and its area come from
scikit-learn (``roc_curve`` with every distinct score kept, ``auc``); the figures
scikit-learn has no function for (the EER with its threshold, the rate at a false
positive rate) are read off that curve here, once. The module lives in the root
package (beside ``atomic.py``) because ``filters/`` and ``evaluation/`` may not import
each other (docs/architecture.md); it imports only numpy, and scikit-learn when a
curve is first computed.

Point ``i`` of a curve accepts every score ``>= thresholds[i]``: point 0 (threshold
``inf``) accepts nothing, the last point everything. The same operating point is
reached by accepting scores strictly above the next lower distinct score
(``thresholds[i + 1]``); that is how ``strict`` thresholds are reported.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class Roc(NamedTuple):
    """scikit-learn's ``roc_curve`` output, nothing dropped, with the class sizes."""

    fpr: np.ndarray  # share of impostor scores >= threshold
    tpr: np.ndarray  # share of genuine scores >= threshold
    thresholds: np.ndarray  # inf, then every distinct score, descending
    genuine: int
    impostor: int


def roc(scores, same) -> Roc | None:
    """The ROC curve of pair ``scores`` (``same``: genuine pairs); None unless both
    genuine and impostor pairs are present."""
    from sklearn.metrics import roc_curve

    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    genuine = int(same.sum())
    if genuine == 0 or genuine == len(same):
        return None
    fpr, tpr, thresholds = roc_curve(same, scores, drop_intermediate=False)
    return Roc(fpr, tpr, thresholds, genuine, len(same) - genuine)


def auc(curve: Roc | None) -> float:
    """Area under the curve = P(genuine > impostor), ties counted half; NaN without a curve."""
    from sklearn.metrics import auc as area

    return float("nan") if curve is None else float(area(curve.fpr, curve.tpr))


def equal_error_rate(curve: Roc | None, *, strict: bool = False) -> tuple[float, float]:
    """(EER, threshold) where the false positive and false negative rates meet,
    interpolated linearly between the two points of the curve around the crossing.

    The threshold is interpolated with the same weight between the thresholds of those
    points, as ``>= t`` accepts (``strict=False``; the accept-none point counts as the
    highest score) or ``> t`` accepts (``strict=True``; the accept-all point counts as
    the lowest score). NaN without a curve.
    """
    if curve is None:
        return float("nan"), float("nan")
    fpr, tpr, thresholds = curve.fpr, curve.tpr, curve.thresholds
    # rises strictly from -1 (accept none) to +1 (accept all): every point adds at least
    # one score, which raises the false positive or lowers the false negative rate
    gap = fpr - (1.0 - tpr)
    k = int(np.searchsorted(gap, 0.0, side="left"))  # first point with gap >= 0; k >= 1
    g0, g1 = gap[k - 1], gap[k]
    weight = -g0 / (g1 - g0)
    eer = fpr[k - 1] + weight * (fpr[k] - fpr[k - 1])
    if strict:
        at = np.append(thresholds[1:], thresholds[-1])
    else:
        at = np.concatenate([thresholds[1:2], thresholds[1:]])
    threshold = at[k - 1] + weight * (at[k] - at[k - 1])
    return float(eer), float(threshold)


def rate_at_fpr(curve: Roc | None, fpr: float) -> tuple[float, float, float]:
    """(true positive rate, threshold, false positive rate reached) accepting scores
    strictly above the threshold, at the lowest threshold among impostor scores whose
    false positive rate is <= ``fpr`` (``-inf`` when every impostor may pass). NaN
    without a curve."""
    if curve is None:
        return float("nan"), float("nan"), float("nan")
    allowed = math.floor(fpr * curve.impostor)  # impostors that may score above it
    if allowed >= curve.impostor:
        return 1.0, float("-inf"), 1.0
    passed = np.rint(curve.fpr * curve.impostor)  # impostors >= thresholds[i], as counts
    # accepting "> thresholds[i]" is point i - 1: the lowest threshold letting at most
    # `allowed` impostors through is the first one at which more would score >= it
    i = int(np.searchsorted(passed, allowed, side="right"))
    return float(curve.tpr[i - 1]), float(curve.thresholds[i]), float(curve.fpr[i - 1])


__all__ = ["Roc", "auc", "equal_error_rate", "rate_at_fpr", "roc"]
