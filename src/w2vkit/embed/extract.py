"""Layer-wise wav2vec 2.0 hidden states for every item of a manifest, stored as safetensors shards.

A features directory holds:
- `features-00000.safetensors`, ...: one tensor per item, `(L, T, D)` frame features or `(L, D)`
  utterance means (`pool="mean"`), L = the stored layers in the order of the `layers` column.
  Shards close at about `shard_bytes`; each stays loadable on its own with
  `safetensors.torch.load_file`.
- `index.tsv`: a header, then `relative_path<TAB>shard<TAB>key<TAB>num_frames<TAB>layers`
  (`layers` comma-separated, e.g. `0,6,12`). It is written last: a directory without it is an
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from w2vkit.data.audio import DecodeError
from w2vkit.data.dataset import AudioDataset
from w2vkit.model.feature_extractor import frame_geometry, output_lengths
from w2vkit.model.wav2vec2 import Wav2Vec2Model

POOLS = frozenset({"none", "mean"})
DTYPES = {"float32": torch.float32, "float16": torch.float16}
INDEX_HEADER = "relative_path\tshard\tkey\tnum_frames\tlayers"
SKIPPED_HEADER = "relative_path\treason"
DEFAULT_SHARD_BYTES = 256 * 2**20


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


@dataclass(frozen=True)
class IndexRow:
    relative_path: str
    shard: str
    key: str
    num_frames: int
    layers: tuple[int, ...]


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


@torch.no_grad()
def extract_utterance(
    model: Wav2Vec2Model, wav: Tensor, layers: Sequence[int], *, max_samples: int | None = None
) -> Tensor:
    """Hidden states of `layers` for one utterance, in fp32 on the model's device.

    Long inputs run in windows of `max_samples` (`plan_chunks`); frames near a window edge then
    see no context across it, and a group-norm extractor normalises each window on its own.
    Only the Transformer layers up to max(layers) run; the states equal those of a full pass
    (a pre-LN model's final LayerNorm is applied only to the last layer, as in a full pass).

    Shape: wav (S,) -> (L, T, D)
    """
    conv_layers = model.cfg.feature_extractor.conv_layers
    chunks = plan_chunks(wav.shape[0], conv_layers, max_samples)
    if not chunks:
        raise ValueError(f"{wav.shape[0]} samples give no frame")
    device = next(model.parameters()).device
    pieces = []
    for sample_start, sample_end, frame_start, frame_end in chunks:
        window = wav[sample_start:sample_end].to(device=device, dtype=torch.float32)[None]  # (1, S)
        states = model.extract_features(window, layer=max(layers)).hidden_states
        piece = torch.stack([states[k][0] for k in layers])  # (L, t, D)
        assert piece.shape[1] == frame_end - frame_start, (piece.shape, frame_start, frame_end)
        pieces.append(piece)
    return torch.cat(pieces, dim=1)  # (L, T, D)


def extract_manifest(
    model: Wav2Vec2Model,
    dataset: AudioDataset,
    out_dir: str | os.PathLike,
    layers: Sequence[int],
    *,
    pool: str = "none",
    dtype: torch.dtype = torch.float32,
    max_samples: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    skipped: Sequence[tuple[str, str]] = (),
    meta: dict | None = None,
    progress: bool = True,
) -> ExtractSummary:
    """Extract every item of `dataset` into `out_dir` (layout in the module docstring).

    The model is put in eval mode and runs on its own device, one utterance at a time (no
    padding, so group-norm models see exactly what they would alone). Items that fail to decode
    (`AudioDataset.decode`: also truncated, shorter than one frame, NaN samples) or give non-finite
    features (NaN, float16 overflow) are skipped and
    listed in `skipped.tsv`, after `skipped` (items the caller rejected earlier). `meta` entries
    are added to `meta.json`.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {sorted(POOLS)}, got {pool!r}")
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype}")
    dtype_name = str(dtype).removeprefix("torch.")
    layers = list(layers)
    parse_layers(",".join(map(str, layers)), model.cfg.transformer.num_layers)  # range check
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    start_time = time.perf_counter()
    receptive, stride = frame_geometry(model.cfg.feature_extractor.conv_layers)
    layers_text = ",".join(map(str, layers))
    writer = _ShardWriter(out_dir, shard_bytes, {"layers": layers_text, "pool": pool})
    summary = ExtractSummary(out_dir, layers, 0, 0, 0.0, 0, skipped=list(skipped))
    index_lines = [INDEX_HEADER]
    bar = tqdm(total=len(dataset), unit="utt", disable=not progress, file=sys.stderr)
    for i in range(len(dataset)):
        relative = _relative_path(dataset, i)
        bar.update(1)
        try:
            wav = dataset.decode(i, min_samples=receptive)  # (S,)
        except DecodeError as err:
            summary.skipped.append((relative, str(err)))
            continue
        states = extract_utterance(model, wav, layers, max_samples=max_samples)  # (L, T, D)
        num_frames = states.shape[1]
        stored = states.mean(dim=1) if pool == "mean" else states  # (L, D) | (L, T, D)
        stored = stored.to(device="cpu", dtype=dtype).contiguous()
        if not bool(torch.isfinite(stored).all()):  # NaN from the model, or float16 overflow
            summary.skipped.append((relative, f"non-finite features in {dtype_name}"))
            continue
        key = f"item_{int(dataset.manifest_rows[i]):08d}"
        shard = writer.add(key, stored)
        index_lines.append(f"{relative}\t{shard}\t{key}\t{num_frames}\t{layers_text}")
        summary.num_items += 1
        summary.num_frames += num_frames
        summary.audio_seconds += wav.shape[0] / dataset.sample_rate
        bar.set_postfix(skipped=len(summary.skipped), refresh=False)
    bar.close()
    writer.flush()
    summary.num_shards = writer.num_shards
    summary.wall_seconds = time.perf_counter() - start_time
    info = {
        "format": "w2vkit-features/1",
        "layers": layers,
        "pool": pool,
        "dtype": dtype_name,
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
    _write_text(out_dir / "meta.json", json.dumps(info, indent=2) + "\n")
    skipped_lines = [SKIPPED_HEADER] + [f"{p}\t{reason}" for p, reason in summary.skipped]
    _write_text(out_dir / "skipped.tsv", "\n".join(skipped_lines) + "\n")
    _write_text(out_dir / "index.tsv", "\n".join(index_lines) + "\n")
    return summary


class _ShardWriter:
    """Collects tensors and writes a shard each time about `shard_bytes` have accumulated."""

    def __init__(self, out_dir: Path, shard_bytes: int, metadata: dict[str, str]) -> None:
        if shard_bytes < 1:
            raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
        self.out_dir = out_dir
        self.shard_bytes = shard_bytes
        self.metadata = metadata
        self.num_shards = 0
        self.pending: dict[str, Tensor] = {}
        self.pending_bytes = 0

    @property
    def current_name(self) -> str:
        return f"features-{self.num_shards:05d}.safetensors"

    def add(self, key: str, tensor: Tensor) -> str:
        """Queue `tensor`; returns the shard file name it will be written to."""
        name = self.current_name
        self.pending[key] = tensor
        self.pending_bytes += tensor.numel() * tensor.element_size()
        if self.pending_bytes >= self.shard_bytes:
            self.flush()
        return name

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.out_dir / self.current_name
        tmp = path.with_name(path.name + ".tmp")
        save_file(self.pending, str(tmp), metadata=self.metadata)
        os.replace(tmp, path)
        self.num_shards += 1
        self.pending, self.pending_bytes = {}, 0


def _relative_path(dataset: AudioDataset, index: int) -> str:
    path = dataset.path(index)
    try:
        return path.relative_to(dataset.root).as_posix()
    except ValueError:  # an absolute path in the manifest
        return str(path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
    os.replace(tmp, path)


def read_index(out_dir: str | os.PathLike) -> list[IndexRow]:
    """The rows of `out_dir/index.tsv`; errors name the file and line."""
    path = Path(out_dir) / "index.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: not a features directory (or `w2vkit extract` did not finish)"
        )
    lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    if not lines or lines[0] != INDEX_HEADER:
        raise ValueError(f"{path}:1: expected header {INDEX_HEADER!r}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        try:
            if len(fields) != 5:
                raise ValueError
            layers = tuple(int(k) for k in fields[4].split(","))
            rows.append(IndexRow(fields[0], fields[1], fields[2], int(fields[3]), layers))
        except ValueError:
            raise ValueError(
                f"{path}:{number}: expected '{INDEX_HEADER.replace(chr(9), '<TAB>')}', got {line!r}"
            ) from None
    return rows


def iter_features(out_dir: str | os.PathLike) -> Iterator[tuple[IndexRow, Tensor]]:
    """(row, tensor) for every stored item, in index order; one item in memory at a time.

    The tensor is `(L, T, D)`, or `(L, D)` for mean-pooled features, in the stored dtype.
    """
    out_dir = Path(out_dir)
    for shard, rows in itertools.groupby(read_index(out_dir), key=lambda row: row.shard):
        shard_path = out_dir / shard
        if not shard_path.is_file():
            raise FileNotFoundError(f"{shard_path} (listed in {out_dir / 'index.tsv'}) not found")
        with safe_open(str(shard_path), framework="pt") as handle:
            for row in rows:
                yield row, handle.get_tensor(row.key)


def load_features(out_dir: str | os.PathLike, layer: int | None = None) -> dict[str, Tensor]:
    """{relative_path: tensor} for all items: `(L, T, D)` / `(L, D)`, or one layer's `(T, D)` /
    `(D,)` when `layer` is given (a layer id, as in the `layers` column)."""
    features = {}
    for row, tensor in iter_features(out_dir):
        if layer is not None:
            if layer not in row.layers:
                raise ValueError(f"layer {layer} not stored for {row.relative_path}: {row.layers}")
            tensor = tensor[row.layers.index(layer)]
        features[row.relative_path] = tensor
    return features
