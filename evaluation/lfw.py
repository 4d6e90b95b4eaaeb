"""Locating LFW and reading its images straight from the archive.

LFW lives under ``$FACEFOUNDRY_DATA_DIR/lfw`` (or a path given by flag/recipe) as
``lfw-deepfunneled.tgz`` or an extracted ``lfw-deepfunneled/`` folder, beside the
protocol files. The data folder may be read-only (CI), so random access goes
through a cache: the archive is decompressed once into a plain tar plus an index of
member offsets under ``$FACEFOUNDRY_CACHE_DIR`` (default ``~/.cache/facefoundry``);
13,233 JPEGs are never unpacked into 13,233 files.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from facefoundry.atomic import atomic_path, write_text_atomic
from facefoundry.errors import UsageError

logger = logging.getLogger(__name__)

ARCHIVE_NAME = "lfw-deepfunneled.tgz"
FOLDER_NAME = "lfw-deepfunneled"
PROTOCOL_FILES = (
    "pairs.txt",
    "pairsDevTrain.txt",
    "pairsDevTest.txt",
    "people.txt",
    "peopleDevTrain.txt",
    "peopleDevTest.txt",
)


class LfwNotFoundError(UsageError, FileNotFoundError):
    """LFW is not where we looked; the message says where and how to get it."""


def data_dir(override: str | Path | None = None) -> Path:
    """The data root: explicit override, else $FACEFOUNDRY_DATA_DIR, else ./data."""
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("FACEFOUNDRY_DATA_DIR", "data")).expanduser()


def cache_dir() -> Path:
    """Where derived files go (the data folder may be read-only)."""
    default = Path.home() / ".cache" / "facefoundry"
    return Path(os.environ.get("FACEFOUNDRY_CACHE_DIR", default)).expanduser()


def image_name(person: str, number: int) -> str:
    """LFW's relative image path, e.g. ``Abel_Pacheco/Abel_Pacheco_0001.jpg``."""
    return f"{person}/{person}_{int(number):04d}.jpg"


def archive_key(path: Path, sample: int = 1 << 20) -> str:
    """The archive's cache folder name: its size and a hash of its first and last MiB.

    Why not its mtime: a data folder provisioned again with the same archive gets a new
    mtime, and each one cost a fresh decompression and another 130 MB of cache."""
    import hashlib

    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(sample))
        handle.seek(max(size - sample, 0))
        digest.update(handle.read(sample))
    return f"{size}-{digest.hexdigest()[:16]}"


class Lfw:
    """One LFW copy: protocol files plus image bytes by relative name."""

    def __init__(self, root: str | Path | None = None):
        root = Path(root) if root else data_dir() / "lfw"
        if not (root / "pairs.txt").is_file() and (root / "lfw" / "pairs.txt").is_file():
            root = root / "lfw"  # accept the data root as well as the lfw folder
        self.root = root
        self.folder = root / FOLDER_NAME
        self.archive = root / ARCHIVE_NAME
        if not (root / "pairs.txt").is_file() or not (
            self.folder.is_dir() or self.archive.is_file()
        ):
            raise LfwNotFoundError(
                f"LFW not found under {root}: expected pairs.txt and {ARCHIVE_NAME} (or an "
                f"extracted {FOLDER_NAME}/). Set FACEFOUNDRY_DATA_DIR to the folder that holds "
                "lfw/, pass --lfw PATH, or run `facefoundry data lfw --dest DIR` when online."
            )
        self._index: dict[str, tuple[int, int]] | None = None
        self._tar_path: Path | None = None

    def protocol_file(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise LfwNotFoundError(f"LFW protocol file {path} is missing")
        return path

    # --- random access ------------------------------------------------------------------
    def _ensure_index(self) -> None:
        if self._index is not None or self.folder.is_dir():
            return
        target = cache_dir() / "lfw" / archive_key(self.archive)
        tar_path, index_path = target / f"{FOLDER_NAME}.tar", target / "index.json"
        if not index_path.is_file():
            target.mkdir(parents=True, exist_ok=True)
            logger.info("decompressing %s into %s (once)", self.archive, tar_path)
            index = {}
            with atomic_path(tar_path) as partial:
                with gzip.open(self.archive, "rb") as source, open(partial, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 22)
                with tarfile.open(partial, "r:") as tar:
                    for member in tar:
                        if member.isfile():
                            name = member.name.split("/", 1)[1]
                            index[name] = (member.offset_data, member.size)
            write_text_atomic(index_path, json.dumps(index))
        self._index = {k: tuple(v) for k, v in json.loads(index_path.read_text()).items()}
        self._tar_path = tar_path

    def names(self) -> list[str]:
        """Every image's relative name, sorted."""
        if self.folder.is_dir():
            return sorted(str(p.relative_to(self.folder)) for p in self.folder.glob("*/*.jpg"))
        self._ensure_index()
        return sorted(self._index)

    def read(self, name: str) -> bytes:
        """The JPEG bytes of one image, e.g. ``read(image_name('Abel_Pacheco', 1))``."""
        if self.folder.is_dir():
            path = self.folder / name
            if not path.is_file():
                raise KeyError(f"{name} is not in {self.folder}")
            return path.read_bytes()
        self._ensure_index()
        if name not in self._index:
            raise KeyError(f"{name} is not in {self.archive}")
        offset, size = self._index[name]
        with open(self._tar_path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def read_many(self, names: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """(name, bytes) for each name, in the given order."""
        if self.folder.is_dir():
            for name in names:
                yield name, self.read(name)
            return
        self._ensure_index()
        with open(self._tar_path, "rb") as handle:
            for name in names:
                if name not in self._index:
                    raise KeyError(f"{name} is not in {self.archive}")
                offset, size = self._index[name]
                handle.seek(offset)
                yield name, handle.read(size)


def read_people(path: str | Path) -> list[tuple[str, int]]:
    """(name, image count) rows of people.txt / peopleDevTrain.txt / peopleDevTest.txt.

    people.txt repeats a set-count header before each of its 10 sets; the Dev files
    have one header. Lines with a single number are headers.
    """
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            rows.append((parts[0], int(parts[1])))
    return rows


def people_images(people: list[tuple[str, int]]) -> tuple[list[str], list[int]]:
    """Image names of (name, count) rows and the person index of each image."""
    names, labels = [], []
    for index, (person, count) in enumerate(people):
        for number in range(1, count + 1):
            names.append(image_name(person, number))
            labels.append(index)
    return names, labels
