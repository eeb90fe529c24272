"""One training loop for every stage that trains (teacher, distill, prune fine-tune).

SGD or AdamW, cosine or step schedule, image augmentation (small shifts and rotations), gradient
clipping, NaN detection, and the best checkpoint by validation accuracy.
"""
from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from compress.data import Dataset, Split, batches
from compress.errors import CompressError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class TrainConfig:
    """How to train: shared by the teacher, distill and prune (fine-tune) stages."""

    epochs: int = 10  # passes over the train split
    batch_size: int = 64  # samples per step
    lr: float = 0.05  # peak learning rate
    optimizer: str = "sgd"  # sgd (momentum 0.9, Nesterov) or adamw
    weight_decay: float = 5e-4  # L2 penalty (decoupled for adamw)
    schedule: str = "cosine"  # cosine (with one warm-up epoch), step (x0.1 at 50% and 75%), or constant
    augment: bool = True  # random shifts (up to 7% of the side: 2 px on 28x28) and rotations (up to 10 degrees)
    grad_clip: float = 5.0  # max gradient L2 norm; 0 disables clipping
    seed: int = 0  # seed for init, shuffling and augmentation

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"train.epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.grad_clip < 0:
            raise ValueError(f"train.grad_clip must be >= 0, got {self.grad_clip}")


@dataclass
class TrainResult:
    best_val_accuracy: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)  # per epoch: loss, val_accuracy, lr
    wall_s: float = 0.0


# loss_fn(x, y) -> (loss to minimise, logits of the model being selected on validation)
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(model: nn.Module, data: Dataset, cfg: TrainConfig, loss_fn: LossFn, desc: str,
        extra_modules: Sequence[nn.Module] = ()) -> TrainResult:
    """Train ``model`` (and ``extra_modules``, e.g. an online teacher or hint regressors) and
    restore the weights of the epoch with the best validation accuracy."""
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    modules = [model, *extra_modules]
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    optimizer = _optimizer(params, cfg)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    scheduler = _scheduler(optimizer, cfg, steps_per_epoch)
    best_accuracy = evaluate(model, data.val)
    best_state, best_epoch = [copy.deepcopy(m.state_dict()) for m in modules], 0
    history: list[dict] = []
    for epoch in range(1, cfg.epochs + 1):
        for module in modules:
            module.train()
        total_loss, seen = 0.0, 0
        progress = tqdm(batches(data.train, cfg.batch_size, shuffle=True, rng=rng), total=steps_per_epoch,
                        desc=f"{desc} {epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True, disable=None)
        for step, (x_np, y_np) in enumerate(progress):
            x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
            if cfg.augment and x.dim() == 4:
                x = augment(x, generator)
            loss, _ = loss_fn(x, y)
            if not torch.isfinite(loss):
                raise CompressError(f"{desc}: loss became {loss.item()} at epoch {epoch} step {step + 1} "
                                    f"(lr {optimizer.param_groups[0]['lr']:.3g}): lower the learning rate or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(y)
            seen += len(y)
            progress.set_postfix(loss=f"{total_loss / seen:.4f}")
        val_accuracy = evaluate(model, data.val)
        history.append({"epoch": epoch, "loss": total_loss / max(seen, 1), "val_accuracy": val_accuracy,
                        "lr": optimizer.param_groups[0]["lr"]})
        tqdm.write(f"{desc} epoch {epoch}/{cfg.epochs}: loss {total_loss / max(seen, 1):.4f}  val acc {val_accuracy:.4f}")
        if val_accuracy > best_accuracy:
            best_accuracy, best_epoch = val_accuracy, epoch
            best_state = [copy.deepcopy(m.state_dict()) for m in modules]
    for module, state in zip(modules, best_state):
        module.load_state_dict(state)
        module.eval()
    return TrainResult(best_accuracy, best_epoch, history, time.perf_counter() - started)


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: float = 0.07, max_degrees: float = 10.0) -> torch.Tensor:
    """Random rotation and shift per image; ``max_shift`` is a fraction of the image side."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift * 2  # affine_grid spans [-1, 1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    outputs = [model(torch.from_numpy(x[i:i + batch_size])).float().numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def evaluate(model: nn.Module, split: Split) -> float:
    return float((predict_logits(model, split.x).argmax(1) == split.y).mean())


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        warmup = min(steps_per_epoch, total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    elif cfg.schedule == "step":
        def factor(step: int) -> float:
            return 0.1 ** ((step >= total * 0.5) + (step >= total * 0.75))
    else:
        def factor(step: int) -> float:
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
