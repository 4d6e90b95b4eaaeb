"""Identity leakage: the threshold is calibrated on unseen people, copies of training people
are flagged and named, strangers are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facefoundry.evaluation.leakage import (
    LeakReference,
    calibrate_leak_threshold,
    leak_rate,
    nearest_similarity,
    people_cache_path,
    person_centroids,
    real_people_embeddings,
)
from facefoundry.filters.privacy import privacy_check, reference_from_leak_reference
from tests.helpers.filters import identity_samples, random_unit

DIM = 128
REPO = Path(__file__).resolve().parents[1]


def _people(n: int, per: int, seed: int, prefix: str):
    """``n`` random people with ``per`` noisy images each: (centres, vectors, labels)."""
    centres = random_unit(n, DIM, seed=seed)
    vectors, groups = identity_samples(centres, per, 0.05, seed=seed + 1)
    return centres, vectors, np.array([f"{prefix}_{g:04d}" for g in groups])


@pytest.fixture(scope="module")
def world():
    """400 training people (5 images each) and 1000 disjoint unseen people (3 each)."""
    _, train_vectors, train_labels = _people(400, 5, seed=1, prefix="Train")
    _, unseen_vectors, unseen_labels = _people(1000, 3, seed=11, prefix="Unseen")
    names, train = person_centroids(train_vectors, train_labels)
    _, unseen = person_centroids(unseen_vectors, unseen_labels)
    return names, train, unseen


def test_person_centroids_are_unit_means_that_skip_unusable_rows():
    vectors = random_unit(7, DIM, seed=3)
    labels = np.array(["b", "a", "b", "a", "c", "b", "c"])
    vectors[3] = np.nan  # an image without a face
    vectors[4] = 0.0
    vectors[6] = np.nan  # so person "c" has no usable image at all
    names, centres = person_centroids(vectors, labels)
    assert list(names) == ["a", "b"]
    for name, centre in zip(names, centres, strict=True):
        rows = [i for i in range(7) if labels[i] == name and i not in (3, 4, 6)]
        mean = vectors[rows].mean(axis=0)
        np.testing.assert_allclose(centre, mean / np.linalg.norm(mean), atol=1e-6)


def test_blocked_nearest_similarity_equals_the_dense_computation():
    queries, references = random_unit(1000, DIM, seed=4), random_unit(300, DIM, seed=5)
    index, cos = nearest_similarity(queries, references, block=64)
    dense = queries @ references.T
    np.testing.assert_array_equal(index, dense.argmax(axis=1))
    np.testing.assert_allclose(cos, dense.max(axis=1), atol=1e-5)


def test_threshold_is_the_99th_percentile_of_unseen_people_nearest_similarity(world):
    _, train, unseen = world
    threshold = calibrate_leak_threshold(unseen, train, quantile=0.99)
    nearest = (unseen.astype(np.float64) @ train.T.astype(np.float64)).max(axis=1)
    assert threshold == pytest.approx(np.quantile(nearest, 0.99), abs=1e-5)
    assert (nearest > threshold).sum() == 10  # 1% of 1000 strangers, by construction
    assert calibrate_leak_threshold(unseen, train, quantile=0.5) < threshold


def test_a_near_copy_of_a_training_person_is_flagged_and_named(world):
    names, train, unseen = world
    strangers = random_unit(1000, DIM, seed=21)  # never-seen identities
    copied = {40: 7, 520: 333, 999: 150}  # synthetic identity -> training person it copies
    synthetic = strangers.copy()
    for fake, real in copied.items():
        noisy = train[real] + 0.02 * np.random.default_rng(fake).standard_normal(DIM)
        synthetic[fake] = noisy / np.linalg.norm(noisy)
    synthetic[10] = np.nan  # an identity the filter emptied: not counted
    threshold = calibrate_leak_threshold(unseen, train)

    figures = leak_rate(synthetic, train, threshold, names)
    assert figures["identities"] == 999
    # most similar first: the three copies, each named after the person it copies
    assert set(figures["flagged"][:3]) == set(copied)
    for fake, nearest, cos in zip(
        figures["flagged"][:3], figures["nearest"][:3], figures["nearest_cos"][:3], strict=True
    ):
        assert nearest == names[copied[fake]]
        assert cos > 0.9
    assert all(cos < 0.5 for cos in figures["nearest_cos"][3:])

    clean = np.delete(strangers, [10, *copied], axis=0)
    stranger_rate = leak_rate(clean, train, threshold)
    assert stranger_rate["leak_rate"] <= 0.025  # strangers score ~1% by construction
    assert figures["leaked"] == 3 + stranger_rate["leaked"]
    assert figures["leak_rate"] == pytest.approx(figures["leaked"] / 999)


def test_privacy_filter_uses_the_training_people_as_reference(world):
    names, train, unseen = world
    index, cos = nearest_similarity(unseen, train)
    ref = LeakReference(
        embedder="sface",
        checksum="0" * 64,
        names=names,
        centroids=train,
        threshold=float(np.quantile(cos, 0.99)),
        quantile=0.99,
        train_people="train.txt",
        unseen_people="unseen.txt",
        unseen_names=np.array([f"Unseen_{i}" for i in range(len(unseen))]),
        unseen_nearest=names[index],
        unseen_nearest_cos=cos,
    )
    assert ref.unseen_over_threshold == 10
    synthetic = random_unit(50, DIM, seed=31)
    synthetic[5] = train[222]
    result = privacy_check(synthetic, reference_from_leak_reference(ref), ref.threshold)
    assert list(np.flatnonzero(result.flagged)) == [5]
    assert result.nearest[5] == names[222]
    assert ref.leak_rate(synthetic)["nearest"] == [names[222]]


def test_real_lfw_training_people_embed_like_the_generator_training_set(lfw, tmp_path, monkeypatch):
    """Three DevTrain people through YuNet + SFace: same vectors as the training set's."""
    people = [
        row.split() for row in lfw.protocol_file("peopleDevTrain.txt").read_text().splitlines()[1:]
    ]
    chosen = [(name, int(count)) for name, count in people if 2 <= int(count) <= 4][:3]
    people_file = tmp_path / "peopleTiny.txt"
    people_file.write_text(f"{len(chosen)}\n" + "".join(f"{n}\t{c}\n" for n, c in chosen))
    lfw.names()  # index the archive under the real cache before redirecting it
    monkeypatch.setenv("FACEFOUNDRY_CACHE_DIR", str(tmp_path / "cache"))

    labels, vectors = real_people_embeddings(people_file, "sface", lfw, progress=False)
    assert len(labels) == len(vectors) == sum(c for _, c in chosen)
    assert list(dict.fromkeys(labels)) == [n for n, _ in chosen]
    ok = np.isfinite(vectors).all(axis=1)
    np.testing.assert_allclose(np.linalg.norm(vectors[ok], axis=1), 1.0, atol=1e-5)
    names, centres = person_centroids(vectors, labels)
    own = centres[np.searchsorted(names, labels[ok])]
    scores = vectors[ok] @ centres.T
    assert ((vectors[ok] * own).sum(axis=1) >= scores.max(axis=1) - 1e-6).all()

    from facefoundry.faces import get_embedder

    cache = people_cache_path(people_file, get_embedder("sface"))
    assert cache.is_file() and str(tmp_path) in str(cache)
    stamp = cache.stat().st_mtime_ns
    again_labels, again = real_people_embeddings(people_file, "sface", lfw, progress=False)
    assert cache.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again, vectors)
    np.testing.assert_array_equal(again_labels, labels)

    training_set = REPO / "data" / "lfw-devtrain-sface-64.npz"
    if training_set.is_file():  # the generator was conditioned on exactly these vectors
        with np.load(training_set) as data:
            row = {str(n): i for i, n in enumerate(data["names"])}
            images = [f"{n}/{n}_{k:04d}.jpg" for n, c in chosen for k in range(1, c + 1)]
            conditioning = data["embeddings"][[row[i] for i in images]]
        np.testing.assert_allclose(vectors, conditioning, atol=1e-4)
