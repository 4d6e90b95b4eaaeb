"""The residual realisation map: on a "generator" a linear map cannot follow, the MLP
residual predicts what it draws where ridge cannot; saved and loaded, it predicts the
same; the selection code reads it as any map."""

import numpy as np

from facefoundry.generators.realisation import (
    RealisationMap,
    fit_realisation_map,
    select_separated,
)
from facefoundry.generators.realisation_residual import fit_residual, residual_held_out

SMALL = {"hidden": 128, "epochs": 100}


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def folding_generator(conditions, rng, noise=0.05):
    """Draws the first 4 axes as asked and the next 4 folded (their magnitude, not their
    sign): conditions that differ only in those signs come out alike, which no linear
    map of the condition predicts (|x| has no linear part)."""
    drawn = np.zeros_like(conditions)
    drawn[:, :4] = conditions[:, :4]
    folded = np.abs(conditions[:, 4:8])
    drawn[:, 4:8] = 3.0 * (folded - folded.mean(axis=0))
    return unit(drawn + noise * rng.standard_normal(conditions.shape))


def test_the_residual_follows_what_ridge_cannot(tmp_path):
    rng = np.random.default_rng(0)  # one torch thread (conftest): the fits are repeatable
    conditions = unit(rng.standard_normal((1500, 12)))
    drawn = folding_generator(conditions, rng)
    figures = residual_held_out(conditions, drawn, 1.0, SMALL)
    assert figures["predicted_cos"] > figures["ridge_cos"] + 0.1
    assert figures["predicted_pairs"] > figures["ridge_pairs"] + 0.1
    fitted = fit_residual(conditions, drawn, **SMALL, record={"note": "test"})
    again = fit_residual(conditions, drawn, **SMALL)
    held_out = unit(rng.standard_normal((300, 12)))
    predicted = fitted.predict(held_out)
    assert np.allclose(predicted, again.predict(held_out))  # seeded: the same map
    assert np.allclose(np.linalg.norm(predicted, axis=1), 1.0)
    fitted.save(tmp_path / "map.npz")
    loaded = RealisationMap.load(tmp_path / "map.npz")
    assert len(loaded.layers) == 3 and loaded.record == {"note": "test"}
    assert np.allclose(loaded.predict(held_out), predicted)
    truth = folding_generator(held_out, rng, noise=0.0)
    ridge = fit_realisation_map(conditions, drawn)
    assert (
        np.sum(predicted * truth, axis=1).mean()
        > np.sum(ridge.predict(held_out) * truth, axis=1).mean() + 0.1
    )
    # choosing 30 of the 300 apart in its predictions keeps them further apart in what
    # is drawn than choosing them apart in ridge's
    worst = {}
    for name, scores in (("residual", predicted), ("ridge", ridge.predict(held_out))):
        rows, _ = select_separated(scores, 30)
        similarity = truth[rows] @ truth[rows].T
        worst[name] = similarity[np.triu_indices(30, k=1)].max()
    assert worst["residual"] < worst["ridge"]


def test_a_linear_map_saved_before_residuals_existed_still_loads(tmp_path):
    rng = np.random.default_rng(1)
    conditions = unit(rng.standard_normal((50, 8)))
    linear = fit_realisation_map(conditions, folding_generator(conditions, rng))
    np.savez(
        tmp_path / "old.npz",
        condition_mean=linear.condition_mean,
        centroid_mean=linear.centroid_mean,
        weights=linear.weights,
        record=np.array("{}"),
    )
    loaded = RealisationMap.load(tmp_path / "old.npz")
    assert loaded.layers == []
    assert np.allclose(loaded.predict(conditions), linear.predict(conditions))
