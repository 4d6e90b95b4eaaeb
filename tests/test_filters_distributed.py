"""Embedding partitions: sources read inside the task, every image gets an outcome row."""

from __future__ import annotations

import io
import json
import os
import tarfile

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry.faces.embed_stage import (
    Partition,
    embed_partitions,
    is_done,
    partition_items,
    stats_path,
)
from facefoundry.filters.samples import read_samples


def _png(value: int) -> bytes:
    ok, data = cv2.imencode(".png", np.full((64, 64, 3), value, dtype=np.uint8))
    assert ok
    return data.tobytes()


def _webdataset_part(path, members: dict[str, bytes], identities: dict[str, int]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    table = pa.table({"key": list(identities), "identity": list(identities.values())})
    pq.write_table(table, path.with_suffix(".parquet"))


def test_partition_sources_tar_and_folder(tmp_path):
    tar = tmp_path / "generate" / "part-00000.tar"
    tar.parent.mkdir()
    _webdataset_part(
        tar,
        {"s-0.png": _png(10), "s-0.json": b"{}", "s-1.jpg": b"not an image"},
        {"s-0": 7, "s-1": 8},
    )
    items = partition_items(Partition("part-00000", source=str(tar)))
    assert [(key, identity) for key, identity, _ in items] == [("s-0", 7), ("s-1", 8)]
    folder = tmp_path / "folder" / "Some_Person"
    folder.mkdir(parents=True)
    (folder / "Some_Person_0001.png").write_bytes(_png(200))
    items = partition_items(Partition("p", source=str(tmp_path / "folder")))
    assert items[0][:2] == ("Some_Person/Some_Person_0001.png", "Some_Person")


def test_embed_partitions_in_process_records_failures(tmp_path):
    tar = tmp_path / "part-00000.tar"
    _webdataset_part(
        tar, {"a-0.png": _png(128), "a-1.png": b"\x89PNG broken"}, {"a-0": 3, "a-1": 3}
    )
    parts = [
        Partition("part-00000", source=str(tar)),
        Partition("part-00001", [("b-0", 4, _png(30))]),
    ]
    paths = embed_partitions(
        parts, tmp_path / "embed", embedders=["sface"], workers=0, progress=False
    )
    assert [p.name for p in paths] == ["part-00000.parquet", "part-00001.parquet"]
    table = read_samples(tmp_path / "embed", ["sface"])
    assert table.keys.tolist() == ["a-0", "a-1", "b-0"]
    assert table.status.tolist() == ["no_face", "bad_image", "no_face"]  # flat grey images
    assert table.identities.tolist() == [3, 3, 4]
    assert np.isnan(table.vectors("sface")).all()
    assert len(table.checksums["sface"]) == 64
    schema = pq.read_schema(paths[0])
    assert schema.field("embedding_sface").type.list_size == 128


def test_finished_parts_are_skipped_on_resume(tmp_path):
    parts = [Partition(f"part-{i:05d}", [(f"k-{i}", i, _png(40 + i))]) for i in range(3)]
    paths = embed_partitions(parts, tmp_path, embedders=["sface"], workers=0, progress=False)
    stats = [json.loads(stats_path(p).read_text()) for p in paths]
    assert [s["rows"] for s in stats] == [1, 1, 1] and stats[0]["embedders"] == ["sface"]
    # CPU time of the task body: some work was done, and no more than its wall time on
    # every core allows (a wrong clock, e.g. wall time since the epoch, fails both ways)
    cores = os.cpu_count() or 1
    assert all(0 < s["cpu_seconds"] <= s["seconds"] * cores + 0.05 for s in stats)
    stamps = [p.stat().st_mtime_ns for p in paths]
    stats_path(paths[1]).unlink()  # an interrupted part: parquet written, stats missing
    embed_partitions(parts, tmp_path, embedders=["sface"], workers=0, progress=False)
    assert paths[0].stat().st_mtime_ns == stamps[0] and paths[2].stat().st_mtime_ns == stamps[2]
    assert stats_path(paths[1]).is_file()
    assert not is_done(paths[0], "yunet", ["sface", "dlib"])  # other models: not done


def _same(left: np.ndarray, right: np.ndarray) -> bool:
    return np.array_equal(left, right, equal_nan=True)


def test_a_part_shared_among_processes_gives_the_same_table(lfw):
    """The embed stage's parallel path (slices of a part on 2 spawned processes) returns
    exactly the one-process table: rows in order, failures recorded, same vectors; and
    slicing moves a vector only in float rounding against one call over the whole list."""
    from facefoundry.evaluation.lfw import image_name
    from facefoundry.faces.embed_stage import embed_items, embed_items_parallel, worker_models

    names = [image_name(person, 1) for person in ("Aaron_Peirsol", "Abdullah_Gul", "Ai_Sugiyama")]
    items = [(key, index, data) for index, (key, data) in enumerate(lfw.read_many(names))]
    items[1:1] = [("grey", 9, _png(128)), ("broken", 9, b"\x89PNG broken")]
    options = {"policy": "central", "no_face": "reject", "batch_size": 2}
    one = embed_items_parallel(items, "yunet", ["sface", "dlib"], 1, **options)
    shared = embed_items_parallel(items, "yunet", ["sface", "dlib"], 2, **options)
    detector, models = worker_models("yunet", ["sface", "dlib"])
    whole = embed_items(items, detector, models, **options)
    assert shared.schema == one.schema == whole.schema  # the error column too (null slices)
    assert shared.column("key").to_pylist() == [key for key, _, _ in items]
    assert shared.column("status").to_pylist() == ["ok", "no_face", "bad_image", "ok", "ok"]
    for name in ("status", "error", "identity", "n_faces", "box", "landmarks"):
        assert shared.column(name).to_pylist() == one.column(name).to_pylist(), name
    for name in ("det_score", "embedding_sface", "embedding_dlib"):
        left = np.array(shared.column(name).to_pylist(), dtype=float)
        assert _same(left, np.array(one.column(name).to_pylist(), dtype=float)), name
        right = np.array(whole.column(name).to_pylist(), dtype=float)
        assert np.allclose(left, right, atol=1e-5, equal_nan=True), name
    assert np.isfinite(np.array(shared.column("embedding_dlib").to_pylist()[0])).all()
