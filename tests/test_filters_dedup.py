"""Inter-class de-duplication and the exact blocked cosine search behind it."""

from __future__ import annotations

import numpy as np
import pytest

from facefoundry.filters import neighbours
from facefoundry.filters.dedup import conflict_pairs, greedy_dedup, largest_dedup, priority_order
from facefoundry.filters.neighbours import (
    choose_backend,
    faiss_available,
    nearest_in,
    nearest_other,
)
from tests.helpers.filters import at_cosine, plant_duplicates, random_unit, unit


def brute_force_greedy(vectors: np.ndarray, tau: float, priority=None):
    """The greedy rule spelled out with the full similarity matrix (small inputs only)."""
    similarity = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    kept: list[int] = []
    keep = np.zeros(len(vectors), dtype=bool)
    partner = np.full(len(vectors), -1)
    for row in priority_order(priority, len(vectors)):
        if kept and similarity[row, kept].max() > tau:
            partner[row] = kept[int(np.argmax(similarity[row, kept]))]
        else:
            kept.append(row)
            keep[row] = True
    return keep, partner


def test_planted_duplicates_found_exactly():
    tau = 0.4
    vectors, orig, dup = plant_duplicates(4000, 512, 40, (0.45, 0.95), seed=3)
    rng = np.random.default_rng(3)
    free = np.setdiff1d(np.arange(len(vectors)), np.concatenate([orig, dup]))
    near = rng.choice(free, size=40, replace=False)
    vectors[near[20:]] = at_cosine(vectors[near[:20]], 0.38, seed=99)  # near misses stay
    priority = np.zeros(len(vectors))
    priority[orig] = 1.0  # the originals are "more consistent": they must be kept
    # backend pinned: with faiss installed (the dev extra) "auto" would pick faiss
    result = greedy_dedup(vectors, tau, priority, block=512, backend="torch", screen="none")
    assert set(np.flatnonzero(~result.kept)) == set(dup)
    assert np.array_equal(result.partner[dup], orig)
    expected = np.einsum("ij,ij->i", vectors[dup], vectors[orig])
    assert np.allclose(result.partner_cos[dup], expected, atol=1e-5)
    assert (result.partner_cos[dup] > tau).all()
    assert result.kept[near].all()


@pytest.mark.parametrize("screen", ["none", "bf16"])
@pytest.mark.parametrize("block", [64, 300, 5000])
def test_blocked_greedy_equals_brute_force(screen, block):
    # clustered data: many pairs above tau inside and across blocks, chains of merges
    rng = np.random.default_rng(11)
    centres = random_unit(40, 16, seed=1)
    vectors = unit(centres[rng.integers(0, 40, 1500)] + 0.35 * rng.standard_normal((1500, 16)))
    priority = rng.random(1500)
    result = greedy_dedup(vectors, 0.8, priority, block=block, backend="torch", screen=screen)
    keep, partner = brute_force_greedy(vectors, 0.8, priority)
    assert 50 < result.n_merged < 1450
    assert np.array_equal(result.kept, keep)
    assert np.array_equal(result.partner, partner)
    kept = vectors[result.kept]
    inner = kept @ kept.T
    np.fill_diagonal(inner, -1)
    assert inner.max() <= 0.8 + 1e-6  # what remains is pairwise below tau


def test_more_consistent_identity_is_kept():
    a = random_unit(1, 32, seed=5)
    b = at_cosine(a, 0.9, seed=6)
    vectors = np.concatenate([a, b, random_unit(3, 32, seed=7)])
    for preferred, other in ((0, 1), (1, 0)):
        priority = np.zeros(5)
        priority[preferred] = 0.8
        priority[other] = 0.5
        result = greedy_dedup(vectors, 0.4, priority)
        assert result.kept[preferred] and not result.kept[other]
        assert result.partner[other] == preferred
        assert result.partner_cos[other] == pytest.approx(0.9, abs=1e-5)


def star(leaves: int = 3, dim: int = 64) -> np.ndarray:
    """A hub identity colliding with ``leaves`` orthogonal ones (cos 1/sqrt(k) each)."""
    spokes = np.eye(dim, dtype=np.float32)[:leaves]
    hub = unit(spokes.sum(axis=0, keepdims=True))
    return np.concatenate([hub, spokes])


