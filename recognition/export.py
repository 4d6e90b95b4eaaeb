"""Exporting a trained backbone to ONNX that our ``onnx:PATH`` embedder and insightface's
``model_zoo.get_model`` both load as a recognition model.

Contract (insightface's ArcFace convention): input RGB float N x 3 x 112 x 112 in
-1..1 ((x - 127.5) / 127.5), fixed spatial size, free batch axis; output N x D
unnormalised embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from facefoundry.atomic import atomic_path
from facefoundry.recognition.backbones import get_model


def load_backbone(path: str | Path, name: str, num_features: int = 512) -> torch.nn.Module:
    """A backbone from our safetensors or an arcface_torch ``backbone.pth`` (strict keys;
    .pth files are read with ``weights_only=True``, never unpickled as code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path} do not exist")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = get_model(name, num_features=num_features)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_onnx(
    backbone: torch.nn.Module, path: str | Path, input_size: int = 112, opset: int = 17
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone = backbone.eval().cpu().float()
    example = torch.zeros(1, 3, input_size, input_size)
    with atomic_path(path) as partial:
        torch.onnx.export(
            backbone,
            example,
            partial,
            input_names=["input.1"],
            output_names=["embedding"],
            dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def onnx_parity(backbone: torch.nn.Module, path: str | Path, faces: np.ndarray) -> float:
    """Minimum cosine between torch and onnxruntime embeddings of ``faces`` (uint8 NHWC)."""
    import onnxruntime as ort

    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    with torch.no_grad():
        reference = torch.nn.functional.normalize(backbone.eval()(x), dim=1).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    out = out / np.linalg.norm(out, axis=1, keepdims=True)
    return float(np.min(np.sum(out * reference, axis=1)))
