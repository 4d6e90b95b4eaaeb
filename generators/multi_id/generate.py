"""Sampling group images and cropping them back into per-identity dataset samples.

``sample_groups``: K identity embeddings + a layout + a per-image seed -> one image,
with any diffusers scheduler and optional prompt embeddings (no text encoder needed).
``crop_back``: detect faces in a group image, match them to the layout's identities
(Hungarian on embedding similarity, gated by box overlap), align each to 112 px; every
unmatched face or identity becomes a reject with a reason. ``generate_chunk``: the
generation stage contract of ``generators/idiff_face/generate.py`` for this family.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facefoundry.generators.multi_id.attention import IdentityAdapter
from facefoundry.generators.multi_id.layout import layout_seed, sample_layout, validate_layout
from facefoundry.generators.multi_id.losses import hungarian
from facefoundry.generators.multi_id.settings import MultiIdSettings
from facefoundry.generators.seeds import fixed_batches, generators_for, sample_seed

logger = logging.getLogger(__name__)


@torch.no_grad()
def sample_groups(
    unet,
    adapter: IdentityAdapter,
    scheduler,
    identities: np.ndarray | torch.Tensor,
    boxes: np.ndarray | torch.Tensor,
    seeds: list[int],
    steps: int = 25,
    prompt_embeds: torch.Tensor | None = None,
    vae=None,
) -> np.ndarray:
    """(B, K, id_dim) identities at (B, K, 4) boxes -> RGB uint8 (B, H, W, 3) images.

    Noise comes from one CPU generator per seed, and on CPU every model call has the same
    shape (``generators.seeds.fixed_batches``), so batching never changes an image;
    ``scheduler`` is any diffusers sampler (a fresh copy is made: schedulers hold state).
    """
    if not len(identities) == len(boxes) == len(seeds):
        raise ValueError(f"{len(identities)} identities, {len(boxes)} layouts, {len(seeds)} seeds")
    device = next(unet.parameters()).device
    identities, boxes = np.asarray(identities), np.asarray(boxes)
    per_sample = prompt_embeds is not None and prompt_embeds.ndim == 3 and len(prompt_embeds) > 1
    out = []
    for index, real in fixed_batches(len(seeds), len(seeds), device):
        prompt = prompt_embeds[index] if per_sample else prompt_embeds
        images = _sample_group_batch(
            unet,
            adapter,
            scheduler,
            identities[index],
            boxes[index],
            [seeds[i] for i in index],
            steps,
            prompt,
            vae,
        )
        out.append(images[:real])
    return np.concatenate(out)


def _sample_group_batch(
    unet, adapter, scheduler, identities, boxes, seeds, steps, prompt_embeds, vae
) -> np.ndarray:
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    identities = torch.as_tensor(np.asarray(identities), dtype=torch.float32, device=device)
    boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32, device=device)
    for group in boxes.cpu().numpy():
        validate_layout(group)
    size = unet.config.sample_size
    shape = (unet.config.in_channels, size, size)
    latents = torch.stack([torch.randn(shape, generator=g) for g in generators_for(seeds)])
    latents = latents.to(device, dtype)
    if prompt_embeds is None:
        prompt = torch.zeros(len(seeds), 1, unet.config.cross_attention_dim)
    else:
        prompt = prompt_embeds if prompt_embeds.ndim == 3 else prompt_embeds[None]
        prompt = prompt.expand(len(seeds), -1, -1)
    prompt = prompt.to(device, dtype)
    sampler = scheduler.__class__.from_config(scheduler.config)
    sampler.set_timesteps(steps, device=device)
    latents = latents * sampler.init_noise_sigma
    with adapter.condition(identities, boxes, (size, size)):
        for t in sampler.timesteps:
            model_in = sampler.scale_model_input(latents, t)
            output = unet(model_in, t, encoder_hidden_states=prompt).sample
            latents = sampler.step(output.float(), t, latents.float()).prev_sample.to(dtype)
    images = latents
    if vae is not None:
        images = vae.decode(latents / getattr(vae.config, "scaling_factor", 1.0)).sample
    images = images.float().clamp(-1, 1)
    return ((images + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


# --- crop-back ----------------------------------------------------------------------------
@dataclass
class CropSample:
    """One accepted face: the identity slot it was assigned to and its provenance."""

    slot: int
    face: np.ndarray  # 112 x 112 x 3 aligned RGB uint8
    provenance: dict = field(default_factory=dict)


@dataclass
class CropReject:
    """A detection or an identity slot that produced no sample, and why."""

    kind: str  # "detection" | "identity"
    index: int
    reason: str
    detail: dict = field(default_factory=dict)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _gate(det_box, layout_box, rule: str, min_iou: float) -> bool:
    if rule == "iou":
        return _iou(det_box, layout_box) >= min_iou
    cx, cy = (det_box[0] + det_box[2]) / 2, (det_box[1] + det_box[3]) / 2
    return layout_box[0] <= cx < layout_box[2] and layout_box[1] <= cy < layout_box[3]


def crop_back(
    image: np.ndarray,
    boxes: np.ndarray,
    identities: np.ndarray,
    detector,
    embedder,
    source_key: str = "",
    gate: str = "centre",
    min_iou: float = 0.3,
    min_similarity: float = -1.0,
    upscale: int = 1,
) -> tuple[list[CropSample], list[CropReject]]:
    """Faces of one group image -> accepted per-identity samples + rejects with reasons.

    boxes: (K, 4) normalised layout; identities: (K, D) unit vectors in the embedder's
    space (when the dimensions differ, matching falls back to box IoU alone). A detection
    may only match an identity whose box it passes (``gate``: its centre inside the box,
    or IoU >= ``min_iou``); among those the Hungarian assignment maximises similarity.
    ``upscale``: enlarge the image (bicubic) before detecting and aligning; a 64 px canvas
    holds ~25 px faces, whose landmarks and 112 px crops are better read at 4x.
    """
    from facefoundry.faces.align import align_face

    if upscale > 1:
        import cv2

        height, width = image.shape[:2]
        image = cv2.resize(
            image, (width * upscale, height * upscale), interpolation=cv2.INTER_CUBIC
        )

    height, width = image.shape[:2]
    scale = np.array([width, height, width, height], dtype=np.float64)
    layout = np.asarray(boxes, dtype=np.float64) * scale
    detections = detector.detect(image)
    k = len(layout)
    faces = np.stack([align_face(image, d.landmarks) for d in detections]) if detections else None
    gated = np.array(
        [[_gate(d.box, box, gate, min_iou) for box in layout] for d in detections], dtype=bool
    ).reshape(len(detections), k)
    overlap = np.array([[_iou(d.box, box) for box in layout] for d in detections]).reshape(
        len(detections), k
    )
    comparable = faces is not None and embedder.dim == np.asarray(identities).shape[1]
    if comparable:
        vectors = embedder.embed_aligned(faces)
        ids = np.asarray(identities, dtype=np.float32)
        ids = ids / np.linalg.norm(ids, axis=1, keepdims=True)
        similarity = vectors @ ids.T
    else:
        similarity = overlap.copy()
    # forbidden pairs get a score no allowed pair can beat, and are dropped afterwards
    score = np.where(gated, similarity, -1e6)
    rows, cols = hungarian(score) if len(detections) else (np.array([], int), np.array([], int))
    samples, rejects = [], []
    taken_dets, taken_ids = set(), set()
    for d, s in zip(rows.tolist(), cols.tolist(), strict=True):
        if not gated[d, s]:
            continue
        det = detections[d]
        detail = {
            "source_key": source_key,
            "slot": s,
            "layout_box": [round(float(v), 6) for v in np.asarray(boxes)[s]],
            "detection_box": [round(float(v) / upscale, 2) for v in det.box],
            "detection_score": round(float(det.score), 4),
            "assignment_score": round(float(similarity[d, s]), 6),
            "assignment_kind": "cosine" if comparable else "iou",
            "box_iou": round(float(overlap[d, s]), 4),
        }
        if comparable and similarity[d, s] < min_similarity:
            rejects.append(CropReject("detection", d, "low_similarity", detail))
            continue
        samples.append(CropSample(s, faces[d], detail))
        taken_dets.add(d)
        taken_ids.add(s)
    for d, det in enumerate(detections):
        if d in taken_dets or any(r.kind == "detection" and r.index == d for r in rejects):
            continue
        reason = "duplicate_in_box" if gated[d].any() else "outside_layout"
        rejects.append(
            CropReject(
                "detection",
                d,
                reason,
                {
                    "source_key": source_key,
                    "detection_box": [round(float(v) / upscale, 2) for v in det.box],
                    "detection_score": round(float(det.score), 4),
                    "gated_slots": np.flatnonzero(gated[d]).tolist(),
                },
            )
        )
    for s in range(k):
        if s not in taken_ids:
            candidates = np.flatnonzero(gated[:, s]).tolist()
            reason = "no_face" if not candidates else "no_accepted_face"
            rejects.append(
                CropReject(
                    "identity", s, reason, {"source_key": source_key, "candidates": candidates}
                )
            )
    return sorted(samples, key=lambda x: x.slot), rejects


# --- the generation stage -----------------------------------------------------------------
_MODELS: dict = {}
_LOCK = threading.Lock()


def load_generator(settings: MultiIdSettings):
    """(unet, adapter, training scheduler, vae, checksum), once per process."""
    from facefoundry.generators.chunks import folder_checksum
    from facefoundry.generators.multi_id.model import load_model

    key = (settings.model, settings.device, settings.dtype)
    with _LOCK:
        if key not in _MODELS:
            device = settings.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            loaded = load_model(settings.model, device, getattr(torch, settings.dtype))
            _MODELS[key] = (*loaded, folder_checksum(settings.model))
        return _MODELS[key]


def plan_groups(
    identity_ids: list[int], samples: int, k: int, recipe_seed: int
) -> list[tuple[int, list[int], int]]:
    """(sample, identities in slot order, padded slots) per group image of a chunk.

    For each sample index the chunk's identities are shuffled (seeded by the chunk's first
    identity and the sample) and cut into groups of K, so partners change across samples;
    a short last group is filled with identities from the start, whose extra faces are
    ``padded`` (generated, recorded as rejects, not emitted twice).
    """
    ids = [int(i) for i in identity_ids]
    groups = []
    for sample in range(samples):
        rng = np.random.default_rng(sample_seed(recipe_seed, ids[0], sample, "groups"))
        order = [ids[i] for i in rng.permutation(len(ids))]
        pad = (-len(order)) % k
        filler = (order * (pad // max(len(order), 1) + 1))[:pad]
        for start in range(0, len(order), k):
            members = order[start : start + k]
            padded = 0
            if len(members) < k:
                padded = k - len(members)
                members = members + filler
            groups.append((sample, members, padded))
    return groups


def chunk_paths(out_dir: str | Path, part: int) -> tuple[Path, Path, Path]:
    """tar, parquet (written last: the completion marker) and rejects parquet of a chunk."""
    out_dir = Path(out_dir)
    return (
        out_dir / f"part-{part:05d}.tar",
        out_dir / f"part-{part:05d}.parquet",
        out_dir / f"rejects-{part:05d}.parquet",
    )


SAMPLE_COLUMNS = {
    "key": "string",
    "identity": "int64",
    "sample": "int64",
    "seed": "int64",
    "generator": "string",
    "model_checksum": "string",
    "scheduler": "string",
    "steps": "int64",
    "guidance_scale": "float64",
    "prompt": "string",
    "source_key": "string",
    "slot": "int64",
    "group_identities": "string",
    "provenance": "string",
}
REJECT_COLUMNS = {
    "source_key": "string",
    "kind": "string",
    "index": "int64",
    "identity": "int64",
    "sample": "int64",
    "reason": "string",
    "detail": "string",
}


def _table(rows: list[dict], columns: dict):
    import pyarrow as pa

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in columns.items()])
    return pa.Table.from_pylist(rows, schema=schema)


def generate_chunk(
    identities_path: str | Path,
    identity_ids: list[int],
    out_dir: str | Path,
    part: int,
    settings: MultiIdSettings,
    recipe_seed: int,
    progress: bool = False,
    cache_dir: str | Path | None = None,  # no per-identity artefacts to keep
) -> Path:
    """``samples_per_identity`` group images per identity slot, cropped back to faces.

    Writes ``part-NNNNN.tar`` ({key}.jpg aligned face + {key}.json), ``rejects-NNNNN.parquet``
    (every face or identity that gave no sample, with its reason), then
    ``part-NNNNN.parquet`` last (one row per emitted sample). Keys: ``make_key(identity,
    sample)``; the group image's noise seed is ``sample_seed(recipe_seed, lead, sample)``
    of its first (lead) identity, its layout seed ``layout_seed(recipe_seed, lead, sample)``.
    """

    from facefoundry.faces import get_detector, get_embedder
    from facefoundry.generators.chunks import chunk_identities, write_chunk
    from facefoundry.generators.multi_id.model import make_sampler
    from facefoundry.shards.layout import make_key

    tar_path, parquet_path, rejects_path = chunk_paths(out_dir, part)
    if parquet_path.is_file():
        logger.info("chunk %d already complete, skipping", part)
        return parquet_path
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    unet, adapter, train_scheduler, vae, checksum = load_generator(settings)
    table, position = chunk_identities(identities_path, identity_ids, adapter.tokenizer.id_dim)
    sampler = make_sampler(train_scheduler, settings.scheduler)
    detector, embedder = get_detector(settings.detector), get_embedder(settings.embedder)
    k = settings.faces_per_image
    groups = plan_groups(list(identity_ids), settings.samples_per_identity, k, recipe_seed)
    rows, rejects, members = [], [], []
    for start in range(0, len(groups), settings.batch_size):
        batch = groups[start : start + settings.batch_size]
        seeds = [sample_seed(recipe_seed, g[1][0], g[0]) for g in batch]
        layouts = np.stack(
            [
                sample_layout(
                    k,
                    layout_seed(recipe_seed, g[1][0], g[0]),
                    settings.box_min,
                    settings.box_max,
                    settings.box_margin,
                )
                for g in batch
            ]
        )
        vectors = np.stack([table.embeddings[[position[i] for i in g[1]]] for g in batch])
        images = sample_groups(
            unet, adapter, sampler, vectors, layouts, seeds, settings.steps, vae=vae
        )
        for (sample, group_ids, padded), seed, layout, image, ids in zip(
            batch, seeds, layouts, images, vectors, strict=True
        ):
            source = f"group-{group_ids[0]:07d}-{sample:04d}"
            accepted, dropped = crop_back(
                image, layout, ids, detector, embedder, source, settings.gate,
                settings.min_iou, settings.min_similarity, settings.crop_upscale,
            )  # fmt: skip
            real = k - padded
            for crop in accepted:
                if crop.slot >= real:
                    dropped.append(CropReject("identity", crop.slot, "padding", crop.provenance))
                    continue
                identity = group_ids[crop.slot]
                row = {
                    "key": make_key(identity, sample),
                    "identity": identity,
                    "sample": sample,
                    "seed": seed,
                    "generator": "multi_id",
                    "model_checksum": checksum,
                    "scheduler": settings.scheduler,
                    "steps": settings.steps,
                    "guidance_scale": 1.0,
                    "prompt": None,
                    "source_key": source,
                    "slot": crop.slot,
                    "group_identities": json.dumps(group_ids),
                    "provenance": json.dumps(crop.provenance, sort_keys=True),
                }
                rows.append(row)
                members.append((row["key"], crop.face, row))
            for reject in dropped:
                slot_identity = (
                    group_ids[reject.index] if reject.kind == "identity" else None
                )  # a detection has no identity until it is assigned
                rejects.append(
                    {
                        "source_key": source,
                        "kind": reject.kind,
                        "index": reject.index,
                        "identity": slot_identity,
                        "sample": sample,
                        "reason": reject.reason,
                        "detail": json.dumps(reject.detail, sort_keys=True),
                    }
                )
    members.sort(key=lambda m: m[0])
    rows.sort(key=lambda r: r["key"])
    write_chunk(
        tar_path,
        parquet_path,
        [row for _, _, row in members],
        [face for _, face, _ in members],
        settings.jpeg_quality,
        table=_table(rows, SAMPLE_COLUMNS),
        side_tables=((_table(rejects, REJECT_COLUMNS), rejects_path),),
    )
    logger.info("chunk %d: %d samples, %d rejects", part, len(rows), len(rejects))
    return parquet_path


# --- the family protocol (generators/families.py) -----------------------------------------
def model_checksum(settings: MultiIdSettings) -> str:
    from facefoundry.generators.chunks import folder_checksum

    return folder_checksum(settings.model)


def identity_space(settings: MultiIdSettings):
    """Identity size from the adapter's tokenizer config; a prior when the folder has one."""
    from facefoundry.generators.families import IdentitySpace
    from facefoundry.generators.identities import PRIOR_FILE
    from facefoundry.generators.multi_id.model import read_tokenizer_config

    config = read_tokenizer_config(settings.model)
    prior = Path(settings.model) / PRIOR_FILE
    return IdentitySpace(int(config["id_dim"]), config.get("embedder", ""), prior)
