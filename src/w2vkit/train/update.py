"""One update: forward/backward every micro-batch, normalise the gradients once, clip, step.

An update runs `update_freq` micro-batches. Each backpropagates its *summed* loss (DDP's gradient
all-reduce only on the last one, `no_sync` before). Then the gradients, which DDP averaged over
`world_size` processes, are multiplied once by `world_size / sum(sample_size)` with the sample size
all-reduced over processes and micro-batches: the update is the gradient of the per-sample mean over
the global batch, exactly fairseq's trainer. With the fused AdamW (the default) that multiplication
and the clip happen inside the optimizer's kernel, in its single pass over the parameters.
(HF's pretraining script rescales after every micro-batch, which makes accumulation unequal to a
larger batch: docs/fairseq_differences.md#fd-normalise-once.)

Host syncs. Each update copies its global loss, sample size, stop flags and gradient norm to the
host once, after the norm: the loop needs them (to count a skipped update, to stop), so that one
sync per update is needed. The skip itself happens on the device where it can: the fused AdamW
takes the non-finite flag as `found_inf` and leaves the parameters and its state untouched.
fp16's GradScaler checks for overflows on its own. A step function should not call `.item()` either.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from w2vkit.train import dist
from w2vkit.train.config import TrainConfig
from w2vkit.train.metrics import Value
from w2vkit.train.signals import STOP_REQUESTS
from w2vkit.train.state import BatchT, Objective, StepFn, StepOutput, TrainState, reseed


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "auto":  # TrainConfig.precision
        precision = "bf16" if device.type == "cuda" else "fp32"
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
    per_batch, sample_size, loss = _backward(state, micro_batches, objective.step, cfg, device)
    asked = [float(stop_requested == reason) for reason in STOP_REQUESTS]
    totals = dist.all_reduce_sum(_stacked([sample_size, loss, *asked], device))
    if scaler is not None:
        scaler.unscale_(optimizer)
    gnorm, factor = _normalise_and_clip_factor(optimizer, totals[0], clip_norm)
    fused = scaler is None and bool(optimizer.defaults.get("fused"))
    if fused:  # stepped before the host knows: the kernel itself skips a non-finite update
        found_inf = (~(torch.isfinite(totals[1]) & torch.isfinite(gnorm))).float()
        _fused_step(optimizer, factor, found_inf)
    # The one host sync of the update: the loop counts a non-finite update, and stops when asked.
    total_size, total_loss, *stops, norm = torch.cat([totals, gnorm[None]]).tolist()
    finite = math.isfinite(total_loss) and math.isfinite(norm)
    if finite:
        if not fused:
            _scaled_step(optimizer, scaler, factor)
        for sums, means in per_batch:
            state.window.add(sums, means)
        state.window.num_updates += 1
        state.window.audio_samples += sum(b.num_audio_samples for b in micro_batches)
        state.step += 1
        state.schedule.set_step(state.step)
        if objective.after_update is not None:
            objective.after_update(dist.unwrap(model), state.step)
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
    per_batch = []
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
        per_batch.append(logged(out))
    return per_batch, sample_size, loss


def logged(out: StepOutput) -> tuple[dict[str, Value], dict[str, Value]]:
    """A step's logged (sums, means), the loss and sample size among the sums."""
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


def _fused_step(optimizer: torch.optim.Optimizer, factor: Tensor, found_inf: Tensor) -> None:
    """Step the fused Adam(W) with the gradients multiplied by `factor`, unless `found_inf` is 1.

    The kernel divides each gradient by `grad_scale` (AMP's protocol) in its one pass over the
    parameters (no separate pass over 95M gradients for BASE), and with `found_inf` 1 it leaves
    the parameters, the moments and the step count as they were: no host sync for the decision.
    """
    optimizer.grad_scale = 1.0 / factor  # type: ignore[attr-defined]
    optimizer.found_inf = found_inf  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]


def _scaled_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, factor: Tensor
) -> None:
    """Multiply the gradients by `factor`, then step (the optimizers that are not fused)."""
    grads = _gradients(optimizer)
    if grads:
        torch._foreach_mul_(grads, factor.to(grads[0].dtype))
    if scaler is not None:
        scaler.step(optimizer)
    else:
        optimizer.step()


def _gradients(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
