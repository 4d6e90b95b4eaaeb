"""Images in, per-image outcomes and identity embeddings out (detect -> align -> embed).

Every input gets an outcome row, failures included, so a run over millions of
images can be audited and nothing is silently dropped. Embeddings of rejected
images are NaN rows, aligned with the outcome list.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from facefoundry.faces.align import align_face
from facefoundry.faces.detect import (
    Detection,
    Detector,
    centred_fallback_landmarks,
    get_detector,
    select_face,
)
from facefoundry.faces.embedders import Embedder, get_embedder
from facefoundry.faces.io import FaceImageError, as_rgb_uint8, decode_image, load_image

logger = logging.getLogger(__name__)

ImageSource = bytes | str | Path | np.ndarray
NO_FACE_POLICIES = ("reject", "centre")

STATUS_OK = "ok"
STATUS_FALLBACK = "centre_fallback"  # no face found; a centred crop was embedded
STATUS_NO_FACE = "no_face"
STATUS_BAD_IMAGE = "bad_image"
STATUS_BAD_EMBEDDING = "bad_embedding"  # NaN / inf / zero vector from the model


@dataclass
class FaceOutcome:
    """What happened to one input image; ``embedded`` says whether its vector is usable."""

    key: str
    status: str
    n_faces: int = 0
    det_score: float = float("nan")
    box: list[float] | None = None
    landmarks: list[float] | None = None
    error: str | None = None
    width: int = 0
    height: int = 0

    @property
    def embedded(self) -> bool:
        return self.status in (STATUS_OK, STATUS_FALLBACK)


@dataclass
class FaceBatchResult:
    outcomes: list[FaceOutcome] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # len(outcomes) x dim, NaN rows for rejects
    aligned: np.ndarray | None = None  # N x S x S x 3 template-aligned faces, if asked for

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts


def _to_image(key: str, source: ImageSource) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return as_rgb_uint8(source, key)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(bytes(source), key)
    return load_image(source)


def process_images(
    items: Iterable[tuple[str, ImageSource]],
    detector: Detector,
    embedder: Embedder,
    *,
    policy: str = "central",
    no_face: str = "reject",
    flip_tta: bool = False,
    batch_size: int = 64,
    on_progress: Callable[[int], None] | None = None,
    keep_aligned: int | None = None,
) -> FaceBatchResult:
    """Detect, select, crop and embed each image; batches crops through the embedder.

    ``no_face="centre"`` embeds a centred crop when nothing is detected (the LFW
    protocol must score every pair) and records status ``centre_fallback``.
    """
    if no_face not in NO_FACE_POLICIES:
        raise ValueError(f"no_face must be one of {NO_FACE_POLICIES}, got {no_face!r}")
    outcomes: list[FaceOutcome] = []
    vectors: dict[int, np.ndarray] = {}
    pending_crops: list[np.ndarray] = []
    pending_rows: list[int] = []
    aligned: dict[int, np.ndarray] = {}

    def flush() -> None:
        if not pending_crops:
            return
        batch = embedder.embed_crops(np.stack(pending_crops), flip_tta=flip_tta)
        for row, vector in zip(pending_rows, batch, strict=True):
            if np.all(np.isfinite(vector)) and np.any(vector):
                vectors[row] = vector
            else:
                outcomes[row].status = STATUS_BAD_EMBEDDING
                outcomes[row].error = "embedding is NaN, infinite or zero"
        if on_progress:
            on_progress(len(pending_rows))
        pending_crops.clear()
        pending_rows.clear()

    for key, source in items:
        try:
            image = _to_image(key, source)
        except FaceImageError as error:
            outcomes.append(FaceOutcome(key, STATUS_BAD_IMAGE, error=str(error)))
            continue
        detections = detector.detect(image)
        chosen = select_face(detections, image.shape, policy)
        outcome = FaceOutcome(
            key,
            STATUS_OK,
            n_faces=len(detections),
            width=int(image.shape[1]),
            height=int(image.shape[0]),
        )
        if chosen is None:
            if no_face == "reject":
                outcome.status, outcome.error = STATUS_NO_FACE, "no face detected"
                outcomes.append(outcome)
                continue
            chosen = _centred_detection(image.shape)
            outcome.status = STATUS_FALLBACK
        outcome.det_score = chosen.score
        outcome.box = [float(v) for v in chosen.box]
        outcome.landmarks = [float(v) for v in chosen.landmarks.reshape(-1)]
        pending_crops.append(embedder.prepare(image, chosen))
        if keep_aligned:
            aligned[len(outcomes)] = _aligned_at(image, chosen, keep_aligned)
        pending_rows.append(len(outcomes))
        outcomes.append(outcome)
        if len(pending_crops) >= batch_size:
            flush()
    flush()
    embeddings = np.full((len(outcomes), embedder.dim), np.nan, dtype=np.float32)
    for row, vector in vectors.items():
        embeddings[row] = vector
    kept = None
    if keep_aligned:
        kept = np.zeros((len(outcomes), keep_aligned, keep_aligned, 3), dtype=np.uint8)
        for row, face in aligned.items():
            kept[row] = face
    return FaceBatchResult(outcomes, embeddings, kept)


def _aligned_at(image: np.ndarray, detection: Detection, size: int) -> np.ndarray:
    import cv2

    face = align_face(image, detection.landmarks)
    if size == face.shape[0]:
        return face
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)


def _centred_detection(shape: tuple[int, ...]) -> Detection:
    """A pseudo-detection at the usual face position, for the centred fallback."""
    landmarks = centred_fallback_landmarks(shape)
    eye_span = float(landmarks[1, 0] - landmarks[0, 0])
    cx, cy = float(landmarks[:, 0].mean()), float(landmarks[:, 1].mean())
    box = (cx - 1.2 * eye_span, cy - 1.5 * eye_span, cx + 1.2 * eye_span, cy + 1.3 * eye_span)
    return Detection(box, float("nan"), landmarks)


# --- process fan-out: one detector + embedder per worker process -------------------------

_WORKER: dict = {}


def _init_worker(detector_spec: str, embedder_spec: str, threads: int) -> None:
    import cv2

    cv2.setNumThreads(threads)
    # forced, not a default: a spawned worker inherits the parent's budget (e.g. 2), and
    # 2 workers x 2 onnxruntime threads on 2 cores evaluated LFW 1.46x slower
    # (benchmarks/bench_evaluate.py)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _WORKER["detector"] = get_detector(detector_spec)
    _WORKER["embedder"] = get_embedder(embedder_spec)


def _run_chunk(items: list[tuple[str, ImageSource]], options: dict) -> FaceBatchResult:
    return process_images(items, _WORKER["detector"], _WORKER["embedder"], **options)


def process_images_parallel(
    items: Sequence[tuple[str, ImageSource]],
    detector_spec: str = "yunet",
    embedder_spec: str = "sface",
    *,
    workers: int = 2,
    chunk_size: int = 64,
    progress: bool = True,
    description: str = "faces",
    worker_threads: int = 1,
    **options,
) -> FaceBatchResult:
    """``process_images`` over ``workers`` processes, each loading its models once and
    running ``worker_threads`` threads (one per core: more only oversubscribes).

    Results keep input order. With ``workers <= 1`` it runs in this process.
    """
    from tqdm.auto import tqdm

    items = list(items)
    bar = tqdm(total=len(items), desc=description, unit="img", disable=not progress)
    if workers <= 1:
        result = process_images(
            items,
            get_detector(detector_spec),
            get_embedder(embedder_spec),
            on_progress=bar.update,
            **options,
        )
        bar.close()
        return result
    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    merged = FaceBatchResult()
    parts: list[np.ndarray] = []
    aligned_parts: list[np.ndarray] = []
    with ProcessPoolExecutor(
        workers,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(detector_spec, embedder_spec, worker_threads),
    ) as pool:
        for part in pool.map(_run_chunk, chunks, [options] * len(chunks)):
            merged.outcomes.extend(part.outcomes)
            parts.append(part.embeddings)
            if part.aligned is not None:
                aligned_parts.append(part.aligned)
            bar.update(len(part.outcomes))
    bar.close()
    merged.embeddings = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    merged.aligned = np.concatenate(aligned_parts) if aligned_parts else None
    return merged


def result_to_table(result: FaceBatchResult, embedder: dict | None = None):
    """Outcomes + embeddings as a pyarrow table (embedding: fixed-size list of float32)."""
    import pyarrow as pa

    rows = [asdict(o) for o in result.outcomes]
    table = pa.Table.from_pylist(rows) if rows else pa.table({"key": pa.array([], pa.string())})
    embeddings = result.embeddings if result.embeddings is not None else np.zeros((0, 0))
    if len(rows):
        dim = embeddings.shape[1]
        flat = pa.array(embeddings.reshape(-1).astype(np.float32), type=pa.float32())
        table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, dim))
    if embedder:
        meta = {f"facefoundry.embedder.{k}": str(v) for k, v in embedder.items()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    return table
