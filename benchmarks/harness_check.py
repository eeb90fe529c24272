"""Benchmark of the benchmark: does `compress benchmark` time a model the way a bare onnxruntime loop
does, and how far does its p50 move from one run to the next?

    flock /tmp/compress-heavy.lock python benchmarks/harness_check.py --repeats 5

onnxruntime_perf_test (onnxruntime's C++ timing tool) is not shipped in the onnxruntime pip wheel, so
the reference is a minimal raw loop written here (InferenceSession, warm-up, then session.run timed
with perf_counter). The zoo models (ResNet-14, MobileNet, MLP, random weights: timing does not depend
on them) are exported to ONNX at the mnist input shape. Each repeat runs, each in a fresh process and
in alternating order so slow drifts hit both alike:
  - ours: `compress benchmark MODEL --json ...` (the command users run; profile and cold start off),
  - raw: the raw loop at the same settings (1 intra-op thread, sequential, all graph optimizations,
    the same N(0,1) inputs, at least as many runs and seconds),
  - tool: onnxruntime's own Python test tool (onnxruntime/tools/onnxruntime_test.py, which is in the
    wheel): its timing loop (mean of >= 1,000 runs and ~1 s, no warm-up) on a session given the same 1-thread
    options (its own session uses every core, which on a shared machine measures the neighbours),
    compared with our mean.
Pass: the median over repeats of our p50 / raw p50 is within 5% of 1. Spread: max/min of the
repeats' p50s (goal: within 10%). Writes benchmarks/results/harness_check.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {"resnet": ("resnet", 1.0, 14), "mobilenet": ("mobilenet", 1.0, 8), "mlp": ("mlp", 1.0, None)}
TOLERANCE = 0.05  # our p50 within 5% of the raw loop's
SPREAD_GOAL = 1.10  # repeated runs' p50 within 10% of each other


def raw_loop(model: str, warmup: int, min_runs: int, min_seconds: float, seed: int) -> dict:
    """The reference: nothing but onnxruntime, numpy and a perf_counter loop."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    feed = {spec.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - begin)
    times_ms = np.array(times) * 1e3
    return {"p50_ms": float(np.median(times_ms)), "p90_ms": float(np.percentile(times_ms, 90)),
            "mean_ms": float(times_ms.mean()), "runs": len(times)}


def export_zoo(work: Path) -> dict[str, Path]:
    import torch

    from compress.data import DataConfig, load_dataset
    from compress.onnx_export import ExportConfig, export_model
    from compress.zoo import ModelSpec, build_model

    data = load_dataset(DataConfig(source="mnist"))
    paths = {}
    for name, (arch, width, depth) in MODELS.items():
        path = work / f"{name}.onnx"
        if not path.is_file():
            torch.manual_seed(0)
            model = build_model(ModelSpec(arch, width, depth), data.input_shape, data.num_classes)
            export_model(model, path, data, ExportConfig(), {"source": "benchmarks/harness_check.py (random weights)"})
        paths[name] = path
    return paths


def ours(model: Path, work: Path, threads: int) -> dict:
    out = work / f"ours_{model.stem}_t{threads}.json"
    command = [sys.executable, "-m", "compress", "benchmark", str(model), "--threads", str(threads), "--no-profile",
               "--no-cold-start", "--json", str(out), "--force"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())["results"][model.stem]
    return {key: result[key] for key in ("p50_ms", "p90_ms", "mean_ms", "runs", "warmup_runs", "steady")}


