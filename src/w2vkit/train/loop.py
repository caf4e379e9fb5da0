"""The training loop shared by every objective: one explicit function, no hooks.

An `Objective` says what one micro-batch costs (`step`) and how its logged sums read (`summarize`);
the loop knows nothing else of it. An update runs `update_freq` micro-batches. Each backpropagates
its *summed* loss (DDP's gradient all-reduce only on the last one, `no_sync` before). Then the
gradients, which DDP averaged over `world_size` processes, are multiplied once by
`world_size / sum(sample_size)` with the sample size all-reduced over processes and micro-batches:
the update is the gradient of the per-sample mean over the global batch, exactly fairseq's trainer.
With the fused AdamW (the default) that multiplication and the clip happen inside the optimizer's
kernel, in its single pass over the parameters.
(HF's pretraining script rescales after every micro-batch, which makes accumulation unequal to a
larger batch: docs/fairseq_differences.md#fd-normalise-once.)

Host syncs. The logged values stay on the device (`MetricsWindow`) until a log line needs them: one
all-reduce and one copy to the host per `log_interval`. Each update copies its global loss, sample
size, stop flags and gradient norm to the host once, after the norm: whether the optimizer steps
depends on them (a non-finite update is skipped), so that one sync per update is needed. fp16's
GradScaler checks for overflows on its own. A step function should not call `.item()` either.

Randomness is reseeded at every update from (seed, rank, step), as fairseq does, so a resumed run
continues bit-exactly no matter what consumed random numbers in between (validation, DataLoader
iterators). Rank 0 alone logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from w2vkit.data.sampler import BucketBatchSampler
from w2vkit.train import checkpoint, dist, guard
from w2vkit.train.config import TrainConfig
from w2vkit.train.metrics import MetricsWindow, RunLogger, Throughput, Value, gpu_memory_gb

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
    best_valid_loss: float = math.inf
    """Lowest `Objective.best_metric` of validation so far (the name stays for old checkpoints)."""
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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "auto":  # TrainConfig.precision
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


STOP_SIGNALS = {signal.SIGINT: "sigint", signal.SIGTERM: "sigterm"}
"""The signals that stop a run after the current update, and the stop reason each gives."""

STOP_REQUESTS = ("sigterm", "sigint", "max_minutes")
"""What one process can ask all to stop for after the current update; the first present wins."""

EXIT_STATUS = {"nonfinite": 1, "sigint": 128 + signal.SIGINT, "sigterm": 128 + signal.SIGTERM}
"""Process exit status per stop reason (the shell's 130/143 for a signal); 0 for the others."""


def exit_status(reason: str) -> int:
    """0 when training ran to its end (max_steps, max_epochs, max_minutes), else EXIT_STATUS."""
    return EXIT_STATUS.get(reason, 0)


@dataclass
class UpdateResult:
    finite: bool
    loss: float
    """Summed loss over the global batch."""
    sample_size: float
    gnorm: float
    """Global gradient norm after normalising, before clipping."""
    stop: str | None
    """The first of STOP_REQUESTS that some process asked for, else None."""


def run_update(
    state: TrainState,
    micro_batches: Sequence[BatchT],
    objective: Objective[BatchT],
    *,
    cfg: TrainConfig,
    clip_norm: float,
    device: torch.device,
    stop_requested: str | None = None,
) -> UpdateResult:
    """Forward/backward every micro-batch, normalise once, clip, step (or skip if not finite).

    `clip_norm` > 0 clips the global norm of the normalised gradients; 0 leaves them.
    `stop_requested` is this process's reason to stop (one of STOP_REQUESTS); it is all-reduced so
    that every rank stops after the same update.
    """
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    model.train()
    reseed(state.generator, cfg.seed, dist.rank(), state.step)
    optimizer.zero_grad(set_to_none=True)
    logged, sample_size, loss = _backward(state, micro_batches, objective.step, cfg, device)
    asked = [float(stop_requested == reason) for reason in STOP_REQUESTS]
    totals = dist.all_reduce_sum(_stacked([sample_size, loss, *asked], device))
    if scaler is not None:
        scaler.unscale_(optimizer)
    gnorm, factor = _normalise_and_clip_factor(optimizer, totals[0], clip_norm)
    # The one host sync of the update: the step is skipped when the loss or the norm is not finite.
    total_size, total_loss, *stops, norm = torch.cat([totals, gnorm[None]]).tolist()
    finite = math.isfinite(total_loss) and math.isfinite(norm)
    if finite:
        _scaled_step(optimizer, scaler, factor)
        for sums, means in logged:
            state.window.add(sums, means)
        state.window.num_updates += 1
        state.window.audio_samples += sum(b.num_audio_samples for b in micro_batches)
        state.step += 1
        state.schedule.set_step(state.step)
        state.consecutive_nonfinite = 0
    else:
        optimizer.zero_grad(set_to_none=True)
        state.num_nonfinite += 1
        state.consecutive_nonfinite += 1
    if scaler is not None:
        scaler.update()  # halves the scale after an overflow, grows it after a quiet stretch
    stop = next((reason for reason, n in zip(STOP_REQUESTS, stops, strict=True) if n), None)
    return UpdateResult(finite, total_loss, total_size, norm, stop)


def _backward(
    state: TrainState,
    micro_batches: Sequence[BatchT],
    step_fn: StepFn[BatchT],
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[list[tuple[dict[str, Value], dict[str, Value]]], Tensor | int, Tensor]:
    """Gradients of the summed losses; (logged sums and means per micro-batch, size, loss) on device."""
    model, scaler = state.model, state.scaler
    ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) else None
    logged = []
    sample_size: Tensor | int = 0
    loss = torch.zeros((), dtype=torch.float64, device=device)
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # Accumulate locally; DDP all-reduces the gradients once, in the last backward.
        with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
            with autocast(device, cfg.precision):
                out = step_fn(
                    model, batch.to(device, non_blocking=True), state.step, state.generator
                )
            (scaler.scale(out.loss) if scaler is not None else out.loss).backward()
        sample_size = sample_size + out.sample_size
        loss += out.loss.detach()
        logged.append(_logged(out))
    return logged, sample_size, loss


def _logged(out: StepOutput) -> tuple[dict[str, Value], dict[str, Value]]:
    return {**out.sums, "loss": out.loss.detach(), "sample_size": out.sample_size}, out.means


def _stacked(values: list[Tensor | float | int], device: torch.device) -> Tensor:
    """Scalars (device tensors or host numbers) as one float64 vector on `device`, no host sync."""
    return torch.stack(
        [torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values]
    )


def _normalise_and_clip_factor(
    optimizer: torch.optim.Optimizer, total_size: Tensor, clip_norm: float
) -> tuple[Tensor, Tensor]:
    """(norm of the normalised gradients before clipping, the factor that normalises and clips
    them), both on the device. The gradients are not touched yet: `_scaled_step` applies the factor.
    """
    grads = _gradients(optimizer)
    # DDP averaged over ranks: * world_size / global sample size = grad of the global mean.
    scale = (dist.world_size() / total_size.clamp(min=1.0)).float()
    if not grads:
        return total_size.new_zeros(()), scale
    norm = nn.utils.get_total_norm(grads).float() * scale
    factor = scale
    if clip_norm > 0:  # torch's `clip_grads_with_norm_` coefficient
        factor = scale * (clip_norm / (norm + 1e-6)).clamp(max=1.0)
    return norm.to(torch.float64), factor


def _scaled_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, factor: Tensor
) -> None:
    """Multiply the gradients by `factor`, then step."""
    if scaler is None and optimizer.defaults.get("fused"):
        # The fused Adam(W) kernel divides each gradient by `grad_scale` (AMP's protocol) in its
        # one pass over the parameters: no separate pass over 95M gradients for BASE.
        optimizer.grad_scale = 1.0 / factor  # type: ignore[attr-defined]
        optimizer.found_inf = None  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]
        return
    grads = _gradients(optimizer)
    if grads:
        torch._foreach_mul_(grads, factor.to(grads[0].dtype))
    if scaler is not None:
        scaler.step(optimizer)
    else:
        optimizer.step()


