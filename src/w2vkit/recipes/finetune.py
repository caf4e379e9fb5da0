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
from w2vkit.finetune.objective import console_columns, make_objective
from w2vkit.finetune.schedule import TriStageSchedule
from w2vkit.interop import ModelRecord, read_model
from w2vkit.interop.heads import load_encoder
from w2vkit.model.config import ModelConfig
from w2vkit.model.ctc import Wav2Vec2ForCTC
from w2vkit.recipes.run_args import config_items, declare_run_args, parse_run_args
from w2vkit.train import dist, session
from w2vkit.train.config import load_layers
from w2vkit.train.preflight import check_run


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
        args.items,
        args.init_from,
        resume_from=args.resume_from,
        overwrite=args.overwrite,
        print_config=args.print_config,
    )
    if args.print_config:
        if not cfg.train.init_from:
            print(
                "# without --init-from, `model` is the default encoder: a run takes the "
                "--init-from model's, under the fine-tuning keys shown"
            )
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    cfg, notes = check_run(cfg)
    vocab = _vocabulary(cfg.data)
    if resume is not None and resume.config.get("vocab") != vocab.symbols:
        raise ConfigError(f"{resume.path} was trained with another dict.{cfg.data.labels}.txt")
    return session.run(
        "finetune",
        cfg.train,
        lambda device: _plan(cfg, device, init, vocab),
        resume=resume,
        notes=notes,
        rerun=session.rerun_command(resume_from=args.resume_from, overwrite=args.overwrite),
    )


def resolve(
    items: list[str],
    init_from: str | None,
    *,
    resume_from: str | None = None,
    overwrite: bool = False,
    print_config: bool = False,
) -> tuple[FinetuneConfig, session.Resume | None, ModelRecord | None]:
    """The config, the checkpoint to resume (or None) and the initial model record.

    `print_config` without `--init-from`: the config over the default encoder (what the presets
    and overrides give), and no model is read."""
    config, overrides = config_items(items, init_from)
    layers = load_layers(config, overrides, kind="finetune")
    sources = ([config] if config else []) + (["the command line"] if overrides else [])
    where = " + ".join(sources) or "the defaults"
    try:
        cfg = build_finetune_config(layers, init_model=ModelConfig())
        resume = session.resume_point(
            Path(cfg.train.out_dir), "finetune", resume_from=resume_from, overwrite=overwrite
        )
        if resume is not None:
            model = from_dict(ModelConfig, resume.config["model"], where="model")
            return build_finetune_config(layers, init_model=model), resume, None
        if print_config and not cfg.train.init_from:
            return cfg, None, None
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


def _plan(
    cfg: FinetuneConfig,
    device: torch.device,
    init: ModelRecord | None,
    vocab: Vocabulary,
) -> session.Plan:
    """The CTC model (initialised from `init`; None when resuming: the checkpoint has the weights),
    its objective, the tri-stage schedule and the labelled loaders."""
    loaders = _loaders(cfg, vocab, device)
    train_loader = loaders[cfg.data.train_split]
    torch.manual_seed(cfg.train.seed)  # the same initial output layer on every rank
    model = Wav2Vec2ForCTC(cfg.model, len(vocab), final_dropout_prob=cfg.ctc.final_dropout_prob)
    notes = [] if init is None else [_initialise(model, init, vocab, cfg.train.init_from)]
    o = cfg.optim
    valid = Path(cfg.data.manifest_dir) / f"{cfg.data.valid_split or cfg.data.train_split}.tsv"
    return session.Plan(
        model=model,
        model_config=cfg.model,
        objective=make_objective(cfg, vocab),
        optim=o,
        schedule=lambda optimizer: TriStageSchedule(
            optimizer,
            lr=o.lr,
            total_steps=cfg.total_steps,
            phase_ratios=o.phase_ratios,
            init_lr_scale=o.init_lr_scale,
            final_lr_scale=o.final_lr_scale,
        ),
        train_loader=train_loader,
        valid_loader=loaders.get(cfg.data.valid_split),
        num_utterances=len(train_loader.dataset),
        sample_rate=cfg.data.sample_rate,
        config=to_dict(cfg) | {"vocab": vocab.symbols},
        columns=console_columns(cfg.data.labels),
        best="valid WER  {:.2f}%",
        next_step=lambda checkpoint: f"w2vkit transcribe {checkpoint} --manifest {valid}",
        find_unused_parameters=cfg.ctc.freeze_encoder_steps > 0
        or cfg.model.transformer.layerdrop_prob > 0,
        about=f"{len(vocab)} output symbols, ",
        notes=notes,
    )


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
