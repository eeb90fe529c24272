"""Structured pruning: remove whole channels/neurons (a smaller dense model, not masks) until a
channel or MACs target is met, then recover accuracy by distillation from the teacher."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.data import Dataset, batches
from compress.errors import CompressError
from compress.manifest import StageResult
from compress.metrics import model_stats
from compress.pruning import IMPORTANCES, channel_table, classifier_layer, first_layer, make_pruner
from compress.train import TrainConfig, evaluate, seed_everything
from compress.zoo import load_model, save_model
from stages.distill import DistillConfig, distill, distillation_loss

TARGETS = ("channels", "macs")


@dataclass
class PruneConfig:
    """Prune the student and fine-tune it with distillation from the teacher."""

    target: str = "macs"  # channels: remove `amount` of the channels; macs: remove `amount` of the MACs
    amount: float = 0.5  # fraction to remove, in (0, 1)
    importance: str = "l1"  # channel ranking: l1, l2, bn_scale (network slimming), taylor (first order, KD loss), random
    global_pruning: bool = False  # rank channels across layers (global) instead of the same fraction per layer
    round_to: int = 8  # keep channel counts multiples of this: int8 kernels run best on multiples of 8
    protect_first: bool = True  # never prune the first layer's outputs (cheap, and sensitive)
    protected: list[str] = field(default_factory=list)  # more module names never to prune (classifier always is)
    steps: int = 20  # MACs target: prune in this many small steps and stop at the first that meets it
    temperature: float = 4.0  # distillation temperature of the fine-tune
    alpha: float = 0.9  # soft-target weight of the fine-tune
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, lr=0.02))

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"prune.target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if not 0.0 < self.amount < 1.0:
            raise ValueError(f"prune.amount must be a fraction in (0, 1), got {self.amount}")
        if self.importance not in IMPORTANCES:
            raise ValueError(f"prune.importance must be one of {', '.join(IMPORTANCES)}, got {self.importance!r}")
        if self.round_to < 1:
            raise ValueError(f"prune.round_to must be >= 1, got {self.round_to}")
        if self.steps < 1:
            raise ValueError(f"prune.steps must be >= 1, got {self.steps}")


def run(cfg: PruneConfig, model_path: Path, teacher_path: Path, data: Dataset, out_dir: Path) -> StageResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.finetune.seed)
    model = load_model(model_path)
    teacher = load_model(teacher_path)
    before = {**model_stats(model, data.input_shape), "channels": channel_table(model),
              "val_accuracy": evaluate(model, data.val)}
    prune(model, teacher, data, cfg)
    after_prune = {**model_stats(model, data.input_shape), "channels": channel_table(model),
                   "val_accuracy": evaluate(model, data.val)}
    check_runs(model, data)
    result = distill(model, teacher, data, DistillConfig(temperature=cfg.temperature, alpha=cfg.alpha, train=cfg.finetune),
                     desc="prune fine-tune")
    check_runs(model, data)
    save_model(model, out_dir / "pruned.pt")
    metrics = {
        "before": before, "after_prune": after_prune,
        "after_finetune": {"val_accuracy": result.best_val_accuracy, "test_accuracy": evaluate(model, data.test),
                           "best_epoch": result.best_epoch, "train_s": round(result.wall_s, 2), "history": result.history},
        "macs_reduction": 1 - after_prune["macs"] / before["macs"],
        "params_reduction": 1 - after_prune["params"] / before["params"],
    }
    return StageResult({"pruned": out_dir / "pruned.pt"}, metrics)


def prune(model: nn.Module, teacher: nn.Module, data: Dataset, cfg: PruneConfig) -> None:
    """Prune ``model`` in place to the configured target."""
    modules = dict(model.named_modules())
    unknown = [name for name in cfg.protected if name not in modules]
    if unknown:
        raise CompressError(f"prune.protected names unknown module {unknown[0]!r}; modules include: "
                            f"{', '.join(n for n in modules if n)[:300]}")
    protected = [classifier_layer(model)] + [modules[name] for name in cfg.protected]
    if cfg.protect_first:
        protected.append(first_layer(model))
    base_macs = model_stats(model, data.input_shape)["macs"]
    if cfg.target == "channels":
        pruner = make_pruner(model, data.input_shape, cfg.importance, cfg.amount, 1, cfg.global_pruning,
                             cfg.round_to, protected)
        _step(pruner, model, teacher, data, cfg)
        return
    # MACs target: the pruner removes up to 95% of channels over `steps` steps; stop once the target is met.
    pruner = make_pruner(model, data.input_shape, cfg.importance, 0.95, cfg.steps, cfg.global_pruning,
                         cfg.round_to, protected)
    goal = (1 - cfg.amount) * base_macs
    for _ in range(cfg.steps):
        _step(pruner, model, teacher, data, cfg)
        if model_stats(model, data.input_shape)["macs"] <= goal:
            return
    reached = 1 - model_stats(model, data.input_shape)["macs"] / base_macs
    raise CompressError(f"pruning reached only {reached:.0%} MACs reduction of the {cfg.amount:.0%} asked for: "
                        "lower prune.amount or unprotect layers")


def _step(pruner, model: nn.Module, teacher: nn.Module, data: Dataset, cfg: PruneConfig) -> None:
    if cfg.importance == "taylor":
        _accumulate_kd_gradients(model, teacher, data, cfg)
    pruner.step()
    model.zero_grad(set_to_none=True)


def _accumulate_kd_gradients(model: nn.Module, teacher: nn.Module, data: Dataset, cfg: PruneConfig,
                             num_batches: int = 8) -> None:
    """First-order Taylor importance needs gradients: take them of the distillation loss on real batches."""
    model.eval()  # BN statistics stay fixed while ranking
    model.zero_grad(set_to_none=True)
    rng = np.random.default_rng(cfg.finetune.seed)
    for index, (x_np, y_np) in enumerate(batches(data.train, 64, shuffle=True, rng=rng)):
        if index == num_batches:
            break
        x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
        with torch.no_grad():
            teacher_logits = teacher(x)
        distillation_loss(model(x), teacher_logits, y, cfg.temperature, cfg.alpha).backward()


def check_runs(model: nn.Module, data: Dataset) -> None:
    """A pruned model must still map a real batch to finite logits of the right shape."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.val.x[:8]))
    if logits.shape != (min(8, len(data.val)), data.num_classes) or not torch.isfinite(logits).all():
        raise CompressError(f"pruned model is broken: logits of shape {tuple(logits.shape)}, finite={bool(torch.isfinite(logits).all())}")
