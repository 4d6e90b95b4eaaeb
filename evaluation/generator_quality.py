"""How good is a generator's output as face-recognition training data, before training?

One pass over generated images (N aligned 112 px faces, an identity per image and the
condition each was drawn for) gives the figures the generator issue is judged on:

- ``face_rate``: YuNet finds a face;
- ``condition_cos``: the filter embedder's cosine between a face and its own condition
  (how much of the identity the generator keeps);
- ``identities_survived``: identities the filter keeps with the demo's rules (the
  calibrated SFace thresholds: samples, then centroid de-duplication at FMR 1e-4);
  ``judge_identities_survived``: the same rules with dlib deciding (its own thresholds);
- ``judge_gap`` / ``judge_eer``: genuine-minus-impostor cosine and EER of the judge
  (dlib: a model the generator never saw) over every pair of detected faces;
- ``identity_dimensions``: the participation ratio of the identities' centroids (filter
  embedder), how many directions the identities really spread over; compare it with the
  conditions' (``condition_dimensions``) and with real people's at the same count;
- variety without an identity model (``evaluation.variety``): head-pose and illumination
  spread inside an identity, as a ratio to real faces at the same resolution.

The images go through the same path as a run: JPEG 95, detect, align, embed
(``faces.embed_stage.embed_items_parallel``), then the filter's own rules (``filters.decide``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FILTER_EMBEDDER = "sface"
JUDGE_EMBEDDER = "dlib"


@dataclass
class EmbeddedFaces:
    """Detection + embeddings of N images (NaN rows where no usable face)."""

    identity: np.ndarray
    status: np.ndarray
    n_faces: np.ndarray
    det_score: np.ndarray
    landmarks: np.ndarray  # N x 5 x 2 in the 112 px image, NaN without a face
    vectors: dict[str, np.ndarray]
    checksums: dict[str, str]

    @property
    def found(self) -> np.ndarray:
        return self.status == "ok"


def embed_generated(
    images: np.ndarray,
    identity: np.ndarray,
    embedders: tuple[str, ...] = (FILTER_EMBEDDER, JUDGE_EMBEDDER),
    detector: str = "yunet",
    jpeg_quality: int = 95,
    workers: int | None = None,
) -> EmbeddedFaces:
    """Encode as a run stores them, then detect once and embed with every embedder, on
    ``workers`` processes (default: one per core), as the embed stage does."""
    import cv2

    from facefoundry.faces.embed_stage import embed_items_parallel, worker_models
    from facefoundry.faces.settings import FaceSettings, embed_workers

    _, models = worker_models(detector, list(embedders))  # names and checksums
    if workers is None:
        workers = embed_workers(FaceSettings())
    items = []
    for row, (image, who) in enumerate(zip(images, identity, strict=True)):
        ok, data = cv2.imencode(
            ".jpg", image[..., ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality]
        )
        if not ok:
            raise ValueError(f"image {row} could not be encoded")
        items.append((f"{int(who):07d}_{row:06d}", int(who), data.tobytes()))
    table = embed_items_parallel(items, detector, list(embedders), workers)
    landmarks = np.full((len(items), 5, 2), np.nan, dtype=np.float32)
    for row, points in enumerate(table.column("landmarks").to_pylist()):
        if points:
            landmarks[row] = np.asarray(points, dtype=np.float32).reshape(5, 2)
    return EmbeddedFaces(
        identity=np.asarray(identity),
        status=np.asarray(table.column("status").to_pylist(), dtype=object),
        n_faces=np.asarray(table.column("n_faces").to_pylist(), dtype=np.int32),
        det_score=np.nan_to_num(
            np.asarray(table.column("det_score").to_pylist(), dtype=np.float32)
        ),
        landmarks=landmarks,
        vectors={
            model.name: np.stack(table.column(f"embedding_{model.name}").to_numpy(False))
            for model in models
        },
        checksums={model.name: model.checksum for model in models},
    )


def filter_embedded(faces: EmbeddedFaces, settings=None):
    """The filter's decisions on embedded faces with ``settings`` (default: the demo's
    rules, SFace deciding, thresholds from the calibration on real LFW people): the
    SampleTable (its ``groups`` index the identities), the FilterResult and the rules."""
    from facefoundry.filters.decide import apply_filters
    from facefoundry.filters.samples import SampleTable
    from facefoundry.filters.settings import FilterSettings
    from facefoundry.filters.stage import resolve_rules

    settings = settings or FilterSettings(
        embedder=FILTER_EMBEDDER, judge_embedder=JUDGE_EMBEDDER, min_samples=2
    )
    table = SampleTable(
        keys=np.array([f"{i:07d}" for i in range(len(faces.identity))]),
        identities=faces.identity,
        embeddings=faces.vectors,
        status=faces.status,
        n_faces=faces.n_faces,
        det_score=faces.det_score,
        checksums=faces.checksums,
    )
    rules, _ = resolve_rules(settings, table.checksums)
    return table, apply_filters(table, rules), rules


def identities_survived(faces: EmbeddedFaces, settings=None) -> dict:
    """Identities (and samples) the filter keeps with ``settings`` (default: the demo's
    rules, SFace deciding, thresholds from the calibration on real LFW people)."""
    table, result, rules = filter_embedded(faces, settings)
    reasons = result.identities.reason
    return {
        "identities": int(table.n_groups),
        "identities_survived": int(sum(r is None for r in reasons)),
        "identities_duplicate": int(sum(r == "duplicate_identity" for r in reasons)),
        "samples_kept": int(result.kept.sum()),
        "tau_inter": rules.tau_inter,
    }


def judge_identities_survived(faces: EmbeddedFaces, settings=None) -> int:
    """Identities kept by the same rules with the judge (dlib) embedding and deciding at
    its own calibrated thresholds: a count the generator's SFace-steered training and
    selection cannot inflate (100 real LFW people with 4-8 photos: ~48 as 32 px faces,
    ~82 at full resolution; BENCHMARKS.md)."""
    from facefoundry.filters.settings import FilterSettings

    settings = settings or FilterSettings(
        embedder=FILTER_EMBEDDER, judge_embedder=JUDGE_EMBEDDER, min_samples=2
    )
    swapped = settings.model_copy(
        update={"embedder": settings.judge_embedder, "judge_embedder": settings.embedder}
    )
    return identities_survived(faces, swapped)["identities_survived"]


def third_judge_figures(faces: EmbeddedFaces, embedder: str) -> dict:
    """Kept identities (the filter's rules with ``embedder`` deciding at its own calibrated
    thresholds) and that embedder's gap and EER: for a judge that neither steers nor
    filters, e.g. our own recognizer exported as ``onnx:PATH``. Keys ``third_*``."""
    from facefoundry.filters.samples import embedder_name
    from facefoundry.filters.settings import FilterSettings

    name = embedder_name(embedder)
    other = JUDGE_EMBEDDER if name == FILTER_EMBEDDER else FILTER_EMBEDDER  # unused by the rules
    settings = FilterSettings(embedder=embedder, judge_embedder=other, min_samples=2)
    figures = {
        "third_judge": name,
        "third_identities_survived": identities_survived(faces, settings)["identities_survived"],
    }
    separated = judge_figures(faces, name)
    figures.update({f"third_{k.removeprefix('judge_')}": v for k, v in separated.items()})
    return figures


def condition_cos(faces: EmbeddedFaces, conditions: np.ndarray) -> float:
    """Mean cosine between each detected face's filter embedding and its own condition."""
    vectors = faces.vectors[FILTER_EMBEDDER]
    usable = faces.found & np.isfinite(vectors).all(axis=1)
    target = conditions / np.linalg.norm(conditions, axis=1, keepdims=True)
    return float(np.mean(np.sum(vectors[usable] * target[usable], axis=1)))


