"""The generation stage for IDiff-Face: one chunk of identities -> candidate images on disk.

Output per chunk (the contract the embed/filter stages read, ``generators/chunks.py``):
``part-NNNNN.tar`` with ``{key}.jpg`` (aligned 112 x 112 face) and ``{key}.json`` per
sample, and ``part-NNNNN.parquet`` with one row per sample (key, identity, sample,
seed, generator, model checksum, scheduler, steps, guidance), written last.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from facefoundry.generators.chunks import folder_checksum
from facefoundry.generators.idiff_face.settings import IDiffFaceSettings
from facefoundry.generators.seeds import sample_seed

logger = logging.getLogger(__name__)


def chunk_paths(out_dir: str | Path, part: int) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    return out_dir / f"part-{part:05d}.tar", out_dir / f"part-{part:05d}.parquet"


def _jittered(identity: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    if sigma <= 0:
        return identity
    noise = np.random.default_rng(seed).standard_normal(identity.shape).astype(np.float32)
    moved = identity + sigma * noise / np.sqrt(len(identity))
    return moved / np.linalg.norm(moved)


_PIPELINES: dict = {}
_LOAD_LOCK = threading.Lock()  # diffusers' lazy meta-device init is not thread-safe


def load_pipeline(settings: IDiffFaceSettings):
    """The sampling pipeline, loaded once per process (per worker on a Dask cluster)."""
    key = (settings.model, settings.scheduler, settings.device, settings.dtype, settings.compile)
    with _LOAD_LOCK:
        return _load_locked(key, settings)


def _load_locked(key: tuple, settings: IDiffFaceSettings):
    import torch

    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline

    if key not in _PIPELINES:
        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        pipeline = IDiffFacePipeline.from_pretrained(
            settings.model, settings.scheduler, device=device, dtype=getattr(torch, settings.dtype)
        )
        if settings.compile:
            compile_and_warm_up(pipeline, settings)
        _PIPELINES[key] = (pipeline, folder_checksum(settings.model))
    return _PIPELINES[key]


def compile_and_warm_up(pipeline, settings: IDiffFaceSettings) -> bool:
    """Compile the UNet and draw one throwaway batch with these sampling settings, so every
    shape they use compiles here, once, under the load lock (not in racing chunk threads).
    A compiler that fails leaves the eager UNet in place: slower, same images up to rounding.
    """
    import torch

    pipeline.compile_unet()
    try:
        warm_up(pipeline, settings)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:  # inductor raises many kinds: a missing compiler, codegen
        pipeline.eager_unet()
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        logger.warning("generate.compile: torch.compile failed (%s); sampling eagerly", first_line)
        return False
    return True


def warm_up(pipeline, settings: IDiffFaceSettings) -> None:
    """Draw one model call's batch (CPU: ``CPU_BATCH``; CUDA: ``batch_size``) of throwaway
    images with these sampling settings: kernels are built (compiled, or chosen by oneDNN)
    on first use of each shape, and a timed or threaded run should not pay for that."""
    from facefoundry.generators.seeds import CPU_BATCH

    count = CPU_BATCH if pipeline.device.type == "cpu" else settings.batch_size
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, pipeline.model.config.id_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sample_with_backoff(pipeline, vectors, list(range(count)), settings)


def sample_with_backoff(
    pipeline,
    vectors: np.ndarray,
    seeds: list[int],
    settings: IDiffFaceSettings,
    progress: bool = False,
) -> np.ndarray:
    """Sample, halving the batch after each GPU out-of-memory error (down to 1).

    Per-sample seeds fix each image's noise, and on CPU fixed model shapes fix its bytes
    (``generators.seeds.fixed_batches``): any batch size draws the same images. On CUDA a
    retry with a smaller batch runs other kernel shapes, so it draws the same images up to
    float rounding, not necessarily the same bytes.
    """
    import torch

    batch = settings.batch_size
    while True:
        try:
            return pipeline(
                vectors,
                seeds,
                steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                guidance_interval=settings.guidance_interval,
                detail_guidance=settings.detail_guidance,
                detail_axes=settings.detail_axes,
                detail_alternate=settings.detail_alternate,
                batch_size=batch,
                progress=progress,
            )
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            torch.cuda.empty_cache()
            logger.warning("GPU out of memory: retrying with batch size %d", batch)


def generate_chunk(
    identities_path: str | Path,
    identity_ids: list[int],
    out_dir: str | Path,
    part: int,
    settings: IDiffFaceSettings,
    recipe_seed: int,
    progress: bool = False,
    cache_dir: str | Path | None = None,  # no per-identity artefacts to keep
    drawn: str | Path | None = None,
) -> Path:
    """Generate ``samples_per_identity`` images for each identity of one chunk.

    ``drawn``: a folder of chunks drawn earlier with these settings and seeds (the
    probe funnel's ``identities/probes``); samples found there with the same key, seed
    and sampling fields are copied instead of drawn again (on CPU the bytes are the
    same either way: sampling is batch-invariant)."""
    from facefoundry.generators.chunks import chunk_identities, drawn_samples, write_chunk
    from facefoundry.shards.layout import make_key

    tar_path, parquet_path = chunk_paths(out_dir, part)
    if parquet_path.is_file():
        logger.info("chunk %d already complete, skipping", part)
        return parquet_path
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    pipeline, checksum = load_pipeline(settings)
    table, position = chunk_identities(identities_path, identity_ids, pipeline.model.config.id_dim)
    rows, vectors, seeds = [], [], []
    for identity in identity_ids:
        base = table.embeddings[position[int(identity)]]
        for sample in range(settings.samples_per_identity):
            seed = sample_seed(recipe_seed, identity, sample)
            vectors.append(
                _jittered(
                    base,
                    settings.context_noise,
                    sample_seed(recipe_seed, identity, sample, "context"),
                )
            )
            seeds.append(seed)
            rows.append(
                {
                    "key": make_key(int(identity), sample),
                    "identity": int(identity),
                    "sample": sample,
                    "seed": seed,
                    "generator": "idiff_face",
                    "model_checksum": checksum,
                    "scheduler": settings.scheduler,
                    "steps": settings.steps,
                    "guidance_scale": settings.guidance_scale,
                    "prompt": None,
                }
            )
    copies = drawn_samples(drawn, rows, SAMPLING_FIELDS) if drawn else {}
    missing = [row for row, sample in enumerate(rows) if sample["key"] not in copies]
    images: list = [copies.get(sample["key"]) for sample in rows]
    if missing:
        fresh = sample_with_backoff(
            pipeline,
            np.stack(vectors)[missing],
            [seeds[row] for row in missing],
            settings,
            progress,
        )
        for row, image in zip(missing, fresh, strict=True):
            images[row] = image
    if copies:
        logger.info(
            "chunk %d: %d of %d samples copied from %s", part, len(copies), len(rows), drawn
        )
    write_chunk(tar_path, parquet_path, rows, images, settings.jpeg_quality)
    return parquet_path


# what must match for an earlier drawn sample to stand for this one
SAMPLING_FIELDS = (
    "key",
    "identity",
    "sample",
    "seed",
    "model_checksum",
    "scheduler",
    "steps",
    "guidance_scale",
)
REUSES_DRAWN = True  # generate_chunk accepts ``drawn`` (generators/families.py)


# --- the family protocol (generators/families.py) -----------------------------------------
def model_checksum(settings: IDiffFaceSettings) -> str:
    return folder_checksum(settings.model)


def identity_space(settings: IDiffFaceSettings, model: str | None = None):
    """The model's identity vectors: size, the embedder that made them, its fitted prior."""
    from facefoundry.generators.families import IdentitySpace
    from facefoundry.generators.identities import PRIOR_FILE
    from facefoundry.generators.idiff_face.model import read_config
    from facefoundry.generators.realisation import REALISATION_FILE

    folder = Path(model or settings.model)
    config = read_config(folder)
    prior = folder / PRIOR_FILE
    return IdentitySpace(
        config.id_dim, config.conditioning_embedder, prior, folder / REALISATION_FILE
    )
