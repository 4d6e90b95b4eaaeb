"""filters: per-sample decisions, identity de-duplication, privacy, and dataset-quality metrics.

Stage border: ``run_filter(embed_dir, out_dir, settings) -> out_dir`` writes
``decisions.parquet`` (one row per candidate, rejects with a reason),
``identities.parquet`` and ``metrics.json`` (funnel, before/after metrics).
The array-level pieces it is built from are public too. Scores are cosine
similarities of unit embeddings unless a name says distance. See docs/filters.md.
"""

if __name__ != "facefoundry.filters":  # one import name, never two copies of a module
    raise ImportError("this package is installed as facefoundry.filters: import that")

from facefoundry.filters.calibrate import (
    Calibration,
    CalibrationError,
    ResolvedThreshold,
    calibrate_embeddings,
    calibrate_images,
    find_calibration,
    resolve_threshold,
    save_calibration,
    threshold_at_fmr,
)
from facefoundry.filters.decide import FilterResult, IdentityDecisions, Rules, apply_filters
from facefoundry.filters.dedup import DedupResult, greedy_dedup
from facefoundry.filters.distributed import Partition, embed_partitions, read_parts_distributed
from facefoundry.filters.funnel import ALL_REASONS, IDENTITY_REASONS, SAMPLE_REASONS, build_funnel
from facefoundry.filters.groups import centroid_cosines, centroids, valid_rows
from facefoundry.filters.metrics import consistency as dcface_consistency
from facefoundry.filters.metrics import (
    dataset_metrics,
    decidability,
    equal_error_rate,
    fisher_discriminant_ratio,
    fnmr_at_fmr,
)
from facefoundry.filters.metrics import uniqueness as dcface_uniqueness
from facefoundry.filters.neighbours import faiss_available, nearest_in, nearest_other
from facefoundry.filters.pairs import genuine_pairs, impostor_pairs, pair_scores
from facefoundry.filters.privacy import (
    ReferenceSet,
    load_reference,
    privacy_check,
    reference_from_arrays,
)
from facefoundry.filters.sample_rules import face_reasons, quantile_trim
from facefoundry.filters.samples import SampleTable, embedding_column, read_samples
from facefoundry.filters.settings import FilterSettings, Threshold
from facefoundry.filters.stage import compute_metrics, resolve_rules, run_filter

__all__ = [
    "ALL_REASONS",
    "IDENTITY_REASONS",
    "SAMPLE_REASONS",
    "Calibration",
    "CalibrationError",
    "DedupResult",
    "FilterResult",
    "FilterSettings",
    "IdentityDecisions",
    "Partition",
    "ReferenceSet",
    "ResolvedThreshold",
    "Rules",
    "SampleTable",
    "Threshold",
    "apply_filters",
    "build_funnel",
    "calibrate_embeddings",
    "calibrate_images",
    "centroid_cosines",
    "centroids",
    "compute_metrics",
    "dataset_metrics",
    "dcface_consistency",
    "dcface_uniqueness",
    "decidability",
    "embed_partitions",
    "embedding_column",
    "equal_error_rate",
    "face_reasons",
    "faiss_available",
    "find_calibration",
    "fisher_discriminant_ratio",
    "fnmr_at_fmr",
    "genuine_pairs",
    "greedy_dedup",
    "impostor_pairs",
    "load_reference",
    "nearest_in",
    "nearest_other",
    "pair_scores",
    "privacy_check",
    "quantile_trim",
    "read_parts_distributed",
    "read_samples",
    "reference_from_arrays",
    "resolve_rules",
    "resolve_threshold",
    "run_filter",
    "save_calibration",
    "threshold_at_fmr",
    "valid_rows",
]
