"""The training loop: one explicit function, no hooks.

An update runs `update_freq` micro-batches. Each backpropagates its *summed* loss (DDP's gradient
all-reduce only on the last one, `no_sync` before). Then the gradients, which DDP averaged over
`world_size` processes, are multiplied once by `world_size / sum(sample_size)` with the sample size
all-reduced over processes and micro-batches: the update is the gradient of the per-masked-frame
mean over the global batch, exactly fairseq's trainer. (HF's pretraining script rescales after
every micro-batch, which makes accumulation unequal to a larger batch: REFERENCE.md 13 #9.)

Randomness is reseeded at every update from (seed, rank, step), as fairseq does, so a resumed run
continues bit-exactly no matter what consumed random numbers in between (validation, DataLoader
iterators). Rank 0 alone logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from w2vkit.train import checkpoint, dist
from w2vkit.train.config import TrainConfig
from w2vkit.train.metrics import MetricsWindow, RunLogger, Throughput, gpu_memory_gb


@dataclass
class StepOutput:
    """What a step function returns for one micro-batch."""

    loss: Tensor
    """Summed (not averaged) objective to backpropagate."""
    sample_size: Tensor | int
    """What `loss` is a sum over (masked frames); the update divides by its global sum."""
    sums: Mapping[str, Tensor | float]
    """Logged values summed over micro-batches and ranks."""
    means: Mapping[str, Tensor | float] = field(default_factory=dict)
    """Logged values averaged over micro-batches and ranks."""


StepFn = Callable[[nn.Module, object, int, torch.Generator], StepOutput]
"""(model, batch on the device, completed updates, generator) -> StepOutput."""


class Schedule(Protocol):
    """Sets the optimizer's LR from the number of completed updates (polynomial, tri-stage)."""

    def set_step(self, step: int) -> float: ...
    def lr_at(self, step: int) -> float: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Objective:
    """What a recipe plugs into the loop: its step, how its sums are logged, how it validates."""

    step: StepFn
    summarize: Callable[[dict[str, float]], dict[str, float]]
    """Window sums (reduced over ranks) -> logged record."""
    validate: Callable[[nn.Module, Iterable, int], dict[str, float]] | None = None
    """(unwrapped model in eval mode, valid loader, step) -> record; None: `evaluate`."""
    best_metric: str = "loss"
    """Key of the validation record that picks checkpoint_best.pt; lower is better."""


@dataclass
class TrainState:
    """Everything that changes during training; `payload()` is its checkpoint."""

    model: nn.Module
    """DDP-wrapped under torchrun."""
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator
    """Masks, negatives, Gumbel noise and LayerDrop draw from it (on the model's device)."""
    sampler: object
    """The training batch sampler (`state_dict()` / `load_state_dict()`)."""
    window: MetricsWindow = field(default_factory=MetricsWindow)
    step: int = 0
    epoch: int = 1
    best_valid_loss: float = math.inf
    """Best value of the objective's `best_metric` so far."""
    num_nonfinite: int = 0
    consecutive_nonfinite: int = 0
    num_failed_files: int = 0
    """Audio files this process failed to decode and replaced (summed over processes in logs)."""

    def payload(self, config: dict, last_valid: dict | None) -> dict:
        return {
            "format": checkpoint.FORMAT,
            "config": config,
            "model": dist.unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": checkpoint.capture_rng(self.generator),
            "sampler": self.sampler.state_dict(),
            "progress": {
                "step": self.step,
                "epoch": self.epoch,
                "best_valid_loss": self.best_valid_loss,
                "num_nonfinite": self.num_nonfinite,
                "consecutive_nonfinite": self.consecutive_nonfinite,
                "num_failed_files": self.num_failed_files,
            },
            "metrics": {"window": self.window.state_dict(), "valid": last_valid},
        }

    def restore(self, payload: dict) -> None:
        dist.unwrap(self.model).load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        if self.scaler is not None and payload["scaler"] is not None:
            self.scaler.load_state_dict(payload["scaler"])
        checkpoint.restore_rng(payload["rng"], self.generator)
        self.sampler.load_state_dict(payload["sampler"])
        self.window.load_state_dict(payload["metrics"]["window"])
        progress = payload["progress"]
        self.step, self.epoch = int(progress["step"]), int(progress["epoch"])
        self.best_valid_loss = float(progress["best_valid_loss"])
        self.num_nonfinite = int(progress["num_nonfinite"])
        self.consecutive_nonfinite = int(progress["consecutive_nonfinite"])
        self.num_failed_files = int(progress.get("num_failed_files", 0))


