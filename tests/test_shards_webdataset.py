"""Shards follow the webdataset convention: plain webdataset and wids read every kept
sample with its label as ``cls``, without any facefoundry code, for one writer and many."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facefoundry.shards import (
    ShardSettings,
    block_of,
    finalize,
    identity_blocks,
    label_map,
    write_block,
    write_split,
)
from tests.helpers.shards import synthetic_samples

SETTINGS = ShardSettings(maxcount=7, identities_per_block=4, shards_per_block=6)
# Gaps in the ids; identity 9 keeps nothing and is the only identity of block 2, so that
# block's tar is empty; 13 is alone in block 3.
IDENTITIES = [0, 2, 3, 5, 6, 7, 9, 13]


def candidates() -> list:
    samples = []
    for sample in synthetic_samples(IDENTITIES, 5, reject_every=3):
        if sample.identity == 9 and sample.kept:
            continue
        samples.append(sample)
    return samples


def expected(samples: list) -> list[tuple[str, int]]:
    """(key, label) of every kept sample in shard order: kept identities sorted -> 0..C-1."""
    kept_ids = sorted({s.identity for s in samples if s.kept})
    return [(s.key, kept_ids.index(s.identity)) for s in samples if s.kept]


def single_writer(directory: Path) -> list:
    samples = candidates()
    write_split(samples, directory, settings=SETTINGS)
    finalize(directory)
    return samples


def many_writers(directory: Path) -> list:
    samples = candidates()
    labels = label_map(s.identity for s in samples if s.kept)
    blocks: dict[int, list] = {}
    for sample in samples:
        blocks.setdefault(block_of(sample.identity, SETTINGS), []).append(sample)
    assert sorted(blocks) == identity_blocks(IDENTITIES, SETTINGS) == [0, 1, 2, 3]
    for block in reversed(sorted(blocks)):  # the order of writers does not matter
        write_block(blocks[block], directory, block, labels=labels, settings=SETTINGS)
    finalize(directory, expected_blocks={"train": sorted(blocks)})
    return samples


# --- the reading side: webdataset and wids only, no facefoundry import --------------------
def read_with_webdataset(index: Path) -> list[tuple[np.ndarray, int]]:
    import webdataset

    doc = json.loads(index.read_text())
    urls = [str(index.parent / shard["url"]) for shard in doc["shardlist"]]
    dataset = webdataset.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("jpg", "cls")
    return list(dataset)


def read_with_wids(index: Path) -> list[dict]:
    import wids

    dataset = wids.ShardListDataset(str(index))
    return [dataset[i] for i in range(len(dataset))]


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("write", [single_writer, many_writers])
def test_plain_webdataset_and_wids_read_every_kept_sample_with_its_label(
    write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "wids-cache"))  # wids copies shards there
    directory = tmp_path / "shards"
    want = expected(write(directory))
    class_count = len({label for _, label in want})
    assert class_count == len(IDENTITIES) - 1  # identity 9 kept nothing: no class
    index = directory / "train.index.json"
    assert 0 in [s["nsamples"] for s in json.loads(index.read_text())["shardlist"]]

    items = read_with_webdataset(index)
    assert [label for _, label in items] == [label for _, label in want]
    assert sorted(set(label for _, label in items)) == list(range(class_count))
    for image, label in items:
        assert isinstance(label, int)
        assert image.dtype == np.uint8 and image.shape == (112, 112, 3)

    samples = read_with_wids(index)
    assert [(s["__key__"], s[".cls"]) for s in samples] == want
    assert all(".id" in s and ".jpg" in s for s in samples)  # the identity stays too


def files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_one_writer_and_many_writers_give_the_same_bytes(tmp_path: Path) -> None:
    single_writer(tmp_path / "one")
    many_writers(tmp_path / "many")
    assert files(tmp_path / "one") == files(tmp_path / "many")
