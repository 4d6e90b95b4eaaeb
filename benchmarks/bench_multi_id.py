"""Multi-identity generator (generators/multi_id): faces per denoising pass and mask leakage.

Usage: python benchmarks/bench_multi_id.py [--quick] [--threads 1]
  (a) the same-size UNet as models/idiff-face-lfw (random weights, 64 px group images,
      K = 1, 2, 4 faces each) vs the committed IDiff-Face model (32 px, 1 face per image),
      same run, same sampler and steps: faces per UNet forward (per image) and faces/s.
  (b) routing leakage: each cross-attention layer fed a fixed input; identity B's
      embedding changes; max |change| of the identity term inside region A (must be 0)
      and inside region B (contrast). Random (non-zero) identity output projections.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import REPO, finish, machine


def multi_id_unet(size: int, config: dict):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    levels = len(config["block_out_channels"])
    attention = set(config["attention_levels"])
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(config["block_out_channels"]),
        layers_per_block=config["layers_per_block"],
        down_block_types=tuple(
            "CrossAttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(levels)
        ),
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if levels - 1 - i in attention else "UpBlock2D"
            for i in range(levels)
        ),
        cross_attention_dim=config["context_dim"],
        attention_head_dim=config["attention_head_dim"],
        norm_num_groups=config["norm_num_groups"],
    ).eval()


def leakage(unet, adapter, id_dim: int) -> dict:
    boxes = torch.tensor([[[0.05, 0.05, 0.45, 0.45], [0.55, 0.55, 0.95, 0.95]]])
    torch.manual_seed(1)
    ids = torch.randn(1, 2, id_dim)
    changed = ids.clone()
    changed[0, 1] = torch.randn(id_dim)
    size = unet.config.sample_size
    from facefoundry.generators.multi_id.layout import box_masks

    worst_a, least_b, most_b = 0.0, float("inf"), 0.0
    for name in adapter.layer_names:
        attn = unet.get_submodule(name)
        terms = []
        processor = adapter.processor(name)
        for vectors in (ids, changed):
            g = torch.Generator().manual_seed(2)  # the same layer input both times
            hidden = torch.randn(1, size * size, attn.to_q.in_features, generator=g)
            prompt = torch.randn(1, 4, unet.config.cross_attention_dim, generator=g)
            with torch.no_grad(), adapter.condition(vectors, boxes, (size, size), record=True):
                attn(hidden, encoder_hidden_states=prompt)
            terms.append(processor.last_identity_term[0])
        side = int(np.sqrt(terms[0].shape[0]))
        masks = box_masks(boxes, side, side)[0]
        delta = (terms[1] - terms[0]).abs().amax(-1)
        worst_a = max(worst_a, float(delta[masks[0]].max()))
        least_b = min(least_b, float(delta[masks[1]].max()))
        most_b = max(most_b, float(delta[masks[1]].max()))
    return {
        "layers": len(adapter.layer_names),
        "region_a_max_abs_change": worst_a,
        "region_b_max_abs_change_min_over_layers": round(least_b, 6),
        "region_b_max_abs_change_max_over_layers": round(most_b, 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import DDPMScheduler

    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
    from facefoundry.generators.multi_id.attention import install_identity_adapter
    from facefoundry.generators.multi_id.generate import sample_groups
    from facefoundry.generators.multi_id.layout import sample_layout
    from facefoundry.generators.multi_id.model import make_sampler

    batch, steps = (4, 5) if args.quick else (8, 10)
    config = json.loads((REPO / "models" / "idiff-face-lfw" / "idiff_face.json").read_text())
    figures: dict = {
        "machine": machine(),
        "quick": args.quick,
        "torch_threads": args.threads,
        "batch_images": batch,
        "steps": steps,
        "sampler": "dpmsolver++",
    }
    idiff = IDiffFacePipeline.from_pretrained(args.model, "dpmsolver++", device="cpu")
    vectors = np.random.default_rng(0).standard_normal((batch, config["id_dim"]))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    idiff(vectors[:1], [0], steps=2)  # warm-up
    started = time.perf_counter()
    idiff(vectors, list(range(batch)), steps=steps, batch_size=batch)
    seconds = time.perf_counter() - started
    figures["idiff_face"] = {
        "image_px": config["sample_size"],
        "faces_per_unet_forward": 1,
        "faces_per_s": round(batch / seconds, 2),
        "ms_per_image_forward": round(1000 * seconds / (batch * steps), 2),
    }

    unet = multi_id_unet(64, config)
    adapter = install_identity_adapter(unet, config["id_dim"], num_tokens=8)
    scheduler = make_sampler(DDPMScheduler(prediction_type="v_prediction"), "dpmsolver++")
    for k in (1, 2, 4):
        box_max = 0.45 if k < 4 else 0.4
        layouts = np.stack([sample_layout(k, s, 0.3, box_max) for s in range(batch)])
        ids = np.random.default_rng(k).standard_normal((batch, k, config["id_dim"]))
        sample_groups(unet, adapter, scheduler, ids[:1], layouts[:1], [0], steps=2)
        started = time.perf_counter()
        sample_groups(unet, adapter, scheduler, ids, layouts, list(range(batch)), steps=steps)
        seconds = time.perf_counter() - started
        figures[f"multi_id_k{k}"] = {
            "image_px": 64,
            "faces_per_unet_forward": k,
            "faces_per_s": round(batch * k / seconds, 2),
            "ms_per_image_forward": round(1000 * seconds / (batch * steps), 2),
        }
    figures["faces_per_s_ratio_k4_vs_idiff"] = round(
        figures["multi_id_k4"]["faces_per_s"] / figures["idiff_face"]["faces_per_s"], 2
    )
    for processor in adapter.processors.values():
        torch.nn.init.normal_(processor.to_out_id.weight, std=0.5)
    figures["leakage"] = leakage(unet, adapter, config["id_dim"])
    finish(figures)


if __name__ == "__main__":
    main()
