"""torchrun helpers: process group init, rank/world, object broadcast and global counts.

The loss is normalised over the *global* batch (ALGORITHMS.md, aggregation): every rank
passes the all-reduced token and sequence counts to ``policy_loss``, so each rank's loss is its
share of the global loss. The gradients are then all-reduced with SUM (not averaged as DDP
does), which gives exactly the gradient one process computes on the global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: torch.device | None = None, *, timeout_s: float = 300.0) -> bool:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU); False when not launched by
    torchrun with more than one process. Idempotent."""
    if is_distributed():
        return True
    if not launched_by_torchrun():
        return False
    use_nccl = torch.cuda.is_available() and (device is None or device.type == "cuda")
    if use_nccl:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_nccl else "gloo", timeout=timedelta(seconds=timeout_s))
    return True


def local_device(requested: str = "auto") -> torch.device:
    """``auto``: this rank's GPU under torchrun when CUDA is there, else CPU."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled); the identity when not distributed."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum of ``values`` over ranks (a new tensor; the input is left alone)."""
    out = values.clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def global_counts(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(response tokens, sequences with at least one token) over all ranks, as float 0-dim
    tensors on ``mask``'s device: the normalisers of token_mean and seq_mean aggregations."""
    local = torch.stack((mask.sum(), (mask.sum(-1) > 0).sum().to(mask.dtype))).float()
    total = all_reduce_sum(local)
    return total[0], total[1]


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks, flattened into one buffer (one collective per call).

    A parameter without a gradient on this rank contributes zeros, so every rank takes part in
    the same collective even when a module was unused.
    """
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True when ``flag`` is true on any rank (so all ranks take the same branch)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