def _gradients(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]


def micro_batch_groups(
    loader: Iterable[BatchT], sampler: BucketBatchSampler, update_freq: int, max_epochs: int
) -> Iterator[list[BatchT]]:
    """Groups of `update_freq` batches; an epoch's last group may be shorter (as fairseq's)."""
    while not (max_epochs and sampler.state_dict()["epoch"] >= max_epochs):
        group: list[BatchT] = []
        for batch in loader:  # the rest of the sampler's current epoch
            group.append(batch)
            if len(group) == update_freq:
                yield group
                group = []
        if group:
            yield group


def evaluate(
    model: nn.Module,
    loader: Iterable[BatchT],
    objective: Objective[BatchT],
    *,
    cfg: TrainConfig,
    device: torch.device,
    step: int,
) -> dict[str, float]:
    """The validation record: `objective.validate`, or the objective's own sums over the split.

    The model runs unwrapped, in eval mode (its previous mode is restored), under `no_grad`; masks
    and negatives draw from a generator seeded with `cfg.seed`, so successive validations compare.
    """
    model = dist.unwrap(model)
    was_training = model.training
    model.eval()
    # Every validation sees the same batches, crops and replacement draws (seeded by epoch), so
    # losses compare across updates and a resumed run validates as an uninterrupted one.
    sampler = getattr(loader, "sampler", None)
    if sampler is not None:
        sampler.set_epoch(0)
    try:
        with torch.no_grad(), autocast(device, cfg.precision):
            if objective.validate is not None:
                return objective.validate(model, loader, step)
            generator = torch.Generator(device).manual_seed(cfg.seed)
            window = MetricsWindow()
            for batch in loader:
                window.add(*_logged(objective.step(model, batch.to(device), step, generator)))
    finally:
        model.train(was_training)
    sums, means, _ = window.reduce(device)
    record = objective.summarize(sums) | means
    record.pop("sample_size", None)
    return record