def separation(vectors: np.ndarray, identity: np.ndarray) -> dict:
    """Gap (mean genuine - mean impostor cosine) and EER over every pair of rows.

    Pairs are scored in bounded chunks (``filters.pairs.pair_scores``): gathering both
    rows of every pair at once takes n^2 x dim floats, 23 GB for LFW DevTrain's 9,525."""
    from facefoundry.evaluation.protocol import equal_error_rate
    from facefoundry.filters.pairs import pair_scores

    identity = np.asarray(identity)
    first, second = np.triu_indices(len(vectors), k=1)
    scores = pair_scores(vectors, first, second)
    same = identity[first] == identity[second]
    if not same.any() or same.all():
        return {"gap": float("nan"), "eer": float("nan")}
    return {
        "gap": float(scores[same].mean() - scores[~same].mean()),
        "eer": float(equal_error_rate(scores, same)[0]),
        "genuine_cos": float(scores[same].mean()),
        "impostor_cos": float(scores[~same].mean()),
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
    }


def judge_figures(faces: EmbeddedFaces, judge: str = JUDGE_EMBEDDER) -> dict:
    """The judge's separation over every pair of detected faces (no filter applied)."""
    vectors = faces.vectors[judge]
    usable = faces.found & np.isfinite(vectors).all(axis=1)
    figures = separation(vectors[usable], faces.identity[usable])
    return {f"judge_{key}": value for key, value in figures.items() if "pairs" not in key}


