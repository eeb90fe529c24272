"""Knowledge distillation (Hinton et al. 2015): train a smaller student on the teacher's softened
outputs, offline (frozen teacher) or online (teacher and student learn together), optionally with
a FitNets feature hint, starting from the teacher's most important channels where shapes allow."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from compress.checkpoint import load_model, save_model
from compress.data import Dataset
from compress.distillation import MODES, distill, init_student, train_supervised
from compress.manifest import StageResult
from compress.metrics import model_stats
from compress.train import TrainConfig, evaluate, seed_everything
from compress.zoo import ModelSpec, build_model, check_fits_data


@dataclass
class DistillConfig:
    """Distill a student from the teacher."""

    student: ModelSpec = field(default_factory=lambda: ModelSpec("resnet", 1.0, 8))  # student architecture
    temperature: float = 4.0  # T: softens both distributions; the KL term is scaled by T^2
    alpha: float = 0.9  # weight of the soft (KL) term; 1 - alpha weighs hard-label cross-entropy
    mode: str = "offline"  # offline: frozen teacher; online: teacher trained alongside (mutual learning)
    online_teacher_alpha: float = 0.1  # online mode: weight of the student's KL in the teacher's loss
    init_from_teacher: bool = True  # start from the teacher (its first blocks, most important channels) when the architectures match
    hint: str = ""  # FitNets hint "teacher_module:student_module" (e.g. "stages.1:stages.1"); empty = none
    hint_weight: float = 1.0  # weight of the hint's MSE term
    baseline: bool = False  # also train the same student without distillation, to show what KD bought
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10))

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")
        for name in ("alpha", "online_teacher_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"distill.{name} must be within [0, 1], got {getattr(self, name)}")
        if self.mode not in MODES:
            raise ValueError(f"distill.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.hint and self.hint.count(":") != 1:
            raise ValueError(f"distill.hint must look like 'teacher_module:student_module', got {self.hint!r}")


def run(cfg: DistillConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path) -> StageResult:
    """Distill a student from ``inputs['teacher']`` into ``out_dir/student.safetensors``."""
    teacher_path = inputs["teacher"]
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher = load_model(teacher_path)
    check_fits_data(teacher, data, f"teacher {teacher_path}")
    seed_everything(cfg.train.seed)
    student = build_model(cfg.student, data.input_shape, data.num_classes)
    init_note = init_student(student, teacher, data.input_shape) if cfg.init_from_teacher else "random init (disabled)"
    initial_state = copy.deepcopy(student.state_dict())

    metrics: dict = {"init": init_note, "mode": cfg.mode, "temperature": cfg.temperature, "alpha": cfg.alpha}
    result = distill(student, teacher, data, cfg.train, cfg.temperature, cfg.alpha, cfg.mode,
                     cfg.online_teacher_alpha, cfg.hint, cfg.hint_weight)
    save_model(student, out_dir / "student.safetensors")
    outputs = {"student": out_dir / "student.safetensors"}
    metrics["student"] = {"val_accuracy": result.best_val_accuracy, "test_accuracy": evaluate(student, data.test),
                          "best_epoch": result.best_epoch, "train_s": round(result.wall_s, 2),
                          "history": result.history, **model_stats(student, data.input_shape)}
    if cfg.mode == "online":
        save_model(teacher, out_dir / "teacher_online.safetensors")
        outputs["teacher_online"] = out_dir / "teacher_online.safetensors"
    if cfg.baseline:
        # Same architecture, same start, same schedule, hard labels only: the difference is what KD bought.
        baseline = build_model(cfg.student, data.input_shape, data.num_classes)
        baseline.load_state_dict(initial_state)
        base_result = train_supervised(baseline, data, cfg.train, "baseline")
        save_model(baseline, out_dir / "student_baseline.safetensors")
        outputs["student_baseline"] = out_dir / "student_baseline.safetensors"
        metrics["student_baseline"] = {"val_accuracy": base_result.best_val_accuracy,
                                       "test_accuracy": evaluate(baseline, data.test),
                                       "best_epoch": base_result.best_epoch, "train_s": round(base_result.wall_s, 2)}
    return StageResult(outputs, metrics)


