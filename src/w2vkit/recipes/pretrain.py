"""`w2vkit pretrain [CONFIG.yaml] [key=value ...]`: wav2vec 2.0 self-supervised pretraining.

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
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.loader import build_dataloader
from w2vkit.data.sampler import BucketBatchSampler
from w2vkit.losses import pretraining_loss
from w2vkit.model.config import ModelConfig
from w2vkit.model.quantizer import gumbel_temperature
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.train import checkpoint, dist
from w2vkit.train.config import PretrainConfig, build_config, load_layers
from w2vkit.train.fairseq_config import load_fairseq_config
from w2vkit.train.loop import Objective, StepFn, StepOutput, TrainState, train
from w2vkit.train.metrics import RunLogger, summarize
from w2vkit.train.optim import PolynomialDecaySchedule, build_optimizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # REMAINDER: the overrides and options after the config file are parsed in `run` (intermixed).
    _declare(parser, items_nargs=argparse.REMAINDER)


def _declare(parser: argparse.ArgumentParser, *, items_nargs: str) -> None:
    parser.add_argument(
        "items",
        nargs=items_nargs,
        metavar="[CONFIG.yaml] [key=value ...]",
        help="a w2vkit config file (configs/pretrain/*.yaml), then dotted overrides "
        "such as data.manifest_dir=DIR train.max_steps=1000",
    )
    parser.add_argument(
        "--fairseq-config",
        metavar="YAML",
        help="a fairseq hydra pretraining YAML, translated key by key (docs/fairseq_config.md)",
    )
    parser.add_argument(
        "--init-from",
        metavar="SRC",
        help="continue pretraining from a fairseq .pt, an HF directory or a w2vkit checkpoint",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )


def _intermixed(args: argparse.Namespace) -> argparse.Namespace:
    """Options may follow the config file: `CONFIG.yaml --init-from X train.max_steps=5`."""
    late_parser = argparse.ArgumentParser(prog="w2vkit pretrain")
    _declare(late_parser, items_nargs="*")
    late = late_parser.parse_intermixed_args(args.items)
    return argparse.Namespace(
        items=late.items,
        fairseq_config=args.fairseq_config or late.fairseq_config,
        init_from=args.init_from or late.init_from,
        print_config=args.print_config or late.print_config,
    )


def run(args: argparse.Namespace) -> int:
    args = _intermixed(args)
    cfg, resume, init_state, notes = resolve(args)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if not cfg.data.manifest_dir:
        raise ConfigError(
            "data.manifest_dir is not set: point it at the folder with train.tsv (w2vkit manifest)"
        )
    device = _device(cfg)
    dist.init(device)
    try:
        return _pretrain(cfg, device, resume, init_state, notes)
    finally:
        dist.shutdown()


def resolve(args: argparse.Namespace) -> tuple[PretrainConfig, dict | None, dict | None, list[str]]:
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
        last = Path(cfg.train.out_dir) / checkpoint.LAST
        resume = checkpoint.load(last) if last.is_file() else None
        init_state = None
        if resume is not None:
            cfg = build_config(
                layers, init_model=from_dict(ModelConfig, resume["config"]["model"], where="model")
            )
        elif cfg.train.init_from:
            from w2vkit.interop import read_pretrained

            source = read_pretrained(cfg.train.init_from)
            init_state = source.state_dict
            cfg = build_config(layers, init_model=source.cfg)
            if source.normalize is not None and source.normalize != cfg.data.normalize:
                notes.append(
                    f"warning: {cfg.train.init_from} was trained with normalize={source.normalize}, "
                    f"but data.normalize={cfg.data.normalize}"
                )
    except ConfigError as err:
        raise ConfigError(f"in {' + '.join(sources) or 'the defaults'}: {err}") from err
    return cfg, resume, init_state, notes


def make_step_fn(cfg: PretrainConfig) -> StepFn:
    """One micro-batch of the wav2vec 2.0 objective, with fairseq's logged parts."""
    weights = cfg.loss

    def step_fn(model, batch, step: int, generator: torch.Generator) -> StepOutput:
        temperature = gumbel_temperature(
            step, cfg.model.quantizer
        )  # per optimizer update, not per forward
        output = model(batch.wav, batch.padding_mask, temperature=temperature, generator=generator)
        terms = pretraining_loss(
            output,
            diversity_weight=weights.diversity_weight,
            feature_penalty_weight=weights.feature_penalty_weight,
        )
        sums = {
            "loss": float(terms.loss.detach()),
            "loss_0": float(terms.contrastive.detach()),
            "sample_size": terms.sample_size,
            "correct": terms.num_correct,
            "count": terms.num_count,
        }
        # fairseq logs a part only when its weight is non-zero: loss_1 diversity, loss_2 feature penalty.
        if weights.diversity_weight and output.prob_perplexity is not None:
            sums["loss_1"] = float(terms.diversity.detach())
        if weights.feature_penalty_weight:
            sums["loss_2"] = float(terms.feature_penalty.detach())
        means = {}
        if output.prob_perplexity is not None:
            means = {
                "prob_perplexity": terms.prob_perplexity,
                "code_perplexity": terms.code_perplexity,
                "temp": terms.temperature,
            }
        return StepOutput(loss=terms.loss, sample_size=terms.sample_size, sums=sums, means=means)

    return step_fn


