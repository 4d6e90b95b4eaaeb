"""Fit an IDiff-Face model's realisation map (``generators/realisation.py``).

Draws calibration identities from the model's fitted prior (a seed no recipe uses),
generates a few samples each with the sampling settings given (the map depends a
little on them: fit it with the settings the recipes use), embeds the faces with the
model's conditioning embedder, and regresses each identity's centroid on its
condition. Measured on the default model: 400 identities x 4 samples at the demo's
sampling take ~6 min on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facefoundry.errors import FacefoundryError

MIN_IDENTITIES = 10  # fewer pairs fit no useful map


def fit_model_realisation(
    model: str | Path,
    identities: int = 400,
    per_identity: int = 4,
    seed: int | None = None,
    ridge: float = 1.0,
    tau: float = 0.3,
    sampling: dict | None = None,
    progress: bool = False,
):
    """The fitted :class:`RealisationMap` (not saved), its record holding how it was
    fitted and its k-fold held-out figures."""
    from facefoundry.evaluation.generator_quality import embed_generated, identity_centroids
    from facefoundry.generators.chunks import folder_checksum
    from facefoundry.generators.identities import PRIOR_FILE, make_identities
    from facefoundry.generators.idiff_face.model import read_config
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
    from facefoundry.generators.realisation import (
        CALIBRATION_SEED,
        fit_realisation_map,
        held_out_figures,
    )
    from facefoundry.generators.seeds import sample_seed

    seed = CALIBRATION_SEED if seed is None else seed
    sampling = {
        "scheduler": "dpmsolver++",
        "steps": 8,
        "guidance_scale": 3.0,
        "guidance_interval": None,
        "detail_guidance": 0.0,
        "detail_axes": 32,
        "detail_alternate": False,
        **(sampling or {}),
    }
    folder = Path(model)
    config = read_config(folder)
    table = make_identities(
        identities, config.id_dim, seed, "fitted", tau, prior=folder / PRIOR_FILE
    )
    pipeline = IDiffFacePipeline.from_pretrained(folder, sampling["scheduler"], device="cpu")
    identity_of = np.repeat(table.ids, per_identity)
    seeds = [sample_seed(seed, int(i), s) % (2**31) for i in table.ids for s in range(per_identity)]
    images = pipeline(
        table.embeddings[identity_of],
        seeds,
        steps=sampling["steps"],
        guidance_scale=sampling["guidance_scale"],
        guidance_interval=sampling["guidance_interval"],
        detail_guidance=sampling["detail_guidance"],
        detail_axes=sampling["detail_axes"],
        detail_alternate=sampling["detail_alternate"],
        progress=progress,
    )
    embedder = config.conditioning_embedder
    faces = embed_generated(images, identity_of, embedders=(embedder,))
    vectors = np.where(faces.found[:, None], faces.vectors[embedder], np.nan)
    ids, centroids = identity_centroids(vectors, identity_of)
    if len(ids) < MIN_IDENTITIES:
        raise FacefoundryError(
            f"only {len(ids)} of {identities} calibration identities drew 2 or more detectable "
            f"faces (need {MIN_IDENTITIES}): this model cannot be calibrated; is it trained?"
        )
    conditions = table.embeddings[np.searchsorted(table.ids, ids)]
    record = {
        "model_checksum": folder_checksum(folder),
        "embedder": embedder,
        "identities": int(identities),
        "identities_with_faces": len(ids),
        "per_identity": int(per_identity),
        "seed": int(seed),
        "tau": tau,
        "ridge": ridge,
        "sampling": sampling,
        "held_out": held_out_figures(conditions, centroids, ridge),
    }
    return fit_realisation_map(conditions, centroids, ridge, record)


def fit_realisation_from_runs(
    model: str | Path,
    sources: list[dict],
    pairs: list,
    ridge: float = 1.0,
    residual: dict | None = None,
):
    """The map fitted on finished runs' pairs (``generators.realisation_runs``), no new
    images; ``sources`` (one dict per run: name, seed, sampling) go into its record, so
    a reader knows which recipe seeds' identities it has seen. ``residual`` (keyword
    arguments of ``realisation_residual.fit_residual``): a linear map plus MLP instead of
    ridge, its held-out figures from one split (a fifth of the pairs) beside ridge's on
    the same split."""
    from facefoundry.generators.chunks import folder_checksum
    from facefoundry.generators.idiff_face.model import read_config
    from facefoundry.generators.realisation import fit_realisation_map, held_out_figures
    from facefoundry.generators.realisation_runs import merge_pairs

    conditions, centroids = merge_pairs(pairs)
    if len(conditions) < MIN_IDENTITIES:
        raise FacefoundryError(
            f"the runs hold {len(conditions)} identities with 2 or more faces (need "
            f"{MIN_IDENTITIES}): add runs or fit from fresh calibration images"
        )
    record = {
        "model_checksum": folder_checksum(Path(model)),
        "embedder": read_config(Path(model)).conditioning_embedder,
        "identities": len(conditions),
        "faces": int(sum(p.faces for p in pairs)),
        "runs": sources,
        "ridge": ridge,
        "held_out": held_out_figures(conditions, centroids, ridge),
    }
    if residual is None:
        return fit_realisation_map(conditions, centroids, ridge, record)
    from facefoundry.generators.realisation_residual import fit_residual, residual_held_out

    record["residual"] = dict(residual)
    record["held_out"] = residual_held_out(conditions, centroids, ridge, residual)
    return fit_residual(conditions, centroids, **residual, record=record)
