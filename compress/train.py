"""One training loop for every stage that trains (teacher, distill, prune fine-tune).

SGD or AdamW, cosine or step schedule, image augmentation (small shifts and rotations), gradient
clipping, NaN detection, and the best checkpoint by validation accuracy. Under torchrun the loop is
data-parallel (see compress.distributed). Given a checkpoint folder (argument or ``checkpointing``
context) it saves a checkpoint after every epoch and resumes from a matching one.

Randomness is drawn per epoch from (seed, epoch, rank): the shuffled order from PyTorch's
DistributedSampler, augmentation from its own generator. So a run resumed at an epoch boundary sees
exactly the batches and augmentations an uninterrupted run would, and the same seed on the same
machine gives the same metrics.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from compress import distributed
from compress.data import Dataset, Split
from compress.errors import CompressError
from compress.fsutil import atomic_path
from compress.lazy_data import is_lazy, rows

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant", "linear")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype of each precision
PREDICT_BATCH_BYTES = 64 << 20  # inputs per predict_logits batch
CHECKPOINT_FORMAT = 2  # 2: the best epoch is chosen on validation accuracy, then loss


@dataclass
class TrainConfig:
    """How to train: shared by the teacher, distill and prune (fine-tune) stages."""

    epochs: int = 10  # passes over the train split
    batch_size: int = 64  # samples per step, over all processes when data-parallel (each takes batch_size / N)
    lr: float = 0.05  # peak learning rate
    optimizer: str = "sgd"  # sgd (momentum 0.9, Nesterov) or adamw
    weight_decay: float = 5e-4  # L2 penalty (decoupled for adamw)
    schedule: str = "cosine"  # cosine (with one warm-up epoch), step (x0.1 at 50% and 75%), constant, or linear (BERT's: 10% warm-up, then down to 0)
    augment: bool = True  # random shifts (up to 7% of the side: 2 px on 28x28) and rotations (up to 10 degrees)
    grad_clip: float = 5.0  # max gradient L2 norm; 0 disables clipping
    seed: int = 0  # seed for init, shuffling and augmentation
    device: str = "auto"  # auto (CUDA when available, else CPU), cpu, cuda or cuda:N; files are always written from CPU fp32 weights
    precision: str = "fp32"  # fp32, bf16 (autocast; CPUs with AVX-512 BF16 and GPUs) or fp16 (autocast + gradient scaler; CUDA only)
    channels_last: bool = False  # NHWC memory layout for image models and batches (faster convolutions on GPUs)
    windows_per_text: int = 1  # texts split into several windows: windows drawn per text and epoch, at random (0: every window)

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
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"train.seed must be an integer from 0 to 2**32 - 1, got {self.seed}")
        if self.windows_per_text < 0:
            raise ValueError(f"train.windows_per_text must be >= 0 (0: every window), got {self.windows_per_text}")


def resolve_device(name: str, precision: str = "fp32") -> torch.device:
    """The torch device ``train.device`` names, checked to exist here: ``auto`` is CUDA when available."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise CompressError(f"device {name} requested, but {build}: use --device cpu (or auto), or install a "
                                "CUDA build of PyTorch on a machine with an NVIDIA GPU")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise CompressError(f"device {name} requested, but only {torch.cuda.device_count()} CUDA device(s) are "
                                f"visible: use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if precision == "fp16" and not name.startswith("cuda"):
        raise CompressError("train.precision=fp16 needs a CUDA device: on a CPU use bf16 (or fp32)")
    return torch.device(name)


@dataclass
class TrainResult:
    best_val_accuracy: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)  # per epoch: loss, val_accuracy, val_loss, lr
    wall_s: float = 0.0  # over all sessions when resumed
    resumed_after_epoch: int = 0  # the checkpoint's epoch this run continued from (0: started fresh)
    processes: int = 1  # data-parallel processes that trained


# loss_fn(x, y) -> (loss to minimise, logits of the model being selected on validation)
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Checkpointing:
    """Where ``fit`` keeps its per-epoch checkpoints, and what they must belong to."""

    directory: Path
    key: str = ""  # identifies the config and inputs; a checkpoint with another key is not resumed


_CHECKPOINTING: contextvars.ContextVar[Checkpointing | None] = contextvars.ContextVar("checkpointing", default=None)


