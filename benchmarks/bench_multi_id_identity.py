"""Multi-identity generation on the trained base, judged by dlib (issue 17: WithAnyone's
experiment at our size).

For L layouts (K = 2, 3, 4 faces, cycled) of LFW DevTest people with >= 3 photos (never
seen by the base or the adapters, which trained on DevTrain): each slot's condition is
the SFace vector of the person's photo 0 (the reference ``r``); the judge compares the
face drawn there with dlib (which no model here was trained or steered with) against the
person's photo 1 (``t``, held out). Variants, same layouts, noise seeds and sampler:

  real       photo 2 of the person pasted into its box: the ceiling at this face size
  idiff_face_single  the default single-face IDiff-Face model (32 px, CFG 3) on the same
             conditions, one image per slot: a face with the whole image to itself
             (its "other" and "swap" compare with the people of the same layout)
  base       the canvas base alone (identity adapter off): the floor
  no_masks   the adapter trained without region masks (identity attention everywhere)
  masks      the adapter trained with region masks (the method)
  masks_off  the mask-trained adapter with its masks switched off at sampling

Every canvas is cropped back as the generation stage does (YuNet on the canvas enlarged
4x, centre-in-box gate). Per variant:
  detection_rate     identity slots that got a detected face
  own_similarity     dlib cos(face, its own person's t), mean over faces
  other_similarity   dlib cos(face, t of the other people in the same image)
  swap_rate          faces closer (dlib) to another person of their image than to their own
  copy_paste         WithAnyone's copy-paste score with dlib (g, t, r): +1 = copies r
  sface_condition    SFace cos(face, its condition): the steered model, information only
  faces_per_s        accepted faces / (sampling + crop-back seconds)

Usage: python benchmarks/bench_multi_id_identity.py [--quick] [--layouts 50] [--steps 25]
       [--repeats 1] [--masks models/multi-id] [--no-masks models/multi-id-no-masks]
Last line: one JSON object (also written to benchmarks/results/multi_id_identity.json).
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch
from common import REPO, finish, machine, median_spread, save_results

BOXES = (0.35, 0.45, 0.02)  # the canvases the base and adapters trained on
CANVAS = 64
UPSCALE = 4


def devtest_people() -> list[tuple[str, int]]:
    from facefoundry.evaluation.lfw import Lfw, read_people

    return [p for p in read_people(Lfw().protocol_file("peopleDevTest.txt")) if p[1] >= 3]


def aligned_photos(people: list[str]) -> np.ndarray:
    """(P, 3, 112, 112, 3) aligned photos 1..3 of each person (YuNet, largest face)."""
    from bench_id_booth import aligned

    from facefoundry.evaluation.lfw import image_name

    names = [image_name(p, n) for p in people for n in (1, 2, 3)]
    return aligned(names).reshape(len(people), 3, 112, 112, 3)


def plan(layouts: int, pool: int, repeat: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(people (K,), pixel-snapped boxes (K, 4)) per layout; K cycles 2, 3, 4."""
    from facefoundry.generators.multi_id.layout import sample_layout

    rng = np.random.default_rng(1000 + repeat)
    out = []
    for i in range(layouts):
        k = 2 + i % 3
        people = rng.choice(pool, size=k, replace=False)
        boxes = sample_layout(k, 10_000 * repeat + i, *BOXES)
        out.append((people, (np.round(boxes * CANVAS) / CANVAS).astype(np.float32)))
    return out


