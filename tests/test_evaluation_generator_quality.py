"""The identity-spread figures of the generator quality report, on small point clouds
whose dimension is known."""

import numpy as np
import pytest

from facefoundry.evaluation.generator_quality import (
    identity_centroids,
    participation_ratio,
    separation,
)


def test_an_isotropic_cloud_spreads_over_its_own_dimensions_and_a_line_over_one():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((128, 128)))[0]
    coordinates = rng.standard_normal((4000, 8))
    isotropic = coordinates @ basis[:, :8].T
    line = rng.standard_normal((4000, 1)) @ basis[:, :1].T
    assert participation_ratio(isotropic) == pytest.approx(8, rel=0.05)
    assert participation_ratio(line) == pytest.approx(1, rel=1e-6)
    # one strong direction beside seven weak ones counts as fewer than eight
    skewed = (coordinates * np.r_[4.0, np.ones(7)]) @ basis[:, :8].T
    assert 1 < participation_ratio(skewed) < 3


def test_centroids_skip_missing_rows_and_identities_with_one_usable_face():
    vectors = np.array(
        [[1, 0, 0], [0, 1, 0], [np.nan] * 3, [0, 0, 2], [0, 0, 1], [1, 1, 0]], dtype=float
    )
    identity = np.array([0, 0, 1, 1, 2, 2])
    ids, centroids = identity_centroids(vectors, identity)
    # identity 1 has one usable face: left out; the others are unit means of unit rows
    assert ids.tolist() == [0, 2] and centroids.shape == (2, 3)
    np.testing.assert_allclose(centroids[0], [2**-0.5, 2**-0.5, 0])
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1)


def test_separation_scores_every_pair_once_as_the_pairwise_definition_does():
    rng = np.random.default_rng(1)
    identity = np.repeat(np.arange(6), 4)
    centres = rng.standard_normal((6, 16))
    vectors = centres[identity] + 0.5 * rng.standard_normal((24, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    genuine, impostor = [], []
    for i in range(24):
        for j in range(i + 1, 24):
            (genuine if identity[i] == identity[j] else impostor).append(vectors[i] @ vectors[j])
    figures = separation(vectors, identity)
    assert figures["genuine_pairs"] == 6 * 6 and figures["impostor_pairs"] == 276 - 36
    assert figures["genuine_cos"] == pytest.approx(np.mean(genuine), abs=1e-5)
    assert figures["gap"] == pytest.approx(np.mean(genuine) - np.mean(impostor), abs=1e-5)
    assert figures["gap"] > 0.2 and 0 <= figures["eer"] < 0.2


def test_a_third_judge_applies_the_filters_rules_as_the_dlib_judge_does(lfw):
    """Given dlib, the third-judge figures must count and separate exactly as the built-in
    dlib judge does; five real strangers with three photos each stay five of five."""
    from facefoundry.evaluation.generator_quality import quality_report
    from facefoundry.faces import align_face, decode_image, get_detector, select_face

    detector = get_detector("yunet")
    people = sorted({n.split("/")[0] for n in lfw.names() if n.endswith("_0003.jpg")})[:5]
    faces, identity = [], []
    for who, person in enumerate(people):
        for k in (1, 2, 3):
            name = f"{person}/{person}_{k:04d}.jpg"
            image = decode_image(lfw.read(name), name)
            face = select_face(detector.detect(image), image.shape)
            faces.append(align_face(image, face.landmarks))
            identity.append(who)
    report = quality_report(np.stack(faces), np.array(identity), third_judge="dlib")
    assert report["third_judge"] == "dlib"
    assert report["third_identities_survived"] == report["judge_identities_survived"] == 5
    assert report["third_gap"] == pytest.approx(report["judge_gap"], abs=1e-6)
    assert report["third_eer"] == pytest.approx(report["judge_eer"], abs=1e-6)
    assert report["third_gap"] > 0.1 and report["third_eer"] < 0.2