@contextlib.contextmanager
def checkpointing(directory: str | Path, key: str = "") -> Iterator[Checkpointing]:
    """Every ``fit`` inside the block checkpoints into ``directory`` (one file per ``desc``) and resumes
    from a checkpoint there with the same ``key``. Lets the pipeline and the CLI checkpoint the
    stages' training without threading a path through every stage."""
    setting = Checkpointing(Path(directory), key)
    token = _CHECKPOINTING.set(setting)
    try:
        yield setting
    finally:
        _CHECKPOINTING.reset(token)


def checkpoint_files(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob("*.pt")) if Path(directory).is_dir() else []


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class _Progress:
    """Where a fit stands between epochs: what a checkpoint saves and a resumed run continues from."""

    start_epoch: int
    history: list[dict]
    best_accuracy: float
    best_loss: float
    best_epoch: int
    best_state: list[dict]


@dataclass
class _Loop:
    """What every training step needs: the modules, their optimizer and schedule, and the batch layout."""

    modules: list[nn.Module]
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    local_batch: int  # samples per process and step
    steps_per_epoch: int
    device: torch.device
    ctx: distributed.Context
    autocast: torch.dtype | None  # the forward pass's autocast dtype; None = fp32
    scaler: torch.amp.GradScaler | None  # fp16 only: scales the loss so small gradients do not underflow
    channels_last: bool


def fit(model: nn.Module, data: Dataset, cfg: TrainConfig, loss_fn: LossFn, desc: str,
        extra_modules: Sequence[nn.Module] = (), checkpoint_dir: str | Path | None = None,
        frozen_modules: Sequence[nn.Module] = ()) -> TrainResult:
    """Train ``model`` (and ``extra_modules``, e.g. an online teacher or hint regressors) and
    restore the weights of the epoch with the best validation accuracy; among epochs with the same
    accuracy, the one with the lowest validation loss (see ``improves``).

    ``checkpoint_dir`` (default: the enclosing ``checkpointing`` block's) gets ``<desc>.pt`` after every
    epoch and a matching checkpoint there is resumed. ``frozen_modules`` (an offline teacher) are only
    moved to the training device. Under torchrun the trainable modules are wrapped in DDP, each
    process takes ``batch_size / N`` samples of every step's batch, and metrics are summed over processes."""
    started = time.perf_counter()
    loop = _make_loop([model, *extra_modules], frozen_modules, len(epoch_rows(data.train, cfg, 1)), cfg)
    if loop.ctx.is_main and (loop.device.type != "cpu" or loop.autocast is not None):
        tqdm.write(f"{desc}: training on {loop.device} in {cfg.precision}")
    store = _store(checkpoint_dir, desc)
    identity = {"format": CHECKPOINT_FORMAT, "key": store.key if store else "", "desc": desc, "train": asdict(cfg),
                "train_size": len(data.train), "module_count": len(loop.modules),
                "start": _weights_digest(loop.modules) if store else ""}
    if loop.ctx.enabled and loop.ctx.is_main:
        tqdm.write(f"{desc}: data-parallel over {loop.ctx.world_size} processes ({loop.ctx.backend}), "
                   f"{loop.local_batch} of every {cfg.batch_size} samples per process and step")
    state = store.load(identity, loop.modules, desc) if store else None
    previous_s = state["elapsed_s"] if state else 0.0
    with distributed.data_parallel(loop.modules, loop.ctx):
        progress = _resume(state, loop, store, cfg, desc) if state else _start(model, data, loop)
        for epoch in range(progress.start_epoch, cfg.epochs + 1):
            train_loss = _train_epoch(loop, data.train, cfg, loss_fn, desc, epoch,
                                      data.config.workers if data.config else 0)
            _record_epoch(progress, model, data.val, loop, train_loss, epoch, cfg, desc)
            if store:
                store.save({**identity, "epoch": epoch, "modules": [m.state_dict() for m in loop.modules],
                            "optimizer": loop.optimizer.state_dict(), "scheduler": loop.scheduler.state_dict(),
                            "best_accuracy": progress.best_accuracy, "best_loss": progress.best_loss,
                            "best_epoch": progress.best_epoch, "best_states": progress.best_state,
                            "history": progress.history, "elapsed_s": previous_s + time.perf_counter() - started,
                            "world_size": loop.ctx.world_size, "rng": distributed.gather_objects(_rng_states())})
    for module, module_state in zip(loop.modules, progress.best_state):
        module.load_state_dict(module_state)
        module.eval()
    for module in (*loop.modules, *frozen_modules):  # checkpoints and export read CPU fp32, contiguous weights
        module.to("cpu", memory_format=torch.contiguous_format)
    return TrainResult(progress.best_accuracy, progress.best_epoch, progress.history,
                       previous_s + time.perf_counter() - started, state["epoch"] if state else 0, loop.ctx.world_size)


