"""Recipes choose the generator family: ID-Booth and multi-ID run through the same
identities -> generate stages as IDiff-Face (tiny models, CPU)."""

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from test_generators_idiff import tiny_config

from facefoundry.flows.config import load_recipe
from facefoundry.flows.stages import build, start_run
from facefoundry.generators.idiff_face.model import IDiffFaceModel


@pytest.fixture(scope="module")
def idiff_model(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("idiff")
    IDiffFaceModel(tiny_config(id_dim=128)).save_pretrained(folder)
    return folder


def run_generate(tmp_path, generate: dict):
    document = {
        "name": "family",
        "seed": 1,
        "identities": {"count": 2, "method": "separated", "tau": 0.9},
        "generate": generate,
    }
    path = tmp_path / "family.yaml"
    path.write_text(yaml.safe_dump(document))
    recipe = load_recipe(path)
    start_run(recipe, tmp_path / "runs")
    build(recipe, tmp_path / "runs", stop_after="generate")
    parts = sorted((tmp_path / "runs" / "family" / "generate").glob("part-*.parquet"))
    return [row for part in parts for row in pq.read_table(part).to_pylist()]


def test_id_booth_family_fine_tunes_and_generates_per_identity(tmp_path, idiff_model):
    from facefoundry.generators.id_booth.tiny import make_tiny_sd

    base = make_tiny_sd(tmp_path / "sd", image_size=32)
    rows = run_generate(
        tmp_path,
        {
            "family": "id_booth",
            "model": str(idiff_model),  # draws each identity's reference image
            "samples_per_identity": 2,
            "chunk_identities": 1,
            "device": "cpu",
            "id_booth": {
                "base": str(base),
                "resolution": 32,
                "train_steps": 2,
                "steps": 2,
                "prior_count": 2,
                "face_crop": "aligned",
            },
        },
    )
    assert sorted((r["identity"], r["sample"]) for r in rows) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {r["generator"] for r in rows} == {"id_booth"}
    adapters = tmp_path / "runs" / "family" / "generate" / "adapters"
    assert len(list(adapters.glob("*/adapter.safetensors"))) == 2


def test_multi_id_family_generates_groups_and_records_rejects(tmp_path, idiff_model):
    from diffusers import DDPMScheduler
    from test_generators_multi_id import adapted

    from facefoundry.generators.with_anyone.model import save_model

    unet, adapter = adapted(size=32)
    model = save_model(
        tmp_path / "multi", unet, adapter, DDPMScheduler(prediction_type="v_prediction")
    )
    rows = run_generate(
        tmp_path,
        {
            "model": str(idiff_model),
            "family": "multi_id",
            "multi_id": {
                "model": str(model),
                "faces_per_image": 2,
                "samples_per_identity": 1,
                "steps": 2,
                "box_min": 0.3,
                "box_max": 0.4,
                "chunk_identities": 2,
                "device": "cpu",
            },
        },
    )
    generate = tmp_path / "runs" / "family" / "generate"
    rejects = pq.read_table(generate / "rejects-00000.parquet").to_pylist()
    # random weights draw no face: both identity slots are recorded, none silently lost
    assert len(rows) + len([r for r in rejects if r["kind"] == "identity"]) == 2
    assert (generate / "_SUCCESS.json").is_file()
