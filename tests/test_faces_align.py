import numpy as np
import pytest

from facefoundry.faces.align import (
    ARCFACE_TEMPLATE,
    align_face,
    fit_five_points,
    template_landmarks,
)
from facefoundry.faces.detect import Detection, select_face


def test_aligning_the_template_is_the_identity_transform():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    aligned = align_face(image, ARCFACE_TEMPLATE)
    assert aligned.shape == (112, 112, 3)
    assert np.abs(aligned.astype(int) - image.astype(int)).max() <= 1


def test_alignment_undoes_a_known_similarity_transform():
    # place a bright dot on each template point in a 112 crop, then enlarge x2 + shift
    crop = np.zeros((112, 112, 3), dtype=np.uint8)
    for x, y in ARCFACE_TEMPLATE.round().astype(int):
        crop[y - 1 : y + 2, x - 1 : x + 2] = 255
    big = np.zeros((300, 300, 3), dtype=np.uint8)
    import cv2

    big[40:264, 30:254] = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_NEAREST)
    landmarks = ARCFACE_TEMPLATE * 2 + np.array([30, 40], dtype=np.float32)
    aligned = align_face(big, landmarks)
    for x, y in ARCFACE_TEMPLATE.round().astype(int):
        assert aligned[y, x].max() > 100, "template point should stay bright after alignment"


def test_template_scales_like_insightface():
    assert np.allclose(template_landmarks(112), ARCFACE_TEMPLATE)
    assert np.allclose(template_landmarks(224), ARCFACE_TEMPLATE * 2)


def test_fit_five_points_completes_mouth_corners_from_eyes_and_nose():
    angle, scale, shift = 0.2, 1.7, np.array([20.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (ARCFACE_TEMPLATE @ rotation.T) * scale + shift
    completed = fit_five_points(moved[:3], [0, 1, 2])
    assert np.allclose(completed, moved, atol=1e-3)


def _det(box, score=0.9):
    return Detection(box, score, np.zeros((5, 2), np.float32))


def test_face_selection_policies():
    big_corner = _det((0, 0, 120, 120), 0.7)
    small_centre = _det((130, 130, 170, 170), 0.8)
    confident = _det((200, 0, 240, 40), 0.99)
    faces = [big_corner, small_centre, confident]
    assert select_face(faces, (300, 300, 3), "largest") is big_corner
    assert select_face(faces, (300, 300, 3), "central") is small_centre
    assert select_face(faces, (300, 300, 3), "score") is confident
    assert select_face([], (300, 300, 3)) is None
    with pytest.raises(ValueError, match="policy"):
        select_face(faces, (300, 300, 3), "random")
