"""The onnx:PATH embedder runs any ArcFace-style ONNX: checked against torch itself."""

import numpy as np
import pytest
import torch

from facefoundry.faces import get_embedder
from facefoundry.faces.embedders import OnnxEmbedder
from tests.helpers.recognizers import export_tiny_recognizer


def test_onnx_embedder_matches_torch(tmp_path):
    path = tmp_path / "tiny.onnx"
    model = export_tiny_recognizer(path)
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


def test_onnx_threads_follow_the_omp_budget(tmp_path, monkeypatch):
    """A face worker owns one core: its onnxruntime must not start a pool per core."""
    path = tmp_path / "tiny.onnx"
    export_tiny_recognizer(path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert OnnxEmbedder(path)._session.get_session_options().intra_op_num_threads == 1
    explicit = OnnxEmbedder(path, threads=2)
    assert explicit._session.get_session_options().intra_op_num_threads == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "two")  # not a count: onnxruntime's own default
    assert OnnxEmbedder(path)._session.get_session_options().intra_op_num_threads == 0
