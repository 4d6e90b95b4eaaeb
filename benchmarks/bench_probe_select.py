"""Which probed identities to keep: the funnel's greedy rule vs the tightest separation.

Issue 16, session 10. One generation pass, every decision replayed offline. ``--pool``
candidates (the identities stage's own draw: fitted prior, tau 0.3, ``select:
predicted`` from ``--predicted-pool`` x pool draws, recipe seed ``--seed``) each get
``--per-identity`` samples seeded as a run seeds them; a probe of k images is the
identity's first k samples (what the probe funnel draws when it uses the run's own
seeds). For each candidate share K (the first K x ``--want`` candidates, in selection
order) and probe size k, two rules pick ``--want`` identities:

- ``first``: ``generators.probe.decide``, greedy in candidate order, a probe kept when
  its centroid is within the filter's tau_inter of no kept one (the funnel until now);
- ``separated``: ``generators.realisation.select_separated`` over every probe centroid
  (the tightest separation that still keeps ``--want``). Why: a centroid of k < 8
  images still carries per-image noise, so probes look further apart than the 8-image
  centroids the filter judges, and a fixed threshold lets crowded identities through.

The chosen identities' samples then go through the demo's filter; dlib judges. The
baseline is the first ``--want`` candidates without a probe (the demo until now). Cost:
images generated per requested identity, probe images counted once (they are samples).

Usage: python benchmarks/bench_probe_select.py [--seed 1] [--pool 300] [--want 100]
    [--probes 4] [--predicted-pool 4] [--sampling dpmsolver++:8:3:d1@32]
Last line: one JSON object (``rows``; top level: baseline and best setting by kept
identities, ties to fewer images).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_probe_funnel import kept_and_judged, subset
from bench_sampling import Variant
from common import REPO, finish, machine, save_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--sampling", default="dpmsolver++:8:3:d1@32")
    parser.add_argument("--seed", type=int, default=1, help="recipe seed of the draw")
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--want", type=int, default=100)
    parser.add_argument("--per-identity", type=int, default=8)
    parser.add_argument("--probes", type=int, default=4, help="largest probe size k")
    parser.add_argument("--predicted-pool", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from facefoundry.evaluation.generator_quality import (
        FILTER_EMBEDDER,
        embed_generated,
        identities_survived,
    )
    from facefoundry.generators.identities import draw_identities
    from facefoundry.generators.idiff_face.generate import identity_space
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
    from facefoundry.generators.probe import KEPT, decide, probe_centroids
    from facefoundry.generators.realisation import select_separated
    from facefoundry.generators.seeds import sample_seed
    from facefoundry.generators.settings import IdentitySettings

    variant = Variant.parse(f"probe={args.model},{args.sampling}", args.model)
    draw = IdentitySettings(
        count=args.pool,
        method="fitted",
        tau=0.3,
        select="predicted" if args.predicted_pool > 1 else "drawn",
        pool=max(args.predicted_pool, 1.0),
    )
    table = draw_identities(draw, args.seed, identity_space(None, args.model))
    per = args.per_identity
    identity = np.repeat(table.ids, per)
    seeds = [sample_seed(args.seed, int(i), s) for i in table.ids for s in range(per)]
    pipe = IDiffFacePipeline.from_pretrained(args.model, variant.scheduler, device="cpu")
    started = time.perf_counter()
    images = pipe(
        table.embeddings[np.repeat(np.arange(len(table.ids)), per)],
        seeds,
        steps=variant.steps,
        guidance_scale=variant.guidance,
        guidance_interval=variant.interval,
        detail_guidance=variant.detail,
        detail_axes=variant.detail_axes,
        detail_alternate=variant.detail_alternate,
        progress=True,
    )
    generate_s = time.perf_counter() - started
    faces = embed_generated(images, identity)
    shot = np.tile(np.arange(per), len(table.ids))
    tau = identities_survived(subset(faces, np.isin(identity, table.ids[:2])))["tau_inter"]

    def final(chosen: np.ndarray) -> dict:
        return kept_and_judged(faces, np.isin(identity, chosen))

    rows = [{"setting": "no probe", "share": 1.0, "probes": 0, "rule": None}]
    rows[0].update(final(table.ids[: args.want]), images_per_identity=float(per))
    print(rows[-1], flush=True)
    vectors = faces.vectors[FILTER_EMBEDDER]
    usable = faces.found & np.isfinite(vectors).all(axis=1)
    shares = sorted({s for s in (1.5, 2.0, 3.0) if s * args.want <= args.pool})
    for share in shares:
        candidates = int(share * args.want)
        for k in range(1, args.probes + 1):
            probe_rows = (shot < k) & (np.arange(len(identity)) < candidates * per)
            centres = probe_centroids(vectors[probe_rows], usable[probe_rows], k)
            decisions = decide(centres, table.embeddings[:candidates], tau, args.want)
            first = [r for r, o in enumerate(decisions.outcome) if o == KEPT]
            probed = sum(o != "not_probed" for o in decisions.outcome)
            drawn = np.flatnonzero(np.isfinite(centres).all(axis=1))
            separated = drawn[select_separated(centres[drawn], min(args.want, len(drawn)))[0]]
            for rule, chosen, spent in (
                ("first", first, probed),
                ("separated", separated, candidates),
            ):
                row = {"setting": f"K {share:g}, {k} probe(s), {rule}", "share": share}
                row.update(probes=k, rule=rule, probed=spent, realised=len(chosen))
                row.update(final(table.ids[np.asarray(chosen, dtype=np.int64)]))
                row["images_per_identity"] = round(per + (spent - len(chosen)) * k / args.want, 2)
                rows.append(row)
                print(row, flush=True)
    best = max(rows[1:], key=lambda r: (r["kept"], -r["images_per_identity"]))
    figures = {
        "machine": machine(),
        "torch_threads": args.threads,
        "model": args.model,
        "sampling": args.sampling,
        "seed": args.seed,
        "pool": args.pool,
        "predicted_pool": args.predicted_pool,
        "want": args.want,
        "per_identity": per,
        "tau_inter": tau,
        "judge": "dlib",
        "baseline_kept": rows[0]["kept"],
        "best_setting": best["setting"],
        "best_kept": best["kept"],
        "best_images_per_identity": best["images_per_identity"],
        "best_judge_gap": best["judge_gap"],
        "best_judge_eer": best["judge_eer"],
        "rows": rows,
        "generate_img_per_s": round(len(images) / generate_s, 2),
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    save_results(args.name or f"bench_probe_select-s{args.seed}", figures)
    finish(figures)


if __name__ == "__main__":
    main()
