"""Where along the noise levels does the generator lose identity? (issue 16, lever 5)

The default model keeps ~455 of 1,000 identities apart whatever it is conditioned on,
even its own training people, whose real photos keep 884 (BENCHMARKS session 35). Here
each person's real training photo is noised to t_start and denoised by the model
(DPM-Solver++, classifier-free guidance), conditioned on the photo's own embedding or
on nothing (the learned empty context). At t_start = 1,000 nothing of the photo is left
(plain sampling); at lower t_start its coarse structure survives. The level where the
own-condition count falls toward plain sampling's is where the condition fails to put
the identity in; the gap between own and empty conditions is what the condition adds.

Usage: python benchmarks/bench_identity_by_noise.py [--people 250] [--starts 1000 600 300]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from bench_identity_draws import first_photos, people_conditions
from bench_sampling import SHOWN, real_faces
from common import REPO, finish, machine, save_results


def denoise_from(pipe, faces, identity, seeds, t_start, steps, guidance, conditioned):
    """Faces noised to ``t_start`` and denoised; uint8 112 px images."""
    model = pipe.model
    scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    timesteps = [t for t in scheduler.timesteps if int(t) <= t_start]
    scheduler.set_begin_index(len(scheduler.timesteps) - len(timesteps))
    noise = torch.stack(
        [torch.randn(faces.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    latents = scheduler.add_noise(faces, noise, timesteps[0].repeat(len(faces)))
    drop = torch.cat(
        [torch.ones(len(faces), dtype=torch.bool), torch.full((len(faces),), not conditioned)]
    )
    with torch.no_grad():
        for t in timesteps:
            t_batch = torch.full((2 * len(faces),), int(t), dtype=torch.long)
            both = model(
                torch.cat([latents, latents]), t_batch, torch.cat([identity, identity]), drop
            )
            unconditional, conditional = both.chunk(2)
            output = unconditional + guidance * (conditional - unconditional)
            latents = scheduler.step(output, t, latents).prev_sample
    images = F.interpolate(
        latents.clamp(-1, 1), size=(112, 112), mode="bicubic", align_corners=False
    )
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--data", default=str(REPO / "data" / "lfw-devtrain-sface-64.npz"))
    parser.add_argument("--people", type=int, default=250)
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument("--starts", type=int, nargs="+", default=[1000, 600, 300])
    parser.add_argument("--steps", type=int, default=8, help="sampler steps over the full range")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="bench_identity_by_noise")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from facefoundry.evaluation.generator_quality import quality_report
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
    from facefoundry.generators.training_data import FaceTrainingSet

    started = time.perf_counter()
    pipe = IDiffFacePipeline.from_pretrained(args.model, "dpmsolver++", device="cpu")
    size = pipe.model.config.sample_size
    real, labels = real_faces(args.people, args.per_identity, size, min_images=2)
    reference = quality_report(real, labels)
    print("real:", {k: reference.get(k) for k in SHOWN}, flush=True)
    data = FaceTrainingSet.load(args.data)
    first = first_photos(data, args.people, 2)  # the reference's people, first photo each
    if set(np.asarray(data.labels)[first].tolist()) != set(labels.tolist()):
        raise SystemExit("the conditions' people are not the real reference's people")
    table = people_conditions(data, first)
    faces = torch.from_numpy(data.faces[first]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    faces = F.interpolate(
        faces, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    rows_of = np.repeat(np.arange(args.people), args.per_identity)
    seeds = [1000 * int(i) + s for i in range(args.people) for s in range(args.per_identity)]
    identity = torch.from_numpy(table.embeddings[rows_of])
    rows = []
    for t_start in args.starts:
        for conditioned in (True, False):
            began = time.perf_counter()
            images = np.concatenate(
                [
                    denoise_from(
                        pipe,
                        faces[rows_of[i : i + 64]],
                        identity[i : i + 64],
                        seeds[i : i + 64],
                        t_start,
                        args.steps,
                        args.guidance,
                        conditioned,
                    )
                    for i in range(0, len(rows_of), 64)
                ]
            )
            report = quality_report(images, rows_of, table.embeddings[rows_of], reference)
            row = {"t_start": t_start, "condition": "own" if conditioned else "empty"}
            row.update({k: report.get(k) for k in SHOWN})
            row["minutes"] = round((time.perf_counter() - began) / 60, 1)
            rows.append(row)
            print(row, flush=True)
    figures = {
        "machine": machine(),
        "model": args.model,
        "people": args.people,
        "per_identity": args.per_identity,
        "sampling": f"dpmsolver++ {args.steps} steps over the full range, CFG {args.guidance:g}",
        "real_32": {k: reference.get(k) for k in SHOWN if k in reference},
        "rows": rows,
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    save_results(args.name, figures)
    finish(figures)


if __name__ == "__main__":
    main()
