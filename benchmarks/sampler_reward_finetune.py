"""Issue 16, lever 1 tried through the sampler (session 40): fine-tune the generator on
what its 8-step sampler actually draws, not on a one-step x0 estimate.

Every identity term so far (``identity_loss.py``) scores the x0 the model implies at one
noise level, weighted toward low noise, where the noisy input already holds the
training photo's identity; the levels where an identity is decided (t ~ 300-900) get
no identity gradient. Here each step draws faces with a differentiable DDIM sampler
(``--steps`` steps, classifier-free guidance), end to end with autograd (DRaFT /
AlignProp, Clark et al. 2024, Prabhudesai et al. 2023), and scores the finished faces:

    1 - cos(SFace(face), condition)                         (follow the condition)
    + w_sep * mean over identities of sum over a bank of recent identities
      of relu(cos(centroid_i, centroid_j) - margin)          (be told apart)
    + w_den * the usual v-prediction loss on a real batch   (stay a face generator)
    + w_lay * MSE of the 8 x 8 average pools of the face and of the face the starting
      weights draw from the same noise and condition        (keep pose and lighting)

The last term (session 27's layout anchor, here on whole sampled faces) is what keeps
variety: without it the two samples of an identity converge on one pose and lighting
(session 40: pose / illumination / pixel spread 0.53 / 0.68 / 0.64 of real faces').

The bank (MoCo-style, detached) holds the 2-sample SFace centroids of the last
``--bank`` identities drawn, so each identity is pushed away from the faces the model
draws for ~1,000 other conditions, the scale at which the filter's rule bites (a batch
of 12 identities has almost no pair above the threshold). Faces go through a random 1-2 px shift before SFace so that a pixel pattern which fools
SFace only at one alignment is not rewarded. Judge the result with dlib, which the run
never sees (runs the weights through ``bench_identity_draws.py --model OUT``).

Usage: python benchmarks/sampler_reward_finetune.py --data data/lfw-devtrain-sface-64.npz
    --out runs/X [--iterations 300] [--identities 12] [--lr 2e-5] [--threads 2]
Last line: one JSON object (iterations, seconds, the terms at the start and the end).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import REPO

from facefoundry.generators.identities import load_identity_prior
from facefoundry.generators.idiff_face.identity_loss import embed_predicted
from facefoundry.generators.idiff_face.model import IDiffFaceModel
from facefoundry.generators.idiff_face.schedule import training_scheduler
from facefoundry.generators.idiff_face.train import pixel_faces
from facefoundry.recognition.sface_torch import load_sface_torch, normalise

SFACE_FMR_1E4 = 0.41877  # the filter's tau_inter for SFace (calibration_tables.py)
WATCHED = ("follow_cos", "bank_neighbours_over_threshold")


def draw_conditions(prior: dict, count: int, rng: np.random.Generator) -> torch.Tensor:
    """Unit vectors from the model's fitted identity prior (spread 1, no separation)."""
    raw = (
        prior["mean"]
        + rng.standard_normal((count, len(prior["mean"]))).astype(np.float32) @ prior["factor"].T
    )
    return normalise(torch.from_numpy(raw.astype(np.float32)))


