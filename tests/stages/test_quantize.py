"""The quantize stage: every calibration method and format gives a valid model close to fp32, the
auto/dynamic/fp16 modes, the accuracy-aware search on a model with a deliberately sensitive layer,
the per-layer report, the hardware warnings and the error messages."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compress import quant_analysis as qa
from compress.checkpoint import load_model
from compress.errors import CompressError
from compress.onnx_export import ExportConfig, export_model
from stages.quantize import CANDIDATES, QuantizationJob, QuantizeConfig, Variant, quantize, run

# Tiny-model settings: few calibration samples, short timings, no report unless a test wants one.
QUICK = dict(calibration_samples=64, measure_seconds=0.05, layer_report=False)


@pytest.fixture(scope="module")
def mlp_onnx_path(tmp_path_factory, mlp_teacher_path, digits):
    path = tmp_path_factory.mktemp("mlp_onnx") / "mlp.onnx"
    export_model(load_model(mlp_teacher_path), path, digits, ExportConfig(), {"source": "test"})
    return path


class SensitiveNet(nn.Module):
    """An MLP whose middle layer ("sensitive") int8 ruins: each of its weight rows holds a huge value
    that multiplies a dead (always zero) input, so fp32 is unaffected, but per-channel int8 weight
    scales grow so large that every other weight of the layer rounds to zero."""

    def __init__(self):
        super().__init__()
        self.fc1, self.sensitive, self.head = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.head(torch.relu(self.sensitive(torch.relu(self.fc1(x.flatten(1))))))


@pytest.fixture(scope="module")
def sensitive_onnx_path(tmp_path_factory, digits):
    torch.manual_seed(0)
    net = SensitiveNet()
    x, y = torch.tensor(digits.train.x), torch.tensor(digits.train.y)
    optimizer = torch.optim.Adam(net.parameters(), 0.01)
    for _ in range(30):
        for start in range(0, len(x), 128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x[start:start + 128]), y[start:start + 128]).backward()
            optimizer.step()
    with torch.no_grad():
        net.fc1.weight[0] = 0.0
        net.fc1.bias[0] = -1.0  # relu(fc1)[:, 0] is always 0 ...
        net.sensitive.weight[:, 0] = 1e3  # ... so these huge weights change nothing in fp32
    path = tmp_path_factory.mktemp("sensitive") / "sensitive.onnx"
    torch.onnx.export(net.eval(), torch.zeros(1, 1, 8, 8), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def _run_model(path, x) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _test_accuracy(path, data) -> float:
    return float((_run_model(path, data.test.x).argmax(1) == data.test.y).mean())


# --- config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    (dict(mode="int4"), "quantize.mode must be one of auto, static, dynamic, fp16, got 'int4'"),
    (dict(method="kl"), "quantize.method must be one of minmax, entropy, percentile, distribution, got 'kl'"),
    (dict(format="qlinear"), "quantize.format must be one of qdq, qoperator"),
    (dict(activation_type="int16"), "quantize.activation_type must be one of uint8, int8"),
    (dict(activation_type="int8", weight_type="uint8"), "weight_type='uint8' needs activation_type='uint8'"),
    (dict(candidates=["u8s8_qdq", "fp8"]), "quantize.candidates: 'fp8' is not a format; choose from u8s8_qdq"),
    (dict(candidates=[]), "quantize.candidates must name at least one format"),
    (dict(fallback_methods=["kl"]), "quantize.fallback_methods: 'kl' is not a method"),
    (dict(calibration_samples=0), "quantize.calibration_samples must be >= 1, got 0"),
    (dict(percentile=50.0), r"quantize.percentile must be within \[90, 100\], got 50.0"),
    (dict(max_accuracy_drop=-1.0), "quantize.max_accuracy_drop must be >= 0 points, got -1.0"),
    (dict(measure_seconds=0.0), "quantize.measure_seconds must be > 0"),
    (dict(max_fp32_nodes=-1), "quantize.max_fp32_nodes must be >= 0"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(**kwargs)


def test_defaults_and_presets():
    default = QuantizeConfig()
    assert (default.mode, default.accuracy_aware, default.max_accuracy_drop) == ("auto", True, 0.5)
    assert QuantizeConfig.fast().mode == "static" and not QuantizeConfig.fast().accuracy_aware
    assert QuantizeConfig.accuracy_first().max_accuracy_drop < default.max_accuracy_drop
    assert QuantizeConfig.arm().candidates[0] == "s8s8_qdq"
    assert QuantizeConfig.no_vnni().reduce_range
    trt = QuantizeConfig.tensorrt()
    assert (trt.provider, trt.activation_type, trt.symmetric_activations) == ("tensorrt", "int8", True)
    assert QuantizeConfig.gpu_fp16().mode == "fp16"


# --- methods, formats, modes -----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile", "distribution"])
def test_each_calibration_method_gives_a_valid_model_close_to_fp32(method, mlp_onnx_path, digits, tmp_path):
    out = tmp_path / "int8.onnx"
    metrics = quantize(QuantizeConfig(mode="static", method=method, **QUICK), mlp_onnx_path, digits, out)
    onnx.checker.check_model(str(out))
    assert metrics["attempts"][0]["method"] == method  # the asked method is always tried first
    assert metrics["within_budget"] and metrics["val_drop_points"] <= 0.5
    assert _test_accuracy(out, digits) >= _test_accuracy(mlp_onnx_path, digits) - 0.02
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(out)).graph.node)


@pytest.mark.parametrize("candidate", list(CANDIDATES))
def test_each_format_gives_a_valid_model_of_its_kind(candidate, cnn_onnx_path, digits, tmp_path):
    fmt, activation_type, weight_type = CANDIDATES[candidate]
    out = tmp_path / "int8.onnx"
    cfg = QuantizeConfig(mode="static", format=fmt, activation_type=activation_type, weight_type=weight_type,
                         accuracy_aware=False, **QUICK)
    metrics = quantize(cfg, cnn_onnx_path, digits, out)
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert ("QLinearConv" in ops) == (fmt == "qoperator") and ("Conv" in ops) == (fmt == "qdq")
    quantized_input = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zero_point = next(i for i in model.graph.initializer if i.name == quantized_input.input[2])
    assert zero_point.data_type == {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}[activation_type]
    assert metrics["candidate"] == candidate and metrics["types"] == f"{activation_type}/{weight_type}"
    assert metrics["left_float_by_onnxruntime"] == []  # every Conv and the classifier were quantized
    assert abs(metrics["int8_accuracy"] - metrics["fp32_accuracy"]) <= 0.03
    assert json.loads(qa_metadata(model)["quantization"])["candidate"] == candidate


def qa_metadata(model: onnx.ModelProto) -> dict:
    return {prop.key: prop.value for prop in model.metadata_props}


def test_int8_accuracy_close_to_fp32_with_the_default_format_and_search(cnn_onnx_path, digits, tmp_path):
    """Issue 3's requirement: the default static format (U8S8 QDQ) with the default calibration (256 samples),
    accuracy-aware search and per-layer report. Static mode, because auto mode skips the search for a candidate
    no faster than fp32, and on this 0.76-MMAC CNN int8 and fp32 time the same within noise."""
    result = run(QuantizeConfig(mode="static", measure_seconds=0.05), {"model": cnn_onnx_path}, digits, tmp_path)
    metrics = result.metrics
    assert result.outputs["int8"].is_file() and metrics["within_budget"]
    assert metrics["val_drop_points"] <= 0.5
    assert metrics["int8_accuracy"] >= metrics["fp32_accuracy"] - 0.015
    assert _test_accuracy(result.outputs["int8"], digits) == pytest.approx(metrics["int8_accuracy"])
    # Metadata of the fp32 export travels with the quantized model.
    assert "preprocessing" in qa_metadata(onnx.load(str(result.outputs["int8"])))


def test_auto_mode_measures_every_candidate_against_fp32(cnn_onnx_path, digits, tmp_path):
    cfg = QuantizeConfig(candidates=["u8s8_qdq", "s8s8_qdq"], **QUICK)
    metrics = quantize(cfg, cnn_onnx_path, digits, tmp_path / "int8.onnx")
    measured = {row["candidate"]: row for row in metrics["candidates"]}
    assert set(measured) == {"fp32", "u8s8_qdq", "s8s8_qdq"}
    assert all(row["p50_ms"] > 0 for row in measured.values())
    assert metrics["decision"] in ("int8", "fp32") and (tmp_path / "int8.onnx").is_file()
    in_budget = [n for n in ("u8s8_qdq", "s8s8_qdq") if measured[n]["within_budget"]]
    if not in_budget:
        assert metrics["decision"] == "fp32"
        return
    fastest = min(in_budget, key=lambda n: measured[n]["p50_ms"])
    assert metrics["candidate"] == fastest  # written even when fp32 is the decision, for comparison
    assert (metrics["decision"] == "int8") == (measured[fastest]["p50_ms"] < measured["fp32"]["p50_ms"])
    assert metrics["candidate"] in metrics["decision_reason"]


@pytest.mark.parametrize("op_types", [[], ["Gemm"]])
def test_dynamic_mode_quantizes_linear_layers(op_types, mlp_onnx_path, digits, tmp_path):
    out = tmp_path / "dynamic.onnx"
    metrics = quantize(QuantizeConfig(mode="dynamic", op_types=op_types, **QUICK), mlp_onnx_path, digits, out)
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "Gemm" not in ops  # Gemm rewritten as MatMul first
    assert metrics["calibration_samples"] == 0 and metrics["method"] == "none"
    assert _test_accuracy(out, digits) >= _test_accuracy(mlp_onnx_path, digits) - 0.02


def test_fp16_mode_converts_weights_and_warns_on_cpu(mlp_onnx_path, digits, tmp_path):
    out = tmp_path / "fp16.onnx"
    metrics = quantize(QuantizeConfig(mode="fp16", **QUICK), mlp_onnx_path, digits, out)
    model = onnx.load(str(out))
    assert any(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # inputs stay float32
    assert metrics["decision"] == "fp16" and any("meant for GPU providers" in w for w in metrics["warnings"])
    assert abs(metrics["int8_accuracy"] - metrics["fp32_accuracy"]) <= 0.01


# --- accuracy-aware --------------------------------------------------------------------------------

def test_accuracy_aware_keeps_the_sensitive_layer_in_fp32_and_meets_its_budget(sensitive_onnx_path, digits, tmp_path):
    plain = quantize(QuantizeConfig(mode="static", accuracy_aware=False, **QUICK), sensitive_onnx_path, digits,
                     tmp_path / "plain.onnx")
    assert plain["val_drop_points"] > 50 and not plain["within_budget"]  # int8 ruins it

    result = run(QuantizeConfig(mode="static", max_accuracy_drop=1.0, calibration_samples=64), {"model": sensitive_onnx_path},
                 digits, tmp_path / "aware")
    metrics = result.metrics
    assert metrics["within_budget"] and metrics["val_drop_points"] <= 1.0
    kept = [entry["node"] for entry in metrics["fp32_nodes"]]
    assert kept[0] == "/sensitive/Gemm"
    assert "most sensitive" in metrics["fp32_nodes"][0]["reason"]
    # Cheaper fixes first: the other calibration methods, in order, before any node is kept in fp32.
    steps = [attempt["step"] for attempt in metrics["attempts"]]
    assert steps[:3] == ["calibration minmax", "calibration percentile", "calibration entropy"]
    assert steps[3] == "keep /sensitive/Gemm in fp32"
    # The written model really computes that layer in fp32, also after onnxruntime's load-time optimizations.
    model = onnx.load(str(result.outputs["int8"]))
    layer = next(node for node in model.graph.node if node.name == "/sensitive/Gemm")
    assert layer.input[1] in {init.name for init in model.graph.initializer if init.data_type == TensorProto.FLOAT}
    assert _test_accuracy(result.outputs["int8"], digits) >= _test_accuracy(sensitive_onnx_path, digits) - 0.02
    # The per-layer report shows it and its share of the drop.
    report = result.outputs["int8_layers"].read_text()
    row = next(line for line in report.splitlines() if line.startswith("|") and "`/sensitive/Gemm`" in line)
    assert "**fp32**" in row and row.rstrip(" |").endswith("%")
    assert float(row.rstrip(" |").split("|")[-1].strip().rstrip("%")) > 90
    assert result.outputs["int8_layers_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics["layer_report"]["most_sensitive"][0]["node"] == "/sensitive/Gemm"


@pytest.mark.parametrize("int8_ms, searched", [(2.0, False), (0.5, True)])
def test_auto_searches_only_candidates_faster_than_fp32(sensitive_onnx_path, digits, tmp_path, monkeypatch,
                                                        int8_ms, searched):
    """auto mode times each first build against fp32 before the accuracy-aware search: a candidate slower than
    fp32 cannot be chosen, so it is not searched (timings pinned here: the decision, not the machine, is tested)."""
    import stages.quantize as stage

    timed = []

    def pinned(paths, *args):
        timed.append(dict(paths))
        return {name: 1.0 if name == "fp32" else int8_ms for name in paths}

    monkeypatch.setattr(stage, "interleaved_p50s", pinned)
    cfg = QuantizeConfig(candidates=["u8s8_qdq"], max_accuracy_drop=1.0, **QUICK)
    metrics = quantize(cfg, sensitive_onnx_path, digits, tmp_path / "int8.onnx")
    steps = [attempt["step"] for attempt in metrics["attempts"]]
    if searched:
        assert metrics["not_searched"] == [] and metrics["decision"] == "int8" and metrics["within_budget"]
        assert steps[0] == "calibration minmax" and "keep /sensitive/Gemm in fp32" in steps
        # the search changed the model: the decision times it again, with fp32, in the same rounds
        assert len(timed) == 2 and timed[0]["u8s8_qdq"] != timed[1]["u8s8_qdq"]
    else:
        assert steps == ["calibration minmax"] and metrics["decision"] == "fp32"
        assert len(timed) == 1  # nothing changed after the first timing: the decision reuses it
        [entry] = metrics["not_searched"]
        assert entry["candidate"] == "u8s8_qdq"
        assert "no faster than fp32 (p50 2.000 ms against 1.000 ms)" in entry["reason"]


def test_auto_searches_the_fastest_first_and_stops_once_one_meets_the_budget(sensitive_onnx_path, digits, tmp_path,
                                                                           monkeypatch):
    import stages.quantize as stage

    pinned = {"fp32": 1.0, "s8s8_qdq": 0.5, "u8s8_qdq": 0.8}
    monkeypatch.setattr(stage, "interleaved_p50s", lambda paths, *args: {name: pinned[name] for name in paths})
    cfg = QuantizeConfig(candidates=["u8s8_qdq", "s8s8_qdq"], max_accuracy_drop=1.0, **QUICK)
    metrics = quantize(cfg, sensitive_onnx_path, digits, tmp_path / "int8.onnx")
    steps = {name: [a["step"] for a in metrics["attempts"] if a["candidate"] == name] for name in ("u8s8_qdq", "s8s8_qdq")}
    assert "keep /sensitive/Gemm in fp32" in steps["s8s8_qdq"] and steps["u8s8_qdq"] == ["calibration minmax"]
    [entry] = metrics["not_searched"]
    assert entry["candidate"] == "u8s8_qdq" and "s8s8_qdq, which met the budget after the search" in entry["reason"]
    assert metrics["candidate"] == "s8s8_qdq" and metrics["decision"] == "int8"


@pytest.mark.parametrize("needed, built", [(1, [1]), (3, [1, 8, 4, 2, 3]), (8, [1, 8, 4, 6, 7]), (None, [1, 8])])
def test_fp32_nodes_search_tries_one_then_all_then_bisects(needed, built):
    """The fewest most-sensitive nodes kept in fp32 that meet the budget, in at most 2 + log2(8) builds: the model
    here meets it once its ``needed`` most sensitive nodes are fp32 (None: never)."""
    job = object.__new__(QuantizationJob)
    job.cfg = QuantizeConfig(max_fp32_nodes=8)
    ranking = [{"node": f"n{i}", "alone_noise": 10.0 - i, "alone_output_sqnr_db": 5.0, "share_of_drop": 0.1,
                "alone_val_drop_points": 1.0} for i in range(10)]
    job.sensitivity = lambda variant, method: ranking

    def evaluate(variant, method, fp32_nodes):
        meets = needed is not None and len(fp32_nodes) >= needed
        accuracy = 0.9 if meets else 0.5 + 0.01 * len(fp32_nodes)
        return {"variant": variant, "method": method, "fp32_nodes": dict(fp32_nodes), "val_accuracy": accuracy,
                "val_drop_points": 100 * (0.9 - accuracy), "within_budget": meets}

    job.evaluate = evaluate
    variant = Variant("u8s8_qdq", "static", "qdq", "uint8", "int8")
    start = {"variant": variant, "method": "minmax", "fp32_nodes": {}, "val_accuracy": 0.4, "val_drop_points": 50.0,
             "within_budget": False}
    attempts, skipped = [], []
    best = job.keep_fewest_fp32(variant, start, {}, attempts, skipped)
    assert [len(attempt["fp32_nodes"]) for attempt in attempts] == built and not skipped
    if needed is None:  # nothing meets the budget: the most accurate attempt, all 8 nodes kept
        assert not best["within_budget"] and list(best["fp32_nodes"]) == [f"n{i}" for i in range(8)]
        return
    assert best["within_budget"] and list(best["fp32_nodes"]) == [f"n{i}" for i in range(needed)]
    assert attempts[0]["step"] == "keep n0 in fp32"
    assert best["fp32_nodes"]["n0"].startswith("#1 most sensitive")
    assert best["fp32_nodes"]["n0"].endswith("moved the val drop from 50.00 to 0.00 points")


def test_guard_keeps_excluded_node_fp32_through_onnxruntime_optimizations(sensitive_onnx_path, digits, tmp_path):
    """onnxruntime quantizes the float weights of a Gemm fed by DequantizeLinear when a session loads
    (WeightBiasQuantization); the guard stops that, so nodes_to_exclude is honoured."""
    out = tmp_path / "int8.onnx"
    cfg = QuantizeConfig(mode="static", accuracy_aware=False, nodes_to_exclude=["/sensitive/Gemm"], **QUICK)
    metrics = quantize(cfg, sensitive_onnx_path, digits, out)
    assert metrics["fp32_nodes"] == [{"node": "/sensitive/Gemm", "reason": "listed in quantize.nodes_to_exclude"}]
    assert any(node.name == "/sensitive/Gemm_fp32_guard" and node.op_type == "Max" for node in onnx.load(str(out)).graph.node)
    # in int8 the sensitive layer costs > 90 points; kept fp32, the rest loses only a few val samples (the exact
    # count depends on the CPU's int8 kernels: AVX2 without VNNI saturates u8s8 products)
    assert metrics["val_drop_points"] < 2.0


def test_layer_report_rows_cover_the_quantized_layers(cnn_onnx_path, digits, tmp_path):
    result = run(QuantizeConfig(mode="static", calibration_samples=64, report_sensitivity=True), {"model": cnn_onnx_path},
                 digits, tmp_path)
    lines = [line for line in result.outputs["int8_layers"].read_text().splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    for column in ("input tensor", "scale", "zero point", "output SQNR dB", "share of drop"):
        assert column in header
    convs = [n.name for n in onnx.load(str(cnn_onnx_path)).graph.node if n.op_type == "Conv"]
    assert len(rows) >= len(convs) and all(f"`{name}`" in "".join(rows) for name in convs)
    # single-node shares only for the quantize.sensitivity_nodes largest nodes; "-" for the others
    cells = [row.rstrip(" |").split("|")[-1].strip() for row in rows]
    shares = [float(cell.rstrip("%")) for cell in cells if cell != "-"]
    assert 0 < len(shares) <= QuantizeConfig().sensitivity_nodes
    assert sum(shares) == pytest.approx(100, abs=1.0)
    assert result.metrics["layer_report"] == {**result.metrics["layer_report"], "markdown": "int8_layers.md",
                                              "plot": "int8_layers.png"}


def test_fake_quantize_and_sqnr():
    x = np.linspace(0, 2.55, 256)
    assert np.allclose(qa.fake_quantize(x, 0.01, 0, "uint8"), np.round(x * 100) / 100)
    assert qa.fake_quantize(np.array([5.0]), 0.01, 0, "uint8")[0] == pytest.approx(2.55)  # clipped to the range
    assert qa.sqnr_db(x, x + 0.01 * np.abs(x).max()) < qa.sqnr_db(x, x + 0.001 * np.abs(x).max())


# --- hardware ----------------------------------------------------------------------------------------

def test_cpu_int8_support_is_read():
    support = qa.cpu_int8_support()
    assert support["architecture"] and set(support["flags"]) <= set(qa.INT8_INSTRUCTIONS)


@pytest.mark.parametrize("provider,mode,support,activation,symmetric,macs,has_conv,expected", [
    ("CPUExecutionProvider", "auto", {"architecture": "x86_64", "detected": True, "flags": []}, "uint8", False,
     10**8, True, "no int8 dot-product instructions"),
    ("CPUExecutionProvider", "static", {"architecture": "aarch64", "detected": True, "flags": []}, "uint8", False,
     10**8, True, "no Arm dot-product instructions"),
    ("CPUExecutionProvider", "auto", {"architecture": "x86_64", "detected": True, "flags": ["avx512_vnni"]},
     "uint8", False, 10**6, True, "CNNs under ~3 MMACs"),
    ("CUDAExecutionProvider", "static", {"architecture": "x86_64", "detected": True, "flags": []}, "uint8", False,
     10**8, True, "no int8 convolution kernels"),
    ("TensorrtExecutionProvider", "static", {"architecture": "x86_64", "detected": True, "flags": []}, "uint8",
     False, 10**8, True, "symmetric signed activations"),
    ("CPUExecutionProvider", "fp16", {"architecture": "x86_64", "detected": True, "flags": ["avx512_vnni"]},
     "uint8", False, 10**8, True, "meant for GPU providers"),
])
def test_hardware_warnings(provider, mode, support, activation, symmetric, macs, has_conv, expected):
    assert any(expected in w for w in qa.hardware_warnings(provider, mode, support, activation, symmetric, macs, has_conv))


def test_no_warning_where_int8_should_pay_off():
    support = {"architecture": "x86_64", "detected": True, "flags": ["avx512_vnni"]}
    assert qa.hardware_warnings("CPUExecutionProvider", "auto", support, "uint8", False, 20 * 10**6, True) == []


# --- errors ----------------------------------------------------------------------------------------

def _graph_model(path, nodes, initializers, output_shape):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, output_shape)], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_error_names_the_node_whose_shape_cannot_be_inferred(digits, tmp_path):
    """A Reshape whose target shape is computed from the data: symbolic shape inference cannot resolve it."""
    constants = {"zero": np.array(0, np.float32), "hundred": np.array(100, np.float32),
                 "minus_one": np.array(-1, np.int64), "step": np.array(65, np.int64),
                 "w": np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)}
    nodes = [helper.make_node("ReduceMax", ["input"], ["max"], keepdims=0, name="max"),
             helper.make_node("Mul", ["max", "zero"], ["zeroed"], name="zeroed"),
             helper.make_node("Add", ["zeroed", "hundred"], ["limit_f"], name="limit_f"),
             helper.make_node("Cast", ["limit_f"], ["limit"], to=TensorProto.INT64, name="limit"),
             helper.make_node("Range", ["minus_one", "limit", "step"], ["shape"], name="shape"),  # [-1, 64]
             helper.make_node("Reshape", ["input", "shape"], ["flat"], name="data_dependent_reshape"),
             helper.make_node("MatMul", ["flat", "w"], ["logits"], name="classifier")]
    path = _graph_model(tmp_path / "dynamic_shape.onnx", nodes,
                        [numpy_helper.from_array(v, k) for k, v in constants.items()], ["n", 10])
    with pytest.raises(CompressError, match="shape inference cannot resolve node 'data_dependent_reshape' "
                                            r"\(Reshape\).*quantize.preprocess=false"):
        quantize(QuantizeConfig(mode="static", **QUICK), path, digits, tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
    # Without pre-processing the same model quantizes.
    quantize(QuantizeConfig(mode="static", preprocess=False, **QUICK), path, digits, tmp_path / "q.onnx")


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_error_names_the_node_onnxruntime_cannot_quantize(mode, digits, tmp_path):
    """onnxruntime's quantizer silently skips a MatMul computed in float64: an int8 file that is really
    float would be written. The stage says which node and why instead."""
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
             helper.make_node("Cast", ["flat"], ["flat64"], to=TensorProto.DOUBLE, name="to_double"),
             helper.make_node("MatMul", ["flat64", "w"], ["out64"], name="double_matmul"),
             helper.make_node("Cast", ["out64"], ["logits"], to=TensorProto.FLOAT, name="to_float")]
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 10)), "w")
    path = _graph_model(tmp_path / "double.onnx", nodes, [weight], ["n", 10])
    with pytest.raises(CompressError, match=r"quantized none of the nodes of .*: node 'double_matmul' \(MatMul\) was "
                                            r"left in float: its input 'flat64' is double"):
        quantize(QuantizeConfig(mode=mode, **QUICK), path, digits, tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_error_when_there_is_nothing_to_quantize(digits, tmp_path):
    """Ten outputs (it fits digits), but only data-movement ops and Abs: nothing int8 would compute."""
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
             helper.make_node("Abs", ["flat"], ["abs"], name="abs"),
             helper.make_node("Slice", ["abs", "starts", "ends", "axes"], ["logits"], name="first_ten")]
    bounds = [numpy_helper.from_array(np.array([v], np.int64), name) for name, v in (("starts", 0), ("ends", 10), ("axes", 1))]
    path = _graph_model(tmp_path / "nothing.onnx", nodes, bounds, ["n", 10])
    with pytest.raises(CompressError, match=r"nothing to quantize in .*nothing.onnx: none of its nodes \(Abs, Flatten, Slice\)"):
        quantize(QuantizeConfig(mode="static", **QUICK), path, digits, tmp_path / "q.onnx")


@pytest.mark.parametrize("kwargs,message", [
    (dict(nodes_to_exclude=["no_such_node"]), "quantize.nodes_to_exclude names node 'no_such_node', which is not in"),
    (dict(op_types=["Softplus"]), "quantize.op_types: onnxruntime cannot quantize 'Softplus' in static mode"),
    (dict(provider="cuda"), "CUDAExecutionProvider is not available: install onnxruntime-gpu"),
])
def test_bad_requests_name_the_problem(kwargs, message, cnn_onnx_path, digits, tmp_path):
    with pytest.raises(CompressError, match=message):
        quantize(QuantizeConfig(mode="static", **{**QUICK, **kwargs}), cnn_onnx_path, digits, tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_wrong_dataset_for_the_model(cnn_onnx_path, mnist, tmp_path):
    with pytest.raises(CompressError, match="wrong input shape"):
        quantize(QuantizeConfig(**QUICK), cnn_onnx_path, mnist, tmp_path / "q.onnx")


def test_cli_quantize_writes_model_and_report(cnn_onnx_path, tmp_path):
    from compress.cli import main

    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(main, ["quantize", str(cnn_onnx_path), "--data", "digits", "--out", str(out),
                                       "--set", "quantize.mode=static", "--set", "quantize.calibration_samples=32"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "q_layers.md").is_file() and (tmp_path / "q_layers.png").is_file()
    assert json.loads(result.output[result.output.index("{"):])["decision"] == "int8"
