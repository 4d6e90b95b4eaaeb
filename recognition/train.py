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
import time
from pathlib import Path

import numpy as np
import torch

from facefoundry import checkpoints
from facefoundry.errors import UsageError
from facefoundry.recognition.augment import RandAugment, augment_batch
from facefoundry.recognition.backbones import get_model
from facefoundry.recognition.losses import MarginHead, make_loss
from facefoundry.recognition.settings import FRTrainSettings

logger = logging.getLogger(__name__)


class TrainingDataError(UsageError, ValueError):
    """A shard set that cannot be trained on (e.g. labels not contiguous 0..C-1)."""


def check_contiguous_labels(shards_dir: Path) -> int:
    """Class count from dataset.json after checking kept labels are exactly 0..C-1 and
    every shard is whole (a damaged shard stops training before it starts)."""
    from facefoundry.shards import read_manifests, shard_urls
    from facefoundry.shards.reader import check_shard_files

    check_shard_files(Path(shards_dir), shard_urls(shards_dir))

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
            f"distinct, from {labels[:1]} to {labels[-1:]}); rewrite the shards with this version (`facefoundry run` re-runs the shards stage)"
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
        """checkpoint/ (backbone, head, optimizer, progress; ``facefoundry.checkpoints``),
        then backbone.safetensors."""
        unwrap = self.accelerator.unwrap_model
        final = checkpoints.save_checkpoint(
            self.out_dir / "checkpoint",
            {"backbone": unwrap(self.backbone), "head": unwrap(self.head)},
            self.optimizer,
            {
                "epoch": self.epoch,
                "step": self.step,
                "history": self.history,
                "best": self.best,
                "settings": self.settings.model_dump(mode="json"),
            },
        )
        self.export_backbone(self.out_dir / "backbone.safetensors")
        return final

    def load_checkpoint(self) -> bool:
        checkpoint = checkpoints.load_checkpoint(self.out_dir / "checkpoint")
        if checkpoint is None:
            return False
        unwrap = self.accelerator.unwrap_model
        checkpoint.restore(self.optimizer, backbone=unwrap(self.backbone), head=unwrap(self.head))
        meta = checkpoint.state
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.history, self.best = meta.get("history", []), meta.get("best")
        return True

    def export_backbone(self, path: Path) -> Path:
        return checkpoints.save_weights(path, self.accelerator.unwrap_model(self.backbone))

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
            if self.accelerator.is_main_process:  # one writer per checkpoint under DDP
                self.save_checkpoint()
            self.accelerator.wait_for_everyone()
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
    from facefoundry.recognition.export import export_onnx

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