def ddim_sample(
    model: IDiffFaceModel,
    alphas: torch.Tensor,
    condition: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    guidance: float,
) -> torch.Tensor:
    """Deterministic DDIM with v-prediction and classifier-free guidance, differentiable
    through every model call (trailing timesteps, last step to x0)."""
    total = len(alphas)
    times = np.linspace(total - 1, 0, steps + 1).round().astype(int)[:-1]
    x = noise
    drop = torch.cat([torch.zeros(len(x), dtype=torch.bool), torch.ones(len(x), dtype=torch.bool)])
    for index, t in enumerate(times):
        a = alphas[t]
        a_prev = alphas[times[index + 1]] if index + 1 < len(times) else torch.tensor(1.0)
        step = torch.full((2 * len(x),), int(t), dtype=torch.long)
        both = model(torch.cat([x, x]), step, torch.cat([condition, condition]), drop)
        cond, uncond = both.chunk(2)
        v = uncond + guidance * (cond - uncond)
        x0 = a.sqrt() * x - (1 - a).sqrt() * v
        eps = (1 - a).sqrt() * x + a.sqrt() * v
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def shifted(images: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """One random integer shift per batch (reflect-padded): the reward must hold at
    more than one alignment."""
    dx, dy = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
    size = images.shape[-1]
    padded = F.pad(images, (pixels,) * 4, mode="reflect")
    return padded[..., pixels + dy : pixels + dy + size, pixels + dx : pixels + dx + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--data", required=True, help="generator prepare-lfw training set")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--identities", type=int, default=12, help="per step (x2 samples)")
    parser.add_argument("--steps", type=int, default=8, help="sampler steps")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--separation-weight", type=float, default=1.0)
    parser.add_argument("--margin", type=float, default=SFACE_FMR_1E4 - 0.05)
    parser.add_argument("--bank", type=int, default=1024, help="recent identity centroids")
    parser.add_argument("--denoise-weight", type=float, default=1.0)
    parser.add_argument("--denoise-batch", type=int, default=32)
    parser.add_argument("--layout-weight", type=float, default=0.0, help="0: no anchor")
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(10_000 + args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    model = IDiffFaceModel.from_pretrained(args.model)
    start = IDiffFaceModel.from_pretrained(args.model).eval() if args.layout_weight else None
    for parameter in start.parameters() if start is not None else ():
        parameter.requires_grad_(False)
    model.eval()  # no CPD in the sampler; gradients still flow
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    recognizer = load_sface_torch().eval()
    for parameter in recognizer.parameters():
        parameter.requires_grad_(False)
    prior = load_identity_prior(Path(args.model) / "identity_prior.safetensors")
    noise_schedule = training_scheduler(model.config)
    alphas = noise_schedule.alphas_cumprod.float()
    data = np.load(args.data)
    faces = pixel_faces(data["faces"], model.config.sample_size)
    embeddings = torch.from_numpy(data["embeddings"].astype(np.float32))
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    out = Path(args.out)
    if not out.exists():
        shutil.copytree(args.model, out)
    history: list[dict] = []
    started = time.perf_counter()
    size = model.config.sample_size
    pairs = args.identities
    with torch.no_grad():  # the bank starts with the model's own draws
        bank = []
        for _ in range(max(1, args.bank // 4 // 48)):
            condition = draw_conditions(prior, 48, rng).repeat_interleave(2, dim=0)
            noise = torch.randn((96, 3, size, size), generator=generator)
            drawn = ddim_sample(model, alphas, condition, noise, args.steps, args.guidance)
            embedded = embed_predicted(drawn.clamp(-1, 1), recognizer)
            bank.append(normalise(embedded.view(48, 2, -1).mean(1)))
        bank = torch.cat(bank)
    print(json.dumps({"bank": len(bank), "seconds": round(time.perf_counter() - started, 1)}))
    for iteration in range(1, args.iterations + 1):
        condition = draw_conditions(prior, pairs, rng).repeat_interleave(2, dim=0)
        noise = torch.randn((2 * pairs, 3, size, size), generator=generator)
        drawn = ddim_sample(model, alphas, condition, noise, args.steps, args.guidance)
        embedded = embed_predicted(shifted(drawn.clamp(-1, 1), generator), recognizer)
        follow = (1 - (embedded * condition).sum(1)).mean()
        centroids = normalise(embedded.view(pairs, 2, -1).mean(1))
        similarity = centroids @ bank.T
        separation = F.relu(similarity - args.margin).sum(1).mean()
        over = (similarity.detach() > SFACE_FMR_1E4).float().sum(1).mean()
        bank = torch.cat([bank, centroids.detach()])[-args.bank :]
        rows = torch.randint(0, len(faces), (args.denoise_batch,), generator=generator)
        x0 = faces[rows]
        eps = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, len(alphas), (len(rows),), generator=generator)
        noisy = noise_schedule.add_noise(x0, eps, t)
        target = noise_schedule.get_velocity(x0, eps, t)
        denoise = F.mse_loss(model(noisy, t, embeddings[rows]), target)
        layout = torch.zeros(())
        spread = torch.full((), float("nan"))
        if start is not None:
            with torch.no_grad():
                anchor = ddim_sample(start, alphas, condition, noise, args.steps, args.guidance)
            pool = size // 8
            layout = F.mse_loss(F.avg_pool2d(drawn, pool), F.avg_pool2d(anchor, pool))
            # an identity's two faces apart in pixels, over the same for the starting
            # weights: a variety monitor that no recognizer scores (1 = as varied)
            apart = drawn.detach().view(pairs, 2, -1).diff(dim=1).square().mean()
            spread = apart / anchor.view(pairs, 2, -1).diff(dim=1).square().mean()
        loss = (
            follow
            + args.separation_weight * separation
            + args.denoise_weight * denoise
            + args.layout_weight * layout
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        history.append(
            {
                "iteration": iteration,
                "follow_cos": round(1 - follow.item(), 4),
                "separation": round(separation.item(), 5),
                "bank_neighbours_over_threshold": round(over.item(), 3),
                "denoise": round(denoise.item(), 5),
                "layout": round(layout.item(), 5),
                "pair_spread_vs_start": round(spread.item(), 3),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        if iteration % 10 == 0:
            print(json.dumps(history[-1]), flush=True)
        if iteration % args.save_every == 0 or iteration == args.iterations:
            model.save_pretrained(out)
            (out / "loss_history_sampler_reward.json").write_text(json.dumps(history))

    def mean_of(part: list[dict], key: str) -> float:
        return round(float(np.mean([row[key] for row in part])), 4)

    head, tail = history[: max(1, len(history) // 10)], history[-max(1, len(history) // 10) :]
    summary = {
        "iterations": args.iterations,
        "seconds": round(time.perf_counter() - started, 1),
        "out": str(out),
        **{f"{k}_first_tenth": mean_of(head, k) for k in WATCHED},
        **{f"{k}_last_tenth": mean_of(tail, k) for k in WATCHED},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
