"""The onnx:PATH embedder runs any ArcFace-style ONNX: checked against torch itself."""

import numpy as np
import pytest
import torch

from facefoundry.faces import get_embedder


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


def test_onnx_embedder_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = TinyRecognizer().eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 112, 112),
        path,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
        dynamo=False,
    )
    embedder = get_embedder(f"onnx:{path}")
    assert embedder.dim == 16 and embedder.batch_size > 1
    faces = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    ours = embedder.embed_aligned(faces)
    with torch.no_grad():
        x = (torch.from_numpy(faces).float().permute(0, 3, 1, 2) - 127.5) / 127.5
        reference = torch.nn.functional.normalize(model(x), dim=1).numpy()
    assert np.allclose(ours, reference, atol=1e-5)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_onnx_embedder_rejects_non_image_models(tmp_path):
    path = tmp_path / "linear.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), torch.zeros(1, 4), path, dynamo=False)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        get_embedder(f"onnx:{path}")
