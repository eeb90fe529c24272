"""Text classifiers (BERT family) as ONNX: export with dynamic batch and sequence axes, parity on real
tokenized samples, onnxruntime's transformer optimizer with a fused-operator report, int8/int4
quantization candidates, and the text benchmark figures (latency per sequence length, throughput,
size, params, MACs, accuracy and macro P/R/F1).

A model here is any torch module whose ``forward`` takes some of ``input_ids``, ``attention_mask``,
``token_type_ids`` (int64, [batch, sequence]) and returns logits [batch, classes]; ``samples`` are
dicts of such arrays, as ``encode_texts`` makes them."""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from compress.errors import CompressError
from compress.fsutil import atomic_path, sha256, working_directory
from compress.latency import Target, TimingRules, latency_summary, time_interleaved, time_jobs
from compress.metrics import classification_metrics
from compress.onnx_export import write_metadata
from compress.onnxutil import load_onnx, make_session
from compress.text_data import load_tokenizer  # the one tokenizer loader
from compress.text_windows import text_scores

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"
# Fused operators onnxruntime's transformer optimizer reports; the first two carry attention.
ATTENTION_OPS = ("Attention", "MultiHeadAttention")
CANDIDATES = ("dynamic_int8", "static_u8s8_qdq", "int4_weight_only")
# Ops whose MACs are (output elements) x (inner dimension of their first input).
_MATMUL_LIKE = {"MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits",
                "FusedMatMul", "QLinearMatMul", "QGemm"}
_ATTENTION_LIKE = {"Attention", "QAttention"}


