"""The judge's count of distinct kept identities (filters.distinct): merges what the
judge sees as one person even where the filter's embedder keeps them apart."""

import numpy as np

from facefoundry.filters.distinct import judge_distinct
from facefoundry.filters.samples import SampleTable

PER = 4


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _table(judge_centres: np.ndarray, seed: int = 0) -> SampleTable:
    """Identities far apart for the filter (sface); the judge (dlib) sees ``judge_centres``."""
    rng = np.random.default_rng(seed)
    n = len(judge_centres)
    groups = np.repeat(np.arange(n), PER)
    sface = _unit(rng.standard_normal((n, 128)))[groups] + 0.02 * rng.standard_normal(
        (n * PER, 128)
    )
    dlib = judge_centres[groups] + 0.02 * rng.standard_normal((n * PER, 128))
    return SampleTable(
        keys=np.array([f"{i:04d}" for i in range(n * PER)]),
        identities=groups,
        embeddings={"sface": _unit(sface), "dlib": _unit(dlib)},
    )


def test_the_judge_merges_a_pair_the_filter_keeps_apart():
    rng = np.random.default_rng(1)
    centres = _unit(rng.standard_normal((6, 128)))
    distinct = judge_distinct(_table(centres), np.ones(6 * PER, bool), "dlib", 1e-4)
    assert distinct["kept_identities"] == 6 and distinct["distinct_identities"] == 6
    assert 0.5 < distinct["tau"] < 1.0  # dlib's calibrated cosine at FMR 1e-4
    centres[1] = centres[0]  # one person twice, for the judge only
    distinct = judge_distinct(_table(centres), np.ones(6 * PER, bool), "dlib", 1e-4)
    assert distinct["distinct_identities"] == 5 and distinct["share"] == round(5 / 6, 4)


def test_only_kept_samples_count_and_unmeasurable_cases_say_why():
    rng = np.random.default_rng(2)
    centres = _unit(rng.standard_normal((4, 128)))
    centres[1] = centres[0]
    table = _table(centres)
    kept = table.groups != 1  # the twin was removed by the filter: nothing left to merge
    distinct = judge_distinct(table, kept, "dlib", 1e-4)
    assert distinct["kept_identities"] == 3 and distinct["distinct_identities"] == 3
    assert "skipped" in judge_distinct(table, kept, "dlib", None)
    assert "skipped" in judge_distinct(table, table.groups == 2, "dlib", 1e-4)
