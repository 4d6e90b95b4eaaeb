"""Fetch LFW (deep-funneled images + protocol files) when online, verify it, and say
exactly what to do when offline."""

from __future__ import annotations

import hashlib
import logging
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from facefoundry.atomic import atomic_path
from facefoundry.errors import FacefoundryError
from facefoundry.evaluation.lfw import ARCHIVE_NAME, PROTOCOL_FILES

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://vis-www.cs.umass.edu/lfw/"
# The protocol files are byte-identical to the LFW site's (see shared/data/lfw).
PROTOCOL_SHA256 = {
    "pairs.txt": "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592",
    "pairsDevTest.txt": "7cb06600ea8b2814ac26e946201cdb304296262aad67d046a16a7ec85d0ff87c",
    "pairsDevTrain.txt": "1d454dada7dfeca0e7eab6f65dc4e97a6312d44cf142207be28d688be92aabfa",
    "people.txt": "bc8fa2b7f25c895cf7efb6de4f4fc27ca8b8d1cfa63350ad8b96eae2b198d365",
    "peopleDevTest.txt": "c3ed1f90499473401542101a56c14c1d82396bb8218c67a356d7460601047555",
    "peopleDevTrain.txt": "2e58df13ba4cc143189336e001cc2c195f1dfa5b29a6475c02857be353c2a2fa",
}
EXPECTED_IMAGES, EXPECTED_PEOPLE = 13233, 5749


class OfflineError(FacefoundryError, RuntimeError):
    """No network: the message lists the manual steps."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def offline_instructions(dest: Path, base_url: str) -> str:
    files = "\n".join(f"  {base_url}{name}" for name in (ARCHIVE_NAME, *PROTOCOL_FILES))
    return (
        f"Cannot reach {base_url} (offline?). To set up LFW by hand:\n"
        f"1. On a machine with internet, download:\n{files}\n"
        f"2. Put them in {dest / 'lfw'}/ (keep {ARCHIVE_NAME} packed; no need to extract).\n"
        f"3. export FACEFOUNDRY_DATA_DIR={dest}\n"
        f"4. Check: facefoundry eval lfw --embedder sface --pairs devtest"
    )


def check_archive(path: Path) -> tuple[int, int]:
    """(images, people) in an LFW archive; raises if it is not the deep-funneled set."""
    images, people = 0, set()
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                images += 1
                people.add(member.name.split("/")[1])
    if images != EXPECTED_IMAGES or len(people) != EXPECTED_PEOPLE:
        raise ValueError(
            f"{path}: {images} images of {len(people)} people; LFW has "
            f"{EXPECTED_IMAGES} of {EXPECTED_PEOPLE}: incomplete or a different archive"
        )
    return images, len(people)


def download_lfw(dest: str | Path, base_url: str = DEFAULT_BASE_URL, timeout: float = 30) -> Path:
    """Download into ``dest/lfw``, verify checksums and contents; returns that folder."""
    target = Path(dest) / "lfw"
    target.mkdir(parents=True, exist_ok=True)
    for name in (*PROTOCOL_FILES, ARCHIVE_NAME):
        path = target / name
        if path.is_file() and (
            name not in PROTOCOL_SHA256 or _sha256(path) == PROTOCOL_SHA256[name]
        ):
            continue
        with atomic_path(path) as partial:
            try:
                with (
                    urllib.request.urlopen(base_url + name, timeout=timeout) as response,
                    open(partial, "wb") as sink,
                ):
                    while block := response.read(1 << 20):
                        sink.write(block)
            except (urllib.error.URLError, OSError) as error:
                message = f"{error}\n" + offline_instructions(Path(dest), base_url)
                raise OfflineError(message) from error
            expected = PROTOCOL_SHA256.get(name)
            if expected and _sha256(partial) != expected:
                raise ValueError(
                    f"{name} from {base_url} has the wrong SHA-256 (expected {expected})"
                )
    check_archive(target / ARCHIVE_NAME)
    sums = {name: _sha256(target / name) for name in (*PROTOCOL_FILES, ARCHIVE_NAME)}
    (target / "SHA256SUMS").write_text("".join(f"{v}  {k}\n" for k, v in sums.items()))
    return target
