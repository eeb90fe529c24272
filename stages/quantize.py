"""Post-training quantization with onnxruntime's quantizer, safe by default.

Four modes: ``auto`` (the default) builds each candidate int8 format, measures it on the target
provider and keeps the fastest one within the accuracy budget (recording fp32 as the decision when
no int8 variant is faster); ``static`` builds one format; ``dynamic`` quantizes weights ahead of time
and activations at run time (Linear/attention-heavy models); ``fp16`` converts to half precision
(GPU providers). Accuracy-aware (on by default): when int8 loses more than ``max_accuracy_drop``
points on the validation split, other calibration methods are tried, then the most sensitive nodes
(ranked by the error of the model with only that node quantized) are kept in fp32, as few as meet the budget
(the most sensitive alone, then all ``max_fp32_nodes``, then bisection: ``keep_fewest_fp32``); in auto
mode fastest candidate first, and only while the search can change the decision (``search_the_fast``).
A per-layer report (scale, zero point, SQNR, share of the drop) is written beside the model.

Text models (``compress.text_onnx``): the candidates are dynamic int8 (the default for BERT on CPU), static
U8S8 QDQ calibrated on real tokenized samples, and int4 weight-only; auto measures them all (validation
accuracy, batch-1 p50 interleaved with fp32) and keeps the fastest within ``max_accuracy_drop``, falling back
to the next candidate, then to fp32, when one loses too much."""
from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
from tqdm import tqdm

from compress import histogram_calibration as hc
from compress import quant_analysis as qa
from compress import text_run
from compress.data import Dataset
from compress.errors import CompressError
from compress.fsutil import atomic_path, private_tempdir, working_directory
from compress.latency import Target, TimingRules, time_interleaved
from compress.lazy_data import rows
from compress.manifest import StageResult
from compress.metrics import classification_metrics, onnx_stats
from compress.onnxutil import check_input, load_onnx, make_session, predict, resolve_provider

MODES = ("auto", "static", "dynamic", "fp16")
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
# Auto mode's candidate formats: name -> (format, activation type, weight type).
CANDIDATES = {"u8s8_qdq": ("qdq", "uint8", "int8"), "s8s8_qdq": ("qdq", "int8", "int8"),
              "u8u8_qdq": ("qdq", "uint8", "uint8"), "u8s8_qoperator": ("qoperator", "uint8", "int8"),
              "s8s8_qoperator": ("qoperator", "int8", "int8")}
# Dynamic mode's default op types (Gemm is rewritten as MatMul + Add first). Conv becomes ConvInteger,
# which onnxruntime's CPU provider runs only with uint8 weights, and slowly: add it to op_types on purpose.
DYNAMIC_OP_TYPES = ["MatMul", "Attention", "LSTM"]
# Samples per onnxruntime run when calibrating and in the layer report's per-tensor pass. Those runs keep many
# intermediate tensors alive, so memory grows with the batch (a 5M-parameter ViT at 32x32: MinMax calibration
# peaked at 2.5 GB with batches of 32, 1 GB with 8; every tensor of the report's pass is ~36 MB per sample in
# fp32, twice that in QDQ), while larger batches barely run faster.
CALIBRATION_BATCH = 8
REPORT_BATCH = 4


