"""Does probing candidate identities predict which survive the filter? (issue 16, lever 2)

One generation pass, every decision replayed offline: ``--pool`` fitted candidates
(the demo's draw: seed 0, cosine <= 0.3 apart) each get ``--per-identity`` sample
images (seeds as in a run) plus ``--probes`` separate probe images (other seeds). For
each probe size k (the first k probe images) and each margin m, the probe funnel
(``generators.probe.decide``: probe centroid separated from every kept one by the
filter's tau_inter - m) picks ``--want`` identities; their sample images then go
through the demo's filter (``evaluation.generator_quality.identities_survived``). The
baseline is the first ``--want`` candidates without probing (what a run does today).

Figures per setting: identities the filter keeps of ``--want``, candidates probed,
images generated per kept identity (probes + samples, the cost), dlib gap/EER of the
kept set (the judge never steers). Last line: one JSON object (``rows``; top-level
keys: the baseline and the best setting by kept identities, ties to fewer images).

Usage: python benchmarks/bench_probe_funnel.py [--pool 250] [--want 100]
    [--per-identity 8] [--probes 4] [--sampling dpmsolver++:8:3] [--model DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_sampling import Variant
from common import REPO, finish, machine, save_results


def subset(faces, rows: np.ndarray):
    """The EmbeddedFaces rows ``rows`` (a boolean mask or indices)."""
    from dataclasses import replace

    return replace(
        faces,
        identity=faces.identity[rows],
        status=faces.status[rows],
        n_faces=faces.n_faces[rows],
        det_score=faces.det_score[rows],
        landmarks=faces.landmarks[rows],
        vectors={k: v[rows] for k, v in faces.vectors.items()},
    )


def kept_and_judged(faces, rows) -> dict:
    """The demo's filter and the dlib judge on the ``rows`` of ``faces``."""
    from facefoundry.evaluation.generator_quality import identities_survived, judge_figures

    kept = identities_survived(subset(faces, rows))
    judged = judge_figures(subset(faces, rows))
    return {
        "kept": kept["identities_survived"],
        "duplicates": kept["identities_duplicate"],
        "judge_gap": judged["judge_gap"],
        "judge_eer": judged["judge_eer"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--sampling", default="dpmsolver++:8:3", help="SCHEDULER:STEPS:CFG")
    parser.add_argument("--pool", type=int, default=250)
    parser.add_argument("--want", type=int, default=100)
    parser.add_argument("--per-identity", type=int, default=8)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--margin", type=float, action="append", default=[])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="bench_probe_funnel")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from facefoundry.evaluation.generator_quality import (
        FILTER_EMBEDDER,
        embed_generated,
        identities_survived,
    )
    from facefoundry.generators.identities import PRIOR_FILE, make_identities
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
    from facefoundry.generators.probe import KEPT, decide, probe_centroids
    from facefoundry.generators.seeds import sample_seed

    margins = args.margin or [0.0, 0.05, 0.1]
    variant = Variant.parse(f"probe={args.model},{args.sampling}", args.model)
    config = IDiffFaceModel.from_pretrained(args.model).config
    table = make_identities(
        args.pool, config.id_dim, 0, "fitted", 0.3, prior=Path(args.model) / PRIOR_FILE
    )
    per, probes = args.per_identity, args.probes
    shots = per + probes  # samples 0..per-1 as a run seeds them; probes after them
    identity = np.repeat(table.ids, shots)
    seeds = [sample_seed(0, int(i), s) for i in table.ids for s in range(shots)]
    pipe = IDiffFacePipeline.from_pretrained(args.model, variant.scheduler, device="cpu")
    started = time.perf_counter()
    images = pipe(
        table.embeddings[identity], seeds, steps=variant.steps, guidance_scale=variant.guidance
    )
    generate_s = time.perf_counter() - started
    faces = embed_generated(images, identity)
    shot = np.tile(np.arange(shots), args.pool)
    is_sample = shot < per
    resolve_tau = identities_survived(subset(faces, is_sample & (identity < 2)))["tau_inter"]

    def final(chosen: np.ndarray) -> dict:
        return kept_and_judged(faces, is_sample & np.isin(identity, chosen))

    rows = [
        {
            "setting": "no probe",
            "probes": 0,
            "margin": None,
            "probed": args.want,
            "realised": args.want,
            **final(table.ids[: args.want]),
            "images_per_identity": float(per),
        }
    ]
    print(rows[-1], flush=True)
    vectors = faces.vectors[FILTER_EMBEDDER]
    usable = faces.found & np.isfinite(vectors).all(axis=1)
    for k in sorted({1, 2, probes} & set(range(1, probes + 1))):
        probe_rows = (shot >= per) & (shot < per + k)
        centres = probe_centroids(vectors[probe_rows], usable[probe_rows], k)
        for margin in margins:
            decisions = decide(centres, table.embeddings, resolve_tau - margin, args.want)
            chosen = table.ids[[r for r, o in enumerate(decisions.outcome) if o == KEPT]]
            probed = sum(o != "not_probed" for o in decisions.outcome)
            rows.append(
                {
                    "setting": f"{k} probe(s), margin {margin:g}",
                    "probes": k,
                    "margin": margin,
                    "probed": probed,
                    "realised": len(chosen),
                    **final(chosen),
                    "images_per_identity": round((probed * k + len(chosen) * per) / args.want, 2),
                }
            )
            print(rows[-1], flush=True)
    best = max(rows[1:], key=lambda r: (r["kept"], -r["images_per_identity"]))
    figures = {
        "machine": machine(),
        "torch_threads": args.threads,
        "model": args.model,
        "sampling": f"{variant.scheduler} {variant.steps} steps, CFG {variant.guidance:g}",
        "pool": args.pool,
        "want": args.want,
        "per_identity": per,
        "tau_inter": resolve_tau,
        "judge": "dlib",
        "baseline_kept": rows[0]["kept"],
        "best_setting": best["setting"],
        "best_kept": best["kept"],
        "best_realised": best["realised"],
        "best_images_per_identity": best["images_per_identity"],
        "best_judge_gap": best["judge_gap"],
        "best_judge_eer": best["judge_eer"],
        "rows": rows,
        "generate_img_per_s": round(len(images) / generate_s, 2),
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    save_results(args.name, figures)
    finish(figures)


if __name__ == "__main__":
    main()
