"""False-match-rate calibration: a cosine threshold per embedder from real impostor pairs.

Cosine values mean different things for different models (SFace impostors centre
near 0, dlib's near 0.5), so a threshold can be set as a false-match rate instead:
the cosine above which that share of real impostor image pairs (two images of
different people, LFW by default) score. A calibration is a table FMR -> cosine
for one embedder, tied to its weights by SHA-256; it is made once with
``facefoundry calibrate`` (or ``calibrate_images``) and looked up in this order:
an explicit file or folder, ``$FACEFOUNDRY_CACHE_DIR/calibration/``, the
built-in tables of ``filters.calibration_tables`` (SFace and dlib on LFW).
Between grid points the table is interpolated linearly in log10(FMR).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from facefoundry.atomic import write_text_atomic
from facefoundry.errors import UsageError
from facefoundry.filters.groups import valid_rows
from facefoundry.filters.pairs import genuine_pairs, impostor_pairs, pair_scores
from facefoundry.filters.samples import embedder_name
from facefoundry.filters.settings import Threshold

logger = logging.getLogger(__name__)

MIN_EVENTS = 10  # an FMR needs at least this many impostor pairs above its threshold
FMR_GRID = tuple(float(f"{10 ** (-k / 10):.3g}") for k in range(10, 61))  # 1e-1 .. 1e-6


class CalibrationError(UsageError, ValueError):
    """No usable calibration; the message says how to make one."""


class Calibration(BaseModel):
    """Cosine thresholds at false-match rates for one embedder (weights by checksum)."""

    model_config = ConfigDict(extra="forbid")

    embedder: str
    checksum: str | None
    source: str
    identities: int
    images: int
    impostor_pairs: int
    genuine_pairs: int
    seed: int
    flip_tta: bool = False
    created: str = ""
    impostor_mean: float
    impostor_std: float
    genuine_mean: float | None = None
    thresholds: dict[str, float]  # FMR (as text) -> cosine; FMR(t) = share of impostors > t

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        items = sorted((float(k), v) for k, v in self.thresholds.items())
        return np.array([k for k, _ in items]), np.array([v for _, v in items])

    def cos_at(self, fmr: float) -> float:
        """Cosine threshold at a false-match rate (log-linear between grid points)."""
        fmrs, cosines = self.table()
        if not fmrs[0] <= fmr <= fmrs[-1]:
            raise CalibrationError(
                f"FMR {fmr:g} is outside the {self.embedder} calibration range "
                f"{fmrs[0]:g}..{fmrs[-1]:g} ({self.impostor_pairs} impostor pairs from "
                f"{self.source}); calibrate with more pairs or give a cosine threshold"
            )
        return float(np.interp(np.log10(fmr), np.log10(fmrs), cosines))

    def fmr_at(self, cos: float) -> float | None:
        """Estimated false-match rate of a cosine threshold; None outside the table."""
        fmrs, cosines = self.table()
        order = np.argsort(cosines)
        if not cosines.min() <= cos <= cosines.max():
            return None
        return float(10 ** np.interp(cos, cosines[order], np.log10(fmrs[order])))


def threshold_at_fmr(impostor: np.ndarray, fmr: float) -> float:
    """The lowest impostor score t with share(impostor > t) <= fmr (cosine)."""
    ranked = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    if not len(ranked):
        raise CalibrationError("no impostor scores to calibrate on")
    allowed = int(np.floor(fmr * len(ranked)))
    if allowed >= len(ranked):
        return float(ranked[-1])
    return float(ranked[allowed])


def calibrate_scores(
    impostor: np.ndarray, grid: Iterable[float] = FMR_GRID, min_events: int = MIN_EVENTS
) -> dict[str, float]:
    """{FMR: cosine} for each grid FMR that at least ``min_events`` impostor pairs resolve."""
    n = len(impostor)
    return {f"{fmr:.3g}": threshold_at_fmr(impostor, fmr) for fmr in grid if fmr * n >= min_events}


def calibrate_embeddings(
    vectors: np.ndarray,
    identities: np.ndarray,
    embedder: str,
    checksum: str | None,
    *,
    n_pairs: int = 2_000_000,
    seed: int = 0,
    source: str = "LFW",
    flip_tta: bool = False,
) -> Calibration:
    """A calibration from real embeddings grouped by person (rows with NaN/zero vectors skipped)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    ok = valid_rows(vectors)
    names, groups = np.unique(np.asarray(identities)[ok], return_inverse=True)
    groups = groups.reshape(-1)
    vectors = vectors[ok]
    a, b = impostor_pairs(groups, n_pairs, seed)
    if not len(a):
        raise CalibrationError("calibration needs embeddings of at least two people")
    impostor = pair_scores(vectors, a, b)
    ga, gb, _ = genuine_pairs(groups, 200_000, seed)
    genuine = pair_scores(vectors, ga, gb)
    return Calibration(
        embedder=embedder_name(embedder),
        checksum=checksum,
        source=source,
        identities=int(len(names)),
        images=int(len(vectors)),
        impostor_pairs=int(len(impostor)),
        genuine_pairs=int(len(genuine)),
        seed=seed,
        flip_tta=flip_tta,
        created=time.strftime("%Y-%m-%d"),
        impostor_mean=float(impostor.mean()),
        impostor_std=float(impostor.std()),
        genuine_mean=float(genuine.mean()) if len(genuine) else None,
        thresholds=calibrate_scores(impostor),
    )


