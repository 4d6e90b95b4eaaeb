"""Privacy: synthetic identities that copy a real person of the reference set are dropped."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from facefoundry.filters.decide import Rules, apply_filters
from facefoundry.filters.funnel import PRIVACY
from facefoundry.filters.privacy import load_reference, privacy_check, reference_from_arrays
from facefoundry.filters.samples import SampleTable
from facefoundry.filters.settings import FilterSettings
from facefoundry.filters.stage import run_filter
from tests.helpers.filters import identity_samples, random_unit, write_embed_part

DIM = 512  # random 512-d identities stay far below cos 0.3 from each other


def _real_people(n: int = 300, per: int = 5, seed: int = 0):
    centres = random_unit(n, DIM, seed=seed)
    vectors, groups = identity_samples(centres, per, 0.03, seed=seed + 1)
    names = np.array([f"Real_Person_{g:03d}" for g in groups], dtype=object)
    return centres, vectors, names


def test_privacy_check_catches_a_planted_copy_of_a_real_identity():
    real_centres, real_vectors, real_names = _real_people()
    reference = reference_from_arrays(real_vectors, real_names, "sface")
    synthetic = random_unit(200, DIM, seed=5)
    copies = {17: 42, 80: 7, 150: 299}  # synthetic identity -> real person it copies
    for fake, real in copies.items():
        synthetic[fake] = real_centres[real]
    # the synthetic centroid comes from new samples of that person, not the same vectors
    samples, groups = identity_samples(synthetic, 8, 0.03, seed=6)
    centres = np.stack([samples[groups == g].mean(0) for g in range(200)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    result = privacy_check(centres, reference, tau=0.3)
    assert set(np.flatnonzero(result.flagged)) == set(copies)
    for fake, real in copies.items():
        assert result.nearest[fake] == f"Real_Person_{real:03d}"
        assert result.nearest_cos[fake] > 0.9
    assert result.nearest_cos[~result.flagged].max() < 0.3


def test_against_samples_catches_a_copy_of_one_real_image():
    real_centres, real_vectors, real_names = _real_people(50, 40, seed=2)
    # a spread-out real person: one image is far from the person's centroid
    odd = real_vectors[3].copy()  # image of Real_Person_000
    centroid = reference_from_arrays(real_vectors, real_names, "sface")
    per_image = reference_from_arrays(real_vectors, real_names, "sface", against="samples")
    assert len(centroid) == 50 and len(per_image) == 2000
    copy = odd[None, :]
    by_centroid = privacy_check(copy, centroid, tau=0.95)
    by_image = privacy_check(copy, per_image, tau=0.95)
    assert not by_centroid.flagged[0] and by_image.flagged[0]
    assert by_image.nearest[0] == "Real_Person_000" and by_image.nearest_cos[0] > 0.999


def test_privacy_rule_in_the_stage_records_the_nearest_real_identity(tmp_path):
    real_centres, real_vectors, real_names = _real_people(100, 4, seed=3)
    keys = [f"{name}/{name}_{i % 4 + 1:04d}.jpg" for i, name in enumerate(real_names)]
    dlib_like = random_unit(len(keys), DIM, seed=30)
    write_embed_part(
        tmp_path / "reference" / "part-00000.parquet",
        keys,
        real_names,
        {"sface": real_vectors, "dlib": dlib_like},
    )
    reference = load_reference(tmp_path / "reference", "sface")
    assert len(reference) == 100 and reference.names[0] == "Real_Person_000"

    synthetic = random_unit(30, DIM, seed=8)
    synthetic[4] = real_centres[61]  # identity 4 is Real_Person_061
    sface, groups = identity_samples(synthetic, 6, 0.03, seed=9)
    dlib, _ = identity_samples(random_unit(30, DIM, seed=10), 6, 0.03, seed=11)
    keys = [f"syn{g:03d}_{i:05d}" for i, g in enumerate(groups)]
    write_embed_part(
        tmp_path / "run" / "embed" / "part-00000.parquet",
        keys,
        groups,
        {"sface": sface, "dlib": dlib},
    )

    table = SampleTable(keys=keys, identities=groups, embeddings={"sface": sface})
    direct = apply_filters(table, Rules(tau_priv=0.3), reference)
    assert direct.identities.reason[4] == PRIVACY
    assert (direct.reason[groups == 4] == PRIVACY).all()

    settings = FilterSettings(
        reference=str(tmp_path / "reference"),
        tau_priv=0.3,
        tau_inter=0.4,
        min_centroid_cos=0.3,
        metric_threshold=0.5,
        impostor_pairs=2000,
    )
    out = run_filter(tmp_path / "run", tmp_path / "run" / "filter", settings)
    rows = pq.read_table(out / "decisions.parquet").to_pylist()
    flagged = [r for r in rows if r["reject_reason"] == PRIVACY]
    assert {r["identity"] for r in flagged} == {4} and len(flagged) == 6
    assert all(r["nearest_real"] == "Real_Person_061" for r in flagged)
    assert all(r["nearest_real_cos"] > 0.9 for r in flagged)
    others = [r for r in rows if r["identity"] != 4]
    assert all(r["nearest_real_cos"] < 0.3 and r["nearest_real"] for r in others)
    identities = {r["identity"]: r for r in pq.read_table(out / "identities.parquet").to_pylist()}
    assert identities[4]["reject_reason"] == PRIVACY and not identities[4]["kept"]
