"""Round trip, byte determinism and the writer's contract on small generated data."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image
from pydantic import ValidationError

from facefoundry.shards import (
    EmptyDatasetError,
    FinalizeError,
    IndexedShards,
    SampleOrderError,
    ShardSample,
    ShardSettings,
    finalize,
    label_map,
    load_labels,
    make_key,
    manifests_dask,
    read_manifests,
    stream_dataset,
    verify_dataset,
    write_split,
)
from facefoundry.shards.tarformat import encode_members
from tests.helpers.shards import synthetic_samples

SETTINGS = ShardSettings(maxcount=16, identities_per_block=6, shards_per_block=8)
IDENTITIES = [0, 1, 2, 4, 5, 7, 9, 12, 13]  # gaps on purpose: labels must still be 0..C-1


def build(directory: Path, settings: ShardSettings = SETTINGS) -> list[ShardSample]:
    samples = list(synthetic_samples(IDENTITIES, 7, reject_every=3, full_every=4))
    write_split(samples, directory, settings=settings)
    finalize(directory, recipe_hash="abc123")
    return samples


def file_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ShardSample]]:
    directory = tmp_path_factory.mktemp("roundtrip")
    return directory, build(directory)


def test_round_trip_streaming_gives_every_kept_face_with_its_label(built) -> None:
    directory, samples = built
    kept = {s.key: s for s in samples if s.kept}
    labels = load_labels(directory)
    assert sorted(labels) == sorted({s.identity for s in kept.values()})
    assert sorted(labels.values()) == list(range(len(IDENTITIES)))

    seen = {}
    for image, label, key in stream_dataset(directory, with_key=True, shuffle=False):
        assert image.dtype.is_floating_point is False and tuple(image.shape) == (112, 112, 3)
        seen[key] = (image.numpy(), label)
    assert sorted(seen) == sorted(kept)
    for key, (pixels, label) in seen.items():
        expected = np.asarray(Image.open(io.BytesIO(kept[key].face_jpeg)).convert("RGB"))
        np.testing.assert_array_equal(pixels, expected)
        assert label == labels[kept[key].identity]
    assert verify_dataset(directory) == []


def test_manifest_holds_every_candidate_and_only_kept_ones_are_in_tars(built) -> None:
    directory, samples = built
    table = read_manifests(directory)
    assert table.num_rows == len(samples)
    assert table["key"].to_pylist() == [s.key for s in samples]
    rejected = table.filter(pc.invert(table["kept"]))
    assert set(rejected["reject_reason"].to_pylist()) <= {"no_face", "low_similarity", "duplicate"}
    assert rejected["json_sha256"].null_count == rejected.num_rows
    by_key = {s.key: s for s in samples}
    for row in table.to_pylist():
        sample = by_key[row["key"]]
        assert row["identity"] == sample.identity and row["kept"] == sample.kept
        assert row["det_score"] == sample.det_score and row["seed"] == sample.seed
        if sample.face_jpeg is not None:
            assert row["face_sha256"] == hashlib.sha256(sample.face_jpeg).hexdigest()
        if sample.full_image is not None:
            assert row["full_ext"] == "png" and row["full_bytes"] == len(sample.full_image)
    tar_keys = set()
    for tar in sorted(directory.glob("*.tar")):
        with tarfile.open(tar) as tf:
            names = tf.getnames()
            assert all(m.mtime == 0 and m.isreg() for m in tf.getmembers())
        tar_keys |= {n.split(".", 1)[0] for n in names}
    assert tar_keys == {s.key for s in samples if s.kept}


def test_manifests_as_a_dask_dataframe(built) -> None:
    pytest.importorskip("pandas", reason="dask.dataframe needs pandas (dask[dataframe])")
    directory, samples = built
    frame = manifests_dask(directory)
    assert frame.npartitions == len(list(directory.glob("*.parquet")))
    assert int(frame["kept"].sum().compute()) == sum(s.kept for s in samples)


def test_dataset_files_agree(built) -> None:
    directory, samples = built
    dataset = json.loads((directory / "dataset.json").read_text())
    sizes = json.loads((directory / "sizes.json").read_text())
    assert dataset["class_count"] == len(IDENTITIES) and dataset["recipe_hash"] == "abc123"
    assert sum(sizes.values()) == sum(s.kept for s in samples)
    assert dataset["counts"]["n_rows"] == len(samples)
    assert set(sizes) == {f"{stem}.tar" for stem in dataset["splits"]["train"]["shards"]}
    # block 0 holds identities 0..5 (17 kept > maxcount 16: two shards), block 1 starts at 8
    assert dataset["splits"]["train"]["shards"][:3] == [
        "train-000000",
        "train-000001",
        "train-000008",
    ]
    for stem in dataset["splits"]["train"]["shards"]:
        stats = json.loads((directory / f"{stem}_stats.json").read_text())
        assert stats["n_kept"] <= SETTINGS.maxcount


def test_random_access_through_the_index_matches_wids(built, tmp_path) -> None:
    import wids

    directory, samples = built
    kept = [s for s in samples if s.kept]
    ours = IndexedShards(directory / "train.index.json", decode=False)
    theirs = wids.ShardListDataset(
        str(directory / "train.index.json"), cache_dir=str(tmp_path), transformations=[]
    )
    assert len(ours) == len(theirs) == len(kept)
    for i in (0, 5, len(kept) - 1):
        raw = ours[i]
        assert raw["__key__"] == kept[i].key == theirs[i]["__key__"]
        assert raw["jpg"] == kept[i].face_jpeg == theirs[i][".jpg"].read()
    image, label = IndexedShards(directory / "train.index.json")[3]
    assert tuple(image.shape) == (112, 112, 3) and label == load_labels(directory)[kept[3].identity]


def test_two_runs_give_identical_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    build(a)
    build(b)
    hashes = file_hashes(a)
    assert any(name.endswith(".tar") for name in hashes)
    assert hashes == file_hashes(b)
    finalize(b, recipe_hash="abc123")  # finalize again: idempotent
    assert file_hashes(b) == hashes


def test_tar_bytes_equal_what_tarfile_writes() -> None:
    members = [(b"0000001_0000.id", b"1"), (b"0000001_0000.jpg", bytes(range(256)) * 3)]
    ours = encode_members(members)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name.decode())
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uname = info.gname = "bigdata"
            tf.addfile(info, io.BytesIO(data))
    assert buf.getvalue().startswith(ours)


def test_splits_share_one_label_map(tmp_path: Path) -> None:
    settings = ShardSettings(splits=("train", "val"), identities_per_block=100)
    train = list(synthetic_samples([1, 4, 6], 4, reject_every=0))
    val = list(synthetic_samples([2, 5], 4, reject_every=0))
    with pytest.raises(ValueError, match="shared by all"):
        write_split(train, tmp_path, settings=settings)
    with pytest.raises(ValueError, match="sorted identity ids"):
        write_split(train, tmp_path, settings=settings, labels={1: 1, 2: 0, 4: 2, 5: 3, 6: 4})
    labels = label_map([6, 5, 4, 2, 1, 4])
    assert labels == {1: 0, 2: 1, 4: 2, 5: 3, 6: 4}
    write_split(train, tmp_path, split="train", settings=settings, labels=labels)
    write_split(val, tmp_path, split="val", settings=settings, labels=labels)
    finalize(tmp_path)
    assert load_labels(tmp_path) == labels
    assert verify_dataset(tmp_path) == []
    val_labels = [label for _, label in stream_dataset(tmp_path, "val", shuffle=False)]
    assert val_labels == [1] * 4 + [3] * 4


def test_maxsize_rolls_over(tmp_path: Path) -> None:
    settings = ShardSettings(maxsize=30_000, identities_per_block=100)
    samples = list(synthetic_samples(range(4), 5, reject_every=0))
    result = write_split(samples, tmp_path, settings=settings)
    assert len(result.shards) > 1
    for stem in result.shards:
        stats = json.loads((tmp_path / f"{stem}_stats.json").read_text())
        assert stats["n_kept"] == 1 or stats["tar_bytes"] <= 30_000 + 2 * 10240


def test_empty_input_is_a_clear_error_not_an_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(EmptyDatasetError, match="no samples"):
        write_split([], tmp_path)
    with pytest.raises(EmptyDatasetError):
        finalize(tmp_path)
    assert verify_dataset(tmp_path) != []
    all_rejected = [s for s in synthetic_samples([3], 4, reject_every=1)]
    write_split(all_rejected, tmp_path / "r")
    with pytest.raises(FinalizeError, match="no kept samples"):
        finalize(tmp_path / "r")


def test_input_contract_errors(tmp_path: Path) -> None:
    samples = list(synthetic_samples([1, 2], 3, reject_every=0))
    with pytest.raises(SampleOrderError, match="ascending key order"):
        write_split([samples[1], samples[0]], tmp_path / "a")
    with pytest.raises(SampleOrderError):
        write_split([samples[0], samples[0]], tmp_path / "b")
    assert not list((tmp_path / "b").glob("*.tmp-*"))
    with pytest.raises(ValueError, match="no dots"):
        ShardSample(key="a.b", identity=1, kept=False, reject_reason="x")
    with pytest.raises(ValueError, match="needs face_jpeg"):
        ShardSample(key="k", identity=1, kept=True)
    with pytest.raises(ValueError, match="needs a reject_reason"):
        ShardSample(key="k", identity=1, kept=False)
    small = ShardSample(key="k", identity=1, kept=True, face_jpeg=_jpeg(64))
    with pytest.raises(ValueError, match="64x64"):
        write_split([small], tmp_path / "c")
    with pytest.raises(ValueError, match="not one of settings.splits"):
        write_split(samples, tmp_path / "d", split="val")
    with pytest.raises(ValidationError):
        ShardSettings(maxcount=10, unknown=1)
    assert make_key(12, 3) == "0000012_0003"


def _jpeg(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 20, 30)).save(buf, "JPEG")
    return buf.getvalue()
