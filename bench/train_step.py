"""Speed of one wav2vec 2.0 pretraining update: w2vkit's trainer, and HF and fairseq side by side.

    PYTHONPATH=src python bench/train_step.py --preset small --batch 4 --seconds 4
    PYTHONPATH=src python bench/train_step.py --preset base --batch 2 --seconds 4 --compare hf fairseq
    PYTHONPATH=src python bench/train_step.py --preset base --batch 8 --seconds 15.6 \
        --device cuda --dtype bf16 --compare hf

Each implementation runs in its own worker process (fairseq in `.fairseq-venv`, or the interpreter
named by W2VKIT_FAIRSEQ_PYTHON), alternating A B A B for `--rounds` rounds on a fixed in-memory
batch after `--warmup` updates, device-synchronised, so a noisy shared machine hits every
implementation alike. Medians and minima are over all timed updates of all rounds. The w2vkit
worker times the trainer's own `run_update` with the real pretraining step function and
optimizer (forward with on-device masks and negatives, loss, backward, normalisation, clip,
AdamW); HF times `Wav2Vec2ForPreTraining` with the mask and negative sampling of its example
script; fairseq its `Wav2Vec2Model`, `Wav2vecCriterion` and `FairseqAdam`. Memory is the worker's
peak RSS on CPU (imports included, alike for all) or `torch.cuda.max_memory_allocated` on GPU.
MFU uses the analytic FLOP count of bench/flops.py and `--peak-tflops` (default from the GPU name;
none on CPU). Prints a table, then one JSON line. Exit code 0, 1 when the w2vkit worker failed,
3 when w2vkit ran and a peer failed. `--find-batch 96 64 32` instead prints the largest batch that
fits, tried in one process; `--profile FILE` writes w2vkit's top kernels of two updates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import training_flops  # noqa: E402

from w2vkit.model.config import ModelConfig, preset, tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "V100": 125.0}
"""Dense bf16/fp16 tensor-core peaks from the vendors' data sheets, by GPU name."""


def small() -> ModelConfig:
    """Conv 128 channels, 4 x 256 Transformer, 2 x 320 codes, 100 negatives (the issue's shape)."""
    cfg = preset("base")
    return replace(
        cfg,
        feature_extractor=replace(
            cfg.feature_extractor,
            conv_layers=[(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128, 2, 2)] * 2,
        ),
        transformer=replace(
            cfg.transformer, num_layers=4, model_dim=256, ffn_dim=1024, num_heads=4,
            pos_conv_groups=16,
        ),
        final_dim=128,
    )  # fmt: skip


def model_config(name: str) -> ModelConfig:
    return small() if name == "small" else tiny() if name == "tiny" else preset(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def fixed_batch(args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    num_samples = int(args.seconds * 16000)
    return torch.randn(args.batch, num_samples, generator=generator).to(device)


def w2vkit_update(args: argparse.Namespace, device: torch.device):
    """A closure running one `run_update` of the real trainer on a fixed batch."""
    from w2vkit.data.collate import Batch
    from w2vkit.model.wav2vec2 import Wav2Vec2Model
    from w2vkit.pretrain.schedule import PolynomialDecaySchedule
    from w2vkit.pretrain.wav2vec2 import Wav2Vec2PretrainConfig, pretraining_objective
    from w2vkit.train.host_memory import keep_freed_memory
    from w2vkit.train.optim import build_optimizer
    from w2vkit.train.state import TrainState
    from w2vkit.train.update import run_update

    if device.type == "cpu" and not args.system_malloc:
        keep_freed_memory()  # as a CPU training run does (session.device_for)
    from w2vkit.model import compiled

    cfg = Wav2Vec2PretrainConfig(model=model_config(args.preset))
    cfg.train.precision, cfg.optim.warmup_steps = args.dtype, 10
    cfg.model.transformer.activation_checkpointing = args.checkpointing
    torch.manual_seed(0)
    model = Wav2Vec2Model.from_config(cfg.model).to(device)
    if args.compile:  # as train.compile=true: each layer and the conv stack, static shapes
        compiled.BACKEND = args.compile_backend
        compiled.compile_stages(model)
    optimizer = build_optimizer(model, cfg.optim)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        schedule=PolynomialDecaySchedule(optimizer, cfg.optim, cfg.total_steps),
        scaler=torch.amp.GradScaler(device.type) if args.dtype == "fp16" else None,
        generator=torch.Generator(device),
        sampler=None,
    )
    wav = fixed_batch(args, device)
    batch = Batch(wav=wav, padding_mask=None, indices=torch.arange(args.batch), epoch=0, position=0)
    objective = pretraining_objective(cfg.loss, cfg.model.quantizer)
    frames: list[int] = []

    def update() -> int:
        result = run_update(
            state, [batch], objective, cfg=cfg.train, clip_norm=cfg.optim.clip_norm, device=device
        )
        return int(result.sample_size)

    return update, frames


def hf_update(args: argparse.Namespace, device: torch.device):
    """HF `Wav2Vec2ForPreTraining`, masks and negatives sampled as its pretraining example does."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
    from transformers.models.wav2vec2.modeling_wav2vec2 import (
        _compute_mask_indices,
        _sample_negative_indices,
    )

    from w2vkit.interop.hf import hf_config_from_w2vkit

    cfg = model_config(args.preset)
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**hf_config_from_w2vkit(cfg))).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    wav = fixed_batch(args, device)
    num_frames = int(model._get_feat_extract_output_lengths(wav.shape[1]))
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    def update() -> int:
        mask = _compute_mask_indices(
            (args.batch, num_frames), cfg.masking.time_prob, cfg.masking.time_span_frames,
            min_masks=2,
        )  # fmt: skip
        negatives = _sample_negative_indices((args.batch, num_frames), cfg.num_negatives, mask)
        mask_t = torch.from_numpy(mask).to(device)
        negatives_t = torch.from_numpy(negatives).to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(wav, mask_time_indices=mask_t, sampled_negative_indices=negatives_t)
        num_masked = int(mask.sum())
        (out.loss / num_masked).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        optimizer.step()
        return num_masked

    return update, []


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    update, _ = (w2vkit_update if args.worker == "w2vkit" else hf_update)(args, device)
    for _ in range(args.warmup):
        update()
    times, frames = [], 0
    for _ in range(args.steps):
        sync(device)
        start = time.perf_counter()
        frames = update()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = peak_memory_mib(device)
    if args.profile and args.worker == "w2vkit":
        write_profile(update, device, Path(args.profile))
    print(json.dumps({"times": times, "masked_frames": frames, "peak_mib": peak}))


def write_profile(update, device: torch.device, path: Path, updates: int = 2) -> None:
    """The top kernels (GPU) or ops (CPU) of `updates` updates, by self time, as a text table."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(updates):
            update()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=15) + "\n")


