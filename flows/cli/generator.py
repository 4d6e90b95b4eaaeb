"""``facefoundry generator ...``: the IDiff-Face and multi-identity generators (prepare
training data, train, sample) and a tiny Stable Diffusion folder for ID-Booth trials."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from facefoundry.errors import UsageError
from facefoundry.flows.cli._common import (
    LFW_HELP,
    RAW,
    check_models,
    existing_dir,
    existing_file,
    positive_int,
)

logger = logging.getLogger(__name__)

PREPARE_DESCRIPTION = """\
Build a generator training set from LFW: read the people of --people from the LFW
folder, detect and align their faces, embed them with --embedder (the identity
condition) and write the faces (--size pixels) with their embeddings and labels to
one .npz file at --out, which `generator train` and `generator train-multi-id`
read."""

TRAIN_DESCRIPTION = """\
Train an IDiff-Face model on a training set from prepare-lfw. Resumes from
OUT/checkpoint unless --restart; exports the EMA weights to OUT/model (safetensors),
a model folder for generate.model / `generator sample`."""

SAMPLE_DESCRIPTION = """\
Generate candidate images with an IDiff-Face model folder: --per-identity images for
each identity of --identities (from `facefoundry identities`), written to --out in
chunks of --chunk identities (part-NNNNN.tar of images + part-NNNNN.parquet of rows;
the parquet is written last). Complete chunks are kept, so a re-run resumes."""

FIT_REALISATION_DESCRIPTION = """\
Fit the model's realisation map, which `identities.select: predicted` reads: draw
--identities identities from the model's fitted prior (seed --seed, which no recipe
uses), generate --per-identity images each with the sampling settings given (use the
ones your recipes use), embed them with the model's conditioning embedder and fit a
ridge map from each condition to the centroid the model drew for it. Writes
MODEL/realisation_map.npz (or --out) and prints the held-out figures: the cosine of
predicted vs drawn centroids and how well predicted pair cosines follow the drawn
ones, each beside the raw condition's. About 6 minutes on 2 cores at the defaults.

