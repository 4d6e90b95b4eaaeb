"""Is the generator's lost identity lost detail? (issue 16, levers 5 and 6)

The default model keeps ~455 of 1,000 identities apart by SFace where real DevTrain faces
at the same 32 px keep 884 (BENCHMARKS session 35), and the loss happens at low noise,
where the denoiser draws the fine scales. Two figures tell whether that is blur:

- the radial power spectrum of the generated faces over real faces' at 32 px
  (``evaluation.variety.radial_power``): below 1 at the fine scales = blurrier;
- what blur of a known size costs real faces: the same real faces Gaussian-blurred at
  32 px (``--blur`` sigmas in pixels), their spectrum ratio and the identities the
  demo's filter keeps (SFace) and dlib tells apart.

If the generated faces hold as much fine-scale power as real ones, blur is not what
costs their identities: their detail is there but does not follow the identity.

Usage: python benchmarks/bench_detail.py [--identities 100] [--people 1000] [--blur 0.6 0.9]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_sampling import Variant, draw, load_variant, real_faces
from common import REPO, finish, machine, save_results

FINE = slice(8, 17)  # radii 8..16 of a 32 px spectrum: the finer half of the frequencies
SHOWN = (
    "identities_survived",
    "judge_identities_survived",
    "identity_dimensions",
    "judge_gap",
    "judge_eer",
)


def blurred_at(images: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """112 px faces brought to ``size`` px, Gaussian-blurred there by ``sigma`` pixels and
    brought back to 112 px the way real faces are shown beside the generator's."""
    import cv2

    out = np.empty_like(images)
    for row, image in enumerate(images):
        small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma)
        out[row] = cv2.resize(small, images.shape[1:3][::-1], interpolation=cv2.INTER_CUBIC)
    return out


def power_ratio(images: np.ndarray, reference_power: np.ndarray, size: int) -> np.ndarray:
    """Radial power of ``images`` over the reference's (``radial_power``), radii 1 ..
    size // 2."""
    from facefoundry.evaluation.variety import radial_power

    return radial_power(images, size)[1:] / reference_power[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument(
        "--sampling",
        default="dpmsolver++:8:3:d1.25@32a",
        help="SCHEDULER:STEPS:CFG[:dH[@AXES][a]][:c] as in bench_sampling.py --variant",
    )
    parser.add_argument("--identities", type=int, default=100, help="fitted identities drawn")
    parser.add_argument("--people", type=int, default=1000, help="real DevTrain people")
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument("--blur", type=float, nargs="+", default=[0.6, 0.9], help="sigmas, px")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="bench_detail", help="results file stem")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from facefoundry.evaluation.generator_quality import quality_report
    from facefoundry.evaluation.variety import radial_power
    from facefoundry.generators.identities import draw_identities
    from facefoundry.generators.idiff_face.generate import identity_space
    from facefoundry.generators.settings import IdentitySettings

    started = time.perf_counter()
    variant = Variant.parse(f"generated={args.model},{args.sampling}", args.model)
    pipe = load_variant(variant)
    size = pipe.model.config.sample_size
    real, labels = real_faces(args.people, args.per_identity, size, min_images=2)
    table = draw_identities(
        IdentitySettings(count=args.identities, method="fitted", tau=0.3, spread=1.0, pool=1.0),
        0,
        identity_space(None, args.model),
    )
    generated, _, _ = draw(pipe, variant, table, args.per_identity)
    real_power = radial_power(real, size)
    generated_ratio = power_ratio(generated, real_power, size)
    print("generated / real power, radius 1..:", np.round(generated_ratio, 3).tolist(), flush=True)
    rows = []
    for sigma in [0.0, *args.blur]:
        faces = blurred_at(real, size, sigma) if sigma else real
        report = quality_report(faces, labels)
        ratio = power_ratio(faces, real_power, size)
        row = {"blur_sigma_px": sigma, "fine_power_ratio": float(ratio[FINE].mean())}
        row.update({k: report.get(k) for k in SHOWN})
        row["power_ratio"] = np.round(ratio, 3).tolist()
        rows.append(row)
        print({k: v for k, v in row.items() if k != "power_ratio"}, flush=True)
    figures = {
        "machine": machine(),
        "torch_threads": args.threads,
        "model": args.model,
        "sampling": args.sampling,
        "generated": f"{args.identities} fitted identities x {args.per_identity}",
        "real": f"{len(set(labels.tolist()))} DevTrain people x up to {args.per_identity}",
        "generated_fine_power_ratio": float(generated_ratio[FINE].mean()),
        "generated_power_ratio": np.round(generated_ratio, 3).tolist(),
        "real_blurred": rows,
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    save_results(args.name, figures)
    finish(figures)


if __name__ == "__main__":
    main()
