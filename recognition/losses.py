"""Margin-based classification heads for face recognition, formulas in plain sight.

All heads hold class centres W (C x D), compare L2-normalised embeddings with
normalised centres (cos theta), put a margin on the target class only, scale by s
and apply cross-entropy:
- CombinedMarginLoss(s, m1, m2, m3): target logit s * (cos(m1 * theta + m2) - m3)
  (1, 0.5, 0) = ArcFace, (1, 0, 0.35) = CosFace, as in insightface arcface_torch.
- AdaFace(m, h, s): the margin adapts to image quality through the feature norm
  ||x||: z = clip(h * (||x|| - mean) / (std + eps), -1, 1) with batch statistics
  (running averages); target angle theta - m * z, target logit
  s * (cos(theta - m z) - (m + m z)).
Partial FC samples a subset of negative centres per batch (all positives kept).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _clamped_theta(cosine: torch.Tensor) -> torch.Tensor:
    return torch.acos(cosine.clamp(-1 + 1e-7, 1 - 1e-7))


class CombinedMarginLoss(nn.Module):
    """arcface_torch's combined margin: s * (cos(m1 theta + m2) - m3) on the target."""

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3

    def target_logit(self, cosine: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cosine - self.m3  # CosFace: no acos needed
        theta = _clamped_theta(cosine)
        return torch.cos(self.m1 * theta + self.m2) - self.m3

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        index = torch.arange(len(labels), device=cosine.device)
        logits = cosine.clone()
        logits[index, labels] = self.target_logit(cosine[index, labels])
        return F.cross_entropy(self.s * logits, labels)


def arcface(s: float = 64.0, m: float = 0.5) -> CombinedMarginLoss:
    return CombinedMarginLoss(s, 1.0, m, 0.0)


def cosface(s: float = 64.0, m: float = 0.35) -> CombinedMarginLoss:
    return CombinedMarginLoss(s, 1.0, 0.0, m)


class AdaFaceLoss(nn.Module):
    """AdaFace (Kim et al. 2022): quality-adaptive margin from the feature norm."""

    def __init__(
        self,
        s: float = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        momentum: float = 0.01,
        eps: float = 1e-3,
    ):
        super().__init__()
        self.s, self.m, self.h, self.momentum, self.eps = s, m, h, momentum, eps
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        norms = norms.detach().clamp(0.001, 100)
        if self.training:
            with torch.no_grad():
                mean, std = norms.mean(), norms.std() if len(norms) > 1 else norms.new_tensor(0.0)
                self.batch_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.batch_std.mul_(1 - self.momentum).add_(self.momentum * std)
        scaler = (norms - self.batch_mean) / (self.batch_std + self.eps)
        return (scaler * self.h).clamp(-1, 1)

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        if norms is None:
            raise ValueError("AdaFace needs the embeddings' norms")
        index = torch.arange(len(labels), device=cosine.device)
        scaler = self.margin_scaler(norms.view(-1))
        theta = _clamped_theta(cosine[index, labels])
        angular = (theta - self.m * scaler).clamp(self.eps, math.pi - self.eps)
        logits = cosine.clone()
        logits[index, labels] = torch.cos(angular) - (self.m + self.m * scaler)
        return F.cross_entropy(self.s * logits, labels)


def make_loss(
    name: str, s: float | None = None, m: float | None = None, h: float = 0.333
) -> nn.Module:
    """arcface (s 64, m 0.5) | cosface (s 64, m 0.35) | adaface (s 64, m 0.4, h 0.333)."""
    if name == "arcface":
        return arcface(s or 64.0, 0.5 if m is None else m)
    if name == "cosface":
        return cosface(s or 64.0, 0.35 if m is None else m)
    if name == "adaface":
        return AdaFaceLoss(s or 64.0, 0.4 if m is None else m, h)
    raise ValueError(f"unknown margin loss {name!r}; use arcface, cosface or adaface")


class MarginHead(nn.Module):
    """Class centres + a margin loss; ``sample_rate < 1`` turns on Partial FC."""

    def __init__(self, num_classes: int, dim: int, loss: nn.Module, sample_rate: float = 1.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a margin head needs at least 2 classes, got {num_classes}")
        self.weight = nn.Parameter(torch.empty(num_classes, dim).normal_(0, 0.01))
        self.loss = loss
        self.sample_rate = sample_rate

    def _partial(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres used this step (positives + random negatives) and remapped labels."""
        num_classes = self.weight.shape[0]
        keep = max(int(self.sample_rate * num_classes), 1)
        positives = torch.unique(labels)
        if keep <= len(positives):
            chosen = positives
        else:
            scores = torch.rand(num_classes, device=labels.device)
            scores[positives] = 2.0  # always keep the positives
            chosen = torch.topk(scores, keep).indices.sort().values
        remap = torch.full((num_classes,), -1, dtype=torch.long, device=labels.device)
        remap[chosen] = torch.arange(len(chosen), device=labels.device)
        return chosen, remap[labels]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        norms = embeddings.norm(dim=1, keepdim=True)
        normalised = embeddings / norms.clamp_min(1e-12)
        weight = self.weight
        if self.training and self.sample_rate < 1.0:
            chosen, labels = self._partial(labels)
            weight = weight[chosen]
        cosine = F.linear(normalised, F.normalize(weight, dim=1)).clamp(-1, 1)
        return self.loss(cosine, labels, norms)
