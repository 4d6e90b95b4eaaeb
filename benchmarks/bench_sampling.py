"""IDiff-Face sampling: fast scheduler vs the reference DDPM-1000, and identity quality
of the default model judged by an embedder it was NOT conditioned on.

Usage: python benchmarks/bench_sampling.py [--quick] [--model models/idiff-face-lfw]
  full:  100 synthetic identities x 8 images (dpmsolver++ 25 steps), DDPM-1000 on a
         subset of the same seeds; judge dlib; ceiling from real LFW DevTest faces.
  quick: 20 x 4, DDPM-1000 on 8 images (4 identities x 2 seeds).
Last line: one JSON object.

Quality guard (same run, same identities, same seeds through both samplers, all pairs
of those images): the fast sampler must keep the judge's genuine-minus-impostor gap of
DDPM-1000 within GAP_TOLERANCE (0.02) and its EER within EER_TOLERANCE (one point).
Where the sample cannot resolve that, the tolerance used is widened and reported: the
gap's to 2 jackknife standard errors (over identities) of the paired difference, the
EER's to one genuine pair (1 / genuine pairs). The genuine cosine alone is not a guard:
a sampler that draws one face for every identity has a high genuine cosine, but no gap
and an EER of ~0.5. Keys: gap_fast, gap_ddpm1000, gap_delta, gap_ratio, eer_fast,
eer_ddpm1000, eer_delta, gap_delta_se, guard_* and quality_guard_pass (false on a
failure, and when the reference gap is within the tolerance: a collapse would not show).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from common import REPO, finish, machine, peak_gflops, save_results

from facefoundry.evaluation.generator_quality import separation

GAP_TOLERANCE = 0.02  # the fast sampler's gap may be at most this much below DDPM-1000's
EER_TOLERANCE = 0.01  # ... and its EER at most one point above


def all_pairs(vectors: np.ndarray, identity_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, same) over every unordered pair of rows: no sampling noise in the guard."""
    first, second = np.triu_indices(len(vectors), k=1)
    scores = np.sum(vectors[first] * vectors[second], axis=1)
    return scores, identity_of[first] == identity_of[second]


def _gap(vectors: np.ndarray, identity_of: np.ndarray) -> float:
    scores, same = all_pairs(vectors, identity_of)
    return float(scores[same].mean() - scores[~same].mean())


def jackknife_se(fast: np.ndarray, reference: np.ndarray, identity_of: np.ndarray) -> dict:
    """Leave-one-identity-out standard errors of the reference gap and of the paired
    gap difference (fast - reference): how much the figures move with the identities
    drawn, which on a few identities is more than the stated tolerance."""
    identities = np.unique(identity_of)
    k = len(identities)
    if k < 3:
        return {"delta": float("inf"), "reference": float("inf")}
    deltas, references = [], []
    for left_out in identities:
        keep = identity_of != left_out
        ref = _gap(reference[keep], identity_of[keep])
        deltas.append(_gap(fast[keep], identity_of[keep]) - ref)
        references.append(ref)

    def se(values: list[float]) -> float:
        values = np.asarray(values)
        return float(np.sqrt((k - 1) / k * np.sum((values - values.mean()) ** 2)))

    return {"delta": se(deltas), "reference": se(references)}


