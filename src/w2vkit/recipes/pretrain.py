"""`w2vkit pretrain [CONFIG.yaml] [key=value ...]`: self-supervised pretraining of an encoder.

`objective:` picks what it is trained for (`w2vkit.pretrain.registry`; default wav2vec2).

Also runs as `torchrun --nproc_per_node N -m w2vkit pretrain ...` (DDP: gloo on CPU, nccl on GPU).
A run directory that holds `checkpoint_last.pt` is resumed from it. The model config comes, in this
order of precedence, from that checkpoint, from `--init-from SRC`, or from `model.preset`; explicit
`model.*` keys change it in every case.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from w2vkit.config import ConfigError, from_dict, to_dict
from w2vkit.data.loader import build_loaders
from w2vkit.data.shards.loader import build_shard_loaders
from w2vkit.model.compiled import length_multiple
from w2vkit.model.config import ModelConfig
from w2vkit.model.limits import min_input_samples
from w2vkit.pretrain.config import PretrainConfig
from w2vkit.pretrain.registry import build_config, lookup
from w2vkit.recipes.run_args import config_items, declare_run_args, parse_run_args
from w2vkit.train import dist, session
from w2vkit.train.config import load_layers
from w2vkit.train.fairseq_config import load_fairseq_config
from w2vkit.train.preflight import check_run


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
    return session.run(
        "pretrain",
        cfg.train,
        lambda device: _plan(cfg, device, init_state),
        resume=resume,
        notes=notes + checked,
        rerun=session.rerun_command(resume_from=args.resume_from, overwrite=args.overwrite),
    )


def resolve(
    args: argparse.Namespace,
) -> tuple[PretrainConfig, session.Resume | None, dict | None, list[str]]:
    """The run's config, the checkpoint it resumes (or None), the --init-from weights (or None), notes."""
    config, overrides = config_items(args.items, args.init_from)
    layers, notes, sources = [], [], []
    if args.fairseq_config:
        translation = load_fairseq_config(args.fairseq_config)
        layers.append(translation.layer)
        notes += [
            f"fairseq key not used: {line}" for line in translation.unused
        ] + translation.notes
        sources.append(args.fairseq_config)
    layers += load_layers(config, overrides)
    sources += ([config] if config else []) + (["the command line"] if overrides else [])
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
            saved = resume.config.get("objective", "wav2vec2")  # older runs: wav2vec 2.0
            if saved != cfg.objective:
                raise ConfigError(
                    f"objective: {resume.path} was trained with objective {saved!r}, not "
                    f"{cfg.objective!r}; to start from its weights, pass it as --init-from "
                    "with another train.out_dir"
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


def _plan(cfg: PretrainConfig, device: torch.device, init_state: dict | None) -> session.Plan:
    """The objective's model, loop objective, schedule and console, on the raw-audio loaders."""
    entry = lookup(cfg.objective)
    data = cfg.data
    loaders = (build_shard_loaders if data.shards else build_loaders)(
        data,
        cfg.train.seed,
        dist.rank(),
        dist.world_size(),
        pin_memory=device.type == "cuda",
        min_decoded_samples=min_input_samples(cfg.model),
        allow_data_change=cfg.train.allow_data_change,
    )
    if cfg.train.compile and not data.shards:  # static shapes: crops in whole length buckets
        for loader in loaders.values():
            loader.dataset.length_multiple = length_multiple(cfg.model)
    notes: list[str] = []
    # The same initial model on every rank: seeded init, then the --init-from weights
    # (`init_state`, None when resuming: the checkpoint has the weights).
    torch.manual_seed(cfg.train.seed)
    model = entry.new_model(cfg)
    if init_state is not None:
        from w2vkit.interop import load_weights

        missing = load_weights(entry.encoder(model), init_state, source=str(cfg.train.init_from))
        if missing:
            notes.append(
                f"--init-from lacks {len(missing)} tensors, left at their initial values: "
                f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
            )
    if 0 < cfg.total_steps <= cfg.optim.warmup_steps:  # (0: a time budget plans the length)
        notes.append(
            f"optim.warmup_steps={cfg.optim.warmup_steps} >= the {cfg.total_steps} scheduled updates: "
            "the LR never reaches optim.lr"
        )
    train_loader = loaders[data.train_split]
    out_dir = Path(cfg.train.out_dir)
    config = to_dict(cfg)
    return session.Plan(
        model=model,
        model_config=cfg.model,
        objective=entry.objective(cfg),
        optim=cfg.optim,
        schedule=lambda optimizer: entry.schedule(optimizer, cfg),
        train_loader=train_loader,
        valid_loader=loaders.get(data.valid_split),
        num_utterances=len(train_loader.sampler.sizes),
        sample_rate=data.sample_rate,
        config=config,
        columns=entry.columns,
        best=entry.best,
        next_step=lambda checkpoint: entry.next_command(cfg, checkpoint, out_dir),
        find_unused_parameters=entry.find_unused_parameters(cfg),
        health=entry.health(config) if entry.health is not None else None,
        notes=notes,
    )


__all__ = ["add_arguments", "resolve", "run"]
