"""The embed stage: candidate images -> ``embed/part-NNNNN.parquet`` (faces + embeddings).

``embed_partitions`` turns partitions of candidate images into
``embed/part-NNNNN.parquet`` files on a ``dask.distributed`` cluster (by default a
LocalCluster of processes with one thread each). Every worker loads the detector
and the embedders once: a worker plugin fills a worker-local cache keyed by the
model specs when the worker starts, and tasks look models up there. Tasks take
paths or encoded bytes and return small summaries; arrays stay in the workers.
``workers=0`` runs the same task function in this process (the 1-process baseline).

Uses ``client.map``/``submit`` rather than dask collections, so resources such as
``{"GPU": 1}`` can be passed per task (dask-expr DataFrames ignore annotations).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry.atomic import atomic_path, write_text_atomic
from facefoundry.faces.parts import META_PREFIX, fixed_list

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

_MODELS: dict[tuple, tuple] = {}  # worker-local: (detector, embedders) -> loaded models
_LOADS: Counter = Counter()  # how often each spec was loaded in this process (tests, logs)


@dataclass
class Partition:
    """A unit of embedding work: ``items`` (key, identity, encoded bytes or image path) or ``source``.

    ``source`` is read inside the worker: a webdataset-style tar (``{key}.jpg`` /
    ``.png`` members; identities from the parquet of the same stem, columns key and
    identity) or a folder of ``IDENTITY/FILE`` images.
    """

    name: str
    items: list[tuple[str, object, bytes | str]] = field(default_factory=list)
    source: str | None = None

    def __len__(self) -> int:
        return len(self.items)


def partition_items(partition: Partition) -> list[tuple[str, object, bytes | str]]:
    """The (key, identity, data) items of a partition, reading its source if it has one."""
    if partition.source is None:
        return list(partition.items)
    source = Path(partition.source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return [(str(p.relative_to(source)), p.parent.name, str(p)) for p in files]
    identities: dict[str, object] = {}
    sidecar = source.with_suffix(".parquet")
    if sidecar.is_file():
        table = pq.read_table(sidecar, columns=["key", "identity"])
        identities = dict(zip(table["key"].to_pylist(), table["identity"].to_pylist(), strict=True))
    items = []
    with tarfile.open(source) as tar:
        for member in tar:
            stem, dot, suffix = member.name.rpartition(".")
            if not member.isfile() or not dot or f".{suffix.lower()}" not in IMAGE_SUFFIXES:
                continue
            if identities and stem not in identities:
                raise KeyError(f"{source}: sample {stem} has no identity in {sidecar}")
            handle = tar.extractfile(member)
            items.append((stem, identities.get(stem), handle.read() if handle else b""))
    return items


def worker_models(detector: str, embedders: Sequence[str], threads: int = 1) -> tuple:
    """(detector, [embedders]) loaded once per process and cached by their specs."""
    key = (detector, tuple(embedders))
    if key not in _MODELS:
        import cv2

        from facefoundry.faces import get_detector, get_embedder

        cv2.setNumThreads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        _MODELS[key] = (get_detector(detector), [get_embedder(s) for s in embedders])
        _LOADS[key] += 1
        logger.info("loaded %s + %s in process %d", detector, ",".join(embedders), os.getpid())
    return _MODELS[key]


def model_loads() -> dict:
    """How often models were loaded in this process: {pid, loads}."""
    return {"pid": os.getpid(), "loads": sum(_LOADS.values())}


def _plugin_class():
    from distributed import WorkerPlugin

    class LoadModels(WorkerPlugin):
        """Load the detector and embedders when a worker starts (once per worker process)."""

        def __init__(self, detector: str, embedders: Sequence[str], threads: int = 1):
            self.detector, self.embedders, self.threads = detector, list(embedders), threads

        def setup(self, worker) -> None:
            worker_models(self.detector, self.embedders, self.threads)

    return LoadModels


def embed_items(
    items: Sequence[tuple[str, object, bytes | str]],
    detector,
    embedders: Sequence,
    *,
    policy: str = "central",
    no_face: str = "reject",
    batch_size: int = 64,
) -> pa.Table:
    """Detect once, embed with every embedder: an embed-part table (one row per item).

    Columns: faces' outcome columns (key, status, n_faces, det_score, box,
    landmarks, error, width, height), ``identity`` and ``embedding_<name>`` per
    embedder (NaN rows where that model gave no usable vector).
    """
    from facefoundry.faces import (
        Detection,
        decode_image,
        load_image,
        process_images,
        result_to_table,
    )

    items = list(items)
    first = process_images(
        [(key, data) for key, _, data in items],
        detector,
        embedders[0],
        policy=policy,
        no_face=no_face,
        batch_size=batch_size,
    )
    table = result_to_table(first)
    if "embedding" in table.column_names:
        table = table.drop_columns(["embedding"])
    columns = {embedders[0].name: first.embeddings}
    for embedder in embedders[1:]:
        vectors = np.full((len(items), embedder.dim), np.nan, dtype=np.float32)
        crops, rows = [], []

        def flush(embedder=embedder, vectors=vectors, crops=crops, rows=rows) -> None:
            if crops:
                vectors[rows] = embedder.embed_crops(np.stack(crops))
                crops.clear()
                rows.clear()

        for row, (outcome, (key, _, data)) in enumerate(zip(first.outcomes, items, strict=True)):
            if not outcome.embedded:
                continue
            image = decode_image(data, key) if isinstance(data, bytes) else load_image(data)
            landmarks = np.asarray(outcome.landmarks, dtype=np.float32).reshape(5, 2)
            found = Detection(tuple(outcome.box), outcome.det_score, landmarks)
            crops.append(embedder.prepare(image, found))
            rows.append(row)
            if len(crops) >= batch_size:
                flush()
        flush()
        columns[embedder.name] = vectors
    identities = [identity for _, identity, _ in items]
    table = table.append_column("identity", pa.array(identities))
    for name, vectors in columns.items():
        table = table.append_column(f"embedding_{name}", fixed_list(vectors))
    meta = dict(table.schema.metadata or {})
    for embedder in embedders:
        meta[f"{META_PREFIX}{embedder.name}.checksum"] = embedder.checksum
        meta[f"{META_PREFIX}{embedder.name}.dim"] = str(embedder.dim)
    meta[f"{META_PREFIX}detector"] = getattr(detector, "name", "")
    return table.replace_schema_metadata(meta)


_POOLS: dict[tuple, object] = {}  # (detector, embedders, workers) -> a process pool
# Items per slice of a part: few enough that 2 workers get even shares of a 200-image
# part (slices of 64 left one worker 128 images, the other 72: 1.49x, not 2x), and no
# fewer than the default embedders' own batches (SFace 8, dlib 16), which keep their size.
SLICE_ITEMS = 16


def _init_pool_worker(detector: str, embedders: Sequence[str]) -> None:
    """One thread per pool process, forced: a spawned worker inherits the parent's
    OMP budget (e.g. 2), and 2 workers x 2 threads on 2 cores only oversubscribe."""
    os.environ["OMP_NUM_THREADS"] = "1"
    worker_models(detector, embedders, threads=1)


def _embed_slice(items: list, detector: str, embedders: Sequence[str], options: dict):
    found, models = worker_models(detector, embedders, threads=1)
    return embed_items(items, found, models, **options)


def _pool(detector: str, embedders: Sequence[str], workers: int):
    """A spawn process pool, its models loaded once per worker, kept until other models
    are asked for (the embed stage calls it once per part; at most one pool lives)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    key = (detector, tuple(embedders), workers)
    if key not in _POOLS:
        for other in list(_POOLS):  # one pool at a time (e.g. the probes' before the stage's):
            _POOLS.pop(other).shutdown(wait=False)  # its submitted work still finishes
        _POOLS[key] = ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),
            initializer=_init_pool_worker,
            initargs=(detector, list(embedders)),
        )
    return _POOLS[key]


