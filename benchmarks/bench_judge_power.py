"""Can the final judge see duplicate identities? (issue 16: the judge's own power)

Session 45 rejected a lever (SFace pushing identities apart while sampling: +256 of 1,000
identities kept by SFace) because a recognizer trained on its faces was no better than
one trained on the unguided faces. That verdict is only as strong as the judge's power:
if a recognizer trained on 1,000 labels cannot tell 1,000 distinct identities from 750,
its silence says nothing. This bench plants known duplicates and measures what they cost.

Rows, all with the same labels and the same number of images (``--identities`` x
``--per-identity``, the demo's `fitted` draw, seed 0, and its sampler): the first row is
the draw as it is (the same images as bench_sface_guidance.py's unguided row); a row at
duplicate share ``f`` gives the last ``f`` of the identities the condition of the identity
``identities / 2`` before them, drawn with their own seeds: each is a second label of a
face the generator already draws, as alike as two samples of one identity. So a row at
``f`` holds ``(1 - f) x identities`` distinct conditions under the same labels. Per row:
SFace's and dlib's kept counts (the filter's rules, as bench_sampling) and LFW DevTest of
``--train-seeds`` recognizers trained on all its faces (train_32px_judge's recipe); the
real row is LFW DevTrain people at 32 px, the same trainer.

Read: ``points_per_100_duplicates`` (the least-squares slope of the median DevTest over
the planted duplicates) against ``seed_range_points`` (the widest spread between seeds of
one row): the judge sees a change of identities as large as ``resolution_identities``
(= 100 x seed range / slope) beyond its own noise.

Usage: python benchmarks/bench_judge_power.py [--identities 1000] [--per-identity 4]
    [--duplicates 0.25 0.5] [--train-seeds 2] [--train-epochs 8] [--threads 2]
Last line: one JSON object (``rows`` in order of the duplicate share, 0 first).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from bench_probe_funnel import subset
from bench_sampling import Variant, draw, load_variant, real_faces
from bench_sface_guidance import recognizer_accuracies
from common import REPO, finish, machine, save_results


def with_duplicates(table, share: float):
    """The table with the last ``share`` of its identities given the condition of the
    identity half the table before them (ids, and so seeds, unchanged)."""
    n = len(table)
    planted = np.arange(n - round(share * n), n)
    if len(planted) and planted[0] < n // 2:
        raise ValueError(f"a duplicate share of {share} needs more than half the table")
    embeddings = table.embeddings.copy()
    embeddings[planted] = table.embeddings[planted - n // 2]
    return dataclasses.replace(table, embeddings=embeddings), planted


def kept_counts(faces, rows: np.ndarray) -> dict:
    """SFace's (the filter's) and dlib's kept identities among ``rows`` of the embedded faces."""
    from facefoundry.evaluation.generator_quality import (
        identities_survived,
        judge_identities_survived,
    )

    chosen = subset(faces, rows)
    return {
        "sface_kept": identities_survived(chosen)["identities_survived"],
        "dlib_kept": judge_identities_survived(chosen),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--sampling", default="dpmsolver++:8:3:d1.25@32a")
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument(
        "--duplicates",
        type=float,
        nargs="*",
        default=[0.25, 0.5],
        help="shares of the identities planted as second labels of others (<= 0.5)",
    )
    parser.add_argument("--train-seeds", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=8)
    parser.add_argument("--real-min-photos", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="bench_judge_power", help="results file stem")
    args = parser.parse_args()
    if any(not 0 < f <= 0.5 for f in args.duplicates):
        parser.error("--duplicates: each share must be in (0, 0.5]")
    torch.set_num_threads(args.threads)
    from facefoundry.evaluation.generator_quality import embed_generated
    from facefoundry.generators.identities import draw_identities
    from facefoundry.generators.idiff_face.generate import identity_space
    from facefoundry.generators.idiff_face.model import read_config
    from facefoundry.generators.settings import IdentitySettings

    started = time.perf_counter()
    results = REPO / "benchmarks" / "results"

    def accuracies(images, labels, stem: str) -> dict:
        return recognizer_accuracies(
            images, labels, args.train_epochs, args.train_seeds, results / stem
        )

    draw_settings = IdentitySettings(count=args.identities, method="fitted", tau=0.3, spread=1.0)
    table = draw_identities(draw_settings, 0, identity_space(None, args.model))
    variant = Variant.parse(f"drawn={args.model},{args.sampling}", args.model)
    pipe = load_variant(variant)
    images, identity_of, _ = draw(pipe, variant, table, args.per_identity)
    widest = max(args.duplicates, default=0)
    duplicated, planted = with_duplicates(table, widest)
    sub = dataclasses.replace(
        duplicated,
        ids=duplicated.ids[planted],
        embeddings=duplicated.embeddings[planted],
        seeds=duplicated.seeds[planted],
    )
    second, second_of, _ = draw(pipe, variant, sub, args.per_identity)
    print(f"drawn {len(images)} + {len(second)} images", flush=True)
    # one detection and embedding pass over every image; rows pick each set's share
    every = np.concatenate([images, second])
    faces = embed_generated(every, np.concatenate([identity_of, second_of]))
    rows, per = [], args.per_identity
    for share in [0.0, *sorted(args.duplicates)]:
        _, planted_here = with_duplicates(table, share)
        # planted identities are a suffix of the table; `second` holds the widest suffix
        kept_rows = (len(table) - len(planted_here)) * per
        skipped = (len(planted) - len(planted_here)) * per
        picks = np.concatenate(
            [np.arange(kept_rows), len(images) + np.arange(skipped, len(second))]
        )
        row = {
            "duplicate_share": share,
            "planted_duplicates": len(planted_here),
            "distinct_conditions": len(table) - len(planted_here),
            "labels": len(table),
            "images": len(picks),
            **kept_counts(faces, picks),
            **accuracies(every[picks], faces.identity[picks], f"{args.name}-dup{share:g}"),
        }
        rows.append(row)
        print({k: v for k, v in row.items() if k != "devtest_median"}, flush=True)
    size = read_config(args.model).sample_size  # real faces as small as the generator's
    real_images, real_labels = real_faces(
        args.identities, args.per_identity, size, min_images=args.real_min_photos
    )
    real = {
        "people": len(np.unique(real_labels)),
        "images": len(real_images),
        **accuracies(real_images, real_labels, f"{args.name}-real"),
    }
    print("real:", real["devtest_accuracy"], flush=True)
    planted_counts = np.array([r["planted_duplicates"] for r in rows], dtype=float)
    medians = np.array([r["devtest_median"]["median"] for r in rows])
    slope = float(np.polyfit(planted_counts, medians, 1)[0]) * 100 * 100  # points per 100
    seed_range = max(
        (max(r["devtest_accuracy"]) - min(r["devtest_accuracy"])) * 100 for r in [*rows, real]
    )
    figures = {
        "machine": machine(),
        "torch_threads": args.threads,
        "model": args.model,
        "sampling": args.sampling,
        "identities": args.identities,
        "per_identity": args.per_identity,
        "train_seeds": args.train_seeds,
        "train_epochs": args.train_epochs,
        "rows": rows,
        "real_32": real,
        "points_per_100_duplicates": round(slope, 3),
        "seed_range_points": round(seed_range, 2),
        "resolution_identities": round(100 * seed_range / -slope) if slope < -1e-6 else None,
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    save_results(args.name, figures)
    finish(figures)


if __name__ == "__main__":
    main()
