"""How much of a drawn identity a realisation map could predict, and how much it does.

Issue 16, session 49. A generated identity's centroid is the condition's "realisation"
plus the noise of the faces averaged. If the model drew a different identity from each
seed, no map of the condition could predict it and only probes could choose identities
apart; if it draws nearly the same identity whatever the seed, the map's shortfall is
its own. Measured on finished runs (``--run``, e.g. a 1,000-identity funnel run: 8 faces
per identity, seeded one by one): each identity's first 3 faces (its probe) and last 5
are averaged apart, and their cosine gives the seed-to-seed agreement. Under
centroid = realisation + independent noise per face (noise-to-signal power r), two
centroids of a and b faces agree at 1 / sqrt((1 + r/a)(1 + r/b)); r follows, and with it
the cosine any map could reach against a 5-face centroid, 1 / sqrt(1 + r/5). Beside it,
each ``--map`` (a ``realisation_map.npz``) predicting the same 5-face centroids from the
conditions; maps fitted on the judged run know its identities, so judge on runs of other
recipe seeds.

Usage: python benchmarks/bench_realisation_ceiling.py --run runs/s48b/demo
    [--map NAME=FILE ...]
Last line: one JSON object (per run: agreement, r, ceiling, and each map's cosine).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from common import finish, machine, save_results


def split_centroids(run: Path, embedder: str, first: int):
    """(identity ids, condition per id, centroid of samples < first, centroid of the
    rest, usable faces on the rest side (median)), identities with a usable face on both
    sides."""
    from facefoundry.filters.groups import valid_rows
    from facefoundry.filters.samples import read_samples
    from facefoundry.generators.identities import IdentityTable

    samples = read_samples(run, [embedder])
    vectors = samples.vectors(embedder)
    usable = valid_rows(vectors)
    sample = np.array([int(key.rsplit("_", 1)[1]) for key in samples.keys])
    identity = samples.identities.astype(np.int64)
    ids = np.unique(identity[usable])
    sides = []
    for mask in (sample < first, sample >= first):
        sums = np.zeros((len(ids), vectors.shape[1]))
        counts = np.zeros(len(ids))
        rows = usable & mask
        np.add.at(sums, np.searchsorted(ids, identity[rows]), np.nan_to_num(vectors[rows]))
        np.add.at(counts, np.searchsorted(ids, identity[rows]), 1)
        sides.append((sums, counts))
    both = (sides[0][1] > 0) & (sides[1][1] > 0)
    unit = [s[both] / np.linalg.norm(s[both], axis=1, keepdims=True) for s, _ in sides]
    rest_faces = int(np.median(sides[1][1][both]))  # the run's samples per identity - first
    table = IdentityTable.load(run / "identities" / "identities.parquet")
    position = {int(i): row for row, i in enumerate(table.ids)}
    conditions = table.embeddings[[position[int(i)] for i in ids[both]]].astype(np.float64)
    return ids[both], conditions, unit[0], unit[1], rest_faces


def noise_ratio(agreement: float, a: int, b: int) -> float:
    """r such that 1 / sqrt((1 + r/a)(1 + r/b)) == agreement."""
    target = 1.0 / agreement**2 - 1.0  # (1 + r/a)(1 + r/b) - 1 = r(1/a + 1/b) + r^2/(ab)
    p, q = 1.0 / (a * b), 1.0 / a + 1.0 / b
    return (-q + math.sqrt(q * q + 4 * p * target)) / (2 * p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, action="append", required=True)
    parser.add_argument("--map", action="append", default=[], metavar="NAME=FILE")
    parser.add_argument("--first", type=int, default=3, help="faces in the probe side")
    parser.add_argument("--embedder", default="sface")
    parser.add_argument("--name", default="bench_realisation_ceiling")
    args = parser.parse_args()
    from facefoundry.generators.realisation import RealisationMap

    started = time.perf_counter()
    maps = {}
    for spec in args.map:
        name, _, path = spec.partition("=")
        maps[name] = RealisationMap.load(path)
    runs = {}
    for run in args.run:
        ids, conditions, probe, rest, faces_rest = split_centroids(run, args.embedder, args.first)
        agreement = float(np.median(np.sum(probe * rest, axis=1)))
        ratio = noise_ratio(agreement, args.first, faces_rest)
        unit_conditions = conditions / np.linalg.norm(conditions, axis=1, keepdims=True)
        figures = {
            "identities": len(ids),
            "probe_vs_rest_cos_median": round(agreement, 4),
            "noise_ratio": round(ratio, 4),
            "ceiling_cos_vs_rest": round(1.0 / math.sqrt(1.0 + ratio / faces_rest), 4),
            "probe_cos_vs_rest": round(float(np.mean(np.sum(probe * rest, axis=1))), 4),
            "condition_cos_vs_rest": round(
                float(np.mean(np.sum(unit_conditions * rest, axis=1))), 4
            ),
        }
        for name, realisation in maps.items():
            predicted = realisation.predict(conditions)
            figures[f"map_{name}_cos_vs_rest"] = round(
                float(np.mean(np.sum(predicted * rest, axis=1))), 4
            )
        runs[str(run)] = figures
        print(run, figures, flush=True)
    result = {
        "bench": "realisation_ceiling",
        "machine": machine(),
        "first": args.first,
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_results(args.name, result)
    finish(result)


if __name__ == "__main__":
    main()