def close_pools() -> None:
    """Stop the embed pools of this process (the next parallel call starts afresh)."""
    while _POOLS:
        _POOLS.popitem()[1].shutdown()


def embed_items_parallel(
    items: Sequence[tuple[str, object, bytes | str]],
    detector: str,
    embedders: Sequence[str],
    workers: int = 1,
    **options,
) -> pa.Table:
    """``embed_items`` over slices of ``SLICE_ITEMS`` (or ``batch_size``, if smaller)
    items, shared among ``workers`` processes (1: this process); rows in input order.

    Why: the embed stage's tasks run one at a time on the local threads runner, and dlib
    and OpenCV's SFace use one thread each, so a part used one core of two. Every worker
    count embeds the same slices, so the table does not depend on it: OpenCV's SFace
    gives vectors that differ in the 7th digit when a face is batched with other faces.
    """
    from concurrent.futures.process import BrokenProcessPool

    items = list(items)
    size = min(int(options.get("batch_size", 64)), SLICE_ITEMS)
    slices = [items[i : i + size] for i in range(0, len(items), size)] or [[]]
    arguments = ([detector] * len(slices), [list(embedders)] * len(slices))
    if workers <= 1 or len(slices) == 1:
        tables = list(map(_embed_slice, slices, *arguments, [options] * len(slices)))
    else:
        pool = _pool(detector, embedders, workers)
        try:
            tables = list(pool.map(_embed_slice, slices, *arguments, [options] * len(slices)))
        except BrokenProcessPool:  # a worker died (e.g. out of memory): the next call
            _POOLS.pop((detector, tuple(embedders), workers), None)  # starts afresh
            raise
    # a slice without errors has a null-typed error column: promote it to the others'
    return pa.concat_tables(tables, promote_options="default")