def find_batch(args: argparse.Namespace) -> None:
    """The largest of `--find-batch` (tried largest first) for which two w2vkit updates run, in
    this one process: an out-of-memory error is caught, the memory freed, the next size tried.
    Prints one JSON line; exit code 1 when none fits or another error stops a try."""
    import gc

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tried: dict[int, str] = {}
    for batch in sorted(args.find_batch, reverse=True):
        try:
            update, _ = w2vkit_update(replace_batch(args, batch), device)
            update()
            update()
            sync(device)
            tried[batch] = "fits"
        except torch.OutOfMemoryError as err:
            tried[batch] = "out of memory"
            print(f"batch {batch}: {str(err).splitlines()[0]}", file=sys.stderr)
        finally:
            update = None  # type: ignore[assignment]
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if tried[batch] == "fits":
            print(json.dumps({"benchmark": "find_batch", "batch": batch, "tried": tried}))
            return
    print(json.dumps({"benchmark": "find_batch", "batch": None, "tried": tried}))
    sys.exit(1)


def replace_batch(args: argparse.Namespace, batch: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "batch": batch})


def fairseq_python() -> str:
    default = ROOT / ".fairseq-venv" / "bin" / "python"
    return os.environ.get("W2VKIT_FAIRSEQ_PYTHON", str(default))


def worker_command(name: str, args: argparse.Namespace) -> list[str]:
    common = [
        f"--preset={args.preset}", f"--batch={args.batch}", f"--seconds={args.seconds}",
        f"--device={args.device}", f"--dtype={args.dtype}", f"--steps={args.steps}",
        f"--warmup={args.warmup}", f"--threads={args.threads}",
    ]  # fmt: skip
    if name == "fairseq":
        spec = json.dumps(fairseq_fields(model_config(args.preset)))
        script = str(ROOT / "bench" / "peers" / "fairseq_step.py")
        return [fairseq_python(), script, *common, f"--model-json={spec}"]
    compile_args = ["--compile", f"--compile-backend={args.compile_backend}"]
    extra = compile_args if args.compile and name == "w2vkit" else []
    extra += ["--checkpointing"] if args.checkpointing and name == "w2vkit" else []
    extra += [f"--profile={args.profile}"] if args.profile and name == "w2vkit" else []
    extra += ["--system-malloc"] if args.system_malloc and name == "w2vkit" else []
    return [sys.executable, __file__, f"--worker={name}", *common, *extra]


def fairseq_fields(cfg: ModelConfig) -> dict:
    """The fairseq `Wav2Vec2Config` fields of a w2vkit model (the shapes the benchmark needs)."""
    t, q, fe = cfg.transformer, cfg.quantizer, cfg.feature_extractor
    return {
        "extractor_mode": "default" if fe.norm_mode == "group_norm" else "layer_norm",
        "conv_feature_layers": repr(list(fe.conv_layers)),
        "conv_bias": fe.conv_bias,
        "feature_grad_mult": fe.grad_scale,
        "encoder_layers": t.num_layers,
        "encoder_embed_dim": t.model_dim,
        "encoder_ffn_embed_dim": t.ffn_dim,
        "encoder_attention_heads": t.num_heads,
        "layer_norm_first": t.layer_norm_first,
        "conv_pos": t.pos_conv_kernel,
        "conv_pos_groups": t.pos_conv_groups,
        "dropout": t.dropout_prob,
        "attention_dropout": t.attention_dropout_prob,
        "encoder_layerdrop": t.layerdrop_prob,
        "dropout_input": cfg.input_dropout_prob,
        "dropout_features": cfg.features_dropout_prob,
        "latent_vars": q.num_entries,
        "latent_groups": q.num_groups,
        "latent_dim": q.dim,
        "final_dim": cfg.final_dim,
        "num_negatives": cfg.num_negatives,
        "cross_sample_negatives": cfg.num_cross_sample_negatives,
        "codebook_negatives": cfg.num_codebook_negatives,
        "quantize_targets": q.quantize_targets,
        "latent_temp": [q.temperature_start, q.temperature_end, q.temperature_decay],
        "logit_temp": cfg.logit_temperature,
        "activation_dropout": t.activation_dropout_prob,
        "mask_prob": cfg.masking.time_prob,
        "mask_length": cfg.masking.time_span_frames,
    }


