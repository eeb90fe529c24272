"""`compress benchmark` and stages/benchmark.py on tiny ONNX models built here with onnx.helper."""
from __future__ import annotations

import json
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from compress.cli import main
from compress.errors import CompressError
from compress.onnxutil import make_session
from stages.benchmark import (
    SCHEMA_VERSION,
    BenchmarkConfig,
    benchmark_model,
    measure_transfer,
    pareto_front,
    run,
    summarize_profile,
    warm_up,
)

FAST = ["--set", "benchmark.min_runs=20", "--set", "benchmark.min_seconds=0", "--set", "benchmark.warmup=fixed",
        "--set", "benchmark.warmup_runs=2", "--set", "benchmark.cold_start=false", "--set", "benchmark.profile=false"]
CUDA_AVAILABLE = "CUDAExecutionProvider" in ort.get_available_providers()


def fast_config(**changes) -> BenchmarkConfig:
    settings = {"min_runs": 20, "min_seconds": 0.0, "warmup": "fixed", "warmup_runs": 2, "cold_start": False,
                "profile": False, "throughput_batch": 4}
    return BenchmarkConfig(**{**settings, **changes})


def _save(nodes, inputs, outputs, initializers, path):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory, digits):
    """A linear digits classifier [batch, 1, 8, 8] -> [batch, 10], fitted by least squares (about 90% accurate)."""
    x = digits.train.x.reshape(len(digits.train), -1)
    targets = np.eye(digits.num_classes)[digits.train.y]
    features = np.hstack([x, np.ones((len(x), 1))])
    solution = np.linalg.lstsq(features, targets, rcond=None)[0].astype(np.float32)
    weight, bias = solution[:-1], solution[-1]
    return _save(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
        tmp_path_factory.mktemp("classifier") / "linear.onnx")


@pytest.fixture(scope="module")
def wide_classifier_path(tmp_path_factory, classifier_path):
    """The same classifier with a wasted 256-wide hidden layer in front: slower, same signature."""
    rng = np.random.default_rng(1)
    model = onnx.load(str(classifier_path))
    w, b = (numpy_helper.to_array(init) for init in model.graph.initializer)
    return _save(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("MatMul", ["flat", "up"], ["wide"]),
         helper.make_node("MatMul", ["wide", "down"], ["same"]), helper.make_node("Gemm", ["same", "w", "b"], ["logits"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(np.eye(64, 256, dtype=np.float32), "up"),
         numpy_helper.from_array(np.eye(256, 64, dtype=np.float32) + 1e-6 * rng.random((256, 64), dtype=np.float32), "down"),
         numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
        tmp_path_factory.mktemp("wide") / "wide.onnx")


@pytest.fixture(scope="module")
def multi_input_path(tmp_path_factory):
    """Token ids (int64 [batch, seq]) and features (float [batch, seq, 4]) -> a pooled [batch, 4]: no classifier."""
    table = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    return _save(
        [helper.make_node("Gather", ["table", "ids"], ["embedded"]), helper.make_node("Add", ["embedded", "features"], ["sum"]),
         helper.make_node("ReduceMean", ["sum"], ["pooled"], axes=[1], keepdims=0)],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(table, "table")],
        tmp_path_factory.mktemp("multi") / "tokens.onnx")


def invoke(*args):
    result = CliRunner().invoke(main, ["benchmark", *map(str, args)])
    return result


# ---- the command ------------------------------------------------------------------------------------

def test_classifier_with_data_gives_accuracy_and_macro_metrics(classifier_path, digits, tmp_path):
    result = invoke(classifier_path, "--data", "digits", *FAST, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "b.json").read_text())["results"]["linear"]
    logits = make_session(classifier_path).run(None, {"image": digits.test.x})[0]
    assert r["accuracy"] == pytest.approx(float((logits.argmax(1) == digits.test.y).mean()))
    assert r["accuracy"] > 0.8
    assert 0 < r["f1_macro"] <= 1 and 0 < r["precision_macro"] <= 1 and 0 < r["recall_macro"] <= 1
    assert r["accuracy_samples"] == len(digits.test)
    assert r["input_source"].startswith("dataset digits")
    assert r["params"] == 64 * 10 + 10 and r["macs"] == 640
    assert "linear" in result.stdout and "p90 ms" in result.stdout


