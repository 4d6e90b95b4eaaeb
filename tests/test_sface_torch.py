"""The torch copy of SFace agrees with OpenCV's SFace on real LFW faces and is differentiable."""

import numpy as np
import pytest
import torch

FACE_COUNT = 16


@pytest.fixture(scope="module")
def aligned_faces(lfw):
    """Sixteen real LFW faces aligned to the template, spread over the alphabet."""
    from facefoundry.faces import align_face, decode_image, get_detector, select_face

    detector = get_detector("yunet")
    names = sorted(lfw.names())
    faces = []
    for name in names[:: max(1, len(names) // (2 * FACE_COUNT))]:
        image = decode_image(lfw.read(name), name)
        face = select_face(detector.detect(image), image.shape)
        if face is not None:
            faces.append(align_face(image, face.landmarks))
        if len(faces) == FACE_COUNT:
            break
    assert len(faces) == FACE_COUNT
    return np.stack(faces)


@pytest.fixture(scope="module")
def sface_torch():
    from facefoundry.recognition.sface_torch import load_sface_torch

    return load_sface_torch()


def test_graph_uses_only_supported_ops(sface_torch):
    from facefoundry.recognition.sface_torch import SFACE_OPS

    ops = {op for op, *_ in sface_torch._nodes}
    assert ops == SFACE_OPS
    assert not any(p.requires_grad for p in sface_torch.parameters())


def test_matches_opencv_sface_and_batches_like_single_faces(aligned_faces, sface_torch):
    from facefoundry.faces import get_embedder
    from facefoundry.recognition.sface_torch import normalise, preprocess

    reference = get_embedder("sface").embed_aligned(aligned_faces)
    with torch.no_grad():
        batched = sface_torch(preprocess(aligned_faces))
        single = torch.cat([sface_torch(preprocess(face)) for face in aligned_faces])
    assert batched.shape == (FACE_COUNT, 128)
    cosine = (normalise(batched).numpy() * reference).sum(axis=1)
    assert cosine.min() >= 0.999, cosine
    assert (batched - single).abs().max() <= 1e-4  # measured ~5e-6 on CPU


def test_gradient_reaches_the_pixels(aligned_faces, sface_torch):
    from facefoundry.recognition.sface_torch import normalise, preprocess, preprocess_tensor

    target = normalise(sface_torch(preprocess(aligned_faces[1:3]))).detach()
    images = preprocess(aligned_faces[2:4]).requires_grad_(True)
    embeddings = normalise(sface_torch(preprocess_tensor(images)))
    loss = 1 - (embeddings * target).sum(dim=1).mean()
    loss.backward()
    grad = images.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_rejects_unknown_ops():
    from onnx import TensorProto, helper

    from facefoundry.recognition.sface_torch import OnnxGraphModule

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    with pytest.raises(ValueError, match="Relu"):
        OnnxGraphModule(helper.make_model(graph))


def test_per_channel_prelu_equals_the_onnx_formula_with_its_gradient():
    """The fast path (torch's prelu) gives exactly ONNX PRelu's where(x >= 0, x, slope x),
    values and gradients, on negative, zero and positive inputs."""
    from facefoundry.recognition.sface_torch import _prelu

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=generator)
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1e-30])
    slope = torch.randn(4, 1, 1, generator=generator)
    fast_input, plain_input = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    fast = _prelu(fast_input, slope)
    plain = torch.where(plain_input >= 0, plain_input, plain_input * slope)
    assert torch.equal(fast, plain)
    weights = torch.randn(fast.shape, generator=generator)
    (fast * weights).sum().backward()
    (plain * weights).sum().backward()
    nonzero = x != 0  # at exactly 0 the subgradient is a convention; elsewhere it is not
    assert torch.equal(fast_input.grad[nonzero], plain_input.grad[nonzero])


def test_runs_our_own_exported_recognizer_like_onnxruntime(aligned_faces, tmp_path):
    """An exported mbf_small (residual Add, MatMul embedding) runs as a torch module with
    onnxruntime's embeddings and passes gradients to the pixels."""
    import onnxruntime as ort

    from facefoundry.recognition.backbones import get_model
    from facefoundry.recognition.export import export_onnx
    from facefoundry.recognition.sface_torch import SFACE_OPS, load_onnx_torch, normalise

    torch.manual_seed(0)
    path = export_onnx(get_model("mbf_small", num_features=128), tmp_path / "mbf.onnx")
    module = load_onnx_torch(path)
    assert {"Add", "MatMul"} <= {op for op, *_ in module._nodes} - SFACE_OPS
    x = torch.from_numpy(aligned_faces[:4]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    pixels = x.clone().requires_grad_(True)
    features = module(pixels)
    cosine = (
        normalise(features).detach().numpy() * normalise(torch.from_numpy(reference)).numpy()
    ).sum(1)
    assert cosine.min() >= 0.9999, cosine
    normalise(features)[:, 0].sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
