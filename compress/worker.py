"""Measurements that run in a fresh Python process importing only numpy and onnxruntime: the timing
loops, cold start and peak memory of one model.

Why a separate process: a process that has loaded torch and the rest of compress runs a tiny model's
session.run measurably slower (about 2-4% on a 9 us MLP) than an application that ships onnxruntime
alone, and a model measured after another inherits its allocator state. A fresh, lean process per
model gives every model the same starting point, the one a deployed app has.

    python compress/worker.py time SETTINGS_JSON        # one JSON line per timing job, samples in .npy files
    python compress/worker.py interleave SETTINGS_JSON  # several models timed in alternating rounds
    python compress/worker.py cold_start SETTINGS_JSON  # one JSON line: creation/first-run times and memory

SETTINGS_JSON holds model, providers, optimization and execution_mode (onnxruntime enum names),
input_names, and for ``time``: dir (feeds ``feed_<name>.npz`` of arr_0, arr_1, ... in input order;
samples are written there), rules (the warm-up and run-count fields of BenchmarkConfig) and jobs
(name, feed, intra_op, inter_op, min_runs); for ``interleave``: dir, rules, intra_op, inter_op, rounds,
round_seconds, round_runs and models (name, model, feed; the settings' own model is unused); for
``cold_start``: feed, intra_op, inter_op and runs.
"""
from __future__ import annotations

import gc
import json
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

_started = time.perf_counter()
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

_imported = time.perf_counter()


@dataclass
class Timing:
    samples_ms: np.ndarray  # one wall time per timed run
    warmup_runs: int  # untimed runs before them
    steady: bool | None  # whether warm-up reached steady latency (None: a fixed warm-up count)


def measure(fn, rules, min_runs: int | None = None) -> Timing:
    """Warm up, then time ``fn`` at least ``min_runs`` times and for at least ``rules.min_seconds``.
    ``rules`` is a BenchmarkConfig or anything with its warm-up and run-count fields."""
    min_runs = rules.min_runs if min_runs is None else min_runs
    warmup_runs, steady = warm_up(fn, rules)
    times = []
    gc_enabled = gc.isenabled()
    gc.disable()  # a garbage-collector pause would land in the tail percentiles of whichever model it hit
    try:
        started = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - started < rules.min_seconds:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    finally:
        if gc_enabled:
            gc.enable()
    return Timing(np.array(times) * 1e3, warmup_runs, steady)


def warm_up(fn, rules) -> tuple[int, bool | None]:
    """``rules.warmup_runs`` untimed runs; in steady mode, then windows of runs until two consecutive
    window medians agree within ``rules.steady_tolerance`` (or ``rules.warmup_max_seconds`` pass)."""
    for _ in range(rules.warmup_runs):
        fn()
    if rules.warmup == "fixed":
        return rules.warmup_runs, None
    runs, previous, started = rules.warmup_runs, None, time.perf_counter()
    while True:
        window = []
        for _ in range(rules.steady_window):
            begin = time.perf_counter()
            fn()
            window.append(time.perf_counter() - begin)
        runs += rules.steady_window
        median = float(np.median(window))
        if previous is not None and abs(median - previous) <= rules.steady_tolerance * previous:
            return runs, True
        if time.perf_counter() - started >= rules.warmup_max_seconds:
            return runs, False
        previous = median


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


def session(settings: dict, intra_op: int, inter_op: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op
    options.inter_op_num_threads = inter_op
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings["optimization"])
    options.execution_mode = getattr(ort.ExecutionMode, settings["execution_mode"])
    providers = [tuple(p) if isinstance(p, list) else p for p in settings["providers"]]  # JSON has no tuples
    return ort.InferenceSession(settings["model"], options, providers=providers)


def load_feed(path: str, input_names: list[str]) -> dict[str, np.ndarray]:
    with np.load(path) as arrays:
        return {name: aligned(arrays[f"arr_{i}"]) for i, name in enumerate(input_names)}