--from-run RUN (repeatable) fits on finished runs of the same model instead: their
identities and embedded faces are the pairs, and so are their probe funnels' candidates
(each probe's stored centroid; a funnel written before probes.parquet kept them has its
probe images embedded again, minutes), no image is generated. A run of 1,000 identities
x 8 faces predicts better than the 400 x 4 calibration draw (BENCHMARKS.md, session 10),
and the 12,000 probed candidates of two 1,000-identity funnel runs better still; with
that many pairs --residual adds a small MLP to the ridge map (session 49). The map then
knows those runs' identities, so judge selections on recipe seeds the runs did not use
(the record lists them)."""

REWARD_TUNE_DESCRIPTION = """\
Fine-tune a trained IDiff-Face model on the faces its own sampler draws: each step
draws 2 faces for each of --identities conditions from the model's fitted prior with
a differentiable DDIM sampler (--sampling-steps, CFG --guidance), then pays for SFace
following the condition, for each identity's centroid staying below the filter's
threshold against the last --bank identities drawn, for the denoising loss on real
faces from DATA, and (--layout-weight) for keeping the 8 x 8 layout (lighting,
framing) of what the starting weights drew from the same noise; head pose still
narrows (BENCHMARKS.md, session 40: 585 of 1,000 identities kept instead of 455,
pose spread 0.68 of real faces' instead of 0.83; with --grad-steps 3, which lets the
score reach only the last 3 steps, the same: 582 and 0.68, session 43). Resumes from
OUT/checkpoint unless --restart; the sampling folder is OUT/model (refit its
realisation map with `generator fit-realisation` before recipes that select by it).
About 7 s a step on 2 cores at the defaults."""

DATA_HINT = "make one with `facefoundry generator prepare-lfw --out FILE.npz`"


def cmd_prepare_lfw(args: argparse.Namespace) -> int:
    from facefoundry.evaluation.lfw import Lfw, people_images, read_people
    from facefoundry.generators.training_data import build_training_set

    lfw = Lfw(args.lfw)
    people = read_people(lfw.protocol_file(args.people))
    check_models(args.embedder)
    names, labels = people_images(people)
    data, summary = build_training_set(
        list(lfw.read_many(names)),
        labels,
        size=args.size,
        embedder=args.embedder,
        workers=args.workers,
        source={"source": "lfw", "people_file": args.people},
    )
    data.save(args.out)
    print(
        json.dumps({"images": len(names), "kept": len(data), "outcomes": summary, "out": args.out})
    )
    return 0


def cmd_generator_train(args: argparse.Namespace) -> int:
    existing_file(args.data, "training set", DATA_HINT)
    if args.init_from:
        existing_dir(args.init_from, "--init-from model folder")
    if args.grow_attention and not args.init_from:
        raise UsageError("--grow-attention adds attention to a trained model: give --init-from")
    if args.grow_depth < 0:
        raise UsageError(f"--grow-depth is a number of blocks, 0 or more (got {args.grow_depth})")
    if args.grow_depth and not args.init_from:
        raise UsageError("--grow-depth adds blocks to a trained model: give --init-from")
    if args.grow_width < 0:
        raise UsageError(
            f"--grow-width is a number of doublings, 0 or more (got {args.grow_width})"
        )
    if args.grow_width and not args.init_from:
        raise UsageError("--grow-width widens a trained model: give --init-from")
    if args.grow_modulation and not args.init_from:
        raise UsageError("--grow-modulation converts a trained model: give --init-from")
    if args.min_snr_gamma < 0:
        raise UsageError(f"--min-snr-gamma is 0 (off) or more (got {args.min_snr_gamma})")
    if args.cpd_p is not None and not 0 <= args.cpd_p < 1:
        raise UsageError(f"--cpd-p is a dropout rate in [0, 1) (got {args.cpd_p})")
    if args.schedule_to_budget and not args.max_minutes:
        raise UsageError(
            "--schedule-to-budget fits the schedule to a time budget: give --max-minutes"
        )
    from facefoundry.generators.idiff_face.config import (
        PAPER_CONFIG,
        WIDE_CONFIG,
        IDiffFaceConfig,
    )
    from facefoundry.generators.idiff_face.train import TrainSettings, train_idiff_face

    config = {"paper": PAPER_CONFIG, "wide": WIDE_CONFIG}.get(args.config, IDiffFaceConfig())
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        threads=args.threads,
        seed=args.seed,
        warmup_steps=args.warmup_steps,
        min_snr_gamma=args.min_snr_gamma,
        identity_weight=args.identity_weight,
        identity_contrast_weight=args.identity_contrast_weight,
        identity_contrast_scale=args.identity_contrast_scale,
        identity_max_t=args.identity_max_t,
        identity_max_rows=args.identity_max_rows,
        identity_space=args.identity_space,
        batch_sampling=args.batch_sampling,
        condition_source=args.condition_source,
        drawn_rows=args.drawn_rows,
        drawn_identities=args.drawn_identities,
        drawn_weight=args.drawn_weight,
        drawn_anchor_weight=args.drawn_anchor_weight,
    )
    model = train_idiff_face(
        args.data,
        args.out,
        config,
        settings,
        resume=not args.restart,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        schedule_to_budget=args.schedule_to_budget,
        init_from=args.init_from,
        grow_attention_levels=tuple(args.grow_attention or ()),
        grow_depth_blocks=args.grow_depth,
        grow_widths=args.grow_width,
        cpd_p=args.cpd_p,
        grow_modulated=args.grow_modulation,
    )
    print(json.dumps({"model": str(model)}))
    return 0


def settings_error(command: str, error) -> UsageError:
    """One line naming the first bad option of a pydantic ``ValidationError`` (a check
    over several fields names none)."""
    first = error.errors()[0]
    where = f"{first['loc'][0]}: " if first["loc"] else ""
    return UsageError(f"{command}: {where}{first['msg'].removeprefix('Value error, ')}")


def cmd_generator_reward_tune(args: argparse.Namespace) -> int:
    existing_file(args.data, "training set", DATA_HINT)
    existing_dir(args.init_from, "--init-from model folder")
    from pydantic import ValidationError

    from facefoundry.generators.idiff_face.sampler_reward import RewardSettings, reward_tune

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        settings = RewardSettings(
            iterations=args.iterations,
            identities=args.identities,
            steps=args.sampling_steps,
            grad_steps=args.grad_steps,
            guidance_scale=args.guidance,
            learning_rate=args.lr,
            follow_weight=args.follow_weight,
            separation_weight=args.separation_weight,
            bank=args.bank,
            layout_weight=args.layout_weight,
            variety_weight=args.variety_weight,
            variety_grid=args.variety_grid,
            seed=args.seed,
        )
    except ValidationError as error:
        raise settings_error("reward-tune", error) from None
    model = reward_tune(args.init_from, args.data, args.out, settings, restart=args.restart)
    print(json.dumps({"model": str(model)}))
    return 0


def cmd_generator_sample(args: argparse.Namespace) -> int:
    existing_dir(args.model, "generator model folder")
    existing_file(args.identities, "identities table", "make one with `facefoundry identities`")
    from pydantic import ValidationError

    from facefoundry.generators.identities import IdentityTable
    from facefoundry.generators.idiff_face.generate import generate_chunk
    from facefoundry.generators.idiff_face.settings import IDiffFaceSettings

    try:
        settings = IDiffFaceSettings(
            model=args.model,
            samples_per_identity=args.per_identity,
            scheduler=args.scheduler,
            steps=args.steps,
            guidance_scale=args.guidance,
            guidance_interval=args.guidance_interval,
            detail_guidance=args.detail_guidance,
            detail_axes=args.detail_axes,
            detail_alternate=args.detail_alternate,
            batch_size=args.batch_size,
            chunk_identities=args.chunk,
            compile=args.compile,
        )
    except ValidationError as error:
        raise settings_error("sample", error) from None
    ids = [int(i) for i in IdentityTable.load(args.identities).ids]
    parts = []
    for part, start in enumerate(range(0, len(ids), settings.chunk_identities)):
        parts.append(
            str(
                generate_chunk(
                    args.identities,
                    ids[start : start + settings.chunk_identities],
                    args.out,
                    part,
                    settings,
                    args.seed,
                    progress=True,
                )
            )
        )
    print(json.dumps({"chunks": parts}))
    return 0


def cmd_generator_fit_realisation(args: argparse.Namespace) -> int:
    existing_dir(args.model, "generator model folder")
    from facefoundry.generators.realisation import REALISATION_FILE

    if args.from_run:
        residual = None
        if args.residual:
            residual = {"hidden": args.residual_hidden, "epochs": args.residual_epochs}
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        realisation = fit_from_run_folders(args.model, args.from_run, args.ridge, residual)
        out = realisation.save(args.out or Path(args.model) / REALISATION_FILE)
        print(json.dumps({"out": str(out), **realisation.record["held_out"]}))
        return 0
    from facefoundry.generators.idiff_face.settings import interval_problem

    if problem := interval_problem(args.guidance_interval):
        raise UsageError(f"fit-realisation: {problem}")
    check_models(read_conditioning_embedder(args.model))
    from facefoundry.generators.idiff_face.realisation_fit import fit_model_realisation

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    realisation = fit_model_realisation(
        args.model,
        identities=args.identities,
        per_identity=args.per_identity,
        seed=args.seed,
        ridge=args.ridge,
        sampling={
            "scheduler": args.scheduler,
            "steps": args.steps,
            "guidance_scale": args.guidance,
            "guidance_interval": args.guidance_interval,
            "detail_guidance": args.detail_guidance,
            "detail_axes": args.detail_axes,
            "detail_alternate": args.detail_alternate,
        },
        progress=True,
    )
    out = realisation.save(args.out or Path(args.model) / REALISATION_FILE)
    print(json.dumps({"out": str(out), **realisation.record["held_out"]}))
    return 0


def fit_from_run_folders(model: str, runs: list[str], ridge: float, residual: dict | None = None):
    """The map fitted on finished runs (their run folders checked one by one): each run's
    realised identities, then its probe funnel's candidates (``probe_pairs``)."""
    from facefoundry.flows.config import load_recipe
    from facefoundry.flows.run_dir import RunDir
    from facefoundry.generators.chunks import folder_checksum
    from facefoundry.generators.idiff_face import realisation_fit
    from facefoundry.generators.realisation_runs import probe_pairs, run_pairs

    embedder = read_conditioning_embedder(model)
    checksum = folder_checksum(Path(model))
    sampling = (
        "scheduler",
        "steps",
        "guidance_scale",
        "guidance_interval",
        "detail_guidance",
        "detail_axes",
        "detail_alternate",
    )
    sources, pairs, probed = [], [], []
    for folder in runs:
        run = RunDir(existing_dir(folder, "--from-run folder", "give a run folder (runs/NAME)"))
        pairs.append(
            run_pairs(run.identities, run.generate_parts(), run.embed, embedder, checksum, folder)
        )
        recipe = load_recipe(run.recipe) if run.recipe.is_file() else None
        probes = None
        if recipe is not None:
            probes = probe_pairs(run.identities.parent, recipe, embedder, checksum, folder)
        if probes is not None:
            probed.append(probes)
        generate = recipe.generate.model_dump() if recipe is not None else {}
        sources.append(
            {
                "run": str(folder),
                "seed": None if recipe is None else recipe.seed,
                "identities": len(pairs[-1].conditions),
                "probe_pairs": 0 if probes is None else len(probes.conditions),
                "per_identity": generate.get("samples_per_identity"),
                "sampling": {key: generate.get(key) for key in sampling},
            }
        )
    return realisation_fit.fit_realisation_from_runs(
        model, sources, pairs + probed, ridge, residual
    )


