"""Face training sets for generators: aligned faces + cached conditioning embeddings.

A training set is one ``.npz`` file: ``faces`` (N x S x S x 3 uint8 RGB, aligned to the
ArcFace template and resized to S), ``embeddings`` (N x D float32 unit vectors of the
conditioning embedder, computed on the full 112 px aligned face), ``labels`` (N int
person index), ``names`` and, from prepare-lfw, ``source`` (where the images came
from, e.g. ``{"source": "lfw", "people_file": "peopleDevTrain.txt"}``: a trained model
records it, see ``generators.training_record``). Embeddings are computed once here,
never in the training loop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facefoundry.atomic import atomic_open

logger = logging.getLogger(__name__)


@dataclass
class FaceTrainingSet:
    faces: np.ndarray
    embeddings: np.ndarray
    labels: np.ndarray
    names: list[str]
    embedder: dict
    source: dict | None = None

    def __len__(self) -> int:
        return len(self.faces)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as handle:
            np.savez(
                handle,
                faces=self.faces,
                embeddings=self.embeddings,
                labels=self.labels,
                names=np.array(self.names),
                embedder=np.array(json.dumps(self.embedder)),
                **({"source": np.array(json.dumps(self.source))} if self.source else {}),
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> FaceTrainingSet:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training set {path} does not exist")
        with np.load(path, allow_pickle=False) as data:
            return cls(
                data["faces"],
                data["embeddings"].astype(np.float32),
                data["labels"],
                [str(n) for n in data["names"]],
                json.loads(str(data["embedder"])),
                json.loads(str(data["source"])) if "source" in data.files else None,
            )


def build_training_set(
    items: list[tuple[str, bytes]],
    labels: list[int],
    size: int = 64,
    embedder: str = "sface",
    detector: str = "yunet",
    workers: int = 2,
    progress: bool = True,
    source: dict | None = None,
) -> tuple[FaceTrainingSet, dict[str, int]]:
    """Detect, align and embed images into a training set; images without a usable face
    are left out and counted (the returned dict is the outcome summary). ``source`` says
    where the images came from (kept in the file, recorded in models trained on it)."""
    from facefoundry.faces import get_embedder, process_images_parallel

    result = process_images_parallel(
        items,
        detector,
        embedder,
        workers=workers,
        progress=progress,
        description="prepare faces",
        no_face="reject",
        keep_aligned=size,
    )
    usable = np.array([o.embedded for o in result.outcomes], dtype=bool)
    model = get_embedder(embedder)
    training = FaceTrainingSet(
        faces=result.aligned[usable],
        embeddings=result.embeddings[usable].astype(np.float32),
        labels=np.asarray(labels, dtype=np.int64)[usable],
        names=[o.key for o, ok in zip(result.outcomes, usable, strict=True) if ok],
        embedder=model.describe(),
        source=source,
    )
    return training, result.summary()
