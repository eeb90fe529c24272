"""The prune stage: every zoo architecture pruned to channel targets and verified, MACs / params /
latency / sparsity targets, rounds, importance criteria, refusal of a step that breaks the model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from compress.checkpoint import load_model, save_model
from compress.errors import CompressError
from compress.metrics import model_stats
from compress.onnxutil import make_session, predict
from compress.pruning import channel_table
from compress.train import TrainConfig
from compress.zoo import ARCHITECTURES, ModelSpec, build_model
from stages.prune import PruneConfig, protected_layers, prune_step, run

FAST = {"latency_runs": 20, "latency_seconds": 0.0, "verify_samples": 32}  # tests check behaviour, not timings


def _no_finetune(**kwargs) -> PruneConfig:
    return PruneConfig(finetune=TrainConfig(epochs=0), **FAST, **kwargs)


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_prunes_to_a_channel_target_runs_exports_and_matches(arch, amount, digits, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch, 0.5), digits.input_shape, digits.num_classes).eval()
    cfg = _no_finetune(target="channels", amount=amount, round_to=1)
    pruned, step = prune_step(model, model, digits, cfg, protected_layers(model, cfg), None, tmp_path, "test", ratio=amount)

    before, after = channel_table(model), channel_table(pruned)
    shrunk = {name: after[name] / before[name] for name in before if after[name] < before[name]}
    assert shrunk, "nothing was pruned"
    # every shrunk layer lost about `amount` of its channels (whole heads / channel groups round it)
    assert all(abs(kept - (1 - amount)) <= 0.15 for kept in shrunk.values()), shrunk
    assert step["macs"] < model_stats(model, digits.input_shape)["macs"]
    assert step["parity"]["max_abs_diff"] <= 1e-3 and step["parity"]["top1_agreement"] >= 0.995
    onnx_logits = predict(make_session(tmp_path / "step-test.onnx"), digits.test.x[:50])
    with torch.no_grad():
        torch_logits = pruned(torch.from_numpy(digits.test.x[:50])).numpy()
    assert onnx_logits.shape == (50, 10)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-3)


@pytest.mark.parametrize("arch", ["mlp", "resnext", "densenet", "vit"])
def test_global_allocation_reaches_a_macs_target(arch, digits, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch, 0.5), digits.input_shape, digits.num_classes).eval()
    # the MLP's first layer holds most of its MACs: protected, half of them could not go
    cfg = _no_finetune(target="macs", amount=0.5, global_pruning=True, protect_first=arch != "mlp")
    pruned, step = prune_step(model, model, digits, cfg, protected_layers(model, cfg), 0.5 * model_stats(
        model, digits.input_shape)["macs"], tmp_path, "global")
    assert step["macs"] <= 0.5 * model_stats(model, digits.input_shape)["macs"]
    assert pruned(torch.from_numpy(digits.val.x[:4])).shape == (4, 10)


def test_default_macs_target_prunes_finetunes_and_reports(cnn_teacher_path, digits, tmp_path):
    cfg = PruneConfig(amount=0.5, finetune=TrainConfig(epochs=2, lr=0.02), **FAST)
    result = run(cfg, {"student": cnn_teacher_path, "teacher": cnn_teacher_path}, digits, tmp_path / "out")
    m = result.metrics
    assert m["target"]["met"] and m["target"]["reached"] <= 0.5 * m["before"]["macs"]
    assert 0.5 <= m["macs_reduction"] < 0.75 and m["params_reduction"] > 0.3
    assert m["after_finetune"]["test_accuracy"] >= 0.85
    (only_round,) = m["rounds"]
    assert only_round["after_prune"]["macs"] == m["after_prune"]["macs"]
    assert only_round["after_prune"]["p50_ms"] > 0 and m["before"]["latency"]["p50_ms"] > 0
    assert m["provider"] == "CPUExecutionProvider"
    assert set(m["before"]["channels"]) == set(m["after_prune"]["channels"])
    assert any(m["after_prune"]["channels"][k] < v for k, v in m["before"]["channels"].items())
    pruned = load_model(result.outputs["pruned"])
    assert model_stats(pruned, digits.input_shape)["macs"] == m["after_prune"]["macs"]
    changed = [c for k, c in channel_table(pruned).items() if c != m["before"]["channels"][k]]
    assert all(c % 8 == 0 for c in changed)  # round_to=8
    report = result.outputs["report"].read_text()
    assert "| before |" in report and "| stages.0.0.conv1 | 16 | 8 |" in report
    assert json.loads(result.outputs["metrics"].read_text())["macs_reduction"] == m["macs_reduction"]


def test_rounds_prune_step_by_step_to_a_parameter_count_with_taylor(mlp_teacher_path, digits, tmp_path):
    teacher_params = model_stats(load_model(mlp_teacher_path), digits.input_shape)["params"]
    cfg = PruneConfig(target="params", max_params=teacher_params // 3, rounds=2, importance="taylor", round_to=1,
                      protect_first=False, finetune=TrainConfig(epochs=1, optimizer="adamw", lr=0.002), **FAST)
    m = run(cfg, {"student": mlp_teacher_path, "teacher": mlp_teacher_path}, digits, tmp_path / "out").metrics
    first, second = m["rounds"]
    assert teacher_params > first["after_prune"]["params"] > second["after_prune"]["params"]
    assert second["after_prune"]["params"] <= teacher_params // 3
    assert first["steps"][0]["importance"] == "taylor"
    assert all(r["after_finetune"]["val_accuracy"] >= 0.8 for r in m["rounds"])


def test_auto_importance_keeps_the_most_accurate_criterion(cnn_teacher_path, digits, tmp_path):
    cfg = _no_finetune(importance="auto", amount=0.4)
    m = run(cfg, {"student": cnn_teacher_path, "teacher": cnn_teacher_path}, digits, tmp_path / "out").metrics
    step = m["rounds"][0]["steps"][0]
    trials = step["auto_val_accuracy"]
    assert set(trials) == {f"{c} {a}" for c in ("l1", "l2", "bn_scale", "taylor") for a in ("uniform", "global")}
    assert f"{step['importance']} {step['allocation']}" == max(trials, key=trials.get)


def test_latency_target_is_met_on_cpu_by_pruning_in_measured_steps(mnist, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet", 0.5, 8), mnist.input_shape, mnist.num_classes)
    save_model(model, tmp_path / "model.pt")
    cfg = PruneConfig(target="latency", amount=0.3, step_fraction=0.2, latency_runs=100, verify_samples=32,
                      finetune=TrainConfig(epochs=0))
    m = run(cfg, {"student": tmp_path / "model.pt", "teacher": tmp_path / "model.pt"}, mnist, tmp_path / "out").metrics
    target = m["target"]
    assert target["met"] and target["reached"] <= target["goal"] == pytest.approx(0.7 * target["start"])
    assert target["provider"] == "CPUExecutionProvider" and 0 < target["floor_p50_ms"] < target["goal"]
    steps = m["rounds"][0]["steps"]
    assert steps and steps[-1]["p50_ms"] == target["reached"]
    assert [s["macs"] for s in steps] == sorted((s["macs"] for s in steps), reverse=True)


def test_latency_target_below_the_runtime_floor_says_why(cnn_teacher_path, digits, tmp_path):
    cfg = _no_finetune(target="latency", max_latency_ms=1e-6)
    with pytest.raises(CompressError, match="cannot reach a p50 of 0.0000 ms on CPUExecutionProvider: onnxruntime's "
                                            "own per-call overhead is"):
        run(cfg, {"student": cnn_teacher_path, "teacher": cnn_teacher_path}, digits, tmp_path / "out")
    assert not (tmp_path / "out" / "pruned.safetensors").exists()


def test_unreachable_macs_target_names_the_limit(mlp_teacher_path, digits, tmp_path):
    cfg = _no_finetune(amount=0.9, protected=["features.1"], round_to=1)
    with pytest.raises(CompressError, match=r"cannot bring the model down to .* macs: at most .* fewer macs .*"
                                            r"\(protected: classifier, features.1\)"):
        run(cfg, {"student": mlp_teacher_path, "teacher": mlp_teacher_path}, digits, tmp_path / "out")


class HardCodedView(nn.Module):
    """A user model whose forward assumes conv2 keeps 16 channels."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.view(x.shape[0], 16 * 8 * 8))


