"""Which probes to keep at scale: a greedy pass in candidate order or the largest separated set.

Issue 16, session 48. At 1,000 identities the demo's funnel (3 images per probe, 3,000
candidates, ``select: separated``) needs a probe separation (0.421) barely under the
filter's own threshold (0.419), and the filter then drops 342 of the 1,000 as duplicates:
a probe centroid of 3 images reads identities further apart than the 8-image centroids
the filter judges. Two questions, answered offline from a finished run (no image drawn):

1. How tight a separation does each rule reach on the run's own probe pool? ``separated``
   walks candidates in order (``realisation.select_separated``); ``largest`` keeps the
   largest separated set, fewest collisions first (``realisation.select_largest``).
2. How many of each rule's identities would the filter keep? Only the run's realised
   identities have the filter's 8-image centroids, so the answer is modelled: the run's
   realised pairs, binned by probe cosine, give the share whose filter centroids collide
   above tau_inter (``collision_curve``); conflicts are drawn pair by pair at those rates
   and resolved greedily in a random order (``modelled_kept``, median of ``--trials``).
   The model is checked on the run itself (``model_kept_run`` against the filter's
   ``kept_run``). Pairs above the run's highest realised probe cosine take the top
   calibrated rate (an under-estimate of their collisions, so a rule that reaches only a
   looser separation than the run's is modelled too kindly, never too harshly).

Usage: python benchmarks/bench_probe_largest.py --run runs/s47/demo [--trials 20]
Last line: one JSON object (``rules``: per rule its threshold and modelled kept count).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import finish, machine, save_results

from facefoundry.filters.funnel import DUPLICATE_IDENTITY

BIN = 0.02


def filter_centroids(run: Path, embedder: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(identity ids, unit centroids of the samples that passed the filter's sample and
    privacy rules, the filter's kept count): what the filter de-duplicated, read and
    averaged with the filter's own helpers."""
    import pyarrow.parquet as pq

    from facefoundry.filters.groups import centroids, unit_rows
    from facefoundry.filters.samples import read_samples

    table = read_samples(run, [embedder])
    decisions = pq.read_table(run / "filter" / "decisions.parquet").to_pydict()
    passed = [
        key
        for key, reason in zip(decisions["key"], decisions["reject_reason"], strict=True)
        if reason in (None, DUPLICATE_IDENTITY)
    ]
    vectors = unit_rows(np.nan_to_num(table.embeddings[embedder]))
    mask = np.isin(table.keys, passed)
    centres, counts = centroids(vectors, table.groups, table.n_groups, mask)
    live = counts > 0
    kept = sum(pq.read_table(run / "filter" / "identities.parquet")["kept"].to_pylist())
    return table.group_ids[live].astype(np.int64), centres[live], int(kept)


def collision_curve(probes: np.ndarray, filtered: np.ndarray, tau: float) -> dict:
    """Per probe-cosine bin (width ``BIN``): pairs, and the share whose filter centroids
    collide above ``tau``; over the realised identities' pairs."""
    upper = np.triu_indices(len(probes), k=1)
    probe_cos = (probes @ probes.T)[upper]
    collide = (filtered @ filtered.T)[upper] > tau
    bins = np.floor(probe_cos / BIN).astype(np.int64)
    curve = {}
    for b in np.unique(bins):
        inside = bins == b
        curve[int(b)] = (int(inside.sum()), float(collide[inside].mean()))
    return curve


def collision_rate(cosines: np.ndarray, curve: dict) -> np.ndarray:
    top = max(curve)
    bins = np.minimum(np.floor(cosines / BIN).astype(np.int64), top)
    return np.array([curve.get(int(b), (0, 0.0))[1] for b in bins])


