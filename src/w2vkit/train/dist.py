"""torch.distributed from torchrun's environment; every helper is a no-op in a single process.

Only torchrun's variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) are
read: `torchrun --nproc_per_node N -m w2vkit pretrain ...` (N = 1 too: DDP on one GPU), multi-node
through its rendezvous.

A collective waits `timeout_minutes` for the other processes (a stopped or dead rank), then the
run fails with `RankTimeout`, naming the ranks that did not answer when gloo can tell.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_launched() -> bool:
    """True when torchrun (or a launcher that sets its variables) started this process, also with
    one process: `torchrun --nproc_per_node 1` runs DDP and its collectives, as N processes would."""
    return all(name in os.environ for name in _LAUNCHER_VARIABLES)


NCCL_ERROR_SETTINGS = {"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"}
"""NCCL's watchdog tears the process down when a collective times out (its default); with these,
the collective's `wait()` raises the timeout as a `RuntimeError` in the training thread instead,
which `explain_timeout` turns into a `RankTimeout` naming the silent ranks. The cost: the host waits
for each collective it waits on (DDP's gradient all-reduce, once per update). Set either variable
in the environment to choose otherwise."""


DEFAULT_TIMEOUT_MINUTES = 5.0
_T = TypeVar("_T")
_timeout = timedelta(minutes=DEFAULT_TIMEOUT_MINUTES)


class RankTimeout(RuntimeError):
    """A collective waited longer than the process-group timeout for another rank."""


def init(device: torch.device, *, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> None:
    """Join the process group: gloo on CPU, nccl on CUDA. Does nothing outside torchrun."""
    global _timeout, _heartbeat
    if not is_launched() or dist.is_initialized():
        return
    _timeout = timedelta(minutes=timeout_minutes)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        for name, value in NCCL_ERROR_SETTINGS.items():
            os.environ.setdefault(name, value)  # read when the process group is made
    dist.init_process_group(backend=backend, timeout=_timeout)
    try:  # private API; without it a timeout is still reported, only without the rank
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError):
        return
    _heartbeat = _Heartbeat(store, interval=min(2.0, _timeout.total_seconds() / 20))


def shutdown(*, clean: bool = True) -> None:
    """Leave the process group. `clean` (every rank got here): a barrier first, so that no rank
    tears its connections down while another still talks over them (gloo aborts the process
    then: "terminate called without an active exception"). After an error, leave at once."""
    global _heartbeat
    if not dist.is_initialized():
        return
    if clean:
        barrier()
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
    dist.destroy_process_group()


def _collective(name: str, call: Callable[[], _T]) -> _T:
    try:
        return call()
    except RuntimeError as err:
        explained = explain_timeout(err, name)
        if explained is err:
            raise
        raise explained from err


def explain_timeout(err: BaseException, where: str = "a collective") -> BaseException:
    """A process-group timeout as a `RankTimeout` naming the silent ranks; other errors as they are.

    Any collective can time out, DDP's gradient all-reduce included, so the recipe passes what
    escapes training through here too.
    """
    text = str(err).lower()
    if isinstance(err, RankTimeout) or not ("timed out" in text or "timeout" in text):
        return err
    if not dist.is_initialized():
        return err
    silent = _heartbeat.silent_ranks() if _heartbeat is not None else []
    named = f"; rank(s) {', '.join(map(str, silent))} stopped answering" if silent else ""
    return RankTimeout(
        f"rank {dist.get_rank()}: {where} waited {_timeout.total_seconds() / 60:g} min for the "
        f"other processes{named}: a rank was stopped, died or hangs (see its log); "
        "train.dist_timeout_minutes sets this wait"
    )


class _Heartbeat:
    """Each rank bumps a counter in the rendezvous store every `interval` seconds from a daemon
    thread; a stopped (SIGSTOP) or dead process stops bumping, which names it after a timeout."""

    def __init__(self, store, interval: float) -> None:
        self.store, self.interval = store, interval
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="w2vkit-heartbeat")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.add(f"w2vkit/heartbeat/{self.rank}", 1)
            except Exception:  # noqa: BLE001 (the store is gone: the run is ending anyway)
                return
            self._stop.wait(self.interval)

    def _counts(self) -> list[int]:
        return [self.store.add(f"w2vkit/heartbeat/{r}", 0) for r in range(self.world_size)]

    def silent_ranks(self) -> list[int]:
        """Ranks whose counter did not move over three beats (the caller's own rank excluded)."""
        try:
            before = self._counts()
            time.sleep(3 * self.interval)
            after = self._counts()
        except Exception:  # noqa: BLE001 (no store: cannot tell)
            return []
        return [r for r in range(self.world_size) if after[r] == before[r] and r != self.rank]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.interval)


_heartbeat: _Heartbeat | None = None


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
        _collective("all_reduce", lambda: dist.all_reduce(values, op=dist.ReduceOp.SUM))
    return values


def barrier() -> None:
    if dist.is_initialized():
        _collective("barrier", dist.barrier)


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
    "DEFAULT_TIMEOUT_MINUTES",
    "NCCL_ERROR_SETTINGS",
    "RankTimeout",
    "all_reduce_sum",
    "explain_timeout",
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
