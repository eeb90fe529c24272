"""What the quantize stage measures and explains: the CPU's int8 instructions and the warnings they
call for, which nodes a quantizer changed, each node's sensitivity (the model with only that node
quantized, against fp32), each tensor's scale, zero point and SQNR (onnxruntime's qdq_loss_debug),
and the per-layer report: a Markdown table and a PNG plot."""
from __future__ import annotations

import math
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compress.errors import CompressError
from compress.fsutil import atomic_path, write_text

# CPU flags (Linux /proc/cpuinfo names) of the instructions that make int8 matrix products fast.
INT8_INSTRUCTIONS = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8",
                     "asimddp": "Arm dot product", "i8mm": "Arm int8 matrix multiply"}
# Ops that only move or select values: exact in int8, so they add no quantization error of their own
# (Relu and Clip disappear into the preceding node's quantization range).
EXACT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Pad", "Split", "Gather",
             "GatherElements", "MaxPool", "Resize", "Identity", "TopK", "Expand", "Tile", "DepthToSpace",
             "SpaceToDepth", "ArgMax", "Relu", "Clip", "Shape", "Constant", "ConstantOfShape", "Cast"}
X86_ARCHITECTURES = ("x86_64", "amd64", "i686", "x86")  # platform.machine() names, lower-cased
SMALL_CNN_MACS = 3_000_000  # measured here: CNNs below this ran slower in int8 than fp32 (per-call overhead)


def cpu_int8_support() -> dict:
    """The int8 dot-product instructions this CPU has (from /proc/cpuinfo, or sysctl on macOS)."""
    flags = _cpu_flags()
    found = sorted(flag for flag in INT8_INSTRUCTIONS if flags and flag in flags)
    return {"architecture": platform.machine().lower(), "detected": flags is not None,
            "flags": found, "int8_instructions": [INT8_INSTRUCTIONS[flag] for flag in found]}


def _cpu_flags() -> set[str] | None:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
        return set()
    if sys.platform == "darwin":
        names = {"hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm"}
        flags = set()
        for key, flag in names.items():
            answer = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, check=False)
            if answer.stdout.strip() == "1":
                flags.add(flag)
        return flags
    return None


def hardware_warnings(provider: str, mode: str, support: dict, activation_type: str, symmetric: bool,
                      macs: int, has_conv: bool) -> list[str]:
    """Where int8 (or fp16) is unlikely to pay off on ``provider`` and this CPU, and why."""
    warnings = []
    integer = mode in ("auto", "static", "dynamic")
    arch = support["architecture"]
    if provider == "CPUExecutionProvider" and integer:
        if not support["detected"]:
            warnings.append("could not read this CPU's instruction flags: int8 speed-ups are not guaranteed "
                            "(quantize.mode=auto measures them)")
        elif not support["flags"] and arch in X86_ARCHITECTURES:
            warnings.append("this CPU has no int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX-INT8): "
                            "int8 runs on AVX2 multiply-adds and is rarely faster than fp32; set "
                            "quantize.reduce_range=true to avoid the saturation of u8s8 AVX2 kernels")
        elif not support["flags"] and arch in ("arm64", "aarch64", "armv8l"):
            warnings.append("this CPU has no Arm dot-product instructions (asimddp): int8 gains are unlikely")
        if has_conv and 0 < macs < SMALL_CNN_MACS:
            warnings.append(f"the model has {macs / 1e6:.2f} MMACs: CNNs under ~{SMALL_CNN_MACS / 1e6:.0f} MMACs "
                            "were measured slower in int8 than in fp32 (per-call overhead dominates); "
                            "quantize.mode=auto keeps fp32 unless int8 measures faster")
    if provider == "CUDAExecutionProvider" and integer:
        warnings.append("CUDAExecutionProvider has no int8 convolution kernels: a QDQ model runs its convolutions in "
                        "fp32 plus the quantize/dequantize work, so it is slower; use TensorRT "
                        "(quantize.provider=tensorrt) for int8, or quantize.mode=fp16 on CUDA")
    if provider == "TensorrtExecutionProvider" and integer and (activation_type != "int8" or not symmetric):
        warnings.append("TensorRT runs int8 only with symmetric signed activations and weights: set "
                        "quantize.activation_type=int8 and quantize.symmetric_activations=true (S8S8 QDQ)")
    if mode == "fp16" and provider == "CPUExecutionProvider":
        warnings.append("fp16 is meant for GPU providers (CUDA, TensorRT, DirectML): on CPUExecutionProvider most "
                        "fp16 ops have no fast kernel and the model is usually slower than fp32")
    return warnings


