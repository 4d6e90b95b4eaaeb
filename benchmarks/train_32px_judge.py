"""A third judge for 32 px faces (issue 16): a recognizer of ours that never steers the
generator and never filters its output, trained on real faces as a 32 px generator shows
them, so that it can tell whether a lever adds identities or only fools the filter's
SFace (and dlib, weak at 32 px, keeps fewer real people than synthetic ones).

Recipe: bench_train's (mbf_small, 128-d, CosFace s 32 m 0.35, SGD 0.1 with one warm-up
epoch then cosine, batch 128, flips) on LFW DevTrain's aligned faces shrunk to 32 px and
enlarged back to 112 px, as ``bench_sampling.real_faces`` and the generator's output are.
The 200 people ``real_faces(200, 4, 32, min_images=2)`` takes as the real reference are
left out, so that reference is people the judge never saw. Exports ONNX for the
``onnx:PATH`` embedder; then calibrate it (`facefoundry calibrate --embedder onnx:PATH`)
and pass ``--third-judge onnx:PATH`` to bench_sface_guidance.py.

Usage: python benchmarks/train_32px_judge.py [--out runs/judge32.onnx] [--epochs 8]
Last line: one JSON object (faces, people, epochs, losses, ONNX parity, minutes).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from bench_sampling import real_faces
from common import REPO, finish, machine, save_results


def cosine_lr(step: int, total: int, epochs: int, peak: float = 0.1) -> float:
    """One linear warm-up epoch, then a cosine to zero over the rest."""
    progress = step / total * epochs
    if progress < 1:
        return peak * progress
    return peak * 0.5 * (1 + math.cos(math.pi * (progress - 1) / max(epochs - 1, 1)))


def judge_training_faces():
    """LFW DevTrain (the generator's training set) without the 200 people of the benches'
    real reference row, shrunk to 32 px and enlarged to 112 as the generator's faces are:
    (the training set, the rows kept, those faces as uint8 N x 112 x 112 x 3)."""
    import cv2

    from facefoundry.evaluation.variety import shrink_to
    from facefoundry.generators.training_data import FaceTrainingSet

    data = FaceTrainingSet.load(REPO / "data" / "lfw-devtrain-sface-64.npz")
    _, reference = real_faces(200, 4, 32, min_images=2)  # the benches' real row: held out
    rows = np.flatnonzero(~np.isin(np.asarray(data.labels), np.unique(reference)))
    enlarged = [cv2.resize(f, (112, 112), interpolation=cv2.INTER_CUBIC) for f in data.faces[rows]]
    return data, rows, shrink_to(np.stack(enlarged), 32)


def train_cosface(faces: np.ndarray, classes: np.ndarray, epochs: int = 8, seed: int = 0):
    """bench_train's recipe (mbf_small, CosFace s 32 m 0.35, SGD 0.1, one warm-up epoch
    then cosine, batch 128, flips) on uint8 N x 112 x 112 x 3 RGB faces with labels
    0..C-1. Returns the backbone (eval mode) and each epoch's last batch loss."""
    from facefoundry.recognition.backbones import get_model
    from facefoundry.recognition.losses import MarginHead, cosface

    torch.manual_seed(seed)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.asarray(classes, dtype=np.int64))
    backbone = get_model("mbf_small", num_features=128)
    head = MarginHead(int(y.max()) + 1, 128, cosface(32.0, 0.35))
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    batch = min(128, len(x))  # a set smaller than one batch trains as one batch
    total = epochs * (len(x) // batch)
    generator = torch.Generator().manual_seed(seed)
    step, losses = 0, []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch + 1, batch):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, total, epochs)
            rows = order[start : start + batch]
            images = x[rows].float().div(127.5).sub(1)
            flip = torch.rand(batch, generator=generator) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
            loss = head(backbone(images), y[rows])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            step += 1
        losses.append(round(float(loss.detach()), 2))
        print(f"epoch {epoch + 1}: loss {losses[-1]}", flush=True)
    return backbone.eval(), losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "judge32.onnx"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from facefoundry.recognition.export import export_onnx, onnx_parity

    started = time.perf_counter()
    data, rows, faces = judge_training_faces()
    _, classes = np.unique(np.asarray(data.labels)[rows], return_inverse=True)
    held = len(np.unique(data.labels)) - (classes.max() + 1)
    print(f"{len(faces)} faces of {classes.max() + 1} people", flush=True)
    backbone, losses = train_cosface(faces, classes, args.epochs)
    path = export_onnx(backbone, args.out)
    figures = {
        "machine": machine(),
        "torch_threads": args.threads,
        "out": str(path),
        "faces": len(faces),
        "people": int(classes.max()) + 1,
        "held_out_people": int(held),
        "epochs": args.epochs,
        "last_batch_loss_per_epoch": losses,
        "onnx_parity": round(onnx_parity(backbone, path, faces[:64].copy()), 6),
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    save_results("train_32px_judge", figures)
    finish(figures)


if __name__ == "__main__":
    main()
