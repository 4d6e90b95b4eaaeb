"""Class labels: identity id -> contiguous label 0..C-1, in ascending identity order.

The label map is decided once, from the identities the filter kept, before any
shard is written: ``label_map(kept_identity_ids)``. Writers store each kept
sample's label as ``{key}.cls`` (webdataset's convention) and in the manifest;
finalize checks that every shard agrees with the map of all kept identities and
records it in ``labels.json``. This module imports neither torch nor webdataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .atomic import read_json
from .layout import LABELS_JSON
from .sample import ShardSample


def label_map(identities: Iterable[int]) -> dict[int, int]:
    """The label map of a set of kept identity ids: sorted distinct ids -> 0..C-1.

    Give it the identities with at least one kept sample, over all splits;
    every writer of the dataset (``write_split``, each ``write_block``) must
    get the same map.
    """
    ids = sorted({_identity(i) for i in identities})
    return {identity: label for label, identity in enumerate(ids)}


def check_label_map(labels: Mapping[int, int]) -> None:
    """Raise ValueError unless ``labels`` maps sorted identity ids to exactly 0..C-1."""
    for label, identity in enumerate(sorted(labels)):
        if labels[identity] != label:
            raise ValueError(
                f"labels must map the sorted identity ids to 0..C-1 (shards.label_map): "
                f"identity {identity} has label {labels[identity]}, expected {label}"
            )


def block_labels(labels: Mapping[int, int], identities: range) -> dict[int, int]:
    """The part of a label map inside one block's identity range (cost: the range's size)."""
    part = {i: labels[i] for i in identities if i in labels}
    ids = list(part)
    for prev, cur in zip(ids, ids[1:], strict=False):
        if part[cur] != part[prev] + 1:
            raise ValueError(
                f"labels must map the sorted identity ids to 0..C-1 (shards.label_map): "
                f"identity {prev} has label {part[prev]} but the next one, {cur}, has {part[cur]}"
            )
    return part


def assign_labels(
    samples: Iterable[ShardSample], labels: Mapping[int, int] | None
) -> Iterator[tuple[ShardSample, int | None]]:
    """Pair each sample with its identity's label (None for an identity without one).

    With ``labels=None`` the map is built while streaming: samples must come
    in non-decreasing identity order (the writer's contract), so the k-th
    identity with a kept sample gets label k-1. Candidates of one identity are
    held back until the next identity starts, so its rejected rows, seen
    before its first kept sample, get the label too. The result equals
    ``label_map`` of the kept identities of ``samples``.
    """
    if labels is not None:
        for sample in samples:
            label = labels.get(sample.identity)
            if label is None and sample.kept:
                raise ValueError(
                    f"{sample.key}: identity {sample.identity} has a kept sample but no label "
                    "in labels; build the map from every kept identity (shards.label_map)"
                )
            yield sample, label
        return
    next_label = 0
    group: list[ShardSample] = []
    for sample in samples:
        if group and sample.identity != group[0].identity:
            label = None
            if any(s.kept for s in group):
                label, next_label = next_label, next_label + 1
            yield from ((s, label) for s in group)
            group = []
        group.append(sample)
    if group:
        label = next_label if any(s.kept for s in group) else None
        yield from ((s, label) for s in group)


class LabelDigest:
    """sha256 of a manifest's ``label`` column: one ASCII decimal (or ``-`` for null) + newline per row."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def add(self, label: int | None) -> None:
        self._sha.update(b"-\n" if label is None else b"%d\n" % label)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def labels_sha256(labels: Iterable[int | None]) -> str:
    """``LabelDigest`` of a whole label column."""
    digest = LabelDigest()
    for label in labels:
        digest.add(label)
    return digest.hexdigest()


def load_labels(directory: Path | str) -> dict[int, int]:
    """identity id -> contiguous label, from ``labels.json`` (written by finalize)."""
    path = Path(directory) / LABELS_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run shards.finalize on the directory first")
    doc = read_json(path)
    return {int(identity): label for label, identity in enumerate(doc["identity_of_label"])}


def sample_label(sample: Mapping[str, Any], labels: Mapping[int, int] | None) -> int:
    """A raw sample's label: its ``.cls`` member, or for shards written before ``.cls``
    existed (format version 1) ``labels`` looked up by its ``.id``."""
    cls = sample.get("cls")
    if cls is not None:
        return int(cls)
    if labels is None:
        raise KeyError(f"sample {sample.get('__key__')!r} has no .cls member and no label map")
    return labels[int(sample["id"])]


def _identity(value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"identity ids must be integers >= 0, got {value!r}")
    return int(value)


__all__ = [
    "LabelDigest",
    "assign_labels",
    "block_labels",
    "check_label_map",
    "label_map",
    "labels_sha256",
    "load_labels",
    "sample_label",
]
