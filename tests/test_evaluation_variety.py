"""Identity-free variety figures (evaluation.variety) on small hand-built inputs."""

import numpy as np
import pytest

from facefoundry.evaluation.variety import (
    ILLUMINATION_FEATURES,
    POSE_FEATURES,
    illumination_features,
    pixel_diversity,
    pose_proxies,
    radial_power,
    reference_variety,
    shrink_to,
    spread_ratio,
    variety_report,
    within_group_spread,
)
from facefoundry.faces.align import ARCFACE_TEMPLATE

YAW, PITCH, ROLL = (POSE_FEATURES.index(name) for name in ("yaw", "pitch", "roll"))
LUMINANCE, ASYMMETRY = (ILLUMINATION_FEATURES.index(name) for name in ("luminance", "asymmetry"))


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre by ``degrees``, clockwise on screen (image y points down)."""
    angle = np.radians(degrees)
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = points.mean(axis=0)
    return (points - centre) @ matrix.T + centre


def _face(rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """A smooth random RGB image in 60..190 (room to brighten or darken without clipping)."""
    coarse = rng.uniform(60, 190, size=(8, 8, 3))
    return np.kron(coarse, np.ones((size // 8, size // 8, 1))).astype(np.uint8)


def _varied_set(rng: np.random.Generator, groups: int = 6, per_group: int = 5):
    """Each group: one face under different brightness, side light and colour cast."""
    images, labels = [], []
    ramp = np.linspace(-1, 1, 112)[None, :, None]
    for group in range(groups):
        base = _face(rng).astype(np.float64)
        for _ in range(per_group):
            light = base * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30) * ramp
            light += rng.uniform(-15, 15, size=3)  # colour cast
            images.append(np.clip(light, 0, 255).astype(np.uint8))
            labels.append(group)
    return np.stack(images), np.array(labels)


def _collapsed(images: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Every image replaced by the first image of its group."""
    first = {g: i for i, g in reversed(list(enumerate(groups)))}
    return images[[first[g] for g in groups]]


# --- pose -------------------------------------------------------------------------------


def test_pose_proxies_of_the_template_are_zero_and_follow_roll_yaw_and_pitch():
    template = ARCFACE_TEMPLATE.astype(np.float64)
    rolled = _rotate(template, 10.0)  # image-right eye goes down
    nose_right, nose_left, nose_down = template.copy(), template.copy(), template.copy()
    nose_right[2, 0] += 5.0
    nose_left[2, 0] -= 5.0
    nose_down[2, 1] += 5.0
    missing = np.full((5, 2), np.nan)
    no_nose = template.copy()
    no_nose[2] = np.nan
    one_eye = template.copy()
    one_eye[1] = one_eye[0]  # no eye line: roll would read 0 degrees
    rows = [template, rolled, nose_right, nose_left, nose_down, missing, no_nose, one_eye]
    pose = pose_proxies(np.stack(rows))

    assert pose.shape == (8, 3)
    assert np.allclose(pose[0], 0.0, atol=0.5)  # template eyes are level to 0.3 degree
    assert abs(pose[0, YAW]) < 1e-3 and abs(pose[0, PITCH]) < 1e-3
    assert pose[1, ROLL] == pytest.approx(pose[0, ROLL] + 10.0, abs=1e-6)
    # yaw and pitch are measured along the face's own axis: rolling leaves them alone
    assert pose[1, YAW] == pytest.approx(pose[0, YAW], abs=1e-9)
    assert pose[1, PITCH] == pytest.approx(pose[0, PITCH], abs=1e-9)
    ocular = np.linalg.norm(template[1] - template[0])
    assert pose[2, YAW] == pytest.approx(5.0 / ocular, rel=0.02)  # nose right: positive
    assert pose[3, YAW] == pytest.approx(-5.0 / ocular, rel=0.02)
    assert pose[4, PITCH] > 0.1 and abs(pose[4, YAW]) < 0.01  # nose lower: towards mouth
    assert np.isnan(pose[5:]).all()  # no face, part of a face, degenerate: no pose


def test_pose_proxies_reject_wrong_shapes():
    with pytest.raises(ValueError, match="N x 5 x 2"):
        pose_proxies(np.zeros((5, 2)))


# --- spreads ----------------------------------------------------------------------------