def _make_loop(modules: list[nn.Module], frozen_modules: Sequence[nn.Module], train_size: int,
               cfg: TrainConfig) -> _Loop:
    ctx = distributed.context()
    # Under torchrun the process group decides (each rank its own GPU under nccl); else train.device does.
    device = torch.device(ctx.device) if ctx.enabled else resolve_device(cfg.device, cfg.precision)
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    for module in (*modules, *frozen_modules):
        module.to(device, memory_format=memory_format)
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    optimizer = _optimizer(params, cfg)
    local_batch = math.ceil(cfg.batch_size / ctx.world_size)
    steps_per_epoch = math.ceil(math.ceil(train_size / ctx.world_size) / local_batch)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    return _Loop(modules, params, optimizer, _scheduler(optimizer, cfg, steps_per_epoch), local_batch,
                 steps_per_epoch, device, ctx, PRECISIONS[cfg.precision], scaler, cfg.channels_last)


def _start(model: nn.Module, data: Dataset, loop: _Loop) -> _Progress:
    """A fresh fit: the untrained weights are the best so far, measured on validation (epoch 0)."""
    accuracy, loss = _validate(model, data.val, loop.ctx)
    return _Progress(1, [], accuracy, loss, 0, [copy.deepcopy(m.state_dict()) for m in loop.modules])


def _resume(state: dict, loop: _Loop, store: _Store, cfg: TrainConfig, desc: str) -> _Progress:
    for module, module_state in zip(loop.modules, state["modules"]):
        module.load_state_dict(module_state)
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    _set_rng_states(state["rng"], loop.ctx)
    if loop.ctx.is_main:
        tqdm.write(f"{desc}: resuming after epoch {state['epoch']}/{cfg.epochs} from {store.path}")
    return _Progress(state["epoch"] + 1, state["history"], state["best_accuracy"], state["best_loss"],
                     state["best_epoch"], state["best_states"])


def epoch_rows(train: Split, cfg: TrainConfig, epoch: int) -> np.ndarray:
    """The train rows of one epoch: all of them, or for texts in several windows ``cfg.windows_per_text`` windows
    of each text drawn from the seed and epoch (the same on every process, and as many in every epoch)."""
    if train.groups is None:
        return np.arange(len(train))
    from compress.text_windows import draw_windows

    return draw_windows(train.groups, cfg.windows_per_text, np.random.default_rng([cfg.seed, epoch]))


def _train_epoch(loop: _Loop, train: Split, cfg: TrainConfig, loss_fn: LossFn, desc: str, epoch: int,
                 workers: int = 0) -> float:
    """One pass over the train split; returns the mean loss over all processes."""
    for module in loop.modules:
        module.train()
    drawn = epoch_rows(train, cfg, epoch)
    order = drawn[distributed.epoch_indices(len(drawn), cfg.seed, epoch, loop.ctx)]
    generator = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, loop.ctx.rank))
    total_loss, seen = 0.0, 0
    progress = tqdm(range(loop.steps_per_epoch), desc=f"{desc} {epoch}/{cfg.epochs}", leave=False,
                    dynamic_ncols=True, disable=None if loop.ctx.is_main else True)
    index_batches = [order[step * loop.local_batch:(step + 1) * loop.local_batch] for step in range(loop.steps_per_epoch)]
    for step, (x, y) in zip(progress, _train_batches(train, index_batches, workers, loop.device)):
        if cfg.augment and x.dim() == 4:
            x = augment(x, generator)
        x = x.to(loop.device, non_blocking=True)
        if loop.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = _step(loop, x, y.to(loop.device, non_blocking=True), cfg, loss_fn, desc, epoch, step)
        total_loss += loss * len(y)
        seen += len(y)
        progress.set_postfix(loss=f"{total_loss / seen:.4f}")
    distributed.broadcast_buffers(loop.modules)
    loss_sum, seen_all = distributed.all_reduce_sum([total_loss, seen])
    return loss_sum / max(seen_all, 1)


