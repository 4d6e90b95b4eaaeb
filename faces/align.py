"""Five-point similarity alignment to the ArcFace 112 x 112 template.

All identity models here (SFace, ArcFace ONNX, our own recognizer) were trained on
faces warped to this template, so every stage aligns the same way. Landmark order:
left eye, right eye, nose tip, left mouth corner, right mouth corner, where "left"
means the smaller x in the image.
"""

from __future__ import annotations

import warnings

import numpy as np

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
ALIGNED_SIZE = 112


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp ``image`` so that ``landmarks`` (5 x 2, pixels) land on the ArcFace template.

    Uses insightface's ``face_align.norm_crop`` (a least-squares similarity transform
    and ``cv2.warpAffine``); channel order is preserved, so RGB in gives RGB out.
    """
    from insightface.utils import face_align

    landmarks = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    with warnings.catch_warnings():  # skimage deprecates the estimate() insightface calls
        warnings.simplefilter("ignore", FutureWarning)
        return face_align.norm_crop(image, landmarks, image_size=size)


def template_landmarks(size: int = ALIGNED_SIZE) -> np.ndarray:
    """The template scaled to a ``size`` x ``size`` crop (insightface's convention)."""
    scale = size / 112.0 if size % 112 == 0 else size / 128.0
    shift = 0.0 if size % 112 == 0 else 8.0 * scale
    landmarks = ARCFACE_TEMPLATE * scale
    landmarks[:, 0] += shift
    return landmarks


def fit_five_points(partial: np.ndarray, indices: list[int]) -> np.ndarray:
    """Complete a subset of the five template points (e.g. eyes + nose from dlib).

    Fits a similarity transform from the template's ``indices`` points to ``partial``
    and maps the whole template through it, so detectors without mouth corners can
    still feed ``align_face``.
    """
    source = ARCFACE_TEMPLATE[indices].astype(np.float64)
    target = np.asarray(partial, dtype=np.float64).reshape(len(indices), 2)
    src_mean, dst_mean = source.mean(0), target.mean(0)
    src_c, dst_c = source - src_mean, target - dst_mean
    # similarity as complex multiplication: z_dst = a * z_src, a = scale * e^{i theta}
    zs = src_c[:, 0] + 1j * src_c[:, 1]
    zd = dst_c[:, 0] + 1j * dst_c[:, 1]
    a = np.vdot(zs, zd) / np.vdot(zs, zs)
    full = ARCFACE_TEMPLATE.astype(np.float64) - src_mean
    mapped = a * (full[:, 0] + 1j * full[:, 1])
    return np.stack([mapped.real, mapped.imag], axis=1).astype(np.float32) + dst_mean.astype(
        np.float32
    )