PEER_FAILED = 3
"""Exit code when w2vkit ran but a `--compare` peer failed (w2vkit's own failure exits 1)."""


def run_round_robin(args: argparse.Namespace) -> dict[str, dict]:
    names = ["w2vkit", *args.compare]
    results: dict[str, dict] = {n: {"times": [], "peak_mib": 0.0} for n in names}
    for _ in range(args.rounds):
        for name in [n for n in names if "error" not in results[n]]:
            run = subprocess.run(
                worker_command(name, args), capture_output=True, text=True, check=False
            )
            if run.returncode != 0 and name == "w2vkit":
                sys.exit(f"{name} worker failed:\n{run.stderr[-3000:]}")
            if run.returncode != 0:  # a peer that cannot run this setting is a result, not a stop
                lines = run.stderr.strip().splitlines() or [f"exit code {run.returncode}"]
                results[name]["error"] = lines[-1]
                print(f"{name} worker failed:\n{run.stderr[-3000:]}", file=sys.stderr)
                continue
            report = json.loads(run.stdout.strip().splitlines()[-1])
            results[name]["times"] += report["times"]
            results[name]["masked_frames"] = report["masked_frames"]
            results[name]["peak_mib"] = max(results[name]["peak_mib"], report["peak_mib"])
    return results


def summarise(args: argparse.Namespace, results: dict[str, dict]) -> dict:
    audio_seconds = args.batch * args.seconds
    flops = training_flops(model_config(args.preset), int(args.seconds * 16000), args.batch)
    peak = args.peak_tflops
    if peak is None and args.device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    rows: dict[str, dict] = {}
    for name, r in results.items():
        if "error" in r:
            rows[name] = {"error": r["error"]}
            continue
        median = statistics.median(r["times"])
        rows[name] = {
            "median_s": median,
            "min_s": min(r["times"]),
            "audio_sec_per_sec": audio_seconds / median,
            "masked_frames_per_sec": r["masked_frames"] / median,
            "peak_mib": r["peak_mib"],
            "tflops": flops / median / 1e12,
            "mfu": flops / median / (peak * 1e12) if peak else None,
            "speedup_of_w2vkit": median / statistics.median(results["w2vkit"]["times"]),
        }
    return rows


def print_table(args: argparse.Namespace, rows: dict) -> None:
    print(
        f"preset {args.preset}, batch {args.batch} x {args.seconds} s, {args.device} {args.dtype}, "
        f"{args.threads} threads, {args.rounds} rounds x {args.steps} updates"
    )
    print(f"{'impl':>8} {'median s':>9} {'min s':>8} {'audio s/s':>10} {'MiB':>8} {'TFLOP/s':>8} "
          f"{'MFU':>6} {'w2vkit x':>9}")  # fmt: skip
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:>8} failed: {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(
            f"{name:>8} {r['median_s']:9.3f} {r['min_s']:8.3f} {r['audio_sec_per_sec']:10.1f} "
            f"{r['peak_mib']:8.0f} {r['tflops']:8.3f} {mfu:>6} {r['speedup_of_w2vkit']:9.2f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile w2vkit's layers (train.compile)"
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (aot_eager: no codegen)",
    )
    parser.add_argument(
        "--checkpointing", action="store_true", help="w2vkit with activation checkpointing"
    )
    parser.add_argument("--profile", default="", help="write w2vkit's top kernels to this file")
    parser.add_argument(
        "--find-batch",
        type=int,
        nargs="+",
        default=[],
        help="print the largest of these batch sizes that fits (one process), then stop",
    )
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc as it is in the w2vkit worker (a CPU run keeps freed memory)",
    )
    parser.add_argument("--compare", nargs="*", default=[], choices=["hf", "fairseq"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed updates per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--worker", choices=["w2vkit", "hf"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args)
        return
    if args.find_batch:
        find_batch(args)
        return
    rows = summarise(args, run_round_robin(args))
    print_table(args, rows)
    print(json.dumps({"benchmark": "train_step", **vars(args), "results": rows}))
    if any("error" in r for r in rows.values()):
        sys.exit(PEER_FAILED)  # w2vkit ran (its failure exits 1 earlier); a peer did not


if __name__ == "__main__":
    main()
