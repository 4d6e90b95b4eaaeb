"""The probe funnel (realised identities): decisions on planted vectors, then the
identities stage end to end with a tiny model."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from facefoundry.errors import UsageError
from facefoundry.faces.embedders import get_embedder
from facefoundry.filters.calibrate import find_calibration
from facefoundry.filters.calibration_tables import BUILTIN
from facefoundry.generators import probe
from facefoundry.generators.idiff_face.model import IDiffFaceModel
from tests.helpers.flows import tiny_recipe
from tests.helpers.generators import tiny_config


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_separated_identities_are_kept_and_a_planted_duplicate_is_dropped():
    rng = np.random.default_rng(0)
    distinct = _unit(rng.standard_normal((4, 64)))
    planted = _unit([distinct[1] + 0.05 * rng.standard_normal(64)])[0]
    centroids = np.vstack([distinct[:2], planted, distinct[2:], np.full(64, np.nan)])
    conditions = centroids.copy()
    conditions[5] = distinct[0]
    decisions = probe.decide(centroids, conditions, 0.42, want=10)
    assert decisions.outcome == ["kept", "kept", "duplicate", "kept", "kept", "no_face"]
    assert decisions.kept_rows == [0, 1, 3, 4]
    assert decisions.nearest[2] == 1 and decisions.nearest_cos[2] > 0.9
    assert np.all(decisions.nearest_cos[[1, 3, 4]] < 0.42)


def test_rounds_stop_at_the_wanted_count_and_condition_rule_applies():
    rng = np.random.default_rng(1)
    vectors = _unit(rng.standard_normal((6, 64)))
    conditions = vectors.copy()
    conditions[0] = _unit(rng.standard_normal((1, 64)))[0]  # probe 0 ignores its condition
    first = probe.decide(vectors[:3], conditions[:3], 0.42, want=3, min_condition_cos=0.5)
    assert first.outcome == ["off_condition", "kept", "kept"]
    second = probe.decide(vectors[3:], conditions[3:], 0.42, 3, 0.5, first, offset=3)
    assert second.outcome[3:] == ["kept", "not_probed", "not_probed"]
    assert second.kept_rows == [1, 2, 3]
    assert second.funnel() == {
        "candidates": 6,
        "probed": 4,
        "off_condition": 1,
        "kept": 3,
        "not_probed": 2,
    }


def test_probe_centroids_need_a_face_in_every_probe_image():
    vectors = np.array([[1, 0], [1, 0.2], [0, 1], [np.nan, np.nan]], dtype=np.float32)
    usable = np.array([True, True, True, False])
    centroids = probe.probe_centroids(vectors, usable, samples=2)
    assert np.allclose(np.linalg.norm(centroids[0]), 1.0)
    assert np.isnan(centroids[1]).all()


DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "idiff-face-lfw"


def test_a_model_that_draws_no_face_realises_nothing_and_says_so(tmp_path):
    from facefoundry.flows.config import load_recipe
    from facefoundry.flows.stages import build

    torch.manual_seed(0)
    IDiffFaceModel(tiny_config()).save_pretrained(tmp_path / "model")
    recipe = tiny_recipe(tmp_path, tmp_path / "model", identities={"probe": {"candidates": 2}})
    with pytest.raises(probe.NoIdentityRealised, match="no candidate identity was realised"):
        build(load_recipe(recipe), tmp_path / "runs", stop_after="generate")
    folder = tmp_path / "runs" / "tiny" / "identities"
    outcomes = pq.read_table(folder / "probes.parquet").column("outcome").to_pylist()
    assert outcomes == ["no_face"] * 8
    assert not (folder / "identities.parquet").exists()
    ids, centroids = probe.read_probe_centroids(folder)  # no face: no centroid, kept as NaN
    assert len(ids) == 8 and centroids.shape == (8, get_embedder("sface").dim)
    assert np.isnan(centroids).all()


def test_identities_stage_with_probes_generates_only_the_realised_identities(tmp_path):
    """The committed default model draws faces: probes are judged like samples."""
    from facefoundry.flows.config import load_recipe
    from facefoundry.flows.stages import build
    from facefoundry.generators.identities import IdentityTable

    # a calibration for other SFace weights: the probes must skip it, as the filter does
    decoy = {**BUILTIN[0], "checksum": "0" * 64}
    decoy["thresholds"] = {fmr: 0.99 for fmr in decoy["thresholds"]}
    (tmp_path / "decoy.json").write_text(json.dumps(decoy))
    recipe = tiny_recipe(
        tmp_path,
        DEFAULT_MODEL,
        identities={
            "count": 3,
            "method": "fitted",
            "tau": 0.3,
            "probe": {"candidates": 3.0, "condition": "probe"},
        },
        generate={"steps": 4, "guidance_scale": 3.0},
        filter={"calibration": str(tmp_path / "decoy.json")},
    )
    loaded = load_recipe(recipe)
    build(loaded, tmp_path / "runs", stop_after="generate")
    folder = tmp_path / "runs" / "tiny" / "identities"
    funnel = json.loads((folder / "probe_funnel.json").read_text())
    checked = find_calibration("sface", get_embedder("sface").checksum)
    assert BUILTIN[0]["embedder"] == "sface"
    assert funnel["tau_inter"] == checked.cos_at(loaded.filter.tau_inter.fmr) < 0.99
    decisions = pq.read_table(folder / "probes.parquet").to_pylist()
    kept = [row["candidate"] for row in decisions if row["outcome"] == "kept"]
    assert funnel["wanted"] == 3 and funnel["realised"] == len(kept) == 3
    assert funnel["probed"] == sum(row["outcome"] != "not_probed" for row in decisions)
    for row in decisions:  # a kept probe is separated from the kept identities before it
        if row["outcome"] == "kept" and row["nearest_kept"] is not None:
            assert row["nearest_kept_cos"] <= funnel["tau_inter"]
        if row["outcome"] == "duplicate":
            assert row["nearest_kept_cos"] > funnel["tau_inter"]
    table = IdentityTable.load(folder / "identities.parquet")
    candidates = IdentityTable.load(folder / "candidates.parquet")
    assert table.ids.tolist() == kept and table.method == "fitted+probe"
    original = candidates.embeddings[np.searchsorted(candidates.ids, table.ids)]
    assert np.allclose(np.linalg.norm(table.embeddings, axis=1), 1.0, atol=1e-5)
    assert np.all(np.sum(table.embeddings * original, axis=1) < 0.99)  # probe centroids
    ids, centroids = probe.read_probe_centroids(folder)  # the stored ones are those
    assert ids.tolist() == [row["candidate"] for row in decisions]
    stored = centroids[np.searchsorted(ids, table.ids)]
    assert np.allclose(stored, table.embeddings, atol=1e-6)
    # a funnel written before the centroids were stored: its probe images embedded again
    # give the same centroids
    pq.write_table(pq.read_table(folder / "probes.parquet").drop(["centroid"]),
                   folder / "probes.parquet")  # fmt: skip
    again_ids, again = probe.probe_pool(folder, loaded)
    assert again_ids.tolist() == ids.tolist()
    assert np.allclose(np.nan_to_num(again), np.nan_to_num(centroids), atol=1e-5)
    assert (np.isnan(again) == np.isnan(centroids)).all()
    generated = set()
    for part in sorted((folder.parent / "generate").glob("part-*.parquet")):
        generated |= set(pq.read_table(part).column("identity").to_pylist())
    assert generated == set(kept)
    from facefoundry.flows.report import write_report

    report = write_report(folder.parent).read_text()
    assert "Realised identities (probe funnel)" in report and "<td>realised</td>" in report


def test_separated_rule_keeps_the_distinct_identities_the_greedy_rule_crowds_out():
    """Noisy probes of near-copies look apart at a fixed tau; the tightest separation
    that keeps `want` takes one of each instead."""
    rng = np.random.default_rng(2)
    distinct = _unit(rng.standard_normal((3, 64)))
    copies = _unit(distinct[0] + 0.6 * _unit(rng.standard_normal((2, 64))))  # cos ~0.85
    centroids = np.vstack([distinct[0], copies, distinct[1:], np.full(64, np.nan)])
    greedy = probe.decide(centroids, centroids, 0.9, want=3)
    assert greedy.kept_rows == [0, 1, 2]  # the copies pass a loose fixed threshold
    decisions, threshold = probe.decide_separated(centroids, centroids, want=3)
    assert decisions.kept_rows == [0, 3, 4] and threshold < 0.5
    assert decisions.outcome == ["kept", "duplicate", "duplicate", "kept", "kept", "no_face"]
    assert decisions.nearest[1] == 0 and decisions.nearest_cos[1] > threshold
    kept = centroids[decisions.kept_rows]
    assert (kept @ kept.T - 2 * np.eye(3)).max() <= threshold
    few, _ = probe.decide_separated(centroids, centroids, want=10)  # fewer qualify
    assert few.kept_rows == [0, 1, 2, 3, 4]


def test_largest_rule_drops_a_probe_that_crowds_several_others():
    """A probe near three otherwise separated ones, first in candidate order: the
    separated rule keeps it and loosens its threshold to fit three; the largest rule
    marks it a duplicate and keeps the three at a tighter threshold."""
    spokes = np.eye(64)[:3]
    hub = _unit(spokes.sum(axis=0, keepdims=True))
    centroids = np.vstack([hub, spokes, np.full(64, np.nan)])
    _, loose = probe.decide_separated(centroids, centroids, want=3)
    decisions, threshold = probe.decide_separated(centroids, centroids, 3, select="largest")
    assert decisions.kept_rows == [1, 2, 3] and threshold < 0.05 < 0.5 < loose
    assert decisions.outcome == ["duplicate", "kept", "kept", "kept", "no_face"]
    assert decisions.nearest_cos[0] > threshold


def test_separated_probes_are_the_kept_identities_first_samples(tmp_path):
    """The whole pool is probed with the run's own seeds, so a kept identity's probe
    images are its first generated samples, byte for byte."""
    import tarfile

    from facefoundry.flows.config import load_recipe
    from facefoundry.flows.stages import build

    recipe = tiny_recipe(
        tmp_path,
        DEFAULT_MODEL,
        identities={
            "count": 3,
            "method": "fitted",
            "tau": 0.3,
            "probe": {"candidates": 2.0, "samples": 2, "select": "separated"},
        },
        generate={"steps": 4, "guidance_scale": 3.0, "chunk_identities": 2},
    )
    build(load_recipe(recipe), tmp_path / "runs", stop_after="generate")
    folder = tmp_path / "runs" / "tiny" / "identities"
    funnel = json.loads((folder / "probe_funnel.json").read_text())
    assert funnel["probed"] == funnel["candidates"] == 6  # the whole pool
    assert funnel["realised"] == 3 and "separation" in funnel
    parts = sorted((folder / "probes").glob("part-*.parquet"))
    assert len(parts) == 3  # 6 candidates in chunks of the generate stage's 2

    def members(stage):
        found = {}
        for tar in sorted((folder.parent / stage).glob("part-*.tar")):
            with tarfile.open(tar) as archive:
                for member in archive.getmembers():
                    found[member.name] = archive.extractfile(member).read()
        return found

    probes, samples = members("identities/probes"), members("generate")
    kept = pq.read_table(folder / "identities.parquet").column("identity").to_pylist()
    shared = [name for name in samples if int(name[:7]) in kept and name in probes]
    assert len(shared) >= 2 * 3  # two probe images of every kept identity
    assert all(probes[name] == samples[name] for name in shared)
    from facefoundry.flows.report import write_report

    assert "the tightest separation" in write_report(folder.parent).read_text()

    # killed after two probe chunks: the rerun keeps them and draws only the third
    kept_before = (folder / "identities.parquet").read_bytes()
    finished = {p: p.stat().st_mtime_ns for p in parts[:2]}
    last = parts[2].with_suffix(".tar").read_bytes()
    for name in ("_SUCCESS.json", "identities.parquet", "probe_funnel.json"):
        (folder / name).unlink()
    parts[2].unlink()
    parts[2].with_suffix(".tar").unlink()
    build(load_recipe(recipe), tmp_path / "runs", stop_after="identities")
    assert {p: p.stat().st_mtime_ns for p in parts[:2]} == finished
    assert parts[2].with_suffix(".tar").read_bytes() == last
    assert (folder / "identities.parquet").read_bytes() == kept_before


def test_a_chunk_copies_samples_drawn_earlier_with_the_same_seeds_and_draws_the_rest(tmp_path):
    import tarfile

    from facefoundry.flows.config import Recipe
    from facefoundry.generators.chunks import write_chunk
    from facefoundry.generators.identities import write_identities
    from facefoundry.generators.idiff_face import generate
    from facefoundry.generators.settings import IdentitySettings
    from facefoundry.shards.images import encode_face_jpeg
    from facefoundry.shards.layout import make_key

    torch.manual_seed(0)
    IDiffFaceModel(tiny_config(id_dim=16)).save_pretrained(tmp_path / "model")
    document = {"model": str(tmp_path / "model"), "steps": 2, "device": "cpu"}
    settings = Recipe.model_validate({"generate": document}).generate
    space = generate.identity_space(settings)
    identities = tmp_path / "identities.parquet"
    write_identities(identities, IdentitySettings(count=2, method="uniform"), 5, space)
    one = settings.model_copy(update={"samples_per_identity": 1})
    probes = generate.generate_chunk(identities, [0, 1], tmp_path / "probes", 0, one, 11)
    rows = pq.read_table(probes).to_pylist()  # mark the earlier draw, to see it copied
    marker = encode_face_jpeg(np.zeros((112, 112, 3), np.uint8), 95)
    write_chunk(probes.with_suffix(".tar"), probes, rows, [marker, marker], 95)
    two = settings.model_copy(update={"samples_per_identity": 2})

    def images(out, seed, drawn=None):
        path = generate.generate_chunk(identities, [0, 1], out, 0, two, seed, drawn=drawn)
        with tarfile.open(path.with_suffix(".tar")) as archive:
            return {
                m.name: archive.extractfile(m).read() for m in archive if m.name.endswith(".jpg")
            }

    fresh = images(tmp_path / "fresh", 11)
    reused = images(tmp_path / "reused", 11, drawn=tmp_path / "probes")
    assert [reused[f"{make_key(i, 0)}.jpg"] for i in (0, 1)] == [marker, marker]
    assert all(reused[f"{make_key(i, 1)}.jpg"] == fresh[f"{make_key(i, 1)}.jpg"] for i in (0, 1))
    other_seed = images(tmp_path / "other", 12, drawn=tmp_path / "probes")  # seeds differ
    assert marker not in other_seed.values()


def test_reading_probe_centroids_from_a_funnel_without_them_says_what_to_do(tmp_path):
    import pyarrow as pa

    with pytest.raises(UsageError, match="no probe funnel here"):
        probe.read_probe_centroids(tmp_path)
    pq.write_table(
        pa.table({"candidate": [1, 2], "outcome": ["kept", "no_face"]}), tmp_path / "probes.parquet"
    )
    with pytest.raises(UsageError, match="predates stored probe centroids"):
        probe.read_probe_centroids(tmp_path)
