"""Sample rules: face outcomes, unusable vectors, intra-class consistency, empty identities."""

from __future__ import annotations

import numpy as np
import pytest

from facefoundry.filters.decide import Rules, apply_filters
from facefoundry.filters.funnel import (
    BAD_EMBEDDING,
    BAD_IMAGE,
    LOW_CENTROID_COS,
    LOW_DET_SCORE,
    MULTIPLE_FACES,
    NO_FACE,
    NO_SAMPLES_LEFT,
    QUANTILE_TRIM,
    TOO_FEW_SAMPLES,
    check_funnel,
)
from facefoundry.filters.groups import centroids, valid_rows
from facefoundry.filters.sample_rules import face_reasons, pair_consistency, quantile_trim
from facefoundry.filters.samples import SampleTable
from tests.helpers.filters import at_cosine, identity_samples, random_unit


def test_quantile_trim_drops_the_lowest_share_of_each_identity():
    sizes = [10, 50, 9, 1, 20]
    groups = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(0)
    cos = rng.uniform(0.2, 0.9, len(groups)).astype(np.float32)
    alive = np.ones(len(groups), dtype=bool)
    alive[groups == 4] = np.arange(20) % 2 == 0  # 10 alive of 20: the dead ones never count
    trimmed = quantile_trim(cos, groups, len(sizes), alive, 0.1)
    expected_drop = {0: 1, 1: 5, 2: 0, 3: 0, 4: 1}
    for group, count in expected_drop.items():
        rows = np.flatnonzero((groups == group) & alive)
        assert trimmed[rows].sum() == count
        if count:
            lowest = rows[np.argsort(cos[rows])[:count]]
            assert set(np.flatnonzero(trimmed & (groups == group))) == set(lowest)
    assert not trimmed[~alive].any()
    assert not quantile_trim(cos, groups, len(sizes), alive, 0.0).any()


def test_unusable_vectors_and_face_outcomes_get_reasons():
    vectors = random_unit(9, 16)
    vectors[1] = np.nan
    vectors[2] = 0.0
    vectors[3, 4] = np.inf
    status = np.array(
        ["ok", "ok", "ok", "ok", "no_face", "bad_image", "centre_fallback", "ok", "ok"]
    )
    n_faces = np.array([1, 1, 1, 1, 0, 0, 0, 3, 1])
    det = np.array([0.9, 0.9, 0.9, 0.9, np.nan, np.nan, np.nan, 0.9, 0.5])
    reasons = face_reasons(status, vectors, n_faces, det, max_faces=1, min_det_score=0.7)
    assert reasons.tolist() == [
        None,
        BAD_EMBEDDING,
        BAD_EMBEDDING,
        BAD_EMBEDDING,
        NO_FACE,
        BAD_IMAGE,
        NO_FACE,
        MULTIPLE_FACES,
        LOW_DET_SCORE,
    ]
    assert valid_rows(vectors).tolist() == [True, False, False, False] + [True] * 5


def test_missing_det_score_fails_only_when_a_minimum_is_set():
    vectors = random_unit(2, 8)
    det = np.array([np.nan, 0.9])
    strict = face_reasons(np.array(["ok", "ok"]), vectors, np.ones(2), det, min_det_score=0.5)
    lenient = face_reasons(np.array(["ok", "ok"]), vectors, np.ones(2), det, min_det_score=0.0)
    assert strict.tolist() == [LOW_DET_SCORE, None]
    assert lenient.tolist() == [None, None]


def test_centroids_ignore_masked_nan_rows():
    vectors = random_unit(6, 8)
    vectors[2] = np.nan
    groups = np.array([0, 0, 0, 1, 1, 2])
    mask = valid_rows(vectors) & (np.arange(6) != 5)
    centres, counts = centroids(vectors, groups, 3, mask)
    assert counts.tolist() == [2, 2, 0]
    assert np.isfinite(centres).all()
    expected = vectors[0] + vectors[1]
    assert np.allclose(centres[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert not centres[2].any()  # an empty identity has a zero centroid, not NaN


def test_pair_consistency_is_the_mean_pairwise_cosine():
    vectors, groups = identity_samples(random_unit(3, 16, seed=1), [4, 2, 1], 0.2, seed=2)
    alive = np.ones(len(vectors), dtype=bool)
    got = pair_consistency(vectors, groups, 3, alive)
    for group in (0, 1):
        rows = vectors[groups == group]
        inner = rows @ rows.T
        n = len(rows)
        assert got[group] == pytest.approx((inner.sum() - n) / (n * (n - 1)), abs=1e-5)
    assert np.isnan(got[2])


def _table(vectors, groups, **columns):
    keys = [f"k{i:03d}" for i in range(len(vectors))]
    return SampleTable(keys=keys, identities=groups, embeddings={"sface": vectors}, **columns)


def test_absolute_then_quantile_consistency_rules():
    centre = random_unit(1, 64, seed=3)
    good = at_cosine(np.repeat(centre, 20, axis=0), np.linspace(0.80, 0.99, 20), seed=4)
    outlier = at_cosine(centre, -0.5, seed=5)  # points away from its identity
    vectors = np.concatenate([good, outlier])
    result = apply_filters(
        _table(vectors, np.zeros(21, dtype=int)),
        Rules(min_centroid_cos=0.5, centroid_quantile=0.1),
    )
    assert result.reason[20] == LOW_CENTROID_COS
    trimmed = np.flatnonzero(result.reason == QUANTILE_TRIM)
    assert len(trimmed) == 2  # floor(0.1 * 20 survivors)
    survivors = result.centroid_cos[:20]
    assert set(trimmed) == set(np.argsort(survivors)[:2])
    assert result.kept.sum() == 18
    check_funnel(result.funnel)


def test_identity_left_empty_is_handled():
    vectors, groups = identity_samples(random_unit(3, 32, seed=6), 4, 0.1, seed=7)
    status = np.array(["ok"] * len(vectors), dtype=object)
    status[groups == 1] = "no_face"  # identity 1 loses every sample to the face rules
    vectors[groups == 1] = np.nan
    vectors[np.flatnonzero(groups == 2)[:3]] = 0.0  # identity 2 keeps 1 sample: below k
    result = apply_filters(
        _table(vectors, groups, status=status),
        Rules(min_samples=2, tau_inter=0.4, centroid_quantile=0.1),
    )
    ids = result.identities
    assert ids.reason.tolist() == [None, NO_SAMPLES_LEFT, TOO_FEW_SAMPLES]
    assert ids.n_kept.tolist() == [4, 0, 0]
    assert result.kept.tolist() == [True] * 4 + [False] * 8
    assert result.reason[groups == 2].tolist() == [BAD_EMBEDDING] * 3 + [TOO_FEW_SAMPLES]
    assert np.isnan(result.centroid_cos[groups == 1]).all()
    funnel = result.funnel
    check_funnel(funnel)
    steps = {s["rule"]: s["removed"] for s in funnel["identities"]["steps"]}
    assert steps[NO_SAMPLES_LEFT] == 1 and steps[TOO_FEW_SAMPLES] == 1
    assert funnel["samples"]["kept"] == 4 and funnel["identities"]["kept"] == 1
