"""Training metrics: sums kept on the device, all-reduced once per log line, written as JSON lines.

The loop's own log keys: `lr` (of the next update, as fairseq logs it), `gnorm` (before clipping),
`loss_scale` (fp16), `sample_size` (per update, all processes), `ups` (updates per second),
`audio_sec_per_sec`, `gpu_mem_gb` (peak since the last line, CUDA only), `num_nonfinite`,
`num_failed_files`. The objective's `summarize` names the rest (pretraining: `w2vkit.losses`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from w2vkit.train import dist

Value = Tensor | float
"""A logged number: a 0-dim tensor (left on its device) or a Python number."""


class MetricsWindow:
    """Accumulates per-micro-batch values between two log lines without copying them to the host.

    `sums` add up over micro-batches and ranks (losses, sample_size, correct/count);
    `means` are averaged over micro-batches and ranks (perplexities and temperature, as fairseq).
    Tensors are detached and kept in float64 on their device: adding them costs no host sync.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Value] = {}
        self.means: dict[str, Value] = {}
        self.num_micro_batches = 0
        self.num_updates = 0

    def add(self, sums: dict[str, Value], means: dict[str, Value]) -> None:
        for key, value in sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + _accumulable(value)
        for key, value in means.items():
            self.means[key] = self.means.get(key, 0.0) + _accumulable(value)
        self.num_micro_batches += 1

    def reduce(
        self, device: torch.device, extra: dict[str, float] | None = None
    ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """(sums, means, extra) over all ranks, with one all-reduce and one copy to the host.

        `extra` are host numbers to sum over ranks in the same all-reduce (e.g. audio samples).
        """
        sums, mean_sums, counts, extra = _sum_over_ranks(
            [self.sums, self.means, {"n": float(self.num_micro_batches)}, extra or {}], device
        )
        count = max(counts["n"], 1.0)
        return sums, {key: value / count for key, value in mean_sums.items()}, extra

    def all_reduced(self, device: torch.device) -> MetricsWindow:
        """The window of every rank together (host floats), as a checkpoint stores it."""
        sums, means, counts = _sum_over_ranks(
            [self.sums, self.means, {"n": float(self.num_micro_batches)}], device
        )
        window = MetricsWindow()
        window.sums, window.means = dict(sums), dict(means)
        window.num_micro_batches, window.num_updates = int(counts["n"]), self.num_updates
        return window

    def state_dict(self) -> dict:
        return {
            "sums": {k: float(v) for k, v in self.sums.items()},
            "means": {k: float(v) for k, v in self.means.items()},
            "num_micro_batches": self.num_micro_batches,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.means = dict(state["sums"]), dict(state["means"])
        self.num_micro_batches = int(state["num_micro_batches"])
        self.num_updates = int(state["num_updates"])


def _accumulable(value: Value) -> Value:
    if isinstance(value, Tensor):
        return value.detach().to(torch.float64)
    return float(value)


def _sum_over_ranks(
    groups: Sequence[Mapping[str, Value]], device: torch.device
) -> list[dict[str, float]]:
    """Each dict's values summed over ranks: one stacked all-reduce, one `tolist` (the host sync).

    Keys are sorted so that every rank lays the values out alike.
    """
    keys = [sorted(group) for group in groups]
    flat = [
        torch.as_tensor(group[key], dtype=torch.float64, device=device).reshape(())
        for group, group_keys in zip(groups, keys, strict=True)
        for key in group_keys
    ]
    totals = iter(dist.all_reduce_sum(torch.stack(flat)).tolist() if flat else [])
    return [{key: next(totals) for key in group_keys} for group_keys in keys]


class RunLogger:
    """JSON lines to stdout and `<out_dir>/train_log.jsonl` on rank 0; tqdm bar on a terminal."""

    def __init__(
        self,
        out_dir: Path,
        *,
        total_steps: int,
        start_step: int,
        tensorboard: bool,
        progress_bar: bool | None = None,
    ) -> None:
        self.enabled = dist.is_main()
        self.path = Path(out_dir) / "train_log.jsonl"
        self.bar = None
        self.writer = None
        if not self.enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError(
                    "train.tensorboard is true but the `tensorboard` package is not "
                    "installed: pip install tensorboard"
                ) from err
            self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        if progress_bar if progress_bar is not None else sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps or None, initial=start_step, unit="update", dynamic_ncols=True
            )

    def log(self, record: dict) -> None:
        """One JSON object per call; `split` (train/valid) prefixes the TensorBoard tags."""
        if not self.enabled:
            return
        line = json.dumps({k: _rounded(v) for k, v in record.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self.message(line)
        if self.writer is not None:
            split, step = record.get("split", "train"), record["num_updates"]
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{split}/{key}", value, step)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def progress(self, step: int, loss: float | None, audio_sec_per_sec: float | None) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        postfix = {}
        if loss is not None:
            postfix["loss"] = f"{loss:.3f}"
        if audio_sec_per_sec is not None:
            postfix["audio_s/s"] = f"{audio_sec_per_sec:.0f}"
        self.bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


class Throughput:
    """Wall-clock rates between log lines."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def rates(self, num_updates: int, audio_seconds: float) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.start = time.perf_counter()
        return {"ups": num_updates / elapsed, "audio_sec_per_sec": audio_seconds / elapsed}


def gpu_memory_gb(device: torch.device) -> dict[str, float]:
    """Peak CUDA memory since the last call; {} on CPU."""
    if device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return {"gpu_mem_gb": peak}


def _rounded(value):
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.7g}")  # float32 precision, short lines
    return value


__all__ = ["MetricsWindow", "RunLogger", "Throughput", "Value", "gpu_memory_gb"]
