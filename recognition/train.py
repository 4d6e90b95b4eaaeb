"""Training a face recognizer on a shard set, validating on LFW pairs as it goes.

Streams shards through ``shards.stream_dataset``; augments on the fly (flip,
RandAugment); backbone + margin head under accelerate (CPU, one GPU, DDP via
``accelerate launch``; bf16 autocast on GPU). Checkpoints are safetensors written at
epoch ends; a resumed run starts the next epoch exactly as the uninterrupted run
would (data order and augmentation are seeded by (seed, epoch), per-step randomness
by (seed, step)).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from facefoundry.evaluation.augment import RandAugment, augment_batch
from facefoundry.evaluation.backbones import get_model
from facefoundry.evaluation.losses import MarginHead, make_loss

logger = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """A shard set that cannot be trained on (e.g. labels not contiguous 0..C-1)."""


class FRTrainSettings(BaseModel):
    """The recognizer recipe; defaults are the small CPU recipe (see BENCHMARKS.md)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = "mbf_small"
    embedding_dim: int = 128
    loss: str = Field("cosface", pattern="^(arcface|cosface|adaface)$")
    scale: float | None = None
    margin: float | None = None
    partial_fc: float = Field(1.0, gt=0.0, le=1.0, description="sample rate of class centres")
    optimizer: str = Field("sgd", pattern="^(sgd|adamw)$")
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = Field(128, ge=2)
    epochs: int = Field(20, ge=1)
    warmup_epochs: float = 1.0
    schedule: str = Field("cosine", pattern="^(cosine|step)$")
    step_milestones: list[float] = [0.5, 0.75, 0.9]
    hflip: bool = True
    randaugment: tuple[int, int] | None = None  # (num_ops, magnitude), e.g. (4, 16)
    seed: int = 0
    loader_workers: int = 1
    threads: int | None = None
    validate_every_epochs: int = 1
    val_pairs: str | None = "devtest"
    val_bins: list[str] = Field(default_factory=list, description="trusted insightface .bin sets")
    early_stop_patience: int | None = None
    max_minutes: float | None = None
    mixed_precision: str = Field("auto", pattern="^(auto|no|bf16|fp16)$")


def check_contiguous_labels(shards_dir: Path) -> int:
    """Class count from dataset.json after checking kept labels are exactly 0..C-1."""
    from facefoundry.shards import read_manifests

    dataset = json.loads((shards_dir / "dataset.json").read_text())
    classes = int(dataset.get("class_count", 0))
    manifest = read_manifests(shards_dir)
    columns = set(manifest.column_names)
    if "label" not in columns:
        raise TrainingDataError(f"{shards_dir}: manifests have no label column")
    kept = manifest.filter(manifest.column("kept")) if "kept" in columns else manifest
    labels = np.unique(np.asarray(kept.column("label").to_numpy(zero_copy_only=False)))
    if classes < 2 or len(labels) != classes or labels[0] != 0 or labels[-1] != classes - 1:
        raise TrainingDataError(
            f"{shards_dir}: labels are not contiguous 0..{classes - 1} (found {len(labels)} "
            f"distinct, from {labels[:1]} to {labels[-1:]}); re-run `shards finalize`"
        )
    return classes