def test_a_layer_whose_pruning_would_break_the_model_is_protected_before_any_step(digits, tmp_path):
    """conv2 feeds a view with its channel count written into the code: a trial on a copy finds that and protects
    it (the refusal of a breaking step, naming the layer, stays as the last line of defence); with conv1 protected
    as the first layer, nothing is left to prune, which is said in one line naming conv2."""
    model = HardCodedView().eval()
    model.compress_spec = {"builder": "factory", "factory": "tests.stages.test_prune:HardCodedView"}
    save_model(model, tmp_path / "model.pt")
    cfg = _no_finetune(target="channels", amount=0.5, round_to=1)
    with pytest.raises(CompressError, match=r"nothing to prune at round 1: .*conv2"):
        run(cfg, {"student": tmp_path / "model.pt", "teacher": tmp_path / "model.pt"}, digits, tmp_path / "out")
    assert not (tmp_path / "out" / "pruned.safetensors").exists()
    cfg = _no_finetune(target="channels", amount=0.5, round_to=1, protected=["conv2"])
    with pytest.raises(CompressError, match="nothing to prune at round 1"):
        run(cfg, {"student": tmp_path / "model.pt", "teacher": tmp_path / "model.pt"}, digits, tmp_path / "out")


def test_unstructured_sparsity_shrinks_the_compressed_file_not_the_latency(mlp_teacher_path, digits, tmp_path):
    cfg = PruneConfig(target="sparsity", amount=0.8, rounds=2, protect_first=False,
                      finetune=TrainConfig(epochs=1, optimizer="adamw", lr=0.002), **FAST)
    result = run(cfg, {"student": mlp_teacher_path, "teacher": mlp_teacher_path}, digits, tmp_path / "out")
    m = result.metrics
    assert m["sparsity"] == pytest.approx(0.8, abs=0.002) and m["target"]["met"]
    assert [r["after_prune"]["sparsity"] for r in m["rounds"]] == pytest.approx([0.4, 0.8], abs=0.002)
    assert m["compressed"]["sparse_gzip_bytes"] < 0.6 * m["compressed"]["dense_gzip_bytes"]
    assert m["after_prune"]["macs"] == m["before"]["macs"] and m["macs_reduction"] == 0.0
    assert "dense runtimes" in m["note"] and "not faster" in m["note"]
    assert m["after_finetune"]["test_accuracy"] >= 0.85
    pruned = load_model(result.outputs["pruned"])
    assert not any(name.endswith("_orig") for name, _ in pruned.named_parameters())
    hidden = pruned.features[1].weight
    assert float((hidden == 0).float().mean()) > 0.5


