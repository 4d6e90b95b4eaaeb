"""One contract test over every registered generator family (like diffusers' pipeline
tester): tiny seeded models on CPU, the real generate_chunk of each family."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from facefoundry.flows.config import Recipe
from facefoundry.generators.families import FAMILIES, family_of
from facefoundry.generators.identities import write_identities
from facefoundry.generators.settings import IdentitySettings
from facefoundry.shards.decode import decode_face
from facefoundry.shards.layout import make_key
from tests.helpers.generators import adapted, tiny_config

ROW_COLUMNS = {"key", "identity", "sample", "seed", "generator", "model_checksum", "steps"}


def idiff_face_settings(folder: Path) -> dict:
    from facefoundry.generators.idiff_face.model import IDiffFaceModel

    torch.manual_seed(0)
    IDiffFaceModel(tiny_config(id_dim=16)).save_pretrained(folder / "idiff")
    return {"model": str(folder / "idiff"), "steps": 2}


def id_booth_settings(folder: Path) -> dict:
    from facefoundry.generators.id_booth.tiny import make_tiny_sd

    references = idiff_face_settings(folder)["model"]
    return {
        "model": str(make_tiny_sd(folder / "sd", seed=0, image_size=32)),
        "references_model": references,
        "resolution": 32,
        "train_steps": 1,
        "steps": 2,
        "prior_count": 2,
        "face_crop": "aligned",
        "batch_size": 4,
    }


def multi_id_settings(folder: Path) -> dict:
    from diffusers import DDPMScheduler

    from facefoundry.generators.multi_id.model import save_model

    unet, adapter = adapted(size=32)
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    model = save_model(folder / "multi", unet, adapter, scheduler)
    return {"model": str(model), "faces_per_image": 2, "box_min": 0.3, "box_max": 0.4, "steps": 2}


TINY = {
    "idiff_face": idiff_face_settings,
    "id_booth": id_booth_settings,
    "multi_id": multi_id_settings,
}


def test_every_registered_family_has_a_tiny_model_here():
    assert set(TINY) == set(FAMILIES)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_case(request, tmp_path_factory):
    """(family name, the recipe's generate section for its tiny model, identities file)."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    document = {"family": name, "samples_per_identity": 2, "device": "cpu", "chunk_identities": 2}
    document.update(TINY[name](folder))
    settings = Recipe.model_validate({"generate": document}).generate
    space = family_of(settings).load().identity_space(settings)
    identities = folder / "identities.parquet"
    write_identities(identities, IdentitySettings(count=3, method="uniform"), 5, space)
    return name, settings, identities


def chunk(settings, identities, out: Path, ids: list[int]) -> Path:
    module = family_of(settings).load()
    return module.generate_chunk(identities, ids, out, 0, settings, 11)


def accounted(out: Path, rows: list[dict]) -> set[int]:
    """Identities with a sample, plus identities recorded as rejects (no silent loss)."""
    found = {r["identity"] for r in rows}
    rejects = out / "rejects-00000.parquet"
    if rejects.is_file():
        found |= {r["identity"] for r in pq.read_table(rejects).to_pylist() if r["identity"] >= 0}
    return found


def test_settings_type_and_family_name_agree(family_case):
    name, settings, _ = family_case
    assert type(settings) is FAMILIES[name].settings and settings.family == name


def test_plan_covers_every_identity_once(family_case):
    _, settings, _ = family_case
    plan = family_of(settings).plan(list(range(5)), settings)
    assert [i for chunk_ids in plan for i in chunk_ids] == list(range(5))
    assert all(len(c) <= settings.chunk_identities for c in plan)


def test_a_chunk_keeps_the_contract_and_is_reproducible(family_case, tmp_path):
    name, settings, identities = family_case
    module = family_of(settings).load()
    ids = [0, 1]
    parquet = chunk(settings, identities, tmp_path / "a", ids)
    rows = pq.read_table(parquet).to_pylist()
    tar_path = parquet.with_suffix(".tar")
    assert parquet.name == "part-00000.parquet" and tar_path.is_file()
    assert tar_path.stat().st_mtime_ns <= parquet.stat().st_mtime_ns  # parquet last
    assert accounted(tmp_path / "a", rows) == set(ids)
    with tarfile.open(tar_path) as tar:
        members = set(tar.getnames())
        faces = [
            decode_face(tar.extractfile(member).read())
            for member in tar.getmembers()
            if member.name.endswith(".jpg")
        ]
    assert all(tuple(face.shape) == (112, 112, 3) for face in faces)  # as shards store them
    assert faces or name == "multi_id"  # random multi-ID weights draw no face to crop back
    for row in rows:
        assert ROW_COLUMNS <= set(row)
        assert row["generator"] == name
        assert row["key"] == make_key(row["identity"], row["sample"])
        assert row["model_checksum"] == module.model_checksum(settings) != ""
        assert f"{row['key']}.jpg" in members
    # a complete chunk is not redone; a fresh folder draws the same bytes
    stamp = parquet.stat().st_mtime_ns
    assert chunk(settings, identities, tmp_path / "a", ids).stat().st_mtime_ns == stamp
    again = chunk(settings, identities, tmp_path / "b", ids)
    assert again.with_suffix(".tar").read_bytes() == tar_path.read_bytes()
    assert pq.read_table(again).to_pylist() == rows
