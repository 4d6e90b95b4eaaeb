"""Training checkpoints: weights, optimizer state and progress in one folder, replaced whole.

Every trainer (``recognition/train.py``, ``generators/idiff_face/train.py``,
``generators/multi_id/fit.py``) saves and resumes through this module. A checkpoint
folder holds

- ``state.safetensors``: each weight group as ``<group>.<name>`` (``backbone.conv1.weight``,
  ``ema.unet.conv_in.bias``) and the optimizer's per-parameter state as
  ``optim.<parameter index>.<name>`` (tensors only, never pickles);
- ``state.json``: the trainer's own state (step, history, settings, ...) plus the
  optimizer's ``param_groups``.

``atomic_folder`` writes a folder under a temporary name beside it, fsyncs every file,
then swaps it in (the previous folder is renamed to ``<name>.old`` and removed only once
the new one is in place), so a killed or crashing writer never leaves a half folder
under the final name. ``load_checkpoint`` falls back to ``<name>.old`` when a crash hit
between the two renames of the swap.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from facefoundry.atomic import TMP_MARK, atomic_path, fsync_dir, fsync_file, tmp_path_for

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "state.safetensors"
STATE_FILE = "state.json"
OPTIMIZER_GROUP = "optim"
OLD_SUFFIX = ".old"

Weights = torch.nn.Module | Mapping[str, torch.Tensor]


def _tensors(weights: Weights) -> dict[str, torch.Tensor]:
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    return {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in state.items()}


def save_weights(path: str | Path, weights: Weights, metadata: dict[str, str] | None = None):
    """One module's (or tensor dict's) weights as a safetensors file, written atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(_tensors(weights), str(tmp), metadata=metadata)
    return Path(path)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        if path.is_file():
            fsync_file(path)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


@contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """An empty temporary folder to fill; when the block succeeds its files are fsynced
    and it replaces ``final`` (renamed to ``final.old`` and deleted after the swap).
    A failing block leaves ``final`` as it was; a killed one leaves a temporary folder
    that the next writer of ``final`` removes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f"{final.name}{TMP_MARK}*"):
        logger.info("removing leftover %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp, old = tmp_path_for(final), final.with_name(final.name + OLD_SUFFIX)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)  # left by a crash after a complete swap
            os.replace(final, old)
        # without final, a crash in an earlier swap left old as the newest complete copy:
        # it is kept until the new folder is in place
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    folder: str | Path,
    weights: Mapping[str, Weights],
    optimizer: torch.optim.Optimizer | None,
    state: Mapping[str, Any],
) -> Path:
    """Write ``folder`` atomically: each named weight group (a module or a tensor dict),
    the optimizer's state and ``state`` (JSON-serialisable; ``param_groups`` is added)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for group, values in weights.items():
        if "." in group or group == OPTIMIZER_GROUP:
            raise ValueError(f"weight group {group!r}: no dots, and not {OPTIMIZER_GROUP!r}")
        tensors.update({f"{group}.{k}": v for k, v in _tensors(values).items()})
    meta = dict(state)
    if optimizer is not None:
        optimizer_state = optimizer.state_dict()
        for index, values in optimizer_state["state"].items():
            for name, value in _tensors(values).items():
                tensors[f"{OPTIMIZER_GROUP}.{index}.{name}"] = value
        meta["param_groups"] = optimizer_state["param_groups"]
    with atomic_folder(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(meta))
    return Path(folder)


class Checkpoint:
    """A complete checkpoint folder: ``state`` (the JSON) at once, tensors on first use."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.state: dict[str, Any] = json.loads((folder / STATE_FILE).read_text())

    @cached_property
    def _groups(self) -> dict[str, dict[str, torch.Tensor]]:
        from safetensors.torch import load_file

        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in load_file(str(self.folder / WEIGHTS_FILE)).items():
            group, name = key.split(".", 1)
            groups.setdefault(group, {})[name] = value
        return groups

    @property
    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """Weight group -> {name: tensor} (CPU), the optimizer's state left out."""
        return {k: v for k, v in self._groups.items() if k != OPTIMIZER_GROUP}

    def optimizer_state(self) -> dict[str, Any]:
        """The ``state_dict`` the optimizer had when it was saved."""
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in self._groups.get(OPTIMIZER_GROUP, {}).items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        return {"state": state, "param_groups": self.state["param_groups"]}

    def restore(self, optimizer: torch.optim.Optimizer | None = None, **modules: torch.nn.Module):
        """Load each weight group into the module of that name (strictly), then the optimizer."""
        weights = self.weights
        for group, module in modules.items():
            module.load_state_dict(weights[group])
        if optimizer is not None:
            optimizer.load_state_dict(self.optimizer_state())


def load_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The checkpoint saved to ``folder``, or None when there is none (a half-written one
    never counts; after a crash inside the swap, the previous one is used)."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + OLD_SUFFIX)):
        if (candidate / STATE_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            if candidate != folder:
                logger.warning("%s is missing: resuming from %s", folder, candidate)
            return Checkpoint(candidate)
    return None


__all__ = ["Checkpoint", "atomic_folder", "load_checkpoint", "save_checkpoint", "save_weights"]
