"""stages/teacher.py: train a teacher, load a user's (compress checkpoint, TorchScript, factory + state_dict),
the packaged default teacher, and the errors for mismatched weights or shapes."""
from __future__ import annotations

import pytest
import torch

from compress.checkpoint import load_model, save_model
from compress.data import DataConfig
from compress.errors import CompressError
from compress.train import TrainConfig, evaluate
from compress.zoo import MLP, ModelSpec, ResNet, build_model
from stages.teacher import TeacherConfig, load_pretrained, pretrained_matches, pretrained_path, run

DIGITS = DataConfig(source="digits")
FAST = TrainConfig(epochs=4, optimizer="adamw", lr=0.003)


def digits_mlp() -> torch.nn.Module:
    """A user's factory (imported by name as tests.stages.test_teacher:digits_mlp)."""
    return MLP(64, 10, width=0.5)


def test_train_a_teacher(tmp_path, digits):
    cfg = TeacherConfig(source="train", model=ModelSpec("mlp", 0.5), train=FAST)
    result = run(cfg, {}, digits, tmp_path)
    assert result.outputs == {"teacher": tmp_path / "teacher.safetensors"}
    model = load_model(result.outputs["teacher"])
    assert isinstance(model, MLP)
    m = result.metrics
    assert m["source"] == "train" and len(m["history"]) == 4 and 1 <= m["best_epoch"] <= 4
    assert m["test_accuracy"] == pytest.approx(evaluate(model, digits.test)) and m["test_accuracy"] >= 0.85
    assert m["params"] == sum(p.numel() for p in model.parameters()) and m["macs"] > 0


def test_training_is_deterministic_for_a_seed(tmp_path, digits):
    cfg = TeacherConfig(source="train", model=ModelSpec("mlp", 0.25), train=TrainConfig(epochs=1, optimizer="adamw", lr=0.003))
    first = load_model(run(cfg, {}, digits, tmp_path / "a").outputs["teacher"]).state_dict()
    second = load_model(run(cfg, {}, digits, tmp_path / "b").outputs["teacher"]).state_dict()
    assert all(torch.equal(v, second[k]) for k, v in first.items())


def test_auto_trains_when_no_packaged_weights_fit(tmp_path, digits):
    cfg = TeacherConfig(source="auto", model=ModelSpec("mlp", 0.25), train=TrainConfig(epochs=1))
    assert not pretrained_path(cfg.model, DIGITS).exists()
    assert run(cfg, {}, digits, tmp_path).metrics["source"] == "train"


def test_teacher_from_a_compress_checkpoint(tmp_path, digits, mlp_teacher_path):
    result = run(TeacherConfig(source="file", path=str(mlp_teacher_path)), {}, digits, tmp_path)
    assert result.metrics["source"] == "file" and result.metrics["test_accuracy"] >= 0.9
    copied, original = load_model(result.outputs["teacher"]), load_model(mlp_teacher_path)
    assert all(torch.equal(v, copied.state_dict()[k]) for k, v in original.state_dict().items())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated, TorchScript files still exist
def test_teacher_from_torchscript(tmp_path, digits, mlp_teacher_path):
    scripted = torch.jit.script(load_model(mlp_teacher_path))
    path = tmp_path / "teacher.ts.pt"
    torch.jit.save(scripted, str(path))
    result = run(TeacherConfig(source="file", path=str(path)), {}, digits, tmp_path / "out")
    loaded = load_model(result.outputs["teacher"])
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert result.metrics["test_accuracy"] == pytest.approx(evaluate(load_model(mlp_teacher_path), digits.test))
    # Size is measured for TorchScript too (no forward hooks there: MACs come from its ONNX graph).
    assert result.metrics["params"] == sum(p.numel() for p in scripted.parameters()) and result.metrics["macs"] > 0


def test_teacher_from_a_factory_and_state_dict(tmp_path, digits):
    weights = tmp_path / "state.pt"
    torch.manual_seed(1)
    torch.save(digits_mlp().state_dict(), weights)
    cfg = TeacherConfig(source="file", path=str(weights), factory="tests.stages.test_teacher:digits_mlp")
    result = run(cfg, {}, digits, tmp_path / "out")
    loaded = load_model(result.outputs["teacher"])
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in torch.load(weights).items())


def test_factory_with_a_state_dict_of_another_model(tmp_path, digits):
    weights = tmp_path / "state.pt"
    torch.save(MLP(64, 10, width=1.0).state_dict(), weights)
    cfg = TeacherConfig(source="file", path=str(weights), factory="tests.stages.test_teacher:digits_mlp")
    with pytest.raises(CompressError, match="does not match the model from tests.stages.test_teacher:digits_mlp"):
        run(cfg, {}, digits, tmp_path / "out")
    with pytest.raises(CompressError, match="cannot import teacher factory"):
        run(TeacherConfig(source="file", path=str(weights), factory="tests.nowhere:build"), {}, digits, tmp_path / "o")


@pytest.mark.parametrize("model,message", [
    (build_model(ModelSpec("mlp"), (1, 28, 28), 10), r"the teacher cannot take inputs of shape \(2, 1, 8, 8\)"),
    (build_model(ModelSpec("mlp"), (1, 8, 8), 5), r"the teacher outputs shape \(2, 5\), expected \(batch, 10\)"),
])
def test_teacher_file_that_does_not_fit_the_data(tmp_path, digits, model, message):
    path = tmp_path / "teacher.pt"
    save_model(model, path)
    with pytest.raises(CompressError, match=message):
        run(TeacherConfig(source="file", path=str(path)), {}, digits, tmp_path / "out")
    assert not (tmp_path / "out" / "teacher.safetensors").exists()


def test_packaged_teacher_refuses_another_split(tmp_path, digits):
    """Packaged weights saw the default mnist split's training images: on another split they would have seen
    test images, so they must be refused, and auto must fall back to training."""
    spec = TeacherConfig().model
    other_split = DataConfig(source="mnist", val_fraction=0.2)
    assert pretrained_path(spec, other_split).is_file()  # same file name, different split
    assert not pretrained_matches(TeacherConfig(), other_split)
    with pytest.raises(CompressError, match="packaged teacher was trained on split .* not this one: set teacher.source"):
        load_pretrained(spec, other_split, digits)
    with pytest.raises(CompressError, match="no packaged teacher for digits / resnet width 1"):
        run(TeacherConfig(source="pretrained"), {}, digits, tmp_path)


def test_packaged_default_teacher_on_mnist(tmp_path, mnist):
    """The default pipeline's teacher: packaged for the default split, at least 97% on its test split."""
    assert pretrained_matches(TeacherConfig(), DataConfig())
    result = run(TeacherConfig(source="auto"), {}, mnist, tmp_path)
    assert result.metrics["source"] == "pretrained"
    assert result.metrics["test_accuracy"] >= 0.97
    assert isinstance(load_model(result.outputs["teacher"]), ResNet)


def test_config_checks():
    with pytest.raises(ValueError, match="teacher.source must be one of auto, pretrained, train, file"):
        TeacherConfig(source="hub")
    with pytest.raises(ValueError, match="needs teacher.path"):
        TeacherConfig(source="file")
