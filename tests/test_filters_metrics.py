"""Metric formulas against hand computations, and the seeded pair samplers."""

from __future__ import annotations

import numpy as np
import pytest

from facefoundry.evaluation.protocol import equal_error_rate as protocol_eer
from facefoundry.evaluation.protocol import tar_at_far
from facefoundry.filters.funnel import build_funnel, check_funnel
from facefoundry.filters.metrics import (
    consistency,
    dataset_metrics,
    decidability,
    equal_error_rate,
    fisher_discriminant_ratio,
    fnmr_at_fmr,
    images_per_identity,
    uniqueness,
)
from facefoundry.filters.pairs import (
    count_genuine_pairs,
    genuine_pairs,
    impostor_pairs,
    pair_scores,
)
from tests.helpers.filters import identity_samples, random_unit

GENUINE = np.array([0.6, 0.8, 1.0])
IMPOSTOR = np.array([0.0, 0.2])


def test_fdr_and_d_prime_by_hand():
    # mu_g = 0.8, var_g = 0.08 / 3; mu_i = 0.1, var_i = 0.01 (population variances)
    spread = 0.08 / 3 + 0.01
    assert fisher_discriminant_ratio(GENUINE, IMPOSTOR) == pytest.approx(0.49 / spread)
    assert decidability(GENUINE, IMPOSTOR) == pytest.approx(0.7 / np.sqrt(spread / 2))
    assert decidability(IMPOSTOR, GENUINE) == pytest.approx(decidability(GENUINE, IMPOSTOR))


def test_eer_by_hand_and_at_the_extremes():
    genuine = np.array([0.3, 0.5, 0.7, 0.9])
    impostor = np.array([0.1, 0.2, 0.4, 0.6])
    eer, threshold = equal_error_rate(genuine, impostor)
    assert eer == pytest.approx(0.25)  # at t in [0.4, 0.5): one impostor in, one genuine out
    assert 0.3 <= threshold <= 0.5
    assert equal_error_rate(np.array([0.8, 0.9]), np.array([0.1, 0.2]))[0] == 0.0
    same = np.random.default_rng(0).normal(0, 1, 20000)
    assert equal_error_rate(same[:10000], same[10000:])[0] == pytest.approx(0.5, abs=0.02)


def test_eer_and_fnmr_by_hand_with_ties():
    genuine = np.array([0.9, 0.7, 0.7, 0.4])
    impostor = np.array([0.7, 0.7, 0.2, 0.2])  # ties across and within the classes
    # matches are scores > t. FNMR - FMR: -1/4 at t = 0.4 (FMR 1/2, FNMR 1/4), +3/4 at
    # t = 0.7 (FMR 0, FNMR 3/4); they meet 1/4 of the way: EER 3/8 at t = 0.475
    eer, threshold = equal_error_rate(genuine, impostor)
    assert eer == pytest.approx(0.375) and threshold == pytest.approx(0.475)
    # FMR <= 1/4 allows one impostor above t; the two at 0.7 pass together, so t = 0.7
    figure = fnmr_at_fmr(genuine, impostor, 0.25)
    assert figure["threshold"] == pytest.approx(0.7) and figure["fmr"] == 0.0
    assert figure["fnmr"] == pytest.approx(0.75) and figure["resolved"]
    figure = fnmr_at_fmr(genuine, impostor, 0.5)
    assert figure["threshold"] == pytest.approx(0.2) and figure["fmr"] == pytest.approx(0.5)
    assert figure["fnmr"] == 0.0
    figure = fnmr_at_fmr(genuine, impostor, 1.0)  # every impostor may pass
    assert figure == {"fnmr": 0.0, "threshold": float("-inf"), "fmr": 1.0, "resolved": True}
    # an impostor tied with the top genuine scores: FMR 1/4 and FNMR 0 at t = 0.3
    eer, threshold = equal_error_rate(np.array([1.0, 1.0]), np.array([1.0, 0.3, 0.2, 0.1]))
    assert eer == pytest.approx(0.2) and threshold == pytest.approx(0.44)
    assert np.isnan(equal_error_rate(genuine, impostor[:0])[0])
    assert fnmr_at_fmr(genuine[:0], impostor, 0.1)["fnmr"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_and_fnmr_agree_with_the_evaluation_protocol(seed):
    rng = np.random.default_rng(seed)
    genuine, impostor = rng.normal(0.6, 0.12, 800), rng.normal(0.1, 0.1, 5000)
    if seed == 2:  # ties
        genuine, impostor = np.round(genuine, 2), np.round(impostor, 2)
    scores = np.concatenate([genuine, impostor])
    same = np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]
    assert equal_error_rate(genuine, impostor)[0] == pytest.approx(protocol_eer(scores, same)[0])
    for fmr in (1e-2, 1e-3):
        tar, threshold = tar_at_far(scores, same, fmr)
        mine = fnmr_at_fmr(genuine, impostor, fmr)
        assert mine["fnmr"] == pytest.approx(1.0 - tar)
        assert mine["threshold"] == pytest.approx(threshold)
        assert mine["fmr"] <= fmr