@dataclass
class TextExportConfig:
    """ONNX export of a text classifier, its optimization and their verification."""

    opset: int = 17  # ONNX opset; 14..21 (the transformer optimizer's fusions need 14+)
    parity_samples: int = 64  # real tokenized samples compared between PyTorch and onnxruntime
    rtol: float = 1e-3  # largest allowed max|onnx - torch| divided by max|torch| (the logit scale)
    min_agreement: float = 0.995  # smallest allowed share of identical top-1 predictions
    optimize: bool = True  # run onnxruntime's transformer optimizer (model_type bert) on the export
    require_fused_attention: bool = True  # an optimized model whose attention is not fused in every layer is an error

    def __post_init__(self) -> None:
        if not 14 <= self.opset <= 21:
            raise ValueError(f"export.opset must be within 14..21 for text models, got {self.opset}")
        if self.parity_samples < 1:
            raise ValueError(f"export.parity_samples must be >= 1, got {self.parity_samples}")
        if self.rtol <= 0:
            raise ValueError(f"export.rtol must be > 0, got {self.rtol}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"export.min_agreement must be within [0, 1], got {self.min_agreement}")


@dataclass
class TextQuantizeConfig:
    """The low-precision candidates built for a text model (each then timed and evaluated by the caller)."""

    candidates: list[str] = field(default_factory=lambda: list(CANDIDATES))  # which of CANDIDATES to build
    per_channel: bool = True  # one weight scale per output channel (dynamic and static)
    reduce_range: bool = False  # dynamic and static: 7-bit weights, so u8s8 AVX2 kernels (x86 without VNNI) cannot saturate
    calibration_samples: int = 128  # static: real tokenized samples run through the model to calibrate
    int4_block_size: int = 32  # int4: weights share one scale per block of this many input rows (power of 2, >= 16)
    int4_symmetric: bool = True  # int4: zero point fixed at 0
    int4_accuracy_level: int = 0  # int4: MatMulNBits compute type (0 default, 1 fp32, 2 fp16, 3 bf16, 4 int8)

    def __post_init__(self) -> None:
        for name in self.candidates:
            if name not in CANDIDATES:
                raise ValueError(f"quantize.candidates: {name!r} is not a text candidate; choose from {', '.join(CANDIDATES)}")
        if not self.candidates:
            raise ValueError("quantize.candidates must name at least one text candidate")
        block = self.int4_block_size
        if block < 16 or block & (block - 1):
            raise ValueError(f"quantize.int4_block_size must be a power of 2 >= 16, got {block}")
        if self.int4_accuracy_level not in range(5):
            raise ValueError(f"quantize.int4_accuracy_level must be within 0..4, got {self.int4_accuracy_level}")
        if self.calibration_samples < 1:
            raise ValueError(f"quantize.calibration_samples must be >= 1, got {self.calibration_samples}")


# --- tokenized samples -------------------------------------------------------------------------------
def encode_texts(tokenizer, texts: list[str], max_length: int, pad_to_max: bool = False) -> dict[str, np.ndarray]:
    """Texts -> int64 ``input_ids``/``attention_mask``/``token_type_ids`` [N, L] with a ``tokenizers.Tokenizer``
    (or a tokenizer.json path): truncated to ``max_length``, padded with [PAD] to the longest text (or to
    ``max_length``)."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    tokenizer = Tokenizer.from_str(tokenizer.to_str())  # a copy: truncation and padding are tokenizer state
    if not texts:
        raise CompressError("no texts to encode: give at least one")
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]",
                             length=max_length if pad_to_max else None)
    encodings = tokenizer.encode_batch([str(t) for t in texts])
    return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}


def encode_text_windows(tokenizer, texts: list[str], max_length: int, max_windows: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(samples, groups): every window of ``max_length`` tokens of each text (its first ``max_windows`` when > 0),
    padded to ``max_length``, as ``encode_texts`` arrays, and the index of each row's text (compress.text_windows)."""
    from compress.text_data import configure_tokenizer
    from compress.text_windows import encode_windows

    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    if not texts:
        raise CompressError("no texts to encode: give at least one")
    rows, groups = encode_windows(configure_tokenizer(tokenizer, max_length), [str(t) for t in texts], max_windows)
    return {name: np.ascontiguousarray(rows[:, i]) for i, name in enumerate(TEXT_INPUTS)}, groups


def take(samples: dict[str, np.ndarray], count: int | None = None, start: int = 0) -> dict[str, np.ndarray]:
    """The rows ``start:start + count`` of every array."""
    stop = None if count is None else start + count
    return {name: array[start:stop] for name, array in samples.items()}


def model_input_names(model: torch.nn.Module) -> list[str]:
    """The text inputs the model's forward takes, in the conventional order."""
    params = inspect.signature(model.forward).parameters
    names = [name for name in TEXT_INPUTS if name in params]
    if "input_ids" not in names:
        raise CompressError(f"the model's forward takes ({', '.join(params)}), not input_ids: wrap it so that "
                            "forward(input_ids, attention_mask[, token_type_ids]) returns logits")
    return names


def attention_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(num_heads, hidden_size) of a Hugging Face model (or a wrapper holding one) from its config."""
    for module in model.modules():
        config = getattr(module, "config", None)
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None)
        hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
        if heads and hidden:
            return int(heads), int(hidden)
    raise CompressError("cannot find num_attention_heads/hidden_size in the model's config: pass them explicitly")


def _check_samples(samples: dict[str, np.ndarray], names: list[str], what: str) -> None:
    missing = [name for name in names if name not in samples]
    if missing:
        raise CompressError(f"{what} has no {', '.join(missing)}: encode the texts with the model's tokenizer "
                            "(compress.text_onnx.encode_texts)")
    lengths = {samples[name].shape for name in names}
    if len(lengths) != 1 or len(next(iter(lengths))) != 2 or not len(samples[names[0]]):
        raise CompressError(f"{what}: {', '.join(names)} must be non-empty [N, L] arrays of one shape, got "
                            f"{[list(samples[n].shape) for n in names]}")


# --- export, parity, optimization --------------------------------------------------------------------
def export_text_model(model: torch.nn.Module, path: Path, samples: dict[str, np.ndarray], cfg: TextExportConfig,
                      class_labels: list[str], max_length: int, tokenizer_path: Path | None = None,
                      run_info: dict | None = None, attention: tuple[int, int] | None = None,
                      max_windows: int = 0) -> dict:
    """Export ``model`` to ``path`` (fp32, optimized unless cfg.optimize is off), checked and verified against
    PyTorch on ``samples``; returns the parity of each step and the fused-operator report."""
    model.eval()
    names = model_input_names(model)
    _check_samples(samples, names, "the parity samples")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="compress-text-export.") as tmp:
        raw = Path(tmp) / "exported.onnx"
        example = tuple(torch.from_numpy(np.ascontiguousarray(samples[name][:2])) for name in names)
        axes = {name: {0: "batch", 1: "sequence"} for name in names}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            # TorchScript exporter: the dynamo one needs onnxscript, and the optimizer fuses what this one writes
            # (with attn_implementation="eager"; SDPA attention fuses no Attention node).
            torch.onnx.export(model, example, str(raw), dynamo=False, opset_version=cfg.opset, input_names=names,
                              output_names=[OUTPUT_NAME], dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}})
        model.eval()  # the exporter restores the wrapper's training flag, which may be True
        onnx.checker.check_model(str(raw), full_check=True)
        parity_set = take(samples, cfg.parity_samples)
        expected = torch_logits(model, parity_set)
        report = {"export_parity": _parity(expected, raw, parity_set, cfg.rtol, cfg.min_agreement, "the ONNX export")}
        final = raw
        if cfg.optimize:
            heads, hidden = attention or attention_shape(model)
            final = Path(tmp) / "optimized.onnx"
            report["fusion"] = optimize_text_model(raw, final, heads, hidden, cfg.require_fused_attention)
            report["optimized_parity"] = _parity(expected, final, parity_set, cfg.rtol, cfg.min_agreement,
                                                 "the optimized ONNX model")
        onnx_model = onnx.load(str(final))
        set_text_metadata(onnx_model, class_labels, max_length, names, tokenizer_path, run_info or {}, max_windows)
        with atomic_path(path) as out:
            onnx.save(onnx_model, str(out))
            onnx.checker.check_model(str(out))
    return report


def set_text_metadata(model: onnx.ModelProto, class_labels: list[str], max_length: int, input_names: list[str],
                      tokenizer_path: Path | None, run_info: dict, max_windows: int = 0) -> None:
    """``max_windows``: how many windows of ``max_length`` tokens an app scores per text (0: all), averaging their
    softmax (compress.text_windows)."""
    props = {"task": "text-classification", "class_labels": [str(c) for c in class_labels], "max_length": int(max_length),
             "max_windows": int(max_windows), "windows": "mean_softmax",
             "input_names": list(input_names), "tokenizer_sha256": sha256(tokenizer_path) if tokenizer_path else None,
             "producer": run_info}
    write_metadata(model, props)


def torch_logits(model: torch.nn.Module, samples: dict[str, np.ndarray], batch_size: int = 32) -> np.ndarray:
    names = model_input_names(model)
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(samples[names[0]]), batch_size):
            batch = [torch.from_numpy(np.ascontiguousarray(samples[n][start:start + batch_size])) for n in names]
            outputs.append(model(*batch).float().numpy())
    return np.concatenate(outputs)


def onnx_logits(session, samples: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Logits of an onnxruntime session on tokenized samples (it takes the arrays it declares)."""
    names = [i.name for i in session.get_inputs()]
    _check_samples(samples, names, "the samples")
    count = len(samples[names[0]])
    return np.concatenate([session.run(None, {n: samples[n][i:i + batch_size] for n in names})[0]
                           for i in range(0, count, batch_size)])


def compare_logits(expected: np.ndarray, actual: np.ndarray) -> dict:
    """max |diff|, that relative to the logit scale (max |expected|), and top-1 agreement."""
    diff = float(np.abs(expected - actual).max())
    scale = max(float(np.abs(expected).max()), 1e-6)
    return {"samples": len(expected), "max_abs_diff": diff, "relative_diff": diff / scale,
            "top1_agreement": float((expected.argmax(1) == actual.argmax(1)).mean())}


def _parity(expected: np.ndarray, onnx_path: Path, samples: dict, rtol: float, min_agreement: float, what: str) -> dict:
    result = compare_logits(expected, onnx_logits(make_session(onnx_path), samples))
    if result["relative_diff"] > rtol or result["top1_agreement"] < min_agreement:
        raise CompressError(f"{what} does not match PyTorch: max |diff| {result['max_abs_diff']:.2e} is "
                            f"{result['relative_diff']:.2e} of the logit scale (allowed {rtol:g}), top-1 agreement "
                            f"{result['top1_agreement']:.3f} (needed {min_agreement:g}); export with "
                            "attn_implementation='eager', or set export.optimize=false to find the step at fault")
    return result


def optimize_text_model(source: Path, output: Path, num_heads: int, hidden_size: int,
                        require_fused_attention: bool = True) -> dict:
    """onnxruntime's transformer optimizer (model_type bert) from ``source`` into ``output``. Layers whose heads
    were pruned get their own ``num_heads`` (the optimizer writes the model's count into every Attention node).
    Returns the fused-operator counts; attention not fused in every layer raises unless not required."""
    from onnxruntime.transformers.optimizer import optimize_model

    if hidden_size % num_heads:
        raise CompressError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    head_size = hidden_size // num_heads
    source_model = load_onnx(source)
    layers = sum(node.op_type == "Softmax" for node in source_model.graph.node)
    with tempfile.TemporaryDirectory(prefix="compress-optimize.") as tmp, working_directory(Path(tmp)):
        import logging

        logger = logging.getLogger("onnxruntime.transformers")  # warns on every fusion it could not make
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints notes about embedding table sizes
                optimized = optimize_model(str(Path(source).resolve()), model_type="bert", num_heads=num_heads,
                                           hidden_size=hidden_size)
        except Exception as exc:
            raise CompressError(f"onnxruntime's transformer optimizer failed on {source}: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        finally:
            logger.setLevel(level)
        counts = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
        heads_per_layer = _fix_head_counts(optimized.model, head_size)
    fused = sum(counts.get(op, 0) for op in ATTENTION_OPS)
    report = {"fused_operators": counts, "attention_layers": layers, "attention_fused": fused >= layers > 0,
              "heads_per_layer": heads_per_layer}
    if not report["attention_fused"]:
        message = (f"attention not fused: onnxruntime's transformer optimizer fused {fused} of {layers} attention "
                   f"layers of {source} (fused: {counts or 'nothing'}); export with attn_implementation='eager' "
                   "(SDPA attention does not fuse)")
        if require_fused_attention:
            raise CompressError(message)
        report["warning"] = message
    with atomic_path(output) as out:
        onnx.save(optimized.model, str(out))
        onnx.checker.check_model(str(out))
    return report


def _fix_head_counts(model: onnx.ModelProto, head_size: int) -> list[int]:
    """Set each Attention node's num_heads from its packed QKV bias (3 x heads x head_size)."""
    initializers = {init.name: init for init in model.graph.initializer}
    heads = []
    for node in model.graph.node:
        if node.op_type != "Attention" or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        width = int(np.prod(initializers[node.input[2]].dims))
        if width % (3 * head_size):
            raise CompressError(f"attention node {node.name}: its QKV width {width} is not 3 x heads x {head_size}; "
                                "prune whole heads only")
        count = width // (3 * head_size)
        for attribute in node.attribute:
            if attribute.name == "num_heads":
                attribute.i = count
        heads.append(count)
    return heads


def fused_operator_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many of each fused (com.microsoft) operator a model holds."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# --- quantization candidates -------------------------------------------------------------------------
class TextCalibrationReader:
    """Feeds tokenized samples to onnxruntime's calibrator, one at a time (onnxruntime's CalibrationDataReader)."""

    def __init__(self, samples: dict[str, np.ndarray], input_names: list[str]):
        self._samples, self._names, self._position = samples, input_names, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= len(self._samples[self._names[0]]):
            return None
        row = self._position
        self._position += 1
        return {name: np.ascontiguousarray(self._samples[name][row:row + 1]) for name in self._names}

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def build_text_candidates(model_path: Path, calibration: dict[str, np.ndarray], out_dir: Path,
                          cfg: TextQuantizeConfig) -> dict[str, Path]:
    """Each candidate of ``cfg.candidates`` built from the (optimized) fp32 ``model_path`` into
    ``out_dir/<name>.onnx``, checked by onnx.checker and loaded by onnxruntime: the files an auto mode times and
    evaluates. onnxruntime's tools run in a private temporary folder, so the current one stays clean."""
    model_path, out_dir = Path(model_path).resolve(), Path(out_dir).resolve()
    source_model = load_onnx(model_path)
    names = [i.name for i in source_model.graph.input if i.name in TEXT_INPUTS]
    _check_samples(calibration, names, "the calibration samples")
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    with tempfile.TemporaryDirectory(prefix="compress-text-quantize.") as tmp, working_directory(Path(tmp)):
        typed = Path(tmp) / "typed.onnx"
        _with_inferred_types(source_model, typed)
        for name in cfg.candidates:
            work = Path(tmp) / f"{name}.onnx"
            try:
                _build(name, typed, work, take(calibration, cfg.calibration_samples), names, cfg)
            except CompressError:
                raise
            except Exception as exc:
                raise CompressError(f"onnxruntime could not build the {name} candidate of {model_path}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
            model = onnx.load(str(work))
            del model.metadata_props[:]
            model.metadata_props.extend(source_model.metadata_props)
            entry = model.metadata_props.add()
            entry.key, entry.value = "quantization", json.dumps({"candidate": name, **_candidate_record(name, cfg)})
            with atomic_path(out_dir / f"{name}.onnx") as out:
                onnx.save(model, str(out))
                onnx.checker.check_model(str(out))
                make_session(out)  # onnxruntime must load it, or it is no candidate
            built[name] = out_dir / f"{name}.onnx"
    return built


def _candidate_record(name: str, cfg: TextQuantizeConfig) -> dict:
    if name == "int4_weight_only":
        return {"weights": "int4", "block_size": cfg.int4_block_size, "symmetric": cfg.int4_symmetric,
                "accuracy_level": cfg.int4_accuracy_level}
    if name == "dynamic_int8":
        return {"weights": "int8", "activations": "uint8 at run time", "per_channel": cfg.per_channel}
    return {"weights": "int8", "activations": "uint8", "format": "qdq", "per_channel": cfg.per_channel,
            "calibration_samples": cfg.calibration_samples}


def _with_inferred_types(model: onnx.ModelProto, path: Path) -> None:
    """Symbolic shape inference knows the com.microsoft fused ops: without it the static calibrator collects no
    ranges after the first fused node and quantizes weights only."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # an unfused export it cannot follow: quantize it as it is
        inferred = model
    onnx.save(inferred, str(path))


def _build(name: str, source: Path, output: Path, calibration: dict, names: list[str], cfg: TextQuantizeConfig) -> None:
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            if name == "dynamic_int8":
                # shape inference cannot type com.microsoft outputs: tell the quantizer they are float
                quantize_dynamic(str(source), str(output), weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
                                 reduce_range=cfg.reduce_range,
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            elif name == "static_u8s8_qdq":
                quantize_static(str(source), str(output), TextCalibrationReader(calibration, names),
                                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
                                reduce_range=cfg.reduce_range, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            else:
                from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

                quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), block_size=cfg.int4_block_size,
                                                 is_symmetric=cfg.int4_symmetric,
                                                 accuracy_level=cfg.int4_accuracy_level or None)
                quantizer.process()
                quantizer.model.save_model_to_file(str(output), use_external_data_format=False)
    finally:
        logging.disable(previous)
    if name == "int4_weight_only" and not any(n.op_type == "MatMulNBits" for n in onnx.load(str(output)).graph.node):
        raise CompressError("the int4 candidate quantized no MatMul: the model has no MatMul with a constant weight "
                            f"of at least {cfg.int4_block_size} input rows (lower quantize.int4_block_size)")


def choose_text_candidate(fp32_path: Path, candidates: dict[str, Path], val: dict[str, np.ndarray],
                          val_labels: np.ndarray, max_accuracy_drop: float, target: Target = Target(),
                          seq_length: int = 128, measure_seconds: float = 0.6, val_groups: np.ndarray | None = None) -> dict:
    """Auto mode for text: each candidate's validation accuracy and batch-1 p50 at ``seq_length`` (timed
    interleaved with fp32 by the shared harness); the fastest within ``max_accuracy_drop`` points wins, and
    fp32 when none within budget is faster. ``val_groups``: the text of each row of ``val`` when texts have
    several windows (``val_labels`` then has one label per text)."""
    fp32_accuracy = evaluate_text_model(fp32_path, val, val_labels, val_groups, threads=1)["accuracy"]
    paths = {"fp32": Path(fp32_path), **candidates}
    feed = latency_feed(make_session(fp32_path), val, seq_length)
    rounds = 6
    timed = time_interleaved(paths, {name: feed for name in paths}, target, TimingRules(warmup="fixed", warmup_runs=10),
                             rounds=rounds, round_seconds=measure_seconds / rounds, round_runs=1)
    p50 = {name: float(np.median(timing.samples_ms)) for name, timing in timed.items()}
    rows = [{"candidate": "fp32", "val_accuracy": fp32_accuracy, "val_drop_points": 0.0, "p50_ms": p50["fp32"],
             "speedup": 1.0, "within_budget": True}]
    for name, path in candidates.items():
        accuracy = evaluate_text_model(path, val, val_labels, val_groups, threads=1)["accuracy"]
        drop = 100 * (fp32_accuracy - accuracy)
        rows.append({"candidate": name, "val_accuracy": accuracy, "val_drop_points": drop, "p50_ms": p50[name],
                     "speedup": p50["fp32"] / p50[name], "within_budget": drop <= max_accuracy_drop + 1e-9})
    fitting = [row for row in rows[1:] if row["within_budget"]]
    best = min(fitting, key=lambda row: row["p50_ms"]) if fitting else None
    if best is None or best["p50_ms"] >= p50["fp32"]:
        why = "none within budget" if best is None else f"the fastest within budget ({best['candidate']}) is not faster"
        return {"decision": "fp32", "chosen": "fp32", "reason": f"{why} than fp32 at seq {seq_length}", "candidates": rows}
    return {"decision": best["candidate"], "chosen": best["candidate"],
            "reason": (f"{best['candidate']} is the fastest within {max_accuracy_drop:g} val points of fp32: "
                       f"{best['speedup']:.2f}x faster at batch 1, seq {seq_length}"), "candidates": rows}


# --- benchmark figures -------------------------------------------------------------------------------
def latency_feed(session, samples: dict[str, np.ndarray], seq_length: int, batch: int = 1) -> dict[str, np.ndarray]:
    """``batch`` rows of exactly ``seq_length`` real token ids (the first sample's tokens repeated), mask all ones."""
    return token_feed([i.name for i in session.get_inputs()], samples, seq_length, batch)


def token_feed(names: list[str], samples: dict[str, np.ndarray], seq_length: int, batch: int = 1) -> dict[str, np.ndarray]:
    """``latency_feed`` for a model taking the inputs ``names``."""
    _check_samples(samples, names, "the latency samples")
    mask = samples["attention_mask"][0] if "attention_mask" in samples else np.ones_like(samples["input_ids"][0])
    tokens = samples["input_ids"][0][mask.astype(bool)]
    ids = np.resize(tokens, seq_length)
    columns = {"input_ids": ids, "attention_mask": np.ones(seq_length), "token_type_ids": np.zeros(seq_length)}
    return {name: np.ascontiguousarray(np.tile(columns[name], (batch, 1)), dtype=np.int64) for name in names}


def text_latency(path: Path, samples: dict[str, np.ndarray], seq_lengths: tuple[int, ...] = (32, 128, 256),
                 target: Target = Target(), rules: TimingRules = TimingRules(), throughput_batch: int = 8,
                 throughput_seq: int = 128) -> dict:
    """Batch-1 latency at each sequence length and throughput (samples/s) at ``throughput_batch`` x
    ``throughput_seq``, timed by the shared harness in one fresh worker."""
    session = make_session(path)
    limit = position_limit(load_onnx(path))
    too_long = [length for length in (*seq_lengths, throughput_seq) if limit and length > limit]
    if too_long:
        raise CompressError(f"sequence length {too_long[0]} is longer than the {limit} positions {path} has "
                            f"embeddings for: benchmark lengths up to {limit}")
    feeds = {f"seq_{length}": latency_feed(session, samples, length) for length in seq_lengths}
    feeds["throughput"] = latency_feed(session, samples, throughput_seq, throughput_batch)
    jobs = [{"name": name, "feed": name, "intra_op": target.intra_op, "inter_op": target.inter_op,
             "min_runs": rules.min_runs} for name in feeds]
    timings = time_jobs(Path(path), target, rules, feeds, jobs)
    latency = {int(name[4:]): latency_summary(timings[name].samples_ms) for name in feeds if name.startswith("seq_")}
    batch_p50 = latency_summary(timings["throughput"].samples_ms)["p50_ms"]
    return {"latency_by_seq": latency, "throughput_sps": throughput_batch / (batch_p50 / 1e3),
            "throughput_batch": throughput_batch, "throughput_seq": throughput_seq}


def position_limit(model: onnx.ModelProto) -> int | None:
    """How many positions the model has embeddings for (EmbedLayerNormalization's table), when it says."""
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("EmbedLayerNormalization", "QEmbedLayerNormalization") and len(node.input) > 3:
            table = initializers.get(node.input[3])
            if table is not None and table.dims:
                return int(table.dims[0])
    return None


def text_model_stats(path: Path, seq_length: int = 128) -> dict:
    """Parameters, MACs (batch 1, ``seq_length`` tokens) and file size of a text ONNX model, fp32 or quantized.
    Shapes come from one onnxruntime run (shape inference cannot follow every fused and quantized op); MACs count
    MatMul/Gemm-like ops and fused Attention (QKV projection plus the two attention products); parameters count
    stored weights, not quantization scales and zero points, with int4 weights at their unpacked size."""
    model = load_onnx(path)
    shapes = _run_shapes(model, seq_length)
    initializers = {init.name: init for init in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type in _MATMUL_LIKE:
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out:
                macs += int(np.prod(out)) * int(a[-1])
        elif node.op_type in _ATTENTION_LIKE:
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out:
                tokens, width, heads_width = int(np.prod(a[:-1])), int(a[-1]), int(out[-1])
                macs += tokens * width * 3 * heads_width + 2 * tokens * a[-2] * heads_width
    return {"params": _param_count(model, initializers), "macs": int(macs), "size_bytes": Path(path).stat().st_size}


def _run_shapes(model: onnx.ModelProto, seq_length: int) -> dict[str, tuple[int, ...]]:
    watched = []
    for node in model.graph.node:
        if node.op_type in _MATMUL_LIKE | _ATTENTION_LIKE:
            watched += [t for t in (node.input[0], node.output[0]) if t not in watched]
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    outputs = {o.name for o in copy.graph.output}
    copy.graph.output.extend([onnx.ValueInfoProto(name=t) for t in watched if t not in outputs])
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every watched tensor
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    ids = np.ones((1, seq_length), dtype=np.int64)
    feed = {name: np.zeros_like(ids) if name == "token_type_ids" else ids for name in names}
    try:
        values = session.run(watched, feed)
    except Exception as exc:
        raise CompressError(f"cannot run the model at sequence length {seq_length} to count its MACs: "
                            f"{str(exc).splitlines()[0]}") from exc
    return {name: tuple(value.shape) for name, value in zip(watched, values)}


def _param_count(model: onnx.ModelProto, initializers: dict) -> int:
    quant_params, packed = set(), {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            quant_params.update(node.input[1:3])
        elif node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
            bias = {"DynamicQuantizeMatMul": 4, "MatMulIntegerToFloat": 6}.get(node.op_type)
            quant_params.update(name for index, name in enumerate(node.input) if index >= 2 and index != bias)
        elif node.op_type in ("QAttention", "QEmbedLayerNormalization"):
            scale_inputs = range(3, 9) if node.op_type == "QAttention" else range(8, 18)
            quant_params.update(node.input[i] for i in scale_inputs if i < len(node.input))
        elif node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            packed[node.input[1]] = int(attrs["N"]) * int(attrs["K"])
            quant_params.update(node.input[2:4])
    total = 0
    for name, init in initializers.items():
        if name in quant_params or init.data_type == onnx.TensorProto.INT64 or not init.dims:
            continue
        if len(init.dims) == 1 and name.endswith(("_scale", "_zero_point")):
            continue  # per-channel scales the dynamic quantizer applies through a Mul after MatMulInteger
        total += packed.get(name, int(np.prod(init.dims)))
    return total


def evaluate_text_model(path: Path, samples: dict[str, np.ndarray], labels: np.ndarray,
                        groups: np.ndarray | None = None, threads: int = 0) -> dict:
    """Accuracy and macro precision/recall/F1 on tokenized samples; with ``groups`` (the text of each row) per
    text, from the mean softmax of its windows, and ``labels`` one per text."""
    logits = text_scores(onnx_logits(make_session(path, threads=threads), samples), groups)
    return classification_metrics(logits, np.asarray(labels))


def benchmark_text_model(path: Path, test: dict[str, np.ndarray], labels: np.ndarray,
                         seq_lengths: tuple[int, ...] = (32, 128, 256), headline_seq: int = 128,
                         target: Target = Target(), rules: TimingRules = TimingRules(),
                         groups: np.ndarray | None = None) -> dict:
    """The text table's row of one model: accuracy, macro P/R/F1 (per text, see evaluate_text_model),
    p50/p90/p99 of one window at ``headline_seq`` (batch 1), latency per sequence length, throughput,
    size_bytes, params and MACs at ``headline_seq``."""
    if headline_seq not in seq_lengths:
        raise CompressError(f"the headline sequence length {headline_seq} must be one of {list(seq_lengths)}")
    timing = text_latency(path, test, seq_lengths, target, rules, throughput_seq=headline_seq)
    headline = timing["latency_by_seq"][headline_seq]
    return {**evaluate_text_model(path, test, labels, groups), "accuracy_samples": len(labels),
            **{key: headline[key] for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")},
            **text_model_stats(path, headline_seq), "seq_length": headline_seq,
            "throughput_sps": timing["throughput_sps"],
            "latency_by_seq": {str(k): {key: v[key] for key in ("p50_ms", "p90_ms", "p99_ms")}
                               for k, v in timing["latency_by_seq"].items()}}


def copy_tokenizer(tokenizer_path: Path, model_path: Path, destination: Path) -> None:
    """Copy tokenizer.json, refusing one whose sha256 is not the one ``model_path`` was exported with."""
    from compress.onnxutil import metadata

    recorded = metadata(load_onnx(model_path)).get("tokenizer_sha256")
    actual = sha256(tokenizer_path)
    if recorded and recorded != actual:
        raise CompressError(f"{tokenizer_path} is not the tokenizer {model_path} was exported with (sha256 "
                            f"{actual[:12]}... vs recorded {recorded[:12]}...): use the run's tokenizer.json")
    shutil.copyfile(tokenizer_path, destination)