# --- the graph -------------------------------------------------------------------------------------

def changed_nodes(fp32: onnx.ModelProto, converted: onnx.ModelProto, qdq_ops: set[str]) -> list[str]:
    """Names of the fp32 nodes (in graph order) that a quantizer turned into low-precision arithmetic:
    replaced by another operator (QOperator, dynamic), or of a type in ``qdq_ops`` and fed by
    DequantizeLinear (QDQ; other nodes fed by it still compute in float). Exact ops are left out."""
    producers = {out: node for node in converted.graph.node for out in node.output}
    by_name = {node.name: node for node in converted.graph.node}
    names = []
    for node in fp32.graph.node:
        if node.op_type in EXACT_OPS:
            continue
        twin = by_name.get(node.name)
        if twin is None or twin.op_type != node.op_type:
            names.append(node.name)
        elif node.op_type in qdq_ops and any(
                name in producers and producers[name].op_type == "DequantizeLinear" for name in twin.input):
            names.append(node.name)
    return names


def float16_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes an fp16 conversion computes in half precision (everything but exact ops)."""
    return [node.name for node in model.graph.node if node.op_type not in EXACT_OPS]


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type (TensorProto enum) of every tensor ONNX shape inference can type."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return types


def check_node_names(model: onnx.ModelProto, names: list[str], key: str, path: Path) -> None:
    known = [node.name for node in model.graph.node]
    missing = [name for name in names if name not in known]
    if missing:
        shown = ", ".join(known[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
        raise CompressError(f"{key} names node {missing[0]!r}, which is not in {path}: its nodes are {shown}")


def unnamed_nodes_named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name, so reports and nodes_to_exclude can refer to it."""
    used = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite each plain Gemm (alpha = beta = 1, no transA, constant B) as MatMul + Add, keeping the
    node's name: onnxruntime's dynamic quantizer handles MatMul but not Gemm (PyTorch's nn.Linear)."""
    initializers = {init.name: init for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = (node.op_type == "Gemm" and node.input[1] in initializers and attributes.get("transA", 0) == 0
                 and attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0)
        if not plain:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attributes.get("transB", 0):
            weight = weight.T
        weight_name = f"{node.input[1]}_matmul"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), weight_name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], weight_name], [product], name=node.name))
        if has_bias:
            nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder nodes so each comes after the producers of its inputs (onnxruntime's fp16 converter appends
    the Cast nodes of kept float32 inputs at the end, which onnx.checker rejects)."""
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            return model  # a cycle or a missing input: leave it for onnx.checker to report
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [node for node in pending if node not in ready]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


# Nodes whose float weights onnxruntime's WeightBiasQuantization transformer quantizes (per-tensor int8)
# at session load when their input comes from a DequantizeLinear.
WEIGHT_QUANTIZED_AT_LOAD = {"Conv", "ConvTranspose", "Gemm"}


def protect_fp32_nodes(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """Keep excluded nodes really fp32. onnxruntime's WeightBiasQuantization (graph optimization level
    basic and above) quantizes the float weights of a Conv/ConvTranspose/Gemm fed by DequantizeLinear when
    the session loads, which silently undoes nodes_to_exclude; a one-input Max (an exact identity that no
    optimizer removes) between the DequantizeLinear and the node stops it. Nodes reading the same tensor
    share one guard (one producer per tensor name: the graph stays in SSA form, as multi-branch models
    like RepVGG, whose 3x3 and 1x1 convs read one activation, need). Returns the nodes guarded."""
    producers = {out: node for node in model.graph.node for out in node.output}
    wanted = set(names)
    nodes, guarded, guards = [], [], {}
    for node in model.graph.node:
        source = producers.get(node.input[0]) if node.input else None
        if (node.name in wanted and node.op_type in WEIGHT_QUANTIZED_AT_LOAD and source is not None
                and source.op_type == "DequantizeLinear"):
            tensor = node.input[0]
            if tensor not in guards:
                guard = onnx.helper.make_node("Max", [tensor], [f"{tensor}_fp32_guard"], name=f"{node.name}_fp32_guard")
                nodes.append(guard)
                guards[tensor] = guard.output[0]
            node.input[0] = guards[tensor]
            guarded.append(node.name)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return guarded


# How onnxruntime and onnx name a node in their errors.
NODE_PATTERNS = (re.compile(r"node with name '([^']+)'", re.I), re.compile(r"\bnode \(([^)]+)\)", re.I),
                 re.compile(r"node name: ?([^),]+)", re.I), re.compile(r"\bnode '([^']+)'", re.I))


def node_in_message(message: str) -> str | None:
    """The node an onnxruntime or onnx error names, if any."""
    for pattern in NODE_PATTERNS:
        match = pattern.search(message)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return None


def unresolved_shape_node(model: onnx.ModelProto) -> tuple[str, str, str] | None:
    """(node, op type, why) of the first node whose output shape ONNX shape inference cannot resolve:
    one it rejects (strict mode names it), or else the first whose output rank stays unknown."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # InferenceError names the node and op in its text
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        match = re.search(r"op_type:\s*(\w+),\s*node name:\s*([^)]*)\)", text)
        return (match.group(2).strip(), match.group(1), text) if match else ("", "", text)
    graph = inferred.graph
    typed = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    typed.update({init.name: None for init in graph.initializer})
    for node in graph.node:
        for output in node.output:
            if output in typed and typed[output] is None:
                continue
            value = typed.get(output)
            if value is None or (value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape")):
                return node.name, node.op_type, f"the rank of its output {output!r} is unknown"
    return None


# --- measuring error -------------------------------------------------------------------------------

def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (onnxruntime's definition, capped at 200 dB for exact matches)."""
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio

    return min(200.0, float(compute_signal_to_quantization_noice_ratio(reference, approximation)))


def node_sensitivity(nodes: list[onnx.NodeProto], build_only: Callable[[str], Path],
                     logits_of: Callable[[Path], np.ndarray], fp32_logits: np.ndarray, labels: np.ndarray) -> list[dict]:
    """For each node: the model with only that node in low precision, against fp32 on the validation
    split: output (logits) SQNR, mean squared logit error, accuracy points lost, and the node's share of
    the summed logit error (quantization noise of separate nodes adds up, and it is what costs accuracy)."""
    fp32_accuracy = float((fp32_logits.argmax(1) == labels).mean())
    rows = []
    for node in nodes:
        try:
            logits = logits_of(build_only(node.name))
        except CompressError:  # onnxruntime cannot build or load the model with this node alone quantized
            continue
        noise = float(np.mean((logits.astype(np.float64) - fp32_logits) ** 2))
        accuracy = float((logits.argmax(1) == labels).mean())
        rows.append({"node": node.name, "op_type": node.op_type, "alone_output_sqnr_db": sqnr_db(fp32_logits, logits),
                     "alone_noise": noise, "alone_val_drop_points": 100 * (fp32_accuracy - accuracy)})
    total = sum(row["alone_noise"] for row in rows)
    for row in rows:
        row["share_of_drop"] = row["alone_noise"] / total if total > 0 else 0.0
    return rows


def largest_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto], count: int) -> list[str]:
    """Names of the ``count`` nodes with the most weight elements (their initializer inputs), graph order kept."""
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    ranked = sorted(nodes, key=lambda node: -sum(sizes.get(name, 0) for name in node.input))
    return [node.name for node in ranked[:count]]


