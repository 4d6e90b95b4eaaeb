"""CLI commands for identities, the IDiff-Face and multi-identity generators and recognizer
training."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def cmd_identities(args: argparse.Namespace) -> int:
    from pathlib import Path

    from generators.identities import PRIOR_FILE, make_identities

    table = make_identities(
        args.count,
        args.dim,
        args.seed,
        args.method,
        args.tau,
        embedder=args.embedder,
        prior=Path(args.model) / PRIOR_FILE,
    )
    path = table.save(args.out)
    print(json.dumps({"identities": len(table), "method": table.method, "out": str(path)}))
    return 0


def cmd_prepare_lfw(args: argparse.Namespace) -> int:
    from evaluation.lfw import Lfw, people_images, read_people
    from generators.training_data import build_training_set

    lfw = Lfw(args.lfw)
    people = read_people(lfw.protocol_file(args.people))
    names, labels = people_images(people)
    data, summary = build_training_set(
        list(lfw.read_many(names)),
        labels,
        size=args.size,
        embedder=args.embedder,
        workers=args.workers,
    )
    data.save(args.out)
    print(
        json.dumps({"images": len(names), "kept": len(data), "outcomes": summary, "out": args.out})
    )
    return 0


def cmd_generator_train(args: argparse.Namespace) -> int:
    from generators.idiff_face.config import PAPER_CONFIG, IDiffFaceConfig
    from generators.idiff_face.train import TrainSettings, train_idiff_face

    config = PAPER_CONFIG if args.config == "paper" else IDiffFaceConfig()
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        threads=args.threads,
        seed=args.seed,
    )
    model = train_idiff_face(
        args.data,
        args.out,
        config,
        settings,
        resume=not args.restart,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
    )
    print(json.dumps({"model": str(model)}))
    return 0


def cmd_generator_sample(args: argparse.Namespace) -> int:
    from generators.identities import IdentityTable
    from generators.idiff_face.generate import generate_chunk
    from generators.settings import GenerateSettings

    settings = GenerateSettings(
        model=args.model,
        samples_per_identity=args.per_identity,
        scheduler=args.scheduler,
        steps=args.steps,
        guidance_scale=args.guidance,
        batch_size=args.batch_size,
        chunk_identities=args.chunk,
    )
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


def cmd_generator_init_multi_id(args: argparse.Namespace) -> int:
    from generators.with_anyone.fit import init_model_folder

    out = init_model_folder(
        args.out,
        args.unet,
        id_dim=args.id_dim,
        tokens=args.tokens,
        vae=args.vae,
        prediction_type=args.prediction,
        tiny_size=args.size,
        seed=args.seed,
    )
    print(json.dumps({"model": str(out)}))
    return 0


def cmd_generator_train_multi_id(args: argparse.Namespace) -> int:
    import torch

    from generators.with_anyone.fit import fit_adapter
    from generators.with_anyone.settings import MultiIdSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    fields = {
        "faces_per_image": args.faces_per_image,
        "learning_rate": args.lr,
        "device": args.device,
    }
    if args.identity_model:
        from evaluation.export import load_backbone

        network = load_backbone(args.identity_model, args.identity_backbone, args.identity_features)
    else:
        logger.warning(
            "no --identity-model: identity and InfoNCE losses are off (diffusion loss only)"
        )
        network = torch.nn.Identity()
        fields.update(id_loss_weight=0.0, infonce_weight=0.0)
    settings = MultiIdSettings(**fields)
    model = fit_adapter(
        args.model,
        args.data,
        args.out,
        network,
        steps=args.steps,
        batch_size=args.batch_size,
        settings=settings,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        background=args.background,
    )
    print(json.dumps({"model": str(model), "history": str(Path(args.out) / "history.json")}))
    return 0


def cmd_generator_tiny_sd(args: argparse.Namespace) -> int:
    from generators.id_booth.tiny import make_tiny_sd

    folder = make_tiny_sd(args.out, seed=args.seed, image_size=args.size)
    print(f"tiny random SD pipeline: {folder} (set generate.id_booth.base to it)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from evaluation.fr_train import train_recognizer
    from flows.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    out = train_recognizer(args.shards, args.out, recipe.train, args.lfw, resume=not args.restart)
    print(json.dumps({"model": str(out), "onnx": str(Path(out) / "model.onnx")}))
    return 0


def cmd_lfw_shards(args: argparse.Namespace) -> int:
    from evaluation.lfw_shards import write_lfw_shards

    out = write_lfw_shards(args.out, args.lfw, args.people, args.workers)
    print(json.dumps({"shards": str(out)}))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    identities = commands.add_parser(
        "identities",
        help="sample synthetic identities into identities.parquet",
        description="Draw identity vectors: uniform on the sphere, 'separated' (no two "
        "closer than cosine --tau), or 'fitted' (a Gaussian fitted to the --model generator's "
        "training embeddings, separated by --tau: what the small default model follows best). "
        "Saved as a parquet table (identity, method, seed, embedding).",
    )
    identities.add_argument("--count", type=int, required=True)
    identities.add_argument("--dim", type=int, default=128, help="128 for sface, 512 ArcFace")
    identities.add_argument(
        "--method", default="separated", choices=["uniform", "separated", "fitted"]
    )
    identities.add_argument(
        "--model",
        default="models/idiff-face-lfw",
        help="generator folder holding identity_prior.safetensors (method fitted)",
    )
    identities.add_argument("--tau", type=float, default=0.3)
    identities.add_argument("--seed", type=int, default=0)
    identities.add_argument("--embedder", default="sface", help="space the vectors live in")
    identities.add_argument("--out", required=True)
    identities.set_defaults(func=cmd_identities)

    generator = commands.add_parser(
        "generator", help="IDiff-Face and multi-identity generators: prepare data, train, sample"
    )
    gen_sub = generator.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = gen_sub.add_parser(
        "prepare-lfw", help="align + embed LFW people into a generator training set (.npz)"
    )
    prepare.add_argument("--out", required=True)
    prepare.add_argument(
        "--people",
        default="peopleDevTrain.txt",
        help="people list; DevTrain keeps DevTest people unseen",
    )
    prepare.add_argument("--size", type=int, default=64, help="stored face size in pixels")
    prepare.add_argument("--embedder", default="sface", help="conditioning embedder")
    prepare.add_argument("--lfw", default=None)
    prepare.add_argument("--workers", type=int, default=2)
    prepare.set_defaults(func=cmd_prepare_lfw)

    train = gen_sub.add_parser(
        "train",
        help="train or resume an IDiff-Face model",
        description="Resumes from OUT/checkpoint unless --restart; "
        "exports EMA weights to OUT/model (safetensors).",
    )
    train.add_argument("data", help="training set .npz from prepare-lfw")
    train.add_argument("--out", required=True)
    train.add_argument("--config", default="small", choices=["small", "paper"])
    train.add_argument("--steps", type=int, default=20000)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--threads", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after")
    train.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    train.add_argument(
        "--init-from",
        default=None,
        help="start from a model folder's weights when there is no checkpoint "
        "(e.g. models/idiff-face-lfw)",
    )
    train.set_defaults(func=cmd_generator_train)

    sample = gen_sub.add_parser("sample", help="generate candidate images for identities")
    sample.add_argument("model", help="model folder (e.g. models/idiff-face-lfw)")
    sample.add_argument("--identities", required=True, help="identities.parquet")
    sample.add_argument("--out", required=True, help="folder for part-NNNNN.tar/.parquet")
    sample.add_argument("--per-identity", type=int, default=8)
    sample.add_argument(
        "--scheduler", default="dpmsolver++", choices=["dpmsolver++", "unipc", "ddim", "ddpm"]
    )
    sample.add_argument("--steps", type=int, default=25)
    sample.add_argument("--guidance", type=float, default=1.0)
    sample.add_argument("--batch-size", type=int, default=64)
    sample.add_argument("--chunk", type=int, default=50, help="identities per chunk")
    sample.add_argument("--seed", type=int, default=0, help="recipe seed")
    sample.set_defaults(func=cmd_generator_sample)

    init_multi = gen_sub.add_parser(
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
    init_multi.set_defaults(func=cmd_generator_init_multi_id)

    train_multi = gen_sub.add_parser(
        "train-multi-id",
        help="train or resume a multi-identity adapter on group canvases of a training set",
        description="Trains only the identity adapter of MODEL_DIR on group images pasted "
        "from DATA's aligned faces (K different people per image, known boxes). Resumes "
        "from OUT when it holds a checkpoint; writes OUT/model (a model folder for "
        "generation), OUT/history.json, OUT/state.json and OUT/optimizer.safetensors. "
        "Without --identity-model only the diffusion loss trains.",
    )
    train_multi.add_argument("data", metavar="DATA.npz", help="training set from prepare-lfw")
    train_multi.add_argument("--model", required=True, help="model folder from init-multi-id")
    train_multi.add_argument("--out", required=True)
    train_multi.add_argument("--steps", type=int, default=2000, help="total steps")
    train_multi.add_argument("--batch-size", type=int, default=8)
    train_multi.add_argument("--lr", type=float, default=1e-4)
    train_multi.add_argument("--faces-per-image", type=int, default=2)
    train_multi.add_argument(
        "--background", default="noise", choices=["noise", "grey"], help="canvas background"
    )
    train_multi.add_argument(
        "--identity-model",
        default=None,
        metavar="PATH",
        help="recognizer weights (backbone.safetensors or arcface_torch .pth) for the "
        "identity and InfoNCE losses",
    )
    train_multi.add_argument("--identity-backbone", default="r50", help="e.g. r18, r50, r100")
    train_multi.add_argument("--identity-features", type=int, default=512)
    train_multi.add_argument("--checkpoint-every", type=int, default=100)
    train_multi.add_argument("--seed", type=int, default=0)
    train_multi.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    train_multi.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train_multi.set_defaults(func=cmd_generator_train_multi_id)

    tiny_sd = gen_sub.add_parser(
        "tiny-sd",
        help="write a tiny random Stable Diffusion pipeline (try ID-Booth on a CPU)",
        description="Writes a randomly initialised SD-style pipeline (UNet, AutoencoderKL, "
        "CLIP text model + byte-level tokenizer, DDPM scheduler; a few MB) in the diffusers "
        "layout that ID-Booth expects, so recipes/id-booth.yaml can be tried end to end on a "
        "CPU with --set generate.id_booth.base=OUT. Its images are noise: real work needs "
        "a real SD 1.5 / 2.1 / SDXL folder.",
    )
    tiny_sd.add_argument("out", help="folder to write")
    tiny_sd.add_argument("--size", type=int, default=32, help="image size in pixels")
    tiny_sd.add_argument("--seed", type=int, default=0)
    tiny_sd.set_defaults(func=cmd_generator_tiny_sd)

    fr = commands.add_parser(
        "train",
        help="train a recognizer on shards, export ONNX",
        description="Train the recipe's `train` section on SHARDS_DIR (LFW validation each "
        "epoch), resume from OUT/checkpoint, export OUT/backbone.safetensors and OUT/model.onnx. "
        "Evaluate with: facefoundry eval lfw --embedder onnx:OUT/model.onnx",
    )
    fr.add_argument("shards", metavar="SHARDS_DIR")
    fr.add_argument("--out", required=True)
    fr.add_argument("--recipe", default=None)
    fr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. --set train.epochs=5 --set train.backbone=r50",
    )
    fr.add_argument("--lfw", default=None)
    fr.add_argument("--restart", action="store_true")
    fr.set_defaults(func=cmd_train)

    lfw_shards = commands.add_parser(
        "lfw-shards", help="real-data shards from LFW people (the authentic baseline)"
    )
    lfw_shards.add_argument("--out", required=True)
    lfw_shards.add_argument("--people", default="peopleDevTrain.txt")
    lfw_shards.add_argument("--lfw", default=None)
    lfw_shards.add_argument("--workers", type=int, default=2)
    lfw_shards.set_defaults(func=cmd_lfw_shards)
