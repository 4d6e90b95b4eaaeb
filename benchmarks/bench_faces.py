"""Face identity engine on real LFW: protocol accuracy, throughput, cold start.

Usage: python benchmarks/bench_faces.py [--quick] [--embedders sface,dlib]
  full:  LFW View 2, all 6,000 pairs (10 folds) per embedder, flip TTA, 2 workers.
  quick: fold 1 only (600 pairs) and a smaller throughput sample (< 2 minutes).
Last line: one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
from common import REPO, finish, machine, peak_gflops  # noqa: I001

PUBLISHED = {"sface": 99.40, "dlib": 99.38}  # OpenCV Zoo SFace; dlib's own model card


def cold_start(spec: str) -> float:
    """Seconds for a fresh interpreter to import faces, load one embedder and embed a face
    (the first call builds OpenCV's network, so it is part of the start)."""
    code = (
        "import time; t=time.perf_counter(); import numpy as np; from faces import get_embedder; "
        f"get_embedder({spec!r}).embed_aligned(np.zeros((1, 112, 112, 3), np.uint8)); "
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def throughput(spec: str, items: list, aligned: np.ndarray) -> dict:
    """faces/s: (a) detect+align+embed on 250x250 images; (b) pre-aligned, naive vs batched."""
    import cv2

    from facefoundry.faces import (
        get_detector,
        get_embedder,
        process_images,
        process_images_parallel,
    )

    cv2.setNumThreads(2)
    detector, embedder = get_detector("yunet"), get_embedder(spec)
    embedder.embed_aligned(aligned[:4])  # warm-up
    started = time.perf_counter()
    process_images(items, detector, embedder)
    full_1proc = len(items) / (time.perf_counter() - started)
    started = time.perf_counter()
    process_images_parallel(items, "yunet", spec, workers=2, progress=False)
    full_2proc = len(items) / (time.perf_counter() - started)

    started = time.perf_counter()
    naive = [embedder.embed_aligned(face[None]) for face in aligned]  # one face per call
    naive_rate = len(aligned) / (time.perf_counter() - started)
    started = time.perf_counter()
    batched = embedder.embed_aligned(aligned)
    batched_rate = len(aligned) / (time.perf_counter() - started)
    agreement = float(np.min(np.sum(np.concatenate(naive) * batched, axis=1)))
    return {
        "detect_align_embed_faces_per_s_1proc": round(full_1proc, 1),
        "detect_align_embed_faces_per_s_2proc": round(full_2proc, 1),
        "aligned_naive_faces_per_s": round(naive_rate, 1),
        "aligned_batched_faces_per_s": round(batched_rate, 1),
        "aligned_batched_over_naive": round(batched_rate / naive_rate, 2),
        "aligned_batched_vs_naive_min_cos": round(agreement, 6),
        "batch_size": embedder.batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fold 1 only, small samples")
    parser.add_argument("--embedders", default="sface,dlib")
    parser.add_argument(
        "--lfw", default=None, help="LFW folder (default $FACEFOUNDRY_DATA_DIR/lfw)"
    )
    parser.add_argument(
        "--skip-accuracy",
        action="store_true",
        help="only throughput and cold start (the LFW protocol takes ~45 min)",
    )
    args = parser.parse_args()
    specs = args.embedders.split(",")

    from facefoundry.evaluation.lfw import Lfw
    from facefoundry.evaluation.verify import evaluate_lfw, load_pairs
    from facefoundry.faces import align_face, decode_image, get_detector, select_face

    figures: dict = {"machine": machine(), "quick": args.quick}
    lfw = Lfw(args.lfw)
    folds = [0] if args.quick else None
    for spec in [] if args.skip_accuracy else specs:
        result = evaluate_lfw(spec, "view2", args.lfw, folds=folds, progress=not args.quick)
        figures[f"lfw_view2_{spec}"] = {
            k: result[k]
            for k in (
                "accuracy",
                "accuracy_std",
                "auc",
                "eer",
                "tar_at_far_1e-3",
                "pairs",
                "undetected",
                "seconds",
            )
        }
        figures[f"lfw_view2_{spec}"]["published_accuracy"] = PUBLISHED.get(spec)
        print(
            f"{spec}: LFW View 2 {100 * result['accuracy']:.2f} +- "
            f"{100 * result['accuracy_std']:.2f} over {result['pairs']} pairs "
            f"(published {PUBLISHED.get(spec)})",
            flush=True,
        )

    n_images = 64 if args.quick else 256
    pairs = load_pairs(lfw, "view2", [0])
    names = sorted({p.left for p in pairs} | {p.right for p in pairs})[:n_images]
    items = list(lfw.read_many(names))
    detector = get_detector("yunet")
    aligned = []
    for _, data in items:
        image = decode_image(data, "lfw")
        face = select_face(detector.detect(image), image.shape)
        if face is not None:
            aligned.append(align_face(image, face.landmarks))
    aligned = np.stack(aligned)
    gflops = peak_gflops()
    figures["machine_sgemm_gflops"] = round(gflops, 1)
    for spec in specs:
        rates = throughput(spec, items, aligned)
        rates["cold_start_s"] = round(cold_start(spec), 2)
        figures[f"throughput_{spec}"] = rates
        print(spec, rates, flush=True)
    # ceiling: SFace's FLOPs per face against the measured sgemm rate
    import onnx

    from facefoundry.faces.models import SFACE
    from facefoundry.faces.onnx_tools import count_flops, fold_constant_weights

    sface_gflop = count_flops(fold_constant_weights(onnx.load(str(SFACE.path())))) / 1e9
    figures["sface_gflop_per_face"] = round(sface_gflop, 3)
    figures["sface_ceiling_faces_per_s"] = round(gflops / sface_gflop, 1)
    if "throughput_sface" in figures:
        best = figures["throughput_sface"]["aligned_batched_faces_per_s"]
        figures["sface_fraction_of_ceiling"] = round(best / (gflops / sface_gflop), 2)
    finish(figures)


if __name__ == "__main__":
    main()
