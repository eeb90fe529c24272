"""Knowledge distillation (Hinton et al. 2015): train a smaller student on the teacher's softened
outputs, offline (frozen teacher) or online (teacher and student learn together), optionally with
a FitNets feature hint, starting from the teacher's most important channels where shapes allow.

Text data: a DistilBERT-style student (``student_layers`` of the teacher's, initialised from every other
teacher layer; optionally narrower) trained with Hinton KD plus optional TinyBERT hidden-state and
attention losses (``compress.text_models``)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from compress import text_run
from compress.checkpoint import load_model, save_model
from compress.data import Dataset
from compress.distillation import MODES, distill, init_student, train_supervised
from compress.manifest import StageResult
from compress.metrics import model_stats
from compress.text_models import text_train_config
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
    # Text data only (student, mode, init_from_teacher, hint and train above are for images):
    student_layers: int = 0  # transformer layers of the student; 0 = half the teacher's
    student_hidden: int = 0  # hidden size of the student; 0 = the teacher's (narrower keeps its most used dimensions)
    student_heads: int = 0  # attention heads of the student (must divide its hidden size); 0 = the teacher's
    student_ffn: int = 0  # FFN inner size of the student; 0 = the teacher's (narrower keeps its largest neurons)
    student_init: str = "teacher"  # teacher: embeddings and evenly spaced teacher layers copied; random: from scratch
    hidden_weight: float = 0.0  # TinyBERT hidden-state MSE (through a learned projection); 0 = off
    attention_weight: float = 0.0  # TinyBERT attention-map MSE; 0 = off
    text_train: TrainConfig = field(default_factory=lambda: text_train_config(epochs=4, lr=1e-3))  # the student's training

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")
        for name in ("alpha", "online_teacher_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"distill.{name} must be within [0, 1], got {getattr(self, name)}")
        if self.mode not in MODES:
            raise ValueError(f"distill.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        sizes = {n: getattr(self, n) for n in ("student_layers", "student_hidden", "student_heads", "student_ffn")}
        negative = [f"{n}={v}" for n, v in sizes.items() if v < 0]
        if negative:
            raise ValueError(f"distill.{negative[0]}: student sizes must be >= 0 (0 = the default)")
        if self.student_init not in ("teacher", "random"):
            raise ValueError(f"distill.student_init must be 'teacher' or 'random', got {self.student_init!r}")
        if self.hidden_weight < 0 or self.attention_weight < 0:
            raise ValueError("distill.hidden_weight and attention_weight must be >= 0")
        if self.hint and self.hint.count(":") != 1:
            raise ValueError(f"distill.hint must look like 'teacher_module:student_module', got {self.hint!r}")


def run(cfg: DistillConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path) -> StageResult:
    """Distill a student from ``inputs['teacher']`` into ``out_dir/student.safetensors``."""
    if text_run.is_text(data):
        return run_text(cfg, inputs, data, out_dir)
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
        outputs["student_baseline"] = _save_baseline(baseline, out_dir)
        metrics["student_baseline"] = _baseline_record(baseline, base_result, data)
    return StageResult(outputs, metrics)




def run_text(cfg: DistillConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path) -> StageResult:
    """A DistilBERT-style student of the text teacher ``inputs['teacher']``, and with ``baseline`` the same
    student trained on the labels alone."""
    from compress.text_models import check_inputs, distill_text, make_student

    teacher_path = inputs["teacher"]
    out_dir.mkdir(parents=True, exist_ok=True)
    data = text_run.with_tokenizer_of(data, teacher_path)
    teacher = load_model(teacher_path)
    check_inputs(teacher, data)
    seed_everything(cfg.text_train.seed)
    student, init_note = make_student(teacher, cfg.student_layers or None, cfg.student_hidden or None, cfg.student_init,
                                      cfg.student_heads or None, cfg.student_ffn or None)
    initial_state = copy.deepcopy(student.state_dict())
    result = distill_text(student, teacher, data, cfg.text_train, cfg.temperature, cfg.alpha, cfg.hidden_weight,
                          cfg.attention_weight)
    save_model(student, out_dir / "student.safetensors")
    outputs = {"student": out_dir / "student.safetensors", "tokenizer": text_run.write_tokenizer(data, out_dir)}
    metrics: dict = {"init": init_note, "mode": "offline", "temperature": cfg.temperature, "alpha": cfg.alpha,
                     "hidden_weight": cfg.hidden_weight, "attention_weight": cfg.attention_weight,
                     "student": {"val_accuracy": result.best_val_accuracy, "test_accuracy": evaluate(student, data.test),
                                 "best_epoch": result.best_epoch, "train_s": round(result.wall_s, 2),
                                 "history": result.history, **model_stats(student, data.input_shape)}}
    if cfg.baseline:
        baseline = copy.deepcopy(student)
        baseline.load_state_dict(initial_state)
        base_result = distill_text(baseline, None, data, cfg.text_train, desc="baseline")
        outputs["student_baseline"] = _save_baseline(baseline, out_dir)
        metrics["student_baseline"] = _baseline_record(baseline, base_result, data)
    return StageResult(outputs, metrics)


def _save_baseline(baseline, out_dir: Path) -> Path:
    save_model(baseline, out_dir / "student_baseline.safetensors")
    return out_dir / "student_baseline.safetensors"


def _baseline_record(baseline, result, data: Dataset) -> dict:
    return {"val_accuracy": result.best_val_accuracy, "test_accuracy": evaluate(baseline, data.test),
            "best_epoch": result.best_epoch, "train_s": round(result.wall_s, 2)}
