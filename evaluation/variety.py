"""Variety within an identity, measured without an identity model.

A face-recognition training set teaches invariance only if each identity is seen under
several poses, expressions and lights. An embedder cannot judge that (it is trained to
ignore exactly these changes), so the figures here use geometry and pixels only:

- pose proxies from the five landmarks (yaw, pitch, roll);
- illumination features of the central face region (brightness, left-right asymmetry,
  contrast, colour cast);
- pixel diversity: how different two images of one identity are at 32 x 32 grey.

Each is a spread *inside* an identity (group), averaged over groups, so differences
between identities do not count. Absolute values depend on the detector and the image
source; read them as ratios to real faces at the same resolution (``shrink_to`` brings
real 112 px faces down to a generator's resolution and back): a ratio of 1.0 means as
varied as real faces, near 0 means every image of an identity looks the same.

Inputs: aligned faces N x H x W x 3 uint8 RGB (112 x 112, ArcFace template), an integer
group per image, and optionally landmarks N x 5 x 2 in the pixels of the image they were
found in, in the detector order of ``faces.detect`` (image-left eye = the subject's right
eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner), NaN
where no face was found.
"""

from __future__ import annotations

from typing import Any

import numpy as np

POSE_FEATURES = ("yaw", "pitch", "roll")
ILLUMINATION_FEATURES = ("luminance", "asymmetry", "contrast", "cb", "cr")

# Nose tip between the eye line (0) and the mouth line (1) on the ArcFace template
# (faces.align.ARCFACE_TEMPLATE: eyes y 51.70/51.50, nose 71.74, mouth 92.37/92.20).
# Only the spread of the pitch proxy matters; the offset just centres it near 0.
TEMPLATE_NOSE_RATIO = 0.4950

CENTRAL_FRACTION = 0.6  # side of the central box, as a fraction of the image side
PIXEL_SIZE = 32  # side of the grey thumbnails pixel_diversity compares
_CHUNK = 512  # images per block, to bound float memory on large sets


