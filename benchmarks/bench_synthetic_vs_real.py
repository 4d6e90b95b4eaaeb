"""Equal-scale proof: the same recognizer trained on N synthetic vs N real faces.

Usage: python benchmarks/bench_synthetic_vs_real.py [--quick] [--recipe FILE] [--runs DIR]
  quick:   recipes/demo.yaml (about 400 kept images) with per-epoch DevTest validation;
  default: recipes/cpu-10k.yaml (about 9,500 kept images; hours on 2 cores).
The pipeline runs with its `compare` stage on (real LFW DevTrain faces shaped like the
kept synthetic set, the recipe's own trainer and evaluation), so a killed run resumes
where it stopped (every stage keeps its finished work). Leakage vs the generator's
training people is measured with the filter embedder and the judge
(`evaluation/leakage.py`: nearest DevTrain-person similarity above the 99th percentile
of the same figure for unseen DevTest people). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import REPO, finish, machine


def kept_centroids(run: Path, embedder: str) -> np.ndarray:
    """Unit centroid per kept identity of the run, from its embed parts."""
    import pyarrow.parquet as pq

    from facefoundry.evaluation.leakage import person_centroids
    from facefoundry.filters.samples import read_samples

    table = read_samples(run / "embed", [embedder], run / "generate")
    decisions = pq.read_table(run / "filter" / "decisions.parquet").to_pydict()
    kept = dict(zip(decisions["key"], decisions["kept"], strict=True))
    rows = np.array([bool(kept.get(k)) for k in table.keys])
    _, centroids = person_centroids(table.vectors(embedder)[rows], table.identities[rows])
    return centroids


def leak_figures(run: Path, embedders: tuple[str, ...]) -> dict:
    from facefoundry.evaluation.leakage import leak_rate, leak_reference

    figures = {}
    for embedder in embedders:
        reference = leak_reference(embedder)
        result = leak_rate(kept_centroids(run, embedder), reference.centroids, reference.threshold)
        figures[embedder] = {
            "leak_rate": result["leak_rate"],
            "leaked": result["leaked"],
            "threshold": reference.threshold,
        }
    return figures


def identities_count(run: Path) -> int:
    return int(json.loads((run / "identities" / "_SUCCESS.json").read_text())["identities"])


def stage_seconds(run: Path) -> dict:
    seconds = {}
    for marker in sorted(run.glob("*/_SUCCESS.json")):
        seconds[marker.parent.name] = json.loads(marker.read_text()).get("seconds")
    return seconds


def losses(run: Path) -> dict:
    """Where requested identities and samples were lost, stage by stage: the probe funnel
    (no face, duplicate of a realised identity), then the filter's identity and sample
    rules (duplicate identity, privacy, too few samples; no face, low detection score,
    low consistency with the identity's centroid)."""
    identities = json.loads((run / "identities" / "_SUCCESS.json").read_text())
    funnel = json.loads((run / "filter" / "metrics.json").read_text())["funnel"]
    probe = identities.get("probe_funnel") or {}
    steps = {
        "identities": {s["rule"]: s["removed"] for s in funnel["identities"]["steps"]},
        "samples": {s["rule"]: s["removed"] for s in funnel["samples"]["steps"]},
    }
    return {
        "probe": {
            k: probe[k] for k in ("probed", "no_face", "duplicate", "realised") if k in probe
        },
        "filter_identities": {"input": funnel["identities"]["input"], **steps["identities"]},
        "filter_samples": {"input": funnel["samples"]["input"], **steps["samples"]},
    }


def shard_faces(shards: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every training face (112 px, uint8) of a shard set and its label."""
    from facefoundry.shards import IndexedShards

    dataset = IndexedShards(shards / "train.index.json")
    items = [dataset[i] for i in range(len(dataset))]
    return np.stack([image.numpy() for image, _ in items]), np.array([int(y) for _, y in items])


def real_judge(run: Path, judge_spec: str) -> dict:
    """The judge's gap and EER on the real twin: the photos its shards hold (each
    sample's ``metadata.source``), at 112 px, from the cached LFW embeddings."""
    from facefoundry.evaluation.generator_quality import separation
    from facefoundry.evaluation.leakage import real_people_embeddings
    from facefoundry.shards import IndexedShards

    dataset = IndexedShards(run / "compare" / "real" / "shards" / "train.index.json", decode=False)
    people, vectors = real_people_embeddings("peopleDevTrain.txt", judge_spec, progress=False)
    people = np.asarray(people)
    rows, labels = [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        source = json.loads(sample["json"])["metadata"]["source"]  # Person/Person_0003.jpg
        person, number = source.split("/")[0], int(Path(source).stem[-4:])
        rows.append(int(np.flatnonzero(people == person)[number - 1]))
        labels.append(int(sample["cls"]))
    chosen, labels = vectors[rows], np.array(labels)
    usable = np.isfinite(chosen).all(axis=1)
    figures = separation(chosen[usable], labels[usable])
    return {"gap": round(figures["gap"], 4), "eer": round(figures["eer"], 4), "images": len(rows)}


def set_figures(run: Path, judge_spec: str, size: int = 32) -> dict:
    """The kept synthetic set against its real twin (the compare stage's real shards):
    the judge on the twin (the synthetic side's figures are the filter's, judge_gap and
    judge_eer) and identity-free variety (pose, illumination, pixel spread; synthetic
    over real, the real faces shrunk to the generator's ``size``)."""
    from facefoundry.evaluation.variety import detect_landmarks, reference_variety, variety_report

    synthetic, synthetic_labels = shard_faces(run / "shards")
    real, real_labels = shard_faces(run / "compare" / "real" / "shards")
    reference = reference_variety(real, real_labels, size=size, detector="yunet")
    variety = variety_report(
        synthetic, synthetic_labels, detect_landmarks(synthetic), reference=reference
    )
    keys = ("pose_spread_ratio", "illumination_spread_ratio", "pixel_diversity_ratio")
    return {
        "judge_real_112px": real_judge(run, judge_spec),
        **{key: round(float(variety[key]), 3) for key in keys},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the demo's size (~400 images)")
    parser.add_argument("--recipe", default=None, help="default: demo (quick) or cpu-10k")
    parser.add_argument("--runs", default=str(REPO / "runs"), help="runs folder")
    parser.add_argument("--name", default=None, help="run name (default: svr-<recipe>)")
    args = parser.parse_args()

    from facefoundry.evaluation.settings import CompareSettings
    from facefoundry.flows.config import load_recipe
    from facefoundry.flows.stages import build

    recipe_path = Path(
        args.recipe or REPO / "recipes" / ("demo.yaml" if args.quick else "cpu-10k.yaml")
    )
    recipe = load_recipe(recipe_path)
    updates = {"name": args.name or f"svr-{recipe_path.stem}"}
    train = recipe.train.model_copy(update={"val_pairs": "devtest"})  # curves for both sides
    compare = recipe.compare or CompareSettings()
    recipe = recipe.model_copy(update={**updates, "train": train, "compare": compare})
    started = time.perf_counter()
    build(recipe, args.runs)
    run = Path(args.runs) / recipe.name
    comparison = json.loads((run / "compare" / "comparison.json").read_text())
    metrics = json.loads((run / "filter" / "metrics.json").read_text())
    judge = metrics.get("metrics", {}).get("judge", {}).get("after", {})
    generated = json.loads((run / "generate" / "_SUCCESS.json").read_text())
    samples = identities_count(run) * recipe.generate.samples_per_identity
    identities_marker = json.loads((run / "identities" / "_SUCCESS.json").read_text())
    funnel = identities_marker.get("probe_funnel") or {}
    # identities drawn: the candidates probed when realising, else the count asked for
    requested = funnel.get("probed") or recipe.identities.count
    figures = {
        "machine": machine(),
        "recipe": str(
            recipe_path.relative_to(REPO)
            if recipe_path.is_absolute() and recipe_path.is_relative_to(REPO)
            else recipe_path
        ),
        "images_synthetic": comparison["images_synthetic"],
        "images_real": comparison["images_real"],
        "identities_synthetic": comparison["identities_synthetic"],
        "identities_real": comparison["identities_real"],
        "real_rule": comparison["real_rule"],
        # restored from a finished twin of an earlier run, or trained in this one
        "real_twin": comparison.get("real_twin"),
        "synthetic_devtest_acc": comparison["synthetic"]["devtest"]["accuracy"],
        "synthetic_devtest_std": comparison["synthetic"]["devtest"]["std"],
        "real_devtest_acc": comparison["real"]["devtest"]["accuracy"],
        "real_devtest_std": comparison["real"]["devtest"]["std"],
        "synthetic_view2_acc": comparison["synthetic"].get("view2", {}).get("accuracy"),
        "real_view2_acc": comparison["real"].get("view2", {}).get("accuracy"),
        "synthetic_over_real": comparison["synthetic_over_real"],
        "verdict": comparison["verdict"],
        "judge_gap": round(judge["genuine"]["mean"] - judge["impostor"]["mean"], 4)
        if judge.get("genuine") and judge.get("impostor")
        else None,
        "judge_eer": judge.get("eer"),
        "identities_requested": requested,
        "identities_realised": identities_marker.get("identities"),
        "probe_funnel": identities_marker.get("probe_funnel"),
        "identities_kept": comparison["identities_synthetic"],
        "kept_over_requested": round(comparison["identities_synthetic"] / requested, 3),
        # of the kept identities, those the judge also tells apart (filters.distinct)
        "judge_distinct_identities": metrics.get("judge_distinct", {}).get("distinct_identities"),
        "leak": leak_figures(run, (recipe.filter.embedder, recipe.filter.judge_embedder)),
        "generate_img_per_s": round(samples / generated["seconds"], 3)
        if generated.get("seconds")
        else None,
        "losses": losses(run),
        "sets": set_figures(run, recipe.filter.judge_embedder),
        "stage_seconds": stage_seconds(run),
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    figures["leak_rate"] = max(v["leak_rate"] for v in figures["leak"].values())
    finish(figures)


if __name__ == "__main__":
    main()
