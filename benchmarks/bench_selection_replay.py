"""Identity selection replayed on a finished run's faces: which rule would have kept most.

Issue 16, session 10. No image is generated. A finished run (``--run``, e.g. cpu-10k:
~1,000 identities x 8 embedded faces) is the universe: for each trial, a pool of K x
``--want`` of its identities is drawn at random, one rule picks ``--want`` of them, and
the picked identities' faces go through the demo's filter (SFace, thresholds calibrated
on real LFW people). Rules (all through ``realisation.select_separated``, the tightest
separation that keeps ``--want``):

- ``condition``: the requested vectors (no model knowledge);
- ``map FILE``: the centroids a realisation map predicts (each ``--map``; ``run-map``
  is a map fitted on the rest of the run, never on the pool);
- ``probe k``: centroids of each identity's first k faces (a probe of k images);
  ``probe k first`` is the funnel's greedy rule on them instead (candidate order,
  kept when within tau_inter of no kept one; fewer than ``--want`` when it runs out);
- ``oracle``: the identity's own 8-face centroid (the best any rule could know).

Plus ``--judge RUN`` (repeatable): how well each map predicts the centroids of other
runs (mean cosine of predicted vs drawn centroid, correlation of predicted and drawn
pair cosines), beside the raw conditions. A judge run with the fitted run's recipe seed
shares its identities: use other seeds.

Usage: python benchmarks/bench_selection_replay.py --run runs/cpu10k-d1
    [--map models/idiff-face-lfw/realisation_map.npz] [--judge runs/s9/demo-p4-s1]
    [--want 100] [--share 2 --share 4] [--trials 6] [--scale 300 --scale 600]
    [--curve 150 --curve 300 ...] [--per-identity 3 --per-identity 8 ...]
``--curve n``: identities the filter keeps of n drawn at random from the run, no rule
(median, min, max over the trials): how capacity grows with the identities drawn.
``--per-identity k``: identities and images the filter keeps of all the run's identities
when each has only its first k samples: what more images per identity cost in identities
(a centroid of more faces sits nearer the others').
The run's own filter decisions are summarised too (``duplicates``): how many kept identities
the removed duplicates hang off, how many each, and at what cosine.
Last line: one JSON object (median kept per rule and share, map figures per judge run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from common import REPO, finish, machine, median_spread, save_results


def read_run(run: Path, model: Path):
    """(faces table, identity per face, sample index per face, ids, conditions, centroids);
    the pairs come from the product's own reader (``realisation_runs.run_pairs``)."""
    from facefoundry.filters.samples import read_samples
    from facefoundry.flows.run_dir import RunDir
    from facefoundry.generators.chunks import folder_checksum
    from facefoundry.generators.realisation_runs import run_pairs

    folder = RunDir(run)
    pairs = run_pairs(
        folder.identities,
        folder.generate_parts(),
        folder.embed,
        "sface",
        folder_checksum(model),
        str(run),
    )
    samples = read_samples(run, ["sface", "dlib"])
    identity = samples.identities.astype(np.int64)
    sample = np.array([int(key.rsplit("_", 1)[1]) for key in samples.keys])
    return samples, identity, sample, pairs.ids, pairs.conditions, pairs.centroids