def modelled_kept(centroids: np.ndarray, curve: dict, trials: int, seed: int = 0) -> dict:
    """Identities the filter would keep of these probe centroids: conflicts drawn pair by
    pair at the curve's rates, resolved greedily in a random order; median of ``trials``."""
    from common import median_spread

    from facefoundry.filters.dedup import conflict_pairs

    colliding = [b for b, (_, rate) in curve.items() if rate > 0]
    if not colliding:  # no realised pair collided: the filter keeps every identity
        return median_spread([len(centroids)], 1)
    floor = min(colliding) * BIN
    first, second, cosines = conflict_pairs(centroids, floor)
    rates = collision_rate(cosines, curve)
    rng = np.random.default_rng(seed)
    counts = []
    for _ in range(trials):
        hit = rng.random(len(rates)) < rates
        rank = rng.permutation(len(centroids))
        earlier = {}
        for a, b in zip(first[hit], second[hit], strict=True):
            low, high = (a, b) if rank[a] < rank[b] else (b, a)
            earlier.setdefault(int(high), []).append(int(low))
        kept = np.zeros(len(centroids), dtype=bool)
        for row in np.argsort(rank):
            kept[row] = not any(kept[other] for other in earlier.get(int(row), ()))
        counts.append(int(kept.sum()))
    return median_spread(counts, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run with probes")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    import pyarrow.parquet as pq

    from facefoundry.flows.config import load_recipe
    from facefoundry.generators.probe import probe_pool
    from facefoundry.generators.realisation import select_largest, select_separated

    started = time.perf_counter()
    recipe = load_recipe(args.run / "recipe.resolved.yaml")
    if recipe.identities.probe is None:
        raise SystemExit(f"{args.run} has no probe funnel (identities.probe is off)")
    embedder = recipe.filter.embedder
    funnel = json.loads((args.run / "identities" / "probe_funnel.json").read_text())
    tau = float(funnel["tau_inter"])  # the filter's cosine as the funnel resolved it
    pool_ids, pool = probe_pool(args.run / "identities", recipe)
    embed_seconds = time.perf_counter() - started
    usable = np.isfinite(pool).all(axis=1)
    eligible = np.flatnonzero(usable)
    realised_ids, realised, kept_run = filter_centroids(args.run, embedder)
    order = np.argsort(pool_ids)
    realised_rows = order[np.searchsorted(pool_ids, realised_ids, sorter=order)]
    curve = collision_curve(pool[realised_rows], realised, tau)
    want = recipe.identities.count
    run_realised = set(
        pq.read_table(args.run / "identities" / "identities.parquet")["identity"].to_pylist()
    )
    rules = {}
    for name, choose in (("separated", select_separated), ("largest", select_largest)):
        chosen, threshold = choose(pool[eligible], min(want, len(eligible)))
        rows = eligible[chosen]
        rules[name] = {
            "threshold": round(float(threshold), 4),
            "model_kept": modelled_kept(pool[rows], curve, args.trials),
            "same_as_run": set(pool_ids[rows].tolist()) == run_realised,
        }
    model_run = modelled_kept(pool[realised_rows], curve, args.trials)
    figures = {
        "bench": "probe_largest",
        "run": str(args.run),
        "run_select": recipe.identities.probe.select,
        "candidates": len(pool),
        "probes_with_faces": len(eligible),
        "wanted": want,
        "tau_inter": round(float(tau), 5),
        "kept_run": kept_run,
        "realised_run": len(realised_ids),
        "model_kept_run": model_run,
        "model_error_run": model_run["median"] - kept_run,
        "rules": rules,
        "largest_minus_separated_threshold": round(
            rules["largest"]["threshold"] - rules["separated"]["threshold"], 4
        ),
        "largest_minus_separated_model_kept": rules["largest"]["model_kept"]["median"]
        - rules["separated"]["model_kept"]["median"],
        "collision_curve": {
            f"{b * BIN:.2f}": {"pairs": n, "collide": round(rate, 4)}
            for b, (n, rate) in sorted(curve.items())
            if b * BIN >= 0.2
        },
        "embed_seconds": round(embed_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }
    save_results(args.name or f"probe_largest_{args.run.parent.name}", figures)
    finish(figures)


if __name__ == "__main__":
    main()
