"""The realisation map: fitted on planted data, it predicts what a "generator" draws, and
selecting identities apart in its predictions keeps more of them apart in what is drawn."""

from pathlib import Path

import numpy as np
import pytest

from facefoundry.errors import UsageError
from facefoundry.generators.chunks import folder_checksum
from facefoundry.generators.realisation import (
    RealisationMap,
    fit_realisation_map,
    held_out_figures,
    select_largest,
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


def test_the_largest_set_leaves_out_a_candidate_near_many_others():
    """A hub first in candidate order collides with four spokes that are apart from one
    another: the greedy pass keeps the hub and must rise to its cosine (0.5) to fit four;
    the largest set drops the hub and holds the four spokes at cosine 0."""
    spokes = np.eye(6)[:4]
    hub = unit(spokes.sum(axis=0, keepdims=True))
    vectors = np.concatenate([hub, spokes, unit(np.ones((1, 6)) - 2 * np.eye(6)[5])])
    _, greedy_threshold = select_separated(vectors, 4)
    rows, threshold = select_largest(vectors, 4)
    assert greedy_threshold >= 0.5 - 0.005
    assert threshold < 0.05
    assert sorted(rows.tolist()) == [1, 2, 3, 4]


def test_largest_rows_are_separated_and_never_looser_than_greedy():
    rng = np.random.default_rng(4)
    vectors = unit(rng.standard_normal((300, 8)))
    greedy_rows, greedy_threshold = select_separated(vectors, 40)
    rows, threshold = select_largest(vectors, 40)
    assert len(rows) == len(set(rows.tolist())) == 40
    sims = vectors[rows] @ vectors[rows].T
    np.fill_diagonal(sims, -1)
    assert sims.max() <= threshold <= greedy_threshold
    assert threshold < greedy_threshold  # random points: a strictly tighter set exists


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


def write_finished_run(root, conditions, centroids, checksum, seed=3, no_face_identity=0):
    """A run folder as the identities, generate and embed stages leave it: identities
    with their conditions, chunks drawn by ``checksum``, 4 embedded faces per identity
    around ``centroids`` (one identity with a single face found)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from facefoundry.flows.run_dir import RunDir
    from facefoundry.generators.identities import IdentityTable
    from facefoundry.shards.layout import make_key
    from tests.helpers.filters import identity_samples, write_embed_part

    run = RunDir(root)
    ids = np.arange(100, 100 + len(conditions))
    run.identities.parent.mkdir(parents=True)
    IdentityTable(ids, conditions.astype(np.float32), ids * 7, "fitted").save(run.identities)
    faces, index = identity_samples(centroids, 4, noise=0.3, seed=seed)
    keys = [make_key(int(ids[i]), s % 4) for s, i in enumerate(index)]
    run.generate.mkdir()
    chunk = {"key": keys, "identity": ids[index].tolist(), "model_checksum": [checksum] * len(keys)}
    pq.write_table(pa.table(chunk), run.generate / "part-00000.parquet")
    status = ["no_face" if i == no_face_identity and s % 4 else "ok" for s, i in enumerate(index)]
    faces[np.array(status) != "ok"] = np.nan
    write_embed_part(
        run.embed / "part-00000.parquet", keys, ids[index], {"sface": faces}, status=status
    )
    run.recipe.write_text(yaml.safe_dump({"seed": seed, "generate": {"steps": 8}}))
    return run


def test_a_map_fitted_on_finished_runs_predicts_what_they_drew(tmp_path, capsys):
    import torch

    from facefoundry.flows.cli import main
    from facefoundry.generators.chunks import folder_checksum
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from tests.helpers.generators import tiny_config

    torch.manual_seed(0)
    model = tmp_path / "model"
    IDiffFaceModel(tiny_config()).save_pretrained(model)
    rng = np.random.default_rng(7)
    conditions = unit(rng.standard_normal((60, 12)))
    centroids = crowding_generator(conditions, rng)
    checksum = folder_checksum(model)
    first = write_finished_run(tmp_path / "runs" / "a", conditions[:40], centroids[:40], checksum)
    second = write_finished_run(
        tmp_path / "runs" / "b", conditions[30:], centroids[30:], checksum, seed=4
    )
    out = tmp_path / "map.npz"
    argv = ["generator", "fit-realisation", str(model), "--out", str(out)]
    assert main([*argv, "--from-run", str(first.root), "--from-run", str(second.root)]) == 0
    realisation = RealisationMap.load(out)
    # 60 identities once each (the runs share 10), less the first run's first identity,
    # which has a single face found (the second run's, identity 30, has 4 in the first)
    assert realisation.record["identities"] == 59
    assert [r["seed"] for r in realisation.record["runs"]] == [3, 4]
    assert (
        realisation.record["held_out"]["predicted_cos"]
        > realisation.record["held_out"]["condition_cos"]
    )
    held_out = unit(rng.standard_normal((200, 12)))
    predicted_cos = np.sum(
        realisation.predict(held_out) * crowding_generator(held_out, rng, 0), axis=1
    )
    assert (
        predicted_cos.mean()
        > np.sum(held_out * crowding_generator(held_out, rng, 0), axis=1).mean() + 0.1
    )
    capsys.readouterr()
    other = write_finished_run(tmp_path / "runs" / "c", conditions, centroids, "0" * 64)
    assert main([*argv, "--from-run", str(other.root)]) == 2
    error = capsys.readouterr().err
    assert "other weights" in error and len(error.strip().splitlines()) == 1


def test_the_shipped_realisation_map_was_fitted_on_the_shipped_weights():
    """Retraining the default model without refitting its map is caught here (the map
    predicts what other weights drew)."""
    model = Path(__file__).resolve().parents[1] / "models" / "idiff-face-lfw"
    record = RealisationMap.load(model / "realisation_map.npz").record
    assert record["model_checksum"] == folder_checksum(model)


def add_probe_funnel(
    run, conditions, centroids, checksum, no_face=(0,), samples=3, filter_embedder="sface"
):
    """The identities stage's probe funnel beside a finished run: ``len(conditions)``
    candidates (ids from 100, so the run's identities are its first), each probe's
    centroid stored (NaN for ``no_face`` candidates), chunks drawn by ``checksum``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from facefoundry.generators.identities import IdentityTable
    from facefoundry.generators.probe import KEPT, NO_FACE, ProbeDecisions, _write_decisions

    ids = np.arange(100, 100 + len(conditions))
    folder = run.identities.parent
    candidates = IdentityTable(ids, conditions.astype(np.float32), ids * 7, "fitted")
    candidates.save(folder / "candidates.parquet")
    (folder / "probes").mkdir()
    chunk = {"identity": np.repeat(ids, samples).tolist()}
    chunk["model_checksum"] = [checksum] * len(chunk["identity"])
    pq.write_table(pa.table(chunk), folder / "probes" / "part-00000.parquet")
    centroids = centroids.astype(np.float32).copy()
    centroids[list(no_face)] = np.nan
    outcome = [NO_FACE if row in no_face else KEPT for row in range(len(ids))]
    nothing = np.full(len(ids), np.nan)
    decisions = ProbeDecisions(outcome, nothing, np.full(len(ids), -1), nothing, centroids)
    _write_decisions(folder, candidates, decisions, {})
    recipe = yaml.safe_load(run.recipe.read_text())
    recipe["identities"] = {"probe": {"candidates": 5, "samples": samples}}
    recipe["filter"] = {"embedder": filter_embedder, "allow_same_judge": True}
    run.recipe.write_text(yaml.safe_dump(recipe))


def test_a_map_fitted_on_a_run_also_learns_from_its_probes(tmp_path, capsys):
    import torch

    from facefoundry.flows.cli import main
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from tests.helpers.generators import tiny_config

    torch.manual_seed(0)
    model = tmp_path / "model"
    IDiffFaceModel(tiny_config()).save_pretrained(model)
    checksum = folder_checksum(model)
    rng = np.random.default_rng(8)
    conditions = unit(rng.standard_normal((200, 12)))
    centroids = crowding_generator(conditions, rng)
    run = write_finished_run(tmp_path / "runs" / "a", conditions[:20], centroids[:20], checksum)
    add_probe_funnel(run, conditions, crowding_generator(conditions, rng), checksum)
    out = tmp_path / "map.npz"
    argv = ["generator", "fit-realisation", str(model), "--out", str(out), "--threads", "1"]
    assert main([*argv, "--from-run", str(run.root)]) == 0
    record = RealisationMap.load(out).record
    # 19 realised identities with 2+ faces (the first has one), then the 199 probes with a
    # face: the realised 19 are already there (their 4-face centroids win), 180 are new
    assert record["runs"][0]["identities"] == 19 and record["runs"][0]["probe_pairs"] == 199
    assert record["identities"] == 19 + 180
    assert record["held_out"]["predicted_cos"] > record["held_out"]["condition_cos"] + 0.2
    assert main([*argv, "--from-run", str(run.root), "--residual", "--residual-hidden", "16",
                 "--residual-epochs", "3"]) == 0  # fmt: skip
    residual = RealisationMap.load(out)
    assert len(residual.layers) == 3 and residual.record["residual"]["hidden"] == 16
    assert {"ridge_cos", "predicted_cos"} <= set(residual.record["held_out"])
    capsys.readouterr()
    other = write_finished_run(tmp_path / "runs" / "b", conditions[:20], centroids[:20], checksum)
    add_probe_funnel(other, conditions, centroids, "0" * 64)
    assert main([*argv, "--from-run", str(other.root)]) == 2
    error = capsys.readouterr().err
    assert "probes were generated by other weights" in error
    assert len(error.strip().splitlines()) == 1
    # probes judged in another embedder's space than the conditions: realised pairs only
    dlib_run = write_finished_run(
        tmp_path / "runs" / "d", conditions[:20], centroids[:20], checksum
    )
    add_probe_funnel(dlib_run, conditions, centroids, checksum, filter_embedder="dlib")
    assert main([*argv, "--from-run", str(dlib_run.root)]) == 0
    record = RealisationMap.load(out).record
    assert record["identities"] == 19 and record["runs"][0]["probe_pairs"] == 0
