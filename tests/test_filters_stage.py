"""The filter stage end to end: embed parts in, decisions / identities / metrics out, and the CLI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facefoundry.filters.calibrate import calibrate_embeddings, save_calibration
from facefoundry.filters.funnel import check_funnel
from facefoundry.filters.settings import FilterSettings
from facefoundry.filters.stage import compute_metrics, run_filter
from facefoundry.flows.cli import main
from tests.helpers.filters import at_cosine, identity_samples, random_unit, write_embed_part

DIM = 512
PER = 8
N_IDS = 40


def _run_dir(tmp_path):
    """40 identities x 8 samples with planted problems; returns (run dir, expected reasons)."""
    sface_centres = random_unit(N_IDS, DIM, seed=1)
    sface_centres[3] = at_cosine(sface_centres[4:5], 0.97, seed=2)[0]  # identity 3 ~ identity 4
    sface, groups = identity_samples(sface_centres, PER, 0.02, seed=3)
    dlib, _ = identity_samples(random_unit(N_IDS, DIM, seed=4), PER, 0.02, seed=5)
    sface[groups == 4] = identity_samples(sface_centres[4:5], PER, 0.005, seed=6)[0]  # tighter
    n = len(groups)
    keys = [f"id{g:03d}-{i % PER}" for i, g in enumerate(groups)]
    status = ["ok"] * n
    n_faces = np.ones(n, dtype=np.int64)
    det = np.full(n, 0.95)
    expected: dict[str, str] = {}

    def row(identity: int, sample: int) -> int:
        return identity * PER + sample

    status[row(0, 0)] = "no_face"
    sface[row(0, 0)] = dlib[row(0, 0)] = np.nan
    expected[keys[row(0, 0)]] = "no_face"
    sface[row(0, 1)] = np.nan  # status ok but no usable vector
    expected[keys[row(0, 1)]] = "bad_embedding"
    n_faces[row(1, 0)] = 2
    expected[keys[row(1, 0)]] = "multiple_faces"
    det[row(1, 1)] = 0.3
    expected[keys[row(1, 1)]] = "low_det_score"
    sface[row(2, 0)] = random_unit(1, DIM, seed=7)[0]  # not this person
    expected[keys[row(2, 0)]] = "low_centroid_cos"
    for sample in range(1, PER):  # identity 5 keeps one sample: fewer than k = 2
        status[row(5, sample)] = "no_face"
        sface[row(5, sample)] = np.nan
        expected[keys[row(5, sample)]] = "no_face"
    for sample in range(PER):  # identity 6 keeps nothing
        status[row(6, sample)] = "bad_image"
        sface[row(6, sample)] = dlib[row(6, sample)] = np.nan
        expected[keys[row(6, sample)]] = "bad_image"
    expected[keys[row(5, 0)]] = "too_few_samples"
    run = tmp_path / "run"
    half = n // 2
    for part, sl in enumerate((slice(0, half), slice(half, n))):
        write_embed_part(
            run / "embed" / f"part-{part:05d}.parquet",
            keys[sl],
            groups[sl],
            {"sface": sface[sl], "dlib": dlib[sl]},
            status=status[sl],
            n_faces=n_faces[sl],
            det_score=det[sl],
        )
    return run, keys, groups, expected


SETTINGS = {
    "min_centroid_cos": 0.3,
    "centroid_quantile": 0.125,  # 1 of 8 survivors, none of 7 or fewer
    "min_samples": 2,
    "tau_inter": 0.5,
    "tau_priv": None,
    "metric_threshold": 0.5,
    "impostor_pairs": 5000,
}


def test_run_filter_records_every_decision_and_the_funnel_adds_up(tmp_path):
    run, keys, groups, expected = _run_dir(tmp_path)
    out = run_filter(run, run / "filter", FilterSettings(**SETTINGS))
    rows = pq.read_table(out / "decisions.parquet").to_pylist()
    assert [r["key"] for r in rows] == keys  # one row per candidate, rejects included
    by_key = {r["key"]: r for r in rows}
    for key, reason in expected.items():
        assert by_key[key]["reject_reason"] == reason, key
        assert not by_key[key]["kept"]
    # identity 3 duplicates the tighter identity 4: merged away, partner recorded
    dup = [r for r in rows if r["identity"] == 3]
    assert Counter(r["reject_reason"] for r in dup) == {"duplicate_identity": 7, "quantile_trim": 1}
    assert all(r["duplicate_of"] == 4 and r["duplicate_cos"] > 0.5 for r in dup)
    # full identities lose exactly their lowest sample to the quantile rule
    trimmed = Counter(r["identity"] for r in rows if r["reject_reason"] == "quantile_trim")
    assert trimmed[10] == 1 and trimmed[4] == 1 and trimmed[0] == 0 and trimmed[2] == 0
    for r in rows:
        assert r["kept"] == (r["reject_reason"] is None)
        if r["status"] == "ok" and r["key"] not in expected:
            # noise 0.02 in 512-d: a sample's cosine to its identity's centre is ~0.91
            assert 0.88 < r["centroid_cos"] <= 1.0 + 1e-6, r["key"]
    outlier = by_key[keys[2 * PER]]  # the planted stranger in identity 2: below 0.3
    assert outlier["centroid_cos"] < SETTINGS["min_centroid_cos"]

    metrics = json.loads((out / "metrics.json").read_text())
    funnel = metrics["funnel"]
    check_funnel(funnel)
    counts = Counter(r["reject_reason"] for r in rows if not r["kept"])
    assert {s["rule"]: s["removed"] for s in funnel["samples"]["steps"] if s["removed"]} == counts
    assert funnel["samples"]["kept"] == sum(r["kept"] for r in rows)
    identities = pq.read_table(out / "identities.parquet").to_pylist()
    reasons = {r["identity"]: r["reject_reason"] for r in identities}
    assert reasons[3] == "duplicate_identity" and reasons[5] == "too_few_samples"
    assert reasons[6] == "no_samples_left" and reasons[4] is None
    assert funnel["identities"]["kept"] == N_IDS - 3
    assert sum(r["kept"] for r in identities) == N_IDS - 3

    assert metrics["embedders"] == {"filter": "sface", "judge": "dlib", "privacy": "sface"}
    assert metrics["judge_independent"] is True
    # a cosine tau_inter far below the calibrated range: no FMR to carry over to the judge
    assert "false-match rate" in metrics["judge_distinct"]["skipped"]
    judge = metrics["metrics"]["judge"]
    assert judge["embedder"] == "dlib"
    before, after = judge["before"], judge["after"]
    assert before["identities"] == N_IDS - 1  # identity 6 has no vector at all
    assert after["identities"] == N_IDS - 3 and after["samples"] == funnel["samples"]["kept"]
    for figures in (before, after):
        # the judge's identities are tight (noise 0.02) around random 512-d centres:
        # perfectly separable, so every figure must say so
        assert figures["eer"] == 0.0 and figures["d_prime"] > 10 and figures["fdr"] > 100
        assert figures["genuine"]["mean"] > 0.75 and abs(figures["impostor"]["mean"]) < 0.05
        assert figures["uniqueness"] == 1.0 and figures["consistency"] == 1.0
        assert set(figures["fnmr_at_fmr"]) == {"1e-02", "1e-03"}
        assert all(v["fnmr"] == 0.0 for v in figures["fnmr_at_fmr"].values())
    assert after["genuine"]["n"] < before["genuine"]["n"]  # rejected samples left the pairs
    filtered = metrics["metrics"]["filter"]
    assert filtered["after"]["eer"] < filtered["before"]["eer"]  # the planted problems went
    assert metrics["metrics"]["filter"]["embedder"] == "sface"
    assert metrics["metrics"]["filter"]["before"]["uniqueness"] < 1.0  # identities 3 ~ 4
    assert metrics["metrics"]["filter"]["after"]["uniqueness"] == 1.0
    assert metrics["thresholds"]["tau_inter"]["cos"] == 0.5


def test_dedup_setting_chooses_the_survivors_of_the_same_rule(tmp_path):
    """A hub identity near three others: greedy (the hub is the most consistent) keeps
    the hub, largest keeps the three; both leave centroids pairwise below tau_inter."""
    centres = random_unit(8, DIM, seed=1)
    leaves = centres[1:4]
    centres[0] = (leaves.sum(axis=0) + 0.2 * centres[0]) / np.linalg.norm(
        leaves.sum(axis=0) + 0.2 * centres[0]
    )  # cos ~0.57 to each leaf
    vectors, groups = identity_samples(centres, PER, 0.02, seed=3)
    vectors[groups == 0] = identity_samples(centres[:1], PER, 0.005, seed=6)[0]  # tightest
    dlib, _ = identity_samples(random_unit(8, DIM, seed=4), PER, 0.02, seed=5)
    run = tmp_path / "run"
    keys = [f"id{g:03d}-{i % PER}" for i, g in enumerate(groups)]
    write_embed_part(
        run / "embed" / "part-00000.parquet", keys, groups, {"sface": vectors, "dlib": dlib}
    )
    kept = {}
    for dedup in ("greedy", "largest"):
        settings = FilterSettings(**{**SETTINGS, "centroid_quantile": 0.0, "dedup": dedup})
        out = run_filter(run, tmp_path / dedup, settings)
        rows = pq.read_table(out / "identities.parquet").to_pylist()
        kept[dedup] = {r["identity"] for r in rows if r["kept"]}
        assert json.loads((out / "metrics.json").read_text())["rules"]["dedup"] == dedup
    assert kept["greedy"] == {0, 4, 5, 6, 7}
    assert kept["largest"] == {1, 2, 3, 4, 5, 6, 7}
    assert FilterSettings().dedup == "greedy"  # measured: the recognizer gains nothing


def test_fmr_thresholds_resolve_through_a_calibration_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEFOUNDRY_CACHE_DIR", str(tmp_path / "cache"))
    run, *_ = _run_dir(tmp_path)
    for name, seed in (("sface", 1), ("dlib", 2)):
        vectors = random_unit(3000, DIM, seed=seed)
        calibration = calibrate_embeddings(vectors, np.arange(3000), name, None, n_pairs=200_000)
        save_calibration(calibration, tmp_path / "cal")
    settings = FilterSettings(
        **{**SETTINGS, "tau_inter": {"fmr": 1e-3}, "metric_threshold": {"fmr": 1e-2}},
        calibration=str(tmp_path / "cal"),
    )
    out = run_filter(run, tmp_path / "out", settings)
    metrics = json.loads((out / "metrics.json").read_text())
    resolved = metrics["thresholds"]["tau_inter"]
    assert resolved["fmr"] == 1e-3 and resolved["source"].startswith("calibration")
    assert 0.08 < resolved["cos"] < 0.2  # random 512-d: about 3.09 / sqrt(512) = 0.137
    assert metrics["metrics"]["judge"]["radius"]["threshold"]["fmr"] == 1e-2


def test_missing_judge_embeddings_fail_with_advice(tmp_path):
    vectors, groups = identity_samples(random_unit(5, 64), 3, 0.05)
    write_embed_part(
        tmp_path / "embed" / "part-00000.parquet",
        [f"k{i}" for i in range(15)],
        groups,
        {"sface": vectors},
    )
    with pytest.raises(KeyError, match="embedding_dlib"):
        run_filter(tmp_path, tmp_path / "filter", FilterSettings(**SETTINGS))


def _cli(argv):
    return main(argv)


def test_cli_filter_and_metrics(tmp_path, capsys):
    run, *_ = _run_dir(tmp_path)
    overrides = []
    for key, value in SETTINGS.items():
        overrides += ["--set", f"{key}={'null' if value is None else value}"]
    assert _cli(["filter", str(run), "-q", *overrides]) == 0
    assert capsys.readouterr().out.strip().endswith("filter")
    assert (run / "filter" / "decisions.parquet").is_file()
    out = tmp_path / "m.json"
    code = _cli(
        [
            "metrics",
            str(run),
            "--embedder",
            "dlib",
            "--json",
            str(out),
            "-q",
            "--set",
            "metric_threshold=0.5",
            "--set",
            "impostor_pairs=5000",
        ]
    )
    assert code == 0
    document = json.loads(out.read_text())
    assert document["embedder"] == "dlib" and document["decisions"].endswith("decisions.parquet")
    assert document["after"]["samples"] < document["before"]["samples"]
    stage = json.loads((run / "filter" / "metrics.json").read_text())["metrics"]["judge"]
    assert document["before"]["eer"] == pytest.approx(stage["before"]["eer"])
    # a cosine threshold set for another model is refused with advice, not a traceback
    code = _cli(
        [
            "filter",
            str(run),
            "-q",
            "--out",
            str(tmp_path / "x"),
            *overrides,
            "--set",
            "tau_inter={cos: 0.4, embedder: dlib}",
        ]
    )
    assert code == 2 and "do not carry over" in capsys.readouterr().err
    for command in ("filter", "metrics", "calibrate"):
        with pytest.raises(SystemExit):
            _cli([command, "--help"])
        assert "usage: facefoundry " + command in capsys.readouterr().out


def test_metrics_over_parts_on_dask_match_in_process(tmp_path):
    run, *_ = _run_dir(tmp_path)
    settings = FilterSettings(judge_embedder="dlib", impostor_pairs=5000, metric_threshold=0.5)
    local = compute_metrics(run, "dlib", settings)
    distributed = compute_metrics(run, "dlib", settings, workers=1)
    assert distributed["before"]["eer"] == local["before"]["eer"]
    assert distributed["before"]["samples"] == local["before"]["samples"]


def test_identities_come_from_generate_parquet_or_key_folder(tmp_path):
    from facefoundry.filters.samples import read_samples

    vectors, groups = identity_samples(random_unit(3, 32), 2, 0.05)
    keys = [f"Person_{g}/img_{i}.jpg" for i, g in enumerate(groups)]
    path = write_embed_part(
        tmp_path / "run" / "embed" / "part-00000.parquet", keys, groups, {"sface": vectors}
    )
    pq.write_table(pq.read_table(path).drop_columns(["identity"]), path)
    by_folder = read_samples(tmp_path / "run", ["sface"])
    assert by_folder.identities.tolist() == [f"Person_{g}" for g in groups]
    generate = tmp_path / "run" / "generate" / "part-00000.parquet"
    generate.parent.mkdir()
    pq.write_table(pa.table({"key": keys, "identity": (groups + 100).tolist()}), generate)
    for where in (tmp_path / "run", tmp_path / "run" / "embed"):
        assert read_samples(where, ["sface"]).identities.tolist() == (groups + 100).tolist()
