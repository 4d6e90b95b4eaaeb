"""Realisation map: predict where a generator's faces land for a condition, before drawing.

Measured on the default model (BENCHMARKS.md, "Identity capacity, session 9"): a
generated identity's SFace centroid has cosine ~0.40 with the condition it was asked
for, but a linear map fitted on a few hundred (condition, centroid) pairs predicts the
centroid at cosine ~0.74, and the predicted pair cosines follow the drawn ones
(correlation 0.73, against 0.40 for the conditions themselves). Identities can then be
chosen apart in what the model draws rather than in what it is asked: draw a pool of
candidate conditions, predict each one's centroid, keep a subset whose predictions are
separated (``select_separated``). No image is generated for it; the filter still decides.

The map is fitted once per model (``facefoundry generator fit-realisation``) on
identities drawn with a calibration seed no recipe uses, and stored in the model folder
as ``realisation_map.npz`` (not a weights file: adding it does not change the model's
checksum, so earlier runs stay valid).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facefoundry.errors import UsageError

logger = logging.getLogger(__name__)

REALISATION_FILE = "realisation_map.npz"
CALIBRATION_SEED = 7919  # identities drawn for fitting; no shipped recipe uses this seed


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _gelu(values: np.ndarray) -> np.ndarray:
    """GELU, tanh form (the one ``fit_residual`` trains with)."""
    return 0.5 * values * (1.0 + np.tanh(0.7978845608028654 * (values + 0.044715 * values**3)))


@dataclass
class RealisationMap:
    """centroid ~ centroid_mean + (condition - condition_mean) @ weights (ridge fit), plus,
    when ``layers`` is set, a small MLP of the unit condition (GELU between ``(weight,
    bias)`` layers) added before normalising: the residual a linear map cannot follow."""

    condition_mean: np.ndarray
    centroid_mean: np.ndarray
    weights: np.ndarray
    record: dict = field(default_factory=dict)  # how it was fitted, held-out figures
    layers: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    def predict(self, conditions: np.ndarray) -> np.ndarray:
        """Unit predicted centroids, one row per condition."""
        conditions = _unit(conditions)
        if conditions.shape[1] != self.dim:
            raise ValueError(f"conditions have {conditions.shape[1]} dims, the map {self.dim}")
        linear = self.centroid_mean + (conditions - self.condition_mean) @ self.weights
        hidden = conditions
        for number, (weight, bias) in enumerate(self.layers):
            hidden = hidden @ weight + bias
            if number < len(self.layers) - 1:
                hidden = _gelu(hidden)
        return _unit(linear + hidden if self.layers else linear)

    def save(self, path: str | Path) -> Path:
        from facefoundry.atomic import atomic_open

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as handle:
            np.savez(
                handle,
                condition_mean=self.condition_mean,
                centroid_mean=self.centroid_mean,
                weights=self.weights,
                record=np.array(json.dumps(self.record, sort_keys=True)),
                # the MLP's layers in float32: a 1024-wide map is 5 MB instead of 10
                **{f"layer_{i}_weight": np.float32(w) for i, (w, _) in enumerate(self.layers)},
                **{f"layer_{i}_bias": np.float32(b) for i, (_, b) in enumerate(self.layers)},
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RealisationMap:
        with np.load(path) as data:
            layers = []
            while f"layer_{len(layers)}_weight" in data:
                number = len(layers)
                weight, bias = data[f"layer_{number}_weight"], data[f"layer_{number}_bias"]
                layers.append((weight.astype(np.float64), bias.astype(np.float64)))
            return cls(
                data["condition_mean"],
                data["centroid_mean"],
                data["weights"],
                json.loads(str(data["record"])),
                layers,
            )


def fit_realisation_map(
    conditions: np.ndarray, centroids: np.ndarray, ridge: float = 1.0, record: dict | None = None
) -> RealisationMap:
    """Ridge regression of unit centroids on unit conditions (both centred)."""
    conditions, centroids = _unit(conditions), _unit(centroids)
    if len(conditions) != len(centroids) or len(conditions) < 2:
        raise ValueError("need matching condition and centroid rows, at least 2")
    condition_mean, centroid_mean = conditions.mean(axis=0), centroids.mean(axis=0)
    centred = conditions - condition_mean
    gram = centred.T @ centred + ridge * np.eye(centred.shape[1])
    weights = np.linalg.solve(gram, centred.T @ (centroids - centroid_mean))
    return RealisationMap(condition_mean, centroid_mean, weights, dict(record or {}))


def _pair_correlation(first: np.ndarray, second: np.ndarray) -> float:
    upper = np.triu_indices(len(first), k=1)
    return float(np.corrcoef((first @ first.T)[upper], (second @ second.T)[upper])[0, 1])


def held_out_figures(
    conditions: np.ndarray, centroids: np.ndarray, ridge: float = 1.0, folds: int = 5
) -> dict:
    """How well the map predicts identities it was not fitted on (k-fold): mean cosine of
    prediction vs drawn centroid, and how well predicted pair cosines follow the drawn
    ones, each beside the same figure for the raw conditions."""
    conditions, centroids = _unit(conditions), _unit(centroids)
    folds = min(folds, len(conditions) // 3)  # each fold needs pairs to correlate
    if folds < 2:
        return {}
    order = np.random.default_rng(0).permutation(len(conditions))
    rows = {"predicted_cos": [], "condition_cos": [], "predicted_pairs": [], "condition_pairs": []}
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        predicted = fit_realisation_map(conditions[train], centroids[train], ridge).predict(
            conditions[fold]
        )
        rows["predicted_cos"].append(np.sum(predicted * centroids[fold], axis=1).mean())
        rows["condition_cos"].append(np.sum(conditions[fold] * centroids[fold], axis=1).mean())
        rows["predicted_pairs"].append(_pair_correlation(predicted, centroids[fold]))
        rows["condition_pairs"].append(_pair_correlation(conditions[fold], centroids[fold]))
    return {key: round(float(np.mean(values)), 4) for key, values in rows.items()}


def _greedy(predicted: np.ndarray, n: int, threshold: float) -> list[int]:
    nearest = np.full(len(predicted), -np.inf)  # each candidate's cosine to the closest kept
    kept: list[int] = []
    for row in range(len(predicted)):
        if nearest[row] <= threshold:
            kept.append(row)
            if len(kept) == n:
                break
            np.maximum(nearest, predicted @ predicted[row], out=nearest)
    return kept


def select_separated(predicted: np.ndarray, n: int, resolution: float = 0.005) -> tuple:
    """(rows, threshold): ``n`` rows of ``predicted`` (unit vectors), kept greedily in
    candidate order when their cosine to every kept row is <= threshold, with the
    smallest threshold (to ``resolution``) that keeps ``n``."""
    if not 1 <= n <= len(predicted):
        raise ValueError(f"cannot select {n} of {len(predicted)} candidates")
    low, high = -1.0, 1.01  # above 1 every candidate is kept
    while high - low > resolution:
        middle = (low + high) / 2
        if len(_greedy(predicted, n, middle)) == n:
            high = middle
        else:
            low = middle
    return np.array(_greedy(predicted, n, high), dtype=np.int64), high


def select_largest(vectors: np.ndarray, n: int, resolution: float = 0.005) -> tuple:
    """(rows, threshold): ``n`` rows of ``vectors`` (unit) pairwise at cosine <=
    threshold, with the smallest threshold (to ``resolution``) at which the largest set
    the rule allows (``filters.dedup.largest_dedup``: fewest collisions first) holds ``n``;
    of that set the first ``n`` in candidate order.

    Why: ``select_separated`` walks candidates in order, so one candidate near many
    others costs all of them and the threshold must rise until ``n`` fit. On 3,000 probed
    candidates at 1,000 wanted the largest set reaches them at cosine 0.409 against
    0.421 (BENCHMARKS session 48), nearer what the filter's 8-image centroids allow."""
    from facefoundry.filters.dedup import largest_dedup

    rows, high = select_separated(vectors, n, resolution)  # an upper bound that holds n

    def largest(threshold: float) -> np.ndarray:
        return np.flatnonzero(largest_dedup(vectors, threshold).kept)

    kept = largest(high)
    if len(kept) < n:  # the heuristic is not exact: keep the greedy pass's answer
        return rows, high
    low = high - 0.25  # conflict lists grow fast below: bracket near the greedy answer
    while low > -1.0 and len(found := largest(low)) >= n:
        high, kept, low = low, found, max(low - 0.25, -1.0)
    while high - low > resolution:
        middle = (low + high) / 2
        found = largest(middle)
        if len(found) >= n:
            high, kept = middle, found
        else:
            low = middle
    return kept[:n].astype(np.int64), high


def load_realisation_map(path: str | Path | None) -> RealisationMap:
    if path is None or not Path(path).is_file():
        raise UsageError(
            f"identities.select 'predicted' needs the model folder's {REALISATION_FILE}"
            f"{f' ({path})' if path else ''}: fit one with `facefoundry generator "
            "fit-realisation MODEL`"
        )
    return RealisationMap.load(path)


def predicted_subset(table, n: int, path: str | Path | None):
    """The ``n`` identities of ``table`` (an ``IdentityTable`` pool) whose predicted
    centroids are separated; candidate ids and seeds kept, selection order."""
    from facefoundry.generators.chunks import folder_checksum
    from facefoundry.generators.identities import IdentityTable

    realisation = load_realisation_map(path)
    fitted_on = realisation.record.get("model_checksum")
    if fitted_on and fitted_on != folder_checksum(Path(path).parent):
        logger.warning(
            "%s was fitted on other weights than its folder's: refit it with "
            "`facefoundry generator fit-realisation`",
            path,
        )
    rows, _ = select_separated(realisation.predict(table.embeddings), n)
    return IdentityTable(
        table.ids[rows],
        table.embeddings[rows],
        table.seeds[rows],
        f"{table.method}+predicted",
        table.embedder,
    )
