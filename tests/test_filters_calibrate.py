"""False-match-rate calibration: thresholds, look-up by embedder and checksum, resolution."""

from __future__ import annotations

import numpy as np
import pytest

from facefoundry.filters.calibrate import (
    CalibrationError,
    calibrate_embeddings,
    find_calibration,
    resolve_threshold,
    save_calibration,
    threshold_at_fmr,
)
from facefoundry.filters.pairs import impostor_pairs, pair_scores
from facefoundry.filters.settings import FilterSettings, Threshold
from tests.helpers.filters import random_unit


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEFOUNDRY_CACHE_DIR", str(tmp_path / "cache"))


def test_threshold_at_fmr_by_hand():
    impostor = np.arange(1000) / 1000.0
    assert threshold_at_fmr(impostor, 0.01) == pytest.approx(0.989)
    assert np.mean(impostor > threshold_at_fmr(impostor, 0.01)) == pytest.approx(0.01)
    assert threshold_at_fmr(impostor, 0.0001) == pytest.approx(0.999)  # strictest measurable


def test_calibrated_threshold_reaches_the_fmr_on_fresh_pairs():
    dim = 64
    vectors = random_unit(4000, dim, seed=1)  # every row a different "person"
    identities = np.arange(4000)
    calibration = calibrate_embeddings(vectors, identities, "toy", "abc123", n_pairs=400_000)
    # random unit vectors: cosine ~ N(0, 1/dim); FMR 1e-3 -> about 3.09 / sqrt(dim)
    assert calibration.cos_at(1e-3) == pytest.approx(3.09 / np.sqrt(dim), abs=0.03)
    fresh = random_unit(4000, dim, seed=2)
    a, b = impostor_pairs(np.arange(4000), 400_000, seed=9)
    scores = pair_scores(fresh, a, b)
    for fmr in (1e-2, 1e-3):
        measured = np.mean(scores > calibration.cos_at(fmr))
        assert fmr / 1.5 < measured < fmr * 1.5
    assert calibration.fmr_at(calibration.cos_at(1e-3)) == pytest.approx(1e-3, rel=0.01)
    with pytest.raises(CalibrationError, match="outside"):
        calibration.cos_at(1e-6)  # 400k pairs do not resolve 1e-6


def test_saved_calibration_is_found_by_embedder_and_checksum(tmp_path):
    vectors = random_unit(500, 32, seed=3)
    calibration = calibrate_embeddings(vectors, np.arange(500), "toy", "abc123", n_pairs=50_000)
    path = save_calibration(calibration, tmp_path / "cal")
    assert path.name.startswith("toy-abc123")
    found = find_calibration("toy", "abc123", tmp_path / "cal")
    assert found.thresholds == calibration.thresholds
    with pytest.raises(CalibrationError, match="facefoundry calibrate"):
        find_calibration("toy", "other-weights", tmp_path / "cal")
    resolved = resolve_threshold(Threshold(fmr=1e-3), "toy", "abc123", tmp_path / "cal")
    assert resolved.cos == pytest.approx(calibration.cos_at(1e-3))
    assert resolved.fmr == 1e-3 and "calibration" in resolved.source


def test_cosine_thresholds_do_not_carry_over_between_models():
    resolved = resolve_threshold(Threshold(cos=0.4, embedder="sface"), "sface")
    assert resolved.cos == 0.4
    with pytest.raises(CalibrationError, match="do not carry over"):
        resolve_threshold(Threshold(cos=0.4, embedder="sface"), "dlib")
    assert resolve_threshold(Threshold(cos=0.9), "dlib").cos == 0.9  # unnamed: any model


def test_builtin_lfw_calibrations_for_sface_and_dlib():
    sface = find_calibration("sface")
    dlib = find_calibration("dlib")
    for calibration in (sface, dlib):
        fmrs, cosines = calibration.table()
        assert (np.diff(cosines) <= 0).all()  # stricter FMR -> higher cosine
        assert calibration.impostor_pairs >= 1_000_000 and "LFW" in calibration.source
    # SFace impostors centre near 0, dlib's near 0.8: the same FMR is a very different cosine
    assert 0.2 < sface.cos_at(1e-3) < 0.6
    assert dlib.cos_at(1e-3) > 0.85


def test_threshold_settings_accept_numbers_and_fmr_strings():
    settings = FilterSettings(tau_inter=0.4, tau_priv="fmr:1e-4", min_centroid_cos={"cos": 0.2})
    assert settings.tau_inter == Threshold(cos=0.4)
    assert settings.tau_priv == Threshold(fmr=1e-4)
    with pytest.raises(ValueError, match="exactly one"):
        Threshold(cos=0.3, fmr=1e-3)
    with pytest.raises(ValueError, match="judge"):
        FilterSettings(embedder="dlib", judge_embedder="dlib")
    assert FilterSettings(judge_embedder="sface", allow_same_judge=True).judge_embedder == "sface"
    with pytest.raises(ValueError, match="extra"):
        FilterSettings(tau_intre=0.4)
