"""An identity term for IDiff-Face training (issue 16): the face the denoiser implies
should be recognised as the identity it was conditioned on.

At each training step the model's output gives a predicted clean sample x0
(``generators.denoise.predicted_x0``); it is upsampled bilinearly to the 112 px SFace
template, mapped to 0..255 and embedded by the differentiable torch SFace
(``recognition.sface_torch``). The term is ``1 - cos(SFace(x0), condition)`` per row.

Timestep weighting: a noisy x_t at large t implies only a blurry mean face, whose
identity is meaningless, so the term is weighted by

    w(t) = (1 - t / (max_t * T))**2   for t <= max_t * T,   0 above,

with T the number of training timesteps. This combines ID-Booth's (1 - t/T)^2 weighting
with WithAnyone's restriction of its ID loss to t <= 0.6 T (``max_t=0.6``, the default).
The batch reduction is the mean of ``w * (1 - cos)`` over all rows, like the min-SNR
weighted denoising loss, so rows with w = 0 (high noise, unconditional rows) count as 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facefoundry.recognition.sface_torch import (
    EMBEDDING_DIM,
    INPUT_SIZE,
    normalise,
    preprocess_tensor,
)

RECOGNIZER = "sface"


def identity_weights(
    timesteps: torch.Tensor, num_train_timesteps: int, max_t: float
) -> torch.Tensor:
    """Per-row weights: ``(1 - t / (max_t * T))**2`` up to ``max_t * T``, exactly 0 above.

    1 at t = 0; all zeros when ``max_t <= 0``.
    """
    t = timesteps.float()
    cutoff = float(max_t) * num_train_timesteps
    if cutoff <= 0:
        return torch.zeros_like(t)
    weights = (1.0 - t / cutoff).clamp(min=0.0).square()
    return torch.where(t > cutoff, torch.zeros_like(weights), weights)


def check_identity_conditioning(embedder: str, id_dim: int) -> None:
    """The term compares SFace embeddings with the conditioning vectors: both must be
    128-d SFace vectors."""
    if embedder != RECOGNIZER or id_dim != EMBEDDING_DIM:
        raise ValueError(
            f"the identity loss compares SFace {EMBEDDING_DIM}-d embeddings with the "
            f"conditioning vectors, but this model is conditioned on {id_dim}-d "
            f"{embedder!r} vectors; use identity_weight=0 or an sface-conditioned model"
        )


def _check_inputs(x0_pred: torch.Tensor, condition: torch.Tensor) -> None:
    if x0_pred.dim() != 4 or x0_pred.shape[1] != 3:
        raise ValueError(
            f"identity loss needs N x 3 x H x W pixel images, got {tuple(x0_pred.shape)}"
            " (a latent model must decode x0 through its VAE first)"
        )
    if condition.shape != (len(x0_pred), EMBEDDING_DIM):
        raise ValueError(
            f"identity loss needs N x {EMBEDDING_DIM} SFace condition vectors, got "
            f"{tuple(condition.shape)} for {len(x0_pred)} images"
        )


def whitening(embeddings: torch.Tensor, shrinkage: float = 0.1) -> dict[str, torch.Tensor]:
    """The training people's whitened space: ``{"mean", "matrix"}`` with matrix =
    (cov + shrinkage x mean eigenvalue x I)^(-1/2) of ``embeddings`` (N x d).

    Why: a cosine on raw SFace vectors is dominated by the shared mean direction and by
    the few axes along which faces vary most (the first covariance axis carries 5.5x the
    mean variance on LFW DevTrain). A generator that follows only those already scores
    well, and its identities then spread over half the directions real people do
    (``bench_identity_geometry.py``). In the whitened space every axis counts alike;
    the shrinkage keeps the weakest axes from being amplified into noise."""
    data = embeddings.double()
    mean = data.mean(dim=0)
    centred = data - mean
    cov = centred.T @ centred / max(len(data) - 1, 1)
    eigenvalues, vectors = torch.linalg.eigh(cov)
    eigenvalues = eigenvalues.clamp(min=0) + shrinkage * eigenvalues.clamp(min=0).mean()
    matrix = vectors @ torch.diag(eigenvalues.rsqrt()) @ vectors.T
    return {"mean": mean.float(), "matrix": matrix.float()}


def to_space(vectors: torch.Tensor, space: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Unit vectors in ``space`` (``whitening``), or the unit vectors themselves."""
    if space is None:
        return normalise(vectors)
    centred = vectors - space["mean"].to(vectors.device)
    return normalise(centred @ space["matrix"].to(vectors.device))


