"""torch.distributed from torchrun's environment; every helper is a no-op in a single process.

Only torchrun's variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) are
read: `torchrun --nproc_per_node N -m w2vkit pretrain ...`, multi-node through its rendezvous.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


def is_launched() -> bool:
    """True when torchrun (or any launcher that sets WORLD_SIZE > 1) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> None:
    """Join the process group: gloo on CPU, nccl on CUDA. Does nothing outside torchrun."""
    if not is_launched() or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place, also returned); identity in one process."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap_model(
    model: nn.Module, device: torch.device, *, find_unused_parameters: bool
) -> nn.Module:
    """DistributedDataParallel when running under torchrun, else the model itself.

    `find_unused_parameters` costs a graph walk per backward; it is needed only when LayerDrop can
    skip whole layers (their parameters then get no gradient).
    """
    if not dist.is_initialized():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


__all__ = [
    "all_reduce_sum",
    "barrier",
    "init",
    "is_launched",
    "is_main",
    "local_rank",
    "rank",
    "shutdown",
    "unwrap",
    "world_size",
    "wrap_model",
]
