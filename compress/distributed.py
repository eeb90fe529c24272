"""Data-parallel training over several processes with torch.distributed (DistributedDataParallel).

Launch with torchrun (``torchrun --nproc-per-node 2 -m compress distill ...``) or let a command's
``--nproc N`` start torchrun itself. Every process runs the same command; this module tells each
one who it is, joins the process group torchrun describes in the environment (gloo on CPU, nccl
when CUDA is available), shards each epoch's shuffled train split, reduces metrics, and keeps file
writing to rank 0. Outside torchrun everything here is a no-op, so single-process code is unchanged.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from compress.errors import CompressError
from compress.fsutil import private_tempdir, staging_dir


@dataclass(frozen=True)
class Context:
    """This process's place in the job (rank 0 of 1 outside torchrun)."""

    rank: int = 0  # global rank: 0 .. world_size - 1
    world_size: int = 1  # processes in the job, over all nodes
    local_rank: int = 0  # rank on this node (the GPU index under nccl)
    local_world_size: int = 1  # processes on this node (they share its CPU cores)
    backend: str = ""  # gloo or nccl; empty when not distributed

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files, the manifest and progress."""
        return self.rank == 0

    @property
    def device(self) -> str:
        return f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"


def context() -> Context:
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("LOCAL_WORLD_SIZE", 1)), str(dist.get_backend()))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup() -> Context:
    """Join the process group torchrun set up in the environment; a no-op in a single process."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return context()
    if not dist.is_available():
        raise CompressError("this PyTorch build has no torch.distributed: install a standard PyTorch wheel")
    backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        dist.init_process_group(backend)
    except (RuntimeError, ValueError) as exc:
        raise CompressError(f"cannot join the torchrun process group ({backend}): {str(exc).splitlines()[0]}; "
                            "check --rdzv-endpoint / MASTER_ADDR and that every node can reach it") from exc
    return context()