def test_multi_input_int64_dynamic_axes(multi_input_path, tmp_path):
    out = tmp_path / "b.json"
    result = invoke(multi_input_path, "--dim", "seq=7", "--batch-sizes", "1,3", *FAST, "--json", out)
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())["results"]["tokens"]
    shapes = {i["name"]: (i["type"], i["declared_shape"], i["shape"]) for i in r["inputs"]}
    assert shapes["ids"] == ("tensor(int64)", ["batch", "seq"], [1, 7])
    assert shapes["features"] == ("tensor(float)", ["batch", "seq", 4], [1, 7, 4])
    assert [row["batch"] for row in r["throughput"]] == [1, 3]
    assert r["throughput_batch"] == 3 and r["throughput_sps"] == r["throughput"][1]["samples_per_s"]
    assert "accuracy" not in r and r["latency_batch"] == 1


def test_symbolic_dim_must_be_set(multi_input_path):
    result = invoke(multi_input_path, *FAST)
    assert result.exit_code == 2
    assert "symbolic dimension 'seq'" in result.stderr and "--dim seq=N" in result.stderr


def test_dim_sets_latency_batch(multi_input_path):
    r = benchmark_model(multi_input_path, None, fast_config(dims=["seq=2", "batch=5"]))
    assert r["latency_batch"] == 5 and r["inputs"][0]["shape"] == [5, 2]


