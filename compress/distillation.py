"""Knowledge distillation as a training loop the stages share: the Hinton loss, training a student
against a teacher (offline or online, with an optional FitNets hint), training on hard labels alone,
and starting a student from its teacher's weights."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from compress.data import Dataset
from compress.errors import CompressError
from compress.train import TrainConfig, fit

MODES = ("offline", "online")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    The T^2 factor keeps the soft-target gradients at the same scale as the hard ones when T changes."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean") * temperature ** 2
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard


def distill(student: nn.Module, teacher: nn.Module, data: Dataset, train: TrainConfig, temperature: float,
            alpha: float, mode: str = "offline", online_teacher_alpha: float = 0.1, hint_spec: str = "",
            hint_weight: float = 1.0, desc: str = "distill"):
    """Train ``student`` against ``teacher`` in place; returns the TrainResult. ``mode`` online trains the
    teacher alongside, weighing the student's KL in its loss by ``online_teacher_alpha``."""
    online = mode == "online"
    if not online:
        teacher.eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
    hint = FeatureHint(hint_spec, teacher, student, data.input_shape) if hint_spec else None

    def loss_fn(x: torch.Tensor, y: torch.Tensor):
        with torch.set_grad_enabled(online):
            teacher_logits = teacher(x)
        student_logits = student(x)
        loss = distillation_loss(student_logits, teacher_logits.detach(), y, temperature, alpha)
        if online:
            loss = loss + distillation_loss(teacher_logits, student_logits.detach(), y, temperature,
                                            online_teacher_alpha)
        if hint is not None:
            loss = loss + hint_weight * hint.loss()
        return loss, student_logits

    extra = ([teacher] if online else []) + ([hint.regressor] if hint else [])
    try:
        return fit(student, data, train, loss_fn, desc, extra_modules=extra,
                   frozen_modules=[] if online else [teacher])
    finally:
        if hint is not None:
            hint.remove()
        if not online:
            teacher.eval()  # fit() puts extra modules in train mode; the frozen teacher never is


def train_supervised(model: nn.Module, data: Dataset, cfg: TrainConfig, desc: str):
    def loss_fn(x: torch.Tensor, y: torch.Tensor):
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    return fit(model, data, cfg, loss_fn, desc)


class FeatureHint:
    """FitNets (Romero et al. 2015): the student's intermediate feature, through a learned 1x1
    regressor, is pulled towards the teacher's feature at a chosen layer (MSE)."""

    def __init__(self, spec: str, teacher: nn.Module, student: nn.Module, input_shape: tuple[int, ...]):
        teacher_name, student_name = spec.split(":")
        self._features: dict[str, torch.Tensor] = {}
        self._handles = [self._hook(teacher, teacher_name, "teacher"), self._hook(student, student_name, "student")]
        with torch.no_grad():
            was_training = student.training
            student.eval()
            teacher(torch.zeros(2, *input_shape))
            student(torch.zeros(2, *input_shape))
            student.train(was_training)
        t_feat, s_feat = self._features["teacher"], self._features["student"]
        if t_feat.dim() != s_feat.dim():
            raise CompressError(f"hint layers {spec!r} give features of different ranks {tuple(t_feat.shape)} and {tuple(s_feat.shape)}")
        if s_feat.dim() == 4:
            self.regressor: nn.Module = nn.Conv2d(s_feat.shape[1], t_feat.shape[1], 1)
        else:
            self.regressor = nn.Linear(s_feat.shape[1], t_feat.shape[1])

    def _hook(self, model: nn.Module, name: str, key: str):
        modules = dict(model.named_modules())
        if name not in modules:
            options = ", ".join(n for n in modules if n and n.count(".") <= 1)
            raise CompressError(f"hint layer {name!r} not found in the {key}; modules include: {options}")

        def store(_module, _inputs, output):
            self._features[key] = output

        return modules[name].register_forward_hook(store)

    def loss(self) -> torch.Tensor:
        student_feature = self.regressor(self._features["student"])
        teacher_feature = self._features["teacher"].detach()
        if student_feature.dim() == 4 and student_feature.shape[-2:] != teacher_feature.shape[-2:]:
            teacher_feature = F.adaptive_avg_pool2d(teacher_feature, student_feature.shape[-2:])
        return F.mse_loss(student_feature, teacher_feature)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def init_student(student: nn.Module, teacher: nn.Module, input_shape: tuple[int, ...]) -> str:
    """Copy the teacher into the student when the student is the teacher's architecture at a smaller
    width and/or depth: the first blocks of each stage the student has (a shallower ResNet keeps the
    teacher's first blocks, as DistilBERT keeps a subset of its teacher's layers), then the most important
    channels of those (L1 norm, dependency-aware). Returns what was done."""
    from compress.pruning import shrink_to_match

    if type(student) is not type(teacher):
        return f"random init (teacher is {type(teacher).__name__}, student {type(student).__name__})"
    source = copy.deepcopy(teacher).eval()  # eval: the shape checks' forward passes must not move BN statistics
    dropped = drop_extra_blocks(source, student)
    try:
        with torch.no_grad():
            source(torch.zeros(1, *input_shape))
        shrunk = shrink_to_match(source, student, input_shape)
    except CompressError as exc:
        return f"random init ({exc})"
    except RuntimeError as exc:  # the kept blocks do not chain (shapes change inside the dropped ones)
        return f"random init (the teacher without its last {dropped} block(s) does not run: {str(exc).splitlines()[0]})"
    student.load_state_dict(shrunk.state_dict())
    note = "teacher's most important channels (L1)"
    return f"teacher's first blocks ({dropped} dropped), {note}" if dropped else note


def drop_extra_blocks(model: nn.Module, smaller: nn.Module) -> int:
    """Cut every nn.Sequential of ``model`` to the length of the same-named one in ``smaller`` (keeping the
    first entries, which hold each stage's stride and shortcut). Returns how many blocks were dropped."""
    sizes = {name: len(module) for name, module in smaller.named_modules() if isinstance(module, nn.Sequential)}
    dropped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Sequential) and name in sizes and len(module) > sizes[name]:
            dropped += len(module) - sizes[name]
            del module[sizes[name]:]
    return dropped