@dataclass
class QuantizeConfig:
    """Post-training quantization (int8 static or dynamic, or fp16), held to an accuracy budget."""

    mode: str = "auto"  # auto (measure `candidates`, keep the fastest within budget), static, dynamic, fp16 (GPU)
    method: str = "minmax"  # calibration: minmax, entropy, percentile, distribution (onnxruntime's, made for float8)
    percentile: float = 99.999  # method=percentile: the activation percentile kept
    calibration_samples: int = 256  # real training samples run through the model to calibrate
    format: str = "qdq"  # static mode: qdq (QuantizeLinear/DequantizeLinear pairs) or qoperator (QLinearConv, ...)
    activation_type: str = "uint8"  # static mode: uint8 (U8S8, fast on x86 with VNNI) or int8 (S8S8: Arm, TensorRT)
    weight_type: str = "int8"  # static and dynamic: int8 or uint8 (uint8 weights need uint8 activations)
    per_channel: bool = True  # one weight scale per output channel
    reduce_range: bool = False  # 7-bit weights, for x86 CPUs without VNNI where u8s8 products can saturate
    symmetric_activations: bool = False  # activation zero point fixed at 0 (TensorRT needs it with int8 activations)
    preprocess: bool = True  # onnxruntime's quant_pre_process first: symbolic shape inference + graph optimization
    op_types: list[str] = field(default_factory=list)  # op types to quantize; empty: all onnxruntime can (dynamic: MatMul, Gemm, Attention, LSTM)
    nodes_to_exclude: list[str] = field(default_factory=list)  # nodes always kept in fp32 (names after preprocessing)
    candidates: list[str] = field(default_factory=lambda: ["u8s8_qdq", "s8s8_qdq", "u8s8_qoperator"])  # auto mode's formats
    provider: str = "cpu"  # target execution provider: accuracy and auto's timings are measured on it
    threads: int = 1  # intra-op threads for auto's timings (the benchmark stage's default)
    measure_seconds: float = 0.6  # auto: timed seconds per model, in rounds interleaved across candidates and fp32
    accuracy_aware: bool = True  # over budget: try fallback_methods, then keep the most sensitive nodes in fp32
    max_accuracy_drop: float = 0.5  # accuracy points the model may lose against fp32 on the validation split
    fallback_methods: list[str] = field(default_factory=lambda: ["percentile", "entropy"])  # tried in turn before fp32 nodes
    max_fp32_nodes: int = 8  # accuracy-aware: at most this many nodes kept in fp32 (besides nodes_to_exclude)
    layer_report: bool = True  # write <name>_layers.md and <name>_layers.png beside the model
    report_samples: int = 64  # validation samples whose activations the layer report compares
    sensitivity_samples: int = 256  # validation samples each single-node model is scored on (ranking, report)
    # Each single-node model is one quantizer run and one session: on a 5M-parameter ViT (~100 such nodes)
    # analysing all of them took minutes, while the largest nodes hold nearly all of the error.
    report_sensitivity: bool = False  # layer report: also the single-node (*alone*) columns, one quantizer run per node
    # (they come for free when the accuracy-aware search has ranked the nodes)
    sensitivity_nodes: int = 8  # single-node analysis (fallback ranking, report) covers the largest N nodes by weights
    calibration_chunk: int = 16  # calibration samples whose activations are held at once (bounds peak memory)
    seed: int = 0  # which training samples calibrate
    # Text models only: auto measures these (dynamic/static modes build dynamic_int8/static_u8s8_qdq alone).
    text_candidates: list[str] = field(default_factory=lambda: ["dynamic_int8", "static_u8s8_qdq", "int4_weight_only"])
    int4_block_size: int = 32  # int4_weight_only: weights share one scale per block of this many rows (power of 2, >= 16)

    def __post_init__(self) -> None:
        from compress.text_onnx import CANDIDATES as TEXT_CANDIDATES

        for name in self.text_candidates:
            if name not in TEXT_CANDIDATES:
                raise ValueError(f"quantize.text_candidates: {name!r} is not a text candidate; choose from "
                                 f"{', '.join(TEXT_CANDIDATES)}")
        if self.int4_block_size < 16 or self.int4_block_size & (self.int4_block_size - 1):
            raise ValueError(f"quantize.int4_block_size must be a power of 2 >= 16, got {self.int4_block_size}")
        for name, choices in (("mode", MODES), ("method", METHODS), ("format", FORMATS),
                              ("activation_type", TYPES), ("weight_type", TYPES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"quantize.{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise ValueError("quantize.weight_type='uint8' needs activation_type='uint8' (onnxruntime has no S8U8 "
                             "kernels); got activation_type='int8'")
        for name in self.candidates:
            if name not in CANDIDATES:
                raise ValueError(f"quantize.candidates: {name!r} is not a format; choose from {', '.join(CANDIDATES)}")
        if self.mode == "auto" and not self.candidates:
            raise ValueError("quantize.candidates must name at least one format in auto mode")
        for name in self.fallback_methods:
            if name not in METHODS:
                raise ValueError(f"quantize.fallback_methods: {name!r} is not a method; choose from {', '.join(METHODS)}")
        for name, low in (("calibration_samples", 1), ("report_samples", 1), ("sensitivity_samples", 1), ("threads", 0),
                          ("max_fp32_nodes", 0), ("sensitivity_nodes", 1), ("calibration_chunk", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"quantize.{name} must be >= {low}, got {getattr(self, name)}")
        if not 90.0 <= self.percentile <= 100.0:
            raise ValueError(f"quantize.percentile must be within [90, 100], got {self.percentile}")
        if self.max_accuracy_drop < 0:
            raise ValueError(f"quantize.max_accuracy_drop must be >= 0 points, got {self.max_accuracy_drop}")
        if self.measure_seconds <= 0:
            raise ValueError(f"quantize.measure_seconds must be > 0, got {self.measure_seconds}")

    @classmethod
    def fast(cls) -> "QuantizeConfig":
        """One static U8S8 QDQ model, MinMax calibration, no accuracy search, no report: the quickest."""
        return cls(mode="static", accuracy_aware=False, layer_report=False)

    @classmethod
    def accuracy_first(cls) -> "QuantizeConfig":
        """A tighter budget (0.2 points), every calibration method, and up to 32 nodes kept in fp32."""
        return cls(max_accuracy_drop=0.2, fallback_methods=["percentile", "entropy", "minmax"], max_fp32_nodes=32)

    @classmethod
    def arm(cls) -> "QuantizeConfig":
        """Arm CPUs: their kernels prefer signed (S8S8) activations."""
        return cls(candidates=["s8s8_qdq", "u8s8_qdq"])

    @classmethod
    def no_vnni(cls) -> "QuantizeConfig":
        """x86 CPUs without VNNI: 7-bit weights avoid saturating u8s8 AVX2 products."""
        return cls(reduce_range=True)

    @classmethod
    def tensorrt(cls) -> "QuantizeConfig":
        """TensorRT: symmetric S8S8 QDQ, the only int8 form it runs."""
        return cls(mode="static", provider="tensorrt", activation_type="int8", symmetric_activations=True)

    @classmethod
    def gpu_fp16(cls) -> "QuantizeConfig":
        """fp16 on CUDA (fp16 has fast kernels on GPUs, not on CPUs)."""
        return cls(mode="fp16", provider="cuda")


@dataclass(frozen=True)
class Variant:
    """One way to build the low-precision model."""

    name: str  # candidate name, or "dynamic", "fp16"
    kind: str  # static, dynamic or fp16
    format: str  # qdq, qoperator (static); integer (dynamic); fp16
    activation_type: str
    weight_type: str

    @property
    def calibrated(self) -> bool:
        return self.kind == "static"

    @property
    def types(self) -> str:
        return "float16" if self.kind == "fp16" else f"{self.activation_type}/{self.weight_type}"

    def numerics(self) -> "Variant":
        """The variant whose numbers match this one and that can be analysed per tensor (QDQ for static)."""
        if self.kind == "static" and self.format != "qdq":
            return Variant(f"{self.name}~qdq", "static", "qdq", self.activation_type, self.weight_type)
        return self


class CalibrationReader(CalibrationDataReader):
    """Feeds real samples to onnxruntime's calibrator, ``batch_size`` at a time. ``set_range`` (onnxruntime's
    strided calibration) limits it to samples start..end, so the calibrator holds one chunk's activations."""

    def __init__(self, x: np.ndarray, input_name: str, batch_size: int = 1):
        self._x, self._input_name, self._batch_size = x, input_name, batch_size
        self._position, self._end = 0, len(x)

    def __len__(self) -> int:
        return len(self._x)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._position, self._end = start_index, min(end_index, len(self._x))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= self._end:
            return None
        batch = self._x[self._position:min(self._position + self._batch_size, self._end)]
        self._position += len(batch)
        return {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)}


def calibration_stride(samples: int, chunk: int) -> int:
    """The largest chunk of at most ``chunk`` samples that divides ``samples`` (onnxruntime's strided calibration
    needs equal chunks)."""
    return max(d for d in range(1, min(chunk, samples) + 1) if samples % d == 0)


def run(cfg: QuantizeConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path, name: str = "int8") -> StageResult:
    """Quantize ``inputs['model']`` into ``out_dir/<name>.onnx`` (with its per-layer report)."""
    if text_run.is_text(data):
        return run_text(cfg, inputs, data, out_dir, name)
    model_path = inputs["model"]
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{name}.onnx"
    metrics = quantize(cfg, Path(model_path), data, output)
    outputs = {name: output}
    if cfg.layer_report:
        markdown, plot = report_paths(output)
        outputs.update({f"{name}_layers": markdown, f"{name}_layers_plot": plot})
    return StageResult(outputs, metrics)


def report_paths(output: Path) -> tuple[Path, Path]:
    """Where the per-layer report of ``output`` goes: <stem>_layers.md and <stem>_layers.png beside it."""
    return output.with_name(f"{output.stem}_layers.md"), output.with_name(f"{output.stem}_layers.png")


def quantize(cfg: QuantizeConfig, model_path: Path, data: Dataset, output: Path) -> dict:
    """Quantize ``model_path`` into ``output`` as ``cfg`` asks; returns what was measured and decided."""
    model_path, output = Path(model_path).resolve(), Path(output).resolve()
    source = load_onnx(model_path)
    if any(prop.key == "quantization" for prop in source.metadata_props):
        raise CompressError(f"{model_path} is already quantized by compress quantize: quantize the fp32 model it was made "
                            "from instead")
    provider = resolve_provider(cfg.provider)
    fp32_session = make_session(model_path, cfg.provider, cfg.threads)
    input_name = check_input(fp32_session, data.input_shape, f"dataset {data.name}")
    classes = fp32_session.get_outputs()[0].shape[-1]
    if isinstance(classes, int) and classes != data.num_classes:
        raise CompressError(f"{model_path} outputs {classes} classes but dataset {data.name} has {data.num_classes}: "
                            "calibrate and measure it on the data it was trained on (--data)")
    with private_tempdir("quantize") as tmp, working_directory(Path(tmp)):
        work = QuantizationJob(cfg, model_path, data, input_name, Path(tmp))
        support = qa.cpu_int8_support()
        stats = onnx_stats(work.source_model)
        has_conv = any(node.op_type == "Conv" for node in work.source_model.graph.node)
        warnings = qa.hardware_warnings(provider, cfg.mode, support, cfg.activation_type,
                                        cfg.symmetric_activations, stats["macs"], has_conv)
        for message in warnings:
            tqdm.write(f"[quantize] warning: {message}")
        results, skipped = [], []
        for variant in work.variants():
            try:  # auto: the accuracy-aware search waits until the first builds are timed (search_the_fast)
                results.append(work.fit_budget(variant, search=cfg.mode != "auto"))
            except CompressError as exc:
                if cfg.mode != "auto" or len(work.variants()) == 1:
                    raise
                # a candidate onnxruntime builds into an invalid or unloadable graph is left out, with the reason
                skipped.append({"candidate": variant.name, "reason": str(exc)})
                tqdm.write(f"[quantize] warning: candidate {variant.name} skipped: {exc}")
        if not results:
            raise CompressError(f"no candidate format could be quantized: {skipped[0]['reason']}")
        not_searched = []
        if cfg.mode == "auto":
            results, not_searched = work.search_the_fast(results)
        chosen, decision, reason, timings = work.decide(results)
        report = work.layer_report(chosen, output) if cfg.layer_report else None
        _write_model(chosen["path"], model_path, output, chosen, decision)
    test = _test_comparison(fp32_session, make_session(output, cfg.provider, cfg.threads), data)
    variant = chosen["variant"]
    return {
        "mode": cfg.mode, "decision": decision, "decision_reason": reason, "candidate": variant.name,
        "format": variant.format, "types": variant.types, "method": chosen["method"] or "none",
        "calibration_samples": len(work.calibration) if variant.calibrated else 0,
        **test,
        "val_fp32_accuracy": work.fp32_val_accuracy, "val_accuracy": chosen["val_accuracy"],
        "val_drop_points": chosen["val_drop_points"], "max_accuracy_drop": cfg.max_accuracy_drop,
        "within_budget": chosen["within_budget"],
        "fp32_nodes": [{"node": node, "reason": why} for node, why in chosen["fp32_nodes"].items()],
        "left_float_by_onnxruntime": work.left_float.get(variant.name, []),
        "attempts": [_attempt_record(a) for result in results for a in result["attempts"]],
        "skipped_candidates": skipped,
        "not_searched": not_searched,
        "skipped_attempts": [s for result in results for s in result["skipped"]],
        "candidates": timings,
        "provider": provider, "cpu": support, "warnings": warnings,
        "preprocessed": cfg.preprocess, "source_macs": stats["macs"],
        "layer_report": report,
    }


class QuantizationJob:
    """One quantization job: the preprocessed source, the calibration cache, validation data, and the
    builds, evaluations and sensitivity rankings made so far (each made once)."""

    def __init__(self, cfg: QuantizeConfig, model_path: Path, data: Dataset, input_name: str, tmp_dir: Path):
        self.cfg, self.model_path, self.data, self.input_name, self.tmp = cfg, model_path, data, input_name, tmp_dir
        self.source = tmp_dir / "source.onnx"
        self.source_model = _prepare_source(cfg, model_path, self.source)
        self._check_request()
        self.calibration = calibration_samples(data, cfg.calibration_samples, cfg.seed)
        self.fixed_batch = not _free_batch(self.source_model)
        self.fp32_val_logits = self.logits(self.source)
        self.fp32_val_accuracy = _accuracy(self.fp32_val_logits, data.val.y)
        self._builds = 0
        self._built: dict[tuple, Path] = {}
        self._val_accuracy: dict[Path, float] = {}
        self._timed: tuple[dict[str, Path], dict[str, float]] | None = None  # auto: the last interleaved timing
        self._sensitivity: dict[tuple, list[dict]] = {}
        self._histograms: hc.SharedHistogramCollector | None = None  # percentile + entropy, from one pass
        self.left_float: dict[str, list[str]] = {}  # per variant: nodes onnxruntime's quantizer left in float

    # --- what to build ---------------------------------------------------------------------------
    def variants(self) -> list[Variant]:
        cfg = self.cfg
        if cfg.mode == "auto":
            return [Variant(name, "static", *CANDIDATES[name]) for name in cfg.candidates]
        if cfg.mode == "static":
            name = f"{_short_type(cfg.activation_type)}{_short_type(cfg.weight_type)}_{cfg.format}"
            return [Variant(name, "static", cfg.format, cfg.activation_type, cfg.weight_type)]
        if cfg.mode == "dynamic":
            return [Variant("dynamic", "dynamic", "integer", "uint8", cfg.weight_type)]
        return [Variant("fp16", "fp16", "fp16", "float16", "float16")]

    def _check_request(self) -> None:
        cfg = self.cfg
        qa.check_node_names(self.source_model, cfg.nodes_to_exclude, "quantize.nodes_to_exclude", self.model_path)
        supported = _supported_ops(cfg.mode)
        if cfg.mode != "fp16":
            unknown = [op for op in cfg.op_types if op not in supported]
            if unknown:
                raise CompressError(f"quantize.op_types: onnxruntime cannot quantize {unknown[0]!r} in {cfg.mode} mode; "
                                    f"it can quantize {', '.join(sorted(supported))}")
            wanted = set(self.wanted_ops())
            if not self.candidate_nodes():
                present = sorted({n.op_type for n in self.source_model.graph.node})
                raise CompressError(f"nothing to quantize in {self.model_path}: none of its nodes ({', '.join(present)}) "
                                    f"is one that {cfg.mode} quantization computes in low precision ("
                                    f"{', '.join(sorted(set(wanted) - qa.EXACT_OPS))}) outside quantize.nodes_to_exclude")

    # --- building and measuring ------------------------------------------------------------------
    def build(self, variant: Variant, method: str | None, exclude: list[str], only: list[str] | None = None) -> Path:
        """The model quantized as asked, checked by onnx.checker (each distinct build made once); every build is
        then loaded into an onnxruntime session by ``logits``, which also rejects graphs onnxruntime refuses."""
        cfg = self.cfg
        # by what is built, not the variant's name: a QOperator candidate's QDQ twin is the QDQ candidate's build
        key = (variant.kind, variant.format, variant.activation_type, variant.weight_type, method,
               tuple(sorted(exclude)), None if only is None else tuple(sorted(only)))
        if key in self._built:
            return self._built[key]
        self._builds += 1
        path = self.tmp / f"build_{self._builds}.onnx"
        try:
            with _quiet():
                if variant.kind == "static":
                    from onnxruntime.quantization import quantize_static

                    extra = {"ActivationSymmetric": cfg.symmetric_activations, "CalibTensorRangeSymmetric": False,
                             "CalibStridedMinMax": calibration_stride(len(self.calibration), cfg.calibration_chunk)}
                    if method == "percentile":
                        extra["CalibPercentile"] = cfg.percentile
                    cache = self.tmp / f"calibration_{method}.json"
                    if method in hc.SHARED_METHODS and not cache.exists() and hc.shareable(self.source_model):
                        hc.write_cache(self.histograms(), method, cache)
                    quantize_static(
                        str(self.source), str(path), self.reader(self.calibration), quant_format=FORMATS[variant.format],
                        op_types_to_quantize=cfg.op_types or None, per_channel=cfg.per_channel,
                        reduce_range=cfg.reduce_range, activation_type=TYPES[variant.activation_type],
                        weight_type=TYPES[variant.weight_type], nodes_to_quantize=only, nodes_to_exclude=exclude,
                        calibrate_method=METHODS[method], extra_options=extra,
                        calibration_cache_path=str(cache))
                    float_nodes = list(exclude) if only is None else [
                        n.name for n in self.source_model.graph.node if n.name not in only]
                    if float_nodes:
                        model = onnx.load(str(path))
                        if qa.protect_fp32_nodes(model, float_nodes):
                            onnx.save(model, str(path))
                elif variant.kind == "dynamic":
                    from onnxruntime.quantization import quantize_dynamic

                    quantize_dynamic(str(self.source), str(path), op_types_to_quantize=self.wanted_ops(),
                                     per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                                     weight_type=TYPES[variant.weight_type], nodes_to_quantize=only,
                                     nodes_to_exclude=exclude,
                                     extra_options={"ActivationSymmetric": cfg.symmetric_activations})
                else:
                    from onnxruntime.transformers.float16 import convert_float_to_float16

                    blocked = list(exclude) if only is None else [
                        n.name for n in self.source_model.graph.node if n.name not in only]
                    half = convert_float_to_float16(onnx.load(str(self.source)), keep_io_types=True,
                                                    node_block_list=blocked)
                    onnx.save(qa.topologically_sorted(half), str(path))
        except CompressError:
            raise
        except Exception as exc:
            raise _named_error(f"onnxruntime could not {variant.kind}-quantize {self.model_path}", exc,
                               "keep that node in fp32 with quantize.nodes_to_exclude, or change quantize.op_types") from exc
        try:
            onnx.checker.check_model(str(path))
        except Exception as exc:
            raise _named_error(f"the {variant.name} model built from {self.model_path} is not valid ONNX", exc,
                               "keep that node in fp32 with quantize.nodes_to_exclude") from exc
        self._built[key] = path
        return path

    def histograms(self) -> hc.SharedHistogramCollector:
        """The calibration samples' activation histograms that both percentile and entropy ranges come from
        (collected once: the histograms are most of a calibration's time)."""
        if self._histograms is None:
            self._histograms = hc.collect(self.source, self.reader(self.calibration),
                                          calibration_stride(len(self.calibration), self.cfg.calibration_chunk),
                                          self.cfg.op_types or None, self.cfg.percentile)
        return self._histograms

    def reader(self, x: np.ndarray) -> CalibrationReader:
        return CalibrationReader(x, self.input_name, 1 if self.fixed_batch else CALIBRATION_BATCH)

    def logits(self, path: Path, count: int | None = None) -> np.ndarray:
        """Validation logits (the first ``count`` samples, else all)."""
        try:
            session = make_session(path, self.cfg.provider, 0)
        except CompressError as exc:
            cause = exc.__cause__ or exc
            raise _named_error(f"onnxruntime cannot run the model quantized from {self.model_path}", cause,
                               "keep that node in fp32 with quantize.nodes_to_exclude, or change quantize.op_types "
                               "or quantize.weight_type") from exc
        return predict(session, self.data.val.x[:count]).astype(np.float64)

    def evaluate(self, variant: Variant, method: str | None, fp32_nodes: dict[str, str]) -> dict:
        path = self.build(variant, method, list(fp32_nodes))
        if path not in self._val_accuracy:  # a build evaluated again (auto's search of a first build) is not rerun
            self._val_accuracy[path] = _accuracy(self.logits(path), self.data.val.y)
        accuracy = self._val_accuracy[path]
        drop = 100 * (self.fp32_val_accuracy - accuracy)
        return {"variant": variant, "method": method, "fp32_nodes": dict(fp32_nodes), "path": path,
                "val_accuracy": accuracy, "val_drop_points": drop,
                "within_budget": drop <= self.cfg.max_accuracy_drop + 1e-9}

    # --- accuracy-aware search -------------------------------------------------------------------
    def fit_budget(self, variant: Variant, search: bool = True) -> dict:
        """The variant built as asked; over budget (accuracy-aware, and ``search``): other calibration methods in
        turn, then the fewest of the most sensitive nodes kept in fp32 that bring the drop within budget."""
        cfg = self.cfg
        search = search and cfg.accuracy_aware
        fixed = {node: "listed in quantize.nodes_to_exclude" for node in cfg.nodes_to_exclude}
        methods = [cfg.method] if variant.calibrated else [None]
        if variant.calibrated and search:
            methods += [m for m in cfg.fallback_methods if m not in methods]
        attempts, best, skipped = [], None, []
        for method in methods:
            if attempts:  # the first build must work; a fallback that does not is skipped with its reason
                try:
                    attempt = self.evaluate(variant, method, fixed)
                except CompressError as exc:
                    skipped.append({"candidate": variant.name, "step": f"calibration {method}", "reason": str(exc)})
                    continue
            else:
                attempt = self.evaluate(variant, method, fixed)
            attempt["step"] = f"calibration {method}" if method else variant.kind
            attempts.append(attempt)
            if len(attempts) == 1:
                self.check_converted(attempt["path"], variant)
            if best is None or attempt["val_accuracy"] > best["val_accuracy"] + 1e-12:
                best = attempt
            if attempt["within_budget"]:
                best = attempt
                break
        if not best["within_budget"] and search and cfg.max_fp32_nodes > 0:
            best = self.keep_fewest_fp32(variant, best, fixed, attempts, skipped)
        if not best["within_budget"] and (search or not cfg.accuracy_aware):
            tqdm.write(f"[quantize] warning: {variant.name} loses {best['val_drop_points']:.2f} val points, over the "
                       f"{cfg.max_accuracy_drop:g}-point budget" + (" even after the accuracy-aware search"
                                                                     if search else ""))
        return {"variant": variant, "best": best, "attempts": attempts, "skipped": skipped}

    def keep_fewest_fp32(self, variant: Variant, best: dict, fixed: dict[str, str], attempts: list[dict],
                         skipped: list[dict]) -> dict:
        """The fewest most-sensitive nodes kept in fp32 that bring the drop within budget: the most sensitive node
        alone first (often one layer holds the error), then all ``max_fp32_nodes`` of them (if even that is over
        budget, no smaller set is tried), then bisection between the two, so at most 2 + log2(max_fp32_nodes)
        builds instead of one per node. Bisection assumes that keeping more nodes in fp32 does not lose accuracy;
        the result is within budget either way. Appends every attempt; returns the best one."""
        cfg, method = self.cfg, best["method"]
        ranking = self.sensitivity(variant, method)
        order = sorted((row for row in ranking if row["node"] not in fixed and row["alone_noise"] > 0),
                       key=lambda row: -row["alone_noise"])[:cfg.max_fp32_nodes]
        why = {row["node"]: (f"#{rank} most sensitive: quantized alone it gives logit SQNR "
                             f"{row['alone_output_sqnr_db']:.1f} dB, {100 * row['share_of_drop']:.0f}% of the single-node "
                             f"error, and costs {row['alone_val_drop_points']:+.2f} val points")
               for rank, row in enumerate(order, 1)}
        start_drop, tried = best["val_drop_points"], []

        def within(count: int) -> bool:
            """Build and score the model with the ``count`` most sensitive nodes in fp32; is it within budget?"""
            nodes = [row["node"] for row in order[:count]]
            step = f"keep {nodes[0]} in fp32" if count == 1 else f"keep the {count} most sensitive nodes in fp32"
            try:
                attempt = self.evaluate(variant, method, {**fixed, **{node: why[node] for node in nodes}})
            except CompressError as exc:
                skipped.append({"candidate": variant.name, "step": step, "reason": str(exc)})
                return False
            moved = (f"; keeping {'it' if count == 1 else f'these {count}'} fp32 moved the val drop from "
                     f"{start_drop:.2f} to {attempt['val_drop_points']:.2f} points")
            attempt["fp32_nodes"] = {**fixed, **{node: why[node] + moved for node in nodes}}
            attempt["step"] = step
            attempts.append(attempt)
            tried.append(attempt)
            return attempt["within_budget"]

        if order and not within(1) and len(order) > 1 and within(len(order)):
            over, meets = 1, len(order)
            while meets - over > 1:
                middle = (over + meets) // 2
                over, meets = (over, middle) if within(middle) else (middle, meets)
        meeting = [attempt for attempt in tried if attempt["within_budget"]]
        if meeting:
            return min(meeting, key=lambda attempt: len(attempt["fp32_nodes"]))
        return max([best, *tried], key=lambda attempt: attempt["val_accuracy"])  # ties: the earliest

    def search_the_fast(self, results: list[dict]) -> tuple[list[dict], list[dict]]:
        """Auto mode: the accuracy-aware search for candidates over budget at their first build, fastest first
        (every first build timed interleaved with fp32), and only while it can change the decision: a candidate
        whose first build is slower than fp32, or than one already within budget, is not searched (keeping more
        of it in fp32 only slows it down further). Returns the results and the candidates not searched, with why."""
        over = [r for r in results if not r["best"]["within_budget"]]
        if not over or not self.cfg.accuracy_aware:
            return results, []
        latencies = self.p50s({"fp32": self.source, **{r["variant"].name: r["best"]["path"] for r in results}})
        bar_ms, bar_name = latencies["fp32"], "fp32"
        for result in results:
            name = result["variant"].name
            if result["best"]["within_budget"] and latencies[name] < bar_ms:
                bar_ms, bar_name = latencies[name], f"{name}, within budget as built"
        searched, not_searched = {}, []
        for result in sorted(over, key=lambda r: latencies[r["variant"].name]):
            name = result["variant"].name
            if latencies[name] >= bar_ms:
                reason = (f"over budget ({result['best']['val_drop_points']:.2f} val points) and, at its first build, "
                          f"no faster than {bar_name} (p50 {latencies[name]:.3f} ms against {bar_ms:.3f} ms): keeping "
                          "nodes in fp32 only slows it down, so the accuracy-aware search was not run")
                not_searched.append({"candidate": name, "reason": reason})
                tqdm.write(f"[quantize] {name}: {reason}")
                continue
            try:
                searched[name] = self.fit_budget(result["variant"])
            except CompressError as exc:  # the first build stands; why the search stopped is recorded
                not_searched.append({"candidate": name, "reason": f"the accuracy-aware search failed: {exc}"})
                continue
            if searched[name]["best"]["within_budget"]:
                bar_ms, bar_name = latencies[name], f"{name}, which met the budget after the search"
        return [searched.get(r["variant"].name, r) for r in results], not_searched

    def wanted_ops(self) -> list[str]:
        """The op types to quantize; in dynamic mode Gemm means the MatMul it was rewritten as."""
        cfg = self.cfg
        if cfg.mode == "dynamic":
            return sorted({"MatMul" if op == "Gemm" else op for op in cfg.op_types}) or DYNAMIC_OP_TYPES
        return list(cfg.op_types) or sorted(_supported_ops(cfg.mode))

    def candidate_nodes(self) -> list[onnx.NodeProto]:
        """Nodes the mode should convert: of the wanted op types, computing (not exact ops), not excluded."""
        cfg = self.cfg
        wanted = set(self.wanted_ops())
        return [n for n in self.source_model.graph.node if n.op_type in wanted
                and n.op_type not in qa.EXACT_OPS and n.name not in cfg.nodes_to_exclude]

    def check_converted(self, path: Path, variant: Variant) -> None:
        """Nodes onnxruntime's quantizer silently left in float are recorded; if it converted none, that is an
        error naming the first one (and why, when its input is not float32)."""
        if variant.kind == "fp16":
            return
        changed = set(qa.changed_nodes(self.source_model, onnx.load(str(path)), _qdq_ops()))
        candidates = self.candidate_nodes()
        # Add/Mul/... in QDQ compute on dequantized values but are fused into QLinear ops at load: not "left".
        left = [n.name for n in candidates if n.name not in changed and
                (variant.kind != "static" or n.op_type in _qdq_ops() or variant.format == "qoperator")]
        self.left_float[variant.name] = left
        if changed or not candidates:
            return
        node = next((n for n in candidates if n.name in left), candidates[0])
        types = qa.tensor_types(self.source_model)
        why = ""
        first = next((name for name in node.input if name), "")
        if types.get(first, TensorProto.FLOAT) != TensorProto.FLOAT:
            why = (f": its input {first!r} is {TensorProto.DataType.Name(types[first]).lower()}, and onnxruntime "
                   "quantizes float32 tensors only")
        raise CompressError(f"onnxruntime quantized none of the nodes of {self.model_path}: node {node.name!r} "
                            f"({node.op_type}) was left in float{why}; export the model in float32, or use "
                            "quantize.mode=fp16")

    def sensitivity(self, variant: Variant, method: str | None, compute: bool = True) -> list[dict]:
        """Each low-precision node ranked by the error of the model with only that node converted (made once
        per numerics and method; without ``compute``, only what was made already)."""
        numerics = variant.numerics()
        key = (numerics.kind, numerics.activation_type, numerics.weight_type, method)
        if key not in self._sensitivity and not compute:
            return []
        if key not in self._sensitivity:
            nodes = self.analysed_nodes(numerics, method)
            progress = tqdm(nodes, desc="quantize: per-node sensitivity", unit="node", leave=False, disable=None)
            count = self.cfg.sensitivity_samples
            self._sensitivity[key] = qa.node_sensitivity(
                list(progress), lambda node: self.build(numerics, method, [], only=[node]),
                lambda path: self.logits(path, count), self.fp32_val_logits[:count], self.data.val.y[:count])
        return self._sensitivity[key]

    def analysed_nodes(self, numerics: Variant, method: str | None, largest_only: bool = True) -> list[onnx.NodeProto]:
        """The nodes this numerics puts in low precision; with ``largest_only``, the ``sensitivity_nodes`` largest."""
        if numerics.kind == "fp16":
            names = set(qa.float16_nodes(self.source_model))
        else:
            full = onnx.load(str(self.build(numerics, method, list(self.cfg.nodes_to_exclude))))
            names = set(qa.changed_nodes(self.source_model, full, _qdq_ops()))
        nodes = [node for node in self.source_model.graph.node if node.name in names]
        if not largest_only:
            return nodes
        largest = set(qa.largest_nodes(self.source_model, nodes, self.cfg.sensitivity_nodes))
        return [node for node in nodes if node.name in largest]

    # --- auto mode -------------------------------------------------------------------------------
    def p50s(self, paths: dict[str, Path]) -> dict[str, float]:
        """p50 of each model, timed interleaved; the same models as the last call are not timed again (the final
        decision after a search that changed nothing), while any change re-times them all in the same rounds."""
        if self._timed is None or self._timed[0] != paths:
            self._timed = paths, interleaved_p50s(paths, self.data.val.x[:1], self.input_name, self.cfg)
        return self._timed[1]

    def decide(self, results: list[dict]) -> tuple[dict, str, str, list[dict]]:
        """The result to write, the decision (int8, fp32 or fp16), why, and every candidate measured (auto)."""
        cfg = self.cfg
        best = [result["best"] for result in results]
        in_budget = [b for b in best if b["within_budget"]]
        if cfg.mode != "auto":
            chosen = best[0]
            decision = "fp16" if cfg.mode == "fp16" else "int8"
            reason = (f"{cfg.mode} mode: val drop {chosen['val_drop_points']:.2f} points "
                      f"({'within' if chosen['within_budget'] else 'OVER'} the {cfg.max_accuracy_drop:g}-point budget)")
            return chosen, decision, reason, []
        latencies = self.p50s({"fp32": self.source, **{b["variant"].name: b["path"] for b in best}})
        fp32_ms = latencies["fp32"]
        timings = [{"candidate": "fp32", "format": "fp32", "types": "float32", "p50_ms": fp32_ms, "speedup": 1.0,
                    "val_accuracy": self.fp32_val_accuracy, "val_drop_points": 0.0, "within_budget": True,
                    "method": None, "fp32_nodes": []}]
        for b in best:
            ms = latencies[b["variant"].name]
            timings.append({"candidate": b["variant"].name, "format": b["variant"].format, "types": b["variant"].types,
                            "p50_ms": ms, "speedup": fp32_ms / ms, "val_accuracy": b["val_accuracy"],
                            "val_drop_points": b["val_drop_points"], "within_budget": b["within_budget"],
                            "method": b["method"], "fp32_nodes": list(b["fp32_nodes"])})
        measured = ", ".join(f"{t['candidate']} {t['p50_ms']:.3f} ms" for t in timings)
        where = f"{cfg.threads} thread(s), batch 1, {self.cfg.provider}"
        if not in_budget:
            chosen = max(best, key=lambda b: b["val_accuracy"])
            return chosen, "fp32", (f"no int8 candidate is within {cfg.max_accuracy_drop:g} val points of fp32; "
                                    f"wrote the most accurate ({chosen['variant'].name}, "
                                    f"{chosen['val_drop_points']:.2f} points lost) for comparison; p50 ({where}): "
                                    f"{measured}"), timings
        chosen = min(in_budget, key=lambda b: latencies[b["variant"].name])
        chosen_ms = latencies[chosen["variant"].name]
        if chosen_ms >= fp32_ms:
            return chosen, "fp32", (f"no int8 candidate within budget is faster than fp32 (p50 {where}: {measured}); "
                                    f"wrote the fastest, {chosen['variant'].name}, for comparison"), timings
        return chosen, "int8", (f"{chosen['variant'].name} is the fastest candidate within {cfg.max_accuracy_drop:g} "
                                f"val points of fp32: {fp32_ms / chosen_ms:.2f}x faster than fp32 (p50 {where}: "
                                f"{measured})"), timings

    # --- the per-layer report --------------------------------------------------------------------
    def layer_report(self, chosen: dict, output: Path) -> dict:
        variant, method = chosen["variant"], chosen["method"]
        numerics = variant.numerics()
        # The single-node models cost a quantizer run each: the report shows them when the accuracy-aware search
        # ranked nodes anyway, or on request; its per-tensor columns come from one streamed pass.
        sensitivity = self.sensitivity(variant, method, compute=self.cfg.report_sensitivity)
        analysed = [node.name for node in self.analysed_nodes(numerics, method, largest_only=False)]
        model_path = chosen["path"] if numerics == variant else self.build(numerics, method, list(chosen["fp32_nodes"]))
        samples = self.data.val.x[:self.cfg.report_samples]
        params = qa.quantization_params(onnx.load(str(model_path)))
        shown = qa.row_tensors(self.source_model, set(analysed) | set(chosen["fp32_nodes"]))
        with _quiet():
            errors = qa.tensor_errors(self.source, model_path, samples, self.input_name, self.tmp, params,
                                      1 if self.fixed_batch else REPORT_BATCH, tensors=shown)
        rows = qa.layer_rows(self.source_model, analysed, sensitivity, errors, params, chosen["fp32_nodes"])
        markdown, plot = report_paths(output)
        notes = [f"Model `{self.model_path.name}` -> `{output.name}`: {variant.name} ({variant.types}), "
                 f"calibration {method or 'none'}; validation accuracy {100 * self.fp32_val_accuracy:.2f}% fp32 -> "
                 f"{100 * chosen['val_accuracy']:.2f}% ({chosen['val_drop_points']:+.2f} points lost; budget "
                 f"{self.cfg.max_accuracy_drop:g}). {len(chosen['fp32_nodes'])} node(s) kept in fp32. Single-node "
                 f"(*alone*) columns: first {min(self.cfg.sensitivity_samples, len(self.data.val.y))} validation "
                 f"samples; SQNR columns: first {len(samples)}. "
                 + (f"Single-node analysis covers the {len(sensitivity)} largest low-precision node(s) by weight "
                    f"size (quantize.sensitivity_nodes={self.cfg.sensitivity_nodes})." if sensitivity else
                    "Single-node columns: not computed (the accuracy-aware search did not need them; set "
                    "quantize.report_sensitivity=true for them).")]
        if variant.format == "qoperator":
            notes.append("The QOperator model's numbers were analysed on its QDQ twin (same types and ranges).")
        if variant.kind == "dynamic":
            notes.append("Dynamic quantization computes activation scales per batch at run time: only weights have "
                         "stored scales.")
        qa.write_layer_report(rows, markdown, plot, f"Per-layer quantization error: {output.name}", notes)
        worst = sorted(rows, key=lambda row: (-(row["share_of_drop"] or 0), row["output_sqnr_db"] or 0.0))[:5]
        return {"markdown": markdown.name, "plot": plot.name, "nodes": len(rows),
                "most_sensitive": [{"node": r["node"], "share_of_drop": r["share_of_drop"],
                                    "alone_val_drop_points": r["alone_val_drop_points"],
                                    "output_sqnr_db": r["output_sqnr_db"], "precision": r["precision"]} for r in worst]}


def calibration_samples(data: Dataset, count: int, seed: int) -> np.ndarray:
    """``count`` training samples, drawn round-robin over classes so every class is seen."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(data.train.y == label)) for label in range(data.num_classes)]
    order = [idx[i] for i in range(max(map(len, per_class))) for idx in per_class if i < len(idx)]
    return rows(data.train.x, np.array(order[:count]))  # streamed data: a lazy view, decoded batch by batch


def interleaved_p50s(paths: dict[str, Path], x: np.ndarray, input_name: str, cfg: QuantizeConfig) -> dict[str, float]:
    """p50 batch-1 latency (ms) of each model on ``cfg.provider``, timed by the shared harness in rounds that
    alternate between the models in one worker process, so that a slow spell of the machine hits them all alike."""
    feed = {input_name: np.ascontiguousarray(x, dtype=np.float32)}
    rounds = 6
    timed = time_interleaved(paths, {name: feed for name in paths}, Target(cfg.provider, intra_op=cfg.threads),
                             TimingRules(warmup="fixed", warmup_runs=10), rounds=rounds,
                             round_seconds=cfg.measure_seconds / rounds, round_runs=1)
    return {name: float(np.median(timing.samples_ms)) for name, timing in timed.items()}


def _prepare_source(cfg: QuantizeConfig, model_path: Path, source: Path) -> onnx.ModelProto:
    """The model to quantize: pre-processed (unless disabled), every node named, Gemm as MatMul for dynamic."""
    if cfg.preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        try:
            with _quiet():
                quant_pre_process(str(model_path), str(source), skip_symbolic_shape=False)
        except Exception as exc:
            raise _preprocess_error(model_path, exc) from exc
        model = onnx.load(str(source))
    else:
        model = onnx.load(str(model_path))
    model = qa.unnamed_nodes_named(model)
    if cfg.mode == "dynamic" and ("Gemm" in cfg.op_types or not cfg.op_types):
        model = qa.gemm_to_matmul(model)
    onnx.save(model, str(source))
    return model


def _preprocess_error(model_path: Path, exc: Exception) -> CompressError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    found = qa.unresolved_shape_node(onnx.load(str(model_path)))
    if found and found[0]:
        node, op_type, why = found
        return CompressError(f"cannot quantize {model_path}: shape inference cannot resolve node {node!r} ({op_type}): "
                             f"{why} ({first}); export the model with static shapes there, or set "
                             "quantize.preprocess=false to skip shape inference")
    node = qa.node_in_message(str(exc))
    where = f" at node {node!r}" if node else ""
    return CompressError(f"cannot quantize {model_path}: symbolic shape inference failed{where} ({first}); export the "
                         "model with static shapes, or set quantize.preprocess=false to skip it")


def _named_error(what: str, exc: BaseException, fix: str) -> CompressError:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    node = qa.node_in_message(text)
    if node:
        return CompressError(f"{what}: node {node!r}: {first}; {fix.replace('that node', repr(node))}")
    return CompressError(f"{what}: {first}; {fix}")


def _write_model(built: Path, source: Path, output: Path, chosen: dict, decision: str) -> None:
    """Copy the chosen build into place atomically, with the source's metadata and a record of how it was made."""
    model = onnx.load(str(built))
    original = onnx.load(str(source))
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    variant = chosen["variant"]
    record = {"candidate": variant.name, "format": variant.format, "types": variant.types, "method": chosen["method"],
              "fp32_nodes": list(chosen["fp32_nodes"]), "decision": decision}
    entry = model.metadata_props.add()
    entry.key, entry.value = "quantization", json.dumps(record)
    with atomic_path(output) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))