class StopSignals:
    """SIGTERM/SIGINT ask the loop to stop after the current update (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        """"sigint" or "sigterm": the first signal received."""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only; nothing to install
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = self.reason or STOP_SIGNALS[signal.Signals(signum)]


CALIBRATION_UPDATES = 10
"""Updates a time budget times, after a session's first (which pays for warm-up), to plan the run."""

_now = time.monotonic  # the budget's clock (tests replace it)


class TimeBudget:
    """`train.max_minutes`: a wall-clock budget for the update loop, and the plan that fits it.

    The clock runs from the loop's start to its end, validation and checkpoints included, and
    `state.train_seconds` carries it over resumed sessions. The session's first update is not
    timed (warm-up); the next CALIBRATION_UPDATES are: with their mean time per update `t`, the
    run plans `planned = step + floor(seconds left / t)` updates (at most `train.max_steps`), the
    same on every rank. The plan is kept in `state.planned_steps` (and checkpoints), so a resumed
    run keeps it, and the run ends at `planned` like at max_steps. Should the time run out first
    (slower updates later), the update in progress is the last.
    """

    def __init__(self, state: TrainState, minutes: float, max_steps: int) -> None:
        self.seconds = 60.0 * minutes
        self.max_steps = max_steps
        self.first_step = state.step
        self.timed_from: float | None = None
        self.last = _now()

    def tick(self, state: TrainState) -> None:
        """After each update: add the time since the last tick to `state.train_seconds`."""
        now = _now()
        state.train_seconds += now - self.last
        self.last = now
        if state.step == self.first_step + 1:
            self.timed_from = state.train_seconds

    def exhausted(self, state: TrainState) -> bool:
        return state.train_seconds >= self.seconds

    def plan(self, state: TrainState, device: torch.device) -> tuple[int, float] | None:
        """(planned updates, seconds per update) once the calibration updates are done, else None."""
        if state.planned_steps or self.timed_from is None:
            return None
        if state.step != self.first_step + 1 + CALIBRATION_UPDATES:
            return None
        per_rank = [
            (state.train_seconds - self.timed_from) / CALIBRATION_UPDATES,
            state.train_seconds,
        ]
        # The ranks' clocks differ a little: plan with their mean, so that all stop together.
        mean = dist.all_reduce_sum(torch.tensor(per_rank, dtype=torch.float64, device=device))
        per_update, used = (mean / dist.world_size()).tolist()
        planned = state.step + max(int((self.seconds - used) / max(per_update, 1e-9)), 0)
        return (min(planned, self.max_steps) if self.max_steps else planned), per_update


