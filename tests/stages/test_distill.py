"""stages/distill.py: the Hinton loss against a hand computation, offline/online distillation, a FitNets
hint, the no-distillation baseline, and student initialisation from the teacher's most important channels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress.checkpoint import load_model
from compress.distillation import FeatureHint, distill, distillation_loss, init_student
from compress.errors import CompressError
from compress.fsutil import sha256
from compress.train import TrainConfig, evaluate
from compress.zoo import MLP, ModelSpec, ResNet, build_model
from stages.distill import DistillConfig, run


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _hand_loss(s: np.ndarray, t: np.ndarray, y: np.ndarray, temperature: float, alpha: float) -> float:
    """alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE, written out with numpy (batch mean)."""
    log_ps, log_pt = _log_softmax(s / temperature), _log_softmax(t / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean()
    ce = -_log_softmax(s)[np.arange(len(y)), y].mean()
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    return rng.normal(0, 3, (16, 10)), rng.normal(0, 3, (16, 10)), rng.integers(0, 10, 16)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_loss_matches_hand_computation(logits, temperature, alpha):
    s, t, y = logits
    loss = distillation_loss(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y), temperature, alpha)
    assert loss.item() == pytest.approx(_hand_loss(s, t, y, temperature, alpha), rel=1e-10)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_alpha_zero_is_plain_cross_entropy_whatever_the_teacher(logits, temperature):
    s, t, y = (torch.from_numpy(a) for a in logits)
    expected = F.cross_entropy(s, y)
    assert distillation_loss(s, t, y, temperature, 0.0).item() == pytest.approx(expected.item(), rel=1e-12)
    assert distillation_loss(s, -3 * t, y, temperature, 0.0).item() == pytest.approx(expected.item(), rel=1e-12)


def test_soft_term_is_scaled_by_t_squared(logits):
    s, t, y = (torch.from_numpy(a) for a in logits)
    for temperature in (2.0, 5.0):
        kl = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
        soft = distillation_loss(s, t, y, temperature, 1.0)
        assert soft.item() == pytest.approx(temperature ** 2 * kl.item(), rel=1e-12)


def test_t_squared_keeps_soft_gradients_at_the_same_scale(logits):
    """Hinton et al.: at high T the soft gradient is (s - t) / (classes * batch) for zero-mean logits, whatever T;
    without the T^2 factor it would shrink as 1/T^2."""
    s_np, t_np, y_np = logits
    s_np, t_np = s_np - s_np.mean(1, keepdims=True), t_np - t_np.mean(1, keepdims=True)
    expected = (s_np - t_np) / (s_np.shape[1] * s_np.shape[0])
    grads = []
    for temperature in (1000.0, 4000.0):
        s = torch.tensor(s_np, requires_grad=True)
        distillation_loss(s, torch.from_numpy(t_np), torch.from_numpy(y_np), temperature, 1.0).backward()
        grads.append(s.grad.numpy())
    for grad in grads:
        np.testing.assert_allclose(grad, expected, atol=0.01 * np.abs(expected).max())
    np.testing.assert_allclose(grads[0], grads[1], atol=0.01 * np.abs(expected).max())


def test_config_checks():
    with pytest.raises(ValueError, match="distill.temperature must be > 0"):
        DistillConfig(temperature=0)
    with pytest.raises(ValueError, match=r"distill.alpha must be within \[0, 1\]"):
        DistillConfig(alpha=-0.1)
    with pytest.raises(ValueError, match="distill.mode must be one of offline, online"):
        DistillConfig(mode="mutual")
    with pytest.raises(ValueError, match="distill.hint must look like 'teacher_module:student_module'"):
        DistillConfig(hint="stages.1")


FAST = TrainConfig(epochs=3, optimizer="adamw", lr=0.003)


def _mlp_cfg(**kwargs) -> DistillConfig:
    return DistillConfig(student=ModelSpec("mlp", 0.5), train=FAST, **kwargs)


def test_offline_distillation_trains_a_smaller_student_and_leaves_the_teacher(tmp_path, digits, mlp_teacher_path):
    teacher_hash = sha256(mlp_teacher_path)
    result = run(_mlp_cfg(), {"teacher": mlp_teacher_path}, digits, tmp_path)
    assert set(result.outputs) == {"student"}
    student = load_model(result.outputs["student"])
    assert isinstance(student, MLP) and student.features[1].out_features == 64 and student.features[3].out_features == 32
    metrics = result.metrics
    assert metrics["mode"] == "offline" and metrics["init"] == "teacher's most important channels (L1)"
    assert metrics["student"]["test_accuracy"] == pytest.approx(evaluate(student, digits.test))
    assert metrics["student"]["test_accuracy"] >= 0.85
    assert len(metrics["student"]["history"]) == 3
    assert metrics["student"]["params"] < sum(p.numel() for p in load_model(mlp_teacher_path).parameters())
    assert sha256(mlp_teacher_path) == teacher_hash


def test_offline_teacher_is_frozen(digits, mlp_teacher_path):
    teacher = load_model(mlp_teacher_path)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_model(ModelSpec("mlp", 0.5), digits.input_shape, digits.num_classes)
    distill(student, teacher, digits, TrainConfig(epochs=1, optimizer="adamw", lr=0.003), 4.0, 0.9)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not teacher.training


def test_online_distillation_trains_the_teacher_too(tmp_path, digits, mlp_teacher_path):
    result = run(_mlp_cfg(mode="online"), {"teacher": mlp_teacher_path}, digits, tmp_path)
    assert set(result.outputs) == {"student", "teacher_online"}
    original, online = load_model(mlp_teacher_path), load_model(result.outputs["teacher_online"])
    changed = [k for k, v in original.state_dict().items() if not torch.equal(v, online.state_dict()[k])]
    assert changed, "the online teacher should have learned alongside the student"
    assert result.metrics["mode"] == "online" and result.metrics["student"]["test_accuracy"] >= 0.85
    assert evaluate(online, digits.test) >= 0.85


def test_baseline_trains_the_same_student_without_distillation(tmp_path, digits, mlp_teacher_path):
    result = run(_mlp_cfg(baseline=True), {"teacher": mlp_teacher_path}, digits, tmp_path)
    assert set(result.outputs) == {"student", "student_baseline"}
    student, baseline = load_model(result.outputs["student"]), load_model(result.outputs["student_baseline"])
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    assert shapes == {k: v.shape for k, v in baseline.state_dict().items()}
    assert any(not torch.equal(v, baseline.state_dict()[k]) for k, v in student.state_dict().items())
    base = result.metrics["student_baseline"]
    assert base["test_accuracy"] == pytest.approx(evaluate(baseline, digits.test))
    assert base["test_accuracy"] >= 0.8 and set(base) >= {"val_accuracy", "best_epoch", "train_s"}


def test_fitnets_hint_adds_a_feature_loss(digits, cnn_teacher_path):
    teacher = load_model(cnn_teacher_path)
    student = build_model(ModelSpec("resnet", 0.25, 8), digits.input_shape, digits.num_classes)
    hint = FeatureHint("stages.1:stages.1", teacher, student, digits.input_shape)
    assert isinstance(hint.regressor, torch.nn.Conv2d)
    assert (hint.regressor.in_channels, hint.regressor.out_channels) == (16, 32)  # student width -> teacher width
    x = torch.from_numpy(digits.train.x[:8])
    teacher(x)
    student(x)
    loss = hint.loss()
    assert loss.item() > 0
    loss.backward()
    assert student.stages[1][0].conv1.weight.grad is not None and hint.regressor.weight.grad is not None
    hint.remove()
    assert all(not m._forward_hooks for m in list(teacher.modules()) + list(student.modules()))


def test_distillation_with_a_hint_trains_and_differs_from_without(digits, cnn_teacher_path):
    one_epoch = TrainConfig(epochs=1, lr=0.05, augment=False)
    students = {}
    for hint in ("", "stages.1:stages.1"):
        torch.manual_seed(0)
        student = build_model(ModelSpec("resnet", 0.25, 8), digits.input_shape, digits.num_classes)
        result = distill(student, load_model(cnn_teacher_path), digits, one_epoch, 4.0, 0.9, hint_spec=hint,
                         hint_weight=5.0)
        assert result.best_val_accuracy >= 0.5
        assert all(not m._forward_hooks for m in student.modules())  # hooks removed after training
        students[hint] = student
    plain, hinted = (s.state_dict() for s in students.values())
    assert any(not torch.equal(plain[k], hinted[k]) for k in plain)


def test_hint_on_a_missing_layer_lists_the_modules(digits, cnn_teacher_path):
    student = build_model(ModelSpec("resnet", 0.25, 8), digits.input_shape, digits.num_classes)
    with pytest.raises(CompressError, match="hint layer 'stages.9' not found in the student; modules include: stem"):
        FeatureHint("stages.1:stages.9", load_model(cnn_teacher_path), student, digits.input_shape)


def test_init_keeps_the_teachers_most_important_channels_mlp(digits):
    """Make chosen channels of an MLP teacher dominant by magnitude: the student must get exactly those."""
    torch.manual_seed(0)
    teacher = build_model(ModelSpec("mlp", 1.0), digits.input_shape, digits.num_classes)  # 64-128-64-10
    rng = np.random.default_rng(0)
    keep1, keep2 = np.sort(rng.choice(128, 64, replace=False)), np.sort(rng.choice(64, 32, replace=False))
    with torch.no_grad():
        layer1, layer2, head = teacher.features[1], teacher.features[3], teacher.classifier
        layer1.weight[keep1] *= 1e6
        layer1.bias[keep1] *= 1e6
        layer2.weight[keep2] *= 1e3
        layer2.bias[keep2] *= 1e3
    student = build_model(ModelSpec("mlp", 0.5), digits.input_shape, digits.num_classes)  # 64-64-32-10
    assert init_student(student, teacher, digits.input_shape) == "teacher's most important channels (L1)"
    k1, k2 = torch.from_numpy(keep1), torch.from_numpy(keep2)
    assert torch.equal(student.features[1].weight, layer1.weight[k1])
    assert torch.equal(student.features[1].bias, layer1.bias[k1])
    assert torch.equal(student.features[3].weight, layer2.weight[k2][:, k1])
    assert torch.equal(student.features[3].bias, layer2.bias[k2])
    assert torch.equal(student.classifier.weight, head.weight[:, k2])
    assert torch.equal(student.classifier.bias, head.bias)


def _matching_rows(small: torch.Tensor, big: torch.Tensor) -> list[int]:
    """Index into ``big`` of each row of ``small`` (rows compared exactly)."""
    flat_small, flat_big = small.reshape(len(small), -1), big.reshape(len(big), -1)
    index = []
    for row in flat_small:
        hits = [i for i in range(len(flat_big)) if torch.equal(flat_big[i], row)]
        assert len(hits) == 1, "every student channel must be a copy of exactly one teacher channel"
        index.append(hits[0])
    return index


def test_init_keeps_residual_channels_in_step_resnet(digits, cnn_teacher_path):
    teacher = load_model(cnn_teacher_path)  # ResNet-8 at width 0.5: 16-32-64 channels
    student = build_model(ModelSpec("resnet", 0.25, 8), digits.input_shape, digits.num_classes)  # 8-16-32
    assert init_student(student, teacher, digits.input_shape) == "teacher's most important channels (L1)"
    expected = {k: v.shape for k, v in build_model(ModelSpec("resnet", 0.25, 8), (1, 8, 8), 10).state_dict().items()}
    assert {k: v.shape for k, v in student.state_dict().items()} == expected
    t, s = teacher, student
    stem = _matching_rows(s.stem[0].weight, t.stem[0].weight)
    assert stem == sorted(stem) and len(stem) == 8
    assert torch.equal(s.stem[1].running_mean, t.stem[1].running_mean[stem])
    block_t, block_s = t.stages[0][0], s.stages[0][0]
    mid = _matching_rows(block_s.conv1.weight, block_t.conv1.weight[:, stem])
    # The identity shortcut adds the stem's output to conv2's: conv2 must keep the stem's channels.
    assert torch.equal(block_s.conv2.weight, block_t.conv2.weight[stem][:, mid])
    assert torch.equal(block_s.bn2.weight, block_t.bn2.weight[stem])
    head_in = _matching_rows(s.classifier.weight.T, t.classifier.weight.T)
    assert torch.equal(s.classifier.bias, t.classifier.bias) and len(head_in) == 32
    with torch.no_grad():
        assert s(torch.from_numpy(digits.test.x[:4])).shape == (4, 10)


def test_init_from_a_deeper_teacher_keeps_the_first_block_of_each_stage(digits):
    torch.manual_seed(0)
    teacher = build_model(ModelSpec("resnet", 0.5, 14), digits.input_shape, digits.num_classes)  # 2 blocks per stage
    student = build_model(ModelSpec("resnet", 0.5, 8), digits.input_shape, digits.num_classes)  # 1 block per stage
    note = init_student(student, teacher, digits.input_shape)
    assert note == "teacher's first blocks (3 dropped), teacher's most important channels (L1)"
    assert torch.equal(student.stem[0].weight, teacher.stem[0].weight)
    for stage in range(3):
        for name, value in student.stages[stage][0].state_dict().items():
            assert torch.equal(value, teacher.stages[stage][0].state_dict()[name]), (stage, name)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert len(teacher.stages[0]) == 2  # the teacher itself is untouched


def test_init_falls_back_to_random_for_another_architecture(digits, mlp_teacher_path):
    student = build_model(ModelSpec("resnet", 0.25, 8), digits.input_shape, digits.num_classes)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    note = init_student(student, load_model(mlp_teacher_path), digits.input_shape)
    assert note == "random init (teacher is MLP, student ResNet)"
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert isinstance(student, ResNet)


def test_init_disabled_is_recorded(tmp_path, digits, mlp_teacher_path):
    cfg = DistillConfig(student=ModelSpec("mlp", 0.5), init_from_teacher=False, train=TrainConfig(epochs=1))
    assert run(cfg, {"teacher": mlp_teacher_path}, digits, tmp_path).metrics["init"] == "random init (disabled)"