def _test_comparison(fp32_session, quantized_session, data: Dataset) -> dict:
    fp32_logits = predict(fp32_session, data.test.x)
    quantized_logits = predict(quantized_session, data.test.x)
    fp32_metrics = classification_metrics(fp32_logits, data.test.y)
    quantized_metrics = classification_metrics(quantized_logits, data.test.y)
    return {"fp32_accuracy": fp32_metrics["accuracy"], "int8_accuracy": quantized_metrics["accuracy"],
            "accuracy_drop": fp32_metrics["accuracy"] - quantized_metrics["accuracy"],
            "top1_agreement": float((fp32_logits.argmax(1) == quantized_logits.argmax(1)).mean())}


def _attempt_record(attempt: dict) -> dict:
    return {"candidate": attempt["variant"].name, "step": attempt["step"], "method": attempt["method"],
            "fp32_nodes": list(attempt["fp32_nodes"]), "val_accuracy": attempt["val_accuracy"],
            "val_drop_points": attempt["val_drop_points"], "within_budget": attempt["within_budget"]}


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def _free_batch(model: onnx.ModelProto) -> bool:
    initializers = {init.name for init in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in initializers)
    dims = first.type.tensor_type.shape.dim
    return bool(dims) and not dims[0].HasField("dim_value")


