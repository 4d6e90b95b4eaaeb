"""The end-to-end build on tiny real computations: skip logic, invalidation, truthful
reports when the generator is bad, and a full chain on real LFW faces."""

import hashlib
import json
import shutil

import pytest
import torch
import yaml

from facefoundry.flows.config import load_recipe
from facefoundry.flows.stages import build, start_run
from facefoundry.generators.idiff_face.model import IDiffFaceModel
from tests.helpers.flows import tiny_recipe
from tests.helpers.generators import tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    IDiffFaceModel(tiny_config()).save_pretrained(folder)
    return folder


def _digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob("part-*.tar"))
    }


def test_bad_generator_gives_a_truthful_report_and_reruns_skip(tiny_model, tmp_path):
    from facefoundry.flows.report import write_report

    recipe = load_recipe(tiny_recipe(tmp_path, tiny_model))
    results = build(recipe, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "tiny"
    assert [r["stage"] for r in results][:3] == ["identities", "generate", "embed"]
    assert len(list((run_dir / "generate").glob("part-*.tar"))) == 2
    shards = json.loads((run_dir / "shards" / "_SUCCESS.json").read_text())
    assert shards["samples"] == 12  # every candidate accounted for
    # a random tiny model draws no faces: nothing is kept, nothing is trained, and it says so
    assert shards["kept"] == 0
    train = json.loads((run_dir / "train" / "_SUCCESS.json").read_text())
    assert "too few" in train["skipped_reason"]
    report = write_report(run_dir).read_text()
    assert "Too few identities survived filtering" in report
    assert "<img" in report  # funnel and histograms are drawn

    again = build(recipe, tmp_path / "runs")
    assert all(r["skipped"] for r in again)

    # a changed generator setting re-runs generation and everything downstream only
    changed = load_recipe(tiny_recipe(tmp_path, tiny_model, generate={"steps": 4}))
    start_run(changed, tmp_path / "runs")
    third = {r["stage"]: r["skipped"] for r in build(changed, tmp_path / "runs")}
    assert third["identities"] is True
    assert third["generate"] is False and third["embed"] is False and third["filter"] is False


def test_bad_recipe_key_fails_before_any_work(tmp_path, tiny_model):
    from facefoundry.flows.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "generate": {"stepz": 3}}))
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-prefect"]) == 2
    assert not (tmp_path / "runs").exists()


def test_full_chain_on_real_faces_trains_and_evaluates(tiny_model, tmp_path, lfw, monkeypatch):
    """Generation swapped for real LFW faces (a stand-in for a good generator): embed ->
    filter -> shards -> train -> evaluate run for real."""
    import pyarrow.parquet as pq

    from facefoundry.evaluation.lfw import image_name
    from facefoundry.faces import get_detector, get_embedder, process_images
    from facefoundry.shards.images import encode_face_jpeg
    from facefoundry.shards.tarformat import encode_members

    recipe = load_recipe(tiny_recipe(tmp_path, tiny_model))
    build(recipe, tmp_path / "runs", stop_after="generate")
    run_dir = tmp_path / "runs" / "tiny"
    people = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld"]
    detector, embedder = get_detector("yunet"), get_embedder("sface")
    for parquet in sorted((run_dir / "generate").glob("part-*.parquet")):
        rows = pq.read_table(parquet).to_pylist()
        items = [
            (r["key"], lfw.read(image_name(people[r["identity"]], r["sample"] + 1))) for r in rows
        ]
        faces = process_images(items, detector, embedder, keep_aligned=112).aligned
        members = []
        for row, face in zip(rows, faces, strict=True):
            members.append((f"{row['key']}.jpg".encode(), encode_face_jpeg(face)))
            members.append((f"{row['key']}.json".encode(), json.dumps(row).encode()))
        parquet.with_suffix(".tar").write_bytes(encode_members(members))
    results = {r["stage"]: r for r in build(recipe, tmp_path / "runs")}
    assert results["generate"]["skipped"] is True
    shards = json.loads((run_dir / "shards" / "_SUCCESS.json").read_text())
    assert shards["kept"] >= 8 and shards["classes"] >= 2
    assert (run_dir / "train" / "model.onnx").is_file()
    figures = json.loads((run_dir / "evaluate" / "lfw-devtest.json").read_text())
    assert figures["pairs"] == 100 and figures["undetected"] == 0
    # the report reads the evaluate marker: it must carry the same figure, a whole number
    # of the 100 pairs (the trained tiny model itself sits near chance after 2 epochs)
    marker = json.loads((run_dir / "evaluate" / "_SUCCESS.json").read_text())
    assert marker["accuracy"]["lfw-devtest"] == round(figures["accuracy"], 4)
    assert abs(figures["accuracy"] * 100 - round(figures["accuracy"] * 100)) < 1e-9

    # the equal-scale comparison: only the compare stage runs, on real people shaped
    # like the kept synthetic identities, with the same trainer and evaluation
    compared = load_recipe(tiny_recipe(tmp_path, tiny_model, compare={"real": "matched"}))
    start_run(compared, tmp_path / "runs")
    again = {r["stage"]: r["skipped"] for r in build(compared, tmp_path / "runs")}
    assert [s for s, skipped in again.items() if not skipped] == ["compare"]
    comparison = json.loads((run_dir / "compare" / "comparison.json").read_text())
    kept = pq.read_table(run_dir / "filter" / "decisions.parquet").to_pydict()
    per_identity = {}
    for identity, is_kept in zip(kept["identity"], kept["kept"], strict=True):
        per_identity[identity] = per_identity.get(identity, 0) + int(is_kept)
    wanted = sorted((c for c in per_identity.values() if c), reverse=True)
    assert comparison["identities_synthetic"] == comparison["identities_real"] == len(wanted)
    assert comparison["images_synthetic"] == comparison["images_real"] == sum(wanted)
    assert comparison["real_rule"] == "matched"
    for side in ("synthetic", "real"):
        assert 0.0 <= comparison[side]["devtest"]["accuracy"] <= 1.0
    assert comparison["synthetic_over_real"] == round(
        comparison["synthetic"]["devtest"]["accuracy"] / comparison["real"]["devtest"]["accuracy"],
        4,
    )
    real_shards = json.loads((run_dir / "compare" / "real" / "shards" / "sizes.json").read_text())
    assert sum(real_shards.values()) == sum(wanted)
    from facefoundry.flows.report import write_report

    assert "Synthetic vs real at equal scale" in write_report(run_dir).read_text()

    # the real twin was kept in the cache; a compare stage that runs again with the same
    # people, trainer and evaluation restores it instead of training
    twin = comparison["real_twin"]
    assert twin["reused"] is False and twin["made_by"] == "tiny"
    cached = tmp_path / "real-twins" / twin["key"]
    assert (cached / "twin.json").is_file() and (cached / "train" / "model.onnx").is_file()
    shutil.rmtree(run_dir / "compare")

    def no_training(*args, **kwargs):
        raise AssertionError("the real twin was trained again")

    monkeypatch.setattr("facefoundry.recognition.train.train_recognizer", no_training)
    again = {r["stage"]: r["skipped"] for r in build(compared, tmp_path / "runs")}
    assert [s for s, skipped in again.items() if not skipped] == ["compare"]
    restored = json.loads((run_dir / "compare" / "comparison.json").read_text())
    assert restored["real_twin"] == {**twin, "reused": True}
    assert restored["real"] == comparison["real"]
    assert (run_dir / "compare" / "real" / "train" / "model.onnx").read_bytes() == (
        cached / "train" / "model.onnx"
    ).read_bytes()
    assert "restored from a finished twin" in write_report(run_dir).read_text()


