"""evaluation: LFW and .bin verification protocol (later: FR training and reports)."""

if __name__ != "facefoundry.evaluation":  # one import name, never two copies of a module
    raise ImportError("this package is installed as facefoundry.evaluation: import that")

from facefoundry.evaluation.lfw import Lfw, LfwNotFoundError, data_dir, image_name
from facefoundry.evaluation.protocol import (
    Pair,
    equal_error_rate,
    read_pairs,
    roc_auc,
    tar_at_far,
    ten_fold_accuracy,
    verification_metrics,
)
from facefoundry.evaluation.verify import evaluate_bin, evaluate_lfw

__all__ = [
    "Lfw",
    "LfwNotFoundError",
    "Pair",
    "data_dir",
    "equal_error_rate",
    "evaluate_bin",
    "evaluate_lfw",
    "image_name",
    "read_pairs",
    "roc_auc",
    "tar_at_far",
    "ten_fold_accuracy",
    "verification_metrics",
]
