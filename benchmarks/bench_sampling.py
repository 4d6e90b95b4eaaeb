"""IDiff-Face sampling: fast scheduler vs the reference DDPM-1000, and identity quality
of the default model judged by an embedder it was NOT conditioned on.

Usage: python benchmarks/bench_sampling.py [--quick] [--model models/idiff-face-lfw]
  full:  100 synthetic identities x 8 images (dpmsolver++ 25 steps), DDPM-1000 on a
         subset of the same seeds; judge dlib; ceiling from real LFW DevTest faces.
  quick: 20 x 4, DDPM-1000 on 4 images.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import REPO, finish, machine


def judge(faces: np.ndarray, identity_of: np.ndarray, judge_spec: str, seed: int = 0) -> dict:
    """face rate (YuNet on the 112 px image) and genuine/impostor cosines of the judge."""
    from facefoundry.evaluation.protocol import equal_error_rate
    from facefoundry.faces import get_detector, get_embedder, select_face

    detector = get_detector("yunet")
    found = np.array([select_face(detector.detect(f), f.shape) is not None for f in faces])
    vectors = get_embedder(judge_spec).embed_aligned(faces)
    rng = np.random.default_rng(seed)
    genuine, impostor = [], []
    for identity in np.unique(identity_of):
        members = np.flatnonzero(identity_of == identity)
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                genuine.append(float(vectors[members[i]] @ vectors[members[j]]))
    for _ in range(max(len(genuine), 1000)):
        a, b = rng.integers(0, len(faces), 2)
        if identity_of[a] != identity_of[b]:
            impostor.append(float(vectors[a] @ vectors[b]))
    scores = np.array(genuine + impostor)
    same = np.array([True] * len(genuine) + [False] * len(impostor))
    return {
        "face_rate": round(float(found.mean()), 4),
        "genuine_cos": round(float(np.mean(genuine)), 4),
        "impostor_cos": round(float(np.mean(impostor)), 4),
        "gap": round(float(np.mean(genuine) - np.mean(impostor)), 4),
        "eer": round(equal_error_rate(scores, same)[0], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--judge", default="dlib")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--method", default="fitted", choices=["separated", "fitted"], help="identity sampling"
    )
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from facefoundry.generators.identities import make_identities
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
    from facefoundry.generators.seeds import sample_seed

    n_ids, per_id, n_ddpm = (20, 4, 8) if args.quick else (100, 8, 16)
    fast = IDiffFacePipeline.from_pretrained(args.model, "dpmsolver++", device="cpu")
    config = fast.model.config
    from pathlib import Path

    from facefoundry.generators.identities import PRIOR_FILE

    table = make_identities(
        n_ids,
        config.id_dim,
        seed=1,
        method=args.method,
        tau=0.3,
        prior=Path(args.model) / PRIOR_FILE,
    )
    identity_of = np.repeat(table.ids, per_id)
    seeds = [sample_seed(0, int(i), s) for i in table.ids for s in range(per_id)]
    vectors = table.embeddings[identity_of]
    figures: dict = {
        "machine": machine(),
        "quick": args.quick,
        "model": args.model,
        "judge": args.judge,
        "conditioning": config.conditioning_embedder,
        "identities": n_ids,
        "per_identity": per_id,
        "torch_threads": args.threads,
        "identity_method": args.method,
        "guidance_scale": args.guidance,
    }

    fast(vectors[:2], seeds[:2], steps=25)  # warm-up
    started = time.perf_counter()
    images = fast(vectors, seeds, steps=25, batch_size=80, guidance_scale=args.guidance)
    fast_rate = len(images) / (time.perf_counter() - started)
    reference = IDiffFacePipeline(fast.model, "ddpm", device="cpu")
    # the reference sampler on 2 samples of each of n_ddpm / 2 identities (same seeds)
    subset = np.concatenate([np.arange(2) + per_id * i for i in range(n_ddpm // 2)])
    started = time.perf_counter()
    ddpm_images = reference(
        vectors[subset],
        [seeds[i] for i in subset],
        steps=1000,
        batch_size=n_ddpm,
        guidance_scale=args.guidance,
    )
    ddpm_rate = n_ddpm / (time.perf_counter() - started)
    figures.update(
        {
            "fast_scheduler": "dpmsolver++",
            "fast_steps": 25,
            "fast_img_per_s": round(fast_rate, 2),
            "ddpm1000_img_per_s": round(ddpm_rate, 3),
            "speedup_vs_ddpm1000": round(fast_rate / ddpm_rate, 1),
        }
    )
    quality = judge(images, identity_of, args.judge)
    figures.update(quality)
    # same identities and seeds through both samplers: does the fast one keep identity?
    fast_sub = judge(images[subset], identity_of[subset], args.judge)
    ddpm_sub = judge(ddpm_images, identity_of[subset], args.judge)
    figures["genuine_cos_delta"] = round(fast_sub["genuine_cos"] - ddpm_sub["genuine_cos"], 4)
    figures["ddpm1000_subset"] = ddpm_sub

    # ceiling: real LFW DevTest faces through the same judge, at 112 px and shrunk to the
    # model's resolution and back
    from facefoundry.evaluation.aligned_pairs import aligned_pairs

    pairs = aligned_pairs("devtest", progress=False)
    from facefoundry.faces import get_embedder

    embedder = get_embedder(args.judge)
    # quick: folds 1-2 of DevTest (200 pairs); full: all 1,000 pairs
    chosen = np.flatnonzero(pairs.folds < 2) if args.quick else np.arange(len(pairs.same))
    used = np.unique(np.concatenate([pairs.left[chosen], pairs.right[chosen]]))
    position = {int(image): row for row, image in enumerate(used)}
    left = np.array([position[int(i)] for i in pairs.left[chosen]])
    right = np.array([position[int(i)] for i in pairs.right[chosen]])
    same = pairs.same[chosen]
    for label, faces in (
        ("real_112", pairs.faces[used]),
        ("real_32", _shrink(pairs.faces[used], 32)),
    ):
        v = embedder.embed_aligned(faces)
        scores = np.sum(v[left] * v[right], axis=1)
        figures[f"ceiling_{label}"] = {
            "genuine_cos": round(float(scores[same].mean()), 4),
            "impostor_cos": round(float(scores[~same].mean()), 4),
            "gap": round(float(scores[same].mean() - scores[~same].mean()), 4),
            "pairs": int(len(chosen)),
        }
    _save_grid(images, per_id, REPO / "benchmarks" / "results" / "idiff_samples.png")
    finish(figures)


def _shrink(faces: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return np.stack(
        [
            cv2.resize(
                cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA),
                (112, 112),
                interpolation=cv2.INTER_CUBIC,
            )
            for f in faces
        ]
    )


def _save_grid(images: np.ndarray, per_id: int, path) -> None:
    """Rows = identities (first 8), columns = samples: the picture in the model card."""
    from PIL import Image

    rows = min(8, len(images) // per_id)
    grid = images[: rows * per_id].reshape(rows, per_id, 112, 112, 3)
    grid = grid.transpose(0, 2, 1, 3, 4).reshape(rows * 112, per_id * 112, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


if __name__ == "__main__":
    main()
