"""`w2vkit pretrain [CONFIG.yaml] [key=value ...]`: wav2vec 2.0 self-supervised pretraining.

Also runs as `torchrun --nproc_per_node N -m w2vkit pretrain ...` (DDP: gloo on CPU, nccl on GPU).
A run directory that holds `checkpoint_last.pt` is resumed from it. The model config comes, in this
order of precedence, from that checkpoint, from `--init-from SRC`, or from `model.preset`; explicit
`model.*` keys change it in every case.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
import yaml

from w2vkit.config import ConfigError, from_dict, to_dict
from w2vkit.data.loader import ResumableLoader, build_loaders
from w2vkit.losses import pretraining_objective
from w2vkit.model.config import ModelConfig
from w2vkit.model.limits import min_input_samples
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.recipes.run_args import declare_run_args, parse_run_args
from w2vkit.train import dist, guard, session
from w2vkit.train.config import PretrainConfig, build_config, load_layers
from w2vkit.train.diagnostics import HealthMonitor
from w2vkit.train.fairseq_config import load_fairseq_config
from w2vkit.train.loop import train
from w2vkit.train.metrics import LOOP_COLUMNS, Column, RunLogger
from w2vkit.train.optim import PolynomialDecaySchedule, build_optimizer
from w2vkit.train.preflight import check_run
from w2vkit.train.signals import exit_status
from w2vkit.train.state import Objective, TrainState


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # REMAINDER: the overrides and options after the config file are parsed in `run` (intermixed).
    _declare(parser, argparse.REMAINDER)


def _declare(parser: argparse.ArgumentParser, items_nargs: str) -> None:
    declare_run_args(
        parser,
        items_nargs,
        config_help="a config name (tiny, cpu, base_ls960, large_lv60k) or a w2vkit YAML file, "
        "then dotted overrides such as data.manifest_dir=DIR train.max_steps=1000",
        init_help="continue pretraining from a fairseq .pt, an HF directory or a w2vkit checkpoint",
    )
    parser.add_argument(
        "--fairseq-config",
        metavar="YAML",
        help="a fairseq hydra pretraining YAML, translated key by key (docs/fairseq_config.md)",
    )


def run(args: argparse.Namespace) -> int:
    args = parse_run_args(args, _declare, "w2vkit pretrain")
    cfg, resume, init_state, notes = resolve(args)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    cfg, checked = check_run(cfg)
    device = session.device_for(cfg.train)
    rerun = session.rerun_command(resume_from=args.resume_from, overwrite=args.overwrite)
    return session.run_locked(
        "pretrain",
        cfg.train,
        device,
        lambda: _pretrain(cfg, device, resume, init_state, notes + checked, rerun),
    )


def resolve(
    args: argparse.Namespace,
) -> tuple[PretrainConfig, session.Resume | None, dict | None, list[str]]:
    """The run's config, the checkpoint it resumes (or None), the --init-from weights (or None), notes."""
    files = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    if len(files) > 1:
        raise ConfigError(
            f"give at most one config file, got {', '.join(files)} (overrides need key=value)"
        )
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    layers, notes, sources = [], [], []
    if args.fairseq_config:
        translation = load_fairseq_config(args.fairseq_config)
        layers.append(translation.layer)
        notes += [
            f"fairseq key not used: {line}" for line in translation.unused
        ] + translation.notes
        sources.append(args.fairseq_config)
    layers += load_layers(files[0] if files else None, overrides)
    sources += files + (["the command line"] if overrides else [])
    try:
        cfg = build_config(layers)
        resume = session.resume_point(
            Path(cfg.train.out_dir),
            "pretrain",
            resume_from=args.resume_from,
            overwrite=args.overwrite,
        )
        init_state = None
        if resume is not None:
            cfg = build_config(
                layers, init_model=from_dict(ModelConfig, resume.config["model"], where="model")
            )
        elif cfg.train.init_from:
            from w2vkit.interop import read_model

            source = read_model(cfg.train.init_from)
            init_state = source.encoder_state()
            cfg = build_config(layers, init_model=source.cfg)
            if source.normalize is not None and source.normalize != cfg.data.normalize:
                notes.append(
                    f"warning: {cfg.train.init_from} was trained with normalize={source.normalize}, "
                    f"but data.normalize={cfg.data.normalize}"
                )
    except ConfigError as err:
        raise ConfigError(f"in {' + '.join(sources) or 'the defaults'}: {err}") from err
    return cfg, resume, init_state, notes


