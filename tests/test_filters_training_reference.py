"""The privacy rule's default reference: the training people a generator's model folder
records, at the threshold calibrated on people it never saw (real LFW faces, tiny files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from facefoundry.evaluation.leakage import person_centroids, real_people_embeddings
from facefoundry.evaluation.lfw import read_people
from facefoundry.filters.funnel import PRIVACY
from facefoundry.filters.settings import FilterSettings
from facefoundry.filters.stage import run_filter
from facefoundry.generators.training_record import TrainingRecord, write_training_record
from tests.helpers.filters import at_cosine, identity_samples, random_unit, unit, write_embed_part

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "idiff-face-lfw"
# only the privacy rule decides: every other rule lets these identities through
SETTINGS = dict(
    min_centroid_cos=None,
    centroid_quantile=0.0,
    min_samples=1,
    tau_inter=None,
    impostor_pairs=200,
    genuine_pairs=200,
)


def _write_people(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text(f"{len(rows)}\n" + "".join(f"{name}\t{count}\n" for name, count in rows))
    return path


@pytest.fixture(scope="module")
def tiny_people(lfw, tmp_path_factory):
    """20 DevTrain people (the "training set"), 40 DevTest people (unseen, they calibrate
    tau) and 5 other DevTest people (strangers to draw from), embedded with SFace into a
    private cache (~140 images)."""
    root = tmp_path_factory.mktemp("people")
    train = [r for r in read_people(lfw.protocol_file("peopleDevTrain.txt")) if 2 <= r[1] <= 3]
    test = read_people(lfw.protocol_file("peopleDevTest.txt"))
    files = {
        "train": _write_people(root / "train.txt", train[:20]),
        "unseen": _write_people(root / "unseen.txt", [r for r in test if r[1] <= 2][:40]),
        "strangers": _write_people(root / "strangers.txt", [r for r in test if r[1] == 3][:5]),
    }
    lfw.names()  # index the archive under the real cache before redirecting it
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACEFOUNDRY_CACHE_DIR", str(root / "cache"))
        embedded = {
            key: real_people_embeddings(path, "sface", lfw, progress=False)
            for key, path in files.items()
        }
    return files, embedded


def _synthetic_run(run: Path, identities: list[np.ndarray], checksum: str | None = None) -> None:
    """An embed part: identity g's SFace samples are ``identities[g]``; dlib is random."""
    sface = np.concatenate(identities)
    groups = np.repeat(np.arange(len(identities)), [len(s) for s in identities])
    keys = [f"syn{g:03d}_{i:05d}" for i, g in enumerate(groups)]
    write_embed_part(
        run / "embed" / "part-00000.parquet",
        keys,
        groups,
        {"sface": sface, "dlib": random_unit(len(keys), 128, seed=40)},
        checksums={"sface": checksum} if checksum else None,
    )


def _identities(out: Path) -> dict[int, dict]:
    return {r["identity"]: r for r in pq.read_table(out / "identities.parquet").to_pylist()}


def test_recorded_training_people_drop_a_near_copy_and_keep_strangers(lfw, tiny_people, tmp_path):
    from facefoundry.faces import get_embedder

    files, embedded = tiny_people
    model = tmp_path / "model"
    write_training_record(
        model,
        TrainingRecord(
            source="lfw",
            people_file=str(files["train"]),
            unseen_people=str(files["unseen"]),
            images=len(embedded["train"][0]),
            people=20,
        ),
    )
    # the calibrated tau, by hand: 99th percentile of unseen people's nearest training centroid
    names, centres = person_centroids(embedded["train"][1], embedded["train"][0])
    _, unseen = person_centroids(embedded["unseen"][1], embedded["unseen"][0])
    tau = float(np.quantile((unseen.astype(np.float64) @ centres.T).max(axis=1), 0.99))

    labels, vectors = embedded["train"]
    copied = names[2]  # identity 0: this person's own images, slightly perturbed
    rng = np.random.default_rng(0)
    copy = unit(
        vectors[labels == copied] + 0.02 * rng.standard_normal((int((labels == copied).sum()), 128))
    )
    near = names[7]  # identity 1: 4 samples around a point at cos 0.9 to this person
    near_samples, _ = identity_samples(at_cosine(centres[[7]], 0.9, seed=1), 4, 0.02, seed=2)
    stranger_labels, stranger_vectors = embedded["strangers"]  # identities 2..6: real people
    strangers = [stranger_vectors[stranger_labels == s] for s in dict.fromkeys(stranger_labels)]
    run = tmp_path / "run"
    _synthetic_run(run, [copy, near_samples, *strangers], get_embedder("sface").checksum)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACEFOUNDRY_CACHE_DIR", str(files["train"].parent / "cache"))
        out = run_filter(
            run, run / "filter", FilterSettings(**SETTINGS), generator_model=model, lfw=lfw
        )

    rows = _identities(out)
    for identity, person in ((0, copied), (1, near)):
        assert rows[identity]["reject_reason"] == PRIVACY and not rows[identity]["kept"]
        assert rows[identity]["nearest_real"] == person
        assert rows[identity]["nearest_real_cos"] > max(tau, 0.85)
    for identity in range(2, 7):
        assert rows[identity]["kept"], rows[identity]
        assert rows[identity]["nearest_real_cos"] <= tau and rows[identity]["nearest_real"] in names

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["reference"] is None  # the default: nothing in the settings changed
    threshold = metrics["thresholds"]["tau_priv"]
    assert threshold["cos"] == pytest.approx(tau, abs=1e-6)
    assert threshold["embedder"] == "sface" and threshold["source"].startswith("leak calibration")
    note = metrics["rules"]["privacy"]
    assert note.startswith(f"20 training people of {model} (train.txt), calibrated tau {tau:.4f}")
    assert "99th percentile" in note and "40 unseen unseen.txt people" in note
    summary = metrics["privacy_reference"]
    assert summary["training_identities"] == 20 and summary["unseen_identities"] == 40
    assert summary["record"]["source"] == "lfw" and summary["model"] == str(model)


