"""Training metrics: sums kept on the device, all-reduced once per log line, written as JSON lines.

Log records use fairseq's `log_format: json` names so its log tooling reads them:
`loss` (bits per masked frame = sum loss / sum sample_size / ln 2), `loss_0` contrastive,
`loss_1` diversity, `loss_2` feature penalty (same scaling), `accuracy`, `prob_perplexity`,
`code_perplexity`, `temp`, `lr`, `gnorm`, `loss_scale`, `ups` (updates per second),
`audio_sec_per_sec`, `gpu_mem_gb` (peak since the last line, CUDA only).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from w2vkit.train import dist

LOSS_KEYS = ("loss", "loss_0", "loss_1", "loss_2")


class MetricsWindow:
    """Accumulates per-micro-batch values between two log lines.

    `sums` add up over micro-batches and ranks (losses, sample_size, correct/count, audio samples);
    `means` are averaged over micro-batches and ranks (perplexities and temperature, as fairseq).
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.means: dict[str, float] = {}
        self.num_micro_batches = 0
        self.num_updates = 0

    def add(self, sums: Mapping[str, Any], means: Mapping[str, Any]) -> None:
        """Values are floats or 0-d tensors (kept on their device until `reduce`)."""
        for key, value in sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        for key, value in means.items():
            self.means[key] = self.means.get(key, 0.0) + value
        self.num_micro_batches += 1

    def reduce(
        self, device: torch.device, summarize: Callable[[dict[str, float]], dict[str, float]]
    ) -> dict[str, float]:
        """All-reduce over ranks in one call, then `summarize` the sums (means are averaged)."""
        sum_keys, mean_keys = sorted(self.sums), sorted(self.means)
        values = [float(self.sums[k]) for k in sum_keys] + [float(self.means[k]) for k in mean_keys]
        totals = torch.tensor(
            values + [float(self.num_micro_batches)], dtype=torch.float64, device=device
        )
        totals = dist.all_reduce_sum(totals).tolist()
        sums = dict(zip(sum_keys, totals[: len(sum_keys)], strict=True))
        count = max(totals[-1], 1.0)
        record = {k: v / count for k, v in zip(mean_keys, totals[len(sum_keys) : -1], strict=True)}
        return summarize(sums) | record

    def state_dict(self) -> dict:
        return {
            "sums": {k: float(v) for k, v in self.sums.items()},
            "means": {k: float(v) for k, v in self.means.items()},
            "num_micro_batches": self.num_micro_batches,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.means = dict(state["sums"]), dict(state["means"])
        self.num_micro_batches, self.num_updates = (
            int(state["num_micro_batches"]),
            int(state["num_updates"]),
        )


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """fairseq's wav2vec `reduce_metrics`: losses in bits per masked frame, accuracy over counted rows."""
    sample_size = max(sums.get("sample_size", 0.0), 1.0)
    out = {key: sums[key] / sample_size / math.log(2) for key in LOSS_KEYS if key in sums}
    if sums.get("count"):
        out["accuracy"] = sums["correct"] / sums["count"]
    out["sample_size"] = sums.get("sample_size", 0.0)
    return out


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


__all__ = ["LOSS_KEYS", "MetricsWindow", "RunLogger", "Throughput", "gpu_memory_gb", "summarize"]
