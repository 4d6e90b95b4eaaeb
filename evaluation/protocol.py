"""Verification pairs and the standard 10-fold protocol, with ROC figures.

Scores are cosine similarities of unit embeddings (higher = same person). The
accuracy follows insightface's verification code: squared L2 distance
d = 2 - 2 cos, thresholds 0..4 in steps of 0.01; for each of 10 folds the
threshold with the best accuracy on the other 9 folds is applied to the held-out
fold; we report mean and std over folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facefoundry import roc
from facefoundry.evaluation.lfw import image_name

N_FOLDS = 10
DISTANCE_THRESHOLDS = np.arange(0.0, 4.0, 0.01)


@dataclass(frozen=True)
class Pair:
    left: str
    right: str
    same: bool
    fold: int


def read_pairs(path: str | Path) -> list[Pair]:
    """Parse an LFW pairs file.

    ``pairs.txt`` (View 2) starts ``10 300``: ten sets, each 300 matched
    (``name n1 n2``) then 300 mismatched (``name1 n1 name2 n2``); a set is a fold.
    ``pairsDevTrain/DevTest.txt`` start with one count N: N matched then N
    mismatched; they are split into 10 folds of equal matched/mismatched shares.
    """
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    header, rows = lines[0], lines[1:]
    if len(header) == 2:
        sets, per_set = int(header[0]), int(header[1])
    elif len(header) == 1:
        sets, per_set = 1, int(header[0])
    else:
        raise ValueError(f"{path}: unexpected header {' '.join(header)!r}")
    if len(rows) != sets * per_set * 2:
        raise ValueError(f"{path}: expected {sets * per_set * 2} pairs, found {len(rows)}")
    pairs = []
    for index, row in enumerate(rows):
        set_index, within = divmod(index, 2 * per_set)
        same = within < per_set
        if sets == 1:
            fold = (within % per_set) * N_FOLDS // per_set
        else:
            fold = set_index
        if same and len(row) == 3:
            pairs.append(Pair(image_name(row[0], row[1]), image_name(row[0], row[2]), True, fold))
        elif not same and len(row) == 4:
            pairs.append(Pair(image_name(row[0], row[1]), image_name(row[2], row[3]), False, fold))
        else:
            raise ValueError(f"{path}: line {index + 2} {' '.join(row)!r} does not fit its section")
    return pairs


def _accuracy_at(distances: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((distances < threshold) == same))


def ten_fold_accuracy(
    scores: np.ndarray, same: np.ndarray, folds: np.ndarray
) -> tuple[float, float, list[float]]:
    """Mean, std and per-fold accuracy with thresholds chosen on the other folds."""
    scores, same, folds = np.asarray(scores, float), np.asarray(same, bool), np.asarray(folds)
    distances = 2.0 - 2.0 * scores
    accuracies = []
    fold_ids = np.unique(folds)
    for fold in fold_ids:
        train, test = folds != fold, folds == fold
        if len(fold_ids) == 1:  # a single fold: the threshold is fitted on it (optimistic)
            train = test
        predicted_same = distances[train][:, None] < DISTANCE_THRESHOLDS[None, :]
        train_acc = (predicted_same == same[train][:, None]).mean(0)
        best = DISTANCE_THRESHOLDS[int(np.argmax(train_acc))]
        accuracies.append(_accuracy_at(distances[test], same[test], best))
    return float(np.mean(accuracies)), float(np.std(accuracies)), accuracies


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve = P(genuine score > impostor score), ties count half;
    NaN without both classes."""
    return roc.auc(roc.roc(scores, same))


def _far_tar(curve: roc.Roc | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if curve is None:
        return np.empty(0), np.empty(0), np.empty(0)
    return curve.fpr[1:], curve.tpr[1:], curve.thresholds[1:]  # without the accept-none point


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false accept rate, true accept rate, threshold) for every distinct score, descending;
    a pair is accepted when its score is >= the threshold. Empty without both classes."""
    return _far_tar(roc.roc(scores, same))


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) where the false accept and false reject rates meet (interpolated);
    the threshold accepts scores >= it. NaN without both classes."""
    return roc.equal_error_rate(roc.roc(scores, same))


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float = 1e-3) -> tuple[float, float]:
    """(TAR, threshold) at the lowest threshold (an impostor score) whose false accept
    rate is <= ``far``: the most genuine pairs accepted within that rate.

    A pair is accepted when its score is strictly above the threshold.
    """
    return roc.rate_at_fpr(roc.roc(scores, same), far)[:2]


def verification_metrics(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """All protocol figures for one set of pair scores."""
    accuracy, std, per_fold = ten_fold_accuracy(scores, same, folds)
    scores, same = np.asarray(scores, float), np.asarray(same, bool)
    curve = roc.roc(scores, same)  # one curve for the AUC, EER, TAR@FAR and the plot
    eer, eer_threshold = roc.equal_error_rate(curve)
    tar, tar_threshold, _ = roc.rate_at_fpr(curve, 1e-3)
    far, tar_curve, _ = _far_tar(curve)
    keep = np.unique(np.linspace(0, len(far) - 1, min(len(far), 200)).astype(int))
    return {
        "accuracy": accuracy,
        "accuracy_std": std,
        "fold_accuracies": per_fold,
        "auc": roc.auc(curve),
        "eer": eer,
        "eer_threshold_cos": eer_threshold,
        "tar_at_far_1e-3": tar,
        "tar_threshold_cos": tar_threshold,
        "genuine_mean_cos": float(scores[same].mean()),
        "impostor_mean_cos": float(scores[~same].mean()),
        "pairs": int(len(scores)),
        "roc": {"far": far[keep].round(5).tolist(), "tar": tar_curve[keep].round(5).tolist()},
    }
