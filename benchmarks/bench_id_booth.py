"""ID-Booth on a trained base (CPU): unseen LFW people, judged by dlib on held-out photos.

The base is the default IDiff-Face model (models/idiff-face-lfw, trained on LFW DevTrain)
seen through ``generators.id_booth.pixel_base``: pixels are the latents, the class prompt
"photo of a person" is the model's empty context and the instance prompt "photo of sks
person" a fixed context (the conditioner's output for a token-seeded random code) that
the LoRA learns to bind. The ID-Booth code path itself (``IDBoothTrainer``: a peft LoRA
per identity, prior preservation on images the base drew from the class prompt, the
triplet identity loss with the torch SFace) is unchanged.

For K LFW DevTest people (never seen by the base) with >= 6 photos: fine-tune on 4 of
their photos (aligned, shrunk to 32 px), draw 8 images each with

  (a) ``base``: the base alone (class prompt: no identity);
  (b) ``dreambooth``: the LoRA without the triplet term;
  (c) ``id_booth``: the LoRA with it;
  (ref) ``idiff_zero_shot``: IDiff-Face itself conditioned on the mean SFace vector of
        the same 4 photos (no fine-tuning; a reference, not part of the ID-Booth path),

and judge them with dlib (a model none of them saw) against the person's HELD-OUT
photos, every image through 32 px and back to 112 px like the generated ones:

- ``genuine_heldout``: mean cosine, generated image vs held-out photos of its person;
  ``impostor_heldout`` vs other people's held-out photos, ``heldout_gap`` the difference;
  ``heldout_rank1``: share of generated faces whose nearest held-out centroid is their
  own person (chance 1/K);
- ``eer`` / ``gap``: separation between the K generated identities (all pairs);
- ``pixel_diversity``: ``evaluation.variety.pixel_diversity`` within a person (0 = copies);
- ``copy_rate``: share of generated faces whose dlib cosine to one of the 4 TRAINING
  photos exceeds the 99th percentile of real same-person pairs (distinct photos) of
  other DevTest people (``copy_threshold``), i.e. closer to a training photo than 99%
  of real photo pairs of one person are to each other;
- ``face_rate``: YuNet finds a face.

Usage: python benchmarks/bench_id_booth.py [--quick] [--people K] [--steps N] [--seed S]
Last line: one JSON object (figures per variant).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, finish, machine

BASE = REPO / "models" / "idiff-face-lfw"
TRAIN_PHOTOS = 4
SAMPLES = 8
SEED_STRIDE = 7919  # --seed S shifts every noise seed by S x this (S = 0: the first run)
VARIANTS = ("base", "dreambooth", "id_booth", "idiff_zero_shot")


def devtest_people(k: int, calibration: int) -> tuple[list[tuple[str, int]], list]:
    """K people with >= 6 photos (spread over the alphabet) and a disjoint calibration
    pool of people with 2..5 photos (at most 3 each)."""
    from facefoundry.evaluation.lfw import Lfw, read_people

    people = read_people(Lfw().protocol_file("peopleDevTest.txt"))
    rich = [p for p in people if p[1] >= TRAIN_PHOTOS + 2]
    chosen = [rich[i] for i in np.linspace(0, len(rich) - 1, k).round().astype(int)]
    poor = [p for p in people if 2 <= p[1] < TRAIN_PHOTOS + 2]
    pool = [poor[i] for i in np.linspace(0, len(poor) - 1, calibration).round().astype(int)]
    return chosen, pool


def aligned(names: list[str]) -> np.ndarray:
    """112 px template-aligned faces of LFW images (YuNet, largest face)."""
    from facefoundry.evaluation.lfw import Lfw
    from facefoundry.faces import align_face, decode_image, get_detector, select_face

    lfw, detector = Lfw(), get_detector("yunet")
    out = []
    for name, data in lfw.read_many(names):
        image = decode_image(data, name)
        face = select_face(detector.detect(image), image.shape, "largest")
        out.append(align_face(image, face.landmarks))
    return np.stack(out)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 N x S x S x 3 -> N x size x size x 3: antialiased bilinear down (as the
    base's training data), bicubic up (as IDiff-Face's output)."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if size < x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    else:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = x.clamp(-1, 1)
    return ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def dlib_vectors(images32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dlib unit vectors (NaN rows: no face) of 32 px images shown at 112 px."""
    from facefoundry.evaluation.generator_quality import embed_generated

    faces = embed_generated(resize(images32, 112), np.zeros(len(images32)), ("dlib",))
    vectors = faces.vectors["dlib"].astype(np.float64)
    vectors[~faces.found] = np.nan
    return vectors, faces.found