def test_fnmr_at_fmr_by_hand():
    impostor = np.arange(1000) / 1000.0
    genuine = np.array([0.95, 0.989, 0.99, 1.0])
    figure = fnmr_at_fmr(genuine, impostor, 1e-2)
    assert figure["threshold"] == pytest.approx(0.989)
    assert figure["fmr"] == pytest.approx(0.01)
    assert figure["fnmr"] == pytest.approx(0.5)  # 0.95 and 0.989 are not above 0.989
    assert figure["resolved"]
    assert not fnmr_at_fmr(genuine, impostor[:50], 1e-3)["resolved"]


def test_dcface_uniqueness_and_consistency_by_hand():
    # r = 0.3: unique when the nearest other centre has cos < 0.7
    assert uniqueness(np.array([0.1, 0.75, 0.69]), 0.3) == pytest.approx(2 / 3)
    centre_cos = np.array([0.9, 0.6, 0.8, 0.5])
    groups = np.array([0, 0, 0, 1])
    # identity 0: 2 of 3 within r; identity 1: 0 of 1 -> mean 1/3
    assert consistency(centre_cos, groups, 2, 0.3) == pytest.approx(1 / 3)


def test_images_per_identity_histogram():
    figure = images_per_identity(np.array([3, 3, 1, 0, 5]))
    assert figure["histogram"] == {"1": 1, "3": 2, "5": 1}
    assert figure["identities"] == 4 and figure["max"] == 5


def test_genuine_pairs_all_or_seeded_uniform_sample():
    groups = np.array([0, 0, 0, 1, 1, 2, -1])
    a, b, exhaustive = genuine_pairs(groups, 100)
    assert exhaustive and count_genuine_pairs(groups) == 4
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 2), (3, 4)]
    groups = np.repeat([0, 1], [10, 2])  # 45 pairs vs 1 pair
    a, b, exhaustive = genuine_pairs(groups, 40, seed=3)
    assert not exhaustive and len(a) == 40
    assert (groups[a] == groups[b]).all() and (a != b).all()
    a, b, _ = genuine_pairs(groups, 30, seed=3)
    a2, b2, _ = genuine_pairs(groups, 30, seed=3)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    big, _, _ = genuine_pairs(np.repeat([0, 1], [300, 2]), 20_000, seed=5)  # uniform over pairs
    share = np.mean(np.repeat([0, 1], [300, 2])[big] == 1)
    assert share < 0.001  # 1 of 44,851 pairs belongs to identity 1


def test_impostor_pairs_are_seeded_and_never_same_identity():
    groups = np.repeat(np.arange(5), [50, 1, 1, 1, 1])  # one big identity: many redraws
    a, b = impostor_pairs(groups, 5000, seed=1)
    assert len(a) == 5000 and (groups[a] != groups[b]).all()
    a2, b2 = impostor_pairs(groups, 5000, seed=1)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    a3, _ = impostor_pairs(groups, 5000, seed=2)
    assert not np.array_equal(a, a3)
    assert len(impostor_pairs(np.zeros(5, int), 10)[0]) == 0  # one identity: none


def test_dataset_metrics_on_separated_identities():
    vectors, groups = identity_samples(random_unit(50, 128, seed=1), 6, 0.04, seed=2)
    vectors[0] = np.nan  # unusable rows are left out and counted
    figures = dataset_metrics(vectors, groups, radius=0.5, impostor_pairs_n=5000, seed=0)
    assert figures["unusable"] == 1 and figures["samples"] == 299 and figures["identities"] == 50
    assert figures["eer"] == 0.0
    assert figures["uniqueness"] == 1.0 and figures["consistency"] == 1.0
    assert figures["genuine"]["all_pairs"] and figures["genuine"]["n"] == 49 * 15 + 10
    assert figures["impostor"]["n"] == 5000
    assert figures["fdr"] > 10 and figures["d_prime"] > 4
    assert figures["fnmr_at_fmr"]["1e-03"]["fnmr"] == 0.0
    assert sum(figures["genuine"]["histogram"]["counts"]) == figures["genuine"]["n"]
    assert figures["images_per_identity"]["histogram"] == {"5": 1, "6": 49}
    scores = pair_scores(vectors, np.array([1, 2]), np.array([2, 1]))
    assert scores[0] == pytest.approx(scores[1])


def test_duplicated_identities_lower_uniqueness():
    centres = random_unit(20, 64, seed=4)
    centres[1] = centres[0]  # identities 0 and 1 are the same person
    vectors, groups = identity_samples(centres, 5, 0.05, seed=5)
    figures = dataset_metrics(vectors, groups, radius=0.5, impostor_pairs_n=2000)
    assert figures["uniqueness"] == pytest.approx(18 / 20)


def test_funnel_adds_up():
    reasons = np.array(
        [None, "no_face", "quantile_trim", "duplicate_identity", None, "weird"], dtype=object
    )
    groups = np.array([0, 0, 0, 1, 2, 2])
    identity_reasons = np.array([None, "duplicate_identity", None], dtype=object)
    funnel = build_funnel(reasons, groups, identity_reasons)
    samples = funnel["samples"]
    assert samples["input"] == 6 and samples["kept"] == 2
    assert samples["steps"][0]["rule"] == "weird"  # unknown reasons come first, still counted
    assert samples["input"] - sum(s["removed"] for s in samples["steps"]) == samples["kept"]
    assert funnel["identities"]["kept"] == 2
    broken = {**funnel, "samples": {**samples, "kept": 3}}
    with pytest.raises(AssertionError):
        check_funnel(broken)
