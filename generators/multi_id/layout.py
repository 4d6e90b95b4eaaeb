"""Face layouts: K non-overlapping square boxes per group image, in normalised coordinates.

Boxes are (x1, y1, x2, y2) in [0, 1] of a square image, so one layout serves the pixel
image, the latents and every attention resolution alike. Seeds come from
``generators.seeds.sample_seed`` (stream ``layout``), never from chunk order.
"""

from __future__ import annotations

import numpy as np
import torch

from facefoundry.generators.seeds import sample_seed


def layout_seed(recipe_seed: int, group: int, sample: int) -> int:
    """The seed of one group image's layout."""
    return sample_seed(recipe_seed, group, sample, "layout")


def sample_layout(
    k: int,
    seed: int,
    box_min: float = 0.25,
    box_max: float = 0.45,
    margin: float = 0.02,
    max_tries: int = 200,
) -> np.ndarray:
    """K square boxes (K x 4 float32) inside the frame, ``margin`` apart from each other and
    the borders; rejection sampling, restarted from scratch when a box cannot be placed."""
    if not 0 < box_min <= box_max <= 1 - 2 * margin:
        raise ValueError(f"box sizes {box_min}..{box_max} do not fit a frame with margin {margin}")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        boxes: list[np.ndarray] = []
        for _ in range(k):
            for _ in range(max_tries):
                side = rng.uniform(box_min, box_max)
                x1, y1 = rng.uniform(margin, 1 - margin - side, 2)
                box = np.array([x1, y1, x1 + side, y1 + side])
                if all(_gap(box, other) >= margin for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == k:
            return np.stack(boxes).astype(np.float32) if k else np.zeros((0, 4), np.float32)
    raise ValueError(
        f"could not place {k} boxes of side {box_min}..{box_max} with margin {margin}; "
        "lower faces_per_image or box_max"
    )


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    """Chebyshev gap between two boxes (negative when they overlap)."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def validate_layout(boxes: np.ndarray | list, tolerance: float = 1e-6) -> np.ndarray:
    """Check user boxes: shape K x 4, inside [0, 1], positive size, pairwise disjoint.

    Raises ValueError naming the offending box(es); returns the boxes as float32.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"layout must be K x 4 boxes (x1, y1, x2, y2), got shape {boxes.shape}")
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"box {i} {boxes[i].tolist()} has no area (need x2 > x1, y2 > y1)")
        if min(x1, y1) < -tolerance or max(x2, y2) > 1 + tolerance:
            raise ValueError(
                f"box {i} {boxes[i].tolist()} is out of frame: coordinates must lie in [0, 1]"
            )
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if _gap(boxes[i], boxes[j]) < 0:
                raise ValueError(
                    f"boxes {i} {boxes[i].tolist()} and {j} {boxes[j].tolist()} overlap: each "
                    "position may belong to one identity only"
                )
    return boxes


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, K, 4) normalised boxes -> (B, K, height*width) bool: cell centre inside box.

    Disjoint boxes give disjoint masks at every resolution, which is what makes the
    identity routing exact.
    """
    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    x1, y1, x2, y2 = (boxes[..., i, None, None] for i in range(4))
    inside = (xs >= x1) & (xs < x2) & (ys[:, None] >= y1) & (ys[:, None] < y2)
    return inside.flatten(-2)
