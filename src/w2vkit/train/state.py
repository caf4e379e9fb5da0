"""What the training loop works on: the batch and objective protocols, the LR schedule protocol,
and `TrainState`, everything that changes during training (`checkpoint.payload` saves it).

Randomness is reseeded at every update from (seed, rank, step), as fairseq does (`reseed`), so a
resumed run continues bit-exactly no matter what consumed random numbers in between (validation,
DataLoader iterators).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from w2vkit.data.sampler import BucketBatchSampler
from w2vkit.train.metrics import MetricsWindow, Value

_Self = TypeVar("_Self", bound="LoopBatch")


class LoopBatch(Protocol):
    """What the loop needs of a batch (`w2vkit.data.collate.Batch` has it)."""

    epoch: int
    """Sampler epoch (from 0) and position of the batch, for `micro_batch_groups` and resuming."""
    position: int
    num_failed: int
    """Items that failed to decode and were replaced (counted in the log)."""

    @property
    def num_audio_samples(self) -> int: ...

    def to(self: _Self, device: torch.device, non_blocking: bool = False) -> _Self: ...


BatchT = TypeVar("BatchT", bound=LoopBatch)


@dataclass
class StepOutput:
    """What a step function returns for one micro-batch."""

    loss: Tensor
    """Summed (not averaged) objective to backpropagate."""
    sample_size: Tensor | int
    """What `loss` is a sum over (masked frames, tokens); the update divides by its global sum."""
    sums: dict[str, Value]
    """Logged values summed over micro-batches and ranks (tensors stay on the device). The loop adds
    `loss` and `sample_size` itself; `Objective.summarize` turns the sums into the logged record."""
    means: dict[str, Value] = field(default_factory=dict)
    """Logged values averaged over micro-batches and ranks."""


StepFn = Callable[[nn.Module, BatchT, int, torch.Generator], StepOutput]
"""(model, batch on the device, completed updates, generator) -> StepOutput. Runs under autocast."""


@dataclass
class Objective(Generic[BatchT]):
    """What the loop trains for."""

    step: StepFn[BatchT]
    summarize: Callable[[dict[str, float]], dict[str, float]]
    """Window sums (over micro-batches and ranks, with `loss` and `sample_size`) -> logged record,
    e.g. pretraining's loss in bits and accuracy. The window's means are added to it as they are."""
    validate: Callable[[nn.Module, Iterable[BatchT], int], dict[str, float]] | None = None
    """(unwrapped model in eval mode, valid loader, completed updates) -> record, run under
    `no_grad` and the run's autocast; it sums over ranks itself. None: `evaluate` runs `step` with a
    fixed-seed generator and `summarize`s the sums of the whole split."""
    best_metric: str = "loss"
    """Key of the validation record that picks checkpoint_best.pt; lower is better."""
    tie_breaks: tuple[str, ...] = ()
    """Keys that rank validations equal in `best_metric`, in order, lower first (`train.best`)."""
    plan: Callable[[int], None] | None = None
    """Told the planned number of updates when a time budget (`train.max_minutes`) fixes it, and
    again when such a run resumes: pretraining fits its Gumbel temperature schedule to it."""
    monitor: Callable[[dict[str, Any]], list[str]] | None = None
    """Told every train log record; returns messages to print and log (pretraining: the health
    findings of `w2vkit.train.diagnostics`)."""


class Schedule(Protocol):
    """A learning-rate schedule driven by the number of completed updates."""

    def set_step(self, step: int) -> object: ...

    def lr_at(self, step: int) -> float: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class PlannableSchedule(Schedule, Protocol):
    """A schedule whose length a time budget's plan can set (polynomial decay can)."""

    def set_total_steps(self, total_steps: int) -> None: ...


@dataclass
class TrainState:
    """Everything that changes during training; `checkpoint.payload` saves it."""

    model: nn.Module
    """DDP-wrapped under torchrun."""
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator
    """Masks, negatives, Gumbel noise and LayerDrop draw from it (on the model's device)."""
    sampler: BucketBatchSampler
    """The training batch sampler; its state says which batch comes next and holds the files
    that failed to decode (`failures`)."""
    window: MetricsWindow = field(default_factory=MetricsWindow)
    step: int = 0
    epoch: int = 1
    best_metric: float = math.inf
    """The best validation's `Objective.best_metric` (a loss, or a WER for CTC); inf: none yet."""
    best_rank: tuple[float, ...] = ()
    """The best validation's `best_metric` and tie-breaks (`w2vkit.train.best.rank`)."""
    best_step: int = 0
    """The update checkpoint_best.pt holds (0: none yet)."""
    num_nonfinite: int = 0
    consecutive_nonfinite: int = 0
    train_seconds: float = 0.0
    """Wall-clock seconds of the update loop so far, over every session of the run."""
    planned_steps: int = 0
    """Updates a time budget planned for (0: no plan yet, or no budget)."""


def reseed(generator: torch.Generator, seed: int, rank: int, step: int) -> None:
    """Global torch RNG (dropout) and the model generator from (seed, rank, step)."""
    torch_seed, generator_seed = np.random.SeedSequence([seed, rank, step]).generate_state(
        2, dtype=np.uint32
    )
    torch.manual_seed(int(torch_seed))
    generator.manual_seed(int(generator_seed))
