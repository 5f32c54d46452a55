"""Data-parallel jobs: the few collectives the engine needs, no-ops in a single process.

`torchrun` / `accelerate launch` start one process per device and set RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT; `init()` joins the group from them (nccl on CUDA, gloo on the CPU). Every rank draws the same
global batch (same seed), runs the forward on its shard (`shard`) and gathers the per-token results (`gather_rows`):
every rank then computes the same global losses from tensors whose own rows carry its graph, so summing the
model's gradients over ranks (`all_reduce_grads`) gives exactly the single-process gradient, and a learning scheme
(ATWU's scorer) that reads the gathered batch takes the same step on every rank without any communication.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F


def size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def is_main() -> bool:
    """The process that writes the run folder and prints."""
    return rank() == 0


def init() -> None:
    """Join the process group the launcher described (once); on CUDA, bind this process to its LOCAL_RANK GPU
    so that device "cuda" means it."""
    if size() == 1 or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")


def shard(index: list[int]) -> list[int]:
    """This rank's contiguous share of a global batch (sizes differ by at most one). A batch smaller than the
    world is not split (every rank computes all of it), which only an evaluation may do: a training step must
    split, or its gradients would be summed once per rank."""
    world = size()
    if world == 1:
        return index
    if len(index) < world:
        if torch.is_grad_enabled():
            raise ValueError(
                f"a training batch of {len(index)} samples cannot be split across {world} processes; "
                f"use batch sizes (and sets) of at least {world} samples."
            )
        return index
    base, extra = divmod(len(index), world)
    start = rank() * base + min(rank(), extra)
    return index[start : start + base + (rank() < extra)]


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Every rank's [b_r, ...] rows, concatenated in rank order, trailing dims zero-padded to the largest. This
    rank's rows are `local` itself (its graph intact); the other ranks' rows are values without a graph."""
    if size() == 1:
        return local
    shapes = _all_gather(torch.tensor(local.shape, device=local.device))
    widest = torch.stack(shapes).amax(0).tolist()
    carrier = local.to(torch.uint8) if local.dtype == torch.bool else local  # gloo has no bool collectives
    padded = _pad(carrier.detach(), widest)
    rows = [g[: int(s[0])] for g, s in zip(_all_gather(padded), shapes, strict=True)]
    rows[rank()] = _pad(carrier, [local.shape[0], *widest[1:]])
    out = torch.cat(rows)
    return out.bool() if local.dtype == torch.bool else out


def all_sum(value: float) -> float:
    """The sum of a number over ranks."""
    if size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return float(t.item())


def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients over ranks (the losses are already normalised by the global batch), one flat buffer."""
    grads = [p.grad for p in params if p.grad is not None]
    if size() == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    for g, chunk in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(chunk.view_as(g))


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any: a cancel (or stop) seen by one process stops them all."""
    return all_sum(float(flag)) > 0


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(size())]
    dist.all_gather(out, t.contiguous())
    return out


def _pad(t: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Zero-pad `t` at the end of every dimension up to `shape`."""
    pads = [p for have, want in zip(reversed(t.shape), reversed(shape), strict=True) for p in (0, want - have)]
    return F.pad(t, pads) if any(pads) else t
