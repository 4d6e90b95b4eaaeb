"""A tiny ArcFace-style recognizer exported to ONNX: the onnx:PATH embedder's test model."""

from pathlib import Path

import torch


class TinyRecognizer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 4, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4),
            torch.nn.Flatten(),
            torch.nn.Linear(128, 16),
        )

    def forward(self, x):
        return self.body(x)


def export_tiny_recognizer(path: Path, seed: int = 0) -> TinyRecognizer:
    """Random weights (seeded), 112 x 112 input, dynamic batch; returns the torch model."""
    torch.manual_seed(seed)
    model = TinyRecognizer().eval()
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 112, 112),
        path,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
        dynamo=False,
    )
    return model