def test_largest_keeps_the_leaves_where_greedy_keeps_the_hub():
    vectors = star(3)  # hub ~ each leaf at 0.58, leaves 0 apart
    priority = np.array([1.0, 0.5, 0.5, 0.5])  # the hub is the most consistent
    greedy = greedy_dedup(vectors, 0.5, priority, backend="torch")
    assert greedy.kept.tolist() == [True, False, False, False]
    largest = largest_dedup(vectors, 0.5, priority)
    assert largest.kept.tolist() == [False, True, True, True]
    expected = vectors[1:] @ vectors[0]
    assert largest.partner[0] == 1 + int(np.argmax(expected))
    assert largest.partner_cos[0] == pytest.approx(expected.max(), abs=1e-5)


@pytest.mark.parametrize("block", [64, 300, 5000])
def test_largest_keeps_a_separated_maximal_set_at_least_as_large_as_greedy(block):
    rng = np.random.default_rng(11)
    centres = random_unit(40, 16, seed=1)
    vectors = unit(centres[rng.integers(0, 40, 1500)] + 0.35 * rng.standard_normal((1500, 16)))
    priority = rng.random(1500)
    largest = largest_dedup(vectors, 0.8, priority, block=block)
    greedy = greedy_dedup(vectors, 0.8, priority, backend="torch")
    assert largest.kept.sum() > greedy.kept.sum()
    kept = vectors[largest.kept]
    inner = kept @ kept.T
    np.fill_diagonal(inner, -1)
    assert inner.max() <= 0.8 + 1e-6  # the rule holds among the survivors
    dropped = np.flatnonzero(~largest.kept)
    partners = largest.partner[dropped]
    assert largest.kept[partners].all()  # maximal: every dropped identity has a kept partner
    cosines = np.einsum("ij,ij->i", vectors[dropped], vectors[partners])
    assert np.allclose(largest.partner_cos[dropped], cosines, atol=1e-5)
    assert (cosines > 0.8).all()
    best = np.where(largest.kept[None, :], vectors[dropped] @ vectors.T, -np.inf).max(axis=1)
    assert np.allclose(cosines, best, atol=1e-5)  # the most similar kept identity
    reference = largest_dedup(vectors, 0.8, priority, block=64)
    assert np.array_equal(largest.kept, reference.kept)  # blocks change nothing


def test_conflict_pairs_match_brute_force():
    vectors = unit(random_unit(5, 8, seed=2)[np.arange(300) % 5] + 0.4 * random_unit(300, 8, 3))
    first, second, cosines = conflict_pairs(vectors, 0.7, block=64)
    similarity = vectors @ vectors.T
    i, j = np.nonzero(np.triu(similarity > 0.7, k=1))
    found = sorted(zip(first.tolist(), second.tolist(), strict=True))
    assert found == sorted(zip(i.tolist(), j.tolist(), strict=True))
    assert np.allclose(cosines, similarity[first, second], atol=1e-6)


def test_largest_without_collisions_keeps_everyone():
    vectors = random_unit(50, 256, seed=4)  # random 256-d: |cos| < 0.35
    result = largest_dedup(vectors, 0.5)
    assert result.kept.all() and (result.partner == -1).all()


def test_nan_priority_goes_last_and_ties_keep_row_order():
    order = priority_order(np.array([0.5, np.nan, 0.5, 0.9]), 4)
    assert order.tolist() == [3, 0, 2, 1]


