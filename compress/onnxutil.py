"""onnxruntime at the edges: loading ONNX files with clear errors, execution providers, sessions,
a model's input signature and inputs generated from it, input checks and batched inference."""
from __future__ import annotations

import json
from dataclasses import dataclass
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


def provider_chain(provider: str, options: dict | None = None) -> list:
    """The providers a session gets: the chosen one with its options, then fallbacks for nodes it cannot
    run (CUDA under TensorRT, then CPU)."""
    full = resolve_provider(provider)
    chain: list = [(full, dict(options or {}))]
    if full == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in ort.get_available_providers():
        chain.append("CUDAExecutionProvider")
    if full != "CPUExecutionProvider":
        chain.append("CPUExecutionProvider")
    return chain


def provider_table() -> list[dict]:
    """Every provider this onnxruntime knows of: short name, whether it can run here, and what to install."""
    available = ort.get_available_providers()
    short = {full: alias for alias, full in PROVIDER_ALIASES.items()}
    names = list(available) + [p for p in ort.get_all_providers() if p not in available]
    names += [p for p in PROVIDER_ALIASES.values() if p not in names]
    return [{"provider": name, "alias": short.get(name, ""), "available": name in available,
             "install": "" if name in available else PROVIDER_PACKAGES.get(name, "an onnxruntime build that includes it")}
            for name in names]


def parse_key_values(items: list[str], what: str) -> dict[str, str]:
    """['device_id=0', ...] -> {'device_id': '0'}; a malformed item raises ValueError naming it."""
    result = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} {item!r} must look like key=value")
        result[key.strip()] = value.strip()
    return result


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


# Graph optimization levels by the names users type (onnxruntime's enum member names).
OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                       "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}
EXECUTION_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}


def make_session(path: str | Path, provider: str = "cpu", threads: int = 1, inter_op_threads: int = 1,
                 optimization: str = "all", profile_prefix: str | None = None,
                 provider_options: dict | None = None, execution_mode: str = "sequential",
                 memory_arena: bool = True) -> ort.InferenceSession:
    """A session on ``provider`` (falling back to CPU for nodes it cannot run); 0 threads = onnxruntime's default.
    Without ``memory_arena`` freed CPU tensors go back to the system instead of onnxruntime's arena."""
    load_onnx(path)
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = memory_arena
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = getattr(ort.ExecutionMode, EXECUTION_MODES[execution_mode])
    if not hasattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization]):
        raise CompressError(f"optimization level {optimization!r} needs a newer onnxruntime than {ort.__version__}")
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    providers = provider_chain(provider, provider_options)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:
        raise CompressError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from exc


# ONNX tensor types that inputs can be generated for, and their numpy dtypes.
NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass
class InputSpec:
    """One graph input as onnxruntime declares it: symbolic dims are names (str) or None when unnamed."""

    name: str
    type: str
    shape: list

    def has_free_batch(self) -> bool:
        """Whether the first axis is symbolic, so the batch size can be chosen."""
        return bool(self.shape) and not _fixed(self.shape[0])


def input_specs(session: ort.InferenceSession) -> list[InputSpec]:
    return [InputSpec(i.name, i.type, list(i.shape)) for i in session.get_inputs()]


def resolve_shape(spec: InputSpec, dims: dict[str, int], batch: int | None = None) -> tuple[int, ...]:
    """Concrete shape of an input. ``dims`` sets symbolic dims by name ("seq") or by "input:axis";
    an unset symbolic first axis is the batch (``batch``, else 1); any other unset one is an error."""
    shape = []
    for axis, dim in enumerate(spec.shape):
        if _fixed(dim):
            shape.append(int(dim))
        elif axis == 0 and batch is not None:
            shape.append(batch)
        elif f"{spec.name}:{axis}" in dims:
            shape.append(dims[f"{spec.name}:{axis}"])
        elif isinstance(dim, str) and dim in dims:
            shape.append(dims[dim])
        elif axis == 0:
            shape.append(1)
        else:
            label = f"symbolic dimension {dim!r}" if isinstance(dim, str) and dim else "a dimension of unknown size"
            how = f"--dim {dim}=N" if isinstance(dim, str) and dim else f"--dim {spec.name}:{axis}=N"
            raise CompressError(f"input {spec.name!r} {_shape_text(spec.shape)} has {label} at axis {axis}: "
                                f"set it with {how}")
    return tuple(shape)


def generated_feed(specs: list[InputSpec], dims: dict[str, int], batch: int | None, seed: int,
                   int_high: int) -> dict[str, np.ndarray]:
    """Random inputs matching the signature: floats ~ N(0, 1), integers in [0, int_high), bools 50/50.
    The same seed gives every model with the same signature the same inputs."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        dtype = _numpy_type(spec)
        shape = resolve_shape(spec, dims, batch)
        if np.issubdtype(dtype, np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feed[spec.name] = rng.random(shape) < 0.5
        else:
            feed[spec.name] = rng.integers(0, int_high, size=shape).astype(dtype)
    return feed


def array_feed(specs: list[InputSpec], arrays: dict[str, np.ndarray], batch: int | None,
               source: str) -> dict[str, np.ndarray]:
    """Real inputs: the first ``batch`` samples of each array (cycled when there are fewer), checked
    against the signature. An input whose first axis is fixed takes that many samples instead."""
    missing = [spec.name for spec in specs if spec.name not in arrays]
    if missing:
        raise CompressError(f"{source} has no array for input(s) {', '.join(missing)}: it holds "
                            f"{', '.join(arrays) or 'nothing'}; name one array after each model input")
    feed = {}
    for spec in specs:
        array = np.asarray(arrays[spec.name])
        dtype = _numpy_type(spec)
        if array.dtype != dtype and not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise CompressError(f"input {spec.name!r} is {spec.type} but {source} gives {array.dtype}")
        rows = batch if spec.has_free_batch() else (spec.shape[0] if spec.shape else None)
        if rows is not None and array.ndim >= 1:
            array = np.resize(array, (rows, *array.shape[1:]))
        if array.ndim != len(spec.shape) or any(_fixed(d) and d != s for d, s in zip(spec.shape, array.shape)):
            raise CompressError(f"wrong input shape: input {spec.name!r} expects {_shape_text(spec.shape)} but "
                                f"{source} gives {list(array.shape)}")
        feed[spec.name] = np.ascontiguousarray(array, dtype=dtype)
    return feed


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


def _fixed(dim) -> bool:
    return isinstance(dim, int) and dim > 0


def _numpy_type(spec: InputSpec):
    if spec.type not in NUMPY_TYPES:
        raise CompressError(f"input {spec.name!r} is {spec.type}, which numpy cannot hold: benchmark it with "
                            "onnxruntime_perf_test or another tool")
    return NUMPY_TYPES[spec.type]


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"