def _every(interval: int, step: int) -> bool:
    return interval > 0 and step % interval == 0


@dataclass
class _Run(Generic[BatchT]):
    """What `train` keeps between updates; its methods are the loop's log, validate and save rules."""

    state: TrainState
    objective: Objective[BatchT]
    cfg: TrainConfig
    valid_loader: Iterable[BatchT] | None
    device: torch.device
    out_dir: Path
    config_dict: dict
    logger: RunLogger
    sample_rate: int
    throughput: Throughput = field(default_factory=Throughput)
    last_valid: dict | None = None
    saved_at: int | None = None
    validated_at: int | None = None
    budget: TimeBudget | None = None
    data_wait_seconds: float = 0.0
    """Seconds spent waiting for the data loader since the last train log line."""
    window_start: float = field(default_factory=time.perf_counter)

    def apply_plan(self) -> None:
        """Fit the LR schedule (if it can) and the objective (`plan`) to `state.planned_steps`."""
        planned = self.state.planned_steps
        if isinstance(self.state.schedule, PlannableSchedule):
            self.state.schedule.set_total_steps(planned)
        if self.objective.plan is not None:
            self.objective.plan(planned)

    def check_budget(self) -> None:
        """After an update: advance the budget's clock; plan the run once it is timed."""
        if self.budget is None:
            return
        self.budget.tick(self.state)
        planned = self.budget.plan(self.state, self.device)
        if planned is not None:
            self.state.planned_steps, per_update = planned
            self.apply_plan()
            self.logger.set_total(self.state.planned_steps)
            self.logger.message(
                f"time budget {self.cfg.max_minutes:g} min: {per_update:.3g} s per update over "
                f"{CALIBRATION_UPDATES} updates, so {self.state.planned_steps} updates in all; the "
                "schedules end there"
            )

    def save(self, *, interval: bool, best: bool = False) -> None:
        state = self.state
        self.saved_at = state.step
        window = state.window.all_reduced(self.device)  # collective: every rank's unlogged sums
        if dist.is_main():
            checkpoint.write_checkpoints(
                checkpoint.payload(state, self.config_dict, self.last_valid, window=window),
                self.out_dir,
                epoch=state.epoch,
                step=state.step,
                interval=interval,
                best=best,
                keep=self.cfg.keep_interval_checkpoints,
            )
        dist.barrier()

    def validate(self) -> bool:
        """Evaluate and log; True on a new best `objective.best_metric` (strictly lower)."""
        state, metric = self.state, self.objective.best_metric
        if self.valid_loader is None:
            return False
        self.validated_at = state.step
        record = evaluate(
            state.model,
            self.valid_loader,
            self.objective,
            cfg=self.cfg,
            device=self.device,
            step=state.step,
        )
        if metric not in record:
            raise KeyError(
                f"the validation record has no {metric!r} (Objective.best_metric); it has "
                f"{', '.join(sorted(record))}"
            )
        best = guard.improves(record[metric], state.best_valid_loss)
        state.best_valid_loss = record[metric] if best else state.best_valid_loss
        warning = guard.warn_nonfinite_valid(record, state.step, self.valid_loader)
        if warning:
            self.logger.message(warning)
        self.last_valid = record = guard.strict_record(record)
        self.logger.log(
            guard.strict_record(
                {
                    "split": "valid",
                    "epoch": state.epoch,
                    "num_updates": state.step,
                    **record,
                    f"best_{metric}": state.best_valid_loss,
                }
            )
        )
        return best

    def after_update(self) -> None:
        """Validate every `validate_interval_steps` and at each save; save every `save_interval_steps`
        and on a new best."""
        cfg, step = self.cfg, self.state.step
        save_now = _every(cfg.save_interval_steps, step)
        best = self.validate() if save_now or _every(cfg.validate_interval_steps, step) else False
        if save_now or best:
            self.save(interval=save_now, best=best)

    def finish(self) -> None:
        """At the planned end: validate and save what the last interval has not."""
        step = self.state.step
        if self.saved_at != step:
            best = self.validate() if self.validated_at != step else False
            self.save(interval=False, best=best)

    def log_train(self, result: UpdateResult) -> None:
        """One train line: the window's record (one all-reduce, one host copy) and the loop's keys."""
        state = self.state
        sums, means, counts = state.window.reduce(self.device)
        num_updates, state.window = state.window.num_updates, MetricsWindow()
        audio_seconds = counts["audio_samples"] / self.sample_rate
        record = self.objective.summarize(sums) | means
        record["sample_size"] = sums["sample_size"] / max(num_updates, 1)  # per update, all ranks
        record["batch_audio_sec"] = audio_seconds / max(num_updates, 1)
        # lr of the next update, as fairseq logs it; gnorm of the last update, before clipping.
        record |= {"lr": state.schedule.lr_at(state.step), "gnorm": result.gnorm}
        if state.scaler is not None:
            record["loss_scale"] = state.scaler.get_scale()
        rates = self.throughput.rates(num_updates, audio_seconds)
        failed_files, failure_events = state.sampler.failures.reduce()
        now = time.perf_counter()
        # This process's share of the wall time spent waiting for batches (the data pipeline).
        record["data_wait_frac"] = self.data_wait_seconds / max(now - self.window_start, 1e-9)
        self.data_wait_seconds, self.window_start = 0.0, now
        line = {
            "split": "train",
            "epoch": state.epoch,
            "num_updates": state.step,
            **record,
            **rates,
            **gpu_memory_gb(self.device),
            "num_nonfinite": state.num_nonfinite,
            "num_failed_files": failed_files,
            "num_failed_decodes": failure_events,
        }
        self.logger.log(line)
        for message in self.objective.monitor(line) if self.objective.monitor else []:
            self.logger.message(message)

    def skipped(self, result: UpdateResult) -> bool:
        """Report a skipped update; True (after saving) when too many came in a row."""
        state = self.state
        self.logger.message(
            f"update {state.step + 1} skipped: loss {result.loss:.4g}, gradient norm "
            f"{result.gnorm:.4g} ({state.consecutive_nonfinite} in a row)"
        )
        if state.consecutive_nonfinite < self.cfg.max_consecutive_nonfinite:
            return False
        window = state.window.all_reduced(self.device)
        if dist.is_main():  # the diverged state must not replace the last good one
            failed = checkpoint.payload(state, self.config_dict, self.last_valid, window=window)
            checkpoint.save_atomic(failed, self.out_dir / checkpoint.FAILED)
        dist.barrier()
        last = self.out_dir / checkpoint.LAST
        kept = f"{last} keeps the last good state" if last.exists() else "nothing else saved"
        self.logger.message(
            f"stopping: {state.consecutive_nonfinite} updates in a row had a non-finite loss or "
            f"gradient; {kept}, the failed state is in {checkpoint.FAILED}. Try a lower learning "
            "rate, gradient clipping, or train.precision=bf16/fp32."
        )
        return True

    def stopped_by(self, reason: str) -> None:
        self.save(interval=False)
        self.logger.message(
            f"stopped by {reason.upper()} at update {self.state.step}; "
            f"{self.out_dir / checkpoint.LAST} saved"
        )