def teardown(synchronize: bool = True) -> None:
    """Leave the process group. On a normal exit every process first waits for the others, so no process
    tears its connections down while a peer is still finishing its last collective (gloo can abort the
    peer then); after an error in one process there may be no peer to wait for, so it leaves at once."""
    if dist.is_available() and dist.is_initialized():
        if synchronize and context().enabled:
            dist.barrier()
        dist.destroy_process_group()


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``python -m compress ARGS`` in ``nproc`` processes on this machine under torchrun; returns its exit code."""
    if nproc < 1:
        raise CompressError(f"--nproc must be >= 1, got {nproc}")
    if launched_by_torchrun():
        raise CompressError("--nproc starts torchrun itself: leave it out when the command already runs under torchrun")
    # torchrun otherwise prints a banner about OMP_NUM_THREADS; each process sets its own thread count.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with private_tempdir("torchrun") as logs:
        # Workers' stderr goes to files, so a failure shows one process's "error: ..." line once, not one
        # per process followed by torchrun's own traceback; stdout (progress, results) streams as usual.
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                   "--nproc-per-node", str(nproc), "--redirects", "2", "--log-dir", logs, "-m", "compress", *args]
        done = subprocess.run(command, env=env, check=False, stderr=subprocess.PIPE, text=True)
        worker_stderr = {int(path.parent.name): path.read_text(errors="replace")
                         for path in Path(logs).rglob("stderr.log") if path.parent.name.isdigit()}
    failed = [rank for rank, text in sorted(worker_stderr.items()) if "error: " in text]
    if done.returncode == 0:
        sys.stderr.write(worker_stderr.get(0, ""))
        return 0
    # A process killed by a signal (SIGKILL, the OOM killer) wrote nothing; its peers then fail on the lost
    # connection, which is not what went wrong.
    killed = re.search(r"exitcode\s*:\s*-\d+", done.stderr or "")
    if failed and not killed:  # the worker's own message says what went wrong; torchrun's report would only repeat it
        sys.stderr.write(worker_stderr[failed[0]])
        return 2
    sys.stderr.write(f"error: {dead_worker_message(done.stderr, done.returncode)}\n")
    return 2


def dead_worker_message(torchrun_stderr: str, returncode: int) -> str:
    """One line for a data-parallel run whose process died without an error of its own (killed, out of
    memory, crashed), from torchrun's failure report (``rank : 1 (local_rank: 1)``, ``exitcode : -9``)."""
    report = torchrun_stderr.split("Root Cause", 1)[-1]  # torchrun names the first failure there
    ranks = re.findall(r"rank\s*:\s*(\d+)", report)
    codes = [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", report)]
    who = f"training process {ranks[0]}" if ranks else "a training process"
    code = codes[0] if codes else returncode
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    hint = " (out of memory? use a smaller batch size or fewer processes)" if code == -signal.SIGKILL else ""
    return (f"{who} of the data-parallel run {how}{hint}; the other processes were stopped. Finished epochs are kept: "
            "rerun with --resume")


def without_option(args: Sequence[str], option: str) -> list[str]:
    """``args`` without ``option VALUE`` / ``option=VALUE`` (to relaunch a command without --nproc)."""
    result, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            result.append(arg)
    return result


def threads_per_process(threads: int) -> int:
    """The processes on one node share its cores: split the configured thread count between them."""
    return max(1, threads // context().local_world_size)


def barrier() -> None:
    if context().enabled:
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (e.g. a checkpoint only rank 0 read)."""
    if not context().enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj: object) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    ctx = context()
    if not ctx.enabled:
        return [obj]
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over all ranks (float64, so counts stay exact)."""
    ctx = context()
    if not ctx.enabled:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def broadcast_buffers(modules: Sequence[nn.Module]) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so all ranks validate,
    select and save the same model; DDP keeps the parameters themselves in step."""
    if not context().enabled:
        return
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def epoch_indices(size: int, seed: int, epoch: int, ctx: Context) -> np.ndarray:
    """This rank's disjoint shard of the epoch's shuffled train split (PyTorch's DistributedSampler:
    one permutation from ``seed`` and ``epoch``, rank r takes every world_size-th index from r, padded
    by repeating the first indices when ``size`` does not divide evenly). With one process it is the
    whole permutation, so ``n`` processes each taking ``batch / n`` samples per step see exactly the
    single-process batches between them."""
    sampler = DistributedSampler(range(size), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))


@contextlib.contextmanager
def data_parallel(modules: Sequence[nn.Module], ctx: Context) -> Iterator[None]:
    """Wrap each trainable module in DistributedDataParallel for the duration of the block.

    The stages' loss functions call their modules directly (``student(x)``), but DDP only averages the
    gradients of forwards that go through its wrapper; so each module's ``forward`` is routed through
    its wrapper while it trains with gradients on. Evaluation forwards (eval mode or no_grad) stay
    local. Frozen modules (an offline teacher) are not wrapped: they have no gradients to average."""
    if not ctx.enabled:
        yield
        return
    routed: list[nn.Module] = []
    try:
        for module in modules:
            if not any(p.requires_grad for p in module.parameters()):
                continue
            if isinstance(module, torch.jit.ScriptModule):
                raise CompressError("a TorchScript module cannot be trained data-parallel: give the teacher as "
                                    "teacher.factory + state_dict, or train in one process")
            device_ids = [ctx.local_rank] if ctx.backend == "nccl" else None
            wrapper = DistributedDataParallel(module, device_ids=device_ids)
            module.forward = _route_through(module, wrapper)  # an instance attribute shadows the class's forward
            routed.append(module)
        yield
    finally:
        for module in routed:
            del module.forward


def _route_through(module: nn.Module, wrapper: DistributedDataParallel):
    original = module.forward
    inside = [False]

    def forward(*args, **kwargs):
        # DDP's own forward calls module(...) again: that inner call must reach the real forward.
        if inside[0] or not (module.training and torch.is_grad_enabled()):
            return original(*args, **kwargs)
        inside[0] = True
        try:
            return wrapper(*args, **kwargs)
        finally:
            inside[0] = False

    return forward


@contextlib.contextmanager
def output_dir(final_dir: Path, owned: Iterable[str] | None = ()) -> Iterator[Path]:
    """Rank 0 builds ``final_dir`` in a staging folder swapped in on success; other ranks compute the same
    things into a throwaway folder, so only one process ever writes the artifacts."""
    if context().is_main:
        with staging_dir(final_dir, owned) as tmp:
            yield tmp
    else:
        with private_tempdir("rank") as tmp:
            yield Path(tmp)