def pose_proxies(landmarks: np.ndarray) -> np.ndarray:
    """Yaw, pitch and roll proxies (N x 3) from five landmarks, without a 3D model.

    Cheap and detector-agnostic, so generated and real faces are measured the same way.

    - roll (degrees): angle of the eye line, image-left eye to image-right eye; positive
      when the image-right eye is lower (head tilted clockwise in the image).
    - yaw (fraction of the inter-ocular distance): signed distance of the nose tip from
      the axis through the eye midpoint and the mouth midpoint; positive when the nose is
      to the image right of it. Measured across the face axis, so roll does not leak in.
    - pitch (ratio): where the nose tip sits along that axis, 0 at the eye line and 1 at
      the mouth line, minus its template value; positive when the nose is nearer the
      mouth (roughly: head tilted down).

    Rows with any NaN landmark (no face, or a partial one) or with coincident eyes or
    eye/mouth midpoints give NaN in all three columns.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (5, 2):
        raise ValueError(f"landmarks must be N x 5 x 2, got shape {points.shape}")
    eye_left, eye_right, nose = points[:, 0], points[:, 1], points[:, 2]
    eyes = (eye_left + eye_right) / 2
    mouth = (points[:, 3] + points[:, 4]) / 2
    eye_line = eye_right - eye_left
    axis = mouth - eyes
    with np.errstate(divide="ignore", invalid="ignore"):
        ocular = np.hypot(eye_line[:, 0], eye_line[:, 1])
        length = np.hypot(axis[:, 0], axis[:, 1])
        roll = np.degrees(np.arctan2(eye_line[:, 1], eye_line[:, 0]))
        offset = nose - eyes
        # 2D cross product offset x axis: > 0 when the nose is right of the downward axis
        across = (axis[:, 1] * offset[:, 0] - axis[:, 0] * offset[:, 1]) / length
        along = (axis[:, 0] * offset[:, 0] + axis[:, 1] * offset[:, 1]) / length
        yaw = across / ocular
        pitch = along / length - TEMPLATE_NOSE_RATIO
    result = np.stack([yaw, pitch, roll], axis=1)
    usable = np.isfinite(points).all(axis=(1, 2)) & (ocular > 0) & (length > 0)
    result[~usable] = np.nan
    return result


def _as_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be N x H x W x 3 RGB, got shape {images.shape}")
    return images


def illumination_features(images: np.ndarray) -> np.ndarray:
    """Lighting features (N x 5, see ``ILLUMINATION_FEATURES``) of the central face box.

    Lighting variety is what a recognizer must learn to ignore after pose. The middle
    ``CENTRAL_FRACTION`` of the aligned image is mostly face, so background does not
    dominate. Columns, on a 0..1 scale (BT.601 YCbCr):

    - luminance: mean Y (overall brightness);
    - asymmetry: mean Y of the image-left half minus the image-right half (side light;
      positive when lit from the image left);
    - contrast: std of Y (flat vs harsh light);
    - cb, cr: mean colour-difference channels (centred on 0: a blue/red colour cast).
    """
    images = _as_images(images)
    height, width = images.shape[1:3]
    margin_y = int(round(height * (1 - CENTRAL_FRACTION) / 2))
    margin_x = int(round(width * (1 - CENTRAL_FRACTION) / 2))
    features = np.empty((len(images), len(ILLUMINATION_FEATURES)), dtype=np.float64)
    for start in range(0, len(images), _CHUNK):
        block = images[start : start + _CHUNK, margin_y : height - margin_y]
        block = block[:, :, margin_x : width - margin_x].astype(np.float32) / 255.0
        red, green, blue = block[..., 0], block[..., 1], block[..., 2]
        luma = 0.299 * red + 0.587 * green + 0.114 * blue
        half = luma.shape[2] // 2
        rows = slice(start, start + len(block))
        features[rows, 0] = luma.mean(axis=(1, 2))
        features[rows, 1] = luma[:, :, :half].mean(axis=(1, 2)) - luma[:, :, -half:].mean(
            axis=(1, 2)
        )
        features[rows, 2] = luma.std(axis=(1, 2))
        features[rows, 3] = (0.564 * (blue - luma)).mean(axis=(1, 2))
        features[rows, 4] = (0.713 * (red - luma)).mean(axis=(1, 2))
    return features


def _group_index(groups: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must hold one entry per row ({n}), got shape {groups.shape}")
    _, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse, int(inverse.max()) + 1 if n else 0


def _grey_small(image: np.ndarray, size: int) -> np.ndarray:
    """One RGB image as grey ``size`` x ``size`` float64 (INTER_AREA)."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA).astype(np.float64)


def _thumbnails(images: np.ndarray, size: int = PIXEL_SIZE) -> np.ndarray:
    """Grey size x size thumbnails, each standardised to mean 0 and std 1 (N x size²)."""
    out = np.empty((len(images), size * size), dtype=np.float64)
    for row, image in enumerate(images):
        small = _grey_small(image, size)
        small -= small.mean()
        std = small.std()
        out[row] = (small / std if std > 0 else small).reshape(-1)  # flat image: all zeros
    return out


def pixel_diversity(images: np.ndarray, groups: np.ndarray) -> float:
    """Mean squared difference between standardised 32 px grey images of one group.

    The catch-all variety figure: pose, expression, lighting, hair and background all
    move pixels, while brightness and contrast alone do not (each thumbnail is
    standardised). Per group with >= 2 images, the mean over all pairs of the mean
    squared pixel difference; then the mean over groups. 0 = copies; 2 = uncorrelated
    images (it is 2 - 2 x their correlation); NaN when no group has two images.
    """
    images = _as_images(images)
    inverse, n_groups = _group_index(groups, len(images))
    if not n_groups:
        return float("nan")
    thumbs = _thumbnails(images)
    dims = thumbs.shape[1]
    counts = np.bincount(inverse, minlength=n_groups).astype(np.float64)
    norms = np.bincount(inverse, weights=np.sum(thumbs**2, axis=1), minlength=n_groups)
    sums = np.zeros((n_groups, dims))
    np.add.at(sums, inverse, thumbs)
    # sum over pairs i < j of |a_i - a_j|² = n sum |a_i|² - |sum a_i|²
    pair_sums = counts * norms - np.sum(sums**2, axis=1)
    used = counts >= 2
    if not used.any():
        return float("nan")
    pairs = counts[used] * (counts[used] - 1) / 2
    per_group = np.maximum(pair_sums[used], 0.0) / (pairs * dims)
    return float(per_group.mean())