def test_generated_integers_stay_in_range_and_real_inputs_are_used(multi_input_path, tmp_path):
    arrays = tmp_path / "feed.npz"
    np.savez(arrays, ids=np.full((6, 3), 49, dtype=np.int64), features=np.zeros((6, 3, 4), dtype=np.float32))
    r = benchmark_model(multi_input_path, None, fast_config(inputs=str(arrays)))
    assert r["inputs"][0]["shape"] == [1, 3] and "arrays from" in r["input_source"]
    np.savez(arrays, tokens=np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(CompressError, match="no array for input"):
        benchmark_model(multi_input_path, None, fast_config(inputs=str(arrays)))


def test_non_classifier_with_data_is_refused(tmp_path, digits):
    path = _save([helper.make_node("Relu", ["image"], ["same"])],
                 [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                 [helper.make_tensor_value_info("same", TensorProto.FLOAT, ["batch", 1, 8, 8])], [], tmp_path / "relu.onnx")
    assert "accuracy" not in benchmark_model(path, None, fast_config())
    with pytest.raises(CompressError, match="not a classifier"):
        benchmark_model(path, digits, fast_config())


def test_several_models_side_by_side_with_schema(classifier_path, wide_classifier_path, tmp_path):
    out = tmp_path / "bench"
    result = invoke(classifier_path, wide_classifier_path, "--data", "digits", "--set", "benchmark.min_runs=20",
                    "--set", "benchmark.min_seconds=0", "--set", "benchmark.warmup_runs=2", "--set",
                    "benchmark.cold_start=false", "--plot", "--out", out, "--set", "benchmark.profile_top=3")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "benchmark.json").read_text())
    assert doc["schema"] == "compress.benchmark" and doc["schema_version"] == SCHEMA_VERSION == 1
    for key in ("created", "environment", "config", "dataset", "plots", "results"):
        assert key in doc
    assert doc["environment"]["cpu"]["logical_cores"] >= 1 and doc["environment"]["onnxruntime"]["version"] == ort.__version__
    assert "CPUExecutionProvider" in doc["environment"]["onnxruntime"]["provider_versions"]
    assert list(doc["results"]) == ["linear", "wide"]
    for r in doc["results"].values():
        for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "runs", "warmup_runs", "steady",
                    "throughput_sps", "size_bytes", "params", "macs", "accuracy", "latencies_ms", "transfer", "profile"):
            assert key in r, key
        assert r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["runs"] >= 20
        assert r["steady"] in (True, False) and r["warmup_runs"] >= 2 + 2 * 20
        assert r["transfer"]["applicable"] is False and "not applicable" in r["transfer"]["reason"]
    assert doc["results"]["wide"]["params"] > doc["results"]["linear"]["params"]
    assert {i["shape"][0] for r in doc["results"].values() for i in r["inputs"]} == {1}
    markdown = (out / "benchmark.md").read_text()
    assert "| linear |" in markdown and "| wide |" in markdown and "## Environment" in markdown
    for name in ("latency_distribution.png", "pareto.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["plots"] == {"latency_plot": "latency_distribution.png", "pareto_plot": "pareto.png"}
    ops = [o["op"] for o in doc["results"]["wide"]["profile"]["top_ops"]]
    assert len(ops) <= 3 and "MatMul" in ops
    assert (out / doc["results"]["wide"]["profile"]["trace"]).is_file()


def test_profile_lists_operators(classifier_path):
    r = benchmark_model(classifier_path, None, fast_config(profile=True, profile_runs=5))
    profile = r["profile"]
    assert profile["runs"] == 5 and profile["kernel_ms_per_run"] > 0
    assert "Gemm" in {o["op"] for o in profile["top_ops"]}
    assert sum(o["share"] for o in profile["top_ops"]) == pytest.approx(1.0)
    assert profile["top_nodes"] and all(o["providers"] == ["CPUExecutionProvider"] for o in profile["top_ops"])


def test_summarize_profile_skips_warmup_runs():
    events = []
    for start, dur in [(0, 100), (200, 10), (300, 10)]:
        events.append({"cat": "Session", "name": "model_run", "ts": start, "dur": dur + 2})
        events.append({"cat": "Node", "name": "conv_kernel_time", "ts": start + 1, "dur": dur,
                       "args": {"op_name": "Conv", "provider": "CPUExecutionProvider"}})
        events.append({"cat": "Node", "name": "conv_fence_before", "ts": start, "dur": 0, "args": {"op_name": "Conv"}})
    summary = summarize_profile(events, skip_runs=1, top=5)
    assert summary["runs"] == 2
    assert summary["top_ops"] == [{"op": "Conv", "calls_per_run": 1.0, "ms_per_run": 0.01, "share": 1.0,
                                   "providers": ["CPUExecutionProvider"]}]


def test_cold_start_and_memory_in_a_subprocess(classifier_path):
    r = benchmark_model(classifier_path, None, fast_config(cold_start=True))
    c = r["cold_start"]
    assert c["session_create_ms"] > 0 and c["first_run_ms"] > 0
    assert c["cold_start_ms"] == pytest.approx(c["session_create_ms"] + c["first_run_ms"], rel=0.01)
    assert 0 < c["baseline_rss_mb"] <= c["peak_rss_mb"] < 2000 and c["model_rss_mb"] >= 0


def test_threads_sweep(classifier_path):
    cfg = fast_config(threads_sweep=[1, 2], inter_op_sweep=[1, 2], execution_mode="parallel")
    rows = benchmark_model(classifier_path, None, cfg)["threads_sweep"]
    assert [(r["intra_op_threads"], r["inter_op_threads"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r["p50_ms"] > 0 and r["execution_mode"] == "parallel" for r in rows)


def test_run_keeps_pipeline_keys(classifier_path, digits, tmp_path):
    result = run(fast_config(), {"teacher": classifier_path}, digits, tmp_path)
    r = result.metrics["teacher"]
    for key in ("accuracy", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_sps", "size_bytes", "params", "macs"):
        assert isinstance(r[key], (int, float)), key
    assert "latencies_ms" not in r
    assert result.outputs["benchmark_json"].is_file() and result.outputs["benchmark_md"].is_file()


def test_transfer_measurement_through_iobinding(classifier_path):
    """The IOBinding path of GPU providers, run on the CPU device so it is exercised everywhere."""
    session = make_session(classifier_path)
    feed = {"image": np.zeros((1, 1, 8, 8), dtype=np.float32)}
    t = measure_transfer(session, feed, "cpu", 0, fast_config())
    assert t["applicable"] and t["device"] == "cpu:0" and t["device_io_p50_ms"] > 0 and t["upload_p50_ms"] > 0


# ---- providers ----------------------------------------------------------------------------------------

@pytest.mark.skipif(CUDA_AVAILABLE, reason="CUDA is installed here: the missing-provider message cannot occur")
def test_cuda_without_gpu_names_the_package(classifier_path):
    with pytest.raises(CompressError, match="CUDAExecutionProvider is not available: install onnxruntime-gpu"):
        BenchmarkConfig(provider="cuda")
    result = invoke(classifier_path, "--provider", "cuda", *FAST)
    assert result.exit_code == 2
    assert "CUDAExecutionProvider is not available: install onnxruntime-gpu" in result.stderr


@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs onnxruntime-gpu and a GPU")
def test_cuda_measures_transfer(classifier_path):
    r = benchmark_model(classifier_path, None, fast_config(provider="cuda", provider_options=["device_id=0"]))
    assert r["provider"] == "CUDAExecutionProvider" and r["transfer"]["applicable"]
    assert r["transfer"]["device"] == "cuda:0" and r["transfer"]["upload_p50_ms"] > 0


def test_unknown_provider(classifier_path):
    result = invoke(classifier_path, "--provider", "warpdrive", *FAST)
    assert result.exit_code == 2
    assert "unknown execution provider 'warpdrive'" in result.stderr and "cpu" in result.stderr


def test_list_providers():
    result = CliRunner().invoke(main, ["benchmark", "--list-providers"])
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "available" in lines["CPUExecutionProvider"] and "not available" not in lines["CPUExecutionProvider"]
    if not CUDA_AVAILABLE:
        assert "install onnxruntime-gpu" in lines["CUDAExecutionProvider"]


# ---- config and measurement ---------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"optimization": "max"}, "optimization must be one of disable, basic, extended, layout, all"),
    ({"warmup": "none"}, "warmup must be one of steady, fixed"),
    ({"inter_op_threads": 2}, "execution_mode='parallel'"),
    ({"dims": ["seq"]}, "must look like key=value"),
    ({"dims": ["seq=0"]}, "seq must be a positive integer"),
    ({"provider_options": ["device_id"]}, "must look like key=value"),
    ({"batch_sizes": [0, 8]}, "batch_sizes values must be >= 1"),
    ({"min_runs": 0}, "min_runs must be >= 1"),
    ({"steady_tolerance": 1.5}, "steady_tolerance must be between 0 and 1"),
    ({"inputs": "/no/such.npz"}, "inputs file not found"),
])
def test_invalid_config(changes, message):
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig(**changes)


def test_cli_rejects_bad_batch_list_and_plot_without_out(classifier_path):
    result = invoke(classifier_path, "--batch-sizes", "1,x")
    assert result.exit_code == 2 and "comma-separated integers" in result.output
    result = invoke(classifier_path, "--plot", *FAST)
    assert result.exit_code == 2 and "--plot writes PNG files: give --out DIR" in result.stderr


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_warm_up_until_steady():
    runs, steady = warm_up(lambda: _busy(2e-4), fast_config(warmup="steady", steady_window=5))
    assert steady is True and runs >= 2 + 10 and (runs - 2) % 5 == 0
    durations = (2e-4 * 1.03**k for k in range(10_000))  # each window about 16% slower than the last: never steady
    runs, steady = warm_up(lambda: _busy(next(durations)), fast_config(warmup="steady", steady_window=5,
                                                                       warmup_max_seconds=0.05))
    assert steady is False and runs >= 2 + 5
    assert warm_up(lambda: None, fast_config(warmup="fixed", warmup_runs=7)) == (7, None)


def test_pareto_front():
    points = {"teacher": (10.0, 0.99), "student": (2.0, 0.98), "slow_bad": (12.0, 0.90), "int8": (1.0, 0.97),
              "tied": (2.0, 0.95)}
    assert pareto_front(points) == ["int8", "student", "teacher"]


def test_inputs_the_model_cannot_run_on_get_a_clear_error(multi_input_path):
    with pytest.raises(CompressError, match="cannot run .* benchmark.int_high"):
        benchmark_model(multi_input_path, None, fast_config(dims=["seq=3"], int_high=1000))


@pytest.mark.parametrize("shape, dtype", [((1, 1, 28, 28), np.float32), ((2, 3), np.int64), ((), np.bool_), ((0, 4), np.float32)])
def test_worker_feeds_are_cache_line_aligned_copies(shape, dtype):
    from compress.worker import aligned

    array = np.arange(int(np.prod(shape)), dtype=np.int64).astype(dtype).reshape(shape)
    copy = aligned(array[1:] if array.ndim and len(array) > 1 else array)
    source = array[1:] if array.ndim and len(array) > 1 else array
    assert copy.shape == source.shape and copy.dtype == source.dtype and np.array_equal(copy, source)
    assert copy.size == 0 or copy.ctypes.data % 64 == 0


def test_bad_model_arguments_get_one_line_errors(tmp_path, multi_input_path):
    result = invoke(tmp_path / "missing.onnx", *FAST)
    assert result.exit_code == 2 and "file not found" in result.stderr
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    result = invoke(tmp_path / "broken.onnx", *FAST)
    assert result.exit_code == 2 and "is not a valid ONNX model" in result.stderr
    result = invoke(multi_input_path, "--data", "digits", *FAST)
    assert result.exit_code == 2 and "a dataset can feed only single-input models" in result.stderr
    result = CliRunner().invoke(main, ["benchmark"])
    assert result.exit_code == 2 and "give at least one MODEL.onnx" in result.output
