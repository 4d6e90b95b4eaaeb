"""Why synthetic identities crowd together: how many directions a run's identities spread
over, compared with their conditions and with real people (issue 16, lever 5).

Reads a finished run (its ``identities`` and ``embed`` stages), takes each identity's
SFace centroid, and reports for the run's identities and for real LFW DevTrain people
(the generator's training people, the same count of people with as many faces each,
several draws): the participation ratio of the centroids (``identity_dimensions``,
``evaluation.generator_quality``), the nearest-neighbour centroid cosine and the share of
identities whose nearest neighbour is above the filter's de-duplication threshold, and
the mean pairwise cosine (a shared "average face" would raise it). It then projects
conditions and centroids on the conditions' principal axes and reports, per axis, how
strongly the generated faces follow the condition (correlation) and how much of its
spread they keep (std ratio).

Usage: python benchmarks/bench_identity_geometry.py --run runs/demo [--draws 5]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import finish, machine, save_results

AXES_SHOWN = (0, 1, 2, 5, 10, 20, 40, 60, 80)


def cloud_figures(centroids: np.ndarray, tau: float) -> dict:
    from facefoundry.evaluation.generator_quality import participation_ratio

    similarity = centroids @ centroids.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.max(axis=1)
    off_diagonal = similarity[np.isfinite(similarity)]
    return {
        "identities": len(centroids),
        "identity_dimensions": round(participation_ratio(centroids), 1),
        "nearest_cos_median": round(float(np.median(nearest)), 3),
        "share_nearest_above_tau": round(float((nearest > tau).mean()), 3),
        "mean_pair_cos": round(float(off_diagonal.mean()), 3),
    }


def run_centroids(run: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Conditions and SFace centroids of the identities with >= 2 usable faces, and the
    median number of faces per identity."""
    import pyarrow.parquet as pq

    from facefoundry.evaluation.generator_quality import identity_centroids

    identities = pq.read_table(run / "identities" / "identities.parquet").to_pandas()
    parts = sorted((run / "embed").glob("part-*.parquet"))
    if not parts:
        raise SystemExit(f"{run}/embed holds no part-*.parquet: run the pipeline first")
    columns = ["identity", "status", "embedding_sface"]
    faces = np.concatenate(
        [pq.read_table(p, columns=columns).to_pandas().to_numpy() for p in parts]
    )
    ok = faces[:, 1] == "ok"
    identity = faces[ok, 0].astype(np.int64)
    vectors = np.stack(faces[ok, 2]).astype(np.float64)
    present, centroids = identity_centroids(vectors, identity)
    counts = np.bincount(identity)
    conditions = np.stack(identities.set_index("identity").loc[present, "embedding"].to_numpy())
    return (
        conditions / np.linalg.norm(conditions, axis=1, keepdims=True),
        centroids,
        int(np.median(counts[present])),
    )


def following_by_axis(conditions: np.ndarray, centroids: np.ndarray) -> list[dict]:
    centred = conditions - conditions.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    along_condition = centred @ axes.T
    along_generated = (centroids - centroids.mean(axis=0)) @ axes.T
    rows = []
    for k in AXES_SHOWN:
        if k >= len(axes):
            break
        a, b = along_condition[:, k], along_generated[:, k]
        rows.append(
            {
                "axis": k,
                "condition_std": round(float(a.std()), 3),
                "generated_std": round(float(b.std()), 3),
                "correlation": round(float(np.corrcoef(a, b)[0, 1]), 2),
            }
        )
    return rows


def real_clouds(count: int, per_person: int, draws: int, tau: float) -> list[dict]:
    from facefoundry.evaluation.generator_quality import identity_centroids
    from facefoundry.evaluation.leakage import real_people_embeddings

    persons, vectors = real_people_embeddings("peopleDevTrain.txt", "sface", progress=False)
    names, person = np.unique(persons, return_inverse=True)
    usable = np.isfinite(vectors).all(axis=1)
    counts = np.bincount(person[usable], minlength=len(names))
    eligible = np.flatnonzero(counts >= min(per_person, 4))
    rng = np.random.default_rng(0)
    figures = []
    for _ in range(draws):
        chosen = rng.choice(eligible, size=min(count, len(eligible)), replace=False)
        rows = np.concatenate([np.flatnonzero((person == p) & usable)[:per_person] for p in chosen])
        figures.append(cloud_figures(identity_centroids(vectors[rows], person[rows])[1], tau))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a finished run directory")
    parser.add_argument("--draws", type=int, default=5, help="draws of real people")
    parser.add_argument("--tau", type=float, default=None, help="default: the run's filter")
    parser.add_argument("--name", default="bench_identity_geometry", help="results file stem")
    args = parser.parse_args()
    started = time.perf_counter()
    tau = args.tau
    if tau is None:
        import json

        metrics = json.loads((args.run / "filter" / "metrics.json").read_text())
        tau = metrics["thresholds"]["tau_inter"]["cos"]
    conditions, centroids, per_identity = run_centroids(args.run)
    from facefoundry.evaluation.generator_quality import participation_ratio

    synthetic = cloud_figures(centroids, tau)
    real = real_clouds(len(centroids), per_identity, args.draws, tau)
    median = {
        key: float(np.median([r[key] for r in real])) for key in real[0] if key != "identities"
    }
    figures = {
        "machine": machine(),
        "run": str(args.run),
        "tau_inter": tau,
        "faces_per_identity": per_identity,
        "condition_dimensions": round(participation_ratio(conditions), 1),
        "synthetic": synthetic,
        "real_median": median,
        "real_range": {
            key: [min(r[key] for r in real), max(r[key] for r in real)] for key in median
        },
        "dimensions_over_real": round(
            synthetic["identity_dimensions"] / median["identity_dimensions"], 3
        ),
        "following_by_axis": following_by_axis(conditions, centroids),
        "wall_minutes": round((time.perf_counter() - started) / 60, 2),
    }
    save_results(args.name, figures)
    finish(figures)


if __name__ == "__main__":
    main()
