"""Benchmark ONNX models on an onnxruntime execution provider, every model under the same settings.

Inputs come from the model's own signature (any numpy dtype; symbolic dims set by ``dims``), from
arrays in an .npz (``inputs``) or from a labelled dataset, which also gives accuracy and macro
precision/recall/F1. Latency follows MLPerf's single-stream rules: warm up until latency is steady,
then time at least ``min_runs`` runs and ``min_seconds``; p90 is the single-stream figure, and
p50/p95/p99/mean/std come with it. Throughput over batch sizes, an intra-/inter-op threads sweep,
cold start and peak resident memory, input-transfer cost on GPU providers (IOBinding) and the top
operators from onnxruntime's profiler complete the picture. All timing loops and the cold-start and
memory probe run in a fresh worker process per model that imports only numpy and onnxruntime
(compress/worker.py), so every model starts from the same state as an app that ships onnxruntime.
Results: a terminal table, Markdown, versioned JSON (``SCHEMA_VERSION``) and optional PNG plots.

Text models (a text dataset): batch-1 latency at each of ``seq_lengths`` (the headline at ``headline_seq``),
throughput, size, params, MACs, accuracy and macro P/R/F1 on the test split (``text_onnx.benchmark_text_model``),
plus the TF-IDF + logistic-regression baseline trained on the same split.
"""
from __future__ import annotations

import itertools
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from compress import text_run
from compress.data import Dataset
from compress.errors import CompressError
from compress.fsutil import atomic_path, private_tempdir, write_json, write_text
from compress.latency import Target, TimingRules, cold_start, latency_summary, ratio_over_rounds, time_interleaved, time_jobs
from compress.lazy_data import is_lazy
from compress.manifest import StageResult
from compress.metrics import classification_metrics, onnx_stats
from compress.onnxutil import (
    EXECUTION_MODES,
    OPTIMIZATION_LEVELS,
    InputSpec,
    array_feed,
    check_input,
    generated_feed,
    input_specs,
    load_onnx,
    make_session,
    parse_key_values,
    predict,
    resolve_provider,
)
from compress.report import markdown_table
from compress.worker import Timing, measure, warm_up  # noqa: F401  (warm_up: part of this stage's API)

SCHEMA = "compress.benchmark"
SCHEMA_VERSION = 1  # bump when a key of benchmark.json changes meaning or goes away (adding keys keeps it)
WARMUP_MODES = ("steady", "fixed")
# Providers that compute in device memory, and onnxruntime's device name for IOBinding there.
DEVICE_OF_PROVIDER = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}
PROFILE_WARMUP_RUNS = 5  # profiled runs left out of the operator summary (first-run allocations)
COLD_START_RUNS = 10  # runs after the first one in the cold-start worker, so the memory peak includes steady state
LAZY_FEED_ROWS = 256  # samples a lazily read test split feeds when the batch is not fixed
MAX_SAVED_SAMPLES = 2000  # raw latencies kept in the JSON (every k-th run, in time order) for plots and re-analysis