def test_within_group_spread_averages_per_group_std_and_skips_nan_and_singletons():
    values = np.array([1.0, 3.0, 5.0, 5.0, 5.0, 100.0, np.nan, 7.0])
    groups = np.array([0, 0, 1, 1, 1, 2, 3, 3])  # group 2 and 3 have one finite value
    spread = within_group_spread(values, groups)
    assert spread.shape == (1,)
    assert spread[0] == pytest.approx(np.mean([np.std([1, 3], ddof=1), 0.0]))
    assert np.isnan(within_group_spread(np.array([1.0, 2.0]), np.array([0, 1])))[0]


def test_spread_ratio_is_one_against_itself_and_small_for_a_collapsed_set():
    rng = np.random.default_rng(0)
    images, groups = _varied_set(rng)
    features = illumination_features(images)
    assert spread_ratio(features, groups, features, groups) == pytest.approx(1.0)

    copies = _collapsed(images, groups)
    jitter = rng.integers(-1, 2, size=copies.shape)  # one grey level of noise
    nearly = np.clip(copies.astype(int) + jitter, 0, 255).astype(np.uint8)
    collapsed = spread_ratio(illumination_features(nearly), groups, features, groups)
    assert 0.0 < collapsed < 0.2

    poses = np.repeat(ARCFACE_TEMPLATE[None].astype(np.float64), len(groups), axis=0)
    varied_pose = pose_proxies(poses + rng.normal(0, 3.0, poses.shape))
    still_pose = pose_proxies(poses + rng.normal(0, 0.1, poses.shape))
    assert spread_ratio(still_pose, groups, varied_pose, groups) < 0.2


def test_spread_ratio_ignores_features_real_faces_do_not_vary():
    groups = np.array([0, 0, 1, 1])
    real = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [5.0, 5.0]])  # feature 1 constant
    synthetic = np.array([[1.0, 0.0], [3.0, 9.0], [3.0, 0.0], [7.0, 9.0]])
    assert spread_ratio(synthetic, groups, real, groups) == pytest.approx(2.0)


# --- illumination -----------------------------------------------------------------------


def test_illumination_spread_is_larger_for_varied_brightness_than_for_copies():
    base = _face(np.random.default_rng(1)).astype(np.float64)
    varied = np.stack([np.clip(base * s, 0, 255).astype(np.uint8) for s in (0.6, 1.0, 1.3)])
    copies = np.stack([base.astype(np.uint8)] * 3)
    groups = np.zeros(3, dtype=int)
    varied_spread = within_group_spread(illumination_features(varied), groups)
    copies_spread = within_group_spread(illumination_features(copies), groups)
    assert varied_spread[LUMINANCE] > 0.05
    assert copies_spread[LUMINANCE] == 0.0
    assert np.all(varied_spread >= copies_spread)


def test_side_light_gives_opposite_asymmetry_and_background_does_not_count():
    ramp = np.linspace(220, 40, 112)  # bright on the image left
    left_lit = np.repeat(np.tile(ramp, (112, 1))[..., None], 3, axis=2).astype(np.uint8)
    right_lit = left_lit[:, ::-1].copy()
    framed = left_lit.copy()
    framed[:10] = 0  # change only the border, outside the central box
    framed[:, -10:] = 255
    features = illumination_features(np.stack([left_lit, right_lit, framed]))
    assert features.shape == (3, len(ILLUMINATION_FEATURES))
    assert features[0, ASYMMETRY] > 0.1
    assert features[1, ASYMMETRY] == pytest.approx(-features[0, ASYMMETRY], abs=1e-6)
    assert np.allclose(features[2], features[0])
    assert np.allclose(features[0, 3:], 0.0, atol=1e-6)  # grey: no colour cast


# --- pixels -----------------------------------------------------------------------------


def test_pixel_diversity_is_zero_for_copies_and_positive_for_different_images():
    rng = np.random.default_rng(2)
    face = _face(rng)
    copies = np.stack([face] * 4)
    brighter = np.stack([face, np.clip(face.astype(int) + 40, 0, 255).astype(np.uint8)])
    noise = rng.integers(0, 256, size=(4, 112, 112, 3), dtype=np.uint8)
    assert pixel_diversity(copies, np.zeros(4, dtype=int)) == pytest.approx(0.0, abs=1e-9)
    assert pixel_diversity(brighter, np.zeros(2, dtype=int)) < 0.01  # standardised
    assert pixel_diversity(noise, np.zeros(4, dtype=int)) == pytest.approx(2.0, abs=0.2)
    # a group of different images and a group of copies: the mean of 2 and 0
    mixed = np.concatenate([noise, copies])
    assert pixel_diversity(mixed, np.repeat([0, 1], 4)) == pytest.approx(1.0, abs=0.1)
    assert np.isnan(pixel_diversity(noise, np.arange(4)))  # no group with two images