def aligned(array: np.ndarray, alignment: int = 64) -> np.ndarray:
    """A copy starting on a cache-line boundary, like a freshly allocated array: arrays read from an .npz
    sit wherever the archive's buffer put them, which can cost a small model a few percent."""
    if array.nbytes == 0:
        return array.copy()
    buffer = np.empty(array.nbytes + alignment, dtype=np.uint8)
    offset = -buffer.ctypes.data % alignment
    result = buffer[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    result[...] = array
    return result


def time_jobs(settings: dict) -> None:
    """Each job: warm up and time one feed on a session with the job's threads; print one JSON line."""
    rules = SimpleNamespace(**settings["rules"])
    sessions = {}
    for job in settings["jobs"]:
        key = (job["intra_op"], job["inter_op"])
        if key not in sessions:
            sessions[key] = session(settings, *key)
        run, feed = sessions[key].run, load_feed(f"{settings['dir']}/feed_{job['feed']}.npz", settings["input_names"])
        timing = measure(lambda run=run, feed=feed: run(None, feed), rules, job["min_runs"])
        np.save(f"{settings['dir']}/samples_{job['name']}.npy", timing.samples_ms)
        print(json.dumps({"name": job["name"], "warmup_runs": timing.warmup_runs, "steady": timing.steady}), flush=True)


def interleave(settings: dict) -> None:
    """Time several models in alternating rounds in this one process, so that a ratio between two of them
    is measured under the same machine state: each round runs every model for ``round_seconds`` (and at
    least ``round_runs`` times), starting from a different model each round. Prints one JSON line per
    model with its warm-up and its per-round sample counts; all samples go to samples_<name>.npy."""
    rules = SimpleNamespace(**settings["rules"])
    runs, warmups = {}, {}
    for entry in settings["models"]:
        model = session({**settings, "model": entry["model"]}, settings["intra_op"], settings["inter_op"])
        feed = load_feed(f"{settings['dir']}/feed_{entry['feed']}.npz", entry["input_names"])
        runs[entry["name"]] = (lambda run=model.run, feed=feed: run(None, feed))
        warmups[entry["name"]] = warm_up(runs[entry["name"]], rules)
    names = list(runs)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_index in range(settings["rounds"]):
            for offset in range(len(names)):
                name = names[(round_index + offset) % len(names)]
                fn, times = runs[name], []
                started = time.perf_counter()
                while len(times) < settings["round_runs"] or time.perf_counter() - started < settings["round_seconds"]:
                    begin = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - begin)
                samples[name].append(times)
    finally:
        if gc_enabled:
            gc.enable()
    for name in names:
        np.save(f"{settings['dir']}/samples_{name}.npy", np.array([t for rnd in samples[name] for t in rnd]) * 1e3)
        warmup_runs, steady = warmups[name]
        print(json.dumps({"name": name, "warmup_runs": warmup_runs, "steady": steady,
                          "round_runs": [len(rnd) for rnd in samples[name]]}), flush=True)


def cold_start(settings: dict) -> None:
    feed = load_feed(settings["feed"], settings["input_names"])
    baseline = peak_rss_mb()
    begin = time.perf_counter()
    model = session(settings, settings["intra_op"], settings["inter_op"])
    created = time.perf_counter()
    model.run(None, feed)
    first = time.perf_counter()
    for _ in range(settings["runs"]):  # let the allocator arena reach its steady size before reading the peak
        model.run(None, feed)
    peak = peak_rss_mb()
    print(json.dumps({
        "import_ms": (_imported - _started) * 1e3, "session_create_ms": (created - begin) * 1e3,
        "first_run_ms": (first - created) * 1e3, "cold_start_ms": (first - begin) * 1e3,
        "baseline_rss_mb": baseline, "peak_rss_mb": peak,
        "model_rss_mb": None if peak is None or baseline is None else peak - baseline,
    }))


if __name__ == "__main__":
    {"time": time_jobs, "interleave": interleave, "cold_start": cold_start}[sys.argv[1]](json.loads(sys.argv[2]))
