"""The realisation map: fitted on planted data, it predicts what a "generator" draws, and
selecting identities apart in its predictions keeps more of them apart in what is drawn."""

from pathlib import Path

import numpy as np
import pytest

from facefoundry.errors import UsageError
from facefoundry.generators.realisation import (
    RealisationMap,
    fit_realisation_map,
    held_out_figures,
    select_separated,
)


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def crowding_generator(conditions, rng, noise=0.05):
    """A stand-in for the measured model: it draws the condition's first 4 axes strongly,
    the rest at a tenth, plus per-identity noise; so conditions far apart in the weak axes
    come out alike."""
    gain = np.full(conditions.shape[1], 0.1)
    gain[:4] = 1.0
    return unit(conditions * gain + noise * rng.standard_normal(conditions.shape))


def test_the_map_predicts_drawn_centroids_better_than_the_conditions():
    rng = np.random.default_rng(0)
    conditions = unit(rng.standard_normal((300, 16)))
    drawn = crowding_generator(conditions, rng)
    figures = held_out_figures(conditions, drawn, ridge=1.0)
    assert figures["predicted_cos"] > figures["condition_cos"] + 0.2
    assert figures["predicted_pairs"] > figures["condition_pairs"] + 0.2


def test_selected_rows_are_separated_at_the_smallest_threshold_that_keeps_n():
    rng = np.random.default_rng(1)
    predicted = unit(rng.standard_normal((200, 8)))
    rows, threshold = select_separated(predicted, 30)
    assert len(rows) == len(set(rows.tolist())) == 30
    sims = predicted[rows] @ predicted[rows].T
    np.fill_diagonal(sims, -1)
    assert sims.max() <= threshold
    stricter, _ = select_separated(predicted, 30, resolution=0.001)
    assert len(stricter) == 30
    with pytest.raises(ValueError, match="cannot select"):
        select_separated(predicted, 201)


def test_selecting_by_prediction_keeps_more_drawn_identities_apart():
    rng = np.random.default_rng(2)
    calibration = unit(rng.standard_normal((300, 16)))
    realisation = fit_realisation_map(calibration, crowding_generator(calibration, rng))
    pool = unit(rng.standard_normal((400, 16)))
    drawn = crowding_generator(pool, rng)
    tau = 0.8  # the "filter": drawn centroids above this are duplicates

    def crowded(rows):
        sims = drawn[rows] @ drawn[rows].T
        np.fill_diagonal(sims, -1)
        return int((sims.max(axis=1) > tau).sum())

    chosen, _ = select_separated(realisation.predict(pool), 50)
    assert crowded(chosen) < crowded(np.arange(50)) / 2


def test_map_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    conditions = unit(rng.standard_normal((50, 8)))
    realisation = fit_realisation_map(conditions, conditions[:, ::-1], record={"seed": 7})
    path = realisation.save(tmp_path / "new-folder" / "map.npz")  # --out in a new folder
    again = RealisationMap.load(path)
    assert again.record == {"seed": 7}
    assert np.allclose(again.predict(conditions), realisation.predict(conditions))


def test_predicted_select_draws_a_pool_and_keeps_its_separated_subset(tmp_path):
    from facefoundry.generators.families import IdentitySpace
    from facefoundry.generators.identities import PRIOR_FILE, draw_identities, save_identity_prior
    from facefoundry.generators.realisation import REALISATION_FILE
    from facefoundry.generators.settings import IdentitySettings

    rng = np.random.default_rng(4)
    real = unit(1.0 + 0.4 * rng.standard_normal((400, 16)))
    prior = save_identity_prior(real.astype(np.float32), tmp_path / PRIOR_FILE)
    calibration = unit(rng.standard_normal((300, 16)))
    fit_realisation_map(calibration, crowding_generator(calibration, rng)).save(
        tmp_path / REALISATION_FILE
    )
    space = IdentitySpace(16, "sface", Path(prior), tmp_path / REALISATION_FILE)
    settings = IdentitySettings(count=20, method="fitted", tau=0.95, select="predicted", pool=5)
    table = draw_identities(settings, 0, space)
    again = draw_identities(settings, 0, space)
    pool = draw_identities(settings.model_copy(update={"select": "drawn"}), 0, space, 100)
    assert len(table.ids) == 20 and table.method == "fitted+predicted"
    assert np.array_equal(table.ids, again.ids)
    assert set(table.ids.tolist()) <= set(pool.ids.tolist())
    assert not np.array_equal(np.sort(table.ids), np.arange(20))  # not just the first 20
    rows = np.searchsorted(pool.ids, table.ids)
    assert np.array_equal(table.embeddings, pool.embeddings[rows])
    assert np.array_equal(table.seeds, pool.seeds[rows])
    missing = IdentitySpace(16, "sface", Path(prior), tmp_path / "none.npz")
    with pytest.raises(UsageError, match="fit-realisation"):
        draw_identities(settings, 0, missing)


def test_the_identities_stage_reruns_when_its_map_changes_and_only_then(tmp_path):
    import torch

    from facefoundry.flows.config import load_recipe
    from facefoundry.flows.stage_table import identities_section
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from facefoundry.generators.realisation import REALISATION_FILE
    from tests.helpers.flows import tiny_recipe
    from tests.helpers.generators import tiny_config

    torch.manual_seed(0)
    model = tmp_path / "model"
    IDiffFaceModel(tiny_config()).save_pretrained(model)
    drawn = identities_section(load_recipe(tiny_recipe(tmp_path, model)))
    assert "select" not in drawn["identities"] and "realisation_map" not in drawn
    predicted = load_recipe(tiny_recipe(tmp_path, model, identities={"select": "predicted"}))
    assert identities_section(predicted)["realisation_map"] is None  # no map yet
    rng = np.random.default_rng(5)
    conditions = unit(rng.standard_normal((20, 8)))
    fit_realisation_map(conditions, conditions).save(model / REALISATION_FILE)
    first = identities_section(predicted)
    fit_realisation_map(conditions, conditions[::-1]).save(model / REALISATION_FILE)
    assert first["realisation_map"] != identities_section(predicted)["realisation_map"]
    assert identities_section(load_recipe(tiny_recipe(tmp_path, model))) == drawn


def test_fit_realisation_says_clearly_when_the_model_draws_no_faces(tmp_path, capsys):
    import torch

    from facefoundry.flows.cli import main
    from facefoundry.generators.identities import PRIOR_FILE, save_identity_prior
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from tests.helpers.generators import tiny_config

    torch.manual_seed(0)
    model = tmp_path / "model"
    config = tiny_config()
    IDiffFaceModel(config).save_pretrained(model)
    rng = np.random.default_rng(6)
    save_identity_prior(unit(rng.standard_normal((50, config.id_dim))), model / PRIOR_FILE)
    argv = ["generator", "fit-realisation", str(model), "--identities", "3", "--detail-axes", "4"]
    assert main([*argv, "--per-identity", "2", "--steps", "2", "--threads", "1"]) == 1
    assert "cannot be calibrated" in capsys.readouterr().err
    assert not (model / "realisation_map.npz").exists()
