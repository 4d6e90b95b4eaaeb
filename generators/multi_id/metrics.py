"""Identity metrics of multi-identity samples: similarity and WithAnyone's copy-paste.

Copy-paste (WithAnyone, Xu et al. 2025, arXiv:2510.14975; MultiID-Bench code,
``copy_geo``): with unit embeddings g (generated face), t (target: another image of the
same identity) and r (the reference given to the model as input), and angles
theta(a, b) = arccos(cos(a, b)),

    copy_paste = (theta(g, t) - theta(g, r)) / theta(t, r)

in [-1, 1]: +1 means the generated face sits on the reference (copied), -1 on the target;
0 is returned when t and r coincide (theta(t, r) ~ 0).
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def identity_similarity(crops: np.ndarray, identities: np.ndarray, identity_of: np.ndarray) -> dict:
    """Mean cosine of each crop embedding (N, D) to its identity (identities[identity_of]),
    per identity index and overall."""
    crops, identities = _unit(crops), _unit(identities)
    identity_of = np.asarray(identity_of)
    cos = np.sum(crops * identities[identity_of], axis=1)
    per = {int(i): float(cos[identity_of == i].mean()) for i in np.unique(identity_of)}
    return {"mean": float(cos.mean()) if len(cos) else float("nan"), "per_identity": per}


def copy_paste(
    generated: np.ndarray, target: np.ndarray, reference: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """WithAnyone's copy-paste score per row of (N, D) generated / target / reference."""
    g, t, r = (
        _unit(np.atleast_2d(generated)),
        _unit(np.atleast_2d(target)),
        _unit(np.atleast_2d(reference)),
    )

    def angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.arccos(np.clip(np.sum(a * b, axis=1), -1.0, 1.0))

    theta_tr = angle(t, r)
    score = (angle(g, t) - angle(g, r)) / np.maximum(theta_tr, eps)
    return np.where(theta_tr < eps, 0.0, score)
