"""A damaged shard never trains silently: the reader names the shard and stops."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from facefoundry.shards import (
    DamagedShardError,
    ShardSettings,
    UnsafeTarError,
    finalize,
    shard_urls,
    stream_dataset,
    write_split,
)
from facefoundry.shards.reader import SafeTarSamples
from facefoundry.shards.tarformat import encode_members, iter_members
from tests.helpers.shards import synthetic_samples


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pristine")
    settings = ShardSettings(maxcount=10, identities_per_block=100)
    write_split(synthetic_samples(range(8), 5, reject_every=0), directory, settings=settings)
    finalize(directory)
    return directory


@pytest.fixture()
def dataset(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(pristine, copy)
    return copy


def read_all(directory: Path) -> int:
    return sum(1 for _ in stream_dataset(directory, shuffle=False))


def member_ends(tar: Path) -> list[int]:
    with open(tar, "rb") as f:
        return [
            m.offset + m.size for m in iter_members(f, source=str(tar), max_member_bytes=1 << 30)
        ]


def test_the_intact_dataset_reads_every_sample(dataset: Path) -> None:
    assert read_all(dataset) == 40


def test_a_shard_cut_at_a_member_boundary_is_named(dataset: Path) -> None:
    tar = Path(shard_urls(dataset)[1])
    boundary = member_ends(tar)[9]  # after the 10th member: a clean cut
    boundary += -boundary % 512
    tar.write_bytes(tar.read_bytes()[:boundary])
    with pytest.raises(DamagedShardError, match=tar.name):
        read_all(dataset)


def test_a_shard_cut_mid_member_is_named(dataset: Path) -> None:
    tar = Path(shard_urls(dataset)[0])
    tar.write_bytes(tar.read_bytes()[: member_ends(tar)[3] - 100])
    with pytest.raises(DamagedShardError, match=tar.name):
        read_all(dataset)


def test_a_missing_shard_is_named(dataset: Path) -> None:
    tar = Path(shard_urls(dataset)[2])
    tar.unlink()
    with pytest.raises(DamagedShardError, match=f"{tar.name} is listed .* but missing"):
        read_all(dataset)


def test_a_shard_with_an_extra_member_is_named(dataset: Path) -> None:
    tar = Path(shard_urls(dataset)[0])
    data = tar.read_bytes()
    end = member_ends(tar)[-1]
    end += -end % 512
    extra = encode_members([(b"9999999_0000.jpg", b"not a face")])
    tar.write_bytes(data[:end] + extra + data[end:])
    with pytest.raises(DamagedShardError, match=tar.name):
        read_all(dataset)


def test_streaming_counts_samples_where_sizes_cannot_be_checked(dataset: Path) -> None:
    """Remote shards have no local size: the per-shard sample count still catches a cut."""
    tar = Path(shard_urls(dataset)[0])
    boundary = member_ends(tar)[9]
    boundary += -boundary % 512
    tar.write_bytes(tar.read_bytes()[:boundary] + bytes(1024))  # clean end blocks, fewer samples
    stage = SafeTarSamples(expected={tar.name: 10})
    with pytest.raises(
        DamagedShardError, match=rf"{tar.name} held \d+ samples but sizes.json says 10"
    ):
        list(stage(iter([{"url": str(tar)}])))
    with pytest.raises(UnsafeTarError, match="end-of-archive"):
        tar.write_bytes(tar.read_bytes()[:boundary])
        list(SafeTarSamples()(iter([{"url": str(tar)}])))


def test_training_stops_before_it_starts_on_a_damaged_dataset(dataset: Path) -> None:
    from facefoundry.recognition.train import check_contiguous_labels

    assert check_contiguous_labels(dataset) == 8
    tar = Path(shard_urls(dataset)[1])
    tar.write_bytes(tar.read_bytes()[:-2048])
    with pytest.raises(DamagedShardError, match=tar.name):
        check_contiguous_labels(dataset)
