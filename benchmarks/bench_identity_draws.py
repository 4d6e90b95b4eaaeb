"""How the identity draw changes what survives: the `fitted` prior at several spreads
(issue 16, lever 5), same model, same sampling, same seeds, judged by dlib.

Every SFace embedding shares a large mean direction; a generator that follows only
part of its condition (cosine ~0.35 to it) keeps mostly that shared part, and
de-duplication then removes identities whose faces look alike. Scaling the draws'
deviations from the prior mean (``identities.spread``) gives each identity more of its
own direction. This measures whether that buys distinct faces (identities the demo's
filter keeps, dlib gap/EER) without leaving what the model can draw (face rate,
condition cosine, identity-free variety vs real DevTrain faces at 32 px).

``--pool K`` (repeatable) compares selections instead (issue 16, session 9): K = 1 is
the plain draw, K > 1 draws K x identities candidates and keeps those the model's
realisation map predicts apart (``identities.select: predicted``); ``--seed`` picks
the draw (recipe seed). ``--map FILE`` (repeatable) compares realisation maps at each
pool > 1 (default: the model folder's own).

``--conditions FILE.npz`` (a `generator prepare-lfw` set) conditions on real people
instead of the prior: one photo's embedding per person, people chosen as the real
reference chooses them. On DevTrain (the people the model was trained on) against
DevTest (people it never saw) this tells whether the model lacks the capacity to draw
even the identities it was shown, or draws those and fails only on new ones.

Usage: python benchmarks/bench_identity_draws.py [--spread 1 --spread 1.5 ...]
    [--pool 1 --pool 4] [--map FILE ...] [--seed 0] [--sampling dpmsolver++:8:3] [--identities 100]
    [--per-identity 4] [--model DIR] [--conditions data/lfw-devtest-sface-64.npz]
Last line: one JSON object; ``rows`` has one entry per spread (or pool), the top-level
keys describe the best row by identities kept (ties: higher judge gap).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from bench_sampling import SHOWN, Variant, load_variant, real_faces, run_variant
from common import REPO, finish, machine, save_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--spread", type=float, action="append", default=[])
    parser.add_argument("--pool", type=float, action="append", default=[])
    parser.add_argument("--map", action="append", default=[], help="realisation map file")
    parser.add_argument("--seed", type=int, default=0, help="identity draw (recipe seed)")
    parser.add_argument(
        "--sampling",
        default="dpmsolver++:8:3",
        help="SCHEDULER:STEPS:CFG[:dH[@AXES][a]][:c] as in bench_sampling.py --variant (c: compiled UNet)",
    )
    parser.add_argument("--identities", type=int, default=100)
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--real-min-photos",
        type=int,
        default=4,
        help="real reference: DevTrain people with at least this many photos (430 have 4, "
        "1,184 have 2: use 2 for --identities above 430)",
    )
    parser.add_argument(
        "--conditions",
        default=None,
        help="a prepare-lfw .npz: condition on one photo of each of its people, not the prior",
    )
    parser.add_argument(
        "--conditions-min-photos",
        type=int,
        default=None,
        help="--conditions people with at least this many photos (default --real-min-photos, "
        "so on DevTrain they are the real reference's people)",
    )
    parser.add_argument("--name", default="bench_identity_draws", help="results file stem")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from facefoundry.evaluation.generator_quality import quality_report
    from facefoundry.generators.identities import draw_identities
    from facefoundry.generators.idiff_face.generate import identity_space
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from facefoundry.generators.settings import IdentitySettings
    from facefoundry.generators.training_data import FaceTrainingSet

    spreads = args.spread or ([1.0] if args.pool else [1.0, 1.5, 2.0])
    config = IDiffFaceModel.from_pretrained(args.model).config
    space = identity_space(None, args.model)
    maps = args.map or [str(space.realisation)]
    settings = [
        (spread, pool, realisation)
        for spread in spreads
        for pool in (args.pool or [1.0])
        for realisation in (maps if pool > 1 else [None])
    ]
    started = time.perf_counter()
    faces, labels = real_faces(
        args.identities, args.per_identity, config.sample_size, min_images=args.real_min_photos
    )
    real = quality_report(faces, labels)
    print("real 32 px:", {k: real.get(k) for k in SHOWN}, flush=True)
    rows, pipe = [], None
    for spread, pool, realisation in settings:
        # the demo's identities (recipe seed 0, cosine <= 0.3 apart) at this spread
        # the identities stage's own draw (select: predicted when pool > 1)
        draw = IdentitySettings(
            count=args.identities,
            method="fitted",
            tau=0.3,
            spread=spread,
            select="predicted" if pool > 1 else "drawn",
            pool=max(pool, 1.0),
        )
        if args.conditions:
            least = args.conditions_min_photos or args.real_min_photos
            people = FaceTrainingSet.load(args.conditions)
            table = people_conditions(people, first_photos(people, args.identities, least))
            name = Path(args.conditions).stem
        else:
            table = draw_identities(draw, args.seed, replace(space, realisation=realisation))
            name = f"spread{spread:g}" + (f"pool{pool:g}" if pool > 1 else "")
        if len(maps) > 1 and realisation:
            name += f"-{Path(realisation).stem}"
        variant = Variant.parse(f"{name}={args.model},{args.sampling}", args.model)
        if pipe is None:  # one pipeline for every row: the sampling is the same
            pipe = load_variant(variant)
        row = run_variant(pipe, variant, table, args.per_identity, real)
        row.update(spread=spread, pool=pool, seed=args.seed, map=realisation)
        rows.append(row)
        print(f"{name}:", {k: row.get(k) for k in SHOWN}, flush=True)
    best = max(rows, key=lambda r: (r["identities_survived"], r["judge_gap"]))
    figures = {
        "machine": machine(),
        "torch_threads": args.threads,
        "model": args.model,
        "sampling": best["sampling"],
        "identities": args.identities,
        "per_identity": args.per_identity,
        "judge": "dlib",
        "best_spread": best["spread"],
        "best_pool": best["pool"],
        "conditions": args.conditions or "fitted prior",
        "seed": args.seed,
        **{k: best.get(k) for k in SHOWN},
        "real_min_photos": args.real_min_photos,
        "real_32": {k: real.get(k) for k in SHOWN if k in real},
        "real_people": len(set(labels.tolist())),
        "rows": [
            {k: r.get(k) for k in ("spread", "pool", "map", "condition_cos", *SHOWN)} for r in rows
        ],
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    save_results(args.name, figures)
    finish(figures)


def first_photos(data, people: int, min_photos: int, seed: int = 0):
    """Row of the first photo of each of ``people`` people with ``min_photos`` or more
    photos, chosen by the draw ``real_faces`` makes (same seed, so the same people)."""
    import numpy as np

    labels = np.asarray(data.labels)
    eligible = np.flatnonzero(np.bincount(labels) >= min_photos)
    if len(eligible) < people:
        raise SystemExit(f"{len(eligible)} people have {min_photos}+ photos, not {people}")
    chosen = np.random.default_rng(seed).choice(eligible, size=people, replace=False)
    return np.array([np.flatnonzero(labels == person)[0] for person in chosen])


def people_conditions(data, rows):
    """The identity table of those photos' embeddings (identity ``i`` = ``rows[i]``)."""
    import numpy as np

    from facefoundry.generators.identities import IdentityTable

    vectors = data.embeddings[rows].astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(len(rows))
    return IdentityTable(ids=ids, embeddings=vectors, seeds=ids, method="people")


if __name__ == "__main__":
    main()