def train(
    state: TrainState,
    objective: Objective[BatchT],
    *,
    cfg: TrainConfig,
    clip_norm: float,
    train_loader: Iterable[BatchT],
    valid_loader: Iterable[BatchT] | None,
    device: torch.device,
    out_dir: Path,
    config_dict: dict,
    logger: RunLogger,
    sample_rate: int = 16000,
) -> str:
    """Run updates until a stop condition; returns why it stopped (`exit_status` maps it).

    "max_steps", "max_epochs", "max_minutes" (`TimeBudget`): the end of the plan, validated and
    saved; "sigint"/"sigterm": asked to stop, checkpoint saved; "nonfinite": too many skipped
    updates in a row, checkpoint saved.
    `config_dict` goes into every checkpoint; `sample_rate` converts samples to audio seconds.
    """
    run = _Run(
        state, objective, cfg, valid_loader, device, Path(out_dir), config_dict, logger, sample_rate
    )
    if cfg.max_minutes > 0:
        run.budget = TimeBudget(state, cfg.max_minutes, cfg.max_steps)
        if state.planned_steps:  # resumed: the plan of the first session holds
            run.apply_plan()
            logger.set_total(state.planned_steps)
    start_step = state.step
    with StopSignals() as signals:
        reason = _updates(run, train_loader, clip_norm, signals)
        # Still under the handler: a SIGTERM during the final validation must not lose the save.
        if reason in ("max_steps", "max_epochs", "max_minutes") and state.step > start_step:
            run.finish()
    return reason