def within_group_spread(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per-feature spread inside groups: mean over groups of the within-group std (k,).

    Variety *within* an identity is what training needs; spread between identities
    is not counted. For each feature, a group counts when it has >= 2 finite values
    (NaN rows, e.g. undetected faces, are skipped); std uses ddof=1 so groups of
    different sizes are comparable. NaN for a feature no group can measure. A 1-D
    ``values`` is one feature.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"values must be N x k, got shape {values.shape}")
    inverse, n_groups = _group_index(groups, len(values))
    spreads = np.full(values.shape[1], np.nan)
    for column in range(values.shape[1]):
        x = values[:, column]
        finite = np.isfinite(x)
        index, x = inverse[finite], x[finite]
        counts = np.bincount(index, minlength=n_groups).astype(np.float64)
        used = counts >= 2
        if not used.any():
            continue
        means = np.bincount(index, weights=x, minlength=n_groups) / np.maximum(counts, 1)
        squares = np.bincount(index, weights=(x - means[index]) ** 2, minlength=n_groups)
        spreads[column] = np.mean(np.sqrt(squares[used] / (counts[used] - 1)))
    return spreads


def _ratio_of_spreads(synthetic: np.ndarray, real: np.ndarray) -> float:
    """Geometric mean over features of synthetic / real spread (features real can't
    measure, with a zero or NaN real spread, are left out; NaN when none is left)."""
    synthetic = np.asarray(synthetic, dtype=np.float64)
    real = np.asarray(real, dtype=np.float64)
    usable = np.isfinite(synthetic) & np.isfinite(real) & (real > 1e-12)
    if not usable.any():
        return float("nan")
    ratios = synthetic[usable] / real[usable]
    with np.errstate(divide="ignore"):
        return float(np.exp(np.mean(np.log(ratios))))


def spread_ratio(
    synthetic_values: np.ndarray,
    synthetic_groups: np.ndarray,
    real_values: np.ndarray,
    real_groups: np.ndarray,
) -> float:
    """How varied synthetic identities are relative to real ones: 1.0 = as varied.

    The per-feature ratio of within-group spreads (``within_group_spread``) cancels
    each feature's unit and detector bias; the features are combined by the geometric
    mean, the natural mean of ratios (x2 on one feature and x0.5 on another give 1.0).
    A feature with no spread at all in the synthetic set makes the figure 0: a collapsed
    dimension is a defect, not noise. Features whose real spread is 0 or NaN are left
    out (no scale to compare with); NaN when no feature is left.
    """
    synthetic = within_group_spread(synthetic_values, synthetic_groups)
    real = within_group_spread(real_values, real_groups)
    if synthetic.shape != real.shape:
        raise ValueError(f"feature counts differ: {synthetic.shape[0]} vs {real.shape[0]}")
    return _ratio_of_spreads(synthetic, real)


def shrink_to(images: np.ndarray, size: int) -> np.ndarray:
    """Real faces as a generator of ``size`` px would show them: down with INTER_AREA,
    back up to the original size with INTER_CUBIC (uint8), so that variety is compared
    at the same resolution (blur removes detail that pixel figures would otherwise
    count as variety, and landmarks get as noisy)."""
    import cv2

    images = _as_images(images)
    height, width = images.shape[1:3]
    out = np.empty_like(images)
    for row, image in enumerate(images):
        small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        out[row] = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return out


