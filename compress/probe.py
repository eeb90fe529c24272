"""Cold start and peak memory of one model, measured in a fresh interpreter so that no other model's
session, allocator arena or kernel cache is counted, and every model starts from the same state.

Run as a script (it imports only numpy and onnxruntime, so the baseline is small and the same for all):
    python compress/probe.py SETTINGS_JSON
SETTINGS_JSON holds model, feed (an .npz of arr_0, arr_1, ... in input order), input_names, providers,
intra_op, inter_op, optimization and execution_mode (onnxruntime enum names) and runs. It prints one
JSON line: import, session-creation and first-run times, and resident memory before and at peak.
"""
from __future__ import annotations

import json
import sys
import time

_started = time.perf_counter()
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

_imported = time.perf_counter()


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far (None where the OS does not report it)."""
    try:
        # Linux keeps getrusage's ru_maxrss across execve, so a child would report its parent's peak;
        # VmHWM belongs to the new address space and starts afresh.
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def probe(settings: dict) -> dict:
    with np.load(settings["feed"]) as arrays:
        feed = {name: arrays[f"arr_{i}"] for i, name in enumerate(settings["input_names"])}
    baseline = peak_rss_mb()
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings["intra_op"]
    options.inter_op_num_threads = settings["inter_op"]
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings["optimization"])
    options.execution_mode = getattr(ort.ExecutionMode, settings["execution_mode"])
    begin = time.perf_counter()
    providers = [tuple(p) if isinstance(p, list) else p for p in settings["providers"]]  # JSON has no tuples
    session = ort.InferenceSession(settings["model"], options, providers=providers)
    created = time.perf_counter()
    session.run(None, feed)
    first = time.perf_counter()
    for _ in range(settings["runs"]):  # let the allocator arena reach its steady size before reading the peak
        session.run(None, feed)
    peak = peak_rss_mb()
    return {
        "import_ms": (_imported - _started) * 1e3, "session_create_ms": (created - begin) * 1e3,
        "first_run_ms": (first - created) * 1e3, "cold_start_ms": (first - begin) * 1e3,
        "baseline_rss_mb": baseline, "peak_rss_mb": peak,
        "model_rss_mb": None if peak is None or baseline is None else peak - baseline,
    }


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]))))