def _updates(
    run: _Run[BatchT], loader: Iterable[BatchT], clip_norm: float, signals: StopSignals
) -> str:
    """The update loop of `train`, up to the stop reason."""
    state, cfg, budget = run.state, run.cfg, run.budget
    groups = micro_batch_groups(loader, state.sampler, cfg.update_freq, cfg.max_epochs)
    while not (cfg.max_steps and state.step >= cfg.max_steps):
        if state.planned_steps and state.step >= state.planned_steps:
            return "max_minutes"
        waited = time.perf_counter()
        group = next(groups, None)
        run.data_wait_seconds += time.perf_counter() - waited
        if group is None:
            return "max_epochs"
        state.epoch = group[-1].epoch + 1  # fairseq counts epochs from 1
        result = run_update(
            state,
            group,
            run.objective,
            cfg=cfg,
            clip_norm=clip_norm,
            device=run.device,
            stop_requested=signals.reason
            or ("max_minutes" if budget is not None and budget.exhausted(state) else None),
        )
        if not result.finite and run.skipped(result):
            return "nonfinite"
        run.logger.progress(state.step)
        if result.finite and state.step % cfg.log_interval == 0:
            run.log_train(result)
        if result.stop is not None and result.stop in STOP_SIGNALS.values():
            run.stopped_by(result.stop)
            return result.stop
        if result.finite:
            run.after_update()
        run.check_budget()
        if result.stop is not None:
            return result.stop
    return "max_steps"


__all__ = [
    "CALIBRATION_UPDATES",
    "EXIT_STATUS",
    "STOP_REQUESTS",
    "STOP_SIGNALS",
    "BatchT",
    "LoopBatch",
    "Objective",
    "PlannableSchedule",
    "Schedule",
    "StepFn",
    "StepOutput",
    "StopSignals",
    "TimeBudget",
    "TrainState",
    "UpdateResult",
    "autocast",
    "evaluate",
    "exit_status",
    "micro_batch_groups",
    "reseed",
    "run_update",
    "train",
]