def test_killed_build_resumes_without_losing_or_duplicating_samples(tiny_model, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    recipe = tiny_recipe(
        tmp_path, tiny_model, identities={"count": 8}, generate={"chunk_identities": 1, "steps": 20}
    )
    command = [
        sys.executable,
        "-m",
        "facefoundry.flows.cli",
        "run",
        recipe,
        "--no-prefect",
        "--stop-after",
        "generate",
    ]
    killed = subprocess.Popen([*command, "--out", str(tmp_path / "killed")])
    generate_dir = tmp_path / "killed" / "tiny" / "generate"
    deadline = time.time() + 300
    while time.time() < deadline and not (generate_dir / "part-00001.parquet").exists():
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done_before = len(list(generate_dir.glob("part-*.parquet")))
    assert 2 <= done_before < 8, "the kill should land mid-stage"
    assert not (generate_dir / "_SUCCESS.json").exists()
    subprocess.run([*command, "--out", str(tmp_path / "killed")], check=True)
    subprocess.run([*command, "--out", str(tmp_path / "clean")], check=True)
    resumed, clean = _digest(generate_dir), _digest(tmp_path / "clean" / "tiny" / "generate")
    assert len(clean) == 8 and resumed == clean
    assert not list(generate_dir.glob("*.tmp-*"))


def test_a_changed_setting_keeps_the_old_output_and_finds_it_again(tiny_model, tmp_path):
    from facefoundry.flows.markers import prune_superseded, superseded_outputs

    def run(steps: int) -> dict:
        recipe = load_recipe(tiny_recipe(tmp_path, tiny_model, generate={"steps": steps}))
        return {r["stage"]: r for r in build(recipe, tmp_path / "runs", stop_after="embed")}

    generate = tmp_path / "runs" / "tiny" / "generate"
    first = run(3)
    first_tars = _digest(generate)
    assert not first["generate"]["skipped"]
    changed = run(4)  # only generate.steps: generate and embed re-run ...
    assert not changed["generate"]["skipped"] and not changed["embed"]["skipped"]
    second_tars = _digest(generate)
    assert second_tars != first_tars
    kept = {p.parent.name: p for p, _ in superseded_outputs(tmp_path / "runs" / "tiny")}
    assert set(kept) == {"generate", "embed"}  # ... and nothing was deleted
    assert _digest(kept["generate"]) == first_tars
    back = run(3)  # the first images come back without regenerating
    assert back["identities"]["skipped"] and back["generate"]["skipped"]
    assert back["embed"]["skipped"]
    assert _digest(generate) == first_tars
    again = run(4)  # and so do the second ones
    assert again["generate"]["skipped"] and again["embed"]["skipped"]
    found = prune_superseded(tmp_path / "runs" / "tiny", dry_run=True)
    assert len(found) == 2 and all(size > 0 for _, size in found)
    assert len(superseded_outputs(tmp_path / "runs" / "tiny")) == 2  # a dry run deletes nothing
    from facefoundry.flows.cli import main

    assert main(["runs", "gc", str(tmp_path / "runs" / "tiny")]) == 0  # dry run by default
    assert len(superseded_outputs(tmp_path / "runs" / "tiny")) == 2
    assert main(["runs", "gc", str(tmp_path / "runs" / "tiny"), "--delete"]) == 0
    assert superseded_outputs(tmp_path / "runs" / "tiny") == []
    assert _digest(generate) == second_tars  # the current output is untouched