def tensor_errors(fp32_path: Path, quantized_path: Path, samples: np.ndarray, input_name: str, tmp_dir: Path,
                  params: dict[str, dict], batch_size: int = 4, tensors: set[str] | None = None) -> dict:
    """Per float tensor of the fp32 model (those in ``tensors``, else all): ``sqnr_db``, the quantized model's
    value (after the tensor's own quantize/dequantize when it has one) against fp32, errors of earlier layers
    included; and for quantized activations ``rounding_sqnr_db``, the fp32 values against their own rounding with
    the tensor's scale and zero point: the error that tensor adds by itself. One augmented session per model (the
    tensors compared made outputs) runs ``batch_size`` samples at a time; only sums of squares are kept between
    batches, so memory does not grow with the sample count."""
    from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX

    fp32_saved = _saved_tensors(fp32_path, tmp_dir / "augmented_fp32.onnx")
    quantized_saved = _saved_tensors(quantized_path, tmp_dir / "augmented_quantized.onnx")
    quantized = set(quantized_saved)
    # onnxruntime's activation matching: the value after a tensor's own quantize/dequantize pair
    post_qdq = {}
    for name in quantized:
        for suffix in (QUANT_INPUT_SUFFIX, DEQUANT_OUTPUT_SUFFIX, DEQUANT_OUTPUT_SUFFIX + "_1"):
            if name.endswith(suffix):
                pre = name[:-len(suffix)]
                if pre in quantized:
                    post_qdq[pre] = pre if suffix == QUANT_INPUT_SUFFIX else name
    compared = [name for name in fp32_saved if tensors is None or name in tensors]
    counterparts = {name: post_qdq.get(name, name if name in quantized else None) for name in compared}
    sessions = {"fp32": _saving_session(tmp_dir / "augmented_fp32.onnx", compared),
                "quantized": _saving_session(tmp_dir / "augmented_quantized.onnx",
                                             sorted({c for c in counterparts.values() if c is not None}))}
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    rounding_noise: dict[str, float] = {}
    shapes_match: dict[str, bool] = {}
    for start in range(0, len(samples), batch_size):
        feed = {input_name: np.ascontiguousarray(samples[start:start + batch_size], dtype=np.float32)}
        values = {label: dict(zip(names, session.run([n + _SAVED for n in names], feed)))
                  for label, (session, names) in sessions.items()}
        for name, reference in values["fp32"].items():
            reference = reference.astype(np.float64)
            signal[name] = signal.get(name, 0.0) + float(np.sum(reference ** 2))
            counterpart = counterparts[name]
            if counterpart is not None:
                other = values["quantized"][counterpart]
                if other.shape == reference.shape and shapes_match.get(name, True):
                    noise[name] = noise.get(name, 0.0) + float(np.sum((reference - other) ** 2))
                else:
                    shapes_match[name] = False
            entry = params.get(name)
            if entry and isinstance(entry["scale"], float) and entry["zero_point"] is not None:
                rounded = fake_quantize(reference, entry["scale"], entry["zero_point"], entry["type"])
                rounding_noise[name] = rounding_noise.get(name, 0.0) + float(np.sum((reference - rounded) ** 2))
        del values
    errors = {}
    for name, total in signal.items():
        if name in noise and shapes_match.get(name, True):
            errors[name] = {"sqnr_db": _sqnr_from_sums(total, noise[name])}
        if name in rounding_noise:
            errors.setdefault(name, {})["rounding_sqnr_db"] = _sqnr_from_sums(total, rounding_noise[name])
    return errors