def read_conditioning_embedder(model: str) -> str:
    from facefoundry.generators.idiff_face.model import read_config

    return read_config(Path(model)).conditioning_embedder


def cmd_generator_init_multi_id(args: argparse.Namespace) -> int:
    if args.unet != "tiny":
        existing_dir(args.unet, "--unet folder", "give a diffusers UNet or pipeline folder")
    if args.vae:
        existing_dir(args.vae, "--vae folder")
    if args.identity_from:
        existing_dir(args.identity_from, "--identity-from folder", "e.g. models/idiff-face-lfw")
    from facefoundry.generators.multi_id.fit import init_model_folder

    out = init_model_folder(
        args.out,
        args.unet,
        id_dim=args.id_dim,
        tokens=args.tokens,
        vae=args.vae,
        prediction_type=args.prediction,
        tiny_size=args.size,
        seed=args.seed,
        identity_from=args.identity_from,
    )
    print(json.dumps({"model": str(out)}))
    return 0


def cmd_generator_train_multi_id(args: argparse.Namespace) -> int:
    existing_file(args.data, "training set", DATA_HINT)
    existing_dir(args.model, "model folder", "make one with `facefoundry generator init-multi-id`")
    if args.identity_model and args.identity_model != "sface":
        existing_file(args.identity_model, "--identity-model")
    if args.person_negatives and args.identity_model != "sface":
        raise UsageError(
            "--person-negatives compares against the training set's conditions: use it "
            "with --identity-model sface"
        )
    import torch

    from facefoundry.generators.multi_id.fit import fit_adapter
    from facefoundry.generators.multi_id.settings import MultiIdTrainSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    fields = {
        "faces_per_image": args.faces_per_image,
        "face_counts": args.face_counts,
        "region_masks": not args.no_region_masks,
        "learning_rate": args.lr,
        "device": args.device,
    }
    fields.update(boxes_from(args))
    if args.identity_model == "sface":
        from facefoundry.generators.id_booth.identity_loss import SFaceIdentity

        network = SFaceIdentity()
    elif args.identity_model:
        from facefoundry.recognition.export import load_backbone

        network = load_backbone(args.identity_model, args.identity_backbone, args.identity_features)
    else:
        logger.warning(
            "no --identity-model: identity and InfoNCE losses are off (diffusion loss only)"
        )
        network = torch.nn.Identity()
        fields.update(id_loss_weight=0.0, infonce_weight=0.0)
    from facefoundry.generators.training_data import FaceTrainingSet

    data, negatives = FaceTrainingSet.load(args.data), None  # loaded once, for both uses
    if args.person_negatives:
        import numpy as np

        from facefoundry.generators.idiff_face.train import person_centroids

        negatives = person_centroids(torch.from_numpy(data.embeddings), np.asarray(data.labels))
    model = fit_adapter(
        args.model,
        data,
        args.out,
        network,
        negatives=negatives,
        steps=args.steps,
        batch_size=args.batch_size,
        settings=MultiIdTrainSettings(**fields),
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        background=args.background,
    )
    print(json.dumps({"model": str(model), "history": str(Path(args.out) / "history.json")}))
    return 0