@dataclass
class BenchmarkConfig:
    """How to measure; every model of a run is measured with exactly these settings."""

    provider: str = "cpu"  # execution provider: cpu, cuda, tensorrt, openvino, ... or a full provider name
    provider_options: list[str] = field(default_factory=list)  # provider options as "key=value", e.g. ["device_id=0"]
    optimization: str = "all"  # graph optimization level: disable, basic, extended, layout, all
    threads: int = 1  # intra-op threads (1 = one core, the edge-like setting; 0 = onnxruntime's default)
    inter_op_threads: int = 1  # inter-op threads, used when execution_mode is parallel (0 = onnxruntime's default)
    execution_mode: str = "sequential"  # sequential, or parallel (independent graph branches run at once)
    warmup: str = "steady"  # steady: warm up until latency settles; fixed: exactly warmup_runs untimed runs
    warmup_runs: int = 30  # untimed runs first: the fixed count, or the minimum before steadiness is checked
    steady_window: int = 20  # runs per window when checking steadiness
    steady_tolerance: float = 0.05  # steady once two consecutive windows' median latencies differ by at most this fraction
    warmup_max_seconds: float = 10.0  # stop waiting for steady latency after this long (reported as steady: false)
    min_runs: int = 300  # timed runs at least ...
    min_seconds: float = 1.0  # ... and for at least this long (MLPerf single-stream asks 1,024 runs and 600 s)
    throughput_batch: int = 32  # batch size of the headline throughput figure (throughput_sps)
    batch_sizes: list[int] = field(default_factory=list)  # more batch sizes for the throughput table
    threads_sweep: list[int] = field(default_factory=list)  # intra-op thread counts to time (empty: no sweep)
    inter_op_sweep: list[int] = field(default_factory=list)  # inter-op thread counts to time (needs parallel mode)
    dims: list[str] = field(default_factory=list)  # symbolic input dims, "name=N" or "input:axis=N"; unset first axis = batch
    inputs: str | None = None  # .npz with one array per model input (first axis = samples) instead of generated inputs
    int_high: int = 2  # generated integer inputs are drawn from [0, int_high): keep it below a vocabulary size
    seed: int = 0  # seed of generated inputs: models with the same signature all get the same inputs
    cold_start: bool = True  # session creation + first run and peak resident memory, in a fresh subprocess per model
    profile: bool = True  # per-operator times from onnxruntime's profiler (in a separate, profiled session)
    profile_runs: int = 20  # runs the profiler summary covers
    profile_top: int = 10  # operators (and nodes) listed
    plot: bool = False  # write latency_distribution.png and pareto.png
    interleave: bool = True  # time several models' latency in alternating rounds in one process (fair ratios)
    rounds: int = 10  # interleaved rounds; min_runs and min_seconds are split over them
    # Text models only:
    seq_lengths: list[int] = field(default_factory=lambda: [32, 128, 256])  # batch-1 latency at each sequence length
    headline_seq: int = 128  # the sequence length of the headline p50/p90/p99, MACs and throughput

    def __post_init__(self) -> None:
        if self.headline_seq not in self.seq_lengths or min(self.seq_lengths) < 1:
            raise ValueError(f"benchmark.headline_seq ({self.headline_seq}) must be one of benchmark.seq_lengths "
                             f"({self.seq_lengths}), all >= 1")
        resolve_provider(self.provider)  # unknown or missing providers fail at config time
        parse_key_values(self.provider_options, "benchmark.provider_options item")
        self.dim_values()
        for name, choices in (("optimization", OPTIMIZATION_LEVELS), ("execution_mode", EXECUTION_MODES),
                              ("warmup", WARMUP_MODES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"benchmark.{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        for name in ("min_runs", "throughput_batch", "steady_window", "profile_runs", "profile_top", "int_high", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"benchmark.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("threads", "inter_op_threads", "warmup_runs", "min_seconds", "warmup_max_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"benchmark.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.steady_tolerance < 1:
            raise ValueError(f"benchmark.steady_tolerance must be between 0 and 1, got {self.steady_tolerance}")
        for name, low in (("batch_sizes", 1), ("threads_sweep", 0), ("inter_op_sweep", 0)):
            if any(value < low for value in getattr(self, name)):
                raise ValueError(f"benchmark.{name} values must be >= {low}, got {getattr(self, name)}")
        if self.execution_mode == "sequential" and max([self.inter_op_threads, *self.inter_op_sweep]) > 1:
            raise ValueError("benchmark.inter_op_threads and inter_op_sweep above 1 need "
                             "benchmark.execution_mode='parallel' (sequential mode uses no inter-op threads)")
        if self.inputs is not None and not Path(self.inputs).is_file():
            raise ValueError(f"benchmark.inputs file not found: {self.inputs}")

    @classmethod
    def mlperf_single_stream(cls) -> "BenchmarkConfig":
        """MLPerf inference single-stream minimums: 1,024 queries and 600 seconds per model."""
        return cls(min_runs=1024, min_seconds=600.0)

    def dim_values(self) -> dict[str, int]:
        values = parse_key_values(self.dims, "benchmark.dims item")
        result = {}
        for key, value in values.items():
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"benchmark.dims: {key} must be a positive integer, got {value!r}")
            result[key] = int(value)
        return result

    def provider_option_values(self) -> dict[str, str]:
        return parse_key_values(self.provider_options, "benchmark.provider_options item")


def run(cfg: BenchmarkConfig, inputs: dict[str, Path], data: Dataset | None, out_dir: Path,
        command: str | None = None) -> StageResult:
    """Benchmark every model; writes benchmark.json (schema ``SCHEMA_VERSION``), benchmark.md, the profiler
    traces under profiles/ and, with ``cfg.plot``, the PNGs. Metrics are the results without raw samples."""
    from compress.sysinfo import environment

    if data is not None and text_run.is_text(data):
        return run_text(cfg, inputs, data, out_dir, command)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    phases = _phases(cfg, data)
    results = {}
    # Each model's session is opened and checked once: the interleaved timing needs its feed, and
    # benchmark_model the session itself.
    prepared = {name: _prepared(Path(path), data, cfg) for name, path in inputs.items()}
    interleaved = (interleaved_latency(inputs, {name: p[3] for name, p in prepared.items()}, cfg)
                   if cfg.interleave and len(inputs) > 1 else {})
    with tqdm(total=len(inputs) * len(phases), desc="benchmark", unit="step", disable=None) as bar:
        for name, path in inputs.items():
            def done(phase: str, name: str = name) -> None:
                bar.set_postfix_str(f"{name}: {phase}", refresh=False)
                bar.update(1)

            results[name] = benchmark_model(Path(path), data, cfg, out_dir=out_dir, name=name, progress=done,
                                            latency=interleaved.get(name), prepared=prepared.pop(name))
    outputs = {"benchmark_json": out_dir / "benchmark.json", "benchmark_md": out_dir / "benchmark.md"}
    plots = write_plots(results, out_dir, cfg) if cfg.plot else {}
    outputs.update(plots)
    document = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command, "environment": environment(), "config": asdict(cfg),
        "dataset": None if data is None else {"name": data.name, "split": "test", "samples": len(data.test)},
        "plots": {key: path.name for key, path in plots.items()}, "results": results,
        "latency_ratios": latency_ratios(interleaved),
    }
    write_json(outputs["benchmark_json"], document)
    write_text(outputs["benchmark_md"], benchmark_markdown(document))
    metrics = {name: {k: v for k, v in r.items() if k not in ("latencies_ms", "latencies_stride")}
               for name, r in results.items()}
    if interleaved:
        metrics["latency_ratios"] = document["latency_ratios"]
    return StageResult(outputs, metrics)


def interleaved_latency(model_paths: dict[str, Path], feeds: dict[str, dict], cfg: BenchmarkConfig) -> dict:
    """Batch-1 (latency batch) timings of every model in alternating rounds in one worker process."""
    timed = time_interleaved({name: Path(path) for name, path in model_paths.items()}, feeds, target_of(cfg),
                             TimingRules.of(cfg), rounds=cfg.rounds, round_seconds=cfg.min_seconds / cfg.rounds,
                             round_runs=-(-cfg.min_runs // cfg.rounds))
    return timed


def latency_ratios(interleaved: dict) -> dict:
    """Each later model's p50 over each earlier one's, with its spread over the interleaved rounds."""
    names = list(interleaved)
    return {f"{later}/{earlier}": ratio_over_rounds(interleaved[later], interleaved[earlier])
            for i, earlier in enumerate(names) for later in names[i + 1:]}


def _prepared(path: Path, data: Dataset | None, cfg: BenchmarkConfig):
    """A session on ``path``, its input specs, a feed builder and the latency feed, checked to run."""
    session = _session(path, cfg)
    specs = input_specs(session)
    feed_for = _feed_source(session, specs, data, cfg, cfg.dim_values())
    feed = feed_for(_latency_batch(specs, cfg.dim_values()))
    try:
        session.run(None, feed)
    except Exception as exc:  # onnxruntime raises several exception types; all mean these inputs do not fit
        hint = ("set the dims with --dim, keep integer inputs in range with --set benchmark.int_high=N, or pass "
                "real inputs with --inputs" if data is None and not cfg.inputs else "check the inputs' shapes")
        raise CompressError(f"onnxruntime cannot run {path} on {_input_source(data, cfg)} "
                            f"({str(exc).strip().splitlines()[0][:300]}): {hint}") from exc
    return session, specs, feed_for, feed


def benchmark_model(path: Path, data: Dataset | None, cfg: BenchmarkConfig, out_dir: Path | None = None,
                    name: str | None = None, progress: Callable[[str], None] | None = None,
                    latency: Timing | None = None, prepared: tuple | None = None) -> dict:
    """Every measurement of one model. Timing runs in a fresh worker process (compress/worker.py); this
    process checks the inputs, reads the graph's statistics, profiles and scores accuracy. ``latency``:
    this model's share of an interleaved measurement (see ``interleaved_latency``), used instead of
    timing its latency again. ``prepared``: what ``_prepared`` returned for ``path``, if the caller has it."""
    path, name = Path(path), name or Path(path).stem
    progress = progress or (lambda phase: None)
    provider = resolve_provider(cfg.provider)
    dims = cfg.dim_values()
    model = load_onnx(path)
    session, specs, feed_for, feed = prepared or _prepared(path, data, cfg)
    batch = _latency_batch(specs, dims)
    result = {
        "path": str(path), "provider": provider, "provider_options": cfg.provider_option_values(),
        "threads": cfg.threads, "inter_op_threads": cfg.inter_op_threads, "size_bytes": path.stat().st_size,
        **onnx_stats(model, dims), "input_source": _input_source(data, cfg),
        "inputs": [{"name": s.name, "type": s.type, "declared_shape": s.shape, "shape": list(feed[s.name].shape)}
                   for s in specs],
        "outputs": [{"name": o.name, "type": o.type, "declared_shape": list(o.shape)} for o in session.get_outputs()],
    }
    progress("load")

    feeds, jobs = timing_jobs(specs, feed_for, batch, feed, cfg)
    if latency is not None:
        jobs = [job for job in jobs if job["name"] != "latency"]
        progress("latency")
    timings = time_model(path, cfg, feeds, jobs, progress) if jobs else {}
    if not jobs:
        progress("throughput")
    if latency is None:
        latency = timings["latency"]
    else:
        timings["latency"] = latency
        result["latency_method"] = f"interleaved with the other models in {cfg.rounds} rounds in one process"
    stride = -(-len(latency.samples_ms) // MAX_SAVED_SAMPLES)
    result.update({"latency_batch": batch, **latency_summary(latency.samples_ms), "warmup_runs": latency.warmup_runs,
                   "steady": latency.steady, "latencies_stride": stride,
                   "latencies_ms": [round(float(t), 5) for t in latency.samples_ms[::stride]]})
    result.update(throughput_table(specs, batch, timings, cfg))
    if cfg.threads_sweep or cfg.inter_op_sweep:
        result["threads_sweep"] = [{"intra_op_threads": intra, "inter_op_threads": inter,
                                    "execution_mode": cfg.execution_mode,
                                    **_pick(latency_summary(timings[_sweep_job(intra, inter, cfg)].samples_ms))}
                                   for intra, inter in _sweep(cfg)]
    if provider in DEVICE_OF_PROVIDER:
        device_id = int(cfg.provider_option_values().get("device_id", 0))
        result["transfer"] = measure_transfer(session, feed, DEVICE_OF_PROVIDER[provider], device_id, cfg)
        progress("transfer")
    else:
        result["transfer"] = {"applicable": False, "reason": _no_transfer_reason(provider)}
    if cfg.profile:
        result["profile"] = profile_operators(path, feed, cfg, out_dir, name)
        progress("profile")
    if cfg.cold_start:
        result["cold_start"] = measure_cold_start(path, feed, cfg)
        progress("cold start")
    if data is not None:
        result.update(_accuracy(session, data, path))
        progress("accuracy")
    return result


def _phases(cfg: BenchmarkConfig, data: Dataset | None) -> list[str]:
    """The progress steps of one model, in the order benchmark_model reports them."""
    phases = ["load", "latency", "throughput"]
    phases += ["threads sweep"] if cfg.threads_sweep or cfg.inter_op_sweep else []
    phases += ["transfer"] if resolve_provider(cfg.provider) in DEVICE_OF_PROVIDER else []
    phases += ["profile"] if cfg.profile else []
    phases += ["cold start"] if cfg.cold_start else []
    return phases + (["accuracy"] if data is not None else [])


def _session(path: Path, cfg: BenchmarkConfig, threads: int | None = None, inter_op_threads: int | None = None,
             profile_prefix: str | None = None):
    return make_session(path, cfg.provider, cfg.threads if threads is None else threads,
                        cfg.inter_op_threads if inter_op_threads is None else inter_op_threads, cfg.optimization,
                        profile_prefix, cfg.provider_option_values(), cfg.execution_mode)


def _feed_source(session, specs: list[InputSpec], data: Dataset | None, cfg: BenchmarkConfig,
                 dims: dict[str, int]) -> Callable[[int | None], dict[str, np.ndarray]]:
    """batch size -> inputs: test-split samples of the dataset, the arrays of cfg.inputs, or generated ones."""
    if data is not None:
        input_name = check_input(session, data.input_shape, f"dataset {data.name}")
        # A lazily read test split gives only the rows a feed takes (decoding all of it would not fit in RAM).
        return lambda batch: array_feed(specs, {input_name: data.test.x[:batch or LAZY_FEED_ROWS] if is_lazy(data.test.x)
                                                else data.test.x}, batch, f"dataset {data.name}")
    if cfg.inputs:
        try:
            with np.load(cfg.inputs, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as exc:
            raise CompressError(f"cannot read {cfg.inputs} as an .npz of input arrays ({exc})") from exc
        return lambda batch: array_feed(specs, arrays, batch, cfg.inputs)
    return lambda batch: generated_feed(specs, dims, batch, cfg.seed, cfg.int_high)


def _latency_batch(specs: list[InputSpec], dims: dict[str, int]) -> int | None:
    """The batch of the latency runs: the first free batch axis as set by dims, else 1; None when no
    input has a free first axis (the model's shapes are fixed)."""
    free = [spec for spec in specs if spec.has_free_batch()]
    if not free:
        return None
    spec, dim = free[0], free[0].shape[0]
    return dims.get(f"{spec.name}:0", dims.get(dim, 1) if isinstance(dim, str) else 1)


def _input_source(data: Dataset | None, cfg: BenchmarkConfig) -> str:
    if data is not None:
        return f"dataset {data.name} (test split)"
    if cfg.inputs:
        return f"arrays from {cfg.inputs}"
    return f"generated from the signature (seed {cfg.seed}; floats N(0,1), integers in [0, {cfg.int_high}))"


def _throughput_batches(latency_batch: int | None, cfg: BenchmarkConfig) -> list[int]:
    """Batch sizes of the throughput table besides the latency batch (none when the shapes are fixed)."""
    if latency_batch is None:
        return []
    return [b for b in sorted({*cfg.batch_sizes, cfg.throughput_batch}) if b != latency_batch]


def _sweep(cfg: BenchmarkConfig) -> list[tuple[int, int]]:
    return list(itertools.product(cfg.threads_sweep or [cfg.threads], cfg.inter_op_sweep or [cfg.inter_op_threads]))


def _sweep_job(intra: int, inter: int, cfg: BenchmarkConfig) -> str:
    return "latency" if (intra, inter) == (cfg.threads, cfg.inter_op_threads) else f"threads_{intra}x{inter}"


def timing_jobs(specs: list[InputSpec], feed_for, latency_batch: int | None, feed: dict, cfg: BenchmarkConfig):
    """The feeds and the worker's jobs: latency, then each throughput batch, then each threads setting."""
    feeds = {"latency": feed}
    jobs = [{"name": "latency", "feed": "latency", "intra_op": cfg.threads, "inter_op": cfg.inter_op_threads,
             "min_runs": cfg.min_runs, "phase": "latency"}]
    for batch in _throughput_batches(latency_batch, cfg):
        feeds[f"batch_{batch}"] = feed_for(batch)
        jobs.append({"name": f"batch_{batch}", "feed": f"batch_{batch}", "intra_op": cfg.threads,
                     "inter_op": cfg.inter_op_threads, "min_runs": max(10, cfg.min_runs // 10), "phase": "throughput"})
    if cfg.threads_sweep or cfg.inter_op_sweep:
        for intra, inter in _sweep(cfg):
            if _sweep_job(intra, inter, cfg) != "latency":
                jobs.append({"name": _sweep_job(intra, inter, cfg), "feed": "latency", "intra_op": intra,
                             "inter_op": inter, "min_runs": cfg.min_runs, "phase": "threads sweep"})
    return feeds, jobs


def time_model(path: Path, cfg: BenchmarkConfig, feeds: dict[str, dict], jobs: list[dict],
               progress: Callable[[str], None]) -> dict[str, Timing]:
    """Run the timing jobs in one fresh worker process; report each phase as its last job finishes."""
    last_of_phase = {job["phase"]: job["name"] for job in jobs}
    ends_phase = {name: phase for phase, name in last_of_phase.items()}
    timings = time_jobs(path, target_of(cfg), TimingRules.of(cfg), feeds, jobs,
                        lambda name: progress(ends_phase[name]) if name in ends_phase else None)
    if "throughput" not in last_of_phase:
        progress("throughput")  # measured by the latency job itself
    return timings


def target_of(cfg: BenchmarkConfig) -> Target:
    return Target(cfg.provider, tuple(cfg.provider_option_values().items()), cfg.optimization, cfg.execution_mode,
                  cfg.threads, cfg.inter_op_threads)


def _pick(summary: dict) -> dict:
    return {key: summary[key] for key in ("p50_ms", "p90_ms", "mean_ms", "runs")}


def throughput_table(specs: list[InputSpec], latency_batch: int | None, timings: dict[str, Timing],
                     cfg: BenchmarkConfig) -> dict:
    """Samples per second (batch / mean batch latency) at each batch size. A model with fixed shapes
    is measured only at its own batch."""
    def entry(batch: int, timing: Timing) -> dict:
        mean_s = float(timing.samples_ms.mean()) / 1e3
        return {"batch": batch, "p50_ms": float(np.median(timing.samples_ms)), "mean_ms": mean_s * 1e3,
                "samples_per_s": batch / mean_s, "runs": len(timing.samples_ms)}

    if latency_batch is None:
        fixed = next((spec.shape[0] for spec in specs if spec.shape), 1)
        row = entry(fixed, timings["latency"])
        return {"throughput": [row], "throughput_batch": fixed, "throughput_sps": row["samples_per_s"],
                "throughput_note": f"the model's shapes are fixed: measured at its batch of {fixed} only"}
    table = [entry(latency_batch, timings["latency"])]
    table += [entry(batch, timings[f"batch_{batch}"]) for batch in _throughput_batches(latency_batch, cfg)]
    table.sort(key=lambda row: row["batch"])
    headline = next(row for row in table if row["batch"] == cfg.throughput_batch)
    return {"throughput": table, "throughput_batch": cfg.throughput_batch, "throughput_sps": headline["samples_per_s"]}


def measure_transfer(session, feed: dict, device: str, device_id: int, cfg: BenchmarkConfig) -> dict:
    """Input/output transfer cost with IOBinding, in this process: the same run with host arrays (copies
    included) and with inputs already on the device and outputs left there; plus upload and download alone."""
    import onnxruntime as ort

    host_io = measure(lambda: session.run(None, feed), cfg)

    def upload() -> dict:
        return {name: ort.OrtValue.ortvalue_from_numpy(array, device, device_id) for name, array in feed.items()}

    device_inputs = upload()  # kept referenced: the binding does not own them
    binding = session.io_binding()
    for input_name, value in device_inputs.items():
        binding.bind_ortvalue_input(input_name, value)
    for output in session.get_outputs():
        binding.bind_output(output.name, device, device_id)
    resident = measure(lambda: session.run_with_iobinding(binding), cfg)
    uploads = measure(upload, cfg)
    downloads = measure(binding.copy_outputs_to_cpu, cfg)
    host_p50, resident_p50 = float(np.median(host_io.samples_ms)), float(np.median(resident.samples_ms))
    return {"applicable": True, "device": f"{device}:{device_id}", "host_io_p50_ms": host_p50,
            "device_io_p50_ms": resident_p50, "transfer_p50_ms": host_p50 - resident_p50,
            "upload_p50_ms": float(np.median(uploads.samples_ms)),
            "download_p50_ms": float(np.median(downloads.samples_ms)),
            "method": "p50 of session.run with host arrays minus p50 of run_with_iobinding with inputs and outputs "
                      "on the device; upload (OrtValue.ortvalue_from_numpy) and download (copy_outputs_to_cpu) "
                      "timed on their own"}


def _no_transfer_reason(provider: str) -> str:
    if provider in ("CPUExecutionProvider", "XnnpackExecutionProvider", "DnnlExecutionProvider"):
        return f"not applicable: {provider} computes in host memory, so inputs are not transferred"
    return f"not measured: compress has no IOBinding device name for {provider} (latency includes any transfer)"


def profile_operators(path: Path, feed: dict, cfg: BenchmarkConfig, out_dir: Path | None, name: str) -> dict:
    """onnxruntime's profiler over ``cfg.profile_runs`` runs in a separate session (profiling slows runs,
    so it never touches the timed session): kernel time per operator type and per node."""
    with private_tempdir("benchmark") as tmp:
        session = _session(path, cfg, profile_prefix=str(Path(tmp) / "profile"))
        for _ in range(PROFILE_WARMUP_RUNS + cfg.profile_runs):
            session.run(None, feed)
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
        summary = summarize_profile(events, PROFILE_WARMUP_RUNS, cfg.profile_top)
        if out_dir is not None:
            kept = Path(out_dir) / "profiles" / f"{_safe_name(name)}.json"
            with atomic_path(kept) as tmp_trace:
                shutil.copyfile(trace, tmp_trace)
            summary["trace"] = str(kept.relative_to(out_dir))
    return summary


def summarize_profile(events: list[dict], skip_runs: int, top: int) -> dict:
    """Kernel time per operator type and per node from an onnxruntime profiler trace (Chrome trace
    events), leaving out the first ``skip_runs`` runs."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    skip = skip_runs if len(runs) > skip_runs else 0
    start = runs[skip]["ts"] if runs else 0
    counted = max(len(runs) - skip, 1)
    by_op, by_node = defaultdict(lambda: [0.0, 0, set()]), defaultdict(lambda: [0.0, ""])
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] < start:
            continue
        op = event.get("args", {}).get("op_name", "?")
        by_op[op][0] += event["dur"]
        by_op[op][1] += 1
        by_op[op][2].add(event.get("args", {}).get("provider", "?"))
        node = event["name"][: -len("_kernel_time")]
        by_node[node][0] += event["dur"]
        by_node[node][1] = op
    total_us = sum(v[0] for v in by_op.values()) or 1.0
    ops = sorted(by_op.items(), key=lambda item: -item[1][0])
    nodes = sorted(by_node.items(), key=lambda item: -item[1][0])
    return {
        "runs": len(runs) - skip, "kernel_ms_per_run": total_us / 1e3 / counted,
        "run_ms_p50": float(np.median([e["dur"] for e in runs[skip:]]) / 1e3) if runs[skip:] else None,
        "top_ops": [{"op": op, "calls_per_run": calls / counted, "ms_per_run": us / 1e3 / counted, "share": us / total_us,
                     "providers": sorted(providers)} for op, (us, calls, providers) in ops[:top]],
        "top_nodes": [{"node": node, "op": op, "ms_per_run": us / 1e3 / counted, "share": us / total_us}
                      for node, (us, op) in nodes[:top]],
    }


def measure_cold_start(path: Path, feed: dict, cfg: BenchmarkConfig) -> dict:
    """Session creation + first run and peak resident memory, in a fresh worker process per model."""
    result = cold_start(path, feed, target_of(cfg), COLD_START_RUNS)
    result["method"] = (f"fresh Python process importing only numpy and onnxruntime: session creation, first run, then "
                        f"{COLD_START_RUNS} more runs; memory is the process's peak resident set (VmHWM on Linux, else "
                        "ru_maxrss), model_rss_mb its growth after the imports (host memory only, the OS file cache is warm)")
    return result


def _accuracy(session, data: Dataset, path: Path) -> dict:
    logits = predict(session, data.test.x)
    if logits.ndim != 2 or logits.shape[1] != data.num_classes:
        raise CompressError(f"{path} outputs shape {list(logits.shape)}, not [N, {data.num_classes}] class scores for "
                            f"dataset {data.name}: it is not a classifier of it; drop --data to time it alone")
    return {**classification_metrics(logits, data.test.y), "accuracy_samples": len(data.test)}


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ---- reporting ------------------------------------------------------------------------------------

HEADLINE = ["model", "accuracy", "F1 macro", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "mean±std ms", "throughput/s",
            "size KB", "params", "MMACs"]


def _headline_row(name: str, r: dict) -> list[str]:
    return [name, _pct(r.get("accuracy")), _pct(r.get("f1_macro")), f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
            f"{r.get('p95_ms', float('nan')):.3f}", f"{r['p99_ms']:.3f}",
            f"{r['mean_ms']:.3f}±{r.get('std_ms', float('nan')):.3f}", f"{r['throughput_sps']:.0f}",
            f"{r['size_bytes'] / 1024:.1f}", f"{r['params']:,}", f"{r['macs'] / 1e6:.2f}"]


def results_markdown(results: dict[str, dict]) -> str:
    """The side-by-side headline table (latency at the latency batch; p90 is the single-stream figure)."""
    return markdown_table(HEADLINE, [_headline_row(name, r) for name, r in results.items()])


def terminal_table(results: dict[str, dict]) -> str:
    """The headline table with aligned columns, for the terminal."""
    rows = [HEADLINE] + [_headline_row(name, r) for name, r in results.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADLINE))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def benchmark_markdown(document: dict) -> str:
    """benchmark.md: the settings and results table, then one section per measurement that was made."""
    results = document["results"]
    parts = [_settings_markdown(document), _ratios_markdown(document), _throughput_markdown(results),
             _sweep_markdown(results), _cold_start_markdown(results), _transfer_markdown(results),
             _profile_markdown(results), _environment_markdown(document)]
    return "\n\n".join(part.strip("\n") for part in parts if part) + "\n"


def _settings_markdown(document: dict) -> str:
    cfg, results = document["config"], document["results"]
    warmup = (f"warm-up until steady (2 windows of {cfg['steady_window']} runs within {100 * cfg['steady_tolerance']:g}%, "
              f"after at least {cfg['warmup_runs']} runs)" if cfg["warmup"] == "steady" else f"{cfg['warmup_runs']} warm-up runs")
    first = next(iter(results.values()))
    parts = [
        "# Benchmark\n",
        f"{first['provider']}, {cfg['threads']} intra-op / {cfg['inter_op_threads']} inter-op thread(s), "
        f"{cfg['execution_mode']} execution, graph optimization `{cfg['optimization']}`; {warmup}; then at least "
        f"{cfg['min_runs']} runs and {cfg['min_seconds']:g} s per model. Inputs: {first['input_source']}. "
        "p90 is the single-stream figure (MLPerf); latency is at each model's latency batch (1 unless set).\n",
        results_markdown(results),
    ]
    if any(r.get("steady") is False for r in results.values()):
        parts.append("\nNot steady after warm-up (latency still drifting): "
                     + ", ".join(n for n, r in results.items() if r.get("steady") is False) + ".\n")
    return "\n".join(parts)


def _ratios_markdown(document: dict) -> str:
    ratios, cfg = document.get("latency_ratios") or {}, document["config"]
    if not ratios:
        return ""
    return "\n".join([
        f"\n## Latency ratios (interleaved: {cfg['rounds']} rounds in one process)\n",
        "Each ratio is the median over rounds of one model's round p50 over the other's, both timed in the "
        "same round; the spread is (max - min) / median of the per-round ratios.\n", markdown_table(
            ["ratio", "median", "min", "max", "spread"],
            [[pair, f"{r['ratio']:.3f}", f"{r['min']:.3f}", f"{r['max']:.3f}", f"{100 * r['spread']:.1f}%"]
             for pair, r in ratios.items()])])


def _throughput_markdown(results: dict) -> str:
    batches = sorted({row["batch"] for r in results.values() for row in r["throughput"]})
    return "\n".join(["\n## Throughput (samples/s) by batch size\n", markdown_table(
        ["model", *[f"batch {b}" for b in batches]],
        [[name, *[next((f"{row['samples_per_s']:.0f}" for row in r["throughput"] if row["batch"] == b), "-")
                  for b in batches]] for name, r in results.items()])])


def _sweep_markdown(results: dict) -> str:
    if not any("threads_sweep" in r for r in results.values()):
        return ""
    return "\n".join(["\n## Threads sweep (p50 / p90 ms)\n", markdown_table(
        ["model", "intra-op", "inter-op", "p50 ms", "p90 ms"],
        [[name, row["intra_op_threads"], row["inter_op_threads"], f"{row['p50_ms']:.3f}", f"{row['p90_ms']:.3f}"]
         for name, r in results.items() for row in r.get("threads_sweep", [])])])


def _cold_start_markdown(results: dict) -> str:
    if not any("cold_start" in r for r in results.values()):
        return ""
    return "\n".join(["\n## Cold start and memory (fresh process per model)\n", markdown_table(
        ["model", "session create ms", "first run ms", "cold start ms", "peak RSS MB", "model RSS MB"],
        [[name, f"{c['session_create_ms']:.1f}", f"{c['first_run_ms']:.2f}", f"{c['cold_start_ms']:.1f}",
          _num(c["peak_rss_mb"], ".1f"), _num(c["model_rss_mb"], ".1f")]
         for name, r in results.items() if (c := r.get("cold_start"))])])


def _transfer_markdown(results: dict) -> str:
    transfers = {name: r["transfer"] for name, r in results.items()}
    if not any(t["applicable"] for t in transfers.values()):
        return f"\nInput transfer: {next(iter(transfers.values()))['reason']}.\n"
    return "\n".join(["\n## Input transfer (IOBinding)\n", markdown_table(
        ["model", "device", "host I/O p50 ms", "device I/O p50 ms", "transfer ms", "upload ms", "download ms"],
        [[name, t["device"], f"{t['host_io_p50_ms']:.3f}", f"{t['device_io_p50_ms']:.3f}",
          f"{t['transfer_p50_ms']:.3f}", f"{t['upload_p50_ms']:.3f}", f"{t['download_p50_ms']:.3f}"]
         for name, t in transfers.items() if t["applicable"]])])


def _profile_markdown(results: dict) -> str:
    if not any("profile" in r for r in results.values()):
        return ""
    parts = ["Operator times come from a separate, profiled session: the profiler adds a microsecond or two "
             "per node, so read the shares rather than comparing absolute times with the latency table."]
    for name, r in results.items():
        if "profile" in r:
            p = r["profile"]
            parts += [f"\n## Top operators: {name} ({p['runs']} profiled runs, {p['kernel_ms_per_run']:.3f} ms of "
                      "kernels per run)\n", markdown_table(
                          ["operator", "calls/run", "ms/run", "share", "provider"],
                          [[o["op"], f"{o['calls_per_run']:g}", f"{o['ms_per_run']:.4f}", f"{100 * o['share']:.1f}%",
                            ", ".join(o["providers"])] for o in p["top_ops"]])]
    return "\n".join(parts)


def _environment_markdown(document: dict) -> str:
    env = document["environment"]
    cpu = env["cpu"]
    parts = ["## Environment",
              f"- CPU: {cpu['model']} ({cpu['architecture']}), {cpu['logical_cores']} logical / "
              f"{cpu['physical_cores'] or '?'} physical cores, {cpu['usable_cores']} usable; key flags: "
              f"{', '.join(cpu['key_flags']) or '-'}\n"
              f"- Memory: {_num(env['memory_total_mb'], '.0f')} MB; OS: {env['os']}; Python {env['python']}\n"
              f"- onnxruntime {env['onnxruntime']['version']}; providers: "
              + "; ".join(f"{p} ({v})" for p, v in env["onnxruntime"]["provider_versions"].items())]
    if document.get("command"):
        parts.append(f"\nMade by `{document['command']}`.\n")
    return "\n\n".join(part.strip("\n") for part in parts)


def write_plots(results: dict[str, dict], out_dir: Path, cfg: BenchmarkConfig) -> dict[str, Path]:
    """latency_distribution.png for every run; pareto.png (accuracy vs p90) when every model has accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 1.8), dpi=120)
    samples = [np.asarray(results[n]["latencies_ms"]) for n in names]
    # matplotlib 3.10 replaced vert=False by orientation="horizontal" (and deprecated vert in 3.11)
    horizontal = ({"orientation": "horizontal"} if tuple(int(v) for v in matplotlib.__version__.split(".")[:2]) >= (3, 10)
                  else {"vert": False})
    ax.violinplot(samples, showextrema=False, **horizontal)
    ax.boxplot(samples, whis=(1, 99), showfliers=False, widths=0.15, **horizontal)
    for i, n in enumerate(names, start=1):
        ax.plot(results[n]["p90_ms"], i, marker="|", markersize=14, color="crimson")
    ax.set_yticks(range(1, len(names) + 1), names)
    _log_axis(ax.xaxis)
    ax.set_xlabel("latency per run (ms, log scale); box: quartiles, whiskers p1-p99, red: p90")
    ax.set_title(f"latency distribution ({results[names[0]]['provider']}, {cfg.threads} thread(s))", fontsize=10)
    ax.grid(True, which="both", axis="x", alpha=0.3)
    fig.tight_layout()
    plots["latency_plot"] = _save(fig, Path(out_dir) / "latency_distribution.png")
    plt.close(fig)
    if all(r.get("accuracy") is not None for r in results.values()):
        front = pareto_front({n: (r["p90_ms"], r["accuracy"]) for n, r in results.items()})
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for i, (n, r) in enumerate(results.items()):
            ax.scatter(r["p90_ms"], 100 * r["accuracy"], color="tab:blue" if n in front else "tab:gray", zorder=3,
                       label="on the front" if n == front[0] else None)
            ax.annotate(n, (r["p90_ms"], 100 * r["accuracy"]), textcoords="offset points",
                        xytext=(6, 6 if i % 2 == 0 else -12), fontsize=8)
        ax.step([results[n]["p90_ms"] for n in front], [100 * results[n]["accuracy"] for n in front], where="post",
                color="tab:blue", alpha=0.6, label="Pareto front")
        _log_axis(ax.xaxis)
        ax.set_xlabel("p90 latency (ms, log scale)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("accuracy vs latency", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        plots["pareto_plot"] = _save(fig, Path(out_dir) / "pareto.png")
        plt.close(fig)
    return plots


def _log_axis(axis) -> None:
    """Log scale with plain numbers (0.2, 1, 5) instead of powers of ten, which collide on short ranges."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.axes.set_xscale("log")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the (latency, accuracy) points no other point beats on both, fastest first."""
    front, best = [], -np.inf
    for name, (_, accuracy) in sorted(points.items(), key=lambda item: (item[1][0], -item[1][1])):
        if accuracy > best:
            front.append(name)
            best = accuracy
    return front


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# ---- text models ---------------------------------------------------------------------------------------

def run_text(cfg: BenchmarkConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path,
             command: str | None = None) -> StageResult:
    """The text table: every model at batch 1 over ``cfg.seq_lengths``, plus the TF-IDF + LR baseline."""
    from compress.sysinfo import environment
    from compress.text_data import tfidf_baseline
    from compress.text_onnx import benchmark_text_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if inputs:
        data = text_run.with_tokenizer_of(data, next(iter(inputs.values())))
    target, rules = target_of(cfg), TimingRules.of(cfg)
    results = {}
    for name, path in tqdm(inputs.items(), desc="benchmark", unit="model", disable=None):
        names = [i.name for i in make_session(Path(path)).get_inputs()]
        results[name] = {**benchmark_text_model(Path(path), text_run.samples(data.test, names), data.test.sample_y,
                                                tuple(cfg.seq_lengths), cfg.headline_seq, target, rules,
                                                groups=data.test.groups),
                         "path": str(path), "provider": target.provider, "threads": cfg.threads}
    baseline = tfidf_baseline(data)
    baseline_model_input = tfidf_baseline(data, model_input=True)
    outputs = {"benchmark_json": out_dir / "benchmark.json", "benchmark_md": out_dir / "benchmark.md"}
    document = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command, "environment": environment(), "config": asdict(cfg),
        "dataset": {"name": data.name, "split": "test", "samples": data.test.num_samples, "kind": "text",
                    "windows": len(data.test), "max_length": int(data.test.x.shape[-1]),
                    "max_windows": data.config.max_windows if data.config else 0},
        "results": results, "tfidf_baseline": baseline, "tfidf_baseline_model_input": baseline_model_input,
    }
    write_json(outputs["benchmark_json"], document)
    write_text(outputs["benchmark_md"], text_benchmark_markdown(document))
    return StageResult(outputs, {**results, "tfidf_baseline": baseline,
                                 "tfidf_baseline_model_input": baseline_model_input})


def text_benchmark_markdown(document: dict) -> str:
    results, cfg = document["results"], document["config"]
    lengths = cfg["seq_lengths"]
    rows = [[name, _pct(r["accuracy"]), _pct(r["f1_macro"]),
             *(f"{r['latency_by_seq'][str(n)]['p50_ms']:.3f}" for n in lengths), f"{r['throughput_sps']:.0f}",
             f"{r['size_bytes'] / 1024:.1f}", f"{r['params']:,}", f"{r['macs'] / 1e6:.2f}"]
            for name, r in results.items()]
    dataset = document["dataset"]
    max_windows, length = dataset.get("max_windows", 1), dataset.get("max_length")
    seen = "every window" if max_windows == 0 else f"first {max_windows * (length - 2)} word pieces"
    for label, key in (("TF-IDF + LR (whole texts)", "tfidf_baseline"),
                       (f"TF-IDF + LR (the models' input: {seen})", "tfidf_baseline_model_input")):
        if key in document:
            rows.append([label, _pct(document[key]["accuracy"]), _pct(document[key]["f1_macro"]),
                         *("-" for _ in lengths), "-", "-", "-", "-"])
    headers = ["model", "accuracy", "F1 macro", *(f"p50 ms @{n}" for n in lengths), "throughput/s", "size KB",
               "params", f"MMACs @{cfg['headline_seq']}"]
    return "\n".join([f"# Text benchmark ({document['dataset']['name']}, {document['dataset']['samples']} test samples)", "",
                      f"Accuracy per text: the mean softmax of its windows of {length} tokens "
                      f"({dataset.get('windows', dataset['samples'])} windows). Latency of one window at batch 1, "
                      f"{cfg['provider']}, {cfg['threads']} intra-op thread(s); throughput (windows/s) at batch 8 x "
                      f"{cfg['headline_seq']} tokens.", "", markdown_table(headers, rows)])
