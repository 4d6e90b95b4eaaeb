"""How many distinct identities a set holds: by the filter's rule, by a judge that never
steered it, and for real people drawn at the same counts.

Why: every step that raises the kept count looks through SFace (the identity loss in
training, the realisation map, the probes, the filter itself), so a kept count only SFace
believes could be selection on SFace's own noise. Here the filter's rules run twice on the
same identities: once with SFace deciding (the product's filter), once with dlib deciding
at its own thresholds (calibrated on real LFW people the same way: de-duplication at FMR
1e-4). Real people go through both at the same counts, at the generator's resolution (32
px, shrunk and enlarged as `bench_sampling.py` does) and at full resolution, so each
synthetic figure has its real counterpart and the issue's "800 of 1,000" its real ceiling.

Usage: python benchmarks/bench_identity_capacity.py [--run RUN ...] [--draws 10]
         [--min-photos 2] [--resolution both|full|32]
  real:  LFW DevTrain people with >= 2 photos (up to 8 each); draws of 100, 300 and 1,000
         people (1,184 are eligible; 430 with >= 4); the 32 px faces are embedded once
         (~4,300 images). Fewer photos make a noisier centroid, further from the others,
         so compare 8-image synthetic identities with --min-photos 4 where sizes allow;
  runs:  a finished run's embed stage (every generated identity, before any rule).
Privacy is off in both (it is not about distinctness). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import finish, machine, median_spread, save_results

DECIDERS = ("sface", "dlib")
SIZES = (100, 300, 1000)


def kept_by(table, decider: str) -> int:
    """Identities the demo's filter rules keep with ``decider`` embedding and deciding
    (its own calibrated thresholds), privacy off."""
    from facefoundry.filters.decide import apply_filters
    from facefoundry.filters.settings import FilterSettings
    from facefoundry.filters.stage import resolve_rules

    other = next(name for name in DECIDERS if name != decider)
    settings = FilterSettings(embedder=decider, judge_embedder=other, min_samples=2)
    rules, _ = resolve_rules(settings, table.checksums)
    result = apply_filters(table, rules)
    return int(sum(reason is None for reason in result.identities.reason))


def sample_table(people: np.ndarray, vectors: dict[str, np.ndarray], status=None, **extra):
    from facefoundry.filters.samples import SampleTable

    n = len(people)
    return SampleTable(
        keys=np.array([f"{i:07d}" for i in range(n)]),
        identities=people,
        embeddings=vectors,
        status=status if status is not None else np.array(["ok"] * n, dtype=object),
        **extra,
    )


def draws_of(table_rows, people: np.ndarray, sizes, draws: int) -> dict:
    """Kept share per size and decider over ``draws`` random sets of people (median and
    range); ``table_rows(rows)`` builds the sample table of those rows."""
    persons = np.unique(people)
    figures: dict = {"eligible_people": int(len(persons))}
    for size in sizes:
        if size > len(persons):
            continue
        shares: dict[str, list[float]] = {d: [] for d in DECIDERS}
        for draw in range(draws if size < len(persons) else 1):
            chosen = np.random.default_rng(draw).choice(persons, size=size, replace=False)
            table = table_rows(np.flatnonzero(np.isin(people, chosen)))
            for decider in DECIDERS:
                shares[decider].append(kept_by(table, decider) / size)
        figures[str(size)] = {d: median_spread(shares[d]) for d in DECIDERS}
    return figures


def real_32px(sizes, draws: int, min_photos: int = 2, size: int = 32) -> dict:
    """Real DevTrain people at the generator's resolution, through the run's own path
    (JPEG, YuNet, each embedder's crop)."""
    from bench_sampling import real_faces

    from facefoundry.evaluation.generator_quality import embed_generated

    started = time.perf_counter()
    faces, labels = real_faces(None, 8, size, min_images=min_photos)
    embedded = embed_generated(faces, labels, DECIDERS)
    seconds = time.perf_counter() - started

    def rows(index):
        return sample_table(
            embedded.identity[index],
            {d: embedded.vectors[d][index] for d in DECIDERS},
            status=embedded.status[index],
            n_faces=embedded.n_faces[index],
            det_score=embedded.det_score[index],
            checksums=embedded.checksums,
        )

    figures = draws_of(rows, embedded.identity, sizes, draws)
    figures.update({"images": int(len(faces)), "embed_seconds": round(seconds, 1)})
    return figures


def real_full_resolution(sizes, draws: int, min_photos: int = 2) -> dict:
    """The same people at full resolution (the cached LFW embeddings of the privacy
    reference): the ceiling a sharper generator could reach."""
    from facefoundry.evaluation.leakage import real_people_embeddings

    names, vectors = None, {}
    for decider in DECIDERS:
        names, vectors[decider] = real_people_embeddings(
            "peopleDevTrain.txt", decider, progress=False
        )
    names = np.asarray(names)
    usable = np.all([np.isfinite(v).all(axis=1) for v in vectors.values()], axis=0)
    rows = np.flatnonzero(usable)
    # up to 8 photos per person with >= min_photos (as the 32 px set)
    keep = []
    for person in np.unique(names[rows]):
        mine = rows[names[rows] == person][:8]
        if len(mine) >= min_photos:
            keep.extend(mine.tolist())
    keep = np.asarray(keep)
    people = names[keep]

    def table(index):
        return sample_table(people[index], {d: vectors[d][keep][index] for d in DECIDERS})

    return draws_of(table, people, sizes, draws)


def run_capacity(run: Path) -> dict:
    """A finished run: every generated identity through both deciders."""
    from facefoundry.filters.samples import read_samples

    table = read_samples(run / "embed", list(DECIDERS), run / "generate")
    figures: dict = {"run": str(run), "identities": int(table.n_groups)}
    for decider in DECIDERS:
        figures[f"kept_{decider}"] = kept_by(table, decider)
    figures["dlib_over_sface"] = round(figures["kept_dlib"] / max(figures["kept_sface"], 1), 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Distinct identities by the filter (SFace) and by the judge (dlib) "
        "deciding, for finished runs and for real LFW DevTrain people at the same counts."
    )
    parser.add_argument("--run", action="append", default=[], help="a finished run (repeatable)")
    parser.add_argument("--draws", type=int, default=10, help="random sets of people per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="people per draw")
    parser.add_argument(
        "--min-photos",
        type=int,
        default=2,
        help="real people with at least this many photos (a centroid of fewer photos is "
        "noisier, hence further from the others: compare like with like)",
    )
    parser.add_argument(
        "--resolution", choices=("both", "full", "32"), default="both", help="real sets"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    figures: dict = {"machine": machine(), "deciders": list(DECIDERS)}
    figures["runs"] = [run_capacity(Path(run)) for run in args.run]
    for row in figures["runs"]:
        print(row, flush=True)
    figures["min_photos"] = args.min_photos
    if args.resolution in ("both", "full"):
        figures["real_full_resolution"] = real_full_resolution(
            args.sizes, args.draws, args.min_photos
        )
        print("real, full resolution:", figures["real_full_resolution"], flush=True)
    if args.resolution in ("both", "32"):
        figures["real_32px"] = real_32px(args.sizes, args.draws, args.min_photos)
        print("real, 32 px:", figures["real_32px"], flush=True)
    big = str(max(args.sizes))
    for where in ("real_32px", "real_full_resolution"):
        if big in figures.get(where, {}):
            for decider in DECIDERS:
                figures[f"{where}_kept_share_{big}_{decider}"] = figures[where][big][decider][
                    "median"
                ]
    figures["wall_minutes"] = round((time.perf_counter() - started) / 60, 1)
    save_results("bench_identity_capacity", figures)
    finish(figures)


if __name__ == "__main__":
    main()
