"""Recipes choose the generator family: ID-Booth and multi-ID run through the same
identities -> generate stages as IDiff-Face (tiny models, CPU)."""

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from facefoundry.flows.config import load_recipe
from facefoundry.flows.stages import build, start_run
from facefoundry.generators.idiff_face.model import IDiffFaceModel
from tests.helpers.generators import tiny_config


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
    generate = {
        "family": "id_booth",
        "model": str(base),
        "references_model": str(idiff_model),  # draws each identity's reference image
        "samples_per_identity": 2,
        "chunk_identities": 1,
        "device": "cpu",
        "resolution": 32,
        "train_steps": 2,
        "steps": 2,
        "prior_count": 2,
        "face_crop": "aligned",
    }
    rows = run_generate(tmp_path, generate)
    assert sorted((r["identity"], r["sample"]) for r in rows) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {r["generator"] for r in rows} == {"id_booth"}
    adapters = sorted(
        (tmp_path / "runs" / "family" / ".cache" / "adapters").rglob("adapter.safetensors")
    )
    assert len(adapters) == 2
    stamps = [a.stat().st_mtime_ns for a in adapters]
    # a sampling-only change re-runs generation but reuses every adapter
    again = run_generate(tmp_path, {**generate, "steps": 3, "guidance_scale": 3.0})
    assert sorted((r["identity"], r["sample"]) for r in again) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {r["steps"] for r in again} == {3}
    assert (
        sorted((tmp_path / "runs" / "family" / ".cache").rglob("adapter.safetensors")) == adapters
    )
    assert [a.stat().st_mtime_ns for a in adapters] == stamps
    # a training change trains new adapters beside the kept ones
    run_generate(tmp_path, {**generate, "rank": 2})
    assert len(list((tmp_path / "runs" / "family" / ".cache").rglob("adapter.safetensors"))) == 4


def test_multi_id_family_generates_groups_and_records_rejects(tmp_path, idiff_model):
    from diffusers import DDPMScheduler

    from facefoundry.generators.multi_id.model import save_model
    from tests.helpers.generators import adapted

    unet, adapter = adapted(size=32)
    model = save_model(
        tmp_path / "multi", unet, adapter, DDPMScheduler(prediction_type="v_prediction")
    )
    rows = run_generate(
        tmp_path,
        {
            "family": "multi_id",
            "model": str(model),
            "faces_per_image": 2,
            "samples_per_identity": 1,
            "steps": 2,
            "box_min": 0.3,
            "box_max": 0.4,
            "chunk_identities": 2,
            "device": "cpu",
        },
    )
    generate = tmp_path / "runs" / "family" / "generate"
    rejects = pq.read_table(generate / "rejects-00000.parquet").to_pylist()
    # random weights draw no face: both identity slots are recorded, none silently lost
    assert len(rows) + len([r for r in rejects if r["kind"] == "identity"]) == 2
    assert (generate / "_SUCCESS.json").is_file()