def reseed(generator: torch.Generator, seed: int, rank: int, step: int) -> None:
    """Global torch RNG (dropout) and the model generator from (seed, rank, step)."""
    torch_seed, generator_seed = np.random.SeedSequence([seed, rank, step]).generate_state(
        2, dtype=np.uint32
    )
    torch.manual_seed(int(torch_seed))
    generator.manual_seed(int(generator_seed))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class UpdateResult:
    finite: bool
    loss: float
    """Summed loss over the global batch."""
    sample_size: float
    gnorm: float
    stop_requested: bool


def run_update(
    state: TrainState,
    micro_batches: list,
    objective: Objective,
    *,
    cfg: TrainConfig,
    clip_norm: float,
    device: torch.device,
    stop_requested: bool = False,
) -> UpdateResult:
    """Forward/backward every micro-batch, normalise once, clip, step (or skip if not finite)."""
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    model.train()
    reseed(state.generator, cfg.seed, dist.rank(), state.step)
    optimizer.zero_grad(set_to_none=True)
    is_ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    sample_size, loss_sum, logs = 0.0, 0.0, []
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # Accumulate locally; DDP all-reduces the gradients once, in the last backward.
        with model.no_sync() if is_ddp and not last else contextlib.nullcontext():
            with autocast(device, cfg.precision):
                out = objective.step(
                    model, batch.to(device, non_blocking=True), state.step, state.generator
                )
            (scaler.scale(out.loss) if scaler is not None else out.loss).backward()
        sample_size += float(out.sample_size)
        loss_sum += float(out.loss.detach())
        logs.append(out)
    totals = torch.tensor(
        [sample_size, loss_sum, float(stop_requested)], dtype=torch.float64, device=device
    )
    total_size, total_loss, stops = dist.all_reduce_sum(totals).tolist()
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grads = [p.grad for p in params]
    if grads:
        # DDP averaged over ranks: * world_size / global sample size = grad of the global mean.
        torch._foreach_mul_(grads, dist.world_size() / max(total_size, 1.0))
    max_norm = clip_norm if clip_norm > 0 else math.inf
    gnorm = float(nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
    finite = math.isfinite(total_loss) and math.isfinite(gnorm)
    if finite:
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
        for out in logs:
            state.window.add(out.sums, out.means)
        state.window.num_updates += 1
        state.step += 1
        state.schedule.set_step(state.step)
        state.consecutive_nonfinite = 0
    else:
        optimizer.zero_grad(set_to_none=True)
        state.num_nonfinite += 1
        state.consecutive_nonfinite += 1
    if scaler is not None:
        scaler.update()  # halves the scale after an overflow, grows it after a quiet stretch
    return UpdateResult(finite, total_loss, total_size, gnorm, stops > 0)


def micro_batch_groups(loader, sampler, update_freq: int, max_epochs: int) -> Iterator[list]:
    """Groups of `update_freq` batches; an epoch's last group may be shorter (as fairseq's)."""
    while not (max_epochs and sampler.state_dict()["epoch"] >= max_epochs):
        group = []
        for batch in loader:  # the rest of the sampler's current epoch
            group.append(batch)
            if len(group) == update_freq:
                yield group
                group = []
        if group:
            yield group


def evaluate(
    model: nn.Module,
    loader,
    objective: Objective,
    *,
    cfg: TrainConfig,
    device: torch.device,
    step: int,
) -> dict:
    """The objective's `validate`, or its step's summarized sums under no_grad with masks from a
    fixed seed, so runs compare."""
    model = dist.unwrap(model)
    was_training = model.training
    model.eval()
    if objective.validate is not None:
        with autocast(device, cfg.precision):
            record = objective.validate(model, loader, step)
        model.train(was_training)
        return record
    generator = torch.Generator(device).manual_seed(cfg.seed)
    window = MetricsWindow()
    with torch.no_grad(), autocast(device, cfg.precision):
        for batch in loader:
            out = objective.step(model, batch.to(device), step, generator)
            window.add(out.sums, out.means)
    model.train(was_training)
    record = window.reduce(device, objective.summarize)
    record.pop("sample_size", None)
    return record


class StopSignals:
    """SIGTERM/SIGINT ask the loop to stop after the current update (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only; nothing to install
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


def train(
    state: TrainState,
    objective: Objective,
    *,
    cfg: TrainConfig,
    clip_norm: float,
    train_loader,
    valid_loader,
    device: torch.device,
    out_dir: Path,
    config_dict: dict,
    logger: RunLogger,
    sample_rate: int = 16000,
) -> str:
    """Run updates until a stop condition; returns why it stopped.

    Reasons: "max_steps", "max_epochs", "signal" (checkpoint saved), "nonfinite" (too many skipped
    updates in a row; checkpoint saved; the caller reports failure).
    """
    tc = cfg
    throughput = Throughput()
    last_valid: dict | None = None
    audio_samples = 0.0
    saved_at = validated_at = None

    def save(*, interval: bool, best: bool = False) -> None:
        nonlocal saved_at
        saved_at = state.step
        if dist.is_main():
            checkpoint.write_checkpoints(
                state.payload(config_dict, last_valid),
                out_dir,
                epoch=state.epoch,
                step=state.step,
                interval=interval,
                best=best,
                keep=tc.keep_interval_checkpoints,
            )
        dist.barrier()

    def validate() -> bool:
        nonlocal last_valid, validated_at
        if valid_loader is None:
            return False
        validated_at = state.step
        last_valid = evaluate(
            state.model, valid_loader, objective, cfg=cfg, device=device, step=state.step
        )
        value = last_valid[objective.best_metric]
        best = value < state.best_valid_loss
        state.best_valid_loss = min(state.best_valid_loss, value)
        logger.log(
            {
                "split": "valid",
                "epoch": state.epoch,
                "num_updates": state.step,
                **last_valid,
                f"best_{objective.best_metric}": state.best_valid_loss,
            }
        )
        return best

    reason, start_step = "max_steps", state.step
    with StopSignals() as signals:
        groups = micro_batch_groups(train_loader, state.sampler, tc.update_freq, tc.max_epochs)
        while not (tc.max_steps and state.step >= tc.max_steps):
            group = next(groups, None)
            if group is None:
                reason = "max_epochs"
                break
            state.epoch = group[-1].epoch + 1  # fairseq counts epochs from 1
            audio_samples += sum(b.num_audio_samples for b in group)
            state.num_failed_files += sum(b.num_failed for b in group)
            result = run_update(
                state,
                group,
                objective,
                cfg=cfg,
                clip_norm=clip_norm,
                device=device,
                stop_requested=signals.requested,
            )
            if not result.finite:
                logger.message(
                    f"update {state.step + 1} skipped: loss {result.loss:.4g}, gradient norm "
                    f"{result.gnorm:.4g} ({state.consecutive_nonfinite} in a row)"
                )
                if state.consecutive_nonfinite >= tc.max_consecutive_nonfinite:
                    save(interval=False)
                    logger.message(
                        f"stopping: {state.consecutive_nonfinite} updates in a row had a non-finite loss or "
                        f"gradient; {out_dir / checkpoint.LAST} holds step {state.step}. Try a lower optim.lr, "
                        "optim.clip_norm > 0, or train.precision=bf16/fp32."
                    )
                    return "nonfinite"
            elif state.step % tc.log_interval == 0:
                record = state.window.reduce(device, objective.summarize)
                num_updates, state.window = state.window.num_updates, MetricsWindow()
                record["sample_size"] /= max(
                    num_updates, 1
                )  # masked frames per update, all processes
                counts = [audio_samples, state.num_failed_files]
                audio, failed = dist.all_reduce_sum(
                    torch.tensor(counts, dtype=torch.float64, device=device)
                ).tolist()
                audio_samples = 0.0
                rates = throughput.rates(num_updates, audio / sample_rate)
                # lr of the next update, as fairseq logs it; gnorm of the last update, before clipping.
                record |= {"lr": state.schedule.lr_at(state.step), "gnorm": result.gnorm}
                if state.scaler is not None:
                    record["loss_scale"] = state.scaler.get_scale()
                logger.log(
                    {
                        "split": "train",
                        "epoch": state.epoch,
                        "num_updates": state.step,
                        **record,
                        **rates,
                        **gpu_memory_gb(device),
                        "num_nonfinite": state.num_nonfinite,
                        "num_failed_files": int(failed),
                    }
                )
                logger.progress(state.step, record.get("loss"), rates["audio_sec_per_sec"])
            if result.stop_requested:
                save(interval=False)
                logger.message(
                    f"stopped by signal at update {state.step}; {out_dir / checkpoint.LAST} saved"
                )
                return "signal"
            if not result.finite:
                continue
            save_now = tc.save_interval_steps and state.step % tc.save_interval_steps == 0
            validate_now = (
                tc.validate_interval_steps and state.step % tc.validate_interval_steps == 0
            )
            best = validate() if save_now or validate_now else False
            if save_now:
                save(interval=True, best=best)
            elif best:
                save(interval=False, best=True)
    if state.step > start_step and saved_at != state.step:  # else nothing new to validate or save
        best = validate() if validated_at != state.step else False
        save(interval=False, best=best)
    return reason


__all__ = [
    "Objective",
    "StepFn",
    "StepOutput",
    "TrainState",
    "UpdateResult",
    "autocast",
    "evaluate",
    "micro_batch_groups",
    "reseed",
    "run_update",
    "train",
]