class _SplitBatches(torch.utils.data.Dataset):
    """A split read one whole batch per item: the DataLoader's sampler yields the index arrays of the steps."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.split.x[idx]), torch.from_numpy(self.split.y[idx])


def _train_batches(train: Split, index_batches: list[np.ndarray], workers: int,
                   device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The steps' (x, y) batches in order. Data in RAM is indexed directly; lazily read data is decoded by a
    DataLoader (``workers`` processes) fed exactly these index arrays, so order, augmentation and resume match."""
    if not is_lazy(train.x):
        return ((torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx])) for idx in index_batches)
    loader = torch.utils.data.DataLoader(_SplitBatches(train), sampler=index_batches, batch_size=None,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    return iter(loader)


def _step(loop: _Loop, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, loss_fn: LossFn, desc: str,
          epoch: int, step: int) -> float:
    """One optimizer step; a non-finite loss (or, data-parallel, gradient) stops training with a clear error."""
    with torch.autocast(loop.device.type, dtype=loop.autocast or torch.float32, enabled=loop.autocast is not None):
        loss, _ = loss_fn(x, y)
    finite = bool(torch.isfinite(loss))
    if not finite and not loop.ctx.enabled:
        raise _diverged(desc, loss.item(), epoch, step, loop.optimizer)
    loop.optimizer.zero_grad(set_to_none=True)
    if loop.scaler is not None:
        return _scaled_step(loop, loss, cfg)
    loss.backward()
    if loop.ctx.enabled:
        # Every process must reach the same verdict or the others hang in the next all-reduce:
        # the averaged gradients are non-finite everywhere as soon as one process's loss is.
        norm = (nn.utils.clip_grad_norm_(loop.params, cfg.grad_clip) if cfg.grad_clip
                else nn.utils.get_total_norm([p.grad for p in loop.params if p.grad is not None]))
        if not (finite and torch.isfinite(norm)):
            raise _diverged(desc, loss.item(), epoch, step, loop.optimizer, gradients=finite)
    elif cfg.grad_clip:
        nn.utils.clip_grad_norm_(loop.params, cfg.grad_clip)
    loop.optimizer.step()
    loop.scheduler.step()
    return loss.item()


def _scaled_step(loop: _Loop, loss: torch.Tensor, cfg: TrainConfig) -> float:
    """fp16: the scaler skips a step whose gradients overflowed and lowers its scale, instead of diverging."""
    loop.scaler.scale(loss).backward()
    if cfg.grad_clip:
        loop.scaler.unscale_(loop.optimizer)
        nn.utils.clip_grad_norm_(loop.params, cfg.grad_clip)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.scheduler.step()
    return loss.item()


def _record_epoch(progress: _Progress, model: nn.Module, val: Split, loop: _Loop, train_loss: float, epoch: int,
                  cfg: TrainConfig, desc: str) -> None:
    """Validate, log, and keep the weights when this epoch is the best so far."""
    val_accuracy, val_loss = _validate(model, val, loop.ctx)
    progress.history.append({"epoch": epoch, "loss": train_loss, "val_accuracy": val_accuracy, "val_loss": val_loss,
                             "lr": loop.optimizer.param_groups[0]["lr"]})
    if loop.ctx.is_main:
        tqdm.write(f"{desc} epoch {epoch}/{cfg.epochs}: loss {train_loss:.4f}  val acc {val_accuracy:.4f}"
                   f"  val loss {val_loss:.4f}")
    if improves(val_accuracy, val_loss, progress.best_accuracy, progress.best_loss):
        progress.best_accuracy, progress.best_loss, progress.best_epoch = val_accuracy, val_loss, epoch
        progress.best_state = [copy.deepcopy(m.state_dict()) for m in loop.modules]


def _weights_digest(modules: Sequence[nn.Module]) -> str:
    """Hash of the weights training starts from: a checkpoint only continues the run that began there
    (a stage rebuilds them deterministically), never another fit that happens to share its name."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _diverged(desc: str, value: float, epoch: int, step: int, optimizer: torch.optim.Optimizer,
              gradients: bool = False) -> CompressError:
    where = f"at epoch {epoch} step {step + 1} (lr {optimizer.param_groups[0]['lr']:.3g})"
    # Data-parallel: gradients are averaged, so one process's non-finite loss makes everyone's gradients non-finite.
    what = "the gradients became non-finite (here or in another process)" if gradients else f"loss became {value}"
    return CompressError(f"{desc}: {what} {where}: training stopped; lower the learning rate or check the data")


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


def _rng_states() -> dict:
    """Global RNG states (a loss function may draw from them, e.g. dropout), as tensors and plain values."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def _set_rng_states(states: list[dict], ctx: distributed.Context) -> None:
    if len(states) != ctx.world_size:
        return  # resumed with another process count: the per-epoch streams still match, the global ones cannot
    state = states[ctx.rank]
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


@dataclass
class _Store:
    """One fit's checkpoint file. Rank 0 reads and writes it; the other ranks get its content broadcast."""

    path: Path
    key: str

    def load(self, identity: dict, modules: Sequence[nn.Module], desc: str) -> dict | None:
        state = None
        if distributed.context().is_main and self.path.is_file():
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True)
                problem = _mismatch(state, identity, modules)
            except Exception as exc:  # an unreadable checkpoint is not worth failing the run for
                problem = f"unreadable ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
            if problem:
                tqdm.write(f"{desc}: not resuming from {self.path}: {problem}; training from the start")
                state = None
        return distributed.broadcast_object(state)

    def save(self, state: dict) -> None:
        if distributed.context().is_main:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
                torch.save(state, handle)