_SAVED = "_ReshapedSavedOutput"  # the suffix onnxruntime's debugger gives each saved tensor


def _saved_tensors(path: Path, augmented: Path) -> list[str]:
    """Write ``path`` with every float tensor saved as an output (onnxruntime's debugger) to ``augmented``;
    returns the saved tensors' names."""
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    modify_model_output_intermediate_tensors(str(path), str(augmented))
    model = onnx.load(str(augmented), load_external_data=False)
    return [o.name.removesuffix(_SAVED) for o in model.graph.output if o.name.endswith(_SAVED)]


def _saving_session(augmented: Path, names: list[str]):
    """A session on ``augmented`` that saves only ``names``: the other saved outputs and their Reshape nodes are
    dropped, so onnxruntime frees those tensors as usual. Its memory arena is off: an arena would keep the
    largest batch's memory until the session goes."""
    from compress.onnxutil import make_session

    model = onnx.load(str(augmented))
    kept = {name + _SAVED for name in names}
    outputs = [o for o in model.graph.output if not o.name.endswith(_SAVED) or o.name in kept]
    nodes = [n for n in model.graph.node if not (n.output and n.output[0].endswith(_SAVED)) or n.output[0] in kept]
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(augmented))
    return make_session(augmented, "cpu", 0, memory_arena=False), names


