"""Faces the model draws for conditions it was never trained on: the pool of the
drawn-identity rows of training (issue 16, ``TrainSettings.drawn_rows``).

Why: the identity and contrast terms score the model on the 4,038 DevTrain people it is
trained on, but datasets are drawn from the fitted prior, and there its faces crowd: of
1,000 drawn identities SFace tells 469 apart, of 1,000 real people 884 (BENCHMARKS,
session 22). These rows score the model on the conditions it will actually be asked for.
Each row is a face the model drew for a drawn condition, noised again to some t <= max_t
T; the model's prediction from it is scored by the identity terms against that
condition, the other drawn conditions among the contrast term's negatives. No denoising
term is applied to them: the model is never taught to reproduce its own faces.

The pool is drawn once, by the weights training starts from, and saved beside the
checkpoint, so a resumed run uses the same rows.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from facefoundry.generators.identities import PRIOR_FILE, sample_fitted, save_identity_prior
from facefoundry.generators.seeds import sample_seed

POOL_FILE = "drawn_pool.safetensors"
# the recipes' sampler (recipes/demo.yaml, recipes/cpu-10k.yaml): the faces the model
# draws in a dataset, not a sharper or blurrier variant of them
POOL_SAMPLING = {
    "steps": 8,
    "guidance_scale": 3.0,
    "detail_guidance": 1.25,
    "detail_axes": 32,
    "detail_alternate": True,
}
POOL_TAU = 0.3  # the demo's identity separation


def draw_pool(
    model: torch.nn.Module,
    training_embeddings: np.ndarray,
    identities: int,
    seed: int,
    folder: str | Path,
    sampling: dict | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """``conditions`` (n x d unit vectors from the prior fitted to
    ``training_embeddings``) and ``faces`` (n x C x S x S in [-1, 1], one face each,
    drawn by a copy of ``model`` at the model's own resolution, on ``device``: the
    noise comes from CPU generators, so any device draws the same faces up to rounding);
    ``folder`` receives the prior the detail guidance reads."""
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prior = save_identity_prior(training_embeddings, folder / PRIOR_FILE)
    config = model.config
    stream = sample_seed(seed, 0, 0, "drawn-pool") % (2**31)
    conditions = sample_fitted(identities, config.id_dim, stream, prior, tau=POOL_TAU)
    pipeline = IDiffFacePipeline(copy.deepcopy(model), device=device)
    pipeline.folder = folder
    seeds = [sample_seed(stream, i, 0) % (2**31) for i in range(identities)]
    images = pipeline(
        conditions,
        seeds,
        output_size=config.sample_size,
        **{**POOL_SAMPLING, **(sampling or {})},
    )
    faces = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return {"conditions": torch.from_numpy(conditions).float(), "faces": faces.contiguous()}


def load_or_draw_pool(
    out_dir: str | Path,
    model: torch.nn.Module,
    training_embeddings: np.ndarray,
    identities: int,
    seed: int,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """The run's pool: read from ``out_dir``/POOL_FILE, or drawn (on ``device``) and
    written there."""
    from safetensors.torch import load_file, save_file

    from facefoundry.atomic import atomic_path

    path = Path(out_dir) / POOL_FILE
    if path.is_file():
        pool = load_file(str(path))
        if len(pool["conditions"]) != identities:
            raise ValueError(
                f"{path} holds {len(pool['conditions'])} drawn identities, the settings ask "
                f"for {identities}: use a new output folder or the same drawn_identities"
            )
        return pool
    pool = draw_pool(
        model, training_embeddings, identities, seed, Path(out_dir) / "drawn_prior", device=device
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        save_file(pool, str(partial))
    return pool
