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
from typing import cast

import torch
import yaml

from w2vkit.config import ConfigError, from_dict, to_dict
from w2vkit.finetune.config import FinetuneConfig, build_finetune_config
from w2vkit.finetune.labels import LabelledDataset, build_labelled_loader
from w2vkit.finetune.model import FineTuned, Wav2Vec2ForCTC, read_encoder, read_finetuned
from w2vkit.finetune.objective import make_objective
from w2vkit.finetune.schedule import TriStageSchedule
from w2vkit.finetune.vocab import Vocabulary
from w2vkit.interop.native import Pretrained
from w2vkit.model.config import ModelConfig
from w2vkit.recipes import pretrain
from w2vkit.train import checkpoint, dist
from w2vkit.train.config import OptimConfig, load_layers
from w2vkit.train.loop import TrainState, exit_status, train
from w2vkit.train.metrics import RunLogger
from w2vkit.train.optim import build_optimizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _declare(parser, items_nargs=argparse.REMAINDER)


def _declare(parser: argparse.ArgumentParser, *, items_nargs: str) -> None:
    parser.add_argument(
        "items",
        nargs=items_nargs,
        metavar="[CONFIG.yaml] [key=value ...]",
        help="a config name (cpu, base_10m, base_1h, base_10h, base_100h) or YAML file, then dotted "
        "overrides such as "
        "data.manifest_dir=DIR preset=cpu train.max_steps=1000",
    )
    parser.add_argument(
        "--init-from",
        metavar="SRC",
        help="the pretrained model: fairseq .pt, HF directory or w2vkit checkpoint",
    )
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")


def run(args: argparse.Namespace) -> int:
    late_parser = argparse.ArgumentParser(prog="w2vkit finetune")
    _declare(late_parser, items_nargs="*")
    late = late_parser.parse_intermixed_args(args.items)
    init_from = args.init_from or late.init_from
    cfg, resume, init = resolve(late.items, init_from)
    if args.print_config or late.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    device = pretrain._device(cfg)  # type: ignore[arg-type]  # reads only cfg.train
    dist.init(device)
    try:
        return _finetune(cfg, device, resume, init)
    finally:
        dist.shutdown()


def resolve(
    items: list[str], init_from: str | None
) -> tuple[FinetuneConfig, dict | None, FineTuned | Pretrained | None]:
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
        last = Path(cfg.train.out_dir) / checkpoint.LAST
        if last.is_file():
            resume = checkpoint.load(last)
            model = from_dict(ModelConfig, resume["config"]["model"], where="model")
            return build_finetune_config(layers, init_model=model), resume, None
        if not cfg.train.init_from:
            raise ConfigError("--init-from is required: the pretrained model to fine-tune")
        init = _read_source(
            cfg.train.init_from, Path(cfg.data.manifest_dir) / f"dict.{cfg.data.labels}.txt"
        )
        return build_finetune_config(layers, init_model=init.cfg), None, init
    except ConfigError as err:
        raise ConfigError(f"in {where}: {err}") from err


def _read_source(source: str, dict_path: Path) -> FineTuned | Pretrained:
    """A fine-tuned CTC model if `source` is one, else a pretrained encoder."""
    try:
        return read_finetuned(source, dict_path)
    except ConfigError:
        return read_encoder(source)


