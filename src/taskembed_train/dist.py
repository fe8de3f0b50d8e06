"""torch.distributed helpers. Every function also runs on a single process without a process group, so the
trainer has one code path whatever the world size."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str | None = None) -> torch.device:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...), if any.

    NCCL when the device is CUDA, gloo otherwise. Returns the device this rank should use.
    """
    n = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if n > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        rank, n = world()
        parts = [torch.empty_like(x) for _ in range(n)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather(x: Tensor) -> Tensor:
    """Concatenate x (same shape on every rank) from every rank along dim 0, differentiably.

    Backward sums the incoming gradients over ranks, so every rank's copy of the global loss contributes;
    after the trainer averages parameter gradients over ranks the result equals the single-process
    gradient of the global batch.
    """
    if world()[1] == 1:
        return x
    return _Gather.apply(x)


def all_sum(value: float, device: torch.device) -> float:
    _, n = world()
    if n == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Mean of every gradient over ranks, in flat all-reduces of at most `bucket` elements.

    Parameters without a grad are skipped (and stay without one, so AdamW leaves them alone as it does on
    one process); every rank runs the same graph, so they agree on which those are.
    """
    _, n = world()
    with_grad = [p for p in params if p.grad is not None]
    if n == 1 or not with_grad:
        return
    bucket = 1 << 26
    start = 0
    while start < len(with_grad):
        group, size = [], 0
        while start < len(with_grad) and (not group or size + with_grad[start].numel() <= bucket):
            group.append(with_grad[start])
            size += with_grad[start].numel()
            start += 1
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat /= n
        offset = 0
        for p in group:
            k = p.numel()
            p.grad.copy_(flat[offset: offset + k].view_as(p.grad))
            offset += k


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