def raw(model: Path, args) -> dict:
    command = [sys.executable, __file__, "--raw", str(model), "--raw-warmup", str(args.raw_warmup),
               "--min-runs", str(args.min_runs), "--min-seconds", str(args.min_seconds)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def ort_tool(model: Path, iterations: int) -> float:
    command = [sys.executable, __file__, "--tool", str(model), "--tool-iterations", str(iterations)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(re.search(r"avg latency: ([0-9.eE+-]+) ms", done.stdout).group(1))


def run_tool(model: str, iterations: int) -> None:
    """onnxruntime's onnxruntime_test.run_model, unchanged, with its sessions made with 1-thread options."""
    import onnxruntime as ort
    from onnxruntime.tools import onnxruntime_test

    session_class = ort.InferenceSession  # the tool's `onnxrt` is this same module

    def one_thread_session(path, sess_options=None, providers=None):
        options = sess_options or ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        return session_class(path, options, providers=["CPUExecutionProvider"])

    onnxruntime_test.onnxrt.InferenceSession = one_thread_session
    onnxruntime_test.run_model(model, iterations)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--min-runs", type=int, default=300, help="the raw loop's minimum (ours uses its default, 300)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="the raw loop's minimum (ours: 1.0)")
    parser.add_argument("--raw-warmup", type=int, default=100)
    parser.add_argument("--tool-iterations", type=int, default=1000, help="at least; more for fast models (1 s)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "harness_check")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "harness_check")
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)  # internal: run the raw loop and print JSON
    parser.add_argument("--tool", type=Path, help=argparse.SUPPRESS)  # internal: run onnxruntime's tool
    return parser.parse_args()


def measure_repeat(path: Path, repeat: int, args: argparse.Namespace) -> dict:
    """One repeat: ours and the raw loop (alternating which goes first), then onnxruntime's tool."""
    order = ("ours", "raw") if repeat % 2 == 0 else ("raw", "ours")
    entry = {}
    for who in order:
        entry[who] = ours(path, args.work, threads=1) if who == "ours" else raw(path, args)
    entry["ratio"] = entry["ours"]["p50_ms"] / entry["raw"]["p50_ms"]
    # as many of the tool's runs as fill min_seconds, so its untimed-warm-up-free first run weighs alike
    entry["tool_iterations"] = max(args.tool_iterations, int(args.min_seconds * 1e3 / entry["ours"]["p50_ms"]))
    entry["tool_mean_ms"] = ort_tool(path, entry["tool_iterations"])
    entry["tool_ratio"] = entry["ours"]["mean_ms"] / entry["tool_mean_ms"]
    return entry


def summarize_model(path: Path, runs: list[dict], load_average: list[float]) -> dict:
    ours_p50 = [r["ours"]["p50_ms"] for r in runs]
    raw_p50 = [r["raw"]["p50_ms"] for r in runs]
    ratio = float(np.median([r["ratio"] for r in runs]))
    return {
        "path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path), "size_bytes": path.stat().st_size,
        "runs": runs, "ours_p50_ms": ours_p50, "raw_p50_ms": raw_p50, "median_ratio": ratio,
        "within_tolerance": abs(ratio - 1) <= TOLERANCE,
        "ours_spread": max(ours_p50) / min(ours_p50), "raw_spread": max(raw_p50) / min(raw_p50),
        "ours_spread_within_goal": max(ours_p50) / min(ours_p50) <= SPREAD_GOAL,
        "tool_mean_ms": [r["tool_mean_ms"] for r in runs], "ours_mean_ms": [r["ours"]["mean_ms"] for r in runs],
        "tool_ratio": float(np.median([r["tool_ratio"] for r in runs])),
        "load_average_1min": load_average,
    }


def perf_test_reference() -> dict:
    """Where onnxruntime's C++ timing tool would be, and that it is not there."""
    perf_test = subprocess.run(["bash", "-lc", "command -v onnxruntime_perf_test"], capture_output=True, text=True)
    wheel = Path(__import__("onnxruntime").__file__).parent
    return {
        "onnxruntime_perf_test_on_path": perf_test.stdout.strip() or None,
        "perf_test_files_in_wheel": sorted(str(p.relative_to(wheel)) for p in wheel.rglob("*perf_test*")
                                           if "bert" not in p.name),
        "note": "onnxruntime_perf_test is not in the onnxruntime pip wheel (no such file in the package, none on PATH); "
                "the reference is the raw loop in this script, plus onnxruntime/tools/onnxruntime_test.py",
    }


def markdown(models: dict, reference: dict, args: argparse.Namespace, command: str) -> str:
    from compress.report import markdown_table
    from compress.sysinfo import environment

    rows = []
    for name, m in models.items():
        rows.append([name, f"{m['size_bytes'] / 1024:.0f}", f"{np.median(m['ours_p50_ms']):.4f}",
                     f"{np.median(m['raw_p50_ms']):.4f}", f"{m['median_ratio']:.3f}",
                     "yes" if m["within_tolerance"] else "NO", f"{m['ours_spread']:.3f}", f"{m['raw_spread']:.3f}",
                     f"{np.median(m['ours_mean_ms']):.4f}", f"{np.median(m['tool_mean_ms']):.4f}",
                     f"{m['tool_ratio']:.3f}", " -> ".join(f"{v:.1f}" for v in m["load_average_1min"])])
    env = environment()
    return "\n".join([
        "# Benchmark of the benchmark: `compress benchmark` against a raw onnxruntime loop\n",
        f"{args.repeats} repeats per model, each a fresh process, ours and raw alternating. Batch 1, "
        "CPUExecutionProvider, 1 intra-op thread, sequential, all graph optimizations, the same N(0,1) input. "
        f"Ours: `compress benchmark` defaults (warm-up until steady, >= 300 runs and >= 1 s). Raw: {args.raw_warmup} "
        f"warm-up runs, then >= {args.min_runs} runs and >= {args.min_seconds:g} s of `session.run` timed with "
        "`perf_counter`. Ratio = our p50 / raw p50 per repeat (median shown; pass within "
        f"{100 * TOLERANCE:.0f}%). Spread = max/min of the {args.repeats} p50s (goal <= {SPREAD_GOAL:.2f}). "
        "Tool: the timing loop of onnxruntime's own `onnxruntime/tools/onnxruntime_test.py` (mean of at least "
        f"{args.tool_iterations} runs and about {args.min_seconds:g} s, no warm-up, so its first run is included) "
        "on a session with the same "
        "1-thread options, against our mean; ours/tool is the median of the per-repeat ratios.\n",
        markdown_table(["model", "KB", "ours p50 ms", "raw p50 ms", "ours/raw", f"within {100 * TOLERANCE:.0f}%",
                        "ours spread", "raw spread", "ours mean ms", "tool mean ms", "ours/tool",
                        "load avg (before -> after)"], rows),
        f"{reference['note']}.\n",
        f"Machine: {env['cpu']['model']}, {env['cpu']['usable_cores']} usable cores, onnxruntime "
        f"{env['onnxruntime']['version']}. The machine is shared with other jobs: heavy ones were serialized by "
        "the lock, light ones were not; the 1-minute load average before and after each model is shown (on "
        f"{env['cpu']['usable_cores']} cores, a load above about 1 means another process competed for the core).\n",
        f"Made by `{command}`.",
    ])


def main() -> None:
    args = parse_args()
    if args.tool:
        run_tool(str(args.tool), args.tool_iterations)
        return
    if args.raw:
        print(json.dumps(raw_loop(str(args.raw), args.raw_warmup, args.min_runs, args.min_seconds, seed=0)))
        return

    from compress.fsutil import write_json, write_text
    from compress.sysinfo import environment

    args.work.mkdir(parents=True, exist_ok=True)
    paths = export_zoo(args.work)
    models = {}
    for name in args.models:
        load_before = os.getloadavg()[0]
        runs = []
        for repeat in range(args.repeats):
            runs.append(measure_repeat(paths[name], repeat, args))
            entry = runs[-1]
            print(f"{name} repeat {repeat}: ours p50 {entry['ours']['p50_ms']:.4f} ms, raw p50 "
                  f"{entry['raw']['p50_ms']:.4f} ms, ratio {entry['ratio']:.3f}", flush=True)
        models[name] = summarize_model(paths[name], runs, [load_before, os.getloadavg()[0]])

    command = "flock /tmp/compress-heavy.lock python benchmarks/harness_check.py " + shlex.join(sys.argv[1:])
    reference = perf_test_reference()
    write_json(args.out.with_suffix(".json"), {
        "command": command, "repeats": args.repeats, "tolerance": TOLERANCE, "spread_goal": SPREAD_GOAL,
        "reference": reference, "environment": environment(), "models": models})
    text = markdown(models, reference, args, command)
    write_text(args.out.with_suffix(".md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
