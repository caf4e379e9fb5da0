"""Training metrics: sums kept on the device, all-reduced once per log line, written as JSON lines.

The loop's own log keys: `lr` (of the next update, as fairseq logs it), `gnorm` (before clipping),
`loss_scale` (fp16), `sample_size` (per update, all processes), `batch_audio_sec` (audio seconds
per update, all processes: the effective batch), `ups` (updates per second),
`audio_sec_per_sec`, `gpu_mem_gb` (peak since the last line, CUDA only), `num_nonfinite`,
`num_failed_files`. The objective's `summarize` names the rest (wav2vec 2.0: `w2vkit.pretrain.wav2vec2`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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
        self.audio_samples = 0.0
        """Audio samples of this rank's updates in the window (host number, from the batches)."""

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

        `extra` are host numbers to sum over ranks in the same all-reduce; the returned `extra` also
        holds the window's `audio_samples`.
        """
        extra = {**(extra or {}), "audio_samples": self.audio_samples}
        counts = {"n": float(self.num_micro_batches)}
        sums, mean_sums, counts, extra = _sum_over_ranks(
            [self.sums, self.means, counts, extra], device
        )
        count = max(counts["n"], 1.0)
        return sums, {key: value / count for key, value in mean_sums.items()}, extra

    def all_reduced(self, device: torch.device) -> MetricsWindow:
        """The window of every rank together (host floats), as a checkpoint stores it."""
        counts = {"n": float(self.num_micro_batches), "audio_samples": self.audio_samples}
        sums, means, counts = _sum_over_ranks([self.sums, self.means, counts], device)
        window = MetricsWindow()
        window.sums, window.means = dict(sums), dict(means)
        window.num_micro_batches, window.num_updates = int(counts["n"]), self.num_updates
        window.audio_samples = counts["audio_samples"]
        return window

    def state_dict(self) -> dict:
        return {
            "sums": {k: float(v) for k, v in self.sums.items()},
            "means": {k: float(v) for k, v in self.means.items()},
            "num_micro_batches": self.num_micro_batches,
            "num_updates": self.num_updates,
            "audio_samples": self.audio_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.means = dict(state["sums"]), dict(state["means"])
        self.num_micro_batches = int(state["num_micro_batches"])
        self.num_updates = int(state["num_updates"])
        self.audio_samples = float(state.get("audio_samples", 0.0))


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


@dataclass(frozen=True)
class Column:
    """One column of the console table: the record key, its header, a format spec ('.3f')."""

    key: str
    header: str
    spec: str


LOOP_COLUMNS = (
    Column("lr", "lr", ".2e"),
    Column("gnorm", "gnorm", ".3g"),
    Column("batch_audio_sec", "batch-s", ".0f"),
    Column("audio_sec_per_sec", "audio-s/s", ".0f"),
)
"""The loop's own keys on the console; a recipe puts its objective's columns before them."""


class ConsoleTable:
    """A compact, aligned line per train record (header every HEADER_EVERY lines), a short line per
    validation record."""

    HEADER_EVERY = 20

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = tuple(columns)
        self.widths = [max(len(c.header), 8) for c in self.columns]
        self.num_rows = 0

    def lines(self, record: dict, eta: str) -> list[str]:
        if record.get("split") != "train":
            return [self._valid_line(record)]
        lines = []
        if self.num_rows % self.HEADER_EVERY == 0:
            headers = [c.header.rjust(w) for c, w in zip(self.columns, self.widths, strict=True)]
            lines.append(" ".join(["update".rjust(8), "epoch", *headers, "ETA".rjust(8)]))
        self.num_rows += 1
        cells = [
            _cell(record.get(c.key), c.spec).rjust(w)
            for c, w in zip(self.columns, self.widths, strict=True)
        ]
        step, epoch = str(record["num_updates"]).rjust(8), str(record["epoch"]).rjust(5)
        return [*lines, " ".join([step, epoch, *cells, eta.rjust(8)])]

    def _valid_line(self, record: dict) -> str:
        shown = [c for c in self.columns if c.key in record]
        extra = [k for k in record if k.startswith("best_")]
        parts = [f"{c.header} {_cell(record[c.key], c.spec)}" for c in shown]
        parts += [f"{k} {_cell(record[k], '.4g')}" for k in extra]
        return f"{record.get('split', 'valid')} @ {record['num_updates']}: " + "  ".join(parts)


def _cell(value: object, spec: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return "-"


class RunLogger:
    """Rank 0 writes every record as a JSON line to `<out_dir>/train_log.jsonl`. On a terminal the
    console gets a table line per record under a progress bar that moves every update; otherwise
    the console gets the JSON lines too (for tools and log files)."""

    def __init__(
        self,
        out_dir: Path,
        *,
        total_steps: int,
        start_step: int,
        tensorboard: bool,
        progress_bar: bool | None = None,
        columns: Sequence[Column] = LOOP_COLUMNS,
    ) -> None:
        """`progress_bar`: the terminal console (bar and table); None: when stdout is a terminal."""
        self.enabled = dist.is_main()
        self.path = Path(out_dir) / "train_log.jsonl"
        self.bar: Any = None
        self.writer = None
        self.table = ConsoleTable(columns)
        self.total_steps = total_steps
        self._started: tuple[float, int] | None = None  # (time, step) of the first update seen
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
        if self.bar is None:
            self.message(line)
        else:
            for text in self.table.lines(record, self.eta(record["num_updates"])):
                self.message(text)
            if record.get("split") == "train" and isinstance(record.get("loss"), float):
                self.bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
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

    def progress(self, step: int) -> None:
        """After every update: move the bar (no host sync, nothing logged)."""
        if self._started is None:
            self._started = (time.perf_counter(), step)
        if self.bar is not None and step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def set_total(self, total_steps: int) -> None:
        """A new planned length (a time budget's plan), for the bar and the ETA."""
        self.total_steps = total_steps
        if self.bar is not None:
            self.bar.total = total_steps
            self.bar.refresh()

    def eta(self, step: int) -> str:
        """Time left at this session's rate, H:MM:SS ("-" when unknown)."""
        if not self.total_steps or self._started is None or step <= self._started[1]:
            return "-"
        started, first = self._started
        per_update = (time.perf_counter() - started) / (step - first)
        seconds = int(max(self.total_steps - step, 0) * per_update)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

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


def module_grad_norms(model: nn.Module, gnorm: float) -> dict[str, float]:
    """`grad_norm/<child>`: the gradient norm of each top-level module of the last update, on the
    scale of `gnorm` (the update divides the gradients by the sample size only inside the step,
    so the raw norms are rescaled to sum in squares to `gnorm`). One host copy: log lines only."""
    norms = {
        name: torch.linalg.vector_norm(
            torch.stack([p.grad.float().norm() for p in child.parameters() if p.grad is not None])
        )
        for name, child in dist.unwrap(model).named_children()
        if any(p.grad is not None for p in child.parameters())
    }
    if not norms:
        return {}
    values = torch.stack(list(norms.values())).tolist()
    scale = gnorm / max(math.sqrt(sum(v * v for v in values)), 1e-30)
    return {f"grad_norm/{name}": v * scale for name, v in zip(norms, values, strict=True)}


__all__ = [
    "LOOP_COLUMNS",
    "Column",
    "ConsoleTable",
    "MetricsWindow",
    "RunLogger",
    "Throughput",
    "Value",
    "gpu_memory_gb",
    "module_grad_norms",
]
