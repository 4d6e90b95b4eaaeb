"""Synthetic vs real at equal scale: the claim a synthetic face dataset has to make.

After a run has trained and evaluated a recognizer on its kept synthetic images, the
``compare`` stage trains the *same* recognizer (the run's ``train`` section, so the same
settings, epochs and budget) on real LFW DevTrain faces shaped like the synthetic set,
and evaluates it with the run's ``evaluation`` section (LFW DevTest: people neither
the generator nor either recognizer saw; View 2).

Which real faces (``real``):
- ``matched``: one DevTrain person per kept synthetic identity, with as many photos as
  that identity has images where the person has them (``lfw_shards.match_people``);
- ``devtrain``: every DevTrain face (9,525 photos of 4,038 people, most with one photo);
- ``auto``: whichever of the two has an image count closer to the synthetic set's
  (matched runs out of people with >= 2 photos at about 6,700 images).
The output is ``compare/comparison.json`` (both accuracies with fold std, their ratio,
identity and image counts, the per-epoch validation curves) and the real run's
``compare/real/{shards,train,evaluate}``.

The real side does not depend on the synthetic images once its people are chosen, and at
the largest sizes it is always the same (all of DevTrain: ~34 min of training on 2 cores).
So a finished real twin is kept in ``$FACEFOUNDRY_CACHE_DIR/real-twins/<key>``, the key
being its people, the trainer and evaluation settings, the code that makes it and the LFW
copy, and a later run with the same key restores it instead of training again
(``comparison.json``'s ``real_twin`` says which). Delete the folder to train it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

RATIO_VERDICT = 0.90  # issue 15's target: synthetic accuracy >= 90% of real


def synthetic_counts(decisions_path: Path) -> dict[int, int]:
    """Kept images per kept synthetic identity, from the filter's decisions."""
    import pyarrow.parquet as pq

    table = pq.read_table(decisions_path, columns=["identity", "kept"]).to_pydict()
    counts: dict[int, int] = {}
    for identity, kept in zip(table["identity"], table["kept"], strict=True):
        if kept:
            counts[int(identity)] = counts.get(int(identity), 0) + 1
    return counts


def choose_real_people(
    available: list[tuple[str, int]], per_identity: list[int], mode: str = "auto"
) -> tuple[list[tuple[str, int]], str]:
    """(name, photos) rows of the real set and which rule chose them."""
    from facefoundry.evaluation.lfw_shards import match_people

    matched = match_people(available, per_identity)
    if mode == "matched":
        return matched, "matched"
    if mode == "devtrain":
        return list(available), "devtrain"
    want = sum(per_identity)
    matched_gap = abs(sum(c for _, c in matched) - want)
    everyone_gap = abs(sum(c for _, c in available) - want)
    return (matched, "matched") if matched_gap <= everyone_gap else (list(available), "devtrain")


def _accuracies(evaluate_dir: Path) -> dict:
    figures = {}
    for name in ("devtest", "view2"):
        path = evaluate_dir / f"lfw-{name}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            figures[name] = {"accuracy": data["accuracy"], "std": data.get("accuracy_std")}
    return figures


def _curve(history_path: Path) -> list[list[float]]:
    if not history_path.is_file():
        return []
    history = json.loads(history_path.read_text())
    return [[h["epoch"], h["val_accuracy"]] for h in history if "val_accuracy" in h]


def verdict(synthetic: float | None, real: float | None) -> str:
    """One plain sentence for the report."""
    if synthetic is None or real is None:
        return "No comparison: one of the two recognizers was not evaluated."
    ratio = synthetic / real if real else float("nan")
    if ratio >= 1.0:
        return (
            f"The synthetic set trains a recognizer as well as real faces at this size "
            f"({100 * synthetic:.1f}% vs {100 * real:.1f}% on LFW DevTest)."
        )
    if ratio >= RATIO_VERDICT:
        return (
            f"The synthetic set nearly replaces real faces at this size: "
            f"{100 * synthetic:.1f}% vs {100 * real:.1f}% on LFW DevTest "
            f"({100 * ratio:.0f}% of real)."
        )
    return (
        f"The synthetic set does not yet replace real faces at this size: "
        f"{100 * synthetic:.1f}% vs {100 * real:.1f}% on LFW DevTest ({100 * ratio:.0f}% of "
        f"real, target {100 * RATIO_VERDICT:.0f}%)."
    )


TWIN_RECORD = "twin.json"  # written last into a finished twin of the cache


def twin_cache_root() -> Path:
    """Finished real twins, shared by the runs of this machine."""
    from facefoundry.evaluation.lfw import cache_dir

    return cache_dir() / "real-twins"


