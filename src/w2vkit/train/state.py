"""What the training loop works on: the batch and objective protocols, the LR schedule protocol,
and `TrainState`, everything that changes during training (`checkpoint.payload` saves it).

Randomness is reseeded at every update from (seed, rank, step), as fairseq does (`reseed`), so a
resumed run continues bit-exactly no matter what consumed random numbers in between (validation,
DataLoader iterators).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from w2vkit.data.sampler import BucketBatchSampler
from w2vkit.train.diagnostics import Finding
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
    plan: Callable[[Callable[[int], float]], None] | None = None
    """Told a time budget's plan (`train.max_minutes`) as the run's progress after k updates (0 at
    the start, 1 at the planned end), once it is made and when such a run resumes; the map follows
    every re-plan without a jump. Pretraining fits its Gumbel temperature schedule to it."""
    monitor: Callable[[dict[str, Any]], list[Finding]] | None = None
    """Told every train log record; returns the new health findings to print and log (the
    objective's `w2vkit.train.diagnostics.Monitor`); `train.on_stuck` acts on the stuck ones."""
    rescue: Callable[[str], str | None] | None = None
    """Told a finding's code after a rescue rolled the run back (and, when a run resumes, each
    recorded rescue again, oldest first); applies the diagnosed change and says what it changed,
    or returns None when it has nothing (more) to try for that finding."""
    after_update: Callable[[nn.Module, int], None] | None = None
    """(unwrapped model, completed updates) after each optimizer step that was taken, e.g. an EMA
    teacher following the student; what it changes must live in the model to be checkpointed."""


class Schedule(Protocol):
    """A learning-rate schedule driven by the number of completed updates."""

    def set_step(self, step: int) -> object: ...

    def lr_at(self, step: int) -> float: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class PlannableSchedule(Schedule, Protocol):
    """A schedule that a time budget's plan can fit (polynomial decay can)."""

    warmup_steps: int
    """Updates of LR warm-up the schedule was configured with."""

    def set_total_steps(self, total_steps: int, at: Callable[[int], float] | None = None) -> None:
        """A new length, and where on it update k stands (`at(k)`; None: at k)."""


@dataclass
class Plan:
    """A time budget's plan (`w2vkit.train.budget`): where the run ends, and where each update
    stands on the LR and temperature schedules. Every re-plan starts a new segment at the current
    update and progress, so that the schedules bend there but never jump."""

    length: int
    """Updates the schedules are fitted to (the first plan's length, or longer so that the LR
    warm-up fits in the plan); update k stands at `progress(k) * length` on the LR schedule."""
    segments: list[tuple[int, float, int]]
    """(from update, progress there, planned end) of the first plan and of each re-plan: the plan
    history. Progress goes linearly from a segment's start to 1 at its planned end."""
    update_seconds: list[float] = field(default_factory=list)
    """The latest updates' durations, which the next re-plan averages (a resumed run goes on with
    them, as an uninterrupted one would)."""

    @property
    def end(self) -> int:
        return self.segments[-1][2]

    def progress(self, step: int) -> float:
        start, at, end = next(
            (s for s in reversed(self.segments) if s[0] <= step), self.segments[0]
        )
        if end <= start:
            return 1.0
        return min(at + (1.0 - at) * (step - start) / (end - start), 1.0)

    def schedule_step(self, step: int) -> float:
        return self.progress(step) * self.length

    def state_dict(self) -> dict:
        return {
            "length": self.length,
            "segments": [list(s) for s in self.segments],
            "update_seconds": list(self.update_seconds),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Plan:
        segments = [(int(s), float(p), int(e)) for s, p, e in state["segments"]]
        return cls(int(state["length"]), segments, [float(t) for t in state["update_seconds"]])


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
    plan: Plan | None = None
    """A time budget's plan (None: no plan yet, or no budget)."""
    rescues: list[dict] = field(default_factory=list)
    """The rescues so far (`w2vkit.train.rescue`), oldest first: {"update", "finding",
    "rolled_back_to", "change"}; a resumed run re-applies each change to its objective."""

    @property
    def planned_steps(self) -> int:
        """Updates a time budget planned for (0: no plan yet, or no budget)."""
        return self.plan.end if self.plan is not None else 0


def reseed(generator: torch.Generator, seed: int, rank: int, step: int) -> None:
    """Global torch RNG (dropout), the model generator, and numpy's and Python's global RNGs
    (whatever draws from them) from (seed, rank, step): a resumed run's states equal an
    uninterrupted run's at every update, whatever drew from them in between."""
    torch_seed, generator_seed, numpy_seed, python_seed = np.random.SeedSequence(
        [seed, rank, step]
    ).generate_state(4, dtype=np.uint32)
    torch.manual_seed(int(torch_seed))
    generator.manual_seed(int(generator_seed))
    np.random.seed(int(numpy_seed))
    random.seed(int(python_seed))