def test_shrink_to_keeps_shape_and_removes_fine_detail():
    rng = np.random.default_rng(3)
    smooth = _face(rng)
    checker = (np.indices((112, 112)).sum(axis=0) % 2 * 255).astype(np.uint8)
    checker = np.repeat(checker[..., None], 3, axis=2)
    shrunk = shrink_to(np.stack([smooth, checker]), 32)
    assert shrunk.shape == (2, 112, 112, 3) and shrunk.dtype == np.uint8
    assert np.abs(shrunk[0].astype(int) - smooth).mean() < 10  # coarse blocks survive
    assert shrunk[1].std() < 0.1 * checker.std()  # one-pixel detail is gone


# --- report -----------------------------------------------------------------------------


def test_variety_report_ratios_are_one_against_itself_and_small_when_collapsed():
    rng = np.random.default_rng(4)
    images, groups = _varied_set(rng)
    landmarks = ARCFACE_TEMPLATE[None] + rng.normal(0, 3.0, (len(groups), 5, 2))
    landmarks[0] = np.nan
    real = reference_variety(images, groups, landmarks=landmarks)
    assert real["n_images"] == len(groups) and real["n_groups"] == 6
    assert real["landmark_rate"] == pytest.approx(1 - 1 / len(groups))
    for name in POSE_FEATURES + ILLUMINATION_FEATURES:
        assert real[f"spread_{name}"] > 0

    same = variety_report(images, groups, landmarks, reference=real)
    for key in ("pose_spread_ratio", "illumination_spread_ratio", "pixel_diversity_ratio"):
        assert same[key] == pytest.approx(1.0)

    copies = _collapsed(images, groups)
    still = _collapsed(landmarks, groups)
    collapsed = variety_report(copies, groups, still, reference=real)
    assert collapsed["pixel_diversity"] == pytest.approx(0.0, abs=1e-9)
    for key in ("pose_spread_ratio", "illumination_spread_ratio", "pixel_diversity_ratio"):
        assert collapsed[key] < 0.2

    no_pose = variety_report(images, groups, reference=real)  # no landmarks: no pose ratio
    assert "pose_spread_ratio" not in no_pose and "spread_yaw" not in no_pose
    assert no_pose["illumination_spread_ratio"] == pytest.approx(1.0)


@pytest.mark.lfw
def test_detect_landmarks_finds_a_frontal_lfw_face_and_nothing_in_a_blank(lfw):
    from facefoundry.evaluation.variety import detect_landmarks
    from facefoundry.faces import decode_image

    name = "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    face = decode_image(lfw.read(name), name)
    blank = np.full_like(face, 128)
    landmarks = detect_landmarks(np.stack([face, blank]))
    assert landmarks.shape == (2, 5, 2)
    assert np.isfinite(landmarks[0]).all() and np.isnan(landmarks[1]).all()
    pose = pose_proxies(landmarks)
    assert abs(pose[0, ROLL]) < 10.0  # deep-funneled, frontal
    assert abs(pose[0, YAW]) < 0.3
    assert np.isnan(pose[1]).all()


def test_radial_power_puts_a_stripe_pattern_at_its_frequency():
    """Vertical stripes of 5 cycles per image: the power sits at radius 5."""
    x = np.arange(32)
    stripes = 128 + 60 * np.cos(2 * np.pi * 5 * x / 32)
    image = np.repeat(np.tile(stripes, (32, 1))[:, :, None], 3, axis=2).astype(np.uint8)
    power = radial_power(image[None])
    assert power.shape == (17,)
    assert int(np.argmax(power)) == 5
    assert power[5] > 100 * np.delete(power, 5).max()


def test_radial_power_ratio_falls_at_fine_scales_when_blurred():
    """Blurring a set lowers its power at the finest scales, not at the coarse ones."""
    import cv2

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    blurred = np.stack([cv2.GaussianBlur(image, (0, 0), 1.0) for image in sharp])
    ratio = radial_power(blurred)[1:] / radial_power(sharp)[1:]  # radius 0: the mean, removed
    assert radial_power(sharp)[0] == pytest.approx(0.0, abs=1e-6)
    assert ratio[0] > 0.8
    assert ratio[11:].max() < 0.2