def pasted(photos: np.ndarray, people: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """A real canvas: photo 2 of each person resized into its box on mid-grey."""
    import torch.nn.functional as F

    canvas = torch.zeros(3, CANVAS, CANVAS)
    for person, box in zip(people, boxes, strict=True):
        x1, y1, x2, y2 = (int(round(v * CANVAS)) for v in box)
        face = torch.from_numpy(photos[person, 2]).permute(2, 0, 1)[None].float() / 127.5 - 1
        face = F.interpolate(face, size=(y2 - y1, x2 - x1), mode="bilinear", antialias=True)
        canvas[:, y1:y2, x1:x2] = face[0].clamp(-1, 1)
    return ((canvas + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


@functools.cache
def face_models():
    """YuNet, SFace and dlib, loaded once per process."""
    from facefoundry.faces import get_detector, get_embedder

    return get_detector("yunet"), get_embedder("sface"), get_embedder("dlib")


def judge(canvases, layouts, conditions, dlib_t, dlib_r, seconds) -> dict:
    """Crop back every canvas and score its faces (see the module docstring)."""
    from facefoundry.generators.multi_id.generate import crop_back

    detector, sface, dlib = face_models()
    started = time.perf_counter()
    faces, owner, slot_people, slots = [], [], [], 0
    for canvas, (people, boxes) in zip(canvases, layouts, strict=True):
        samples, _ = crop_back(canvas, boxes, conditions[people], detector, sface, upscale=UPSCALE)
        slots += len(people)
        for sample in samples:
            faces.append(sample.face)
            owner.append(int(people[sample.slot]))
            slot_people.append(people)
    seconds += time.perf_counter() - started
    if not faces:
        return {"detection_rate": 0.0, "faces": 0}
    faces = np.stack(faces)
    return scores(
        dlib.embed_aligned(faces), np.asarray(owner), slot_people, conditions,
        sface.embed_aligned(faces), dlib_t, dlib_r, slots, seconds,
    )  # fmt: skip


def scores(g, owner, groups, conditions_sface, s, dlib_t, dlib_r, slots, seconds) -> dict:
    """The per-variant figures from judge-space (dlib) and SFace vectors of kept faces."""
    from facefoundry.generators.multi_id.metrics import copy_paste

    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    g, s = unit(np.asarray(g, dtype=np.float64)), unit(np.asarray(s, dtype=np.float64))
    own = np.sum(g * dlib_t[owner], axis=1)
    others, swapped = [], []
    for row, people in enumerate(groups):
        sims = dlib_t[[p for p in people if p != owner[row]]] @ g[row]
        others.extend(sims.tolist())
        swapped.append(bool(sims.max() > own[row]))
    return {
        "faces": len(g),
        "detection_rate": round(len(g) / slots, 4),
        "own_similarity": round(float(own.mean()), 4),
        "other_similarity": round(float(np.mean(others)), 4),
        "own_minus_other": round(float(own.mean() - np.mean(others)), 4),
        "swap_rate": round(float(np.mean(swapped)), 4),
        "copy_paste": round(float(copy_paste(g, dlib_t[owner], dlib_r[owner]).mean()), 4),
        "sface_condition": round(float(np.sum(s * conditions_sface[owner], axis=1).mean()), 4),
        "faces_per_s": round(len(g) / seconds, 3),
    }


def idiff_face_single(conditions, layouts, seeds, steps, dlib_t, dlib_r) -> dict:
    """The single-face generator on the same conditions (one 32 px image per slot, CFG 3):
    how much identity a face keeps when it has the whole image to itself."""
    from facefoundry.evaluation.generator_quality import embed_generated
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline

    pipeline = IDiffFacePipeline.from_pretrained(REPO / "models" / "idiff-face-lfw", device="cpu")
    owner = np.concatenate([people for people, _ in layouts])
    groups = [people for people, _ in layouts for _ in people]
    slot_seeds = [seeds[i] * 8 + j for i, (p, _) in enumerate(layouts) for j in range(len(p))]
    started = time.perf_counter()
    images = pipeline(conditions[owner], slot_seeds, steps=steps, guidance_scale=3.0)
    faces = embed_generated(images, owner, ("dlib", "sface"))
    seconds = time.perf_counter() - started
    found = np.asarray(faces.found, dtype=bool)
    return scores(
        faces.vectors["dlib"][found], owner[found], [g for g, f in zip(groups, found, strict=True) if f],
        conditions, faces.vectors["sface"][found], dlib_t, dlib_r, len(owner), seconds,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 layouts, 10 steps")
    parser.add_argument("--layouts", type=int, default=None, help="default 50 (quick 12)")
    parser.add_argument("--steps", type=int, default=None, help="DPM-Solver++ steps (25)")
    parser.add_argument("--repeats", type=int, default=1, help="layout/noise draws")
    parser.add_argument("--masks", default=str(REPO / "models" / "multi-id"))
    parser.add_argument("--no-masks", default=str(REPO / "models" / "multi-id-no-masks"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layouts_n = args.layouts or (12 if args.quick else 50)
    steps = args.steps or (10 if args.quick else 25)

    from facefoundry.generators.multi_id.generate import sample_groups
    from facefoundry.generators.multi_id.model import load_model, make_sampler

    started = time.perf_counter()
    people = devtest_people()
    photos = aligned_photos([name for name, _ in people])
    _, sface, dlib = face_models()
    conditions = sface.embed_aligned(photos[:, 0]).astype(np.float32)
    conditions /= np.linalg.norm(conditions, axis=1, keepdims=True)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    dlib_r = unit(dlib.embed_aligned(photos[:, 0]).astype(np.float64))
    dlib_t = unit(dlib.embed_aligned(photos[:, 1]).astype(np.float64))

    models = {"masks": load_model(args.masks), "no_masks": load_model(args.no_masks)}
    variants = {  # name -> (model, adapter scale, region masks at sampling)
        "base": ("masks", 0.0, True),
        "no_masks": ("no_masks", 1.0, False),
        "masks": ("masks", 1.0, True),
        "masks_off": ("masks", 1.0, False),
    }
    runs: dict[str, list[dict]] = {name: [] for name in ["real", "idiff_face_single", *variants]}
    for repeat in range(args.repeats):
        layouts = plan(layouts_n, len(people), repeat)
        t0 = time.perf_counter()
        real = [pasted(photos, p, b) for p, b in layouts]
        runs["real"].append(
            judge(real, layouts, conditions, dlib_t, dlib_r, time.perf_counter() - t0)
        )
        seeds = [10_000 * repeat + i for i in range(layouts_n)]
        runs["idiff_face_single"].append(
            idiff_face_single(conditions, layouts, seeds, steps, dlib_t, dlib_r)
        )
        for name, (model, scale, masked) in variants.items():
            unet, adapter, schedule, vae = models[model]
            adapter.set_scale(scale)
            adapter.set_region_masks(masked)
            canvases, t0 = [], time.perf_counter()
            for k in (2, 3, 4):  # one batch per face count (the identity tensors are K wide)
                rows = [i for i, (p, _) in enumerate(layouts) if len(p) == k]
                images = sample_groups(
                    unet, adapter, make_sampler(schedule, "dpmsolver++"),
                    np.stack([conditions[layouts[i][0]] for i in rows]),
                    np.stack([layouts[i][1] for i in rows]),
                    [seeds[i] for i in rows], steps=steps, vae=vae,
                )  # fmt: skip
                canvases.extend(zip(rows, images, strict=True))
            canvases = [image for _, image in sorted(canvases, key=lambda x: x[0])]
            seconds = time.perf_counter() - t0
            runs[name].append(judge(canvases, layouts, conditions, dlib_t, dlib_r, seconds))
            adapter.set_scale(1.0)
            adapter.set_region_masks(model == "masks")
            if repeat == 0 and name == "masks":
                from PIL import Image

                grid = np.concatenate(
                    [np.concatenate(real[:8], 1), np.concatenate(canvases[:8], 1)]
                )
                Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2)).save(
                    REPO / "benchmarks" / "results" / "multi_id_identity.png"
                )

    keys = ("detection_rate", "own_similarity", "other_similarity", "own_minus_other",
            "swap_rate", "copy_paste", "sface_condition", "faces_per_s")  # fmt: skip
    figures: dict = {
        "machine": machine(),
        "quick": args.quick,
        "layouts": layouts_n,
        "faces_per_layout": "2,3,4 cycled",
        "steps": steps,
        "sampler": "dpmsolver++",
        "repeats": args.repeats,
        "devtest_people_pool": len(people),
        "judge": "dlib vs held-out photo",
    }
    for name, rows in runs.items():
        figures[name] = {
            key: (median_spread([r[key] for r in rows]) if args.repeats > 1 else rows[0][key])
            for key in keys
            if all(key in r for r in rows)
        }
        figures[name]["faces"] = sum(r["faces"] for r in rows)

    def value(name: str, key: str) -> float:
        entry = figures[name][key]
        return entry["median"] if isinstance(entry, dict) else entry

    figures["masks_beat_no_masks"] = {
        "lower_swap_rate": value("masks", "swap_rate") < value("no_masks", "swap_rate"),
        "higher_own_similarity": value("masks", "own_similarity")
        > value("no_masks", "own_similarity"),
    }
    figures["wall_minutes"] = round((time.perf_counter() - started) / 60, 2)
    save_results("multi_id_identity", figures)
    finish(figures)


if __name__ == "__main__":
    main()