def test_without_a_record_privacy_is_skipped_and_it_can_be_turned_off(tmp_path):
    centres = random_unit(6, 128, seed=3)
    samples, groups = identity_samples(centres, 3, 0.02, seed=4)
    run = tmp_path / "run"
    _synthetic_run(run, [samples[groups == g] for g in range(6)])
    settings = FilterSettings(**SETTINGS)
    assert FilterSettings().model_dump()["reference"] is None  # recipes dump as before

    def privacy(name: str, settings: FilterSettings = settings, **options) -> dict:
        out = run_filter(run, tmp_path / name, settings, **options)
        metrics = json.loads((out / "metrics.json").read_text())
        assert all(r["kept"] for r in _identities(out).values())
        assert "privacy_reference" not in metrics
        return metrics

    # no generator named, and a model folder without a record (tiny models, checkpoints)
    assert privacy("a")["rules"]["privacy"] == "skipped: no reference set (settings.reference)"
    bare = tmp_path / "checkpoint"
    bare.mkdir()
    note = privacy("b", generator_model=bare)["rules"]["privacy"]
    assert (
        note
        == f"skipped: no reference set (settings.reference); {bare} records no LFW training set"
    )

    recorded = tmp_path / "model"
    write_training_record(
        recorded, TrainingRecord(source="lfw", people_file="peopleDevTrain.txt", images=9, people=3)
    )
    off = FilterSettings(**SETTINGS, reference="None")
    assert off.reference == "none" and off.reference_off
    assert (
        privacy("c", off, generator_model=recorded)["rules"]["privacy"] == "off (reference: none)"
    )
    no_tau = FilterSettings(**(SETTINGS | {"tau_priv": None}))
    note = privacy("d", no_tau, generator_model=recorded)["rules"]["privacy"]
    assert note == "off (tau_priv is null)"
    # a record of LFW people but no LFW here: skipped, and the report says why
    note = privacy("e", generator_model=recorded, lfw=tmp_path / "no-lfw")["rules"]["privacy"]
    assert note.startswith(f"skipped: {recorded} was trained on LFW people but LFW is not found")

    # the command line finds the generator in a run folder's recipe, and takes --reference none
    from facefoundry.flows.cli import main

    (run / "recipe.resolved.yaml").write_text(f"generate:\n  model: {bare}\n")
    (tmp_path / "settings.yaml").write_text("min_samples: 1\ntau_inter: null\n")
    argv = ["filter", str(run), "--settings", str(tmp_path / "settings.yaml"), "-q"]
    assert main([*argv, "--out", str(tmp_path / "f")]) == 0
    assert note_of(tmp_path / "f").endswith(f"{bare} records no LFW training set")
    no_lfw = ["--lfw", str(tmp_path / "no-lfw")]
    assert main([*argv, "--out", str(tmp_path / "g"), "--generator", str(recorded), *no_lfw]) == 0
    assert note_of(tmp_path / "g").startswith(f"skipped: {recorded} was trained on LFW people")
    assert main([*argv, "--out", str(tmp_path / "h"), "--reference", "none"]) == 0
    assert note_of(tmp_path / "h") == "off (reference: none)"


def note_of(out: Path) -> str:
    return json.loads((out / "metrics.json").read_text())["rules"]["privacy"]


def _full_cache_present(lfw) -> bool:
    from facefoundry.evaluation.leakage import people_cache_path
    from facefoundry.faces import get_embedder

    model = get_embedder("sface")
    return all(
        people_cache_path(lfw.protocol_file(name), model).is_file()
        for name in ("peopleDevTrain.txt", "peopleDevTest.txt")
    )


def test_the_default_model_uses_devtrain_at_its_calibrated_tau(lfw, tmp_path):
    """The committed model end to end (needs the embedded DevTrain/DevTest cache: ~1 s)."""
    if not _full_cache_present(lfw):
        pytest.skip("LFW DevTrain/DevTest not embedded with SFace in the cache (minutes on a CPU)")
    labels, vectors = real_people_embeddings("peopleDevTrain.txt", "sface", lfw, progress=False)
    names, centres = person_centroids(vectors, labels)
    person = int(np.searchsorted(names, "Abdoulaye_Wade"))
    copy, _ = identity_samples(centres[[person]], 4, 0.02, seed=5)
    # 0.45 to a training person: above the FMR 1e-3 pair cosine (0.36), below the calibrated
    # tau (0.55), as close as 1 in 100 real strangers gets to someone among 4,038 people
    loose, _ = identity_samples(at_cosine(centres[[person + 1]], 0.45, seed=6), 4, 0.01, seed=7)
    run = tmp_path / "run"
    _synthetic_run(run, [copy, loose])
    out = run_filter(
        run, run / "filter", FilterSettings(**SETTINGS), generator_model=DEFAULT_MODEL, lfw=lfw
    )
    rows = _identities(out)
    assert rows[0]["reject_reason"] == PRIVACY and rows[0]["nearest_real"] == "Abdoulaye_Wade"
    assert rows[1]["kept"] and 0.36 < rows[1]["nearest_real_cos"] < 0.5
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["thresholds"]["tau_priv"]["cos"] == pytest.approx(0.5465, abs=0.01)
    note = metrics["rules"]["privacy"]
    assert note.startswith(f"4038 training people of {DEFAULT_MODEL} (peopleDevTrain.txt)")
    assert "peopleDevTest.txt" in note
