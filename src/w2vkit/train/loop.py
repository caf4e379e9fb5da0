"""The training loop shared by every objective: one explicit function, no hooks.

An `Objective` (`w2vkit.train.state`) says what one micro-batch costs (`step`) and how its logged
sums read (`summarize`); the loop knows nothing else of it. `train` runs updates
(`w2vkit.train.update.run_update`) until a stop condition: the end of the data or of the plan
(`max_steps`, a time budget's plan, `w2vkit.train.budget`), a signal (`w2vkit.train.signals`), or
too many non-finite updates in a row. Between updates it logs, validates and saves.

The logged values stay on the device (`MetricsWindow`) until a log line needs them: one
all-reduce and one copy to the host per `log_interval`. Rank 0 alone logs and writes checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic

import torch
from torch import nn

from w2vkit.data.sampler import BucketBatchSampler
from w2vkit.train import checkpoint, dist, guard, metrics, rescue
from w2vkit.train.best import improves
from w2vkit.train.best import rank as best_rank
from w2vkit.train.budget import TimeBudget
from w2vkit.train.config import TrainConfig
from w2vkit.train.metrics import MetricsWindow, RunLogger, Throughput, gpu_memory_gb
from w2vkit.train.signals import STOP_SIGNALS, StopSignals
from w2vkit.train.state import BatchT, Objective, PlannableSchedule, TrainState
from w2vkit.train.update import UpdateResult, autocast, logged, run_update


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
                window.add(*logged(objective.step(model, batch.to(device), step, generator)))
    finally:
        model.train(was_training)
    sums, means, _ = window.reduce(device)
    record = objective.summarize(sums) | means
    record.pop("sample_size", None)
    return record


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
    stuck: rescue.Finding | None = None  # of the latest log line, for `unstick`

    def apply_plan(self) -> None:
        """Fit the LR schedule (if it can) and the objective (`plan`) to `state.plan`."""
        plan = self.state.plan
        if plan is None:
            return
        if isinstance(self.state.schedule, PlannableSchedule):
            self.state.schedule.set_total_steps(plan.length, plan.schedule_step)
        if self.objective.plan is not None:
            self.objective.plan(plan.progress)
        self.logger.set_total(plan.end)

    def check_budget(self) -> None:
        """After an update: advance the budget's clock; make or move the plan when it is due."""
        if self.budget is None:
            return
        self.budget.tick(self.state)
        schedule = self.state.schedule
        warmup = schedule.warmup_steps if isinstance(schedule, PlannableSchedule) else 0
        said = self.budget.replan(self.state, self.device, warmup)
        if said is not None:
            self.apply_plan()
            self.logger.message(said)

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
        """Evaluate and log; True on a new best (`w2vkit.train.best`: `objective.best_metric`,
        then its tie-breaks; equal or lower wins)."""
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
        ranked = best_rank(record, (metric, *self.objective.tie_breaks))
        best = improves(ranked, state.best_rank)
        if best and ranked is not None:
            state.best_metric, state.best_rank, state.best_step = ranked[0], ranked, state.step
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
                    f"best_{metric}": state.best_metric,
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
        if self.cfg.diagnostics:
            record |= metrics.module_grad_norms(state.model, result.gnorm)
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
        for finding in self.objective.monitor(line) if self.objective.monitor else []:
            self.logger.message(finding.format())
            self.stuck = self.stuck or (finding if finding.code in rescue.STUCK else None)

    def unstick(self) -> str | None:
        """Act on a stuck finding by `train.on_stuck`: "stuck" to stop, "rescued" after a rollback."""
        finding, self.stuck = self.stuck, None
        if finding is None or self.cfg.on_stuck == "warn":
            return None
        if self.cfg.on_stuck == "stop":
            self.save(interval=False)
            self.logger.message(rescue.stop_message(finding, self.out_dir))
            return "stuck"
        said, rolled_back = rescue.rescue(self.state, self.objective, finding, self.out_dir)
        self.logger.message(said)
        if rolled_back:  # the schedules fitted to the plan again (the budget's clock goes on)
            self.apply_plan()
        return "rescued" if rolled_back else None

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
    updates in a row, checkpoint saved; "stuck": `train.on_stuck=stop` and a stuck finding.
    `config_dict` goes into every checkpoint; `sample_rate` converts samples to audio seconds.
    """
    run = _Run(
        state, objective, cfg, valid_loader, device, Path(out_dir), config_dict, logger, sample_rate
    )
    for line in rescue.prepare(state, objective, cfg.on_stuck, config_dict, run.out_dir):
        logger.message(line)
    if cfg.max_minutes > 0:
        run.budget = TimeBudget(state, cfg.max_minutes, cfg.max_steps)
        run.apply_plan()  # resumed: the plan goes on as it was
    start_step = state.step
    with StopSignals() as signals:
        reason = _updates(run, train_loader, clip_norm, signals)
        # Still under the handler: a SIGTERM during the final validation must not lose the save.
        if reason in ("max_steps", "max_epochs", "max_minutes") and state.step > start_step:
            run.finish()
    if reason in ("max_steps", "max_epochs", "max_minutes"):
        note = _inside_warmup(state)
        if note:
            logger.message(note)
    return reason


def _inside_warmup(state: TrainState) -> str | None:
    """A note when the run ended before its LR schedule's warm-up did: the LR never peaked."""
    schedule = state.schedule
    if not isinstance(schedule, PlannableSchedule) or schedule.warmup_steps <= 0:
        return None
    at = state.plan.schedule_step(state.step) if state.plan is not None else state.step
    if at >= schedule.warmup_steps:
        return None
    return (
        f"note: the run ended inside its LR warm-up (at update {at:.0f} of "
        f"optim.warmup_steps={schedule.warmup_steps}): the LR never reached optim.lr. Train "
        "longer, or lower optim.warmup_steps"
    )


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
        # Before any save: a checkpoint holds this update's time and the plan made after it, so
        # that a run resumed from it plans as the uninterrupted one.
        run.check_budget()
        run.logger.progress(state.step)
        if result.finite and state.step % cfg.log_interval == 0:
            run.log_train(result)
            if (unstuck := run.unstick()) == "stuck":
                return unstuck
            if unstuck == "rescued":  # the data position went back too: a new iterator
                groups = micro_batch_groups(loader, state.sampler, cfg.update_freq, cfg.max_epochs)
                continue
        if result.stop is not None and result.stop in STOP_SIGNALS.values():
            run.stopped_by(result.stop)
            return result.stop
        if result.finite:
            run.after_update()
        if result.stop is not None:
            return result.stop
    return "max_steps"


__all__ = ["evaluate", "micro_batch_groups", "train"]
