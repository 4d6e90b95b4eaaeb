"""Which identities survive de-duplication: greedy (most consistent first) vs largest
(the most the rule allows), at the same tau_inter.

Usage: python benchmarks/bench_dedup_choice.py [--run runs/cpu10k] [--draws 20]
  run:   a run's embed parts through its own filter settings (privacy off), once per
         choice: identities and images kept, the judge's (dlib) gap and EER on them;
  real:  draws of 100 LFW DevTrain people with >= 2 photos (SFace, up to 8 photos each,
         the cached embeddings of the privacy reference) through the same rules: what
         each choice removes from real strangers (median and range over draws);
  speed: clustered identities (10k, 30k; 128-d), seconds per choice.
Both choices leave kept centroids pairwise at or below tau_inter (checked here).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import REPO, finish, machine, median_spread

CHOICES = ("greedy", "largest")


def filter_with(table, settings, dedup: str) -> dict:
    """The filter's rules (privacy off) with one de-duplication choice."""
    from facefoundry.filters.decide import apply_filters
    from facefoundry.filters.stage import resolve_rules

    rules, _ = resolve_rules(settings.model_copy(update={"dedup": dedup}), table.checksums)
    result = apply_filters(table, rules)
    kept = int(sum(reason is None for reason in result.identities.reason))
    return {"result": result, "kept_identities": kept, "tau": rules.tau_inter}


def separated(table, result, embedder: str, tau: float) -> bool:
    """Kept identities' centroids pairwise at or below tau (the rule, re-checked)."""
    vectors = table.vectors(embedder)
    kept = result.kept
    groups = table.groups[kept]
    centres = np.stack([vectors[kept][groups == g].mean(axis=0) for g in np.unique(groups)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    inner = centres @ centres.T
    np.fill_diagonal(inner, -1)
    return bool(inner.max() <= tau + 1e-5)


def judge_on_kept(table, result, judge: str) -> dict:
    from facefoundry.evaluation.generator_quality import separation

    vectors = table.vectors(judge)[result.kept]
    usable = np.isfinite(vectors).all(axis=1)
    return separation(vectors[usable], table.groups[result.kept][usable])


def run_figures(run: Path) -> dict:
    from facefoundry.filters.samples import read_samples
    from facefoundry.flows.config import load_recipe

    recipe = load_recipe(run / "recipe.resolved.yaml")
    settings = recipe.filter
    table = read_samples(
        run / "embed", [settings.embedder, settings.judge_embedder], run / "generate"
    )
    figures: dict = {"run": str(run), "identities": int(table.n_groups)}
    for dedup in CHOICES:
        outcome = filter_with(table, settings, dedup)
        result = outcome["result"]
        judge = judge_on_kept(table, result, settings.judge_embedder)
        figures[dedup] = {
            "kept_identities": outcome["kept_identities"],
            "kept_images": int(result.kept.sum()),
            "separated": separated(table, result, settings.embedder, outcome["tau"]),
            "judge_gap": round(judge["gap"], 4),
            "judge_eer": round(judge["eer"], 4),
        }
    return figures


def real_figures(draws: int, people: int = 100, per_person: int = 8) -> dict:
    """What each choice removes from draws of real DevTrain people."""
    from facefoundry.evaluation.leakage import real_people_embeddings
    from facefoundry.filters.samples import SampleTable
    from facefoundry.filters.settings import FilterSettings

    names, vectors = real_people_embeddings("peopleDevTrain.txt", "sface", progress=False)
    usable = np.isfinite(vectors).all(axis=1)
    names, vectors = np.asarray(names)[usable], vectors[usable]
    persons, counts = np.unique(names, return_counts=True)
    eligible = persons[counts >= 2]
    settings = FilterSettings(embedder="sface", judge_embedder="dlib", min_samples=2)
    removed: dict[str, list[int]] = {dedup: [] for dedup in CHOICES}
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        chosen = rng.choice(eligible, size=people, replace=False)
        rows = np.concatenate([np.flatnonzero(names == p)[:per_person] for p in chosen])
        n = len(rows)
        table = SampleTable(
            keys=np.array([f"{i:07d}" for i in range(n)]),
            identities=names[rows],  # the table groups by any label
            embeddings={"sface": vectors[rows]},
            status=np.array(["ok"] * n),
            n_faces=np.ones(n, dtype=np.int64),
            det_score=np.ones(n),
            checksums={},
        )
        for dedup in CHOICES:
            outcome = filter_with(table, settings, dedup)
            duplicates = outcome["result"].identities.reason == "duplicate_identity"
            removed[dedup].append(int(duplicates.sum()))
    return {
        "people_per_draw": people,
        "draws": draws,
        **{f"{d}_duplicates_removed": median_spread(removed[d]) for d in CHOICES},
    }


def speed_figures(sizes: tuple[int, ...] = (10_000, 30_000), dim: int = 128) -> dict:
    from facefoundry.filters.dedup import greedy_dedup, largest_dedup

    figures = {}
    for n in sizes:
        rng = np.random.default_rng(n)
        centres = rng.standard_normal((n // 4, dim)).astype(np.float32)
        vectors = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal(
            (n, dim)
        ).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        priority = rng.random(n)
        row = {}
        for dedup, function in (("greedy", greedy_dedup), ("largest", largest_dedup)):
            started = time.perf_counter()
            result = function(vectors, 0.4, priority)
            row[dedup] = {
                "seconds": round(time.perf_counter() - started, 2),
                "kept": int(result.kept.sum()),
            }
        figures[str(n)] = row
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(REPO / "runs" / "cpu10k"), help="a finished run")
    parser.add_argument("--draws", type=int, default=20, help="draws of 100 real people")
    args = parser.parse_args()
    figures: dict = {"machine": machine()}
    if (Path(args.run) / "embed").is_dir():
        figures["run"] = run_figures(Path(args.run))
    figures["real"] = real_figures(args.draws)
    figures["speed"] = speed_figures()
    finish(figures)


if __name__ == "__main__":
    main()
