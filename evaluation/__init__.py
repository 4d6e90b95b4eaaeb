"""evaluation: the LFW (View 2, DevTest) and insightface .bin verification protocol that
judges recognizers and embedders; training them lives in recognition/."""

if __name__ != "facefoundry.evaluation":  # one import name, never two copies of a module
    raise ImportError("this package is installed as facefoundry.evaluation: import that")

from facefoundry._lazy import lazy_exports

_EXPORTS = {
    "Lfw": "lfw",
    "LfwNotFoundError": "lfw",
    "data_dir": "lfw",
    "image_name": "lfw",
    "Pair": "protocol",
    "equal_error_rate": "protocol",
    "read_pairs": "protocol",
    "roc_auc": "protocol",
    "tar_at_far": "protocol",
    "ten_fold_accuracy": "protocol",
    "verification_metrics": "protocol",
    "evaluate_bin": "verify",
    "evaluate_lfw": "verify",
    "evaluate_lfw_sets": "verify",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