def copy_threshold(vectors: np.ndarray, person: np.ndarray, quantile: float = 0.99) -> float:
    first, second = np.triu_indices(len(vectors), k=1)
    same = (person[first] == person[second]) & np.isfinite(vectors[:, 0])[first]
    same &= np.isfinite(vectors[:, 0])[second]
    scores = np.sum(vectors[first[same]] * vectors[second[same]], axis=1)
    return float(np.quantile(scores, quantile)), int(same.sum())


def judge(generated, found, who, heldout, heldout_who, train, train_who, threshold) -> dict:
    from facefoundry.evaluation.generator_quality import separation
    from facefoundry.evaluation.variety import pixel_diversity

    vectors, images = generated
    ok = found & np.isfinite(vectors[:, 0])
    people = np.unique(who)
    held_ok = np.isfinite(heldout[:, 0])
    centroids = np.stack(
        [np.nanmean(heldout[(heldout_who == p) & held_ok], axis=0) for p in people]
    )
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    genuine, impostor, rank1, copies, max_train = [], [], [], [], []
    for row in np.flatnonzero(ok):
        scores = heldout[held_ok] @ vectors[row]
        mine = heldout_who[held_ok] == who[row]
        genuine.append(scores[mine].mean())
        impostor.append(scores[~mine].mean())
        rank1.append(people[int(np.argmax(centroids @ vectors[row]))] == who[row])
        own_train = train[(train_who == who[row]) & np.isfinite(train[:, 0])]
        best = float(np.max(own_train @ vectors[row]))
        max_train.append(best)
        copies.append(best > threshold)
    figures = separation(vectors[ok], who[ok])
    return {
        "face_rate": float(ok.mean()),
        "genuine_heldout": float(np.mean(genuine)),
        "impostor_heldout": float(np.mean(impostor)),
        "heldout_gap": float(np.mean(genuine) - np.mean(impostor)),
        "heldout_rank1": float(np.mean(rank1)),
        "eer": figures["eer"],
        "gap": figures["gap"],
        "pixel_diversity": pixel_diversity(images, who),
        "copy_rate": float(np.mean(copies)),
        "max_train_cos": float(np.mean(max_train)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="K=5: a few minutes")
    parser.add_argument("--people", type=int, default=None, help="K (default 20; quick 5)")
    parser.add_argument("--steps", type=int, default=120, help="fine-tune steps per person")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--triplet-weight", type=float, default=1.0)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--prior-count", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--seed", type=int, default=0, help="noise of priors, fine-tuning and sampling"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    k = args.people or (5 if args.quick else 20)
    steps = args.steps

    from facefoundry.evaluation.lfw import image_name
    from facefoundry.generators.id_booth.base import load_base
    from facefoundry.generators.id_booth.identity_loss import SFaceIdentity
    from facefoundry.generators.id_booth.lora import drop_lora, load_lora
    from facefoundry.generators.id_booth.pixel_base import PIXEL_TARGET_MODULES
    from facefoundry.generators.id_booth.prompts import instance_prompt
    from facefoundry.generators.id_booth.sample import sample_images
    from facefoundry.generators.id_booth.settings import IDBoothSettings
    from facefoundry.generators.id_booth.train import IDBoothTrainer
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
    from facefoundry.generators.seeds import sample_seed

    started = time.perf_counter()
    people, pool = devtest_people(k, calibration=40)
    train_names, held_names, train_who, held_who = [], [], [], []
    for index, (person, count) in enumerate(people):
        names = [image_name(person, n) for n in range(1, count + 1)]
        train_names += names[:TRAIN_PHOTOS]
        held_names += names[TRAIN_PHOTOS:]
        train_who += [index] * TRAIN_PHOTOS
        held_who += [index] * (count - TRAIN_PHOTOS)
    train_who, held_who = np.array(train_who), np.array(held_who)
    pool_names, pool_who = [], []
    for index, (person, count) in enumerate(pool):
        for n in range(1, min(count, 3) + 1):
            pool_names.append(image_name(person, n))
            pool_who.append(index)
    train112, held112, pool112 = aligned(train_names), aligned(held_names), aligned(pool_names)
    train32, held32, pool32 = (resize(x, 32) for x in (train112, held112, pool112))
    train_v, _ = dlib_vectors(train32)
    held_v, _ = dlib_vectors(held32)
    pool_v, _ = dlib_vectors(pool32)
    threshold, calibration_pairs = copy_threshold(pool_v, np.array(pool_who))
    # real reference: held-out photos vs the same person's training photos
    real_best = np.array(
        [np.nanmax(train_v[train_who == who] @ v) for v, who in zip(held_v, held_who, strict=True)]
    )
    real_copy_rate = float(np.mean(real_best[np.isfinite(real_best)] > threshold))
    real_train_vs_held = float(
        np.mean([np.nanmean(train_v[train_who == p] @ held_v[held_who == p].T) for p in range(k)])
    )
    prep_seconds = time.perf_counter() - started

    base = load_base(BASE)
    work = Path(tempfile.mkdtemp(prefix="bench-id-booth-"))
    common = dict(
        model=str(BASE),
        resolution=32,
        train_steps=steps,
        learning_rate=args.lr,
        rank=args.rank,
        alpha=float(args.rank),
        target_modules=PIXEL_TARGET_MODULES,
        face_crop="aligned",
        identity_model="sface",
        prior_count=args.prior_count,
    )
    class_prompt = IDBoothSettings(**common).class_prompt
    started = time.perf_counter()
    priors = sample_images(
        base,
        [class_prompt] * args.prior_count,
        [sample_seed(SEED_STRIDE * args.seed, i, 0, "prior") for i in range(args.prior_count)],
        "",
        args.sample_steps,
        1.0,
        32,
    )
    prior_seconds = time.perf_counter() - started
    sface = SFaceIdentity()
    trainers = {
        "dreambooth": IDBoothTrainer(base, IDBoothSettings(**common, triplet_weight=0.0), priors),
        "id_booth": IDBoothTrainer(
            base, IDBoothSettings(**common, triplet_weight=args.triplet_weight), priors, sface
        ),
    }
    images = {v: [] for v in VARIANTS}
    seconds = {v: 0.0 for v in VARIANTS}
    histories = {"dreambooth": [], "id_booth": []}
    pipeline = IDiffFacePipeline.from_pretrained(BASE, device="cpu")
    from facefoundry.faces import get_embedder

    sface_np = get_embedder("sface")
    for index, (person, _) in enumerate(people):
        seeds = [
            sample_seed(1 + SEED_STRIDE * args.seed, index, s, "id_booth-bench")
            for s in range(SAMPLES)
        ]
        instance = train32[train_who == index]
        tick = time.perf_counter()
        images["base"].append(
            sample_images(base, [class_prompt] * SAMPLES, seeds, "", args.sample_steps, 1.0, 32)
        )
        seconds["base"] += time.perf_counter() - tick
        for variant, trainer in trainers.items():
            tick = time.perf_counter()
            name = f"{variant}-{index}"
            result = trainer.fine_tune(
                name, instance, work / name, seed=index + SEED_STRIDE * args.seed
            )
            histories[variant].append(result.history)
            load_lora(base.unet, name, work / name)
            images[variant].append(
                sample_images(
                    base,
                    [instance_prompt("sks")] * SAMPLES,
                    seeds,
                    "",
                    args.sample_steps,
                    args.guidance,
                    32,
                )
            )
            drop_lora(base.unet, name)
            seconds[variant] += time.perf_counter() - tick
        tick = time.perf_counter()
        condition = sface_np.embed_crops(train112[train_who == index]).mean(0)
        condition /= np.linalg.norm(condition)
        images["idiff_zero_shot"].append(
            resize(
                pipeline(
                    np.repeat(condition[None], SAMPLES, 0),
                    seeds,
                    steps=args.sample_steps,
                    guidance_scale=args.guidance,
                ),
                32,
            )
        )
        seconds["idiff_zero_shot"] += time.perf_counter() - tick
        print(f"person {index + 1}/{k} {person} done", flush=True)

    who = np.repeat(np.arange(k), SAMPLES)
    figures: dict = {
        "machine": machine(),
        "people": k,
        "seed": args.seed,
        "train_photos": TRAIN_PHOTOS,
        "samples_per_person": SAMPLES,
        "heldout_photos": int(len(held_who)),
        "steps": steps,
        "lr": args.lr,
        "rank": args.rank,
        "triplet_weight": args.triplet_weight,
        "guidance_scale": args.guidance,
        "sample_steps": args.sample_steps,
        "prior_count": args.prior_count,
        "target_modules": list(PIXEL_TARGET_MODULES),
        "copy_threshold": round(threshold, 4),
        "copy_rule": "max dlib cos to a training photo > p99 of real same-person pairs "
        f"({calibration_pairs} pairs, {len(pool)} other DevTest people)",
        "real_train_vs_heldout_cos": round(real_train_vs_held, 4),
        "real_heldout_copy_rate": round(real_copy_rate, 4),
        "prep_seconds": round(prep_seconds, 1),
        "prior_seconds": round(prior_seconds, 1),
    }
    for variant in VARIANTS:
        stacked = np.concatenate(images[variant])
        vectors, found = dlib_vectors(stacked)
        result = judge(
            (vectors, stacked), found, who, held_v, held_who, train_v, train_who, threshold
        )
        result["seconds_per_person"] = seconds[variant] / k
        figures[variant] = {key: round(float(value), 4) for key, value in result.items()}
    for variant, runs in histories.items():
        last = [h for run in runs for h in run[-max(1, steps // 4) :]]
        figures[variant]["mse_instance_last_quarter"] = round(
            float(np.mean([h["mse_instance"] for h in last])), 4
        )
        d_ap = [h["d_ap"] for h in last if "d_ap" in h]
        if d_ap:
            figures[variant]["sface_d_ap_last_quarter"] = round(float(np.mean(d_ap)), 4)
    _grid(images, REPO / "benchmarks" / "results" / "id_booth_lfw.png", train32, train_who)
    _table(figures)
    finish(figures)


def _table(figures: dict) -> None:
    keys = (
        "face_rate",
        "genuine_heldout",
        "impostor_heldout",
        "heldout_gap",
        "heldout_rank1",
        "eer",
        "gap",
        "pixel_diversity",
        "copy_rate",
        "max_train_cos",
        "seconds_per_person",
    )
    print(f"{'variant':<16}" + "".join(f"{key[:15]:>16}" for key in keys))
    for variant in VARIANTS:
        row = figures[variant]
        print(f"{variant:<16}" + "".join(f"{row[key]:>16.4f}" for key in keys))
    print(
        f"copy threshold {figures['copy_threshold']} ({figures['copy_rule']}); real "
        f"train-vs-held-out cos {figures['real_train_vs_heldout_cos']}"
    )


def _grid(images: dict, path: Path, train32: np.ndarray, train_who: np.ndarray) -> None:
    """Rows: the first people; columns: 4 training photos, then 4 samples per variant."""
    from PIL import Image

    rows = []
    for index in range(min(5, len(images["base"]))):
        parts = [train32[train_who == index][:4]]
        parts += [images[v][index][:4] for v in VARIANTS]
        strip = np.concatenate([np.concatenate(list(p), axis=1) for p in parts], axis=1)
        rows.append(strip)
    grid = np.concatenate(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


if __name__ == "__main__":
    main()
