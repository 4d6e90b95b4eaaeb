"""Does the IDiff-Face model follow its identity condition, and for which identities?

Draws 16 identities each from real training embeddings (in distribution), uniform on the
sphere (separated) and the `fitted` prior, 4 samples each, at each guidance scale; reports
SFace cos(image, condition) (SFace is the conditioning embedder) and the genuine-minus-
impostor gap of SFace and of dlib (an independent judge).

Usage: python benchmarks/bench_identity_following.py --data TRAINING.npz [--guidance 1 3]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import REPO, finish, machine


def gap(vectors: np.ndarray, labels: np.ndarray) -> float:
    sims = vectors @ vectors.T
    same = labels[:, None] == labels[None]
    off_diagonal = ~np.eye(len(vectors), dtype=bool)
    return float(sims[same & off_diagonal].mean() - sims[~same].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--data", required=True, help="the model's training set (.npz)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--identities", type=int, default=16)
    parser.add_argument("--per-identity", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from facefoundry.faces import get_embedder
    from facefoundry.generators.identities import PRIOR_FILE, make_identities
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
    from facefoundry.generators.training_data import FaceTrainingSet

    pipe = IDiffFacePipeline.from_pretrained(args.model, "dpmsolver++", device="cpu")
    data = FaceTrainingSet.load(args.data)
    n, per = args.identities, args.per_identity
    rng = np.random.default_rng(0)
    sources = {
        "training_embeddings": data.embeddings[rng.choice(len(data), n, replace=False)],
        "uniform_separated": make_identities(n, 128, seed=1, method="separated").embeddings,
        "fitted": make_identities(
            n, 128, seed=1, method="fitted", prior=Path(args.model) / PRIOR_FILE
        ).embeddings,
    }
    sface, dlib = get_embedder("sface"), get_embedder("dlib")
    labels = np.repeat(np.arange(n), per)
    figures: dict = {"machine": machine(), "model": args.model, "identities": n, "per": per}
    for scale in args.guidance:
        for name, identities in sources.items():
            vectors = np.repeat(identities, per, axis=0)
            images = pipe(vectors, list(range(len(vectors))), steps=25, guidance_scale=scale)
            s, d = sface.embed_aligned(images), dlib.embed_aligned(images)
            figures[f"{name}_cfg{scale:g}"] = {
                "sface_cos_to_condition": round(float(np.mean(np.sum(s * vectors, 1))), 3),
                "sface_gap": round(gap(s, labels), 3),
                "dlib_gap": round(gap(d, labels), 3),
            }
            print(name, scale, figures[f"{name}_cfg{scale:g}"], flush=True)
    finish(figures)


if __name__ == "__main__":
    main()