def _sqnr_from_sums(signal: float, noise: float) -> float:
    """onnxruntime's SQNR (20 log10 of the norm ratio, norms floored at float eps, capped at 200 dB here) from
    summed squares."""
    epsilon = float(np.finfo(float).eps)
    ratio = max(math.sqrt(signal), epsilon) / max(math.sqrt(noise), epsilon)
    return min(200.0, 20 * math.log10(ratio))


def fake_quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """x rounded to the integer grid of (scale, zero point) and clipped to the type's range, back in float."""
    info = np.iinfo(np.dtype(dtype))
    return (np.clip(np.round(x / scale) + zero_point, info.min, info.max) - zero_point) * scale


def quantization_params(model: onnx.ModelProto) -> dict[str, dict]:
    """Scale and zero point of every quantized tensor, by the fp32 tensor's name: activations from their
    QuantizeLinear, weights (stored quantized) from their DequantizeLinear (per-channel: the scale range)."""
    from onnxruntime.quantization.quant_utils import TENSOR_NAME_QUANT_SUFFIX

    initializers = {init.name: init for init in model.graph.initializer}
    params = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.input[1] not in initializers:
            continue
        scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64).ravel()
        zero_point = (numpy_helper.to_array(initializers[node.input[2]]).ravel()
                      if len(node.input) > 2 and node.input[2] in initializers else np.zeros(1, np.int64))
        source = node.input[0]
        if node.op_type == "DequantizeLinear":
            if source not in initializers:
                continue  # the dequantize half of an activation pair: the QuantizeLinear holds its parameters
            source = source.removesuffix(TENSOR_NAME_QUANT_SUFFIX)
        params[source] = {"scale": float(scale[0]) if scale.size == 1 else [float(scale.min()), float(scale.max())],
                          "zero_point": int(zero_point[0]) if zero_point.size == 1 else None,
                          "channels": int(scale.size), "type": str(zero_point.dtype)}
    return params


# --- the report ------------------------------------------------------------------------------------

def layer_rows(fp32: onnx.ModelProto, analysed: list[str], sensitivity: list[dict], errors: dict,
               params: dict, fp32_nodes: dict[str, str]) -> list[dict]:
    """One row per analysed node, in graph order."""
    initializers = {init.name for init in fp32.graph.initializer}
    by_node = {row["node"]: row for row in sensitivity}
    rows = []
    for node in fp32.graph.node:
        if node.name not in analysed and node.name not in fp32_nodes:
            continue
        activation = next((name for name in node.input if name and name not in initializers), "")
        weight = next((name for name in node.input[1:] if name in initializers and name in params), None)
        entry = params.get(activation, {})
        sensitive = by_node.get(node.name, {})
        output = errors.get(_output_tensor(fp32, node, errors), {})
        rows.append({
            "node": node.name, "op_type": node.op_type,
            "precision": "fp32" if node.name in fp32_nodes else "low",
            "fp32_reason": fp32_nodes.get(node.name, ""),
            "tensor": activation, "scale": entry.get("scale"), "zero_point": entry.get("zero_point"),
            "weight_scale": params[weight]["scale"] if weight else None,
            "tensor_rounding_sqnr_db": errors.get(activation, {}).get("rounding_sqnr_db"),
            "output_sqnr_db": output.get("sqnr_db"),
            "alone_output_sqnr_db": sensitive.get("alone_output_sqnr_db"),
            "alone_val_drop_points": sensitive.get("alone_val_drop_points"),
            "share_of_drop": sensitive.get("share_of_drop"),
        })
    return rows


