"""N Dask workers write disjoint identity blocks with one label map; same bytes as one writer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from facefoundry.shards import (
    FinalizeError,
    ResumeMismatchError,
    ShardSettings,
    block_of,
    finalize,
    identity_blocks,
    label_map,
    load_labels,
    verify_dataset,
    write_block,
    write_split,
)
from tests.helpers.shards import synthetic_samples

SETTINGS = ShardSettings(maxcount=10, identities_per_block=5, shards_per_block=4)
IDENTITIES = [0, 1, 3, 4, 6, 7, 8, 11, 12, 14, 17, 19]
LABELS = label_map(IDENTITIES)  # every identity keeps samples (reject_every=4 of 6)


def file_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def samples_by_block() -> dict[int, list]:
    blocks: dict[int, list] = {}
    for sample in synthetic_samples(IDENTITIES, 6, reject_every=4):
        blocks.setdefault(block_of(sample.identity, SETTINGS), []).append(sample)
    return blocks


def test_dask_workers_write_blocks_then_finalize_matches_one_writer(tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    single, multi = tmp_path / "single", tmp_path / "multi"
    write_split(synthetic_samples(IDENTITIES, 6, reject_every=4), single, settings=SETTINGS)
    finalize(single)

    blocks = samples_by_block()
    assert sorted(blocks) == identity_blocks(IDENTITIES, SETTINGS) == [0, 1, 2, 3]
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        futures = [
            client.submit(
                write_block,
                samples,
                str(multi),
                block,
                labels=LABELS,
                settings=SETTINGS,
                pure=False,
            )
            for block, samples in reversed(sorted(blocks.items()))  # order must not matter
        ]
        results = client.gather(futures)
        workers = {w for ws in client.who_has(futures).values() for w in ws}
    assert len(workers) == 2, "both workers should have written blocks"
    assert sum(r.n_rows for r in results) == sum(len(s) for s in blocks.values())
    finalize(multi, expected_blocks={"train": sorted(blocks)})

    assert file_hashes(multi) == file_hashes(single)
    labels = load_labels(multi)
    assert sorted(labels.values()) == list(range(len(IDENTITIES)))
    assert [labels[i] for i in IDENTITIES] == list(range(len(IDENTITIES)))
    assert verify_dataset(multi) == []


def test_finalize_refuses_incomplete_blocks(tmp_path: Path) -> None:
    blocks = samples_by_block()
    for block in (0, 1, 2):
        write_block(blocks[block], tmp_path, block, labels=LABELS, settings=SETTINGS)
    with pytest.raises(FinalizeError, match="block 3 of split 'train' was expected"):
        finalize(tmp_path, expected_blocks={"train": [0, 1, 2, 3]})
    (tmp_path / "_blocks" / "train-000002.json").unlink()  # a writer died after its shards
    with pytest.raises(FinalizeError, match="block 2 of split 'train' has no done marker"):
        finalize(tmp_path)
    write_block(blocks[2], tmp_path, 2, labels=LABELS, settings=SETTINGS)  # shards skipped
    finalize(tmp_path, expected_blocks={"train": [0, 1, 2]})
    assert verify_dataset(tmp_path) == []


def test_a_done_block_is_not_read_again_and_foreign_identities_are_refused(tmp_path: Path) -> None:
    blocks = samples_by_block()
    first = write_block(blocks[1], tmp_path, 1, labels=LABELS, settings=SETTINGS)

    def must_not_be_read():
        raise AssertionError("input of a done block was read")
        yield

    again = write_block(must_not_be_read(), tmp_path, 1, labels=LABELS, settings=SETTINGS)
    assert again.shards == first.shards and again.written == () and again.skipped == first.shards
    with pytest.raises(ValueError, match="is not in block 2"):
        write_block(blocks[1], tmp_path, 2, labels=LABELS, settings=SETTINGS)


def test_writers_with_other_label_maps_are_caught(tmp_path: Path) -> None:
    blocks = samples_by_block()
    for block in (0, 1, 2, 3):
        write_block(blocks[block], tmp_path / "a", block, labels=LABELS, settings=SETTINGS)
    # A done block given another map is read again and refused, not silently skipped.
    other = label_map([*IDENTITIES, 2])  # identity 2 has no samples: labels from 2 on shift
    with pytest.raises(ResumeMismatchError, match="input differs"):
        write_block(blocks[0], tmp_path / "a", 0, labels=other, settings=SETTINGS)
    with pytest.raises(ValueError, match="no label in labels"):
        write_block(blocks[0], tmp_path / "b", 0, labels=label_map([0, 3, 4]), settings=SETTINGS)
    # Blocks written with two different maps: finalize checks, names the shard, rewrites nothing.
    mixed = tmp_path / "mixed"
    write_block(blocks[0], mixed, 0, labels=other, settings=SETTINGS)
    for block in (1, 2, 3):
        write_block(blocks[block], mixed, block, labels=LABELS, settings=SETTINGS)
    before = file_hashes(mixed)
    with pytest.raises(FinalizeError, match=r"train-000001: .* expected 2") as info:
        finalize(mixed)
    assert "label_map" in str(info.value)
    assert file_hashes(mixed) == before