def quality_guard(
    fast_vectors: np.ndarray,
    reference_vectors: np.ndarray,
    identity_of: np.ndarray,
    gap_tolerance: float = GAP_TOLERANCE,
    eer_tolerance: float = EER_TOLERANCE,
) -> dict:
    """Fast sampler vs DDPM-1000 on the same identities and seeds (judge embeddings).

    Fails when the fast gap is below the reference gap by more than the gap tolerance,
    or its EER above the reference EER by more than the EER tolerance. Each tolerance
    is the stated one, widened only where the measurement cannot resolve it: the gap's
    to 2 jackknife standard errors of the paired difference (over identities), the
    EER's to one genuine pair's worth (1 / genuine pairs). Inconclusive, and not passed,
    when the reference gap is not above the gap tolerance: a sampler that collapsed
    every identity into one face (gap 0) would then not be told apart.
    """
    fast = separation(fast_vectors, identity_of)
    reference = separation(reference_vectors, identity_of)
    noise = jackknife_se(fast_vectors, reference_vectors, identity_of)
    gap_tol = max(gap_tolerance, 2 * noise["delta"])
    eer_tol = max(eer_tolerance, 1.0 / max(fast["genuine_pairs"], 1))
    gap_delta = fast["gap"] - reference["gap"]
    eer_delta = fast["eer"] - reference["eer"]
    reasons = []
    if reference["gap"] <= gap_tol:
        reasons.append(
            f"inconclusive: DDPM-1000 gap {reference['gap']:.4f} <= tolerance {gap_tol:.4f} "
            "(a collapse to one face would not show: more identities needed)"
        )
    if gap_delta < -gap_tol:
        reasons.append(f"gap dropped by {-gap_delta:.4f} > {gap_tol:.4f}")
    if eer_delta > eer_tol:
        reasons.append(f"EER rose by {eer_delta:.4f} > {eer_tol:.4f}")
    return {
        "gap_fast": round(fast["gap"], 4),
        "gap_ddpm1000": round(reference["gap"], 4),
        "gap_delta": round(gap_delta, 4),
        "gap_ratio": round(fast["gap"] / reference["gap"], 3) if reference["gap"] > 0 else None,
        "eer_fast": round(fast["eer"], 4),
        "eer_ddpm1000": round(reference["eer"], 4),
        "eer_delta": round(eer_delta, 4),
        "gap_delta_se": round(noise["delta"], 4),
        "gap_ddpm1000_se": round(noise["reference"], 4),
        "guard_gap_tolerance_stated": gap_tolerance,
        "guard_gap_tolerance": round(gap_tol, 4),
        "guard_eer_tolerance_stated": eer_tolerance,
        "guard_eer_tolerance": round(eer_tol, 4),
        "guard_identities": int(len(np.unique(identity_of))),
        "guard_pairs": {"genuine": fast["genuine_pairs"], "impostor": fast["impostor_pairs"]},
        "quality_guard_pass": not reasons,
        "quality_guard": "pass" if not reasons else "FAIL: " + "; ".join(reasons),
    }


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


def ddpm_guard_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DDPM-1000 guard of the fast sampler")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--judge", default="dlib")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--method", default="fitted", choices=["separated", "fitted"], help="identity sampling"
    )
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from facefoundry.generators.identities import make_identities
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
    from facefoundry.generators.seeds import sample_seed

    n_ids, per_id, n_ddpm = (20, 4, 8) if args.quick else (100, 8, 16)
    fast = IDiffFacePipeline.from_pretrained(args.model, "dpmsolver++", device="cpu")
    config = fast.model.config
    from facefoundry.generators.identities import PRIOR_FILE

    table = make_identities(
        n_ids,
        config.id_dim,
        seed=1,
        method=args.method,
        tau=0.3,
        prior=Path(args.model) / PRIOR_FILE,
    )
    rows = np.repeat(np.arange(len(table.ids)), per_id)  # ids need not be 0..n-1
    identity_of = table.ids[rows]
    seeds = [sample_seed(0, int(i), s) for i in table.ids for s in range(per_id)]
    vectors = table.embeddings[rows]
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
    from facefoundry.faces import get_embedder

    judge_embedder = get_embedder(args.judge)
    figures.update(
        quality_guard(
            judge_embedder.embed_aligned(images[subset]),
            judge_embedder.embed_aligned(ddpm_images),
            identity_of[subset],
        )
    )
    print("quality guard:", figures["quality_guard"], flush=True)

    # ceiling: real LFW DevTest faces through the same judge, at 112 px and shrunk to the
    # model's resolution and back
    from facefoundry.evaluation.aligned_pairs import aligned_pairs

    pairs = aligned_pairs("devtest", progress=False)
    embedder = judge_embedder
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


# --- generator quality: the default model and sampling vs the baseline sampling ------------
BASELINE = "dpmsolver++:25:3"  # 50 UNet evaluations per image
UNET_GFLOP_PER_EVAL = 0.53  # the default 32 px UNet, one forward (BENCHMARKS.md)


@dataclass(frozen=True)
class Variant:
    """One way to sample: model folder, scheduler, steps, guidance, guidance interval."""

    name: str
    model: str
    scheduler: str
    steps: int
    guidance: float
    interval: tuple[int, int] | None = None
    detail: float = 0.0
    detail_axes: int = 32
    detail_alternate: bool = False
    shared_noise: float = 0.0
    compiled: bool = False

    @classmethod
    def parse(cls, text: str, default_model: str) -> Variant:
        """NAME=[MODEL,]SCHEDULER:STEPS:GUIDANCE[:LO-HI][:dH[@AXES][a]][:nRHO][:c] (dH:
        detail guidance; a trailing ``a``: alternating with the unconditional branch; nRHO:
        each identity's samples share rho of their initial noise's variance; c: the UNet
        torch.compiled, as ``generate.compile`` runs it)"""
        name, _, spec = text.partition("=")
        model, _, sampling = spec.rpartition(",")
        parts = sampling.split(":")
        interval, detail, axes, alternate, shared, compiled = None, 0.0, 32, False, 0.0, False
        for extra in parts[3:]:
            if extra == "c":
                compiled = True
            elif extra.startswith("n"):
                shared = float(extra[1:])
            elif extra.startswith("d"):
                alternate = extra.endswith("a")
                value, _, axes_text = extra[1:].removesuffix("a").partition("@")
                detail, axes = float(value), int(axes_text or 32)
            else:
                interval = tuple(int(v) for v in extra.split("-"))
        return cls(
            name,
            model or default_model,
            parts[0],
            int(parts[1]),
            float(parts[2]),
            interval,
            detail,
            axes,
            alternate,
            shared,
            compiled,
        )

    @property
    def evaluations(self) -> int:
        """UNet evaluations per image (guidance doubles the steps it covers, detail
        guidance adds one per step unless it alternates with the unconditional branch)."""
        extra = self.steps if self.detail and not self.detail_alternate else 0
        if self.guidance == 1.0:
            return self.steps + extra
        if self.interval is None:
            return 2 * self.steps + extra
        from facefoundry.generators.idiff_face.model import IDiffFaceModel
        from facefoundry.generators.idiff_face.schedule import make_sampler

        scheduler = make_sampler(IDiffFaceModel.from_pretrained(self.model).config, self.scheduler)
        scheduler.set_timesteps(self.steps)
        guided = sum(self.interval[0] <= int(t) <= self.interval[1] for t in scheduler.timesteps)
        return self.steps + guided + extra


def real_faces(people: int | None, per_person: int, size: int, seed: int = 0, min_images: int = 4):
    """LFW DevTrain faces (the generator's training people) at the generator's resolution:
    ``people`` people (None: all) with >= ``min_images`` images, up to ``per_person``
    each (all eligible people when fewer than ``people``), 112 px after shrinking."""
    import cv2

    from facefoundry.evaluation.variety import shrink_to
    from facefoundry.generators.training_data import FaceTrainingSet

    data = FaceTrainingSet.load(REPO / "data" / "lfw-devtrain-sface-64.npz")
    labels = np.asarray(data.labels)
    counts = np.bincount(labels)
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(counts >= min_images)
    # more people asked for than DevTrain holds: all of them (the caller reports the count)
    chosen = rng.choice(eligible, size=min(people or len(eligible), len(eligible)), replace=False)
    rows = np.concatenate([np.flatnonzero(labels == p)[:per_person] for p in chosen])
    faces = np.stack(
        [cv2.resize(f, (112, 112), interpolation=cv2.INTER_CUBIC) for f in data.faces[rows]]
    )
    return shrink_to(faces, size), labels[rows]


def load_variant(variant: Variant):
    """The variant's pipeline, compiled and warmed up on its own shapes when it asks."""
    from facefoundry.generators.idiff_face.generate import compile_and_warm_up, warm_up
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
    from facefoundry.generators.idiff_face.settings import IDiffFaceSettings

    pipe = IDiffFacePipeline.from_pretrained(variant.model, variant.scheduler, device="cpu")
    settings = IDiffFaceSettings(model=variant.model, **sampling_kwargs(variant))
    if variant.compiled:
        settings = settings.model_copy(update={"compile": True})
        if not compile_and_warm_up(pipe, settings):
            raise SystemExit(f"{variant.name}: torch.compile failed (see the warning above)")
    else:
        warm_up(pipe, settings)
    return pipe


def sampling_kwargs(variant: Variant) -> dict:
    return {
        "steps": variant.steps,
        "guidance_scale": variant.guidance,
        "guidance_interval": variant.interval,
        "detail_guidance": variant.detail,
        "detail_axes": variant.detail_axes,
        "detail_alternate": variant.detail_alternate,
    }


def draw(pipe, variant: Variant, table, per_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every identity's ``per_id`` samples with the demo's seeds: images, identity, condition."""
    from facefoundry.generators.seeds import sample_seed

    rows = np.repeat(np.arange(len(table.ids)), per_id)  # ids need not be 0..n-1
    seeds = [sample_seed(0, int(i), s) for i in table.ids for s in range(per_id)]
    shared = [sample_seed(0, int(i), 0, "identity-noise") for i in table.ids for _ in range(per_id)]
    vectors = table.embeddings[rows]
    images = pipe(
        vectors,
        seeds,
        shared_noise=variant.shared_noise,
        shared_seeds=shared,
        **sampling_kwargs(variant),
    )
    return images, table.ids[rows], vectors


def time_rounds(pipes: dict, variants: list[Variant], table, per_id: int, rounds: int) -> dict:
    """Images per second of every variant on the same identities, the variants taking turns
    in each round, so a shared host's slow minutes fall on all of them alike. Returns each
    variant's rates, one per round (``speed_over_baseline`` = median of the rounds' ratios)."""
    rates = {v.name: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            started = time.perf_counter()
            images, _, _ = draw(pipes[variant.name], variant, table, per_id)
            rates[variant.name].append(len(images) / (time.perf_counter() - started))
    return rates


def spread(values: list[float], digits: int = 3) -> dict:
    return {
        "median": round(float(np.median(values)), digits),
        "min": round(float(np.min(values)), digits),
        "max": round(float(np.max(values)), digits),
    }


def run_variant(
    pipe,
    variant: Variant,
    table,
    per_id: int,
    reference: dict | None,
    third_judge: str = "",
    keep: dict | None = None,
) -> dict:
    """The quality report of one variant's draw (plus ``third_*`` keys when a third judge,
    an ``onnx:PATH`` recognizer that neither steers nor filters, is given). ``keep``, a
    dict, receives the draw's ``images`` and ``identity_of`` for a caller's own use."""
    from facefoundry.evaluation.generator_quality import quality_report

    started = time.perf_counter()
    images, identity_of, vectors = draw(pipe, variant, table, per_id)
    seconds = time.perf_counter() - started
    if keep is not None:
        keep.update(images=images, identity_of=identity_of)
    report = quality_report(images, identity_of, vectors, reference, third_judge=third_judge)
    rate = len(images) / seconds
    report.update(
        {
            "variant": variant.name,
            "model": variant.model,
            "sampling": f"{variant.scheduler} {variant.steps} steps, CFG {variant.guidance:g}"
            + (f" over t in {list(variant.interval)}" if variant.interval else "")
            + (
                f", detail {variant.detail:g} @ {variant.detail_axes} axes"
                + (", alternating" if variant.detail_alternate else "")
                if variant.detail
                else ""
            )
            + (f", shared noise {variant.shared_noise:g}" if variant.shared_noise else "")
            + (", UNet compiled" if variant.compiled else ""),
            "evaluations_per_image": variant.evaluations,
            "img_per_s_quality_pass": round(rate, 3),
            "img_per_s": round(rate, 3),  # bench_sampling replaces it with its timing rounds
            "unet_gflops": round(rate * variant.evaluations * UNET_GFLOP_PER_EVAL, 1),
        }
    )
    _save_grid(images, per_id, REPO / "benchmarks" / "results" / f"samples_{variant.name}.png")
    return report


SHOWN = (
    "face_rate",
    "condition_cos",
    "identities_survived",
    "judge_identities_survived",
    "identity_dimensions",
    "condition_dimensions",
    "judge_gap",
    "judge_eer",
    "pose_spread_ratio",
    "illumination_spread_ratio",
    "pixel_diversity_ratio",
    "img_per_s",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Generator quality of IDiff-Face models and sampling settings, judged by "
        "dlib and identity-free variety figures, against real LFW DevTrain faces at 32 px. "
        "The last variant is the one the last-line keys describe; the baseline "
        f"({BASELINE}) runs on the first variant's model in the same run.",
    )
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=[MODEL,]SCHEDULER:STEPS:GUIDANCE[:LO-HI][:dH[@AXES][a]][:nRHO] (repeatable; "
        "dH: detail guidance h, a: alternating with the unconditional branch, nRHO: an "
        "identity's samples share rho of their initial noise)",
    )
    parser.add_argument("--identities", type=int, default=100)
    parser.add_argument("--per-identity", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--timing-rounds",
        type=int,
        default=5,
        help="rounds in which every variant draws the same --timing-identities x "
        "--per-identity images in turn; img/s and speed_over_baseline are their medians",
    )
    parser.add_argument("--timing-identities", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="20 identities x 4")
    parser.add_argument(
        "--select",
        choices=["drawn", "predicted"],
        default="drawn",
        help="drawn: the first identities the fitted prior draws (the model on its own); "
        "predicted: those the model's realisation map predicts apart from a pool of --pool "
        "x as many, as the demo draws its candidates (without its probes)",
    )
    parser.add_argument("--pool", type=float, default=4.0, help="with --select predicted")
    parser.add_argument(
        "--identity-seed",
        type=int,
        default=0,
        help="the recipe seed the identities are drawn with (the map's pairs come from "
        "seeds 0 and 1, so judge --select predicted on another)",
    )
    parser.add_argument("--ddpm-guard", action="store_true", help="the DDPM-1000 guard instead")
    args, rest = parser.parse_known_args()
    if args.ddpm_guard:
        ddpm_guard_main(rest)
        return
    torch.set_num_threads(args.threads)
    from facefoundry.evaluation.generator_quality import quality_report

    n_ids, per_id = (20, 4) if args.quick else (args.identities, args.per_identity)
    variants = [Variant.parse(text, args.model) for text in args.variant]
    baseline = Variant.parse(
        f"baseline={variants[0].model if variants else args.model},{BASELINE}", args.model
    )
    from facefoundry.generators.idiff_face.model import IDiffFaceModel

    config = IDiffFaceModel.from_pretrained(baseline.model).config
    # the demo's identities: fitted prior, cosine <= 0.3 apart (recipe seed 0 by default)
    from facefoundry.generators.identities import draw_identities
    from facefoundry.generators.idiff_face.generate import identity_space
    from facefoundry.generators.settings import IdentitySettings

    settings = IdentitySettings(
        count=n_ids, method="fitted", tau=0.3, select=args.select, pool=args.pool
    )
    table = draw_identities(settings, args.identity_seed, identity_space(None, baseline.model))
    started = time.perf_counter()
    faces, labels = real_faces(n_ids, per_id, config.sample_size)
    real = quality_report(faces, labels)
    print("real 32 px:", {k: real.get(k) for k in SHOWN}, flush=True)
    everyone = [baseline, *variants]
    pipes = {v.name: load_variant(v) for v in everyone}
    rows = []
    for variant in everyone:
        row = run_variant(pipes[variant.name], variant, table, per_id, real)
        rows.append(row)
        print(variant.name, {k: row.get(k) for k in SHOWN if k != "img_per_s"}, flush=True)
    k = args.timing_identities
    subset = replace(
        table, ids=table.ids[:k], embeddings=table.embeddings[:k], seeds=table.seeds[:k]
    )
    rates = time_rounds(pipes, everyone, subset, per_id, args.timing_rounds)
    for variant, row in zip(everyone, rows, strict=True):
        mine, base_rates = rates[variant.name], rates[baseline.name]
        row["img_per_s"] = round(float(np.median(mine)), 3)
        row["img_per_s_rounds"] = spread(mine)
        row["speed_over_baseline"] = spread(
            [a / b for a, b in zip(mine, base_rates, strict=True)], 2
        )
        row["unet_gflops"] = round(row["img_per_s"] * variant.evaluations * UNET_GFLOP_PER_EVAL, 1)
        print(
            variant.name,
            "img/s",
            row["img_per_s_rounds"],
            "over baseline",
            row["speed_over_baseline"],
            flush=True,
        )
    chosen, base = rows[-1], rows[0]
    figures = {
        "machine": machine(),
        "torch_threads": args.threads,
        "identities": n_ids,
        "identity_select": args.select,
        "identity_pool": args.pool if args.select == "predicted" else None,
        "identity_seed": args.identity_seed,
        "per_identity": per_id,
        "judge": "dlib",
        "filter": "sface (demo rules: calibrated, tau_inter at FMR 1e-4)",
        "sgemm_gflops": round(peak_gflops(), 1),
        **{k: chosen.get(k) for k in SHOWN},
        "model": chosen["model"],
        "sampling": chosen["sampling"],
        "img_per_s_baseline": base["img_per_s"],
        "speed_over_baseline": chosen["speed_over_baseline"]["median"],
        "speed_over_baseline_rounds": chosen["speed_over_baseline"],
        "timing": f"{args.timing_rounds} rounds x {len(subset.ids) * per_id} images per variant, "
        "variants in turn; medians",
        "unet_gflops": chosen["unet_gflops"],
        "real_32": {k: real.get(k) for k in SHOWN if k in real},
        "variants": [
            {
                k: r.get(k)
                for k in (
                    "variant",
                    "model",
                    "sampling",
                    "evaluations_per_image",
                    "unet_gflops",
                    *SHOWN,
                    "img_per_s_rounds",
                    "speed_over_baseline",
                    "img_per_s_quality_pass",
                )
            }
            for r in rows
        ],
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    save_results("bench_sampling", figures)
    finish(figures)


if __name__ == "__main__":
    main()
