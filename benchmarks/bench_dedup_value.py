"""Does the demo's de-duplication keep the identities that teach a recognizer? (issue 16)

Session 46 found SFace's kept count undercounting what drawn identities add to a recognizer
(4x the draws: +3.6 LFW DevTest points, SFace's count only 2.1x). So the filter's rule
(SFace, FMR 1e-4 on real people) may throw away identities that still help. One draw of
the demo's (`fitted`, seed 0, its sampler), one embedding pass, the demo's filter; then
the same trainer (train_32px_judge's CosFace recipe, ``--train-epochs``) on four sets of
the faces that pass the filter's face and sample rules:

- ``all``: every identity under its own label (no de-duplication);
- ``kept``: only the identities the filter keeps (what the demo ships);
- ``random``: as many identities as ``kept``, chosen at random (a new choice per seed);
- ``merged``: every face, each duplicate identity relabelled as the kept identity it
  collided with (de-duplication by merging labels instead of dropping faces).

Read: ``kept_minus_random_points`` > seed range says the rule picks identities that teach
more than chance does; ``all_minus_kept_points`` > 0 says the dropped identities still
help; ``merged_minus_all_points`` < 0 says they are distinct people (merging is label
noise), > 0 that they are copies (separate labels were the noise).

``--run RUN`` takes a finished run's generated images and its filter's decisions instead of
drawing (e.g. the demo's recipe at 1,000 identities, probes and all); ``--rows`` picks rows.
``--real`` adds the same trainer on real faces, the reference: every LFW DevTrain photo of
the people with >= ``--real-min-photos`` photos, at the generator's resolution (with the
default 2: 6,671 photos of 1,184 people, about as many images as the demo's funnel keeps
at 1,000 identities).

Usage: python benchmarks/bench_dedup_value.py [--identities 1000] [--per-identity 4]
    [--run RUN] [--rows all kept random merged] [--real [--real-min-photos 2]]
    [--train-seeds 3] [--train-epochs 8] [--threads 2]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_sampling import Variant, draw, load_variant, real_faces, spread
from bench_sface_guidance import recognizer_accuracies, recognizer_accuracy
from common import REPO, finish, machine, save_results

from facefoundry.filters.funnel import DUPLICATE_IDENTITY

ROWS = ("all", "kept", "random", "merged")


def merged_labels(groups: np.ndarray, duplicate_of: np.ndarray) -> np.ndarray:
    """Each sample's identity index with every merged identity replaced by the kept one it
    collided with (followed to a kept root, so chains resolve)."""
    root = np.arange(len(duplicate_of))
    for _ in range(len(duplicate_of)):
        step = np.where(duplicate_of[root] >= 0, duplicate_of[root], root)
        if np.array_equal(step, root):
            break
        root = step
    return root[groups]


def training_sets(groups, kept_identity, passed, duplicate_of, seed: int) -> dict:
    """Row name -> (sample indices, labels) over the samples that pass the face and sample
    rules (``passed``); ``random`` draws as many identities as the filter keeps, by ``seed``."""
    live = np.unique(groups[passed])
    chosen = np.random.default_rng(seed).choice(live, size=int(kept_identity.sum()), replace=False)
    merged = merged_labels(groups, duplicate_of)
    sets = {}
    for name, rows, labels in [
        ("all", passed, groups),
        ("kept", passed & kept_identity[groups], groups),
        ("random", passed & np.isin(groups, chosen), groups),
        ("merged", passed, merged),
    ]:
        index = np.flatnonzero(rows)
        sets[name] = (index, labels[index])
    return sets


def run_faces(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A finished run's generated images (as drawn, decoded from its chunk tars) with the
    filter's decisions (decisions.parquet per image, identities.parquet per identity):
    images, identity index per image, passed (the face, sample and privacy rules), kept
    per identity index, duplicate_of per identity index (-1: none)."""
    import tarfile

    import cv2
    import pyarrow.parquet as pq

    decisions = pq.read_table(run / "filter" / "decisions.parquet").to_pydict()
    identities = pq.read_table(run / "filter" / "identities.parquet").to_pydict()
    pixels = {}
    for part in sorted((run / "generate").glob("part-*.tar")):
        with tarfile.open(part) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    data = np.frombuffer(tar.extractfile(member).read(), np.uint8)
                    pixels[member.name[:-4]] = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]
    images = np.stack([pixels[key] for key in decisions["key"]])
    ids, groups = np.unique(decisions["identity"], return_inverse=True)
    passed = np.array([r in (None, DUPLICATE_IDENTITY) for r in decisions["reject_reason"]])
    # the filter's per-identity table, in the order of ``ids``
    row = np.searchsorted(ids, identities["identity"])
    kept_identity = np.zeros(len(ids), dtype=bool)
    kept_identity[row] = identities["kept"]
    duplicate_of = np.full(len(ids), -1, dtype=np.int64)
    merged = np.array([p is not None for p in identities["duplicate_of"]])
    partners = [p for p in identities["duplicate_of"] if p is not None]
    duplicate_of[row[merged]] = np.searchsorted(ids, partners)
    return images, groups, passed, kept_identity, duplicate_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--sampling", default="dpmsolver++:8:3:d1.25@32a")
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument("--run", type=Path, help="a finished run folder instead of a draw")
    parser.add_argument(
        "--rows", nargs="*", default=list(ROWS), choices=ROWS, help="training sets to train"
    )
    parser.add_argument(
        "--real", action="store_true", help="also train on real DevTrain faces (a 'real' row)"
    )
    parser.add_argument("--real-min-photos", type=int, default=2)
    parser.add_argument("--train-seeds", type=int, default=3)
    parser.add_argument("--train-epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="bench_dedup_value", help="results file stem")
    args = parser.parse_args()
    if not args.rows and not args.real:
        parser.error("nothing to train: give --rows or --real")
    torch.set_num_threads(args.threads)
    from facefoundry.evaluation.generator_quality import embed_generated, filter_embedded
    from facefoundry.generators.identities import draw_identities
    from facefoundry.generators.idiff_face.generate import identity_space
    from facefoundry.generators.settings import IdentitySettings

    started = time.perf_counter()
    folder = REPO / "benchmarks" / "results"
    if args.run:
        images, groups, passed, kept_identity, duplicate_of = run_faces(args.run)
    else:
        draw_settings = IdentitySettings(
            count=args.identities, method="fitted", tau=0.3, spread=1.0
        )
        table = draw_identities(draw_settings, 0, identity_space(None, args.model))
        variant = Variant.parse(f"drawn={args.model},{args.sampling}", args.model)
        images, identity_of, _ = draw(load_variant(variant), variant, table, args.per_identity)
        print(f"drawn {len(images)} images", flush=True)
        faces = embed_generated(images, identity_of)
        samples, result, _ = filter_embedded(faces)
        reasons = result.reason.tolist()
        passed = result.kept | np.array([r == DUPLICATE_IDENTITY for r in reasons])
        kept_identity = np.array([r is None for r in result.identities.reason.tolist()])
        groups, duplicate_of = samples.groups, result.identities.duplicate_of
    print(f"kept {kept_identity.sum()} of {len(kept_identity)} identities", flush=True)

    accuracy = {name: [] for name in args.rows}
    sizes = {}
    for seed in range(args.train_seeds):
        sets = training_sets(groups, kept_identity, passed, duplicate_of, seed)
        for name in args.rows:
            index, labels = sets[name]
            value = recognizer_accuracy(
                images[index], labels, args.train_epochs, seed, folder / f"{args.name}-{name}"
            )
            torch.set_num_threads(args.threads)  # the evaluation may change it
            accuracy[name].append(value)
            sizes[name] = {"images": len(index), "labels": len(np.unique(labels))}
            print(f"seed {seed} {name}: {value} ({sizes[name]})", flush=True)

    if args.real:  # the reference: real people's photos through the same trainer
        from facefoundry.generators.idiff_face.model import read_config

        size = read_config(Path(args.model)).sample_size
        faces, labels = real_faces(None, 10**9, size, min_images=args.real_min_photos)
        folder_real = folder / f"{args.name}-real"
        real = recognizer_accuracies(
            faces, labels, args.train_epochs, args.train_seeds, folder_real
        )
        accuracy["real"] = real["devtest_accuracy"]
        sizes["real"] = {"images": len(labels), "labels": len(np.unique(labels))}
        print(f"real: {accuracy['real']} ({sizes['real']})", flush=True)

    medians = {name: float(np.median(values)) for name, values in accuracy.items()}

    def points(a: str, b: str) -> float | None:
        if a not in medians or b not in medians:
            return None
        return round(100 * (medians[a] - medians[b]), 2)

    figures = {
        "machine": machine(),
        "torch_threads": args.threads,
        "run": str(args.run) if args.run else None,
        "model": None if args.run else args.model,
        "sampling": args.sampling,
        "identities": len(kept_identity),
        "per_identity": None if args.run else args.per_identity,
        "train_epochs": args.train_epochs,
        "train_seeds": args.train_seeds,
        "identities_kept": int(kept_identity.sum()),
        "identities_passing_sample_rules": int(len(np.unique(groups[passed]))),
        "rows": {
            name: {**sizes[name], "devtest_accuracy": values, "devtest_median": spread(values, 4)}
            for name, values in accuracy.items()
        },
        "kept_minus_random_points": points("kept", "random"),
        "all_minus_kept_points": points("all", "kept"),
        "merged_minus_all_points": points("merged", "all"),
        "merged_minus_kept_points": points("merged", "kept"),
        "kept_minus_real_points": points("kept", "real"),
        "seed_range_points": round(max(100 * (max(v) - min(v)) for v in accuracy.values()), 2),
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    save_results(args.name, figures)
    finish(figures)


if __name__ == "__main__":
    main()