def participation_ratio(points: np.ndarray) -> float:
    """Effective number of dimensions a cloud of points spreads over: (sum of the
    covariance eigenvalues)^2 / sum of their squares. d for an isotropic cloud in d
    dimensions, 1 for points on a line; at most n - 1 for n points, so compare clouds of
    the same size."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        return float("nan")
    centred = points - points.mean(axis=0)
    eigenvalues = np.linalg.svd(centred, compute_uv=False) ** 2
    total = eigenvalues.sum()
    return float(total**2 / np.square(eigenvalues).sum()) if total > 0 else 0.0


def identity_centroids(
    vectors: np.ndarray, identity: np.ndarray, min_faces: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """(identity ids, unit centroids) of the identities with at least ``min_faces`` usable
    rows (the filter's min_samples), through ``evaluation.leakage.person_centroids``."""
    from facefoundry.evaluation.leakage import person_centroids
    from facefoundry.filters.groups import valid_rows

    usable = valid_rows(vectors)
    values, counts = np.unique(identity[usable], return_counts=True)
    enough = np.isin(identity, values[counts >= min_faces]) & usable
    return person_centroids(vectors[enough], identity[enough])


def identity_dimensions(faces: EmbeddedFaces, embedder: str = FILTER_EMBEDDER) -> float:
    """Participation ratio of the identities' centroids in ``embedder``'s space. Why: the
    de-duplication removes identities whose centroids crowd together; a generator whose
    identities spread over fewer directions than real people's crowds them."""
    vectors = np.where(faces.found[:, None], faces.vectors[embedder], np.nan)
    return participation_ratio(identity_centroids(vectors, faces.identity)[1])


def quality_report(
    images: np.ndarray,
    identity: np.ndarray,
    conditions: np.ndarray | None = None,
    reference: dict | None = None,
    filter_settings=None,
    third_judge: str = "",
) -> dict:
    """Every figure of the module docstring for one set of images; ``reference`` is this
    function's result on real faces (its ``variety`` entry supplies the spread ratios).
    ``third_judge`` (an embedder spec, e.g. ``onnx:PATH``) adds its ``third_*`` figures,
    from the same detection pass."""
    from facefoundry.evaluation.variety import variety_report

    embedders = (FILTER_EMBEDDER, JUDGE_EMBEDDER)
    if third_judge and third_judge not in embedders:
        embedders += (third_judge,)
    faces = embed_generated(images, identity, embedders)
    report = {
        "images": int(len(images)),
        "face_rate": float(faces.found.mean()),
        **identities_survived(faces, filter_settings),
        "judge_identities_survived": judge_identities_survived(faces, filter_settings),
        **judge_figures(faces),
        "identity_dimensions": identity_dimensions(faces),
    }
    if third_judge:
        report.update(third_judge_figures(faces, third_judge))
    if conditions is not None:
        report["condition_cos"] = condition_cos(faces, conditions)
        _, first = np.unique(identity, return_index=True)
        report["condition_dimensions"] = participation_ratio(conditions[first])
    variety = variety_report(images, identity, faces.landmarks, (reference or {}).get("variety"))
    report["variety"] = variety
    for key in ("pose_spread_ratio", "illumination_spread_ratio", "pixel_diversity_ratio"):
        if key in variety:
            report[key] = variety[key]
    return report
