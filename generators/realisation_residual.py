"""A realisation map with a nonlinear residual: what the ridge map cannot follow.

Measured on the default model (BENCHMARKS.md, session 49, ``bench_realisation_ceiling``):
an identity's drawn centroid is nearly fixed by its condition (centroids of 3 and 5 faces
from other seeds agree at cosine 0.92, so a map could reach ~0.97 against a 5-face
centroid), yet ridge on 12,446 probe pairs predicts an unseen run at 0.845: most of what
it misses is a nonlinear function of the condition, not noise. A linear map plus a small
MLP of the unit condition, added before normalising, trained together on the same pairs
with a cosine loss, reaches 0.889 (a 3-image probe: 0.914). Both parts start from
PyTorch's default initialisation: started from the ridge solution (the MLP's last layer
zero), a trial fit stayed at ridge's figure. Needs thousands of pairs (a probe funnel's
candidates: ``realisation_runs.probe_pairs``); on a few hundred it overfits.
"""

from __future__ import annotations

import numpy as np

from facefoundry.generators.realisation import RealisationMap, _unit


def fit_residual(
    conditions: np.ndarray,
    centroids: np.ndarray,
    hidden: int = 1024,
    depth: int = 2,
    dropout: float = 0.2,
    weight_decay: float = 1e-2,
    epochs: int = 100,
    seed: int = 0,
    record: dict | None = None,
) -> RealisationMap:
    """A :class:`RealisationMap` whose linear part and MLP residual (``depth`` hidden
    GELU layers of ``hidden`` units) are trained together on (condition, centroid) pairs:
    AdamW, a cosine schedule, 1 - cosine loss, batches of 128; deterministic for a seed
    on one thread."""
    import torch

    unit_conditions = _unit(conditions)
    inputs = torch.tensor(unit_conditions, dtype=torch.float32)
    targets = torch.tensor(_unit(centroids), dtype=torch.float32)
    if len(inputs) != len(targets) or len(inputs) < 2:
        raise ValueError("need matching condition and centroid rows, at least 2")
    torch.manual_seed(seed)
    dim = inputs.shape[1]
    linear = torch.nn.Linear(dim, dim)
    layers: list[torch.nn.Module] = []
    width = dim
    for _ in range(depth):
        layers += [torch.nn.Linear(width, hidden), torch.nn.GELU("tanh"), torch.nn.Dropout(dropout)]
        width = hidden
    layers.append(torch.nn.Linear(width, dim))
    residual = torch.nn.Sequential(*layers)
    optimiser = torch.optim.AdamW(
        [*linear.parameters(), *residual.parameters()], lr=1e-3, weight_decay=weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    order = torch.Generator().manual_seed(seed)
    residual.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=order).split(128):
            predicted = torch.nn.functional.normalize(
                linear(inputs[batch]) + residual(inputs[batch]), dim=1
            )
            loss = (1.0 - (predicted * targets[batch]).sum(dim=1)).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        schedule.step()
    weights = linear.weight.detach().double().numpy().T
    condition_mean = unit_conditions.mean(axis=0)
    return RealisationMap(  # centroid_mean + (c - condition_mean) @ W == c @ W + bias
        condition_mean=condition_mean,
        centroid_mean=linear.bias.detach().double().numpy() + condition_mean @ weights,
        weights=weights,
        record=dict(record or {}),
        layers=[
            (layer.weight.detach().double().numpy().T, layer.bias.detach().double().numpy())
            for layer in residual
            if isinstance(layer, torch.nn.Linear)
        ],
    )


def residual_held_out(
    conditions: np.ndarray, centroids: np.ndarray, ridge: float, residual: dict
) -> dict:
    """How well the residual map predicts pairs it was not fitted on: one seeded split
    (a fifth held out; k folds would cost k MLP fits), beside ridge and the raw
    conditions on the same split (keys as ``realisation.held_out_figures``, plus
    ``ridge_cos`` and ``ridge_pairs``)."""
    from facefoundry.generators.realisation import _pair_correlation, fit_realisation_map

    conditions, centroids = _unit(conditions), _unit(centroids)
    order = np.random.default_rng(0).permutation(len(conditions))
    held, train = order[: len(order) // 5], order[len(order) // 5 :]
    if len(held) < 3:
        return {}
    fitted = fit_residual(conditions[train], centroids[train], **residual)
    linear = fit_realisation_map(conditions[train], centroids[train], ridge)
    figures = {}
    for name, predicted in (
        ("predicted", fitted.predict(conditions[held])),
        ("ridge", linear.predict(conditions[held])),
        ("condition", conditions[held]),
    ):
        figures[f"{name}_cos"] = np.sum(predicted * centroids[held], axis=1).mean()
        figures[f"{name}_pairs"] = _pair_correlation(predicted, centroids[held])
    return {key: round(float(value), 4) for key, value in figures.items()}
