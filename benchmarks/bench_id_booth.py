"""ID-Booth on tiny randomly initialised SD components (CPU): seconds per fine-tune step
and per image, and whether the triplet term pulls the generated face's embedding
towards the instance photo (a fixed toy identity: one real LFW face, two others as
prior-class images), measured side by side with the same run without the term.

Usage: python benchmarks/bench_id_booth.py [--steps 300] [--resolution 32] [--triplet-weight 100]
Writes benchmarks/results/id_booth_triplet.png; last line: one JSON object.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, finish, machine

PEOPLE = [
    "Abel_Pacheco/Abel_Pacheco_0001.jpg",  # the toy identity (instance photo)
    "Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg",  # prior-class images
    "Amber_Tamblyn/Amber_Tamblyn_0001.jpg",
]


def aligned_faces() -> np.ndarray:
    from facefoundry.evaluation.lfw import Lfw
    from facefoundry.faces import align_face, decode_image, get_detector, select_face

    lfw, detector = Lfw(), get_detector("yunet")
    out = []
    for name in PEOPLE:
        image = decode_image(lfw.read(name), name)
        out.append(align_face(image, select_face(detector.detect(image), image.shape).landmarks))
    return np.stack(out)


@torch.no_grad()
def distance_to_positive(trainer, adapter_dir: Path, name: str, instance: np.ndarray) -> float:
    """Mean 1 - cos between the instance photo and the faces decoded from the UNet's
    predicted x0 at fixed timesteps and noise (the same probe for every run)."""
    from facefoundry.generators.denoise import predicted_x0
    from facefoundry.generators.id_booth.identity_loss import (
        aligned_matrix,
        embed_crops,
        warp_to_template,
    )
    from facefoundry.generators.id_booth.lora import drop_lora, load_lora
    from facefoundry.generators.id_booth.train import to_model_images

    base = trainer.base
    load_lora(base.unet, name, adapter_dir)
    pixels = to_model_images(instance, trainer.settings.resolution)
    latents = trainer._encode(pixels).repeat(4, 1, 1, 1)
    generator = torch.Generator().manual_seed(123)
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.tensor([50, 150, 300, 500])
    noisy = trainer.noise.add_noise(latents, noise, t)
    states = trainer.prompts.states[:1].repeat(4, 1, 1)
    output = base.unet(noisy, t, encoder_hidden_states=states).sample
    x0 = predicted_x0(trainer.noise.alphas_cumprod, noisy, output, t, trainer.prediction_type)
    images = base.vae.decode(x0 / base.latent_scale).sample.clamp(-1, 1)
    matrix = torch.from_numpy(aligned_matrix(images.shape[-1]))[None].repeat(4, 1, 1)
    anchor = embed_crops(trainer.identity_model, warp_to_template(images, matrix))
    reference = embed_crops(trainer.identity_model, warp_to_template(pixels, matrix[:1])).expand_as(
        anchor
    )
    drop_lora(base.unet, name)
    return float((1 - torch.nn.functional.cosine_similarity(anchor, reference)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--triplet-weight", type=float, default=100.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from facefoundry.generators.id_booth.base import load_base
    from facefoundry.generators.id_booth.lora import load_lora
    from facefoundry.generators.id_booth.sample import sample_images
    from facefoundry.generators.id_booth.settings import IDBoothSettings
    from facefoundry.generators.id_booth.tiny import make_tiny_sd
    from facefoundry.generators.id_booth.train import IDBoothTrainer
    from facefoundry.recognition.backbones import get_model

    faces = aligned_faces()
    work = Path(tempfile.mkdtemp(prefix="bench-id-booth-"))
    base = load_base(make_tiny_sd(work / "tiny-sd", seed=0, image_size=args.resolution))
    torch.manual_seed(0)
    identity = get_model("mbf_small", num_features=64)
    figures: dict = {"machine": machine(), "resolution": args.resolution, "steps": args.steps}
    runs = {}
    figures.update(lr=args.lr, triplet_weight=args.triplet_weight)
    for label, weight in (("with_triplet", args.triplet_weight), ("without_triplet", 0.0)):
        settings = IDBoothSettings(
            base=str(work / "tiny-sd"),
            resolution=args.resolution,
            train_steps=args.steps,
            learning_rate=args.lr,
            face_crop="aligned",
            triplet_weight=weight,
        )
        trainer = IDBoothTrainer(base, settings, faces[1:], identity)
        started = time.perf_counter()
        result = trainer.fine_tune(label, faces[:1], work / label, seed=0)
        seconds = (time.perf_counter() - started) / args.steps
        runs[label] = result.history
        figures[label] = {
            "s_per_step": round(seconds, 4),
            "probe_distance_to_positive": round(
                distance_to_positive(trainer, work / label, label, faces[:1]), 4
            ),
        }
    before = IDBoothTrainer(
        base,
        IDBoothSettings(base=str(work / "tiny-sd"), resolution=args.resolution, train_steps=1),
        faces[1:],
        identity,
    )
    # the untrained adapter (B = 0) is the base model: its distance is the starting point
    before.settings = before.settings.model_copy(update={"learning_rate": 0.0})
    before.fine_tune("untrained", faces[:1], work / "untrained")
    figures["untrained_probe_distance_to_positive"] = round(
        distance_to_positive(before, work / "untrained", "untrained", faces[:1]), 4
    )
    history = runs["with_triplet"]
    d_ap = [h["d_ap"] for h in history if "d_ap" in h]
    quarter = max(1, len(d_ap) // 4)
    figures["d_ap_first_quarter"] = round(float(np.mean(d_ap[:quarter])), 4)
    figures["d_ap_last_quarter"] = round(float(np.mean(d_ap[-quarter:])), 4)
    load_lora(base.unet, "with_triplet", work / "with_triplet")
    prompts = ["face portrait photo of sks person, forest background"] * 8
    sample_images(base, prompts[:1], [0], steps=2, resolution=args.resolution)
    started = time.perf_counter()
    sample_images(base, prompts, list(range(8)), "blurry", 30, 5.0, args.resolution, batch_size=8)
    figures["s_per_image_30_steps_cfg5"] = round((time.perf_counter() - started) / 8, 4)
    _plot(history, REPO / "benchmarks" / "results" / "id_booth_triplet.png")
    finish(figures)


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history if "d_ap" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [h["d_ap"] for h in history if "d_ap" in h], label="d(anchor, positive)")
    ax.plot(steps, [h["d_an"] for h in history if "d_an" in h], label="d(anchor, negative)")
    ax.plot(steps, [h["triplet"] for h in history if "triplet" in h], label="weighted triplet")
    ax.set_xlabel("fine-tune step")
    ax.set_ylabel("1 - cos / loss")
    ax.legend()
    ax.set_title("ID-Booth triplet term on a toy identity (tiny SD, CPU)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