def twin_key(people: list[tuple[str, int]], settings_digest: str, lfw_root: Path) -> str:
    """What decides a real twin: its (name, photos) rows, the trainer / evaluation / code
    digest the caller gives, and which LFW copy it reads."""
    payload = {
        "people": [[name, int(photos)] for name, photos in people],
        "settings": settings_digest,
        "lfw": str(Path(lfw_root).resolve()),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _make_twin(people: list[tuple[str, int]], real: Path, recipe) -> None:
    """Shards of the real people, the recognizer trained on them, its evaluation."""
    from facefoundry.evaluation.lfw_shards import write_lfw_shards
    from facefoundry.evaluation.verify import evaluate_stage
    from facefoundry.recognition.train import train_recognizer

    shards = write_lfw_shards(real / "shards", recipe.evaluation.lfw, people=people, progress=False)
    train_recognizer(shards, real / "train", recipe.train, recipe.evaluation.lfw, progress=False)
    (real / "evaluate").mkdir(parents=True, exist_ok=True)
    evaluate_stage(f"onnx:{real / 'train' / 'model.onnx'}", real / "evaluate", recipe.evaluation)


def real_twin(
    people: list[tuple[str, int]],
    real: Path,
    recipe,
    lfw_root: Path,
    settings_digest: str,
    made_by: str = "",
) -> dict:
    """Fill ``real`` with the real twin: restored from the cache when a finished twin
    with the same key is there, else made here and then copied into the cache (under a
    temporary name, renamed when complete, so a killed copy is never read)."""
    key = twin_key(people, settings_digest, lfw_root)
    cached = twin_cache_root() / key
    record = cached / TWIN_RECORD
    if record.is_file():
        made = json.loads(record.read_text())
        shutil.rmtree(real, ignore_errors=True)  # a partial twin of this run: remade below
        shutil.copytree(cached, real, ignore=shutil.ignore_patterns(TWIN_RECORD))
        logger.info("real twin %s restored from the cache (made by %s)", key, made["made_by"])
        return {"key": key, "reused": True, "made_by": made["made_by"]}
    _make_twin(people, real, recipe)
    partial = cached.parent / f".{key}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(real, partial)
    made = {"key": key, "made_by": made_by, "made_at": datetime.now(UTC).isoformat()}
    (partial / TWIN_RECORD).write_text(json.dumps({**made, "people": len(people)}))
    try:
        partial.rename(cached)
    except OSError:  # another run published the same twin first
        shutil.rmtree(partial, ignore_errors=True)
    return {"key": key, "reused": False, "made_by": made_by}


def compare_with_real(run, recipe, settings_digest: str) -> dict:
    """The compare stage body: train + evaluate the real twin of the run (or restore one
    cached under ``settings_digest`` and its people), write the comparison."""
    from facefoundry.atomic import write_json_atomic
    from facefoundry.evaluation.lfw import Lfw, read_people

    settings = recipe.compare
    out = run.stage("compare")
    counts = synthetic_counts(run.filter_decisions)
    per_identity = sorted(counts.values(), reverse=True)
    lfw = Lfw(recipe.evaluation.lfw)
    available = read_people(lfw.protocol_file("peopleDevTrain.txt"))
    people, rule = choose_real_people(available, per_identity, settings.real)
    real = out / "real"
    twin = real_twin(people, real, recipe, lfw.root, settings_digest, made_by=run.name)
    synthetic_acc, real_acc = _accuracies(run.evaluate), _accuracies(real / "evaluate")
    syn = synthetic_acc.get("devtest", {}).get("accuracy")
    ref = real_acc.get("devtest", {}).get("accuracy")
    identities = json.loads(run.marker("identities").read_text()).get("identities")
    comparison = {
        "real_rule": rule,
        "real_twin": twin,
        "images_synthetic": int(sum(per_identity)),
        "identities_synthetic": len(per_identity),
        "images_real": int(sum(c for _, c in people)),
        "identities_real": len(people),
        "identities_requested": identities,
        "synthetic": synthetic_acc,
        "real": real_acc,
        "synthetic_over_real": round(syn / ref, 4) if syn is not None and ref else None,
        "curves": {
            "synthetic": _curve(run.train / "history.json"),
            "real": _curve(real / "train" / "history.json"),
        },
        "verdict": verdict(syn, ref),
    }
    write_json_atomic(out / "comparison.json", comparison)
    logger.info("%s", comparison["verdict"])
    return {k: v for k, v in comparison.items() if k != "curves"}


def curves_plot(comparison: dict):
    """Validation accuracy per epoch, real vs synthetic (a matplotlib figure or None)."""
    curves = comparison.get("curves") or {}
    if not any(curves.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.2))
    for label, points in curves.items():
        if points:
            points = np.asarray(points, dtype=float)
            axis.plot(points[:, 0], 100 * points[:, 1], marker="o", label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("LFW DevTest accuracy (%)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure
