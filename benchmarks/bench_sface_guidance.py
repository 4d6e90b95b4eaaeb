"""Sampler-time SFace guidance (issue 16, levers 1 and 5): does pulling each sample toward
its condition *while sampling*, through the differentiable SFace copy, add identities that
an independent judge also tells apart?

The reward fine-tunes of sessions 40-42 taught the model to follow SFace and cost head
pose: they could reshape a face's layout. Guidance confined to the low-noise steps cannot
move the layout any more (it is fixed by then), only the detail that carries identity.
At each guided step the predicted clean image x0 is moved along the gradient of
cos(SFace(x0 at 112 px), condition), normalised per sample to an RMS step of ``scale``
(pixel units of [-1, 1]), and the model output is rewritten to predict that x0 from the
same noisy image. Optional: the gradient averaged over ``views`` shifted and mirrored
copies, the usual defence against gradients a recognizer reads and a person does not, or
blurred by ``bSIGMA`` pixels so that only coarse changes are left. ``rTAU`` replaces the
pull toward the condition by a push apart, the filter's own criterion: InfoNCE at
temperature TAU of each face against its identity's centroid among the batch's
identities and every earlier batch's (a bank of their centroids at the last guided step).

The filter (SFace) is the guide here, so its kept count can rise for the wrong reason:
the dlib judge, which never steers, decides, and ``--third-judge onnx:PATH`` adds our own
32 px recognizer (``train_32px_judge.py``), which sees identity at 32 px where dlib is
weak. Measured (BENCHMARKS.md, sessions 43-44): scale 0.02 adds 25 of 200 by SFace, 4-6
by dlib, and -5 or +6 by two third judges trained alike (inside their own spread);
blurring the push only weakens it. ``--guide onnx:PATH`` turns the test around: a
recognizer of ours steers (9x cheaper than SFace: a 32 px judge's forward and backward)
and SFace, the filter, becomes a judge it never saw (session 45). Every row uses the
same identities (the demo's `fitted` draw, seed 0) and seeds, with the unguided sampler
as the first row.

Usage: python benchmarks/bench_sface_guidance.py [--identities 200] [--per-identity 4]
    [--row SCALE:TMIN-TMAX[:vVIEWS][:bSIGMA][:rTAU] ...] [--guide sface|onnx:PATH]
    [--sampling dpmsolver++:8:3:d1.25@32a] [--third-judge onnx:PATH]
    [--train-seeds K [--train-epochs 8]]  (per row and for the real row: LFW DevTest
    accuracy of K recognizers trained on all its faces, the final judge of whether its
    identities are distinct)
Last line: one JSON object, ``rows`` in the order given (the unguided row first).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_sampling import SHOWN, Variant, load_variant, real_faces, run_variant, spread
from common import REPO, finish, machine, save_results

from facefoundry.generators.idiff_face.sampler_reward import shifted

THIRD = ("third_judge", "third_identities_survived", "third_gap", "third_eer")


@dataclass(frozen=True)
class Guidance:
    """How hard (RMS step of x0 per guided step), when (tmin <= t <= tmax), how robust."""

    scale: float = 0.0
    tmin: int = 0
    tmax: int = 400
    views: int = 1
    blur: float = 0.0
    repel: float = 0.0  # > 0: a contrast objective at this temperature (see guided_pipeline)

    @classmethod
    def parse(cls, text: str) -> Guidance:
        """SCALE:TMIN-TMAX[:vVIEWS][:bSIGMA][:rTAU], e.g. 0.02:0-400, 0.03:0-400:v2,
        0.02:0-400:b1, 0.02:0-400:r0.1."""
        scale, window, *rest = text.split(":")
        tmin, _, tmax = window.partition("-")
        views, blur, repel = 1, 0.0, 0.0
        for part in rest:
            if part.startswith("v"):
                views = int(part[1:])
            elif part.startswith("b"):
                blur = float(part[1:])
            elif part.startswith("r"):
                repel = float(part[1:])
            else:
                raise SystemExit(f"--row {text!r}: unknown part {part!r} (vVIEWS, bSIGMA, rTAU)")
        return cls(float(scale), int(tmin), int(tmax), views, blur, repel)

    @property
    def name(self) -> str:
        if not self.scale:
            return "unguided"
        name = f"guide{self.scale:g}@{self.tmin}-{self.tmax}"
        name += f"v{self.views}" if self.views > 1 else ""
        name += f"r{self.repel:g}" if self.repel else ""
        return name + (f"b{self.blur:g}" if self.blur else "")


def view(images: torch.Tensor, index: int) -> torch.Tensor:
    """View 0 is the image; the others are shifted by up to 4 px (at 112, reflect-padded)
    and every odd one mirrored, the same on every call."""
    if index == 0:
        return images
    moved = shifted(images, torch.Generator().manual_seed(index), 4)
    return moved.flip(3) if index % 2 else moved


def low_pass(gradient: torch.Tensor, sigma: float) -> torch.Tensor:
    """The gradient blurred by a Gaussian of ``sigma`` pixels (at the sample size,
    reflect-padded): only changes a face's coarse structure carries are left, where
    a recognizer's adversarial directions are fine detail."""
    if not sigma:
        return gradient
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.exp(-(torch.arange(-radius, radius + 1).float() ** 2) / (2 * sigma**2))
    taps = (taps / taps.sum()).to(gradient)
    channels = gradient.shape[1]
    rows = taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    padded = F.pad(gradient, (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(padded, rows, groups=channels)
    return F.conv2d(blurred, rows.transpose(2, 3), groups=channels)


@dataclass
class Guide:
    """The recognizer whose gradient steers: ``network`` reads ``to_input(x)`` (x: faces
    at 112 px in [-1, 1]) and is pulled toward ``target(conditions)`` (unit rows)."""

    name: str
    network: torch.nn.Module
    to_input: Callable[[torch.Tensor], torch.Tensor]
    target: Callable[[torch.Tensor], torch.Tensor]


def sface_guide() -> Guide:
    """The filter's own recognizer: SFace reads RGB 0..255; the target is the condition."""
    from facefoundry.recognition.sface_torch import load_sface_torch

    sface = load_sface_torch().eval().requires_grad_(False)
    return Guide("sface", sface, lambda x: (x + 1) * 127.5, lambda c: F.normalize(c, dim=1))


def onnx_guide(path: str, ridge: float = 1.0) -> Guide:
    """A recognizer of ours that the filter never sees (e.g. ``train_32px_judge.py``'s):
    its target for an SFace condition is where real faces with that SFace embedding land
    in its space, a ridge map fitted on DevTrain faces shrunk to 32 px, leaving out the
    real reference row's people. SFace then judges the guided faces it did not steer."""
    from train_32px_judge import judge_training_faces

    from facefoundry.recognition.sface_torch import load_onnx_torch

    network = load_onnx_torch(path).requires_grad_(False)
    data, rows, faces = judge_training_faces()
    faces = torch.from_numpy(faces).permute(0, 3, 1, 2)
    with torch.no_grad():
        seen = torch.cat(
            [F.normalize(network(b.float() / 127.5 - 1), dim=1) for b in faces.split(256)]
        ).double()
    asked = F.normalize(torch.from_numpy(data.embeddings[rows]).double(), dim=1)
    asked_mean, seen_mean = asked.mean(0), seen.mean(0)
    centred = asked - asked_mean
    gram = centred.T @ centred + ridge * torch.eye(centred.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, centred.T @ (seen - seen_mean))
    fitted = F.normalize(seen_mean + centred @ weights, dim=1)
    print(f"guide map: cosine to the guide's own embedding {(fitted * seen).sum(1).mean():.3f}")
    weights, asked_mean, seen_mean = weights.float(), asked_mean.float(), seen_mean.float()

    def target(conditions: torch.Tensor) -> torch.Tensor:
        centred = F.normalize(conditions, dim=1) - asked_mean
        return F.normalize(seen_mean + centred @ weights, dim=1)

    return Guide(f"onnx:{Path(path).name}", network, lambda x: x, target)


def guided_pipeline(pipe, guidance: Guidance, guide: Guide):
    """Wrap ``pipe``'s scheduler step so that each guided step pulls x0 toward the batch's
    conditions, or with ``repel`` pushes the identities apart (wrapping again replaces the
    last wrap, bank included: one pipeline serves every row). The pipeline predicts v
    (checked), so x0 = a x - s v and eps = s x + a v."""
    if pipe.model.config.prediction_type != "v_prediction":
        raise SystemExit(
            "SFace guidance here rewrites a v-prediction; this model predicts "
            f"{pipe.model.config.prediction_type}"
        )
    sample_batch = type(pipe)._sample_batch.__get__(pipe)
    scheduler_step = type(pipe)._scheduler_step.__get__(pipe)
    state = {}

    def remember_conditions(identity, *args, **kwargs):
        state["target"] = guide.target(identity.float())
        # samples of one identity share its condition row; earlier batches' identities
        # (their centroids at the last guided step) join the bank the contrast pushes from
        _, state["group"] = torch.unique(identity.float(), dim=0, return_inverse=True)
        if "pending" in state:
            state["bank"] = torch.cat(
                [state.get("bank", state["pending"][:0]), state.pop("pending")]
            )
        return sample_batch(identity, *args, **kwargs)

    def objective(embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine to the target, or with ``repel`` the log-probability that each face is
        nearest its own identity's centroid among the batch's and the bank's (InfoNCE)."""
        if not guidance.repel:
            return (embeddings * state["target"]).sum(1)
        group = state["group"]
        with torch.no_grad():
            sums = torch.zeros(int(group.max()) + 1, embeddings.shape[1]).index_add_(
                0, group, embeddings.detach()
            )
            centroids = F.normalize(sums, dim=1)
        state["pending"] = centroids
        others = torch.cat([centroids, state.get("bank", centroids[:0])])
        return -F.cross_entropy(embeddings @ others.T / guidance.repel, group, reduction="none")

    def guided_step(scheduler, output, t, latents, generators):
        if guidance.scale and guidance.tmin <= int(t) <= guidance.tmax:
            signal = scheduler.alphas_cumprod[int(t)].float()
            a, s = signal.sqrt(), (1 - signal).sqrt()
            x, v = latents.float(), output.float()
            x0 = a * x - s * v
            with torch.enable_grad():
                pixels = x0.detach().requires_grad_(True)
                up = F.interpolate(pixels, size=(112, 112), mode="bicubic", align_corners=False)
                score = sum(
                    objective(
                        F.normalize(guide.network(guide.to_input(view(up, i).clamp(-1, 1))), dim=1)
                    )
                    for i in range(guidance.views)
                )
                (gradient,) = torch.autograd.grad(score.sum(), pixels)
            gradient = low_pass(gradient, guidance.blur)
            rms = gradient.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1, 1)
            x0 = x0 + guidance.scale * gradient / rms
            eps = (x - a * x0) / s
            output = (a * eps - s * x0).to(output.dtype)
        return scheduler_step(scheduler, output, t, latents, generators)

    pipe._sample_batch, pipe._scheduler_step = remember_conditions, guided_step
    return pipe


def recognizer_accuracy(images, identity_of, epochs: int, seed: int, folder: Path) -> float:
    """LFW DevTest accuracy of a recognizer trained on every drawn identity (no filter:
    equal images and labels in every row), train_32px_judge's recipe. Identities that
    look alike under different labels make it worse; really distinct ones make it better."""
    import numpy as np
    from train_32px_judge import train_cosface

    from facefoundry.evaluation.verify import evaluate_lfw
    from facefoundry.recognition.export import export_onnx

    _, classes = np.unique(identity_of, return_inverse=True)
    backbone, _ = train_cosface(images, classes, epochs, seed)
    path = export_onnx(backbone, folder / f"recognizer-{seed}.onnx")
    return round(evaluate_lfw(f"onnx:{path}", "devtest", progress=False)["accuracy"], 4)


def recognizer_accuracies(images, identity_of, epochs: int, seeds: int, folder: Path) -> dict:
    """``recognizer_accuracy`` for seeds 0..seeds-1: ``devtest_accuracy`` (in seed order)
    and ``devtest_median`` (the median with its range), torch's thread count restored
    (the evaluation may change it)."""
    threads = torch.get_num_threads()
    values = [recognizer_accuracy(images, identity_of, epochs, s, folder) for s in range(seeds)]
    torch.set_num_threads(threads)
    return {"devtest_accuracy": values, "devtest_median": spread(values, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--sampling", default="dpmsolver++:8:3:d1.25@32a")
    parser.add_argument(
        "--row",
        action="append",
        default=[],
        help="SCALE:TMIN-TMAX[:vVIEWS][:bSIGMA][:rTAU] (repeatable; the unguided row always "
        "runs first; bSIGMA: the gradient blurred by SIGMA pixels at the sample size; rTAU: "
        "push identities apart, InfoNCE at temperature TAU, instead of toward the condition)",
    )
    parser.add_argument(
        "--third-judge",
        default="",
        help="onnx:PATH: a recognizer of ours that neither steers nor filters; adds "
        "third_identities_survived / third_gap / third_eer to every row and the real row "
        "(needs `facefoundry calibrate --embedder onnx:PATH` first)",
    )
    parser.add_argument(
        "--guide",
        default="sface",
        help="sface (the filter's recognizer) or onnx:PATH, a recognizer of ours the filter "
        "never sees, pulled toward a ridge map of the condition into its space",
    )
    parser.add_argument(
        "--train-seeds",
        type=int,
        default=0,
        help="> 0: per row and for the real row, train this many recognizers (seeds "
        "0..K-1) on all its faces and report LFW DevTest accuracy (devtest_accuracy, its "
        "median and range)",
    )
    parser.add_argument("--train-epochs", type=int, default=8)
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument("--real-min-photos", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="bench_sface_guidance", help="results file stem")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from facefoundry.evaluation.generator_quality import quality_report
    from facefoundry.generators.identities import draw_identities
    from facefoundry.generators.idiff_face.generate import identity_space
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from facefoundry.generators.settings import IdentitySettings

    rows_wanted = [Guidance()] + [Guidance.parse(text) for text in args.row]
    started = time.perf_counter()
    config = IDiffFaceModel.from_pretrained(args.model).config
    faces, labels = real_faces(
        args.identities, args.per_identity, config.sample_size, min_images=args.real_min_photos
    )
    real = quality_report(faces, labels, third_judge=args.third_judge)
    if args.train_seeds:  # the same trainer on real people's photos: the reference
        folder = REPO / "benchmarks" / "results" / f"{args.name}-real"
        real.update(
            recognizer_accuracies(faces, labels, args.train_epochs, args.train_seeds, folder)
        )
    shown = (*SHOWN, *THIRD) if args.third_judge else SHOWN
    print("real 32 px:", {k: real.get(k) for k in shown}, flush=True)
    draw = IdentitySettings(count=args.identities, method="fitted", tau=0.3, spread=1.0)
    table = draw_identities(draw, 0, identity_space(None, args.model))
    guide = sface_guide() if args.guide == "sface" else onnx_guide(args.guide.removeprefix("onnx:"))
    rows, pipe = [], None
    for guidance in rows_wanted:
        variant = Variant.parse(f"{guidance.name}={args.model},{args.sampling}", args.model)
        if pipe is None:  # one pipeline for every row: the sampling is the same
            pipe = load_variant(variant)
        guided_pipeline(pipe, guidance, guide)
        drawn: dict = {}
        row = run_variant(pipe, variant, table, args.per_identity, real, args.third_judge, drawn)
        row.update(guidance=asdict(guidance))
        if args.train_seeds:
            folder = REPO / "benchmarks" / "results" / f"{args.name}-{guidance.name}"
            row.update(
                recognizer_accuracies(
                    drawn["images"],
                    drawn["identity_of"],
                    args.train_epochs,
                    args.train_seeds,
                    folder,
                )
            )
        rows.append(row)
        print(
            f"{guidance.name}:",
            {k: row.get(k) for k in (*shown, "devtest_accuracy")},
            flush=True,
        )
    keys = ("guidance", "condition_cos", *shown, "img_per_s", "devtest_accuracy", "devtest_median")
    figures = {
        "machine": machine(),
        "torch_threads": args.threads,
        "model": args.model,
        "sampling": rows[0]["sampling"],
        "identities": args.identities,
        "per_identity": args.per_identity,
        "judge": "dlib",
        "guide": guide.name,
        "real_min_photos": args.real_min_photos,
        "real_32": {
            k: real.get(k) for k in (*shown, "devtest_accuracy", "devtest_median") if k in real
        },
        "rows": [{k: r.get(k) for k in keys} for r in rows],
        "judge_kept_change": [
            r["judge_identities_survived"] - rows[0]["judge_identities_survived"] for r in rows
        ],
        "sface_kept_change": [
            r["identities_survived"] - rows[0]["identities_survived"] for r in rows
        ],
        "third_kept_change": [
            r["third_identities_survived"] - rows[0]["third_identities_survived"] for r in rows
        ]
        if args.third_judge
        else None,
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    save_results(args.name, figures)
    finish(figures)


if __name__ == "__main__":
    main()