def boxes_from(args: argparse.Namespace) -> dict:
    """The box sizes given on the command line (unset ones keep the trainer's defaults)."""
    given = {"box_min": args.box_min, "box_max": args.box_max, "box_margin": args.box_margin}
    return {k: v for k, v in given.items() if v is not None}


def face_counts(text: str) -> list[int]:
    """Parse "2,3,4" into [2, 3, 4] (an argparse type)."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected e.g. 2,3,4, got {text!r}") from error
    if not counts or not all(1 <= k <= 8 for k in counts):
        raise argparse.ArgumentTypeError(f"face counts must be 1..8, got {text!r}")
    return counts


def cmd_generator_train_multi_id_base(args: argparse.Namespace) -> int:
    existing_file(args.data, "training set", DATA_HINT)
    existing_dir(args.idiff_face, "--idiff-face folder", "e.g. models/idiff-face-lfw")
    import torch

    from facefoundry.generators.multi_id.base import fit_base

    if args.threads:
        torch.set_num_threads(args.threads)
    base = fit_base(
        args.idiff_face,
        args.data,
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        face_counts=tuple(args.face_counts),
        canvas=args.canvas,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        **boxes_from(args),
    )
    print(json.dumps({"base": str(base), "history": str(Path(args.out) / "history.json")}))
    return 0


def add_box_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--box-min", type=float, default=None, help="face box side, fraction")
    parser.add_argument("--box-max", type=float, default=None, help="face box side, fraction")
    parser.add_argument("--box-margin", type=float, default=None, help="gap between boxes")


def cmd_generator_tiny_sd(args: argparse.Namespace) -> int:
    from facefoundry.generators.id_booth.tiny import make_tiny_sd

    folder = make_tiny_sd(args.out, seed=args.seed, image_size=args.size)
    print(f"tiny random SD pipeline: {folder} (set generate.model to it in an id_booth recipe)")
    return 0


def add_detail_alternate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detail-alternate",
        action="store_true",
        help="evaluate the unconditional branch and the detail twin on alternate steps "
        "(two model calls per step instead of three)",
    )


def add_guidance_interval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--guidance-interval",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="guidance only for timesteps LO <= t <= HI, the condition alone elsewhere "
        "(e.g. 0 900 leaves the first of 8 steps unguided: wider pose, BENCHMARKS s52)",
    )


def register(commands: argparse._SubParsersAction) -> None:
    generator = commands.add_parser(
        "generator",
        help="IDiff-Face and multi-identity generators: prepare data, train, sample",
        description="Generator models: make training data from LFW, train IDiff-Face or a "
        "multi-identity adapter, sample images, and make a tiny SD folder for ID-Booth trials.",
    )
    actions = generator.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = actions.add_parser(
        "prepare-lfw",
        help="align + embed LFW people into a generator training set (.npz)",
        description=PREPARE_DESCRIPTION,
        formatter_class=RAW,
    )
    prepare.add_argument("--out", required=True, help="training set .npz file to write")
    prepare.add_argument(
        "--people",
        default="peopleDevTrain.txt",
        help="people list; DevTrain keeps DevTest people unseen",
    )
    prepare.add_argument("--size", type=int, default=64, help="stored face size in pixels")
    prepare.add_argument("--embedder", default="sface", help="conditioning embedder")
    prepare.add_argument("--lfw", default=None, help=LFW_HELP)
    prepare.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    prepare.set_defaults(func=cmd_prepare_lfw)

    train = actions.add_parser(
        "train",
        help="train or resume an IDiff-Face model",
        description=TRAIN_DESCRIPTION,
        formatter_class=RAW,
    )
    train.add_argument("data", help="training set .npz from prepare-lfw")
    train.add_argument("--out", required=True, help="run folder (checkpoint/, model/)")
    train.add_argument(
        "--config",
        default="small",
        choices=["small", "wide", "paper"],
        help="model size (wide: twice the channels, about 2x the sampling time)",
    )
    train.add_argument("--steps", type=int, default=20000, help="total steps")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--warmup-steps", type=int, default=200, help="linear lr warm-up")
    train.add_argument(
        "--min-snr-gamma",
        type=float,
        default=5.0,
        help="min-SNR-gamma weighting of the denoising loss (default 5: noise levels with "
        "SNR above gamma count less; 0 = off, the plain v/epsilon loss)",
    )
    train.add_argument(
        "--cpd-p",
        type=float,
        default=None,
        metavar="P",
        help="Contextual Partial Dropout rate: the share of the identity context's elements "
        "zeroed in training (default: the model's own, 0.25 for a new model; 0 = off)",
    )
    train.add_argument(
        "--identity-weight",
        type=float,
        default=0.0,
        help="weight of the identity term: 1 - cos(SFace(predicted x0), condition) at low "
        "noise (0 = off; needs an SFace-conditioned model)",
    )
    train.add_argument(
        "--identity-contrast-weight",
        type=float,
        default=0.0,
        help="weight of the contrast term: InfoNCE of SFace(predicted x0) against its own "
        "condition vs every other training person's centroid (0 = off)",
    )
    train.add_argument(
        "--identity-contrast-scale",
        type=float,
        default=16.0,
        help="contrast logits = scale x cosine (default 16)",
    )
    train.add_argument(
        "--identity-max-t",
        type=float,
        default=0.6,
        help="identity term only for t <= this fraction of T (default 0.6)",
    )
    train.add_argument(
        "--identity-max-rows",
        type=int,
        default=None,
        help="at most this many rows per step through the recognizer (CPU cost)",
    )
    train.add_argument(
        "--identity-space",
        choices=["raw", "whitened"],
        default="raw",
        help="compare embeddings as raw SFace cosines, or whitened by the training people's "
        "covariance so every axis of identity counts alike",
    )
    train.add_argument(
        "--drawn-rows",
        type=int,
        default=0,
        help="rows per step of faces the starting weights drew for conditions from the fitted "
        "prior, scored by the identity terms only (0 = off; needs an identity weight)",
    )
    train.add_argument(
        "--drawn-identities",
        type=int,
        default=1500,
        help="drawn conditions in that pool, one face each (default 1500)",
    )
    train.add_argument(
        "--drawn-weight",
        type=float,
        default=1.0,
        help="scale of the drawn rows' terms against the real rows' (default 1)",
    )
    train.add_argument(
        "--drawn-anchor-weight",
        type=float,
        default=0.0,
        help="weight of an 8x8 low-pass MSE that keeps the drawn faces' pose and lighting "
        "while the identity terms move their detail (default 0 = off)",
    )
    train.add_argument(
        "--batch-sampling",
        choices=["image", "person"],
        default="image",
        help="draw batch rows per image, or per person (uniform over people)",
    )
    train.add_argument(
        "--condition-source",
        choices=["image", "other"],
        default="image",
        help="condition each training photo on its own embedding, or on another photo of "
        "the same person where there is one (only the identity is shared)",
    )
    train.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after")
    train.add_argument(
        "--schedule-to-budget",
        action="store_true",
        help="with --max-minutes: re-plan the step count from the measured step rate so "
        "the learning-rate schedule ends on time (--steps stays the upper bound)",
    )
    train.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    train.add_argument(
        "--init-from",
        default=None,
        help="start from a model folder's weights when there is no checkpoint "
        "(e.g. models/idiff-face-lfw)",
    )
    train.add_argument(
        "--grow-attention",
        type=int,
        nargs="+",
        metavar="LEVEL",
        default=None,
        help="with --init-from: add identity cross-attention at these resolution levels "
        "(0 = full, 1 = half, ...); new blocks start at zero, so training starts from the "
        "old model's exact predictions",
    )
    train.add_argument(
        "--grow-depth",
        type=int,
        default=0,
        metavar="BLOCKS",
        help="with --init-from: add this many residual blocks (and attention, where a level "
        "has it) to every down and up block, each started as the identity, so a deeper "
        "model trains from the old model's exact predictions (default: 0)",
    )
    train.add_argument(
        "--grow-width",
        type=int,
        default=0,
        metavar="TIMES",
        help="with --init-from: double every channel and the identity context this many "
        "times (each old channel becomes two copies whose outgoing weights split the old "
        "one), so a wider model trains from the old model's exact predictions (default: 0)",
    )
    train.add_argument(
        "--grow-modulation",
        action="store_true",
        help="with --init-from: let the time and identity embedding scale and shift every "
        "residual block's normalised features (adaptive group norm) instead of adding a "
        "bias before the norm; fitted on 1,024 training faces so the model starts close to "
        "the old one's predictions (not exactly: a few percent)",
    )
    train.set_defaults(func=cmd_generator_train)

    reward = actions.add_parser(
        "reward-tune",
        help="fine-tune a trained IDiff-Face model on what its sampler draws",
        description=REWARD_TUNE_DESCRIPTION,
        formatter_class=RAW,
    )
    reward.add_argument("data", help="training set .npz from prepare-lfw (the real faces)")
    reward.add_argument("--init-from", required=True, help="trained model folder")
    reward.add_argument("--out", required=True, help="run folder (checkpoint/, model/)")
    reward.add_argument("--iterations", type=int, default=400, help="steps (default 400)")
    reward.add_argument("--identities", type=int, default=12, help="per step, 2 faces each")
    reward.add_argument("--sampling-steps", type=int, default=8, help="DDIM steps (default 8)")
    reward.add_argument(
        "--grad-steps",
        type=int,
        default=None,
        help="differentiate only the last K sampling steps (DRaFT-K; default: all)",
    )
    reward.add_argument("--guidance", type=float, default=3.0, help="CFG scale (default 3)")
    reward.add_argument("--lr", type=float, default=2e-5, help="learning rate (default 2e-5)")
    reward.add_argument(
        "--follow-weight",
        type=float,
        default=1.0,
        help="weight of the follow term, 1 - cos(SFace(face), condition) (0 = off)",
    )
    reward.add_argument(
        "--separation-weight", type=float, default=1.0, help="weight of the bank term"
    )
    reward.add_argument("--bank", type=int, default=1024, help="recent identities kept apart")
    reward.add_argument(
        "--layout-weight",
        type=float,
        default=8.0,
        help="weight of the 8 x 8 layout anchor to the starting weights' faces (0 = off: "
        "an identity's faces then converge on one pose and lighting)",
    )
    reward.add_argument(
        "--variety-weight",
        type=float,
        default=0.0,
        help="weight of the variety anchor: how an identity's two faces differ, on "
        "--variety-grid pools, stays the starting weights' (0 = off)",
    )
    reward.add_argument(
        "--variety-grid", type=int, default=16, help="variety anchor pools per side (16)"
    )
    reward.add_argument("--seed", type=int, default=0)
    reward.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    reward.add_argument("--restart", action="store_true", help="discard OUT/checkpoint")
    reward.set_defaults(func=cmd_generator_reward_tune)

    sample = actions.add_parser(
        "sample",
        help="generate candidate images for identities",
        description=SAMPLE_DESCRIPTION,
        formatter_class=RAW,
    )
    sample.add_argument("model", help="model folder (e.g. models/idiff-face-lfw)")
    sample.add_argument("--identities", required=True, help="identities.parquet")
    sample.add_argument("--out", required=True, help="folder for part-NNNNN.tar/.parquet")
    sample.add_argument("--per-identity", type=positive_int, default=8, help="images per identity")
    sample.add_argument(
        "--scheduler",
        default="dpmsolver++",
        choices=["dpmsolver++", "sde-dpmsolver++", "unipc", "ddim", "ddpm"],
    )
    sample.add_argument("--steps", type=positive_int, default=25, help="denoising steps")
    sample.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale"
    )
    sample.add_argument(
        "--detail-guidance",
        type=float,
        default=0.0,
        help="h: also steer away from each condition's twin on the identity prior's "
        "strongest axes (spreads identities apart; one more model call per step)",
    )
    sample.add_argument(
        "--detail-axes", type=positive_int, default=32, help="axes a detail-guidance twin keeps"
    )
    add_detail_alternate(sample)
    add_guidance_interval(sample)
    sample.add_argument("--batch-size", type=positive_int, default=64)
    sample.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet first (about a minute the first time on a machine, "
        "seconds once cached; 1.3x faster on CPU, the same images up to float rounding)",
    )
    sample.add_argument("--chunk", type=positive_int, default=50, help="identities per chunk")
    sample.add_argument("--seed", type=int, default=0, help="recipe seed")
    sample.set_defaults(func=cmd_generator_sample)

    fit_map = actions.add_parser(
        "fit-realisation",
        help="fit the condition -> drawn-face map that `identities.select: predicted` uses",
        description=FIT_REALISATION_DESCRIPTION,
        formatter_class=RAW,
    )
    fit_map.add_argument("model", help="IDiff-Face model folder (e.g. models/idiff-face-lfw)")
    fit_map.add_argument("--identities", type=positive_int, default=400)
    fit_map.add_argument("--per-identity", type=positive_int, default=4, help="images each")
    fit_map.add_argument("--seed", type=int, default=None, help="default: the calibration seed")
    fit_map.add_argument("--ridge", type=float, default=1.0, help="ridge penalty")
    fit_map.add_argument(
        "--scheduler",
        default="dpmsolver++",
        choices=["dpmsolver++", "sde-dpmsolver++", "unipc", "ddim", "ddpm"],
    )
    fit_map.add_argument("--steps", type=positive_int, default=8)
    fit_map.add_argument("--guidance", type=float, default=3.0)
    fit_map.add_argument("--detail-guidance", type=float, default=1.0)
    fit_map.add_argument("--detail-axes", type=positive_int, default=32)
    add_detail_alternate(fit_map)
    add_guidance_interval(fit_map)
    fit_map.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    fit_map.add_argument(
        "--from-run",
        action="append",
        default=[],
        metavar="RUN",
        help="fit on this finished run's faces instead of new images (repeatable)",
    )
    fit_map.add_argument(
        "--residual",
        action="store_true",
        help="with --from-run: add a small MLP to the ridge map (needs thousands of pairs, "
        "e.g. a probe funnel's candidates)",
    )
    fit_map.add_argument("--residual-hidden", type=positive_int, default=1024)
    fit_map.add_argument("--residual-epochs", type=positive_int, default=100)
    fit_map.add_argument("--out", default=None, help="default: MODEL/realisation_map.npz")
    fit_map.set_defaults(func=cmd_generator_fit_realisation)

    init_multi = actions.add_parser(
        "init-multi-id",
        help="start a multi-identity (WithAnyone-style) model folder with a fresh adapter",
        description="Write OUT as a multi-identity model folder: the base UNet, a new identity "
        "adapter whose output is zero (so it starts as the unchanged base model), a DDPM "
        "training schedule and, for latent UNets, the VAE. Train it with train-multi-id.",
    )
    init_multi.add_argument(
        "--unet",
        required=True,
        metavar="UNET_FOLDER|tiny",
        help="a diffusers UNet folder, a pipeline folder holding unet/ (its vae/ and "
        "scheduler/ are used too), or 'tiny': a small pixel-space UNet for CPU trials",
    )
    init_multi.add_argument("--out", required=True, help="model folder to write")
    init_multi.add_argument("--vae", default=None, help="diffusers VAE folder (latent UNets)")
    init_multi.add_argument(
        "--id-dim", type=int, default=128, help="identity embedding size of the training set"
    )
    init_multi.add_argument("--tokens", type=int, default=8, help="tokens per identity")
    init_multi.add_argument(
        "--prediction",
        default=None,
        choices=["epsilon", "v_prediction"],
        help="training target (default: the pipeline's schedule, else epsilon)",
    )
    init_multi.add_argument(
        "--size", type=int, default=32, choices=[32, 64], help="image size of --unet tiny"
    )
    init_multi.add_argument("--seed", type=int, default=0)
    init_multi.add_argument(
        "--identity-from",
        default=None,
        metavar="IDIFF_FACE_DIR",
        help="start the adapter from this IDiff-Face model's identity path (its context "
        "projection and cross-attention weights; for a base made by train-multi-id-base "
        "from it) instead of a zero output",
    )
    init_multi.set_defaults(func=cmd_generator_init_multi_id)

    train_multi = actions.add_parser(
        "train-multi-id",
        help="train or resume a multi-identity adapter on group canvases of a training set",
        description="Trains only the identity adapter of MODEL_DIR on group images pasted "
        "from DATA's aligned faces (K different people per image, known boxes). Resumes "
        "from OUT when it holds a checkpoint; writes OUT/model (a model folder for "
        "generation), OUT/history.json and OUT/checkpoint/ (what a resume reads). "
        "Without --identity-model only the diffusion loss trains.",
    )
    train_multi.add_argument("data", metavar="DATA.npz", help="training set from prepare-lfw")
    train_multi.add_argument("--model", required=True, help="model folder from init-multi-id")
    train_multi.add_argument("--out", required=True, help="training folder (checkpoint, model/)")
    train_multi.add_argument("--steps", type=int, default=2000, help="total steps")
    train_multi.add_argument("--batch-size", type=int, default=8)
    train_multi.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    train_multi.add_argument("--faces-per-image", type=int, default=2)
    train_multi.add_argument(
        "--face-counts",
        type=face_counts,
        default=None,
        metavar="K,K,...",
        help="cycle the faces per canvas over these counts, one per step (e.g. 2,3,4)",
    )
    add_box_arguments(train_multi)
    train_multi.add_argument(
        "--no-region-masks",
        action="store_true",
        help="identity attention over the whole image (WithAnyone's no-mask baseline)",
    )
    train_multi.add_argument(
        "--background", default="noise", choices=["noise", "grey"], help="canvas background"
    )
    train_multi.add_argument(
        "--identity-model",
        default=None,
        metavar="PATH",
        help="'sface' (the differentiable torch SFace, the conditioning space) or "
        "recognizer weights (backbone.safetensors or arcface_torch .pth) for the "
        "identity and InfoNCE losses",
    )
    train_multi.add_argument(
        "--person-negatives",
        action="store_true",
        help="InfoNCE also against every training person's mean condition (not only the "
        "in-batch identities); needs --identity-model sface (the conditions' space)",
    )
    train_multi.add_argument("--identity-backbone", default="r50", help="e.g. r18, r50, r100")
    train_multi.add_argument("--identity-features", type=int, default=512)
    train_multi.add_argument("--checkpoint-every", type=int, default=100, help="steps")
    train_multi.add_argument("--seed", type=int, default=0)
    train_multi.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    train_multi.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train_multi.set_defaults(func=cmd_generator_train_multi_id)

    train_base = actions.add_parser(
        "train-multi-id-base",
        help="teach a trained IDiff-Face UNet to draw group canvases (a multi-id base)",
        description="Converts the IDiff-Face model (its empty-identity context folded into "
        "the time embedding) into a plain UNet of --canvas px and fine-tunes every weight "
        "with the diffusion loss on group canvases of DATA's faces (K different people "
        "pasted per canvas). Resumes from OUT; writes OUT/base (unet/ + scheduler/, the "
        "--unet of init-multi-id), OUT/checkpoint and OUT/history.json.",
    )
    train_base.add_argument("data", metavar="DATA.npz", help="training set from prepare-lfw")
    train_base.add_argument(
        "--idiff-face", default="models/idiff-face-lfw", help="IDiff-Face model folder"
    )
    train_base.add_argument("--out", required=True, help="training folder (checkpoint, base/)")
    train_base.add_argument("--steps", type=int, default=1500, help="total steps")
    train_base.add_argument("--batch-size", type=int, default=16)
    train_base.add_argument("--lr", type=float, default=2e-4, help="learning rate")
    train_base.add_argument("--canvas", type=int, default=64, help="canvas size in pixels")
    train_base.add_argument(
        "--face-counts", type=face_counts, default=[2, 3, 4], metavar="K,K,...",
        help="faces per canvas, cycled per step (default 2,3,4)",
    )  # fmt: skip
    add_box_arguments(train_base)
    train_base.add_argument("--checkpoint-every", type=int, default=100, help="steps")
    train_base.add_argument("--seed", type=int, default=0)
    train_base.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train_base.set_defaults(func=cmd_generator_train_multi_id_base)

    tiny_sd = actions.add_parser(
        "tiny-sd",
        help="write a tiny random Stable Diffusion pipeline (try ID-Booth on a CPU)",
        description="Writes a randomly initialised SD-style pipeline (UNet, AutoencoderKL, "
        "CLIP text model + byte-level tokenizer, DDPM scheduler; a few MB) in the diffusers "
        "layout that ID-Booth expects, so recipes/id-booth.yaml can be tried end to end on a "
        "CPU with --set generate.model=OUT. Its images are noise: real work needs "
        "a real SD 1.5 / 2.1 / SDXL folder.",
    )
    tiny_sd.add_argument("out", help="folder to write")
    tiny_sd.add_argument("--size", type=int, default=32, help="image size in pixels")
    tiny_sd.add_argument("--seed", type=int, default=0)
    tiny_sd.set_defaults(func=cmd_generator_tiny_sd)
