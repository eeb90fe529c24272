"""The published families of compress.architectures through every stage: they build at the published sizes,
round-trip through checkpoints, export, quantize (auto and accuracy-aware), benchmark and prune at 30% and 50%
of their MACs at 32x32 with small widths, and one runs the per-stage commands at 224x224 with ImageNet
normalization. Pruning never empties a layer or breaks a reshape, and the fp32 guard keeps graphs in SSA form."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compress import quant_analysis as qa
from compress.architectures import FAMILIES, reparameterize
from compress.checkpoint import load_model, save_model
from compress.cli import main
from compress.data import DataConfig, load_dataset
from compress.errors import CompressError
from compress.onnx_export import ExportConfig, export_model
from compress.onnxutil import make_session, metadata
from compress.pruning import find_unsafe_layers, prune_copy
from compress.synthetic import calibrated_model, class_brightness_npz
from compress.train import TrainConfig
from compress.zoo import ModelSpec, build_model, call_factory
from stages import benchmark, export, prune, quantize

SMALL = {"width": 0.25, "depth": 1}
# DenseNet-121 with one layer per dense block spends most of its MACs in the 7x7 stem, which pruning protects
# (prune.protect_first) and whose inputs are the 3 colours: three layers per block leave 50% to prune (two: 47%).
DEPTH = {"densenet121": 3}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# Parameters with 1000 classes at width 1.0, as published (RepVGG: its deploy form, as in the paper's table).
PUBLISHED_PARAMS = {"resnet18": 11.69e6, "resnet50": 25.56e6, "mobilenet_v3": 5.48e6, "efficientnet_b0": 5.29e6,
                    "convnext": 28.59e6, "regnet_x": 5.50e6, "ghostnet": 5.18e6, "densenet121": 7.98e6,
                    "repvgg_deploy": 8.31e6, "vit_tiny": 5.72e6, "mobilevit": 5.58e6}


@pytest.fixture(scope="module")
def rgb32(tmp_path_factory):
    path = class_brightness_npz(tmp_path_factory.mktemp("rgb32") / "rgb32.npz", 32, 300)
    return load_dataset(DataConfig(source=str(path)))


def _small(arch: str, data, depth: int | None = SMALL["depth"]) -> nn.Module:
    """A small random model with BatchNorm statistics from 128 real images (compress.synthetic)."""
    return calibrated_model(ModelSpec(arch, SMALL["width"], depth), data, 128)


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_family_runs_and_round_trips_through_its_checkpoint(arch, rgb32, tmp_path):
    model = _small(arch, rgb32)
    x = torch.from_numpy(rgb32.test.x[:3])
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.compress_spec["model"]["arch"] == arch
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), logits)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(PUBLISHED_PARAMS))
def test_published_width_has_the_published_parameter_count(arch):
    model = build_model(ModelSpec(arch), (3, 224, 224), 1000)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / PUBLISHED_PARAMS[arch] - 1) < 0.03, params


def test_layers_people_recognise_are_there():
    resnet = build_model(ModelSpec("resnet50", 0.25, 1), (3, 32, 32), 10)
    assert isinstance(resnet.fc, nn.Linear) and isinstance(resnet.layer2[0].downsample[0], nn.Conv2d)
    mobilenet = build_model(ModelSpec("mobilenet_v3", 0.25, 1), (3, 32, 32), 10)
    kinds = {type(m) for m in mobilenet.modules()}
    assert {nn.Hardswish, nn.Hardsigmoid} <= kinds
    efficientnet = build_model(ModelSpec("efficientnet_b0", 0.25, 2), (3, 32, 32), 10)
    assert nn.SiLU in {type(m) for m in efficientnet.modules()}
    assert max(m.p for m in efficientnet.modules() if type(m).__name__ == "StochasticDepth") > 0
    regnet = build_model(ModelSpec("regnet_x", 0.5, 1), (3, 32, 32), 10)
    assert any(isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels for m in regnet.modules())
    convnext = build_model(ModelSpec("convnext", 0.25, 1), (3, 32, 32), 10)
    assert any(isinstance(m, nn.Conv2d) and m.kernel_size == (7, 7) and m.groups == m.in_channels
               for m in convnext.modules())
    densenet = build_model(ModelSpec("densenet121"), (3, 64, 64), 10)
    assert [len(getattr(densenet.features, f"denseblock{i}")) for i in range(1, 5)] == [6, 12, 24, 16]


def test_repvgg_deploy_form_computes_what_the_training_form_does(rgb32, tmp_path):
    model = _small("repvgg", rgb32)
    with torch.no_grad():  # non-trivial BN affine parameters, so the fusion has something to get wrong
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    deployed = reparameterize(model)
    assert not any(hasattr(m, "rbr_1x1") for m in deployed.modules())
    assert deployed.compress_spec["model"]["arch"] == "repvgg_deploy"
    x = torch.from_numpy(rgb32.test.x[:8])
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-4)
    save_model(deployed, tmp_path / "deploy.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "deploy.safetensors")(x), deployed(x))


def test_repvgg_deploy_form_of_a_pruned_model_keeps_its_channels(rgb32):
    model = _small("repvgg", rgb32)
    pruned, records = prune_copy(model, rgb32.input_shape, 0.5, "l1", round_to=1, protected=("stage0.rbr_dense.0",))
    assert records
    deployed = reparameterize(pruned)
    x = torch.from_numpy(rgb32.test.x[:4])
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), pruned(x), rtol=1e-4, atol=1e-4)


def test_repvgg_reparameterize_refuses_other_models():
    with pytest.raises(CompressError, match="has no RepVGG block"):
        reparameterize(build_model(ModelSpec("resnet18", 0.25, 1), (3, 32, 32), 10))


def test_family_depth_must_be_positive():
    with pytest.raises(CompressError, match="depth caps the blocks per stage and must be >= 1"):
        build_model(ModelSpec("ghostnet", 0.25, 0), (3, 32, 32), 10)
    with pytest.raises(CompressError, match="needs image inputs"):
        build_model(ModelSpec("vit_tiny", 0.25, 1), (64,), 10)


# ---- the fp32 guard keeps the graph in SSA form ------------------------------------------------------

def test_fp32_guard_is_shared_by_nodes_reading_one_tensor():
    """Two convs fed by one DequantizeLinear (RepVGG's 3x3 and 1x1 branches) both kept fp32: one guard, valid ONNX."""
    weight = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    scale, zero = numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("Conv", ["xd", "w"], ["a"], name="dense"),
             helper.make_node("Conv", ["xd", "w"], ["b"], name="one_by_one"),
             helper.make_node("Add", ["a", "b"], ["y"], name="sum")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [weight, scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert qa.protect_fp32_nodes(model, ["dense", "one_by_one"]) == ["dense", "one_by_one"]
    onnx.checker.check_model(model, full_check=True)
    guards = [node for node in model.graph.node if node.op_type == "Max"]
    assert len(guards) == 1 and all(n.input[0] == guards[0].output[0] for n in model.graph.node if n.op_type == "Conv")


@pytest.mark.slow
def test_static_quantization_with_fp32_branches_of_a_multi_branch_model_is_valid(rgb32, tmp_path):
    model = _small("repvgg", rgb32)
    source = tmp_path / "repvgg.onnx"
    export_model(model, source, rgb32, ExportConfig(parity_samples=16), {})
    convs = [n.name for n in onnx.load(str(source)).graph.node if n.op_type == "Conv"][1:]
    cfg = quantize.QuantizeConfig(mode="static", accuracy_aware=False, layer_report=False, nodes_to_exclude=convs)
    quantize.quantize(cfg, source, rgb32, tmp_path / "q.onnx")
    onnx.checker.check_model(str(tmp_path / "q.onnx"), full_check=True)
    make_session(tmp_path / "q.onnx")


# ---- pruning never empties a layer and never breaks a reshape ----------------------------------------

class FixedReshape(nn.Module):
    """A block that reshapes with channel counts written into the code (16 = 4 groups x 4), as user models do."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.mix = nn.Conv2d(8, 16, 3, 2, 1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(4, 16, 1)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.mix(torch.relu(self.stem(x)))))
        x = x.reshape(x.shape[0], 4, 4, x.shape[2], x.shape[3]).mean(2)
        return self.classifier(torch.relu(self.head(x)).mean((2, 3)))


def fixed_reshape_model() -> nn.Module:
    torch.manual_seed(0)
    return FixedReshape()


def test_a_layer_a_fixed_reshape_depends_on_is_protected_with_a_note(rgb32):
    model = fixed_reshape_model().eval()

    def runs(candidate):
        with torch.no_grad():
            candidate(torch.from_numpy(rgb32.val.x[:4]))

    found = find_unsafe_layers(model, rgb32.input_shape, ["classifier"], runs)
    assert list(found) == ["mix"] and "breaks the forward pass" in found["mix"] and "shape" in found["mix"]


def test_prune_stage_protects_unsafe_layers_and_finishes(rgb32, tmp_path):
    model = call_factory("tests.test_architectures:fixed_reshape_model")
    save_model(model, tmp_path / "m.safetensors")
    cfg = prune.PruneConfig(target="channels", amount=0.5, round_to=1, protect_first=False,
                            finetune=TrainConfig(epochs=1), latency_runs=5, latency_seconds=0.0, verify_samples=16)
    metrics = prune.run(cfg, {"student": tmp_path / "m.safetensors", "teacher": tmp_path / "m.safetensors"}, rgb32,
                        tmp_path / "p").metrics
    assert [entry["layer"] for entry in metrics["auto_protected"]] == ["mix"]
    assert metrics["after_prune"]["channels"]["stem"] < 8
    assert "Protected automatically" in (tmp_path / "p" / "prune.md").read_text()


def test_no_pruned_layer_is_left_without_channels(rgb32):
    model = _small("ghostnet", rgb32)
    found = find_unsafe_layers(model, rgb32.input_shape, ["classifier"], lambda m: m(torch.zeros(2, 3, 32, 32)))
    pruned, _ = prune_copy(model, rgb32.input_shape, 0.95, "l1", round_to=1, protected=("classifier", *found))
    for module in pruned.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert min(module.weight.shape[:2]) >= 1


# ---- every family through every stage ---------------------------------------------------------------

def _quantize(source, data, out, **overrides):
    cfg = quantize.QuantizeConfig(measure_seconds=0.1, sensitivity_samples=32, report_samples=16, sensitivity_nodes=4,
                                  **overrides)
    metrics = quantize.run(cfg, {"model": source}, data, out.parent, name=out.stem).metrics
    onnx.checker.check_model(str(out))
    make_session(out)
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("arch", FAMILIES)
def test_family_exports_quantizes_and_benchmarks(arch, rgb32, tmp_path):
    save_model(_small(arch, rgb32), tmp_path / "m.safetensors")
    parity = export.run(ExportConfig(parity_samples=32), {"m": tmp_path / "m.safetensors"}, rgb32, tmp_path).metrics["m"]
    assert parity["relative_diff"] <= 1e-3 and parity["top1_agreement"] == 1.0
    auto = _quantize(tmp_path / "m.onnx", rgb32, tmp_path / "auto.onnx")
    assert auto["decision"] in ("int8", "fp32") and len(auto["candidates"]) >= 2
    aware = _quantize(tmp_path / "m.onnx", rgb32, tmp_path / "aware.onnx", mode="static", max_accuracy_drop=0.0,
                      max_fp32_nodes=2)
    assert aware["attempts"] and (tmp_path / "aware_layers.md").is_file()
    cfg = benchmark.BenchmarkConfig(min_runs=5, min_seconds=0.0, warmup="fixed", warmup_runs=2, profile=False,
                                    cold_start=False)
    results = benchmark.run(cfg, {"fp32": tmp_path / "m.onnx", "int8": tmp_path / "auto.onnx"}, rgb32,
                            tmp_path / "bench").metrics
    assert results["fp32"]["p50_ms"] > 0 and results["int8"]["accuracy"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("amount", [0.3, 0.5])
def test_family_prunes_its_macs(arch, amount, rgb32, tmp_path):
    save_model(_small(arch, rgb32, DEPTH.get(arch, SMALL["depth"])), tmp_path / "m.safetensors")
    # round_to=1: at width 0.25 many layers have 8 channels, which the default round_to=8 cannot cut
    cfg = prune.PruneConfig(amount=amount, round_to=1, finetune=TrainConfig(epochs=1), latency_runs=5,
                            latency_seconds=0.0, verify_samples=16)
    metrics = prune.run(cfg, {"student": tmp_path / "m.safetensors", "teacher": tmp_path / "m.safetensors"}, rgb32,
                        tmp_path / "p").metrics
    assert metrics["target"]["met"] and metrics["macs_reduction"] >= amount - 0.01
    assert metrics["after_finetune"]["parity"]["relative_diff"] <= 1e-3
    assert all(step["parity"]["top1_agreement"] >= 0.995 for r in metrics["rounds"] for step in r["steps"])
    load_model(tmp_path / "p" / "pruned.safetensors")


# ---- 224x224 RGB with ImageNet normalization, through the per-stage commands ---------------------------

def test_imagenet_statistics_normalize_and_travel_with_the_model(tmp_path):
    path = class_brightness_npz(tmp_path / "rgb.npz", 16, 60)
    data = load_dataset(DataConfig(source=str(path), **IMAGENET))
    assert data.input_shape == (3, 16, 16) and data.mean == pytest.approx(IMAGENET["mean"]) and data.std == pytest.approx(IMAGENET["std"])
    assert data.preprocessing()["mean"] == pytest.approx(IMAGENET["mean"])
    with pytest.raises(ValueError, match="data.mean and data.std must be given together"):
        DataConfig(mean=[0.5])
    with pytest.raises(CompressError, match=r"data.mean and data.std have 3 value\(s\) but the images have 1 channel"):
        load_dataset(DataConfig(source="digits", **IMAGENET))


@pytest.mark.slow
def test_per_stage_commands_at_224_with_imagenet_normalization(tmp_path):
    data_path = class_brightness_npz(tmp_path / "rgb224.npz", 224, 120)
    data_cfg = DataConfig(source=str(data_path), **IMAGENET)
    model = _small("mobilenet_v3", load_dataset(data_cfg))
    save_model(model, tmp_path / "m.safetensors")
    common = ["--data", str(data_path), "--set", f"data.mean={IMAGENET['mean']}", "--set", f"data.std={IMAGENET['std']}"]

    def invoke(*args):
        result = CliRunner().invoke(main, [str(a) for a in args] + common, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
        return result

    invoke("export", tmp_path / "m.safetensors", "--out", tmp_path / "m.onnx")
    preprocessing = metadata(onnx.load(str(tmp_path / "m.onnx")))["preprocessing"]
    assert preprocessing["input_shape"] == [3, 224, 224] and preprocessing["mean"] == pytest.approx(IMAGENET["mean"])
    invoke("quantize", tmp_path / "m.onnx", "--out", tmp_path / "q.onnx", "--set", "quantize.measure_seconds=0.1",
           "--set", "quantize.sensitivity_samples=16", "--set", "quantize.report_samples=8")
    assert metadata(onnx.load(str(tmp_path / "q.onnx")))["preprocessing"]["std"] == pytest.approx(IMAGENET["std"])
    invoke("benchmark", tmp_path / "m.onnx", tmp_path / "q.onnx", "--set", "benchmark.min_runs=5",
           "--set", "benchmark.min_seconds=0", "--set", "benchmark.warmup=fixed", "--set", "benchmark.warmup_runs=1",
           "--set", "benchmark.profile=false", "--set", "benchmark.cold_start=false", "--out", tmp_path / "bench")
    results = json.loads((tmp_path / "bench" / "benchmark.json").read_text())["results"]
    assert set(results) == {"m", "q"} and all(r["p50_ms"] > 0 for r in results.values())
