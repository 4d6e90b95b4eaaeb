"""filters: per-sample decisions, identity de-duplication, privacy, and dataset-quality metrics.

Stage border: ``run_filter(embed_dir, out_dir, settings) -> out_dir`` writes
``decisions.parquet`` (one row per candidate, rejects with a reason),
``identities.parquet`` and ``metrics.json`` (funnel, before/after metrics).
The array-level pieces it is built from are public too. Scores are cosine
similarities of unit embeddings unless a name says distance. See docs/filters.md.
"""

if __name__ != "facefoundry.filters":  # one import name, never two copies of a module
    raise ImportError("this package is installed as facefoundry.filters: import that")

from facefoundry._lazy import lazy_exports

_EXPORTS = {
    "Calibration": "calibrate",
    "CalibrationError": "calibrate",
    "ResolvedThreshold": "calibrate",
    "calibrate_embeddings": "calibrate",
    "calibrate_images": "calibrate",
    "find_calibration": "calibrate",
    "resolve_threshold": "calibrate",
    "save_calibration": "calibrate",
    "threshold_at_fmr": "calibrate",
    "FilterResult": "decide",
    "IdentityDecisions": "decide",
    "Rules": "decide",
    "apply_filters": "decide",
    "DedupResult": "dedup",
    "greedy_dedup": "dedup",
    "largest_dedup": "dedup",
    "conflict_pairs": "dedup",
    "read_parts_distributed": "samples",
    "ALL_REASONS": "funnel",
    "IDENTITY_REASONS": "funnel",
    "SAMPLE_REASONS": "funnel",
    "build_funnel": "funnel",
    "centroid_cosines": "groups",
    "centroids": "groups",
    "valid_rows": "groups",
    "dcface_consistency": "metrics:consistency",
    "dataset_metrics": "metrics",
    "decidability": "metrics",
    "equal_error_rate": "metrics",
    "fisher_discriminant_ratio": "metrics",
    "fnmr_at_fmr": "metrics",
    "dcface_uniqueness": "metrics:uniqueness",
    "faiss_available": "neighbours",
    "nearest_in": "neighbours",
    "nearest_other": "neighbours",
    "genuine_pairs": "pairs",
    "impostor_pairs": "pairs",
    "pair_scores": "pairs",
    "ReferenceSet": "privacy",
    "load_reference": "privacy",
    "privacy_check": "privacy",
    "reference_from_arrays": "privacy",
    "training_reference": "privacy",
    "face_reasons": "sample_rules",
    "quantile_trim": "sample_rules",
    "SampleTable": "samples",
    "embedding_column": "samples",
    "read_samples": "samples",
    "FilterSettings": "settings",
    "Threshold": "settings",
    "compute_metrics": "stage",
    "resolve_rules": "stage",
    "run_filter": "stage",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