def _lr_factor(settings: FRTrainSettings, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` (epochs done, fractional)."""
    if progress < settings.warmup_epochs:
        return (progress + 1e-3) / settings.warmup_epochs
    if settings.schedule == "step":
        fraction = progress / settings.epochs
        return 0.1 ** sum(fraction >= m for m in settings.step_milestones)
    span = max(settings.epochs - settings.warmup_epochs, 1e-6)
    return 0.5 * (1 + math.cos(math.pi * (progress - settings.warmup_epochs) / span))


class RecognizerTrainer:
    def __init__(
        self, shards_dir: str | Path, out_dir: str | Path, settings: FRTrainSettings, validator=None
    ):
        from accelerate import Accelerator

        if settings.threads:
            torch.set_num_threads(settings.threads)
        precision = settings.mixed_precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() else "no"
        self.accelerator = Accelerator(mixed_precision=precision)
        self.shards_dir, self.out_dir, self.settings = Path(shards_dir), Path(out_dir), settings
        self.num_classes = check_contiguous_labels(self.shards_dir)
        sizes = json.loads((self.shards_dir / "sizes.json").read_text())
        self.train_size = int(
            sum(v for k, v in sizes.items() if "train" in k) or sum(sizes.values())
        )
        # a small dataset (e.g. few identities survived filtering) still trains: shrink the
        # batch to the data rather than yield no full batch at all
        self.batch_size = max(2, min(settings.batch_size, self.train_size))
        if self.batch_size < settings.batch_size:
            logger.warning(
                "only %d training images: batch size %d instead of %d",
                self.train_size,
                self.batch_size,
                settings.batch_size,
            )
        torch.manual_seed(settings.seed)
        backbone = get_model(settings.backbone, num_features=settings.embedding_dim)
        head = MarginHead(
            self.num_classes,
            settings.embedding_dim,
            make_loss(settings.loss, settings.scale, settings.margin),
            settings.partial_fc,
        )
        parameters = [{"params": backbone.parameters()}, {"params": head.parameters()}]
        if settings.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                parameters,
                lr=settings.learning_rate,
                momentum=settings.momentum,
                weight_decay=settings.weight_decay,
            )
        else:
            optimizer = torch.optim.AdamW(
                parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay
            )
        self.backbone, self.head, self.optimizer = self.accelerator.prepare(
            backbone, head, optimizer
        )
        self.validator = validator
        self.epoch, self.step = 0, 0
        self.history: list[dict] = []
        self.best: float | None = None

    # --- data ---------------------------------------------------------------------------
    def batches(self, epoch: int):
        """(float images N x 3 x 112 x 112 in -1..1, labels) for one epoch, seeded by epoch."""
        from facefoundry.shards import make_loader, stream_dataset

        dataset = stream_dataset(
            self.shards_dir,
            "train",
            shuffle=True,
            seed=self.settings.seed + epoch,
            batch_size=self.batch_size,
            partial_batches=False,
        )
        loader = make_loader(dataset, num_workers=self.settings.loader_workers)
        rng = np.random.default_rng([self.settings.seed, epoch])
        rand = (
            RandAugment(*self.settings.randaugment, seed=int(rng.integers(1 << 31)))
            if self.settings.randaugment
            else None
        )
        for images, labels in loader:
            faces = augment_batch(images.numpy(), rng, self.settings.hflip, rand)
            x = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            yield x.contiguous(), labels.long()

    def steps_per_epoch(self) -> int:
        world = self.accelerator.num_processes
        return max(1, self.train_size // (self.batch_size * world))

    # --- optimisation --------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        self.backbone.train()
        self.head.train()
        progress = self.epoch + (self.step % self.steps_per_epoch()) / self.steps_per_epoch()
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.learning_rate * _lr_factor(self.settings, progress)
        torch.manual_seed(self.settings.seed * 1_000_003 + self.step)  # Partial FC sampling
        device = self.accelerator.device
        images, labels = images.to(device), labels.to(device)
        with self.accelerator.autocast():
            embeddings = self.backbone(images)
        loss = self.head(embeddings.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(
            list(self.backbone.parameters()) + list(self.head.parameters()), 5.0
        )
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def embed(self, faces: np.ndarray, flip_tta: bool = True, batch: int = 256) -> np.ndarray:
        """Unit embeddings of aligned RGB uint8 faces with the current backbone."""
        self.backbone.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(faces), batch):
                chunk = torch.from_numpy(faces[start : start + batch]).permute(0, 3, 1, 2)
                x = chunk.float().div(127.5).sub(1.0).to(self.accelerator.device)
                features = self.backbone(x).float()
                if flip_tta:
                    features = features + self.backbone(x.flip(-1)).float()
                out.append(torch.nn.functional.normalize(features, dim=1).cpu().numpy())
        return np.concatenate(out)

    # --- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        final, partial = self.out_dir / "checkpoint", self.out_dir / "checkpoint.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        backbone = self.accelerator.unwrap_model(self.backbone)
        head = self.accelerator.unwrap_model(self.head)
        tensors = {
            f"backbone.{k}": v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()
        }
        tensors.update(
            {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        )
        state = self.optimizer.state_dict()
        for index, values in state["state"].items():
            for name, value in values.items():
                tensors[f"optim.{index}.{name}"] = (
                    torch.as_tensor(value).detach().cpu().contiguous()
                )
        save_file(tensors, str(partial / "state.safetensors"))
        (partial / "state.json").write_text(
            json.dumps(
                {
                    "epoch": self.epoch,
                    "step": self.step,
                    "param_groups": state["param_groups"],
                    "history": self.history,
                    "best": self.best,
                    "settings": self.settings.model_dump(mode="json"),
                }
            )
        )
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        self.export_backbone(self.out_dir / "backbone.safetensors")
        return final

    def load_checkpoint(self) -> bool:
        folder = self.out_dir / "checkpoint"
        if not (folder / "state.json").is_file():
            return False
        meta = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "state.safetensors"))
        self.accelerator.unwrap_model(self.backbone).load_state_dict(
            {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
        )
        self.accelerator.unwrap_model(self.head).load_state_dict(
            {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
        )
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.history, self.best = meta.get("history", []), meta.get("best")
        return True

    def export_backbone(self, path: Path) -> Path:
        backbone = self.accelerator.unwrap_model(self.backbone)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, str(path)
        )
        return path

    # --- the loop ------------------------------------------------------------------------
    def fit(self, progress: bool = True) -> dict:
        from tqdm.auto import tqdm

        started = time.perf_counter()
        stale = 0
        out_of_time = False
        while self.epoch < self.settings.epochs and not out_of_time:
            losses = []
            bar = tqdm(
                total=self.steps_per_epoch(),
                desc=f"epoch {self.epoch + 1}",
                unit="step",
                disable=not progress,
                leave=False,
            )
            epoch_started = time.perf_counter()
            seen = 0
            for images, labels in self.batches(self.epoch):
                losses.append(self.train_step(images, labels))
                seen += len(labels)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if (
                    self.settings.max_minutes
                    and time.perf_counter() - started > 60 * self.settings.max_minutes
                ):
                    out_of_time = True
                    break
            bar.close()
            if not losses:
                raise TrainingDataError(
                    f"epoch {self.epoch + 1} produced no batch of {self.batch_size} from "
                    f"{self.shards_dir} ({self.train_size} images)"
                )
            self.epoch += 1
            entry = {
                "epoch": self.epoch,
                "step": self.step,
                "loss": float(np.mean(losses)) if losses else None,
                "img_per_s": seen / max(time.perf_counter() - epoch_started, 1e-9),
                "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - started, 1),
            }
            if self.validator and (
                self.epoch % self.settings.validate_every_epochs == 0
                or self.epoch == self.settings.epochs
                or out_of_time
            ):
                entry.update(self.validator(self))
                score = entry.get("val_accuracy")
                if score is not None and (self.best is None or score > self.best):
                    self.best, stale = score, 0
                else:
                    stale += 1
            self.history.append(entry)
            logger.info("epoch %d: %s", self.epoch, entry)
            self.save_checkpoint()
            if self.settings.early_stop_patience and stale >= self.settings.early_stop_patience:
                logger.info("early stop: no validation gain in %d epochs", stale)
                break
        return {
            "epochs": self.epoch,
            "steps": self.step,
            "seconds": time.perf_counter() - started,
            "history": self.history,
        }


def train_recognizer(
    shards_dir: str | Path,
    out_dir: str | Path,
    settings: FRTrainSettings | None = None,
    lfw_root: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Train (or resume), then export backbone.safetensors, model.onnx, history and curves."""
    from facefoundry.evaluation.export import export_onnx

    settings = settings or FRTrainSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    validators = []
    if settings.val_pairs:
        from facefoundry.evaluation.aligned_pairs import aligned_pairs, lfw_validator

        validators.append(
            lfw_validator(aligned_pairs(settings.val_pairs, lfw_root, progress=progress))
        )
    if settings.val_bins:
        from facefoundry.evaluation.aligned_pairs import bin_validator

        validators.extend(bin_validator(path) for path in settings.val_bins)
    validator = None
    if validators:

        def validator(trainer) -> dict:
            figures: dict = {}
            for check in validators:
                figures.update(check(trainer))
            return figures

    trainer = RecognizerTrainer(shards_dir, out_dir, settings, validator)
    if resume:
        trainer.load_checkpoint()
    result = trainer.fit(progress=progress)
    backbone = trainer.accelerator.unwrap_model(trainer.backbone)
    export_onnx(backbone, out_dir / "model.onnx")
    (out_dir / "history.json").write_text(json.dumps(result["history"], indent=1))
    (out_dir / "train_config.json").write_text(
        json.dumps(
            {
                "settings": settings.model_dump(mode="json"),
                "num_classes": trainer.num_classes,
                "train_size": trainer.train_size,
                "shards": str(shards_dir),
            },
            indent=1,
        )
    )
    plot_curves(result["history"], out_dir / "curves.png")
    return out_dir


def plot_curves(history: list[dict], path: Path) -> Path | None:
    """Loss and validation accuracy per epoch as a PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, left = plt.subplots(figsize=(6, 3.5))
    left.plot(epochs, [h["loss"] for h in history], color="tab:blue", label="train loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss", color="tab:blue")
    if any("val_accuracy" in h for h in history):
        right = left.twinx()
        points = [(h["epoch"], 100 * h["val_accuracy"]) for h in history if "val_accuracy" in h]
        right.plot(*zip(*points, strict=True), color="tab:orange", marker="o")
        right.set_ylabel("LFW accuracy %", color="tab:orange")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
