"""A training session's life, shared by every recipe that trains (`pretrain` of any objective,
`finetune`): `run` takes what a recipe builds (a `Plan`: model, objective, loaders, LR schedule,
console columns, how to word the best metric and the next command) and does the rest.

The parts that must behave the same whatever the objective: the device a `train` section asks
for, the run directory (locked for one run at a time, killed writes' temp files dropped,
`config.yaml` written only once the run really starts), which checkpoint a run continues from and
the refusal of one that belongs to another kind of run, the loss scaler, the one-line report of a
full disk or a silent DDP rank, the console, and the summary printed at the end.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from w2vkit.config import ConfigError
from w2vkit.model.compiled import compile_stages
from w2vkit.model.config import ModelConfig
from w2vkit.train import checkpoint, dist, guard, host_memory, rescue
from w2vkit.train.best import reconcile_best
from w2vkit.train.config import AdamConfig, TrainConfig
from w2vkit.train.diagnostics import Monitor
from w2vkit.train.loop import train
from w2vkit.train.metrics import Column, RunLogger
from w2vkit.train.optim import build_optimizer
from w2vkit.train.resume import resume_point as checkpoint_to_resume
from w2vkit.train.rundir import RunLock, start_run_files
from w2vkit.train.signals import exit_status
from w2vkit.train.state import Objective, Schedule, TrainState


def kind_of(config: dict) -> str | None:
    """A saved run config's kind: `finetune` has a `ctc` section; `pretrain` names its objective
    (configs written before there was more than one objective have wav2vec 2.0's `loss`)."""
    if "ctc" in config:
        return "finetune"
    if "objective" in config or "loss" in config:
        return "pretrain"
    return None


def device_for(train: TrainConfig) -> torch.device:
    """`train.device` as a torch device (`auto`: CUDA when there is one; the local rank's GPU).

    On CPU the process keeps freed memory for reuse (`host_memory.keep_freed_memory`).
    """
    choice = train.device
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu" and train.precision == "fp16":
        raise ConfigError(
            "train.precision: 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU"
        )
    if choice == "cuda":
        device = torch.device("cuda", dist.local_rank())
        torch.cuda.set_device(device)  # nccl and the default CUDA stream follow the local rank
        return device
    host_memory.keep_freed_memory()
    return torch.device("cpu")


@dataclasses.dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues from, and the file it was read from (checkpoint_last.pt, or
    the one --resume-from named)."""

    payload: dict
    path: Path

    @property
    def config(self) -> dict:
        return self.payload["config"]


def resume_point(
    out_dir: Path, kind: str, *, resume_from: str | None, overwrite: bool
) -> Resume | None:
    """`w2vkit.train.resume.resume_point`, refusing a checkpoint of another kind of run: a fine-tuning run
    must not continue a pretraining one that happens to share `train.out_dir`, nor the reverse."""
    payload, path = checkpoint_to_resume(out_dir, resume_from=resume_from, overwrite=overwrite)
    if payload is not None and path is not None:
        saved = kind_of(payload["config"])
        if saved != kind:
            what = f"a `w2vkit {saved}` run" if saved else "an unknown kind of run"
            remedy = (
                "to start from its weights, pass it as --init-from"
                if resume_from
                else "choose another train.out_dir"
            )
            raise ConfigError(f"{path} is a checkpoint of {what}, not of `w2vkit {kind}`: {remedy}")
        return Resume(payload, path)
    return None


def restore(state: TrainState, resume: Resume) -> str:
    """Put the checkpoint back into `state`; returns the note that says from where."""
    checkpoint.restore(state, resume.payload)
    return f"resumed from {resume.path} at update {state.step}"


def prepare_dir(out_dir: Path) -> None:
    """Rank 0 creates the run directory and drops temp files of killed checkpoint writes."""
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_stale_temp_files(out_dir)
    dist.barrier()


def start_files(
    out_dir: Path, config: dict, step: int, resume: Resume | None, *, best_metric: str
) -> list[str]:
    """The run really starts: only now write config.yaml, drop log records past the resumed
    update and repair a checkpoint_best.pt that a crash left stale (rank 0; `best_metric`: the
    validation key the run's best checkpoint is chosen by)."""
    notes: list[str] = []
    if dist.is_main():
        config_text = yaml.safe_dump(config, sort_keys=False)
        dropped = start_run_files(out_dir, config_text, step if resume is not None else None)
        if dropped:
            notes.append(f"dropped {dropped} log records past update {step}")
        repaired = (
            reconcile_best(out_dir, resume.payload, best_metric) if resume is not None else None
        )
        notes += [repaired] if repaired else []
        notes += guard.optimisation_changes(resume.config, config) if resume is not None else []
    dist.barrier()
    return notes


def make_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule,
    train: TrainConfig,
    device: torch.device,
    sampler,
    *,
    find_unused_parameters: bool,
) -> TrainState:
    """The loop's state: the model (on `device`, DDP-wrapped under torchrun) and its companions."""
    scaler = (
        torch.amp.GradScaler(device.type, init_scale=train.fp16_init_scale)
        if train.precision == "fp16"
        else None
    )
    return TrainState(
        model=dist.wrap_model(model, device, find_unused_parameters=find_unused_parameters),
        optimizer=optimizer,
        schedule=schedule,
        scaler=scaler,
        generator=torch.Generator(device),
        sampler=sampler,
    )


def run_locked(
    command: str, train: TrainConfig, device: torch.device, body: Callable[[], int]
) -> int:
    """`body()` inside the process group and the run directory's lock. A full disk or a silent
    rank is one line on stderr and exit code 1 (no traceback); the group is shut down either way."""
    dist.init(device, timeout_minutes=train.dist_timeout_minutes)
    finished = False
    try:
        with RunLock(Path(train.out_dir), enabled=dist.is_main()):
            code = body()
        finished = True
        return code
    except (OSError, RuntimeError) as err:
        failure = _field_failure(err)
        if failure is None:
            raise
        print(f"w2vkit {command}: {failure}", file=sys.stderr)
        return 1
    finally:
        dist.shutdown(clean=finished)


def rerun_command(*, resume_from: str | None, overwrite: bool) -> str:
    """How to continue an interrupted run: its command less the options that chose where it
    started (run again, --overwrite would start over, --resume-from would go back to that file)."""
    once = [
        flag
        for flag, given in (("--resume-from", resume_from), ("--overwrite", overwrite))
        if given
    ]
    return "the same command" + (f" without {' and '.join(once)}" if once else "")


def _field_failure(err: BaseException) -> BaseException | None:
    """A full disk or a silent rank, which a message explains better than a traceback."""
    if isinstance(err, checkpoint.DiskFullError):
        return err
    explained = dist.explain_timeout(err, "training")
    return explained if isinstance(explained, dist.RankTimeout) else None


def summary(
    logger: RunLogger,
    out_dir: Path,
    state: TrainState,
    reason: str,
    *,
    best: str,
    next_step: Callable[[Path], str],
    rerun: str,
) -> None:
    """The end of the run: why it stopped, the best validation (`best`, e.g. "valid loss 3.2
    bits"), the checkpoints, and what to run next (`next_step(model checkpoint)`, a command; after
    an interruption, `rerun`, which `rerun_command` words)."""
    best_path, last = out_dir / checkpoint.BEST, out_dir / checkpoint.LAST
    why = {"sigint": "stopped by SIGINT", "sigterm": "stopped by SIGTERM"}.get(reason, reason)
    lines = [f"finished ({why}) at update {state.step}"]
    if best_path.is_file():
        lines.append(f"  best {best}: {best_path}")
    if last.is_file():
        lines.append(f"  last checkpoint  {last}")
    if reason in ("sigint", "sigterm", "nonfinite") and last.is_file():
        lines.append(f"  continue with {rerun}: it resumes from the last checkpoint")
    elif last.is_file():
        model = best_path if best_path.is_file() else last
        lines.append(f"  next: {next_step(model)}")
    for line in lines:
        logger.message(line)


@dataclasses.dataclass
class Plan:
    """What a recipe builds for one run; the rest of the session is the same for every objective."""

    model: nn.Module
    """The initial model (seeded, --init-from weights loaded), on the CPU."""
    model_config: ModelConfig
    """Its encoder's config: a resumed run must keep the checkpoint's."""
    objective: Objective
    optim: AdamConfig
    schedule: Callable[[torch.optim.Optimizer], Schedule]
    train_loader: Any
    """A loader with a resumable `sampler` (`ResumableLoader`, `LabelledLoader`)."""
    valid_loader: Iterable | None
    num_utterances: int
    """Training utterances (the header line)."""
    sample_rate: int
    config: dict
    """The resolved config, written to config.yaml and into every checkpoint."""
    columns: tuple[Column, ...]
    best: str
    """The summary's wording of the best `objective.best_metric`, a format string."""
    next_step: Callable[[Path], str]
    """(the model checkpoint to use) -> the command the summary suggests next."""
    find_unused_parameters: bool
    """Some parameters get no gradient in an update (LayerDrop, a frozen part): DDP must know."""
    health: Monitor | None = None
    """The objective's health signatures: their findings are printed and logged as they happen."""
    about: str = ""
    """What the header says of the model besides its size, e.g. "32 output symbols, "."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """Lines to print before training (what --init-from loaded, warnings)."""


def run(
    command: str,
    train_cfg: TrainConfig,
    build: Callable[[torch.device], Plan],
    *,
    resume: Resume | None,
    notes: list[str],
    rerun: str,
) -> int:
    """One training session of `w2vkit {command}` on the device `train_cfg` asks for, inside the
    process group and the run directory's lock (`run_locked`): the run directory, `build(device)`
    (the recipe's loaders, model and objective), the state (restored from `resume`), the console,
    the loop, the summary. Returns the exit status."""
    device = device_for(train_cfg)
    return run_locked(
        command,
        train_cfg,
        device,
        lambda: _session(
            command, train_cfg, device, build, resume=resume, notes=notes, rerun=rerun
        ),
    )


def _session(
    command: str,
    train_cfg: TrainConfig,
    device: torch.device,
    build: Callable[[torch.device], Plan],
    *,
    resume: Resume | None,
    notes: list[str],
    rerun: str,
) -> int:
    out_dir = Path(train_cfg.out_dir)
    prepare_dir(out_dir)
    if device.type == "cuda" and train_cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the conv stack sees a few crop lengths, many times
    plan = build(device)
    objective, health = plan.objective, plan.health
    if health is not None:
        objective = rescue.watched(objective, health)
    if resume is not None:
        notes = notes + guard.check_resume_config(
            resume.config["model"], plan.model_config, source=str(resume.path)
        )
    notes = notes + plan.notes
    plan.model.to(device)
    if train_cfg.compile:
        compile_stages(plan.model)
    optimizer = build_optimizer(plan.model, plan.optim)
    state = make_state(
        plan.model,
        optimizer,
        plan.schedule(optimizer),
        train_cfg,
        device,
        plan.train_loader.sampler,
        find_unused_parameters=plan.find_unused_parameters,
    )
    if resume is not None:
        notes.append(restore(state, resume))
    notes += start_files(
        out_dir, plan.config, state.step, resume, best_metric=objective.best_metric
    )
    logger = RunLogger(
        out_dir,
        total_steps=train_cfg.max_steps,
        start_step=state.step,
        tensorboard=train_cfg.tensorboard,
        columns=plan.columns,
    )
    num_params = sum(p.numel() for p in dist.unwrap(state.model).parameters())
    logger.message(
        f"w2vkit {command}: {num_params / 1e6:.2f}M parameters, {plan.about}device {device}, "
        f"world size {dist.world_size()}, precision {train_cfg.precision}, "
        f"{plan.num_utterances} training utterances, run directory {out_dir}"
    )
    for note in notes:
        logger.message(note)
    try:
        reason = train(
            state,
            objective,
            cfg=train_cfg,
            clip_norm=plan.optim.clip_norm,
            train_loader=plan.train_loader,
            valid_loader=plan.valid_loader,
            device=device,
            out_dir=out_dir,
            config_dict=plan.config,
            logger=logger,
            sample_rate=plan.sample_rate,
        )
    finally:
        logger.close()
    summary(
        logger,
        out_dir,
        state,
        reason,
        best=plan.best.format(state.best_metric),
        next_step=plan.next_step,
        rerun=rerun,
    )
    return exit_status(reason)


__all__ = [
    "Plan",
    "device_for",
    "kind_of",
    "make_state",
    "prepare_dir",
    "Resume",
    "restore",
    "resume_point",
    "rerun_command",
    "run",
    "run_locked",
    "start_files",
    "summary",
]
