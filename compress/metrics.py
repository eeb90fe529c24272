"""Model statistics (params, MACs) for PyTorch and ONNX models, and classification metrics."""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import shape_inference
from sklearn.metrics import precision_recall_fscore_support
from torch import nn


def model_stats(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """Parameters and multiply-accumulates of one sample's forward pass."""
    import torch_pruning as tp

    if isinstance(model, torch.jit.ScriptModule):
        return _script_module_stats(model, input_shape)
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    model.train(was_training)
    return {"params": int(params), "macs": int(macs)}


def _script_module_stats(model: torch.jit.ScriptModule, input_shape: tuple[int, ...]) -> dict:
    """TorchScript modules take no forward hooks (Torch-Pruning's counter needs them): count MACs on its ONNX graph."""
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, *input_shape),), buffer, dynamo=False)
    macs = onnx_stats(onnx.load_from_string(buffer.getvalue()))["macs"]
    return {"params": sum(p.numel() for p in model.parameters()), "macs": int(macs)}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of (N, classes) logits, row by row."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    predictions = logits.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0)
    return {"accuracy": float((predictions == labels).mean()), "precision_macro": float(precision),
            "recall_macro": float(recall), "f1_macro": float(f1)}


# ONNX ops whose weight count is a multiply-accumulate per output element (float and quantized forms)
_CONV_OPS = {"Conv", "ConvInteger", "QLinearConv"}
_MATMUL_OPS = {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "QGemm"}
_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "Gemm": 1, "MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3,
                 "QGemm": 3}


def onnx_stats(model: onnx.ModelProto, dims: dict[str, int] | None = None) -> dict:
    """Parameters (weights and biases of Conv/Gemm/MatMul, whatever their storage type) and MACs at
    batch 1, read from the graph with shape inference, so it works for any ONNX model, fp32 or int8.
    ``dims`` sets symbolic input dims past the first axis, by name ("seq") or "input:axis"; unset ones count as 1."""
    model = _with_batch_one(model, dims or {})
    shapes = _infer_shapes(model)
    constants = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:  # weights stored as Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims:
            constants[node.output[0]] = list(node.attribute[0].t.dims)
    producers = {out: node for node in model.graph.node for out in node.output}
    macs = params = 0
    for node in model.graph.node:
        if node.op_type not in _CONV_OPS | _MATMUL_OPS:
            continue
        out_dims = shapes.get(node.output[0])
        weight_dims = _constant_dims(node.input[_WEIGHT_INPUT[node.op_type]], constants, producers)
        if node.op_type in _CONV_OPS:
            if weight_dims is None or not out_dims or None in out_dims:
                continue
            # output elements x (input channels per group x kernel area) = output spatial size x weight count
            macs += int(np.prod(out_dims[2:])) * int(np.prod(weight_dims))
        else:
            a_dims = shapes.get(node.input[0])
            if out_dims and None not in out_dims and a_dims and a_dims[-1]:
                macs += int(np.prod(out_dims)) * a_dims[-1]
        if weight_dims is not None:
            params += int(np.prod(weight_dims))
        bias_index = {"Conv": 2, "Gemm": 2, "QLinearConv": 8, "QGemm": 6}.get(node.op_type)
        if bias_index is not None and len(node.input) > bias_index and node.input[bias_index]:
            bias_dims = _constant_dims(node.input[bias_index], constants, producers)
            params += int(np.prod(bias_dims)) if bias_dims else 0
    return {"params": params, "macs": macs}


def _infer_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """onnx's shape inference (with data propagation), carried through the com.microsoft ops of QOperator int8 graphs (QLinearAdd,
    QGemm, ...) that it does not know: their output shapes are added and inference rerun, else every
    layer after the first residual add would have no shape (and no MACs)."""
    for _ in range(len(model.graph.node) + 1):
        try:  # data propagation resolves the Reshape targets attention computes from Shape ops
            inferred = shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001 - onnx raises several types; plain inference still gives most shapes
            inferred = shape_inference.infer_shapes(model)
        shapes = {init.name: list(init.dims) for init in model.graph.initializer}
        types = {init.name: init.data_type for init in model.graph.initializer}
        for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
            types[value.name] = value.type.tensor_type.elem_type
        added = False
        for node in model.graph.node:
            known = shapes.get(node.output[0])
            if node.domain != "com.microsoft" or (known and None not in known):
                continue
            shape = _contrib_output_shape(node, shapes)
            if shape is not None:
                elem_type = types.get(node.input[8] if node.op_type == "QGemm" and len(node.input) > 8 else node.input[0],
                                      onnx.TensorProto.FLOAT)
                model.graph.value_info.append(onnx.helper.make_tensor_value_info(node.output[0], elem_type, shape))
                added = True
        if not added:
            return shapes
    return shapes


def _contrib_output_shape(node: onnx.NodeProto, shapes: dict) -> list[int] | None:
    def shape(index: int):
        dims = shapes.get(node.input[index]) if len(node.input) > index else None
        return dims if dims and None not in dims else None

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("QLinearAdd", "QLinearMul") and shape(0) and shape(3):
        return list(np.broadcast_shapes(tuple(shape(0)), tuple(shape(3))))
    if node.op_type in ("QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax") and shape(0):
        return shape(0)
    if node.op_type == "QLinearGlobalAveragePool" and shape(0):
        n, *rest = shape(0)
        return [n, *([1] * (len(rest) - 1)), rest[-1]] if attrs.get("channels_last") else [n, rest[0], *([1] * (len(rest) - 1))]
    if node.op_type == "QGemm" and shape(0) and shape(3):
        m = shape(0)[1] if attrs.get("transA") else shape(0)[0]
        return [m, shape(3)[0] if attrs.get("transB") else shape(3)[1]]
    return None


def _constant_dims(name: str, constants: dict, producers: dict) -> list[int] | None:
    """Shape of a stored weight, looking through the DequantizeLinear/Cast that QDQ graphs put before it;
    None when the input is computed from activations (no parameters)."""
    for _ in range(4):
        if name in constants:
            return constants[name]
        node = producers.get(name)
        if node is None or node.op_type not in ("DequantizeLinear", "Cast", "Identity"):
            return None
        name = node.input[0]
    return None


def _with_batch_one(model: onnx.ModelProto, dims: dict[str, int]) -> onnx.ModelProto:
    """Copy of the model with every symbolic input dimension set, so shapes resolve to numbers: the first
    axis (the batch) to 1, the others from ``dims`` (by "input:axis" or by name), else 1."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]  # the exporter's value_info keeps the symbolic batch; inference redoes it
    initializer_names = {init.name for init in model.graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name in initializer_names:
            continue
        for axis, dim in enumerate(graph_input.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                named = dims.get(dim.dim_param, 1) if dim.dim_param else 1
                dim.dim_value = 1 if axis == 0 else dims.get(f"{graph_input.name}:{axis}", named)
    return model
