"""`w2vkit finetune [CONFIG.yaml] --init-from SRC data.manifest_dir=DIR [key=value ...]`: CTC.

Fine-tunes a pretrained encoder (fairseq `.pt`, HF directory or w2vkit checkpoint; or an already
fine-tuned model, whose output layer is kept when the vocabulary is the same) on labelled audio in
fairseq's layout (docs/finetune.md), on the same loop, checkpoints, resume, DDP (torchrun) and
logging as pretraining. A run directory holding `checkpoint_last.pt` is resumed from it.
Validation decodes greedily and reports WER and CER; `checkpoint_best.pt` has the lowest WER.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from w2vkit.config import ConfigError, from_dict, to_dict
from w2vkit.data.shards.loader import build_shard_loaders
from w2vkit.data.vocab import Vocabulary
from w2vkit.finetune.config import FinetuneConfig, LabelledDataConfig, build_finetune_config
from w2vkit.finetune.labels import (
    LabelledDataset,
    LabelledLoader,
    StreamedTargets,
    build_labelled_loader,
)
from w2vkit.finetune.objective import make_objective
from w2vkit.finetune.schedule import TriStageSchedule
from w2vkit.interop import ModelRecord, read_model
from w2vkit.interop.heads import load_encoder
from w2vkit.model.config import ModelConfig
from w2vkit.model.ctc import Wav2Vec2ForCTC
from w2vkit.recipes.run_args import declare_run_args, parse_run_args
from w2vkit.train import dist, guard, session
from w2vkit.train.config import load_layers
from w2vkit.train.loop import train
from w2vkit.train.metrics import LOOP_COLUMNS, Column, RunLogger
from w2vkit.train.optim import build_optimizer
from w2vkit.train.preflight import check_run
from w2vkit.train.signals import exit_status
from w2vkit.train.state import TrainState


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _declare(parser, argparse.REMAINDER)


def _declare(parser: argparse.ArgumentParser, items_nargs: str) -> None:
    declare_run_args(
        parser,
        items_nargs,
        config_help="a config name (cpu, base_10m, base_1h, base_10h, base_100h) or YAML file, "
        "then dotted overrides such as data.manifest_dir=DIR preset=cpu train.max_steps=1000",
        init_help="the pretrained model: fairseq .pt, HF directory or w2vkit checkpoint",
    )


def run(args: argparse.Namespace) -> int:
    args = parse_run_args(args, _declare, "w2vkit finetune")
    cfg, resume, init = resolve(
        args.items, args.init_from, resume_from=args.resume_from, overwrite=args.overwrite
    )
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    cfg, notes = check_run(cfg)
    vocab = _vocabulary(cfg.data)
    if resume is not None and resume.config.get("vocab") != vocab.symbols:
        raise ConfigError(f"{resume.path} was trained with another dict.{cfg.data.labels}.txt")
    device = session.device_for(cfg.train)
    rerun = session.rerun_command(resume_from=args.resume_from, overwrite=args.overwrite)
    return session.run_locked(
        "finetune",
        cfg.train,
        device,
        lambda: _finetune(cfg, device, resume, init, vocab, notes, rerun),
    )


def resolve(
    items: list[str],
    init_from: str | None,
    *,
    resume_from: str | None = None,
    overwrite: bool = False,
) -> tuple[FinetuneConfig, session.Resume | None, ModelRecord | None]:
    """The config, the checkpoint to resume (or None) and the initial model record."""
    files = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    if len(files) > 1:
        raise ConfigError(f"give at most one config file, got {', '.join(files)}")
    if init_from:
        overrides.append(f"train.init_from={init_from}")
    layers = load_layers(files[0] if files else None, overrides, kind="finetune")
    where = " + ".join(files + (["the command line"] if overrides else [])) or "the defaults"
    try:
        cfg = build_finetune_config(layers, init_model=ModelConfig())
        resume = session.resume_point(
            Path(cfg.train.out_dir), "finetune", resume_from=resume_from, overwrite=overwrite
        )
        if resume is not None:
            model = from_dict(ModelConfig, resume.config["model"], where="model")
            return build_finetune_config(layers, init_model=model), resume, None
        if not cfg.train.init_from:
            raise ConfigError("--init-from is required: the pretrained model to fine-tune")
        # A fine-tuned model (its output layer kept when the vocabulary matches) or an encoder.
        init = read_model(
            cfg.train.init_from,
            dict_path=Path(cfg.data.manifest_dir) / f"dict.{cfg.data.labels}.txt",
        )
        return build_finetune_config(layers, init_model=init.cfg), None, init
    except ConfigError as err:
        raise ConfigError(f"in {where}: {err}") from err


def _vocabulary(data: LabelledDataConfig) -> Vocabulary:
    # `w2vkit shard` copies the dictionary beside the shards; a remote set needs manifest_dir.
    dictionary = Path(data.manifest_dir or data.shards) / f"dict.{data.labels}.txt"
    if not dictionary.is_file():
        raise ConfigError(
            f"data.manifest_dir={data.manifest_dir} has no {dictionary.name}: write the labels with "
            f"`w2vkit labels {Path(data.manifest_dir) / (data.train_split + '.tsv')} "
            f"{'--phonemes' if data.labels == 'phn' else '--letters'}` "
            "(transcripts in a .txt beside each audio file, or --transcripts TSV)"
        )
    return Vocabulary.load(dictionary)


def _loaders(
    cfg: FinetuneConfig, vocab: Vocabulary, device: torch.device
) -> dict[str, LabelledLoader]:
    """The train loader, and the valid one unless check_run switched validation off."""
    data = cfg.data
    if data.shards:
        streamed = build_shard_loaders(
            data, cfg.train.seed, dist.rank(), dist.world_size(), pin_memory=device.type == "cuda",
            allow_data_change=cfg.train.allow_data_change, pad=True, max_samples=None,
            label=data.labels,
        )  # fmt: skip
        return {
            split: LabelledLoader(StreamedTargets(vocab, len(loader.sampler.sizes)), loader)
            for split, loader in streamed.items()
        }
    loaders = {}
    for split in filter(None, (data.train_split, data.valid_split)):
        dataset = LabelledDataset(
            Path(data.manifest_dir) / f"{split}.tsv",
            vocab,
            labels=data.labels,
            sample_rate=data.sample_rate,
            min_samples=data.min_samples,
            normalize=data.normalize,
            conv_layers=cfg.model.feature_extractor.conv_layers,
        )
        loaders[split] = build_labelled_loader(
            dataset,
            max_batch_samples=data.max_batch_samples,
            max_batch_size=data.max_batch_size,
            required_batch_size_multiple=data.required_batch_size_multiple,
            seed=cfg.train.seed,
            rank=dist.rank(),
            world_size=dist.world_size(),
            shuffle=split == data.train_split,
            num_workers=data.num_workers,
            pin_memory=device.type == "cuda",
            allow_data_change=cfg.train.allow_data_change,
        )
    return loaders


def _train_state(
    cfg: FinetuneConfig, model: Wav2Vec2ForCTC, device: torch.device, loader: LabelledLoader
) -> TrainState:
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    o = cfg.optim
    schedule = TriStageSchedule(
        optimizer,
        lr=o.lr,
        total_steps=cfg.total_steps,
        phase_ratios=o.phase_ratios,
        init_lr_scale=o.init_lr_scale,
        final_lr_scale=o.final_lr_scale,
    )
    return session.make_state(
        model,
        optimizer,
        schedule,
        cfg.train,
        device,
        loader.sampler,
        find_unused_parameters=cfg.ctc.freeze_encoder_steps > 0
        or cfg.model.transformer.layerdrop_prob > 0,
    )


CONSOLE_COLUMNS = (
    Column("loss", "loss", ".3f"),
    Column("wer", "wer%", ".2f"),
    Column("cer", "cer%", ".2f"),
    *LOOP_COLUMNS,
)
"""The console table of `w2vkit finetune` (loss in bits per letter; WER and CER on validation)."""


def _finetune(
    cfg: FinetuneConfig,
    device: torch.device,
    resume: session.Resume | None,
    init: ModelRecord | None,
    vocab: Vocabulary,
    notes: list[str],
    rerun: str,
) -> int:
    out_dir = Path(cfg.train.out_dir)
    session.prepare_dir(out_dir)
    loaders = _loaders(cfg, vocab, device)
    train_loader = loaders[cfg.data.train_split]
    if resume is not None:
        notes += guard.check_resume_config(
            resume.config["model"], cfg.model, source=str(resume.path)
        )
    torch.manual_seed(cfg.train.seed)  # the same initial output layer on every rank
    model = Wav2Vec2ForCTC(cfg.model, len(vocab), final_dropout_prob=cfg.ctc.final_dropout_prob)
    if init is not None:  # None when resuming: the checkpoint has the weights
        notes.append(_initialise(model, init, vocab, cfg.train.init_from))
    state = _train_state(cfg, model, device, train_loader)
    if resume is not None:
        notes.append(session.restore(state, resume))
    config = to_dict(cfg) | {"vocab": vocab.symbols}
    notes += session.start_files(out_dir, config, state.step, resume, best_metric="wer")
    logger = RunLogger(
        out_dir,
        total_steps=cfg.train.max_steps,
        start_step=state.step,
        tensorboard=cfg.train.tensorboard,
        columns=CONSOLE_COLUMNS,
    )
    logger.message(
        f"w2vkit finetune: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{len(vocab)} output symbols, device {device}, world size {dist.world_size()}, "
        f"{len(train_loader.dataset)} training utterances, run directory {out_dir}"
    )
    for note in notes:
        logger.message(note)
    try:
        reason = train(
            state,
            make_objective(cfg, vocab),
            cfg=cfg.train,
            clip_norm=cfg.optim.clip_norm,
            train_loader=train_loader,
            valid_loader=loaders.get(cfg.data.valid_split),
            device=device,
            out_dir=out_dir,
            config_dict=config,
            logger=logger,
            sample_rate=cfg.data.sample_rate,
        )
    finally:
        logger.close()
    valid = Path(cfg.data.manifest_dir) / f"{cfg.data.valid_split or cfg.data.train_split}.tsv"
    session.summary(
        logger,
        out_dir,
        state,
        reason,
        best=f"valid WER  {state.best_metric:.2f}%",
        next_step=lambda model: f"w2vkit transcribe {model} --manifest {valid}",
        rerun=rerun,
    )
    return exit_status(reason)


def _initialise(model: Wav2Vec2ForCTC, init: ModelRecord, vocab: Vocabulary, source: str) -> str:
    """Encoder weights from `init`; its output layer too when it is a CTC model with `vocab`."""
    load_encoder(model.wav2vec2, init, source=source)
    if init.kind == "ctc":
        if init.vocab == vocab:
            model.lm_head.load_state_dict(
                {
                    k.removeprefix("lm_head."): v
                    for k, v in init.state_dict.items()
                    if k.startswith("lm_head.")
                }
            )
            return f"initialised from the fine-tuned model {source}, output layer included"
        return f"initialised the encoder from {source}; its vocabulary differs: new output layer"
    return f"initialised the encoder from {source}"


__all__ = ["add_arguments", "resolve", "run"]
