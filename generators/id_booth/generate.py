"""The generation stage for ID-Booth: one chunk of identities -> prompt-varied images.

Per identity: reference images (a folder of photos, or IDiff-Face samples of the
identity's embedding) -> a LoRA fine-tune (reused when its adapter already exists, so a
resumed run does not train twice) -> ``samples_per_identity`` images from the variation
prompts. Same output contract as ``generators.idiff_face.generate``: part-NNNNN.tar
({key}.jpg aligned 112 x 112 face + {key}.json) and part-NNNNN.parquet written last
(``aligned_faces``: a base that draws aligned faces is resized, a scene-drawing base's
face is found and aligned), since shards store what generation wrote.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import torch

from facefoundry.atomic import atomic_path
from facefoundry.generators.id_booth.settings import IDBoothSettings
from facefoundry.generators.seeds import sample_seed

logger = logging.getLogger(__name__)
PRIOR_SCHEDULER = "dpmsolver++"
_BASES: dict = {}
_LOCK = threading.Lock()


def aligned_faces(images: np.ndarray, face_crop: str, size: int = 112) -> np.ndarray:
    """``size`` x ``size`` template-aligned faces, the chunk contract. ``aligned``: the
    images already are (a face base at its own resolution), so they are resized;
    ``detect``: the most central YuNet face of each image is aligned, and an image
    without one is resized whole, for the embed stage to record as a reject."""
    import cv2

    from facefoundry.faces import align_face, select_face
    from facefoundry.faces.embed_stage import worker_models

    detector = worker_models("yunet", [])[0] if face_crop == "detect" else None  # once a process
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for row, image in enumerate(images):
        image = np.ascontiguousarray(image)
        face = select_face(detector.detect(image), image.shape, "central") if detector else None
        if face is not None:
            out[row] = align_face(image, face.landmarks, size)
        else:
            out[row] = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
    return out


def load_base_once(folder: str, device: str):
    """One base pipeline per process (per Dask worker), shared by every identity."""
    from facefoundry.generators.id_booth.base import load_base

    with _LOCK:
        key = (str(folder), device)
        if key not in _BASES:
            _BASES[key] = load_base(folder, device)
        return _BASES[key]


def _read_images(paths: list[Path]) -> np.ndarray:
    from facefoundry.faces.io import load_image

    return np.stack([load_image(p) for p in paths])


def prior_class_images(base, settings: IDBoothSettings, cache_dir: Path, seed: int) -> np.ndarray:
    """The prior-class set: the user's folder, or ``prior_count`` images of the class
    prompt drawn once by the base model (LoRA off) and cached as PNG."""
    if settings.prior_images:
        paths = sorted(
            p for p in Path(settings.prior_images).iterdir() if p.suffix.lower() in (".jpg", ".png")
        )
        if not paths:
            raise FileNotFoundError(f"no .jpg/.png prior-class images in {settings.prior_images}")
        return _read_images(paths)
    from PIL import Image

    from facefoundry.generators.id_booth.sample import sample_images

    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = [cache_dir / f"prior-{i:05d}.png" for i in range(settings.prior_count)]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        images = sample_images(
            base,
            [settings.class_prompt] * len(missing),
            [sample_seed(seed, i, 0, "prior") for i in missing],
            settings.negative_prompt,
            settings.prior_steps,
            settings.prior_guidance_scale,
            settings.resolution,
            PRIOR_SCHEDULER,
        )
        for i, image in zip(missing, images, strict=True):
            with atomic_path(paths[i]) as partial:
                Image.fromarray(image).save(partial, format="PNG")
    return _read_images(paths)


def reference_images(
    identity: int,
    row: int,
    embedding: np.ndarray,
    settings: IDBoothSettings,
    idiff_model: str,
    seed: int,
) -> np.ndarray:
    """1..N instance images of one identity: the ``row``-th folder of ``references``, or
    IDiff-Face samples of its embedding."""
    if settings.references:
        folders = sorted(p for p in Path(settings.references).iterdir() if p.is_dir())
        if row >= len(folders):
            raise ValueError(
                f"identity {identity} (row {row}) has no folder in {settings.references} "
                f"({len(folders)} folders)"
            )
        paths = sorted(p for p in folders[row].iterdir() if p.suffix.lower() in (".jpg", ".png"))
        return _read_images(paths[: settings.references_per_identity])
    from facefoundry.generators.idiff_face.generate import load_pipeline
    from facefoundry.generators.idiff_face.settings import IDiffFaceSettings

    pipeline, _ = load_pipeline(IDiffFaceSettings(model=idiff_model))
    count = settings.references_per_identity
    return pipeline(
        np.repeat(embedding[None], count, axis=0),
        [sample_seed(seed, identity, k, "reference") for k in range(count)],
    )


def generate_chunk(
    identities_path: str | Path,
    identity_ids: list[int],
    out_dir: str | Path,
    part: int,
    settings: IDBoothSettings,
    recipe_seed: int,
    identity_model: torch.nn.Module | None | str = "settings",
    progress: bool = False,
    cache_dir: str | Path | None = None,
) -> Path:
    """ID-Booth images for one chunk (``settings``: the recipe's ``generate`` section).

    ``identity_model`` is the triplet loss's recognizer: by default the one named in
    ``settings.identity_model``; ``None`` fine-tunes without the triplet term. Adapters
    and prior images live in ``cache_dir`` (default ``out_dir/.cache``) under a key of
    everything that decides them (:func:`adapter_key`), so a re-run that changes only
    sampling settings reuses them."""
    from facefoundry.generators.chunks import chunk_identities, write_chunk
    from facefoundry.generators.id_booth.lora import WEIGHTS_FILE, drop_lora, load_lora
    from facefoundry.generators.id_booth.prompts import variation_prompts
    from facefoundry.generators.id_booth.sample import sample_images
    from facefoundry.generators.id_booth.train import IDBoothTrainer
    from facefoundry.generators.idiff_face.generate import chunk_paths
    from facefoundry.shards.layout import make_key

    booth = settings
    if isinstance(identity_model, str):
        identity_model = identity_network(settings)
    out_dir = Path(out_dir)
    tar_path, parquet_path = chunk_paths(out_dir, part)
    if parquet_path.is_file():
        return parquet_path
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    base = load_base_once(settings.model, device)
    if base.kind == "pixel":  # an IDiff-Face base keys its instance context by the token
        base.token = booth.token
    checksum = model_checksum(settings)
    table, position = chunk_identities(identities_path, identity_ids)
    trainer = None  # built only if an adapter is missing: it encodes the prior set
    rows, outputs = [], []
    cache = Path(cache_dir) if cache_dir is not None else out_dir / ".cache"
    key = adapter_key(settings, recipe_seed)
    for identity in identity_ids:
        identity = int(identity)
        name = f"id{identity:07d}"
        embedding = table.embeddings[position[identity]]
        adapter_dir = cache / "adapters" / key / identity_slot(identity, embedding)
        if not (adapter_dir / WEIGHTS_FILE).is_file():
            instance = reference_images(
                identity,
                position[identity],
                table.embeddings[position[identity]],
                booth,
                settings.references_model,
                recipe_seed,
            )
            if trainer is None:
                priors = prior_class_images(base, booth, cache / "prior" / key, recipe_seed)
                trainer = IDBoothTrainer(base, booth, priors, identity_model)
            result = trainer.fine_tune(name, instance, adapter_dir, recipe_seed, progress)
            (adapter_dir / "history.json").write_text(json.dumps(result.history))
        load_lora(base.unet, name, adapter_dir)
        count = settings.samples_per_identity
        prompts = variation_prompts(
            booth.templates, booth.token, count, sample_seed(recipe_seed, identity, 0, "prompts")
        )
        seeds = [sample_seed(recipe_seed, identity, s) for s in range(count)]
        images = sample_images(
            base,
            prompts,
            seeds,
            booth.negative_prompt,
            booth.steps,
            booth.guidance_scale,
            booth.resolution,
            booth.scheduler,
            settings.batch_size,
        )
        drop_lora(base.unet, name)
        images = aligned_faces(images, booth.face_crop)
        for sample, (prompt, seed, image) in enumerate(zip(prompts, seeds, images, strict=True)):
            row = {
                "key": make_key(identity, sample),
                "identity": identity,
                "sample": sample,
                "seed": seed,
                "generator": "id_booth",
                "model_checksum": checksum,
                "scheduler": booth.scheduler,
                "steps": booth.steps,
                "guidance_scale": booth.guidance_scale,
                "prompt": prompt,
            }
            rows.append(row)
            outputs.append(image)
    write_chunk(tar_path, parquet_path, rows, outputs, settings.jpeg_quality)
    return parquet_path


def adapter_key(settings: IDBoothSettings, recipe_seed: int) -> str:
    """Hash of what decides every adapter of a run: base (and reference) model weights,
    the training settings (``IDBoothSettings.ADAPTER_FIELDS``) and the recipe seed."""
    import hashlib

    from facefoundry.generators.chunks import folder_checksum

    document = {name: getattr(settings, name) for name in settings.ADAPTER_FIELDS}
    document["base"] = folder_checksum(settings.model)
    if not settings.references:
        document["references_model"] = folder_checksum(settings.references_model)
    document["seed"] = recipe_seed
    text = json.dumps(document, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity_slot(identity: int, embedding: np.ndarray) -> str:
    """One identity's adapter folder name: its id and a digest of its embedding, so an
    identity table drawn anew never picks up another face's adapter."""
    import hashlib

    vector = np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
    return f"{identity:07d}-{hashlib.sha256(vector).hexdigest()[:12]}"


# --- the family protocol (generators/families.py) -----------------------------------------
def model_checksum(settings: IDBoothSettings) -> str:
    """The base pipeline and, when IDiff-Face draws the references, its model too."""
    import hashlib

    from facefoundry.generators.chunks import folder_checksum

    parts = [folder_checksum(settings.model)]
    if not settings.references:
        parts.append(folder_checksum(settings.references_model))
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def identity_space(settings: IDBoothSettings):
    """Identities condition the IDiff-Face model that draws each reference image."""
    from facefoundry.generators.idiff_face.generate import identity_space as idiff_space

    return idiff_space(settings, model=settings.references_model)


_NETWORKS: dict = {}


def identity_network(settings: IDBoothSettings) -> torch.nn.Module | None:
    """The recognizer behind the triplet loss (None: the term is off), loaded once."""
    if not settings.identity_model:
        logger.warning("generate.identity_model is empty: fine-tuning without the triplet loss")
        return None
    key = (settings.identity_model, settings.identity_backbone, settings.identity_features)
    if key not in _NETWORKS and settings.identity_model == "sface":
        from facefoundry.generators.id_booth.identity_loss import SFaceIdentity

        _NETWORKS[key] = SFaceIdentity()  # the differentiable torch SFace
    if key not in _NETWORKS:
        from facefoundry.recognition.export import load_backbone

        _NETWORKS[key] = load_backbone(*key)
    return _NETWORKS[key]