def embed_predicted(images: torch.Tensor, recognizer: torch.nn.Module) -> torch.Tensor:
    """Unit SFace embeddings of predicted x0 images in [-1, 1] (any size: upsampled
    bilinearly to 112 px first); differentiable with respect to ``images``."""
    images = images.float()
    if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        images = F.interpolate(
            images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
        )
    return normalise(recognizer(preprocess_tensor((images + 1.0) * 127.5)).float())


def identity_loss(
    x0_pred: torch.Tensor,
    condition: torch.Tensor,
    recognizer: torch.nn.Module,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted mean over the batch of ``1 - cos(SFace(x0_pred), condition)``.

    ``x0_pred``: N x 3 x H x W predicted clean images in [-1, 1] (pixel space, e.g. the
    model's 32 px); ``condition``: N x 128 conditioning vectors (unit SFace vectors);
    ``weights``: N per-row weights (``identity_weights``). Rows with weight 0 skip the
    recognizer; when all are 0 it is not called at all and the result is a zero.
    Differentiable with respect to ``x0_pred``.
    """
    return identity_terms(x0_pred, condition, recognizer, weights)["identity"]


def identity_terms(
    x0_pred: torch.Tensor,
    condition: torch.Tensor,
    recognizer: torch.nn.Module,
    weights: torch.Tensor,
    negatives: torch.Tensor | None = None,
    scale: float = 16.0,
    space: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """``identity`` (see ``identity_loss``) and, given ``negatives``, ``contrast``: the
    weighted batch mean of an InfoNCE loss that asks each predicted face to be closer to
    its own condition than to any of the ``negatives`` (M x 128 unit vectors of other
    people), logits = ``scale`` x cosine.

    Why: the cosine term pulls a face toward its condition, but what removes synthetic
    identities is that different conditions draw the same face (de-duplication). The
    contrast term pays for the part of the face that tells this condition from others,
    the shared "average face" earns nothing. Negatives too close to a row's own
    condition (cosine > 0.5, e.g. the same person's centroid) are masked for that row.
    One recognizer pass serves both terms. ``space`` (``whitening``): both terms compare
    the vectors there instead of on the raw sphere (the same-person mask stays raw).
    """
    _check_inputs(x0_pred, condition)
    weights = weights.to(x0_pred.device).float()
    active = weights > 0
    zero = x0_pred.new_zeros((), dtype=torch.float32)
    if not bool(active.any()):
        return {"identity": zero, "contrast": zero}
    raw = embed_predicted(x0_pred[active], recognizer)
    raw_target = normalise(condition[active].to(raw.device).float())
    embedded, target = to_space(raw, space), to_space(raw_target, space)
    positive = (embedded * target).sum(dim=1)
    terms = {"identity": (weights[active] * (1.0 - positive)).sum() / len(x0_pred)}
    if negatives is None:
        terms["contrast"] = zero
        return terms
    negatives = normalise(negatives.to(embedded.device).float())
    negative_logits = embedded @ to_space(negatives, space).T
    same_person = (raw_target @ negatives.T) > 0.5
    negative_logits = negative_logits.masked_fill(same_person, float("-inf"))
    logits = scale * torch.cat([positive[:, None], negative_logits], dim=1)
    per_row = torch.logsumexp(logits, dim=1) - logits[:, 0]
    terms["contrast"] = (weights[active] * per_row).sum() / len(x0_pred)
    return terms


def load_identity_recognizer(device: torch.device | str | None = None) -> torch.nn.Module:
    """The torch SFace, frozen: eval mode, no gradient on its buffers or parameters."""
    from facefoundry.recognition.sface_torch import load_sface_torch

    recognizer = load_sface_torch().eval()
    for tensor in list(recognizer.parameters()) + list(recognizer.buffers()):
        tensor.requires_grad_(False)
    return recognizer.to(device) if device is not None else recognizer