@pytest.mark.parametrize("override, message", [
    ({"target": "flops"}, "prune.target must be one of channels, macs, params, latency, sparsity, got 'flops'"),
    ({"amount": 1.0}, r"prune.amount must be a fraction in \(0, 1\), got 1.0"),
    ({"importance": "hessian"}, "prune.importance must be one of l1, l2, bn_scale, taylor, random, auto; got 'hessian'"),
    ({"latency_reference": "student"}, "prune.latency_reference must be one of model, teacher, got 'student'"),
    ({"step_fraction": 1.5}, r"prune.step_fraction must be a fraction in \(0, 1\), got 1.5"),
    ({"rounds": 0}, "prune.rounds must be >= 1, got 0"),
    ({"max_params": 0}, "prune.max_params must be a positive parameter count, got 0"),
])
def test_invalid_config_names_the_value_and_the_choices(override, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(**override)


def test_a_missing_gpu_provider_says_what_to_install():
    with pytest.raises(CompressError, match="CUDAExecutionProvider is not available: install onnxruntime-gpu"):
        PruneConfig(target="latency", provider="cuda")


def test_protecting_an_unknown_layer_lists_the_layers(mlp_teacher_path):
    with pytest.raises(CompressError, match="prune.protected names unknown layer 'features.9'; layers are: features.1"):
        protected_layers(load_model(mlp_teacher_path), PruneConfig(protected=["features.9"]))


def test_cli_help_documents_the_prune_options():
    from compress.cli import main

    result = CliRunner().invoke(main, ["prune", "--help"])
    assert result.exit_code == 0
    for option in ('prune.target="macs"', "latency (p50 of the exported model), or sparsity", "prune.max_latency_ms=",
                   "prune.importance=", "prune.rounds=", "prune.global_pruning=", "prune.protected=",
                   "prune.alpha=0.5", "prune.finetune.epochs=4", "Example"):
        assert option in result.output, option


def test_the_run_report_shows_the_prune_rounds(quick_run):
    run_dir, manifest = quick_run
    report = (run_dir / "report.md").read_text()
    prune = manifest["stages"]["prune"]["metrics"]
    assert "Per round (structured, importance l1" in report
    before = prune["before"]
    assert f"| before | {before['params']:,} | {before['macs'] / 1e6:.2f} |" in report
    assert f"| 1 (l1 uniform) | {prune['after_prune']['params']:,} |" in report  # the round names its criterion
