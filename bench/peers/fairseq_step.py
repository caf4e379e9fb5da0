"""fairseq worker of bench/train_step.py: one update of fairseq's own model, criterion and Adam.

Runs in fairseq's interpreter (`.fairseq-venv/bin/python`), without w2vkit. The model fields come
from the orchestrator (`--model-json`); masks and negatives are drawn by fairseq's forward, as in
its trainer; the update is `Trainer.train_step`'s arithmetic (loss summed, gradients multiplied by
1 / sample_size, clip_grad_norm, step). Prints one JSON line, as the w2vkit and HF workers do.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("preset", "device", "dtype"):
        parser.add_argument(f"--{name}")
    for name in ("batch", "steps", "warmup", "threads"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--model-json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config(**json.loads(args.model_json))).to(device).train()
    criterion = Wav2vecCriterion(task=None, infonce=True, loss_weights=[0.1, 10.0], log_keys=[])
    optimizer = FairseqAdam(
        FairseqAdamConfig(lr=[5e-4], adam_betas="(0.9, 0.98)", adam_eps=1e-6, weight_decay=0.01),
        list(model.parameters()),
    )
    wav = torch.randn(
        args.batch, int(args.seconds * 16000), generator=torch.Generator().manual_seed(0)
    )
    sample = {"id": torch.arange(args.batch), "net_input": {"source": wav.to(device)}}
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    def update() -> int:
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, sample_size, _ = criterion(model, sample)
        optimizer.backward(loss)
        optimizer.multiply_grads(1.0 / float(sample_size))
        optimizer.clip_grad_norm(0.0)
        optimizer.step()
        return int(sample_size)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        update()
    times, frames = [], 0
    for _ in range(args.steps):
        sync()
        start = time.perf_counter()
        frames = update()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "masked_frames": frames, "peak_mib": peak}))


if __name__ == "__main__":
    main()