def duplicate_partners(run: Path) -> dict:
    """Whether the run's duplicates crowd round a few kept faces or spread over many."""
    import pyarrow.parquet as pq

    table = pq.read_table(run / "filter" / "identities.parquet").to_pandas()
    removed = table[table.reject_reason == "duplicate_identity"]
    per_partner = removed.duplicate_of.astype(int).value_counts().to_numpy()
    return {
        "duplicates": len(removed),
        "kept": int(table.kept.sum()),
        "partners": len(per_partner),
        "per_partner_median": float(np.median(per_partner)) if len(per_partner) else 0.0,
        "per_partner_max": int(per_partner.max()) if len(per_partner) else 0,
        "cos_median": round(float(removed.duplicate_cos.median()), 4),
    }


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run of the model")
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--map", action="append", default=[], help="realisation map file")
    parser.add_argument("--judge", action="append", default=[], help="run to judge maps on")
    parser.add_argument("--want", type=int, default=100)
    parser.add_argument("--share", type=float, action="append", default=[])
    parser.add_argument("--scale", type=int, action="append", default=[])
    parser.add_argument(
        "--curve",
        type=int,
        action="append",
        default=[],
        help="n: identities kept of n drawn at random from the run (no rule), per trial",
    )
    parser.add_argument(
        "--per-identity",
        type=int,
        action="append",
        default=[],
        help="k: identities and images kept of the whole run with each identity's first k faces",
    )
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--probes", type=int, default=3, help="largest probe size k")
    parser.add_argument("--name", default="bench_selection_replay")
    args = parser.parse_args()
    from facefoundry.filters.decide import apply_filters
    from facefoundry.filters.samples import SampleTable
    from facefoundry.filters.settings import FilterSettings
    from facefoundry.filters.stage import resolve_rules
    from facefoundry.generators.probe import decide
    from facefoundry.generators.realisation import (
        RealisationMap,
        _pair_correlation,
        fit_realisation_map,
        select_separated,
    )

    started = time.perf_counter()
    model = Path(args.model)
    maps = {Path(m).stem: RealisationMap.load(m) for m in args.map}
    samples, identity, sample, ids, conditions, centroids = read_run(Path(args.run), model)
    settings = FilterSettings(embedder="sface", judge_embedder="dlib", min_samples=2)
    rules, _ = resolve_rules(settings, samples.checksums)
    vectors = samples.vectors("sface")
    usable = np.isfinite(vectors).all(axis=1)

    def filtered(rows: np.ndarray):
        table = SampleTable(
            keys=samples.keys[rows],
            identities=samples.identities[rows],
            embeddings={name: v[rows] for name, v in samples.embeddings.items()},
            status=samples.status[rows],
            n_faces=samples.n_faces[rows],
            det_score=samples.det_score[rows],
            checksums=samples.checksums,
        )
        return apply_filters(table, rules)

    def survived(rows_of_ids: np.ndarray) -> int:
        result = filtered(np.isin(identity, ids[rows_of_ids]))
        return int(sum(r is None for r in result.identities.reason))

    probes = {}  # k -> unit centroid of the first k faces (NaN without a face in each)
    position = {int(i): row for row, i in enumerate(ids)}
    for k in range(1, args.probes + 1):
        sums = np.zeros((len(ids), vectors.shape[1]))
        found = np.zeros(len(ids), dtype=int)
        for row in np.flatnonzero((sample < k) & np.isin(identity, ids)):
            if usable[row]:
                sums[position[int(identity[row])]] += vectors[row]
                found[position[int(identity[row])]] += 1
        probes[k] = np.where((found == k)[:, None], unit(sums + 1e-12), np.nan)

    def pick(candidates: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
        drawn = np.flatnonzero(np.isfinite(scores).all(axis=1))
        chosen, _ = select_separated(unit(scores[drawn]), min(n, len(drawn)))
        return candidates[drawn[chosen]]

    def rules_for(pool: np.ndarray) -> dict:
        rest = np.setdiff1d(np.arange(len(ids)), pool)
        run_map = fit_realisation_map(conditions[rest], centroids[rest])
        scored = {"condition": conditions[pool], "run-map": run_map.predict(conditions[pool])}
        scored.update({f"map {name}": m.predict(conditions[pool]) for name, m in maps.items()})
        scored.update({f"probe {k}": probes[k][pool] for k in probes})
        scored["oracle"] = centroids[pool]
        return scored

    rng = np.random.default_rng(0)
    kept: dict = {"no selection": []}
    for _ in range(args.trials):
        kept["no selection"].append(survived(rng.permutation(len(ids))[: args.want]))
    for share in args.share or [2.0, 4.0]:
        for _ in range(args.trials):
            pool = rng.permutation(len(ids))[: int(share * args.want)]
            for rule, scores in rules_for(pool).items():
                chosen = pick(pool, scores, args.want)
                kept.setdefault(f"share {share:g}, {rule}", []).append(survived(chosen))
            for k in probes:  # the funnel's greedy rule at the filter's tau_inter
                greedy = decide(probes[k][pool], conditions[pool], rules.tau_inter, args.want)
                chosen = pool[np.array(greedy.kept_rows, dtype=np.int64)]
                kept.setdefault(f"share {share:g}, probe {k} first", []).append(survived(chosen))
        print({k: v for k, v in kept.items() if k.startswith(f"share {share:g}")}, flush=True)
    # at the run's own scale: n of all its identities (a map fitted on them would know
    # them all, so the model-free rules only)
    at_scale = {"all identities": survived(np.arange(len(ids)))}
    everyone = np.arange(len(ids))
    for n in args.scale:
        for rule, scores in (
            ("condition", conditions),
            (f"probe {args.probes}", probes[args.probes]),
            ("oracle", centroids),
        ):
            at_scale[f"{n} of {len(ids)}, {rule}"] = survived(pick(everyone, scores, n))
    print(at_scale, flush=True)
    # how the kept count grows with the identities drawn, no selection (capacity curve)
    curve = {}
    for n in sorted(set(args.curve)):
        draws = [survived(rng.permutation(len(ids))[:n]) for _ in range(args.trials)]
        curve[str(n)] = median_spread(draws, digits=1)
    if curve:
        print({"curve": curve}, flush=True)
    # what more images per identity cost in identities (the whole run, first k faces each)
    per_identity = {}
    for k in sorted(set(args.per_identity)):
        result = filtered(np.isin(identity, ids) & (sample < k))
        per_identity[str(k)] = {
            "kept": int(sum(r is None for r in result.identities.reason)),
            "images": int(result.kept.sum()),
        }
    if per_identity:
        print({"per_identity": per_identity}, flush=True)
    duplicates = duplicate_partners(Path(args.run))
    print({"duplicates": duplicates}, flush=True)
    judged = {}
    for judge in args.judge:
        _, _, _, _, judge_conditions, judge_centroids = read_run(Path(judge), model)
        drawn = unit(judge_centroids)
        row = {}
        candidates = {"condition": unit(judge_conditions)}
        candidates["run-map"] = fit_realisation_map(conditions, centroids).predict(judge_conditions)
        candidates.update({name: m.predict(judge_conditions) for name, m in maps.items()})
        for name, predicted in candidates.items():
            row[name] = {
                "cos": round(float(np.sum(unit(predicted) * drawn, axis=1).mean()), 4),
                "pairs": round(_pair_correlation(unit(predicted), drawn), 4),
            }
        judged[Path(judge).name] = row
        print(judge, row, flush=True)
    figures = {
        "machine": machine(),
        "run": args.run,
        "identities": len(ids),
        "want": args.want,
        "trials": args.trials,
        "tau_inter": rules.tau_inter,
        "kept_median": {k: statistics.median(v) for k, v in kept.items()},
        "kept": kept,
        "at_scale": at_scale,
        "curve": curve,
        "per_identity": per_identity,
        "duplicates": duplicates,
        "maps_on_judge_runs": judged,
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    save_results(args.name, figures)
    finish(figures)


if __name__ == "__main__":
    main()