def _store(checkpoint_dir: str | Path | None, desc: str) -> _Store | None:
    setting = _CHECKPOINTING.get()
    if checkpoint_dir is None and setting is None:
        return None
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else setting.directory
    key = setting.key if setting is not None and setting.directory == directory else ""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", desc).strip("-") or "fit"
    return _Store(directory / f"{slug}.pt", key)


def _mismatch(state: dict, identity: dict, modules: Sequence[nn.Module]) -> str:
    for name, expected in identity.items():
        if state.get(name) != expected:
            what = {"key": "config or inputs", "start": "starting weights"}.get(name, name)
            return f"it was made for another {what}"
    for module, saved in zip(modules, state["modules"]):
        current = module.state_dict()
        if set(current) != set(saved) or any(current[k].shape != saved[k].shape for k in current):
            return "its model has another architecture"
    return ""


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
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    # Big inputs (224x224 RGB: 0.6 MB each) go in smaller batches, so a streamed split stays streamed.
    batch_size = max(1, min(batch_size, PREDICT_BATCH_BYTES // max(1, int(np.prod(x.shape[1:])) * 4)))
    with torch.no_grad():
        outputs = [model(torch.from_numpy(x[i:i + batch_size]).to(device)).float().cpu().numpy()
                   for i in range(0, len(x), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def evaluate(model: nn.Module, split: Split) -> float:
    """Accuracy per sample (a text's windows averaged)."""
    return float((split.sample_logits(predict_logits(model, split.x)).argmax(1) == split.sample_y).mean())


def improves(accuracy: float, loss: float, best_accuracy: float, best_loss: float) -> bool:
    """Whether an epoch beats the best so far: higher validation accuracy, or the same accuracy and a
    lower validation loss. A small validation split often gives several epochs the same accuracy; the
    loss then tells them apart (usually in favour of the later, annealed epoch) where keeping the first
    of them would return a checkpoint from the middle of the learning-rate schedule."""
    return accuracy > best_accuracy or (accuracy == best_accuracy and loss < best_loss)


def _validate(model: nn.Module, split: Split, ctx: distributed.Context) -> tuple[float, float]:
    """Accuracy and mean cross-entropy on ``split``, each rank taking every world_size-th sample (a text with
    all its windows)."""
    if split.groups is None:
        x, y = rows(split.x, slice(ctx.rank, None, ctx.world_size)), split.y[ctx.rank::ctx.world_size]
    else:
        split = split.subset(np.arange(ctx.rank, split.num_samples, ctx.world_size))
        x, y = split.x, split.sample_y
    correct, loss_sum = 0, 0.0
    if len(y):
        logits = split.sample_logits(predict_logits(model, x))
        correct = int((logits.argmax(1) == y).sum())
        loss_sum = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y).long(),
                                                     reduction="sum"))
    correct, loss_sum, count = distributed.all_reduce_sum([correct, loss_sum, len(y)])
    return correct / count, loss_sum / count


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
    elif cfg.schedule == "linear":
        warmup = max(1, total // 10)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))
    elif cfg.schedule == "step":
        def factor(step: int) -> float:
            return 0.1 ** ((step >= total * 0.5) + (step >= total * 0.75))
    else:
        def factor(step: int) -> float:
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
