"""Loading never runs code from a file without the explicit opt-in; onnxruntime's temporary files never
land in the user's folder; per-stage --resume reruns when an input's contents change; a config file's
[data] section is not overridden by a default."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compress.checkpoint import load_model, save_model
from compress.cli import main
from compress.errors import CompressError
from compress.zoo import ModelSpec, build_model


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


class Payload:
    """A pickle that, when loaded, creates a file: what a crafted model file can do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def evil(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save(Payload(marker), path)
    return path, marker


def _command_lines(tmp_path, evil_path):
    out = tmp_path / "out"
    return {
        "distill --teacher": ["distill", "--teacher", evil_path, "--data", "digits", "--out", out],
        "prune MODEL": ["prune", evil_path, "--teacher", evil_path, "--data", "digits", "--out", out],
        "export MODEL": ["export", evil_path, "--data", "digits", "--out", out / "m.onnx"],
        "teacher.path": ["teacher", "--data", "digits", "--set", "teacher.source=file", "--set",
                         f"teacher.path={str(evil_path)!r}".replace("'", '"'), "--out", out],
    }


@pytest.mark.parametrize("command", ["distill --teacher", "prune MODEL", "export MODEL", "teacher.path"])
def test_a_crafted_pickle_is_never_executed_without_the_opt_in(tmp_path, evil, command):
    evil_path, marker = evil
    result = invoke(*_command_lines(tmp_path, evil_path)[command])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "pickled" in line and "arbitrary code" in line and "--trust-pickle" in line
    assert not marker.exists()  # the payload did not run
    assert not (tmp_path / "out").exists()


def test_load_model_refuses_a_pickle_and_reads_it_with_the_opt_in(tmp_path, digits):
    model = build_model(ModelSpec("mlp", 0.5), digits.input_shape, digits.num_classes)
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(CompressError, match="pickled Python object .* arbitrary code: refused"):
        load_model(path)
    loaded = load_model(path, trust_pickle=True)
    x = torch.from_numpy(digits.test.x[:4])
    assert torch.equal(loaded(x), model.eval()(x))


def test_export_with_trust_pickle_reads_a_trusted_whole_module(tmp_path, digits):
    model = build_model(ModelSpec("mlp", 0.5), digits.input_shape, digits.num_classes)
    torch.save(model, tmp_path / "whole.pt")
    result = invoke("export", tmp_path / "whole.pt", "--data", "digits", "--trust-pickle", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx").is_file()


def test_a_checkpoint_is_safetensors_and_rebuilds_a_pruned_model_exactly(tmp_path, digits):
    import torch_pruning as tp

    from compress.pruning import prune_copy  # noqa: F401  (the pruning entry point exists)

    model = build_model(ModelSpec("resnet", 0.5, 8), digits.input_shape, digits.num_classes).eval()
    example = torch.from_numpy(digits.test.x[:2])
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    conv = model.stages[1][0].conv1
    graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 1, 2]).prune()
    path = tmp_path / "pruned.safetensors"
    save_model(model, path)
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, no pickle
    rebuilt = load_model(path)
    x = torch.from_numpy(digits.test.x[:8])
    assert torch.equal(rebuilt(x), model(x))
    assert rebuilt.stages[1][0].conv1.out_channels == conv.out_channels
    save_model(rebuilt, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()  # same model, same bytes


def test_quantize_leaves_the_working_directory_empty(tmp_path, monkeypatch, cnn_onnx_path):
    empty = tmp_path / "cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)
    out = tmp_path / "out" / "q.onnx"
    ok = invoke("quantize", cnn_onnx_path, "--data", "digits", "--out", out, "--set", "quantize.calibration_samples=16",
                "--set", "quantize.mode=static", "--set", "quantize.layer_report=false", "--set", "quantize.accuracy_aware=false")
    assert ok.exit_code == 0, ok.output
    assert out.is_file() and list(empty.iterdir()) == []
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(cnn_onnx_path.read_bytes()[:500])
    failed = invoke("quantize", broken, "--data", "digits", "--out", tmp_path / "out" / "b.onnx")
    assert failed.exit_code == 2 and "Traceback" not in failed.output
    wrong = invoke("quantize", cnn_onnx_path, "--data", "mnist", "--out", tmp_path / "out" / "w.onnx")
    assert wrong.exit_code == 2 and "wrong input shape" in wrong.output
    assert list(empty.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["q.onnx"]


TEACHER = ["teacher", "--data", "digits", "--set", "teacher.source=train", "--set", "teacher.model.arch=mlp",
           "--set", "teacher.train.epochs=2", "--set", "teacher.train.optimizer=adamw", "--set", "teacher.train.lr=0.003"]
DISTILL = ["--data", "digits", "--set", "distill.student.arch=mlp", "--set", "distill.student.width=0.5",
           "--set", "distill.train.epochs=1", "--set", "distill.train.optimizer=adamw", "--set", "distill.train.lr=0.003"]


@pytest.mark.slow
def test_per_stage_resume_reruns_when_an_input_file_changes(tmp_path):
    assert invoke(*TEACHER, "--out", tmp_path / "t").exit_code == 0
    teacher = tmp_path / "t" / "teacher.safetensors"
    distill = ["distill", "--teacher", teacher, *DISTILL, "--out", tmp_path / "s"]
    assert invoke(*distill).exit_code == 0
    refused = invoke(*distill)
    assert refused.exit_code == 2 and "already exists: pass --resume" in refused.output
    unchanged = invoke(*distill, "--resume")
    assert unchanged.exit_code == 0 and "[distill] unchanged since the last run: reused" in unchanged.output
    changed = invoke(*TEACHER, "--set", "teacher.train.seed=1", "--out", tmp_path / "t", "--force")
    assert changed.exit_code == 0
    rerun = invoke(*distill, "--resume")
    assert rerun.exit_code == 0 and "[distill] running" in rerun.output


def test_a_config_files_data_section_is_not_overridden_by_a_default(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[data]\nsource = "digits"\n[teacher]\nsource = "train"\n[teacher.model]\narch = "mlp"\n'
                      "[teacher.train]\nepochs = 1\n")
    result = invoke("teacher", "--config", config, "--out", tmp_path / "t")
    assert result.exit_code == 0, result.output
    import json

    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["config"]["data"]["source"] == "digits"
    assert np.isfinite(manifest["stages"]["teacher"]["metrics"]["test_accuracy"])