def _pretrain(
    cfg: PretrainConfig,
    device: torch.device,
    resume: session.Resume | None,
    init_state: dict | None,
    notes: list[str],
    rerun: str,
) -> int:
    out_dir = Path(cfg.train.out_dir)
    session.prepare_dir(out_dir)
    if device.type == "cuda" and cfg.train.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    data = cfg.data
    loaders = build_loaders(
        data,
        cfg.train.seed,
        dist.rank(),
        dist.world_size(),
        pin_memory=device.type == "cuda",
        min_decoded_samples=min_input_samples(cfg.model),
        allow_data_change=cfg.train.allow_data_change,
    )
    if resume is not None:
        notes += guard.check_resume_config(
            resume.config["model"], cfg.model, source=str(resume.path)
        )
    state = _train_state(cfg, _model(cfg, init_state, notes), device, loaders[data.train_split])
    if resume is not None:
        notes.append(session.restore(state, resume))
    notes += session.start_files(out_dir, to_dict(cfg), state.step, resume, best_metric="loss")
    if 0 < cfg.total_steps <= cfg.optim.warmup_steps:  # (0: a time budget plans the length)
        notes.append(
            f"optim.warmup_steps={cfg.optim.warmup_steps} >= the {cfg.total_steps} scheduled updates: "
            "the LR never reaches optim.lr"
        )
    logger = RunLogger(
        out_dir,
        total_steps=cfg.train.max_steps,
        start_step=state.step,
        tensorboard=cfg.train.tensorboard,
        columns=CONSOLE_COLUMNS,
    )
    num_params = sum(p.numel() for p in dist.unwrap(state.model).parameters())
    logger.message(
        f"w2vkit pretrain: {num_params / 1e6:.2f}M parameters, device {device}, world size "
        f"{dist.world_size()}, precision {cfg.train.precision}, "
        f"{len(loaders[data.train_split].sampler.sizes)} training utterances, run directory {out_dir}"
    )
    for note in notes:
        logger.message(note)
    try:
        reason = train(
            state,
            _objective(cfg),
            cfg=cfg.train,
            clip_norm=cfg.optim.clip_norm,
            train_loader=loaders[data.train_split],
            valid_loader=loaders.get(data.valid_split),
            device=device,
            out_dir=out_dir,
            config_dict=to_dict(cfg),
            logger=logger,
            sample_rate=data.sample_rate,
        )
    finally:
        logger.close()
    manifest = Path(cfg.data.manifest_dir) / f"{cfg.data.train_split}.tsv"
    session.summary(
        logger,
        out_dir,
        state,
        reason,
        best=f"valid loss  {state.best_metric:.4f} bits",
        next_step=lambda model: f"w2vkit extract {model} {manifest} --out {out_dir / 'features'}",
        rerun=rerun,
    )
    return exit_status(reason)


def _objective(cfg: PretrainConfig) -> Objective:
    """The wav2vec 2.0 objective, with the health monitor reading every train log line; a rescue
    starts a new monitor (the rolled-back run's evidence starts again)."""
    health = [HealthMonitor.for_model(cfg.model)]
    objective = pretraining_objective(
        cfg.loss,
        cfg.model.quantizer,
        nominal_steps=cfg.total_steps,
        diagnostics=cfg.train.diagnostics,
    )
    change = objective.rescue
    assert change is not None

    def rescue(finding: str) -> str | None:
        health[0] = HealthMonitor.for_model(cfg.model)
        return change(finding)

    return dataclasses.replace(objective, monitor=lambda r: health[0].observe(r), rescue=rescue)


CONSOLE_COLUMNS = (
    Column("loss", "loss", ".3f"),
    Column("loss_0", "contrast", ".3f"),
    Column("loss_1", "diverse", ".3f"),
    Column("loss_2", "penalty", ".3f"),
    Column("accuracy", "accuracy", ".3f"),
    Column("prob_perplexity", "prob_ppl", ".1f"),
    Column("code_perplexity", "code_ppl", ".1f"),
    *LOOP_COLUMNS,
)
"""The console table of `w2vkit pretrain` on a terminal (losses in bits per masked frame)."""


def _model(cfg: PretrainConfig, init_state: dict | None, notes: list[str]) -> Wav2Vec2Model:
    """The initial model, the same on every rank: seeded init, then the --init-from weights
    (`init_state`, None when resuming: the checkpoint has the weights)."""
    torch.manual_seed(cfg.train.seed)
    model = Wav2Vec2Model.from_config(cfg.model)
    if init_state is not None:
        from w2vkit.interop import load_weights

        missing = load_weights(model, init_state, source=str(cfg.train.init_from))
        if missing:
            notes.append(
                f"--init-from lacks {len(missing)} tensors, left at their initial values: "
                f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
            )
    return model


def _train_state(
    cfg: PretrainConfig, model: Wav2Vec2Model, device: torch.device, train_loader: ResumableLoader
) -> TrainState:
    """Model on the device (DDP-wrapped under torchrun), optimizer, LR schedule, loss scaler."""
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    return session.make_state(
        model,
        optimizer,
        # Only train.max_minutes gives a length: flat after warmup until the budget plans the run.
        PolynomialDecaySchedule(optimizer, cfg.optim, cfg.total_steps or sys.maxsize),
        cfg.train,
        device,
        train_loader.sampler,
        # LayerDrop skips whole layers, and grad_scale 0 runs the extractor without autograd:
        # parameters without a gradient, which DDP must be told to expect.
        find_unused_parameters=cfg.model.transformer.layerdrop_prob > 0
        or cfg.model.feature_extractor.grad_scale == 0,
    )


__all__ = ["add_arguments", "resolve", "run"]