def calibrate_images(
    items: Iterable[tuple[str, object, bytes | str | Path]],
    embedder: str = "sface",
    *,
    detector: str = "yunet",
    workers: int = 2,
    n_pairs: int = 2_000_000,
    seed: int = 0,
    source: str = "LFW",
    progress: bool = True,
) -> Calibration:
    """Embed real images (key, person, bytes or path) as the embed stage does, then calibrate.

    No flip TTA and faces the detector misses are left out, like candidate samples.
    """
    from facefoundry.faces import get_embedder, process_images_parallel

    items = list(items)
    person = {key: identity for key, identity, _ in items}
    result = process_images_parallel(
        [(key, data) for key, _, data in items],
        detector,
        embedder,
        workers=workers,
        progress=progress,
        description=f"calibrate {embedder_name(embedder)}",
        no_face="reject",
    )
    identities = np.array([person[o.key] for o in result.outcomes], dtype=object)
    model = get_embedder(embedder)
    return calibrate_embeddings(
        result.embeddings,
        identities,
        model.name,
        model.checksum,
        n_pairs=n_pairs,
        seed=seed,
        source=source,
    )


def cache_dir() -> Path:
    """``$FACEFOUNDRY_CACHE_DIR/calibration`` (default ``~/.cache/facefoundry/calibration``)."""
    root = os.environ.get("FACEFOUNDRY_CACHE_DIR", str(Path.home() / ".cache" / "facefoundry"))
    return Path(root).expanduser() / "calibration"


def calibration_filename(calibration: Calibration) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in calibration.embedder)
    return f"{safe}-{(calibration.checksum or 'unknown')[:12]}.json"


def save_calibration(calibration: Calibration, path: str | Path | None = None) -> Path:
    """Write a calibration JSON (default: into the cache folder, named by embedder and checksum)."""
    path = Path(path) if path else cache_dir()
    if path.suffix != ".json":
        path = path / calibration_filename(calibration)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, calibration.model_dump_json(indent=2) + "\n")
    return path


def _candidates(location: str | Path | None) -> list[Calibration]:
    from facefoundry.filters.calibration_tables import BUILTIN

    found: list[Calibration] = []
    paths: list[Path] = []
    for place in ([Path(location)] if location else []) + [cache_dir()]:
        if place.is_file():
            paths.append(place)
        elif place.is_dir():
            paths.extend(sorted(place.glob("*.json")))
        elif location and place == Path(location):
            raise CalibrationError(f"calibration {place} does not exist")
    for path in paths:
        try:
            found.append(Calibration.model_validate(json.loads(path.read_text())))
        except (ValueError, OSError) as error:
            logger.warning("ignoring calibration %s: %s", path, error)
    found.extend(Calibration.model_validate(entry) for entry in BUILTIN)
    return found


def find_calibration(
    embedder: str,
    checksum: str | None = None,
    location: str | Path | None = None,
    *,
    warn: bool = True,
) -> Calibration:
    """The first calibration for this embedder (and these weights, when the checksum is known)."""
    name = embedder_name(embedder)
    for calibration in _candidates(location):
        if calibration.embedder != name:
            continue
        if checksum and calibration.checksum and calibration.checksum != checksum:
            continue
        if not checksum and warn:
            logger.warning("using the %s calibration without checking its weights' checksum", name)
        return calibration
    raise CalibrationError(
        f"no false-match-rate calibration for {name}"
        + (f" (weights {checksum[:12]})" if checksum else "")
        + ": run `facefoundry calibrate --embedder "
        + f"{embedder}` (LFW impostor pairs), pass a calibration file, or give the threshold "
        "as a cosine for this embedder"
    )


class ResolvedThreshold(BaseModel):
    """A threshold as a cosine for one embedder, with where it came from (for the report)."""

    model_config = ConfigDict(extra="forbid")

    cos: float
    embedder: str
    fmr: float | None  # the requested FMR, or the calibration's estimate for a cosine
    source: str  # "cosine" or "calibration: <source>, <pairs> impostor pairs"


def resolve_threshold(
    threshold: Threshold,
    embedder: str,
    checksum: str | None = None,
    location: str | Path | None = None,
) -> ResolvedThreshold:
    """Turn a cosine or an FMR threshold into this embedder's cosine."""
    name = embedder_name(embedder)
    if threshold.cos is not None:
        if threshold.embedder and embedder_name(threshold.embedder) != name:
            raise CalibrationError(
                f"threshold cos {threshold.cos:g} was set for {threshold.embedder} but is "
                f"applied with {name}: cosines do not carry over between models; give one for "
                f"{name} or a false-match rate ({{fmr: ...}})"
            )
        try:
            estimate = find_calibration(name, checksum, location, warn=False).fmr_at(threshold.cos)
        except CalibrationError:
            estimate = None
        return ResolvedThreshold(cos=threshold.cos, embedder=name, fmr=estimate, source="cosine")
    calibration = find_calibration(name, checksum, location)
    return ResolvedThreshold(
        cos=calibration.cos_at(threshold.fmr),
        embedder=name,
        fmr=threshold.fmr,
        source=f"calibration: {calibration.source}, {calibration.impostor_pairs} impostor pairs",
    )
