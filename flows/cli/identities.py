"""``facefoundry identities``: sample synthetic identity vectors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facefoundry.flows.cli._common import at_least_one, positive_int

DESCRIPTION = """\
Draw identity vectors and save them as a parquet table (identity, method, seed,
embedding) at --out: uniform on the sphere, 'separated' (no two closer than cosine
--tau), or 'fitted' (a Gaussian fitted to the --model generator's training
embeddings, read from its identity_prior.safetensors, separated by --tau: what the
small default model follows best). --pool K > 1 draws K x --count candidates and
keeps the --count whose faces the --model's realisation map predicts apart
(`generator fit-realisation`; recipes: identities.select: predicted)."""


def cmd_identities(args: argparse.Namespace) -> int:
    import math

    from facefoundry.generators.identities import PRIOR_FILE, make_identities

    table = make_identities(
        math.ceil(args.count * args.pool),
        args.dim,
        args.seed,
        args.method,
        args.tau,
        embedder=args.embedder,
        prior=Path(args.model) / PRIOR_FILE,
        spread=args.spread,
    )
    if args.pool > 1:
        from facefoundry.generators.realisation import REALISATION_FILE, predicted_subset

        table = predicted_subset(table, args.count, Path(args.model) / REALISATION_FILE)
    path = table.save(args.out)
    print(json.dumps({"identities": len(table), "method": table.method, "out": str(path)}))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    identities = commands.add_parser(
        "identities",
        help="sample synthetic identities into identities.parquet",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    identities.add_argument("--count", type=positive_int, required=True, help="identities to draw")
    identities.add_argument(
        "--dim", type=positive_int, default=128, help="128 for sface, 512 ArcFace"
    )
    identities.add_argument(
        "--method", default="separated", choices=["uniform", "separated", "fitted"]
    )
    identities.add_argument(
        "--model",
        default="models/idiff-face-lfw",
        help="generator folder holding identity_prior.safetensors (method fitted)",
    )
    identities.add_argument(
        "--tau", type=float, default=0.3, help="largest cosine between two identities"
    )
    identities.add_argument(
        "--spread",
        type=float,
        default=1.0,
        help="fitted: scale of the draws' deviations from the prior mean (1 = training spread)",
    )
    identities.add_argument(
        "--pool",
        type=at_least_one,
        default=1.0,
        help="> 1: draw this many candidates per identity, keep those the --model's "
        "realisation map predicts apart",
    )
    identities.add_argument("--seed", type=int, default=0)
    identities.add_argument("--embedder", default="sface", help="space the vectors live in")
    identities.add_argument("--out", required=True, help="identities .parquet file to write")
    identities.set_defaults(func=cmd_identities)
