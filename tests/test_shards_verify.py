"""verify finds tampering (flipped byte, missing shard, duplicate key, label gap); CLI exit codes."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from facefoundry.flows.cli import main as cli
from facefoundry.shards import (
    FinalizeError,
    ShardSettings,
    finalize,
    load_labels,
    verify_dataset,
    write_block,
    write_split,
)
from facefoundry.shards.manifest import read_manifest, write_manifest_table
from tests.helpers.shards import synthetic_samples

SETTINGS = ShardSettings(maxcount=12, identities_per_block=4, shards_per_block=5)
IDENTITIES = range(10)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pristine")
    write_split(synthetic_samples(IDENTITIES, 6, reject_every=3), directory, settings=SETTINGS)
    finalize(directory)
    return directory


@pytest.fixture
def dataset(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(pristine, copy)
    return copy


def messages(directory: Path) -> list[str]:
    return [str(p) for p in verify_dataset(directory)]


def test_sound_dataset_verifies_and_cli_exits_zero(dataset: Path, capsys) -> None:
    assert verify_dataset(dataset) == []
    assert cli(["shards", "verify", str(dataset)]) == 0
    assert "OK" in capsys.readouterr().out


def test_flipped_byte_is_found(dataset: Path, capsys) -> None:
    tar = dataset / "train-000001.tar"
    with tarfile.open(tar) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(".jpg"))
    data = bytearray(tar.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0x01
    tar.write_bytes(bytes(data))
    found = messages(dataset)
    assert len(found) == 2
    assert any("sha256" in m and "differs from stats" in m for m in found)
    assert any(member.name in m and "corrupt payload" in m for m in found)
    assert cli(["shards", "verify", str(dataset)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out == found  # every problem printed, one per line


def test_a_cls_member_that_disagrees_with_the_manifest_is_found(dataset: Path) -> None:
    tar = dataset / "train-000000.tar"
    with tarfile.open(tar) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(".cls"))
        label = tf.extractfile(member).read()
    other = b"9" if label != b"9" else b"8"
    data = bytearray(tar.read_bytes())
    data[member.offset_data : member.offset_data + 1] = other
    tar.write_bytes(bytes(data))
    found = messages(dataset)
    assert (
        f"train-000000.tar: {member.name} is {other!r} but the manifest label is {int(label)}"
        in found
    )
    assert any("sha256" in m and "differs from stats" in m for m in found)


def test_missing_shard_is_found(dataset: Path) -> None:
    (dataset / "train-000005.tar").unlink()
    assert messages(dataset) == ["train-000005.tar: missing (shard listed in dataset.json)"]


def test_label_gap_is_found(dataset: Path) -> None:
    labels = json.loads((dataset / "labels.json").read_text())
    top = labels["class_count"] - 1
    for path in sorted(dataset.glob("*.parquet")):
        table = read_manifest(path)
        bumped = pc.if_else(pc.equal(table["label"], top), top + 1, table["label"])
        table = table.set_column(5, "label", bumped.cast(pa.int32()))
        write_manifest_table(table, path, fsync=False)
    found = messages(dataset)
    assert any(f"gaps at [{top}]" in m for m in found)
    assert any("identity_of_label disagrees" in m for m in found)


def test_duplicated_key_is_found_and_finalize_refuses_it(dataset: Path) -> None:
    # Rewrite block 1 (identities 4..7) with its first key replaced by a key of block 0.
    block1 = list(synthetic_samples(range(4, 8), 6, reject_every=3))
    block1[0] = dataclasses.replace(block1[0], key="0000000_0000")
    for path in dataset.glob("train-00000[5-9]*"):
        path.unlink()
    (dataset / "_blocks" / "train-000001.json").unlink()
    write_block(block1, dataset, 1, labels=load_labels(dataset), settings=SETTINGS)
    found = messages(dataset)
    assert found == ["manifests: duplicate key '0000000_0000' (2 rows)"]
    with pytest.raises(FinalizeError, match="more than once"):
        finalize(dataset)


def test_incomplete_dataset_lists_every_problem(dataset: Path) -> None:
    (dataset / "dataset.json").unlink()
    (dataset / "train-000000_stats.json").unlink()
    (dataset / "train-000005.tar.tmp-123").write_bytes(b"x")
    found = messages(dataset)
    assert any(m.startswith("dataset.json: missing") for m in found)
    assert any(m.startswith("train-000000_stats.json: missing") for m in found)
    assert any("leftover temporary file" in m for m in found)


def test_stats_cli(dataset: Path, capsys) -> None:
    assert cli(["shards", "stats", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "finalized" in out and "classes: 10" in out and "40 samples kept of 60" in out
    assert cli(["shards", "stats", "--json", str(dataset)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["splits"]["train"]["rejected"] == 20 and doc["class_count"] == 10
