"""Rebuild the packaged default teacher: ``python -m compress.pretrained``.

Trains the default teacher (ResNet-14, width 1.0) on the default mnist split with the teacher
stage's own code and writes its weights, with the split and settings it used, to compress/weights/.
"""
from __future__ import annotations

import torch

from compress.data import DataConfig, load_dataset
from compress.train import evaluate
from stages.teacher import TeacherConfig, save_pretrained, train_teacher


def main() -> None:
    torch.set_num_threads(2)
    data_cfg, teacher_cfg = DataConfig(), TeacherConfig(source="train")
    data = load_dataset(data_cfg)
    model, result = train_teacher(teacher_cfg, data)
    path = save_pretrained(model, teacher_cfg.model, data_cfg, teacher_cfg.train)
    print(f"wrote {path}: val accuracy {result.best_val_accuracy:.4f}, test accuracy {evaluate(model, data.test):.4f}, "
          f"{result.wall_s:.0f} s")


if __name__ == "__main__":
    main()
