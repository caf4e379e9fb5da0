"""Layer-wise wav2vec 2.0 hidden states for every item of a manifest, stored as safetensors shards.

A features directory holds:
- `features-00000.safetensors`, ...: one tensor per item, `(L, T, D)` frame features or `(L, D)`
  utterance means (`pool="mean"`), L = the stored layers in the order of the `layers` column.
  Shards close at about `shard_bytes`; each stays loadable on its own with
  `safetensors.torch.load_file`.
- `index.tsv`: a header, then `relative_path<TAB>shard<TAB>key<TAB>num_frames<TAB>layers`
  (`layers` comma-separated, e.g. `0,6,12`), one row per item in extraction order (longest
  first), so the rows of a shard are adjacent. It is written last: a directory without it is an
  interrupted run.
- `skipped.tsv`: a header, then `relative_path<TAB>reason` for every item not extracted.
- `meta.json`: layers, pooling, dtype, frame rate, chunking and input normalisation.

Layer k is `extract_features(...).hidden_states[k]`: 0 is the encoder input (after the positional
convolution), k >= 1 the output of Transformer layer k.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from w2vkit.data.audio import DecodeError
from w2vkit.data.dataset import AudioDataset
from w2vkit.features.batching import COMPUTE_DTYPES, BatchLimits, run_windows
from w2vkit.features.store import (
    DEFAULT_SHARD_BYTES,
    INDEX_HEADER,
    SKIPPED_HEADER,
    STORAGE_DTYPES,
    ShardWriter,
    dtype_name,
    write_text,
)
from w2vkit.model.feature_extractor import frame_geometry, output_lengths
from w2vkit.model.wav2vec2 import Wav2Vec2Model

POOLS = frozenset({"none", "mean"})


@dataclass
class ExtractSummary:
    out_dir: Path
    layers: list[int]
    num_items: int
    """Items written."""
    num_frames: int
    """Frames over all written items (before pooling)."""
    audio_seconds: float
    """Audio extracted, at the dataset's sample rate."""
    num_shards: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(relative_path, reason) of every item not written."""
    wall_seconds: float = 0.0


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """`"all"` -> [0, ..., num_layers]; `"6,12"` -> [6, 12] (sorted, unique, checked)."""
    if spec.strip() == "all":
        return list(range(num_layers + 1))
    try:
        layers = sorted({int(part) for part in spec.split(",")})
    except ValueError:
        raise ValueError(
            f"layers must be 'all' or comma-separated integers, got {spec!r}"
        ) from None
    if layers[0] < 0 or layers[-1] > num_layers:
        raise ValueError(
            f"layers {spec!r} out of range: the model has layers 0 (encoder input) to {num_layers}"
        )
    return layers


def plan_chunks(
    num_samples: int, conv_layers: Sequence[tuple[int, int, int]], max_samples: int | None
) -> list[tuple[int, int, int, int]]:
    """Windows `(sample_start, sample_end, frame_start, frame_end)` of at most `max_samples`.

    Windows start on multiples of the frame stride and overlap by receptive_field - stride samples,
    so that window i yields exactly the frames `frame_start:frame_end` of the whole-file frame
    grid: the concatenation has as many frames as one pass over the file, each from the same
    samples. Only the context differs (see `extract_utterance`). [] if no frame fits.
    """
    total = int(output_lengths(torch.tensor(num_samples), list(conv_layers)))
    if max_samples is None or num_samples <= max_samples or total == 0:
        return [(0, num_samples, 0, total)] if total > 0 else []
    receptive, stride = frame_geometry(conv_layers)
    frames_per_window = (max_samples - receptive) // stride + 1
    if frames_per_window < 1:
        raise ValueError(f"max_samples {max_samples} is shorter than one frame ({receptive})")
    chunks = []
    for first in range(0, total, frames_per_window):
        last = min(first + frames_per_window, total)
        end = num_samples if last == total else (last - 1) * stride + receptive
        chunks.append((first * stride, end, first, last))
    return chunks


def extract_utterance(
    model: Wav2Vec2Model,
    wav: Tensor,
    layers: Sequence[int],
    *,
    max_samples: int | None = None,
    batch_size: int = 1,
    compute_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Hidden states of `layers` for one utterance, in fp32 on the model's device.

    Long inputs run in windows of `max_samples` (`plan_chunks`), up to `batch_size` of them per
    forward pass (`run_windows`: the result is the same within 1e-5); frames near a window edge
    see no context across it, and a group-norm extractor normalises each window on its own.
    Only the Transformer layers up to max(layers) run; the states equal those of a full pass (a
    pre-LN model's final LayerNorm is applied only to the last layer, as in a full pass).

    Shape: wav (S,) -> (L, T, D)
    """
    chunks = plan_chunks(wav.shape[0], model.cfg.feature_extractor.conv_layers, max_samples)
    if not chunks:
        raise ValueError(f"{wav.shape[0]} samples give no frame")
    windows = [wav[start:end] for start, end, _, _ in chunks]
    pieces = run_windows(model, windows, layers, BatchLimits(batch_size), compute_dtype)
    return torch.cat(pieces, dim=1).float()  # (L, T, D)