def radial_power(images: np.ndarray, size: int = PIXEL_SIZE) -> np.ndarray:
    """Mean power of the grey images' 2-D spectrum at each integer spatial frequency
    radius 0 .. size // 2 (cycles per image), at ``size`` x ``size`` (INTER_AREA).

    Why: a generator that loses identity detail may just draw blurrier faces. The ratio
    of two sets' radial power (synthetic over real, at the generator's resolution) says
    whether the fine scales hold as much contrast as real faces do: 1 = as much, below 1
    = blurrier. Each image's mean is removed first, so brightness does not count (the
    power at radius 0 is 0)."""
    images = _as_images(images)
    power = np.zeros((size, size))
    for image in images:
        small = _grey_small(image, size)
        power += np.abs(np.fft.fft2(small - small.mean())) ** 2
    frequencies = np.fft.fftfreq(size) * size
    radius = np.rint(np.hypot(*np.meshgrid(frequencies, frequencies))).astype(int)
    keep = radius <= size // 2
    totals = np.bincount(radius[keep], power[keep] / len(images), minlength=size // 2 + 1)
    return totals / np.bincount(radius[keep], minlength=size // 2 + 1)


def detect_landmarks(
    images: np.ndarray, detector: str = "yunet", policy: str = "central"
) -> np.ndarray:
    """Five landmarks per image (N x 5 x 2, float32, NaN where no face was found) from
    the project's detector, so pose can be measured on any set of faces the same way."""
    from facefoundry.faces import get_detector, select_face

    images = _as_images(images)
    model = get_detector(detector)
    landmarks = np.full((len(images), 5, 2), np.nan, dtype=np.float32)
    for row, image in enumerate(images):
        image = np.ascontiguousarray(image)
        face = select_face(model.detect(image), image.shape, policy)
        if face is not None:
            landmarks[row] = face.landmarks
    return landmarks


def variety_report(
    images: np.ndarray,
    groups: np.ndarray,
    landmarks: np.ndarray | None = None,
    reference: dict[str, Any] | None = None,
) -> dict[str, float | int]:
    """Identity-free variety figures of one set of faces, flat for a results table.

    Keys: ``n_images``, ``n_groups`` (groups with >= 2 images), ``spread_<feature>`` for
    each illumination feature and, when ``landmarks`` are given, each pose proxy (with
    ``landmark_rate``, the fraction of images with a face), and ``pixel_diversity``.
    With ``reference`` (this function's result on real faces, e.g. from
    ``reference_variety``), also ``pose_spread_ratio``, ``illumination_spread_ratio``
    (geometric means of per-feature ratios, as ``spread_ratio``) and
    ``pixel_diversity_ratio``: synthetic over real, 1.0 = as varied as real faces.
    """
    images = _as_images(images)
    groups = np.asarray(groups)
    inverse, n_groups = _group_index(groups, len(images))
    report: dict[str, float | int] = {
        "n_images": len(images),
        "n_groups": int(np.sum(np.bincount(inverse, minlength=n_groups) >= 2)),
    }
    if landmarks is not None:
        pose = pose_proxies(landmarks)
        if len(pose) != len(images):
            raise ValueError(f"{len(pose)} landmark rows for {len(images)} images")
        report["landmark_rate"] = float(np.isfinite(pose).all(axis=1).mean()) if len(pose) else 0.0
        for name, value in zip(POSE_FEATURES, within_group_spread(pose, groups), strict=True):
            report[f"spread_{name}"] = float(value)
    light = within_group_spread(illumination_features(images), groups)
    for name, value in zip(ILLUMINATION_FEATURES, light, strict=True):
        report[f"spread_{name}"] = float(value)
    report["pixel_diversity"] = pixel_diversity(images, groups)
    if reference is not None:
        for figure, names in (("pose", POSE_FEATURES), ("illumination", ILLUMINATION_FEATURES)):
            keys = [f"spread_{name}" for name in names]
            if all(key in report and key in reference for key in keys):
                report[f"{figure}_spread_ratio"] = _ratio_of_spreads(
                    np.array([report[key] for key in keys]),
                    np.array([reference[key] for key in keys], dtype=np.float64),
                )
        real = float(reference.get("pixel_diversity", float("nan")))
        report["pixel_diversity_ratio"] = (
            report["pixel_diversity"] / real if np.isfinite(real) and real > 0 else float("nan")
        )
    return report


def reference_variety(
    images: np.ndarray,
    groups: np.ndarray,
    size: int | None = None,
    landmarks: np.ndarray | None = None,
    detector: str | None = None,
) -> dict[str, float | int]:
    """``variety_report`` of real faces, to pass as ``reference``.

    ``size``: first ``shrink_to(images, size)``, to compare with a generator of that
    resolution. ``detector`` (e.g. ``"yunet"``): when no ``landmarks`` are given, detect
    them on the (shrunk) images, so detector noise at low resolution is matched too.
    """
    images = _as_images(images)
    if size is not None:
        images = shrink_to(images, size)
    if landmarks is None and detector is not None:
        landmarks = detect_landmarks(images, detector)
    return variety_report(images, groups, landmarks)
