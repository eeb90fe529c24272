"""Benchmark ONNX models on an onnxruntime execution provider: batch-1 latency percentiles after
warm-up, throughput at a larger batch, size, params, MACs, and accuracy on the test split."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from compress.data import Dataset
from compress.fsutil import write_json, write_text
from compress.manifest import StageResult
from compress.metrics import classification_metrics, onnx_stats
from compress.onnxutil import check_input, load_onnx, make_session, predict, resolve_provider
from compress.report import markdown_table


@dataclass
class BenchmarkConfig:
    """How to measure."""

    provider: str = "cpu"  # execution provider: cpu, cuda, tensorrt, openvino, ... or a full provider name
    threads: int = 1  # intra-op threads (1 = one core, the edge-like setting)
    warmup_runs: int = 30  # untimed runs first (allocations, caches, lazy kernel choice)
    min_runs: int = 300  # timed batch-1 runs at least ...
    min_seconds: float = 1.0  # ... and for at least this long
    throughput_batch: int = 32  # batch size of the throughput measurement

    def __post_init__(self) -> None:
        resolve_provider(self.provider)  # unknown or missing providers fail at config time
        for name in ("threads", "min_runs", "throughput_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"benchmark.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_runs < 0 or self.min_seconds < 0:
            raise ValueError("benchmark.warmup_runs and benchmark.min_seconds must be >= 0")


def run(cfg: BenchmarkConfig, model_paths: dict[str, Path], data: Dataset | None, out_dir: Path) -> StageResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, path in tqdm(model_paths.items(), desc="benchmark", disable=None):
        results[name] = benchmark_model(Path(path), data, cfg)
    write_json(out_dir / "benchmark.json", {"config": vars(cfg), "results": results})
    write_text(out_dir / "benchmark.md", results_markdown(results))
    return StageResult({"benchmark_json": out_dir / "benchmark.json", "benchmark_md": out_dir / "benchmark.md"}, results)


def benchmark_model(path: Path, data: Dataset | None, cfg: BenchmarkConfig) -> dict:
    model = load_onnx(path)
    session = make_session(path, cfg.provider, cfg.threads)
    if data is not None:
        input_name = check_input(session, data.input_shape, f"dataset {data.name}")
        sample = data.test.x[:1]
        batch = np.resize(data.test.x, (cfg.throughput_batch, *data.input_shape)).astype(np.float32)
    else:
        input_name, sample, batch = _random_input(session, cfg.throughput_batch)
    latencies = time_runs(session, {input_name: sample}, cfg)
    batch_latencies = time_runs(session, {input_name: batch}, cfg, min_runs=max(10, cfg.min_runs // 10))
    result = {
        "path": str(path), "provider": resolve_provider(cfg.provider), "threads": cfg.threads,
        "size_bytes": path.stat().st_size, **onnx_stats(model), **latency_summary(latencies),
        "throughput_batch": cfg.throughput_batch,
        "throughput_sps": cfg.throughput_batch / (float(np.median(batch_latencies)) / 1e3),
    }
    if data is not None:
        result.update(classification_metrics(predict(session, data.test.x), data.test.y))
    return result


def time_runs(session, feed: dict, cfg: BenchmarkConfig, min_runs: int | None = None) -> np.ndarray:
    """Wall time of each run in ms, after warm-up; at least ``min_runs`` runs and ``min_seconds``."""
    min_runs = cfg.min_runs if min_runs is None else min_runs
    for _ in range(cfg.warmup_runs):
        session.run(None, feed)
    times = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < cfg.min_seconds:
        begin = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - begin)
    return np.array(times) * 1e3


def latency_summary(latencies_ms: np.ndarray) -> dict:
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(latencies_ms.mean()),
            "std_ms": float(latencies_ms.std()), "runs": int(len(latencies_ms))}


def results_markdown(results: dict[str, dict]) -> str:
    headers = ["model", "accuracy", "F1 (macro)", "p50 ms", "p90 ms", "p99 ms", "throughput/s", "size KB", "params", "MMACs"]
    rows = []
    for name, r in results.items():
        rows.append([name, _pct(r.get("accuracy")), _pct(r.get("f1_macro")), f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
                     f"{r['p99_ms']:.3f}", f"{r['throughput_sps']:.0f}", f"{r['size_bytes'] / 1024:.1f}",
                     f"{r['params']:,}", f"{r['macs'] / 1e6:.2f}"])
    return markdown_table(headers, rows)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _random_input(session, batch: int):
    """No dataset: a random float input from the model's own signature (symbolic dims -> 1)."""
    graph_input = session.get_inputs()[0]
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in graph_input.shape]
    rng = np.random.default_rng(0)
    sample = rng.standard_normal(dims).astype(np.float32)
    batch_dims = [batch, *dims[1:]]
    return graph_input.name, sample, rng.standard_normal(batch_dims).astype(np.float32)