def _pretrain(
    cfg: PretrainConfig,
    device: torch.device,
    resume: dict | None,
    init_state: dict | None,
    notes: list[str],
) -> int:
    out_dir = Path(cfg.train.out_dir)
    rank, world_size = dist.rank(), dist.world_size()
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_stale_temp_files(out_dir)
        (out_dir / "config.yaml").write_text(
            yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8"
        )
    dist.barrier()
    if device.type == "cuda" and cfg.train.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    data = cfg.data
    datasets = {}
    for split, random_crop in ((data.train_split, True), (data.valid_split, False)):
        path = Path(data.manifest_dir) / f"{split}.tsv"
        if split and (path.is_file() or split == data.train_split):
            datasets[split] = AudioDataset(
                path,
                sample_rate=data.sample_rate,
                min_samples=data.min_samples,
                max_samples=data.max_samples,
                pad=data.pad,
                normalize=data.normalize,
                random_crop=random_crop,
            )
    loaders = {}
    for split, dataset in datasets.items():
        sampler = BucketBatchSampler(
            dataset.sizes,
            max_batch_samples=data.max_batch_samples,
            max_batch_size=data.max_batch_size,
            required_batch_size_multiple=data.required_batch_size_multiple,
            seed=cfg.train.seed,
            rank=rank,
            world_size=world_size,
            shuffle=split == data.train_split,
        )
        loaders[split] = build_dataloader(
            dataset,
            sampler,
            seed=cfg.train.seed,
            num_workers=data.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=data.num_workers > 0,
        )

    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = Wav2Vec2Model.from_config(cfg.model)
    if init_state is not None and resume is None:
        missing, unexpected = model.load_state_dict(init_state, strict=False)
        if unexpected:
            raise ValueError(
                f"{cfg.train.init_from}: weights the model does not have: {', '.join(unexpected[:8])}"
            )
        if missing:
            notes.append(
                f"--init-from lacks {len(missing)} tensors, left at their initial values: "
                f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
            )
    model.to(device)
    # LayerDrop skips whole layers, and grad_scale 0 runs the extractor without autograd: parameters
    # without a gradient, which DDP must be told to expect.
    unused = cfg.model.transformer.layerdrop_prob > 0 or cfg.model.feature_extractor.grad_scale == 0
    ddp_model = dist.wrap_model(model, device, find_unused_parameters=unused)
    optimizer = build_optimizer(model, cfg.optim)
    scaler = (
        torch.amp.GradScaler(device.type, init_scale=cfg.train.fp16_init_scale)
        if cfg.train.precision == "fp16"
        else None
    )
    state = TrainState(
        model=ddp_model,
        optimizer=optimizer,
        schedule=PolynomialDecaySchedule(optimizer, cfg.optim, cfg.total_steps),
        scaler=scaler,
        generator=torch.Generator(device),
        sampler=loaders[data.train_split].sampler,
    )
    if resume is not None:
        state.restore(resume)
        notes.append(f"resumed from {out_dir / checkpoint.LAST} at update {state.step}")
    if cfg.optim.warmup_steps >= cfg.total_steps:
        notes.append(
            f"optim.warmup_steps={cfg.optim.warmup_steps} >= the {cfg.total_steps} scheduled updates: "
            "the LR never reaches optim.lr"
        )

    logger = RunLogger(
        out_dir,
        total_steps=cfg.train.max_steps,
        start_step=state.step,
        tensorboard=cfg.train.tensorboard,
    )
    num_params = sum(p.numel() for p in model.parameters())
    logger.message(
        f"w2vkit pretrain: {num_params / 1e6:.2f}M parameters, device {device}, world size {world_size}, "
        f"precision {cfg.train.precision}, {len(datasets[data.train_split])} training utterances, "
        f"run directory {out_dir}"
    )
    for note in notes:
        logger.message(note)
    try:
        reason = train(
            state,
            Objective(step=make_step_fn(cfg), summarize=summarize),
            cfg=cfg.train,
            clip_norm=cfg.optim.clip_norm,
            sample_rate=cfg.data.sample_rate,
            train_loader=loaders[data.train_split],
            valid_loader=loaders.get(data.valid_split),
            device=device,
            out_dir=out_dir,
            config_dict=to_dict(cfg),
            logger=logger,
        )
    finally:
        logger.close()
    logger.message(f"finished ({reason}) at update {state.step}")
    return 1 if reason == "nonfinite" else 0


def _device(cfg: PretrainConfig) -> torch.device:
    choice = cfg.train.device
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu" and cfg.train.precision == "fp16":
        raise ConfigError(
            "train.precision: 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU"
        )
    if choice == "cuda":
        device = torch.device("cuda", dist.local_rank())
        torch.cuda.set_device(device)  # nccl and the default CUDA stream follow the local rank
        return device
    return torch.device("cpu")


__all__ = ["add_arguments", "make_step_fn", "resolve", "run"]