def stats_path(part_path: str | Path) -> Path:
    """``part-00000.parquet`` -> ``part-00000_stats.json`` (written last: the part is complete)."""
    part_path = Path(part_path)
    return part_path.with_name(part_path.stem + "_stats.json")


def is_done(part_path: str | Path, detector: str, embedders: Sequence[str]) -> bool:
    """True when a part and its stats exist and were made with the same models (resume)."""
    stats = stats_path(part_path)
    if not (Path(part_path).is_file() and stats.is_file()):
        return False
    try:
        done = json.loads(stats.read_text())
    except (OSError, ValueError):
        return False
    return done.get("detector") == detector and done.get("embedders") == list(embedders)


def embed_partition(
    partition: Partition,
    out_path: str,
    detector: str = "yunet",
    embedders: Sequence[str] = ("sface", "dlib"),
    options: dict | None = None,
    workers: int = 1,
) -> dict:
    """Task body: embed one partition into ``out_path`` and write its ``_stats.json``;
    ``workers`` > 1 shares the part among that many local processes.

    Both files are written beside and renamed; the stats file comes last, so its
    presence marks a complete part (img2dataset's resume rule).
    """
    started, cpu = time.perf_counter(), time.process_time()
    items = partition_items(partition)
    table = embed_items_parallel(items, detector, embedders, workers, **(options or {}))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    summary = {
        "path": str(out),
        "rows": table.num_rows,
        "status": dict(Counter(table["status"].to_pylist())),
        "detector": detector,
        "embedders": list(embedders),
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,  # this process only (not its pool)
        "workers": workers,
    } | model_loads()
    stats = stats_path(out)
    write_text_atomic(stats, json.dumps(summary, indent=2) + "\n")
    return summary


def local_client(workers: int = 2, threads_per_worker: int = 1):
    """A LocalCluster client of ``workers`` processes, ``threads_per_worker`` threads each."""
    from distributed import Client, LocalCluster

    threads = str(threads_per_worker)
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=":0",  # a free port: several clusters may run side by side
        silence_logs=logging.ERROR,
        env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
    )
    return Client(cluster)


def preload_models(client, detector: str, embedders: Sequence[str], threads: int = 1) -> None:
    """Register the model-loading plugin: every current and future worker loads once, now."""
    plugin = _plugin_class()(detector, embedders, threads)
    client.register_plugin(plugin, name=f"facefoundry-models-{detector}-{'-'.join(embedders)}")


def embed_partitions(
    partitions: Sequence[Partition],
    out_dir: str | Path,
    *,
    detector: str = "yunet",
    embedders: Sequence[str] = ("sface", "dlib"),
    workers: int = 2,
    client=None,
    resources: dict | None = None,
    progress: bool = True,
    resume: bool = True,
    **options,
) -> list[Path]:
    """Embed partitions into ``out_dir/<partition.name>.parquet``; returns the paths in order.

    With ``client`` given, uses it (e.g. a multi-node or GPU cluster; ``resources``
    such as ``{"GPU": 1}`` go to every task); else starts a LocalCluster of
    ``workers`` processes for the call; ``workers=0`` runs in this process.
    With ``resume``, parts whose ``_stats.json`` shows the same models are skipped.
    ``options``: ``policy``, ``no_face``, ``batch_size`` of ``embed_items``.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{p.name}.parquet" for p in partitions]
    todo = [
        (partition, str(path))
        for partition, path in zip(partitions, paths, strict=True)
        if not (resume and is_done(path, detector, embedders))
    ]
    if len(todo) < len(paths):
        logger.info("resume: %d of %d parts already done", len(paths) - len(todo), len(paths))
    if not todo:
        return paths
    bar = tqdm(total=len(todo), desc="embed parts", unit="part", disable=not progress)
    summaries: list[dict] = []
    if client is None and workers <= 0:
        for partition, target in todo:
            summaries.append(embed_partition(partition, target, detector, embedders, options))
            bar.update(1)
        bar.close()
        return paths

    own = client is None
    client = client or local_client(workers)
    try:
        from distributed import as_completed

        preload_models(client, detector, list(embedders))
        inputs: list = [partition for partition, _ in todo]
        if any(partition.items for partition in inputs):
            inputs = client.scatter(inputs)  # image bytes go to workers, not into the graph
        futures = client.map(
            embed_partition,
            inputs,
            [target for _, target in todo],
            detector=detector,
            embedders=list(embedders),
            options=options,
            resources=resources,
            pure=False,
        )
        for future in as_completed(futures):
            summaries.append(future.result())
            bar.update(1)
    finally:
        bar.close()
        if own:
            cluster = client.cluster
            client.close()
            cluster.close()
    loads = {s["pid"]: s["loads"] for s in summaries}
    logger.info(
        "embedded %d parts on %d workers (model loads per worker: %s)",
        len(todo),
        len(loads),
        loads,
    )
    return paths
