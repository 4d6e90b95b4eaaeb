"""What a generator was trained on, recorded in its model folder (``training_set.yaml``).

The privacy filter reads it: a model trained on LFW people gets those people as its
default privacy reference (``filters.privacy.training_reference``), so synthetic
identities that copy a training person are dropped without the user naming a
reference set. A record is small and human-readable::

    source: lfw
    people_file: peopleDevTrain.txt
    unseen_people: peopleDevTest.txt
    images: 9525
    people: 4038
    embedder: {name: sface, checksum: fb14...}
    data: lfw-devtrain-sface-64.npz

YAML rather than JSON on purpose: ``generators.chunks.folder_checksum`` hashes a model
folder's ``*.json`` and ``*.safetensors`` (what decides the images), and a record of the
training data does not decide them, so adding one leaves the model checksum unchanged.
Folders without a record (tiny test models, user checkpoints) have no default reference.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from facefoundry.atomic import write_text_atomic

if TYPE_CHECKING:
    from facefoundry.evaluation.lfw import Lfw
    from facefoundry.generators.training_data import FaceTrainingSet

logger = logging.getLogger(__name__)

RECORD_FILE = "training_set.yaml"
LFW = "lfw"
# the protocol people files a training set may come from, smallest first
LFW_PEOPLE_FILES = ("peopleDevTrain.txt", "peopleDevTest.txt", "people.txt")
# LFW people a model trained on one Dev file never saw (None: no such protocol file)
UNSEEN = {"peopleDevTrain.txt": "peopleDevTest.txt", "peopleDevTest.txt": "peopleDevTrain.txt"}
_LFW_KEY = re.compile(r"^([^/]+)/\1_\d{4}\.jpg$")


class TrainingRecord(BaseModel):
    """The training data of one model: where it came from and how much of it there was."""

    model_config = ConfigDict(extra="allow")

    format_version: int = 1
    source: str = Field(description="lfw, or another name for data without a real reference")
    people_file: str | None = Field(None, description="LFW people file (source lfw)")
    unseen_people: str | None = Field(
        None, description="LFW people file of people it never saw (calibrates the privacy tau)"
    )
    images: int = Field(ge=0, description="images the model was trained on")
    people: int = Field(ge=0, description="distinct people among them")
    embedder: dict = Field(default_factory=dict, description="conditioning embedder name/checksum")
    data: str | None = Field(None, description="training-set file name")

    @property
    def lfw_people(self) -> str | None:
        """The LFW people file whose people the model saw, when the data came from LFW."""
        return self.people_file if self.source == LFW and self.people_file else None


def write_training_record(model_dir: str | Path, record: TrainingRecord) -> Path:
    """Write ``record`` as ``model_dir/training_set.yaml`` (atomically); returns the path."""
    path = Path(model_dir) / RECORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    document = record.model_dump(mode="json", exclude_none=True)
    write_text_atomic(path, yaml.safe_dump(document, sort_keys=False))
    return path


def read_training_record(model_dir: str | Path | None) -> TrainingRecord | None:
    """The record of a model folder, or None when it has none (or ``model_dir`` is no folder).

    A record that exists but cannot be read is an error, not "no record": silently
    losing it would silently turn the default privacy rule off.
    """
    if not model_dir:
        return None
    path = Path(model_dir) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return TrainingRecord.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValidationError) as error:
        raise ValueError(f"cannot read the training record {path}: {error}") from error


def lfw_people_file_of(names: list[str], lfw: Lfw | None = None) -> str | None:
    """The LFW people file a training set was drawn from, for sets that do not say.

    ``names`` are the set's image keys (``Person/Person_0001.jpg``). A file matches when
    every image is one of its images and the set holds exactly its people (prepare-lfw
    leaves out images without a face, rarely a whole person); the smallest match wins.
    None when the names are not LFW keys, LFW is not found, or no file matches.
    """
    from facefoundry.evaluation.lfw import Lfw, LfwNotFoundError, people_images, read_people

    if not names or not all(_LFW_KEY.match(name) for name in names):
        return None
    try:
        lfw = lfw if lfw is not None else Lfw()
    except LfwNotFoundError as error:
        logger.info("cannot tell which LFW people file the training set came from: %s", error)
        return None
    images = set(names)
    persons = {name.split("/", 1)[0] for name in images}
    for candidate in LFW_PEOPLE_FILES:
        try:
            people = read_people(lfw.protocol_file(candidate))
        except LfwNotFoundError:
            continue
        listed, _ = people_images(people)
        if images <= set(listed) and persons == {person for person, _ in people}:
            return candidate
    return None


def record_of(
    data: FaceTrainingSet, data_path: str | Path | None = None, lfw: Lfw | None = None
) -> TrainingRecord | None:
    """The record of a training set: from its ``source`` (prepare-lfw stores it), else
    inferred for LFW keys (``lfw_people_file_of``); None when its origin is unknown."""
    source = dict(data.source or {})
    if not source.get("people_file"):
        people_file = lfw_people_file_of(list(data.names), lfw)
        if people_file is not None:
            source = {"source": LFW, "people_file": people_file}
    if not source.get("source"):
        return None
    people_file = source.get("people_file")
    return TrainingRecord(
        source=source["source"],
        people_file=people_file,
        unseen_people=source.get("unseen_people") or UNSEEN.get(Path(people_file or "").name),
        images=len(data),
        people=len({int(label) for label in data.labels}),
        embedder={k: data.embedder[k] for k in ("name", "checksum") if k in data.embedder},
        data=Path(data_path).name if data_path else None,
    )


def record_training_set(
    data: FaceTrainingSet, model_dir: str | Path, data_path: str | Path | None = None
) -> Path | None:
    """Write the record of ``data`` into ``model_dir`` when its origin is known.

    Without one nothing is written, and a warning says that the privacy filter has no
    default reference for this model. (A model started ``--init-from`` another records
    only the data of this run.)
    """
    record = record_of(data, data_path)
    if record is None:
        logger.warning(
            "the training data's origin is unknown: %s gets no %s, so the privacy filter "
            "has no default reference for it (give filter.reference)",
            model_dir,
            RECORD_FILE,
        )
        return None
    return write_training_record(model_dir, record)
