"""Identity losses on faces cropped from the predicted clean image (WithAnyone, Sec. 4).

Crops are taken by the known layout boxes with ``affine_grid`` / ``grid_sample`` so the
gradient reaches the UNet; predicted faces are matched to identities by the Hungarian
algorithm; both losses only count at low noise (t <= fraction * T), where the predicted
x0 is sharp enough for a face model to read.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from facefoundry.generators import denoise


def crop_faces(images: torch.Tensor, boxes: torch.Tensor, size: int = 112) -> torch.Tensor:
    """(B, C, H, W) images, (B, K, 4) normalised boxes -> (B*K, C, size, size) crops.

    Bilinear ``grid_sample``: differentiable with respect to the images.
    """
    b, k = boxes.shape[:2]
    boxes = boxes.to(images.dtype)
    x1, y1, x2, y2 = boxes.unbind(-1)
    theta = torch.zeros(b, k, 2, 3, dtype=images.dtype, device=images.device)
    theta[..., 0, 0] = x2 - x1
    theta[..., 0, 2] = x1 + x2 - 1
    theta[..., 1, 1] = y2 - y1
    theta[..., 1, 2] = y1 + y2 - 1
    theta = theta.view(b * k, 2, 3)
    grid = F.affine_grid(theta, [b * k, images.shape[1], size, size], align_corners=False)
    source = images.repeat_interleave(k, dim=0)
    return F.grid_sample(source, grid, mode="bilinear", align_corners=False)


def hungarian(similarity: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows/columns of the assignment maximising total similarity (rectangular allowed)."""
    if isinstance(similarity, torch.Tensor):
        similarity = similarity.detach().float().cpu().numpy()
    rows, cols = linear_sum_assignment(np.asarray(similarity, dtype=np.float64), maximize=True)
    return rows, cols


def low_noise_weight(timesteps: torch.Tensor, num_train_timesteps: int, fraction: float = 0.6):
    """1.0 where t <= fraction * T, else 0.0: identity losses only where x0 is readable."""
    return (timesteps.float() <= fraction * num_train_timesteps).float()


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    total = weight.sum()
    if float(total) == 0.0:
        return (values * 0.0).sum()  # keeps the graph, contributes nothing
    return (values * weight).sum() / total


def identity_loss(
    predicted: torch.Tensor, identities: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """mean(1 - cos(predicted face, its identity)) with Hungarian assignment per image.

    predicted: (B, K, D) embeddings of the crops; identities: (B, K, D) targets;
    weight: (B,) per-image weights (the low-noise mask). Returns the loss and, per image,
    the identity index assigned to each crop.
    """
    pred = F.normalize(predicted.float(), dim=-1)
    target = F.normalize(identities.float(), dim=-1)
    cos = pred @ target.transpose(1, 2)  # (B, K, K)
    per_image, assignments = [], []
    for b in range(len(cos)):
        rows, cols = hungarian(cos[b])
        order = np.empty(cos.shape[1], dtype=np.int64)
        order[rows] = cols
        assignments.append(order)
        per_image.append((1.0 - cos[b, torch.as_tensor(rows), torch.as_tensor(cols)]).mean())
    weight = torch.ones(len(cos), device=cos.device) if weight is None else weight.float()
    return _weighted_mean(torch.stack(per_image), weight.to(cos.device)), assignments


def info_nce(
    predicted: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.07,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE over identities: each predicted face against every positive (the other
    rows are its in-batch negatives) plus an extended pool of ``negatives`` (M, D).

    predicted, positives: (N, D), row i's positive is positives[i]; weight: (N,).
    """
    pred = F.normalize(predicted.float(), dim=-1)
    keys = F.normalize(positives.float(), dim=-1)
    if negatives is not None and len(negatives):
        keys = torch.cat([keys, F.normalize(negatives.float().to(keys.device), dim=-1)])
    logits = pred @ keys.T / temperature
    losses = F.cross_entropy(logits, torch.arange(len(pred), device=pred.device), reduction="none")
    weight = torch.ones(len(pred), device=pred.device) if weight is None else weight.float()
    return _weighted_mean(losses, weight.to(pred.device))


def predicted_x0(scheduler, noisy: torch.Tensor, output: torch.Tensor, timesteps: torch.Tensor):
    """The clean sample implied by the model output, for ``scheduler``'s prediction type."""
    return denoise.predicted_x0(
        scheduler.alphas_cumprod, noisy, output, timesteps, scheduler.config.prediction_type
    )
