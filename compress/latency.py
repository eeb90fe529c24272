"""The one timing harness: every latency compress reports or decides on is measured here, in a fresh
worker process that imports only numpy and onnxruntime (compress/worker.py).

Two ways to time: ``time_jobs`` runs one model's jobs (batch sizes, thread settings) one after
another; ``time_interleaved`` times several models in alternating rounds in one process, so a ratio
between two of them (int8 against fp32, say) is measured under the same machine state, and its
spread over the rounds says how far to trust it."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from compress.errors import CompressError
from compress.fsutil import private_tempdir
from compress.onnxutil import EXECUTION_MODES, OPTIMIZATION_LEVELS, provider_chain
from compress.worker import Timing

WORKER_SCRIPT = Path(__file__).resolve().parent / "worker.py"


@dataclass(frozen=True)
class TimingRules:
    """How a timing loop warms up and how long it runs (the same fields as BenchmarkConfig's)."""

    warmup: str = "steady"  # steady: warm up until latency settles; fixed: exactly warmup_runs untimed runs
    warmup_runs: int = 30  # untimed runs first: the fixed count, or the minimum before steadiness is checked
    steady_window: int = 20  # runs per window when checking steadiness
    steady_tolerance: float = 0.05  # steady once two consecutive window medians differ by at most this fraction
    warmup_max_seconds: float = 10.0  # stop waiting for steady latency after this long
    min_runs: int = 300  # timed runs at least ...
    min_seconds: float = 1.0  # ... and for at least this long

    @classmethod
    def of(cls, config) -> "TimingRules":
        """The rules held by any config with these fields (BenchmarkConfig)."""
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Target:
    """Where models run: the execution provider and session options."""

    provider: str = "cpu"  # execution provider short or full name
    provider_options: tuple[tuple[str, str], ...] = ()  # provider options as (key, value) pairs
    optimization: str = "all"  # graph optimization level (compress.onnxutil.OPTIMIZATION_LEVELS)
    execution_mode: str = "sequential"  # sequential or parallel
    intra_op: int = 1  # intra-op threads
    inter_op: int = 1  # inter-op threads

    def worker_settings(self) -> dict:
        return {"providers": provider_chain(self.provider, dict(self.provider_options)),
                "optimization": OPTIMIZATION_LEVELS[self.optimization],
                "execution_mode": EXECUTION_MODES[self.execution_mode]}


@dataclass
class InterleavedTiming:
    """One model's samples from an interleaved measurement."""

    samples_ms: np.ndarray  # every timed run, round after round
    round_medians_ms: list[float]  # the median of each round
    warmup_runs: int
    steady: bool | None


def latency_summary(latencies_ms: np.ndarray) -> dict:
    p50, p90, p95, p99 = np.percentile(latencies_ms, [50, 90, 95, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p95_ms": float(p95), "p99_ms": float(p99),
            "mean_ms": float(latencies_ms.mean()), "std_ms": float(latencies_ms.std()),
            "min_ms": float(latencies_ms.min()), "max_ms": float(latencies_ms.max()),
            "runs": int(len(latencies_ms)), "duration_s": float(latencies_ms.sum() / 1e3)}


def ratio_over_rounds(numerator: InterleavedTiming, denominator: InterleavedTiming) -> dict:
    """numerator / denominator p50, per round (both measured in the same round) and over all rounds:
    the median of the per-round ratios and their spread (max - min) relative to it."""
    ratios = np.array(numerator.round_medians_ms) / np.array(denominator.round_medians_ms)
    median = float(np.median(ratios))
    return {"ratio": median, "min": float(ratios.min()), "max": float(ratios.max()),
            "spread": float((ratios.max() - ratios.min()) / median), "rounds": len(ratios),
            "per_round": [round(float(r), 4) for r in ratios]}


def time_jobs(path: Path, target: Target, rules: TimingRules, feeds: dict[str, dict[str, np.ndarray]],
              jobs: list[dict], on_job: Callable[[str], None] = lambda name: None) -> dict[str, Timing]:
    """Run ``jobs`` (name, feed, intra_op, inter_op, min_runs) on one model in one fresh worker, one after
    another; ``on_job`` hears each job's name as it finishes."""
    with private_tempdir("timing") as tmp:
        for label, feed in feeds.items():
            np.savez(Path(tmp) / f"feed_{label}.npz", *feed.values())
        settings = {**target.worker_settings(), "model": str(Path(path).resolve()), "dir": tmp,
                    "input_names": list(next(iter(feeds.values()))), "rules": asdict(rules), "jobs": jobs}
        timings = {}
        for report in _worker_reports("time", settings, path):
            samples = np.load(Path(tmp) / f"samples_{report['name']}.npy")
            timings[report["name"]] = Timing(samples, report["warmup_runs"], report["steady"])
            on_job(report["name"])
    if len(timings) != len(jobs):
        raise CompressError(f"the timing worker stopped early on {path}: {len(timings)} of {len(jobs)} jobs done")
    return timings


def time_interleaved(paths: dict[str, Path], feeds: dict[str, dict[str, np.ndarray]], target: Target,
                     rules: TimingRules, rounds: int = 10, round_seconds: float = 0.1,
                     round_runs: int = 10) -> dict[str, InterleavedTiming]:
    """Time every model of ``paths`` on its feed (``feeds[name]``) in ``rounds`` alternating rounds in one
    fresh worker process."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    with private_tempdir("timing") as tmp:
        for name, feed in feeds.items():
            np.savez(Path(tmp) / f"feed_{name}.npz", *feed.values())
        models = [{"name": name, "model": str(Path(path).resolve()), "feed": name, "input_names": list(feeds[name])}
                  for name, path in paths.items()]
        settings = {**target.worker_settings(), "models": models, "dir": tmp, "rules": asdict(rules),
                    "intra_op": target.intra_op, "inter_op": target.inter_op, "rounds": rounds,
                    "round_seconds": round_seconds, "round_runs": round_runs}
        results = {}
        for report in _worker_reports("interleave", settings, ", ".join(map(str, paths.values()))):
            samples = np.load(Path(tmp) / f"samples_{report['name']}.npy")
            bounds = np.cumsum([0, *report["round_runs"]])
            medians = [float(np.median(samples[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
            results[report["name"]] = InterleavedTiming(samples, medians, report["warmup_runs"], report["steady"])
    if len(results) != len(paths):
        raise CompressError(f"the timing worker stopped early: {len(results)} of {len(paths)} models timed")
    return results


def cold_start(path: Path, feed: dict[str, np.ndarray], target: Target, runs: int) -> dict:
    """Session creation, first run and peak resident memory of one model in a fresh worker process."""
    with private_tempdir("timing") as tmp:
        feed_path = Path(tmp) / "feed.npz"
        np.savez(feed_path, *feed.values())
        settings = {**target.worker_settings(), "model": str(Path(path).resolve()), "feed": str(feed_path),
                    "input_names": list(feed), "intra_op": target.intra_op, "inter_op": target.inter_op, "runs": runs}
        reports = list(_worker_reports("cold_start", settings, path))
    return reports[-1]


def _worker_reports(command: str, settings: dict, what):
    """Start the worker and yield each JSON line it prints; a failed worker raises one CompressError."""
    with subprocess.Popen([sys.executable, str(WORKER_SCRIPT), command, json.dumps(settings)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as worker:
        for line in worker.stdout:
            yield json.loads(line)
        errors = worker.stderr.read()
    if worker.returncode != 0:
        reason = (errors.strip().splitlines() or ["no output"])[-1]
        raise CompressError(f"the timing worker failed on {what}: {reason}")