def _short_type(name: str) -> str:
    return {"uint8": "u8", "int8": "s8"}[name]


def _supported_ops(mode: str) -> set[str]:
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    if mode == "dynamic":
        return set(IntegerOpsRegistry) | {"Gemm"}
    return set(QLinearOpsRegistry) | set(QDQRegistry)


def _qdq_ops() -> set[str]:
    from onnxruntime.quantization.registry import QDQRegistry

    return set(QDQRegistry)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence onnxruntime's quantization tools: they log warnings and print calibration chatter."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


# ---- text models ---------------------------------------------------------------------------------------

def run_text(cfg: QuantizeConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path, name: str = "int8") -> StageResult:
    """Build the text candidates of ``inputs['model']``, measure them, and write the chosen one to
    ``out_dir/<name>.onnx`` (fp32 when none is faster within the accuracy budget)."""
    import shutil

    from compress.text_onnx import TextQuantizeConfig, build_text_candidates, choose_text_candidate, onnx_logits

    model_path = Path(inputs["model"]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(prop.key == "quantization" for prop in load_onnx(model_path).metadata_props):
        raise CompressError(f"{model_path} is already quantized by compress quantize: quantize the fp32 model it was made "
                            "from instead")
    data = text_run.with_tokenizer_of(data, model_path)
    names = [i.name for i in make_session(model_path).get_inputs()]
    candidates = {"auto": cfg.text_candidates, "dynamic": ["dynamic_int8"], "static": ["static_u8s8_qdq"]}.get(cfg.mode)
    if candidates is None:
        raise CompressError(f"quantize.mode {cfg.mode!r} is not available for text models: use auto, dynamic or static")
    text_cfg = TextQuantizeConfig(candidates=candidates, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                                  calibration_samples=cfg.calibration_samples, int4_block_size=cfg.int4_block_size)
    rng = np.random.default_rng(cfg.seed)
    calibration = text_run.samples(_rows(data.train, rng.permutation(len(data.train))[:cfg.calibration_samples]), names)
    target = Target(provider=resolve_provider(cfg.provider), intra_op=max(cfg.threads, 1))
    output = out_dir / f"{name}.onnx"
    with private_tempdir("quantize") as tmp:
        built = build_text_candidates(model_path, calibration, Path(tmp), text_cfg)
        choice = choose_text_candidate(model_path, built, text_run.samples(data.val, names), data.val.sample_y,
                                       cfg.max_accuracy_drop if cfg.accuracy_aware else float("inf"), target,
                                       seq_length=128, measure_seconds=cfg.measure_seconds, val_groups=data.val.groups)
        chosen = built.get(choice["chosen"], model_path)
        sizes = {n: path.stat().st_size for n, path in built.items()}
        with atomic_path(output) as out:
            shutil.copyfile(chosen, out)
    test = text_run.samples(data.test, names)
    fp32_logits = data.test.sample_logits(onnx_logits(make_session(model_path), test))  # one row per text
    chosen_logits = data.test.sample_logits(onnx_logits(make_session(output), test))
    fp32_metrics = classification_metrics(fp32_logits, data.test.sample_y)
    chosen_metrics = classification_metrics(chosen_logits, data.test.sample_y)
    metrics = {"mode": cfg.mode, "decision": choice["decision"], "decision_reason": choice["reason"],
               "candidate": choice["chosen"], "candidates": choice["candidates"], "candidate_bytes": sizes,
               "format": {"dynamic_int8": "QOperator (dynamic)", "static_u8s8_qdq": "qdq",
                          "int4_weight_only": "MatMulNBits"}.get(choice["chosen"], "fp32"),
               "types": {"dynamic_int8": "int8 weights, uint8 activations at run time",
                         "static_u8s8_qdq": "uint8 activations, int8 weights",
                         "int4_weight_only": "int4 weights"}.get(choice["chosen"], "float32"),
               "method": "minmax" if choice["chosen"] == "static_u8s8_qdq" else "none",
               "calibration_samples": len(data.train.x[:cfg.calibration_samples]) if choice["chosen"] == "static_u8s8_qdq" else 0,
               "max_accuracy_drop": cfg.max_accuracy_drop, "fp32_accuracy": fp32_metrics["accuracy"],
               "int8_accuracy": chosen_metrics["accuracy"],
               "accuracy_drop": fp32_metrics["accuracy"] - chosen_metrics["accuracy"],
               "top1_agreement": float((fp32_logits.argmax(1) == chosen_logits.argmax(1)).mean()),
               "provider": target.provider, "threads": target.intra_op}
    return StageResult({name: output, "tokenizer": text_run.write_tokenizer(data, out_dir)}, metrics)


def _rows(split, index: np.ndarray):
    from compress.data import Split

    return Split(split.x[index], split.y[index])