def test_dedup_refuses_nan_centroids():
    vectors = random_unit(10, 8)
    vectors[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        greedy_dedup(vectors, 0.4)


def test_nearest_other_and_nearest_in_match_brute_force():
    vectors = random_unit(1200, 24, seed=2)
    vectors[7] = vectors[500]  # an exact duplicate pair
    ids, cos = nearest_other(vectors, block=256, backend="torch")
    full = vectors @ vectors.T
    np.fill_diagonal(full, -np.inf)
    assert np.allclose(cos, full.max(axis=1), atol=1e-5)
    assert ids[7] == 500 and ids[500] == 7
    assert np.mean(ids == full.argmax(axis=1)) > 0.99  # ties aside
    queries, base = vectors[:100], vectors[100:]
    where, best = nearest_in(queries, base, block=37, backend="torch")
    assert np.allclose(best, (queries @ base.T).max(axis=1), atol=1e-5)
    assert where[7] == 400


def test_faiss_is_optional(monkeypatch):
    # runs whether or not faiss is installed: the import check is what decides
    monkeypatch.setattr(neighbours, "faiss_available", lambda: False)
    assert choose_backend("auto") == "torch"
    with pytest.raises(ImportError, match="faiss"):
        choose_backend("faiss")
    with pytest.raises(ImportError, match="faiss"):
        greedy_dedup(random_unit(10, 8), 0.4, backend="faiss")


def test_auto_backend_is_faiss_exactly_when_installed():
    assert choose_backend("auto") == ("faiss" if faiss_available() else "torch")


needs_faiss = pytest.mark.skipif(
    not faiss_available(), reason="faiss is not installed (pip install -e '.[dev]')"
)


@needs_faiss
@pytest.mark.parametrize("screen", ["none", "bf16"])
def test_faiss_backend_merges_the_planted_duplicates_like_the_exact_path(screen):
    # 512-d like real embeddings: the only pairs above tau are the planted ones, plus
    # near misses just below tau that must stay; priorities keep the originals
    tau = 0.4
    vectors, orig, dup = plant_duplicates(3000, 512, 60, (0.41, 0.95), seed=9)
    rng = np.random.default_rng(9)
    free = np.setdiff1d(np.arange(len(vectors)), np.concatenate([orig, dup]))
    near = rng.choice(free, size=60, replace=False)
    vectors[near[30:]] = at_cosine(vectors[near[:30]], rng.uniform(0.385, 0.395, 30), seed=99)
    priority = np.zeros(len(vectors))
    priority[orig] = 1.0
    exact = greedy_dedup(vectors, tau, priority, block=500, backend="torch", screen=screen)
    fast = greedy_dedup(vectors, tau, priority, block=500, backend="faiss")
    assert set(np.flatnonzero(~exact.kept)) == set(dup.tolist())  # the reference is right
    assert np.array_equal(fast.kept, exact.kept)  # same merges
    assert np.array_equal(fast.partner, exact.partner)  # same partners
    assert np.array_equal(fast.partner[dup], orig)
    assert np.allclose(fast.partner_cos[dup], exact.partner_cos[dup], atol=1e-5)
    assert fast.kept[near].all()  # the near misses below tau stay


@needs_faiss
def test_faiss_backend_agrees_with_torch_on_chains_of_merges():
    # clustered data: hundreds of merges inside and across blocks, partners chosen among many
    rng = np.random.default_rng(11)
    centres = random_unit(40, 16, seed=1)
    vectors = unit(centres[rng.integers(0, 40, 1500)] + 0.35 * rng.standard_normal((1500, 16)))
    priority = rng.random(1500)
    torch_result = greedy_dedup(vectors, 0.8, priority, block=300, backend="torch")
    faiss_result = greedy_dedup(vectors, 0.8, priority, block=300, backend="faiss")
    keep, partner = brute_force_greedy(vectors, 0.8, priority)
    assert 50 < faiss_result.n_merged < 1450
    assert np.array_equal(faiss_result.kept, keep)
    assert np.array_equal(faiss_result.kept, torch_result.kept)
    assert np.array_equal(faiss_result.partner, torch_result.partner)
    assert np.array_equal(faiss_result.partner, partner)


@needs_faiss
def test_faiss_nearest_search_agrees_with_torch():
    vectors = random_unit(1200, 24, seed=2)
    vectors[7] = vectors[500]  # an exact duplicate pair: each must find the other, not itself
    ids_f, cos_f = nearest_other(vectors, block=256, backend="faiss")
    ids_t, cos_t = nearest_other(vectors, block=256, backend="torch")
    assert ids_f[7] == 500 and ids_f[500] == 7
    assert np.allclose(cos_f, cos_t, atol=1e-5)
    assert np.mean(ids_f == ids_t) > 0.99  # ties aside
    queries, base = vectors[:100], vectors[100:]
    where_f, best_f = nearest_in(queries, base, block=37, backend="faiss")
    where_t, best_t = nearest_in(queries, base, block=37, backend="torch")
    assert np.allclose(best_f, best_t, atol=1e-5)
    assert np.array_equal(where_f, where_t)
    assert where_f[7] == 400
