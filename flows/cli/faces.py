"""``facefoundry faces embed``: detection, alignment and embeddings of images."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from facefoundry.errors import UsageError
from facefoundry.faces.specs import EMBEDDER_HELP
from facefoundry.flows.cli._common import DETECTOR_HELP, RAW, check_models

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")

EMBED_DESCRIPTION = """\
Read every image of a folder (recursively) or of a .tgz/.tar archive, detect the
face, align it and embed it; write one parquet row per image to --out: key, status
(ok, no_face, bad_image, bad_embedding), error, detection score, box, 5 landmarks
and the embedding. Failures are rows too, so the table always has every image."""


def _iter_inputs(source: Path) -> Iterator[tuple[str, Path | bytes]]:
    from facefoundry.faces.io import IMAGE_SUFFIXES

    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield str(path.relative_to(source)), path
    elif source.name.endswith(ARCHIVE_SUFFIXES):
        import tarfile

        with tarfile.open(source) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                    handle = tar.extractfile(member)
                    yield member.name, handle.read() if handle else b""


def read_inputs(source: Path) -> list[tuple[str, Path | bytes]]:
    """(key, path or bytes) of every image in ``source``; a clear error for a missing
    source, another kind of file or an archive that cannot be read to its end."""
    import tarfile
    import zlib

    if not source.exists():
        raise UsageError(f"{source} does not exist: give a folder of images or a .tgz/.tar")
    if not source.is_dir() and not source.name.endswith(ARCHIVE_SUFFIXES):
        raise UsageError(f"{source} is not a folder or a .tgz/.tar archive of images")
    try:
        return list(_iter_inputs(source))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        reason = str(error).splitlines()[0].rstrip(":") if str(error) else type(error).__name__
        if isinstance(error, tarfile.ReadError) and reason.startswith("file could not be opened"):
            reason = "not a tar or gzip-compressed tar"
        raise UsageError(
            f"{source} cannot be read as an archive ({reason}): is it complete? "
            "give a folder of images or a .tgz/.tar"
        ) from error


def cmd_faces_embed(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from facefoundry.faces import get_embedder, process_images_parallel, result_to_table

    items = read_inputs(Path(args.source))
    if not items:
        raise UsageError(f"no images found in {args.source}")
    check_models(args.embedder, args.detector)
    result = process_images_parallel(
        items,
        args.detector,
        args.embedder,
        workers=args.workers,
        no_face="reject",
        policy=args.selection,
        progress=not args.quiet,
        description="embed",
    )
    table = result_to_table(result, get_embedder(args.embedder).describe())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    print(json.dumps({"images": len(items), "outcomes": result.summary(), "out": str(out)}))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    faces = commands.add_parser(
        "faces",
        help="detection, alignment, embeddings",
        description="Face detection, alignment and identity embeddings of image files.",
    )
    actions = faces.add_subparsers(dest="action", required=True, metavar="ACTION")
    embed = actions.add_parser(
        "embed",
        help="embed every image of a folder or archive into a parquet table",
        description=EMBED_DESCRIPTION,
        formatter_class=RAW,
    )
    embed.add_argument("source", help="a folder of images or a .tgz/.tar archive")
    embed.add_argument("--out", required=True, help="output .parquet file")
    embed.add_argument("--embedder", default="sface", help=EMBEDDER_HELP)
    embed.add_argument("--detector", default="yunet", help=DETECTOR_HELP)
    embed.add_argument(
        "--selection",
        default="central",
        choices=["central", "largest", "score"],
        help="which face when there are several (default: central)",
    )
    embed.add_argument(
        "--workers", type=int, default=2, help="processes (models load once each; default 2)"
    )
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(func=cmd_faces_embed)
