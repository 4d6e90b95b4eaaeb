"""Streaming reader: node and worker splits, shuffling, resampling, batches, dtype contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facefoundry.shards import (
    ShardSettings,
    face_to_float,
    finalize,
    make_loader,
    stream_dataset,
    write_split,
)
from tests.helpers.shards import synthetic_samples

N_KEPT = 8 * 5  # 8 identities x 5 kept samples (every 6th of 6 rejected)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("reader")
    settings = ShardSettings(maxcount=6, identities_per_block=100)
    write_split(synthetic_samples(range(8), 6, reject_every=6), directory, settings=settings)
    finalize(directory)
    return directory


def keys(pipeline) -> list[str]:
    return [item[2] for item in pipeline]


def test_each_sample_once_per_epoch_and_shuffle_is_seeded(dataset: Path) -> None:
    plain = keys(stream_dataset(dataset, shuffle=False, with_key=True))
    assert len(plain) == len(set(plain)) == N_KEPT and plain == sorted(plain)
    a = keys(stream_dataset(dataset, seed=1, shuffle_buffer=10, with_key=True))
    b = keys(stream_dataset(dataset, seed=1, shuffle_buffer=10, with_key=True))
    c = keys(stream_dataset(dataset, seed=2, shuffle_buffer=10, with_key=True))
    assert a == b and sorted(a) == plain and a != plain and a != c
    pipeline = stream_dataset(dataset, seed=1, shuffle_buffer=10, with_key=True)
    epoch0, epoch1 = keys(pipeline), keys(pipeline)
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1  # new order each epoch


def test_split_by_node_gives_disjoint_complete_parts(dataset: Path, monkeypatch) -> None:
    parts = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        parts.append(keys(stream_dataset(dataset, seed=5, with_key=True)))
    assert all(parts)
    flat = [k for part in parts for k in part]
    assert len(flat) == len(set(flat)) == N_KEPT


def test_loader_workers_split_shards_and_batches_have_the_documented_types(dataset: Path) -> None:
    pipeline = stream_dataset(dataset, batch_size=4, with_key=True)
    seen = []
    for images, labels, batch_keys in make_loader(pipeline, num_workers=2):
        assert images.dtype == torch.uint8 and images.shape[1:] == (112, 112, 3)
        assert labels.dtype == torch.int64 and len(labels) == len(images) == len(batch_keys)
        assert 0 <= int(labels.min()) and int(labels.max()) < 8
        seen += batch_keys
    assert len(seen) == len(set(seen)) == N_KEPT
    floats = face_to_float(images)
    assert floats.shape[1:] == (3, 112, 112) and floats.dtype == torch.float32
    assert -1.0 <= float(floats.min()) and float(floats.max()) <= 1.0


def test_resampled_epochs_have_the_requested_length(dataset: Path) -> None:
    pipeline = stream_dataset(dataset, resampled=True, epoch_length=100, with_key=True)
    drawn = keys(pipeline)
    assert len(drawn) == 100 and len(set(drawn)) < 100  # drawn with replacement
    with pytest.raises(ValueError, match="epoch_length"):
        stream_dataset(dataset, resampled=True)
