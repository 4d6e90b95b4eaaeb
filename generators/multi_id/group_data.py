"""Group training images synthesised from single aligned faces.

WithAnyone trains on multi-person images with a known identity per face box. Real group
photos with reliable per-face labels are scarce, so here each training image is built
by pasting K aligned faces of K different people into a seeded non-overlapping layout:
the identity (embedding) of every box is then known exactly, and the boxes are the
pasted pixel rectangles, so the identity routing and the face crops line up.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from facefoundry.generators.multi_id.layout import sample_layout
from facefoundry.generators.multi_id.train import MultiIdBatch
from facefoundry.generators.seeds import sample_seed
from facefoundry.generators.training_data import FaceTrainingSet


class GroupCanvasSet:
    """Deterministic group canvases: ``batch(step, size)`` depends only on (seed, step, index).

    Each image holds ``faces_per_image`` faces of distinct people (labels), one face per
    layout box (``sample_layout``, snapped to whole pixels), on a mid-grey or a smooth
    random ("noise") background. Images are in [-1, 1]; identities are the faces'
    stored conditioning embeddings.
    """

    def __init__(
        self,
        data: FaceTrainingSet,
        faces_per_image: int = 2,
        canvas: int = 64,
        box_min: float = 0.25,
        box_max: float = 0.45,
        margin: float = 0.02,
        background: Literal["grey", "noise"] = "noise",
        seed: int = 0,
    ):
        if background not in ("grey", "noise"):
            raise ValueError(f"background must be 'grey' or 'noise', got {background!r}")
        labels = np.asarray(data.labels)
        self.people = np.unique(labels)
        if len(self.people) < faces_per_image:
            raise ValueError(
                f"{faces_per_image} faces per image need as many different people; the "
                f"training set has {len(self.people)}"
            )
        self.by_person = [np.flatnonzero(labels == p) for p in self.people]
        self.data = data
        self.k, self.canvas, self.background, self.seed = faces_per_image, canvas, background, seed
        self.box_min, self.box_max, self.margin = box_min, box_max, margin

    @property
    def id_dim(self) -> int:
        return int(self.data.embeddings.shape[1])

    def pick(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(face indices (K,), pixel-snapped normalised boxes (K, 4)) of one image."""
        rng = np.random.default_rng(sample_seed(self.seed, step, index, "group-faces"))
        people = rng.choice(len(self.people), size=self.k, replace=False)
        faces = np.array([rng.choice(self.by_person[p]) for p in people], dtype=np.int64)
        layout = sample_layout(
            self.k,
            sample_seed(self.seed, step, index, "layout"),
            self.box_min,
            self.box_max,
            self.margin,
        )
        boxes = np.round(layout * self.canvas) / self.canvas
        return faces, boxes.astype(np.float32)

    def _background(self, step: int, index: int) -> torch.Tensor:
        size = self.canvas
        if self.background == "grey":
            return torch.zeros(3, size, size)
        rng = np.random.default_rng(sample_seed(self.seed, step, index, "group-background"))
        coarse = torch.from_numpy(rng.normal(0.0, 0.35, (1, 3, 4, 4)).astype(np.float32))
        smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        return smooth[0].clamp(-1, 1)

    def image(self, step: int, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (3, S, S) in [-1, 1], identities (K, D), boxes (K, 4)) of one sample."""
        faces, boxes = self.pick(step, index)
        image = self._background(step, index)
        for face_index, box in zip(faces, boxes, strict=True):
            x1, y1, x2, y2 = (int(round(v * self.canvas)) for v in box)
            face = torch.from_numpy(np.ascontiguousarray(self.data.faces[face_index]))
            face = face.permute(2, 0, 1)[None].float() / 127.5 - 1.0
            resized = F.interpolate(
                face, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False, antialias=True
            )
            image[:, y1:y2, x1:x2] = resized[0].clamp(-1, 1)
        identities = torch.from_numpy(self.data.embeddings[faces].astype(np.float32))
        return image, identities, torch.from_numpy(boxes)

    def batch(self, step: int, batch_size: int) -> MultiIdBatch:
        """The training batch of ``step`` (sample ``i`` is ``image(step, i)``)."""
        parts = [self.image(step, i) for i in range(batch_size)]
        images, identities, boxes = (torch.stack(p) for p in zip(*parts, strict=True))
        return MultiIdBatch(images=images, identities=identities, boxes=boxes, targets=None)


__all__ = ["GroupCanvasSet"]
