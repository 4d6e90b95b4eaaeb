"""A model folder records what its generator was trained on (``training_set.yaml``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facefoundry.generators.chunks import folder_checksum
from facefoundry.generators.training_data import FaceTrainingSet
from facefoundry.generators.training_record import (
    RECORD_FILE,
    TrainingRecord,
    lfw_people_file_of,
    read_training_record,
    record_of,
    write_training_record,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "idiff-face-lfw"


def _training_set(names: list[str], source: dict | None = None, dim: int = 12) -> FaceTrainingSet:
    n = len(names)
    persons = [name.split("/", 1)[0] for name in names]
    labels = np.unique(persons, return_inverse=True)[1].reshape(-1)
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((n, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return FaceTrainingSet(
        np.zeros((n, 4, 4, 3), dtype=np.uint8),
        embeddings,
        labels.astype(np.int64),
        names,
        {"name": "sface", "dim": dim, "checksum": "abc"},
        source,
    )


def test_the_source_travels_with_the_training_set_into_the_record(tmp_path):
    names = ["Ann_Lee/Ann_Lee_0001.jpg", "Ann_Lee/Ann_Lee_0002.jpg", "Bo_Chen/Bo_Chen_0001.jpg"]
    data = _training_set(names, {"source": "lfw", "people_file": "peopleDevTrain.txt"})
    path = data.save(tmp_path / "set.npz")
    loaded = FaceTrainingSet.load(path)
    assert loaded.source == {"source": "lfw", "people_file": "peopleDevTrain.txt"}
    assert FaceTrainingSet.load(_training_set(names).save(tmp_path / "old.npz")).source is None

    record = record_of(loaded, path)
    assert record == TrainingRecord(
        source="lfw",
        people_file="peopleDevTrain.txt",
        unseen_people="peopleDevTest.txt",
        images=3,
        people=2,
        embedder={"name": "sface", "checksum": "abc"},
        data="set.npz",
    )
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    before = folder_checksum(model)
    assert write_training_record(model, record) == model / RECORD_FILE
    assert read_training_record(model) == record
    assert read_training_record(model).lfw_people == "peopleDevTrain.txt"
    # a record of the data does not decide the images: the model's checksum stays
    assert folder_checksum(model) == before

    assert read_training_record(tmp_path / "no-such-model") is None
    assert read_training_record(None) is None
    other = TrainingRecord(source="my-photos", images=5, people=2)
    write_training_record(tmp_path / "mine", other)
    assert read_training_record(tmp_path / "mine").lfw_people is None
    (tmp_path / "mine" / RECORD_FILE).write_text("source: lfw\nimages: many\n")
    with pytest.raises(ValueError, match="cannot read the training record"):
        read_training_record(tmp_path / "mine")


def test_an_older_lfw_training_set_is_traced_to_its_people_file(lfw):
    from facefoundry.evaluation.lfw import people_images, read_people

    names, _ = people_images(read_people(lfw.protocol_file("peopleDevTrain.txt")))
    assert lfw_people_file_of(names, lfw) == "peopleDevTrain.txt"
    some_missing = names[:3] + names[4:]  # an image without a face: same people
    assert lfw_people_file_of(some_missing, lfw) == "peopleDevTrain.txt"
    record = record_of(_training_set(some_missing), lfw=lfw)
    assert (record.source, record.people_file) == ("lfw", "peopleDevTrain.txt")
    assert (record.images, record.people) == (len(names) - 1, 4038)
    # a few people of a file are not that file's people; other names are not LFW at all
    assert lfw_people_file_of(names[:50], lfw) is None
    assert record_of(_training_set(["0", "1"]), lfw=lfw) is None


def test_the_default_model_records_lfw_devtrain():
    record = read_training_record(DEFAULT_MODEL)
    assert record is not None and record.lfw_people == "peopleDevTrain.txt"
    assert record.unseen_people == "peopleDevTest.txt"
    assert (record.images, record.people) == (9525, 4038)  # as its model card says
    data = REPO / "data" / "lfw-devtrain-sface-64.npz"
    if data.is_file():  # the training set it was trained on
        with np.load(data) as arrays:
            assert len(arrays["labels"]) == record.images
            assert len(np.unique(arrays["labels"])) == record.people


def test_training_writes_the_record_into_the_exported_model(tmp_path):
    from facefoundry.generators.idiff_face.train import TrainSettings, train_idiff_face
    from tests.helpers.generators import tiny_config

    names = [f"P{i}/P{i}_0001.jpg" for i in range(4)] + ["P0/P0_0002.jpg"]
    source = {"source": "lfw", "people_file": "peopleDevTrain.txt"}
    data = _training_set(names, source).save(tmp_path / "tiny.npz")
    settings = TrainSettings(steps=1, batch_size=2, warmup_steps=1, checkpoint_every=1000)
    model = train_idiff_face(data, tmp_path / "run", tiny_config(), settings)
    record = read_training_record(model)
    assert (record.lfw_people, record.images, record.people, record.data) == (
        "peopleDevTrain.txt",
        5,
        4,
        "tiny.npz",
    )