def row_tensors(fp32: onnx.ModelProto, nodes: set[str]) -> set[str]:
    """The tensors whose errors the rows of ``nodes`` show: each node's input activation and output, and the
    output of a single Relu/Clip after it (where QDQ folds that into the node's range)."""
    initializers = {init.name for init in fp32.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in fp32.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    wanted = set()
    for node in fp32.graph.node:
        if node.name not in nodes:
            continue
        wanted.add(next((name for name in node.input if name and name not in initializers), ""))
        if node.output:
            wanted.add(node.output[0])
            after = consumers.get(node.output[0], [])
            if len(after) == 1 and after[0].op_type in ("Relu", "Clip"):
                wanted.add(after[0].output[0])
    wanted.discard("")
    return wanted


def _output_tensor(model: onnx.ModelProto, node: onnx.NodeProto, errors: dict) -> str:
    """The node's output, or when that was folded away (QDQ removes a Relu/Clip after a quantized node by
    clipping its range), the output of that single Relu/Clip."""
    name = node.output[0] if node.output else ""
    if name in errors:
        return name
    consumers = [n for n in model.graph.node if name in n.input]
    if len(consumers) == 1 and consumers[0].op_type in ("Relu", "Clip"):
        return consumers[0].output[0]
    return name


def layer_markdown(rows: list[dict], title: str, notes: list[str]) -> str:
    header = ["#", "node", "op", "precision", "input tensor", "scale", "zero point", "weight scale",
              "rounding SQNR dB", "output SQNR dB", "alone: SQNR dB", "alone: val drop pts", "share of drop"]
    lines = [f"# {title}\n", *[f"{note}\n" for note in notes],
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for index, row in enumerate(rows, 1):
        precision = row["precision"] if row["precision"] != "fp32" else "**fp32**"
        lines.append("| " + " | ".join([
            str(index), f"`{row['node']}`", row["op_type"], precision, f"`{row['tensor']}`" if row["tensor"] else "-",
            _number(row["scale"]), "-" if row["zero_point"] is None else str(row["zero_point"]),
            _number(row["weight_scale"]), _db(row["tensor_rounding_sqnr_db"]), _db(row["output_sqnr_db"]),
            _db(row["alone_output_sqnr_db"]),
            "-" if row["alone_val_drop_points"] is None else f"{row['alone_val_drop_points']:+.2f}",
            "-" if row["share_of_drop"] is None else f"{100 * row['share_of_drop']:.1f}%",
        ]) + " |")
    reasons = [f"- `{row['node']}`: {row['fp32_reason']}" for row in rows if row["precision"] == "fp32"]
    if reasons:
        lines += ["", "Kept in fp32:", *reasons]
    lines += ["", "Columns: *scale*/*zero point* of the node's input activation (weights: per-channel scale range); "
              "*rounding SQNR*: that tensor's fp32 values against their own rounding to its scale and zero point "
              "(the error it adds by itself); *output SQNR*: "
              "the node's output in the final model against fp32 (errors of earlier layers included); *alone*: the "
              "model with only this node quantized, against fp32 on validation samples (logit SQNR, accuracy "
              "points lost); *share of drop*: this node's share of the summed logit error of those single-node "
              "models, the error that costs accuracy. SQNR = 20 log10(|x| / |x - q(x)|), higher is better."]
    return "\n".join(lines) + "\n"


def plot_layers(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{index}. {_short(row['node'])}" for index, row in enumerate(rows, 1)]
    colors = ["tab:orange" if row["precision"] == "fp32" else "tab:blue" for row in rows]
    height = max(2.5, 0.28 * len(rows) + 1.2)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, height), dpi=110, sharey=True)
    y = np.arange(len(rows))
    left.barh(y, [row["output_sqnr_db"] if row["output_sqnr_db"] is not None else 0 for row in rows], color=colors)
    left.set_xlabel("output SQNR vs fp32 (dB, higher is better)")
    right.barh(y, [100 * (row["share_of_drop"] or 0) for row in rows], color=colors)
    right.set_xlabel("share of drop (% of single-node logit error)")
    left.set_yticks(y, labels, fontsize=7)
    left.invert_yaxis()
    for axis in (left, right):
        axis.grid(True, axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color="tab:blue"), plt.Rectangle((0, 0), 1, 1, color="tab:orange")]
    right.legend(handles, ["quantized", "kept fp32"], fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_layer_report(rows: list[dict], markdown_path: Path, plot_path: Path, title: str, notes: list[str]) -> None:
    write_text(markdown_path, layer_markdown(rows, title, notes + [f"![per-layer error]({plot_path.name})"]))
    plot_layers(rows, plot_path, title)


def _short(name: str) -> str:
    parts = [p for p in name.split("/") if p]
    return "/".join(parts[-3:]) if len(parts) > 3 else name


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return f"{value[0]:.3g}..{value[1]:.3g}"
    return f"{value:.4g}"


def _db(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}"
