"""Detail guidance: steer each sample away from its condition's "major-axis twin".

Measured on the default model (``benchmarks/bench_identity_geometry.py``): generated
faces follow a condition's few dominant axes (the prior's first covariance axes: the
attributes faces vary most in) closely and the many weaker axes little, so 100 synthetic
identities spread over ~26 directions where 100 real people spread over ~53, and the
de-duplication removes the crowded ones. The twin of a condition keeps only its
component on the prior's ``axes`` strongest axes (plus the prior mean); the difference
between the denoiser's outputs for the condition and for its twin is what the weaker
axes contribute, and guidance amplifies it like classifier-free guidance amplifies the
condition as a whole:

    out = uncond + g (cond - uncond) + h (cond - twin)

One more model evaluation per step (three instead of two with guidance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def major_axes(prior: dict[str, np.ndarray], axes: int) -> tuple[np.ndarray, np.ndarray]:
    """The prior's mean and its ``axes`` strongest covariance axes (d x axes, orthonormal)
    from a fitted identity prior (``generators.identities``: mean + Cholesky factor)."""
    factor = np.asarray(prior["factor"], dtype=np.float64)
    dim = factor.shape[0]
    if not 1 <= axes <= dim:
        raise ValueError(f"detail axes must be in 1..{dim}, got {axes}")
    eigenvalues, vectors = np.linalg.eigh(factor @ factor.T)
    order = np.argsort(eigenvalues)[::-1][:axes]
    return np.asarray(prior["mean"], dtype=np.float64), vectors[:, order]


def major_axis_twins(identities: torch.Tensor, mean: np.ndarray, basis: np.ndarray) -> torch.Tensor:
    """Unit vectors: each identity's deviation from ``mean`` projected on ``basis``,
    plus ``mean``. With every axis kept a twin is its identity (up to rounding)."""
    values = identities.double().cpu()
    mean_t = torch.from_numpy(mean)
    basis_t = torch.from_numpy(basis)
    twins = mean_t + (values - mean_t) @ basis_t @ basis_t.T
    twins = twins / twins.norm(dim=1, keepdim=True)
    return twins.to(identities.device, identities.dtype)


def load_major_axes(model_folder: str | Path, axes: int) -> tuple[np.ndarray, np.ndarray]:
    from facefoundry.generators.identities import PRIOR_FILE, load_identity_prior

    return major_axes(load_identity_prior(Path(model_folder) / PRIOR_FILE), axes)