def extract_manifest(
    model: Wav2Vec2Model,
    dataset: AudioDataset,
    out_dir: str | os.PathLike,
    layers: Sequence[int],
    *,
    pool: str = "none",
    storage_dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype = torch.float32,
    max_samples: int | None = None,
    batch_size: int = 1,
    max_batch_samples: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    skipped: Sequence[tuple[str, str]] = (),
    meta: dict | None = None,
    progress: bool = True,
) -> ExtractSummary:
    """Extract every item of `dataset` into `out_dir` (layout in the module docstring).

    The model is put in eval mode and runs on its own device. Items run longest first (by the
    manifest's lengths; ties in manifest order), and `index.tsv` lists them in that order.
    Windows (whole items, or the `max_samples` windows of long ones) share a forward pass, at most
    `batch_size` and `max_batch_samples` padded samples per pass, zero-padded with a padding mask
    when the model is `padding_invariant`, else only windows of equal length: every item gets
    the features it gets alone (within 1e-5; bit-exact with batch_size 1). `compute_dtype`
    bfloat16/float16 runs under autocast. Items that fail to decode (`AudioDataset.decode`: also truncated, shorter than
    one frame, NaN samples) or give non-finite values (NaN, float16 overflow) are skipped and listed in `skipped.tsv`,
    after `skipped` (items the caller rejected earlier). `meta` entries are added to `meta.json`.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {sorted(POOLS)}, got {pool!r}")
    if storage_dtype not in STORAGE_DTYPES.values():
        raise ValueError(
            f"storage dtype must be one of {list(STORAGE_DTYPES)}, got {storage_dtype}"
        )
    if compute_dtype not in COMPUTE_DTYPES.values():
        raise ValueError(
            f"compute dtype must be one of {list(COMPUTE_DTYPES)}, got {compute_dtype}"
        )
    limits = BatchLimits(batch_size, max_batch_samples)
    layers = list(layers)
    parse_layers(",".join(map(str, layers)), model.cfg.transformer.num_layers)  # range check
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    start_time = time.perf_counter()
    run = _ManifestRun(model, dataset, out_dir, layers, pool, storage_dtype, shard_bytes, progress)
    run.summary.skipped.extend(skipped)  # the caller's rejections come first in skipped.tsv
    pending: list[_Item] = []
    longest_first = np.argsort(-dataset.num_samples, kind="stable").tolist()
    receptive = frame_geometry(model.cfg.feature_extractor.conv_layers)[0]
    decoded = _decoded(dataset, longest_first, 2 * batch_size + 2, min_samples=receptive)
    for index, wav in decoded:
        item = run.item(index, wav, max_samples)
        if item is None:
            continue
        pending.append(item)
        if _group_is_full(pending, limits):
            run.extract(pending, limits, compute_dtype)
            pending = []
    run.extract(pending, limits, compute_dtype)
    summary = run.finish()
    summary.wall_seconds = time.perf_counter() - start_time
    receptive, stride = frame_geometry(model.cfg.feature_extractor.conv_layers)
    info = {
        "format": "w2vkit-features/1",
        "layers": layers,
        "pool": pool,
        "dtype": dtype_name(storage_dtype),
        "compute_dtype": dtype_name(compute_dtype),
        "batch_size": batch_size,
        "max_batch_samples": max_batch_samples,
        "sample_rate": dataset.sample_rate,
        "frame_stride_samples": stride,
        "receptive_field_samples": receptive,
        "max_samples": max_samples,
        "normalize": dataset.normalize,
        "model_dim": model.cfg.transformer.model_dim,
        "num_items": summary.num_items,
        "num_skipped": len(summary.skipped),
        **(meta or {}),
    }
    write_text(out_dir / "meta.json", json.dumps(info, indent=2) + "\n")
    skipped_lines = [SKIPPED_HEADER] + [f"{p}\t{reason}" for p, reason in summary.skipped]
    write_text(out_dir / "skipped.tsv", "\n".join(skipped_lines) + "\n")
    write_text(out_dir / "index.tsv", "\n".join(run.index_lines) + "\n")
    return summary


@dataclass
class _Item:
    index: int
    """Position in the dataset."""
    relative_path: str
    wav: Tensor
    """(S,) decoded samples."""
    chunks: list[tuple[int, int, int, int]]
    """`plan_chunks` windows."""


def _decoded(
    dataset: AudioDataset, order: list[int], lookahead: int, min_samples: int
) -> Iterator[tuple[int, Tensor | DecodeError]]:
    """`(index, dataset.decode(index))` in `order` (the DecodeError for a file that cannot be
    used), decoded up to `lookahead` items ahead in a background thread: libsndfile releases the
    GIL, so decoding overlaps the forward passes (on a GPU, decoding in the loop would otherwise
    take a large share of the time)."""

    def decode(index: int) -> Tensor | DecodeError:
        try:
            return dataset.decode(index, min_samples=min_samples)  # (S,)
        except DecodeError as err:
            return err

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="w2vkit-decode") as pool:
        queue: deque[tuple[int, Future[Tensor | DecodeError]]] = deque()
        for index in order:
            queue.append((index, pool.submit(decode, index)))
            if len(queue) > lookahead:
                first, future = queue.popleft()
                yield first, future.result()
        for first, future in queue:
            yield first, future.result()


def _group_is_full(items: list[_Item], limits: BatchLimits) -> bool:
    """Enough windows decoded to fill a batch: run them (memory stays at about one batch)."""
    if sum(len(item.chunks) for item in items) >= limits.max_items:
        return True
    total = sum(item.wav.shape[0] for item in items)
    return limits.max_samples is not None and total >= limits.max_samples


class _ManifestRun:
    """The state of one `extract_manifest` run: shard writer, index lines, summary, progress."""

    def __init__(
        self,
        model: Wav2Vec2Model,
        dataset: AudioDataset,
        out_dir: Path,
        layers: list[int],
        pool: str,
        storage_dtype: torch.dtype,
        shard_bytes: int,
        progress: bool,
    ) -> None:
        self.model, self.dataset, self.layers = model, dataset, layers
        self.pool, self.storage_dtype = pool, storage_dtype
        self.layers_text = ",".join(map(str, layers))
        self.writer = ShardWriter(out_dir, shard_bytes, {"layers": self.layers_text, "pool": pool})
        self.summary = ExtractSummary(out_dir, layers, 0, 0, 0.0, 0)
        self.index_lines = [INDEX_HEADER]
        total_seconds = float(dataset.num_samples.sum()) / dataset.sample_rate
        self.bar = tqdm(
            total=total_seconds,
            unit="audio-s",
            unit_scale=True,
            disable=not progress,
            file=sys.stderr,
        )

    def item(self, index: int, wav: Tensor | DecodeError, max_samples: int | None) -> _Item | None:
        """Item `index` (decoded: `wav` (S,), or why it cannot be used) with its windows; None
        (recorded as skipped) if it failed."""
        relative = relative_path(self.dataset, index)
        if isinstance(wav, DecodeError):
            self._skip(index, relative, str(wav))
            return None
        conv_layers = self.model.cfg.feature_extractor.conv_layers
        return _Item(index, relative, wav, plan_chunks(wav.shape[0], conv_layers, max_samples))

    def extract(self, items: list[_Item], limits: BatchLimits, compute_dtype: torch.dtype) -> None:
        """Run the windows of `items` in batches, then store each item in `items` order."""
        windows = [item.wav[start:end] for item in items for start, end, _, _ in item.chunks]
        pieces = iter(run_windows(self.model, windows, self.layers, limits, compute_dtype))
        for item in items:
            item_pieces = list(itertools.islice(pieces, len(item.chunks)))  # (L, t, D) each
            self._store(item, torch.cat(item_pieces, dim=1).float())  # (L, T, D)

    def _store(self, item: _Item, states: Tensor) -> None:
        num_frames = states.shape[1]
        stored = states.mean(dim=1) if self.pool == "mean" else states  # (L, D) | (L, T, D)
        stored = stored.to(device="cpu", dtype=self.storage_dtype).contiguous()
        if not bool(torch.isfinite(stored).all()):  # NaN from the model, or float16 overflow
            reason = f"non-finite features in {dtype_name(self.storage_dtype)}"
            self._skip(item.index, item.relative_path, reason)
            return
        key = f"item_{int(self.dataset.manifest_rows[item.index]):08d}"
        shard = self.writer.add(key, stored)
        self.index_lines.append(
            f"{item.relative_path}\t{shard}\t{key}\t{num_frames}\t{self.layers_text}"
        )
        self.summary.num_items += 1
        self.summary.num_frames += num_frames
        self.summary.audio_seconds += item.wav.shape[0] / self.dataset.sample_rate
        self._advance(item.index)

    def _skip(self, index: int, relative: str, reason: str) -> None:
        self.summary.skipped.append((relative, reason))
        self._advance(index)

    def _advance(self, index: int) -> None:
        # The manifest's length, as in the bar's total: the bar ends at 100% however files decode.
        self.bar.update(float(self.dataset.num_samples[index]) / self.dataset.sample_rate)
        self.bar.set_postfix(skipped=len(self.summary.skipped), refresh=False)

    def finish(self) -> ExtractSummary:
        self.bar.close()
        self.writer.flush()
        self.summary.num_shards = self.writer.num_shards
        return self.summary


def relative_path(dataset: AudioDataset, index: int) -> str:
    path = dataset.path(index)
    try:
        return path.relative_to(dataset.root).as_posix()
    except ValueError:  # an absolute path in the manifest
        return str(path)
