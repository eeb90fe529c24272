"""onnxruntime at the edges: loading ONNX files with clear errors, execution providers, sessions,
input checks and batched inference."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compress.errors import CompressError

# Short names users type, and the package that provides each provider when it is missing.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider", "directml": "DmlExecutionProvider", "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider", "migraphx": "MIGraphXExecutionProvider", "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider", "azure": "AzureExecutionProvider", "webgpu": "WebGpuExecutionProvider",
}
PROVIDER_PACKAGES = {
    "CUDAExecutionProvider": "onnxruntime-gpu", "TensorrtExecutionProvider": "onnxruntime-gpu (with TensorRT libraries)",
    "OpenVINOExecutionProvider": "onnxruntime-openvino", "DmlExecutionProvider": "onnxruntime-directml",
    "CoreMLExecutionProvider": "onnxruntime (macOS build)", "ROCMExecutionProvider": "onnxruntime-rocm",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx", "QNNExecutionProvider": "onnxruntime-qnn",
}


def resolve_provider(name: str) -> str:
    """Map 'cpu', 'cuda', ... or a full provider name to an available provider, or explain what to install."""
    full = PROVIDER_ALIASES.get(name.lower(), name)
    known = set(PROVIDER_ALIASES.values()) | set(ort.get_all_providers())
    if full not in known:
        raise CompressError(f"unknown execution provider {name!r}: use one of {', '.join(PROVIDER_ALIASES)} "
                            f"(available here: {', '.join(ort.get_available_providers())})")
    if full not in ort.get_available_providers():
        package = PROVIDER_PACKAGES.get(full, "an onnxruntime build that includes it")
        raise CompressError(f"{full} is not available: install {package} "
                            f"(this onnxruntime has {', '.join(ort.get_available_providers())})")
    return full


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file; a missing, truncated or invalid file gets a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"file not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ... all mean the same to the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompressError(f"{path} is not a valid ONNX model ({reason}): re-export it") from exc
    if not model.graph.node:
        raise CompressError(f"{path} is not a valid ONNX model (its graph is empty): re-export it")
    return model


def make_session(path: str | Path, provider: str = "cpu", threads: int = 1, inter_op_threads: int = 1,
                 optimization: str = "all", profile_prefix: str | None = None,
                 provider_options: dict | None = None) -> ort.InferenceSession:
    load_onnx(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_op_threads
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    full = resolve_provider(provider)
    providers: list = [(full, provider_options or {})]
    if full != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:
        raise CompressError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from exc


def check_input(session: ort.InferenceSession, sample_shape: tuple[int, ...], source: str) -> str:
    """The model's single input must accept samples of ``sample_shape``; returns the input name."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise CompressError(f"the model has {len(inputs)} inputs; a dataset can feed only single-input models")
    expected = inputs[0].shape
    if len(expected) != len(sample_shape) + 1 or any(
            isinstance(e, int) and e != s for e, s in zip(expected[1:], sample_shape)):
        raise CompressError(f"wrong input shape: the model expects {_shape_text(expected)} but {source} gives "
                            f"[N, {', '.join(map(str, sample_shape))}]")
    if inputs[0].type != "tensor(float)":
        raise CompressError(f"the model's input is {inputs[0].type}, but {source} gives float32 images")
    return inputs[0].name


def predict(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    name = session.get_inputs()[0].name
    static_batch = session.get_inputs()[0].shape[0]
    if isinstance(static_batch, int):
        batch_size = static_batch
    outputs = [session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outputs)


def metadata(model: onnx.ModelProto) -> dict:
    """metadata_props as a dict, JSON values decoded."""
    result = {}
    for prop in model.metadata_props:
        try:
            result[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            result[prop.key] = prop.value
    return result


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"