def _finetune(
    cfg: FinetuneConfig,
    device: torch.device,
    resume: dict | None,
    init: FineTuned | Pretrained | None,
) -> int:
    out_dir = Path(cfg.train.out_dir)
    data = cfg.data
    if not data.manifest_dir:
        raise ConfigError("data.manifest_dir is not set: the folder with train.tsv and train.ltr")
    dictionary = Path(data.manifest_dir) / f"dict.{data.labels}.txt"
    if not dictionary.is_file():
        raise ConfigError(
            f"data.manifest_dir={data.manifest_dir} has no {dictionary.name}: write the labels with "
            f"`w2vkit labels {Path(data.manifest_dir) / (data.train_split + '.tsv')} --letters` "
            "(transcripts in a .txt beside each audio file, or --transcripts TSV)"
        )
    vocab = Vocabulary.load(dictionary)
    if resume is not None and resume["config"].get("vocab") != vocab.symbols:
        raise ConfigError(
            f"{out_dir / checkpoint.LAST} was trained with another dict.{data.labels}.txt"
        )
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_stale_temp_files(out_dir)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    dist.barrier()
    loaders = {}
    for split in (data.train_split, data.valid_split):
        path = Path(data.manifest_dir) / f"{split}.tsv"
        if split and (path.is_file() or split == data.train_split):
            dataset = LabelledDataset(
                path,
                vocab,
                labels=data.labels,
                sample_rate=data.sample_rate,
                min_samples=data.min_samples,
                normalize=data.normalize,
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
            )
    torch.manual_seed(cfg.train.seed)  # the same initial output layer on every rank
    model = Wav2Vec2ForCTC(cfg.model, len(vocab), final_dropout_prob=cfg.ctc.final_dropout_prob)
    notes = []
    if init is not None:  # None when resuming: the checkpoint has the weights
        notes.append(_initialise(model, init, vocab, cfg.train.init_from))
    model.to(device)
    unused = cfg.ctc.freeze_encoder_steps > 0 or cfg.model.transformer.layerdrop_prob > 0
    ddp_model = dist.wrap_model(model, device, find_unused_parameters=unused)
    # The Adam fields build_optimizer reads have the same names and meaning here.
    optimizer = build_optimizer(model, cast(OptimConfig, cfg.optim))
    o = cfg.optim
    schedule = TriStageSchedule(
        optimizer,
        lr=o.lr,
        total_steps=cfg.total_steps,
        phase_ratios=o.phase_ratios,
        init_lr_scale=o.init_lr_scale,
        final_lr_scale=o.final_lr_scale,
    )
    scaler = (
        torch.amp.GradScaler(device.type, init_scale=cfg.train.fp16_init_scale)
        if cfg.train.precision == "fp16"
        else None
    )
    state = TrainState(
        model=ddp_model,
        optimizer=optimizer,
        schedule=schedule,
        scaler=scaler,
        generator=torch.Generator(device),
        sampler=loaders[data.train_split].sampler,
    )
    if resume is not None:
        checkpoint.restore(state, resume)
        notes.append(f"resumed from {out_dir / checkpoint.LAST} at update {state.step}")
    logger = RunLogger(
        out_dir,
        total_steps=cfg.train.max_steps,
        start_step=state.step,
        tensorboard=cfg.train.tensorboard,
    )
    logger.message(
        f"w2vkit finetune: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{len(vocab)} output symbols, device {device}, world size {dist.world_size()}, "
        f"{len(loaders[data.train_split].dataset)} training utterances, run directory {out_dir}"
    )
    for note in notes:
        logger.message(note)
    try:
        reason = train(
            state,
            make_objective(cfg, vocab),
            cfg=cfg.train,
            clip_norm=cfg.optim.clip_norm,
            train_loader=loaders[data.train_split],
            valid_loader=loaders.get(data.valid_split),
            device=device,
            out_dir=out_dir,
            config_dict=to_dict(cfg) | {"vocab": vocab.symbols},
            logger=logger,
            sample_rate=data.sample_rate,
        )
    finally:
        logger.close()
    logger.message(f"finished ({reason}) at update {state.step}")
    return exit_status(reason)


def _initialise(
    model: Wav2Vec2ForCTC, init: FineTuned | Pretrained, vocab: Vocabulary, source: str
) -> str:
    """Encoder weights from `init`; its output layer too when it is a CTC model with `vocab`."""
    if isinstance(init, FineTuned):
        encoder = {
            k.removeprefix("wav2vec2."): v
            for k, v in init.state_dict.items()
            if k.startswith("wav2vec2.")
        }
        model.load_encoder(encoder, source=source)
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
    model.load_encoder(init.state_dict, source=source)
    return f"initialised the encoder from {source}"


__all__ = ["add_arguments", "resolve", "run"]
