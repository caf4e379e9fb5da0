"""`DataConfig`: where the audio is and how it is batched; the `data` section of a pretraining run.
`ShardStreamConfig`: the streaming fields it shares with fine-tuning's `LabelledDataConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from w2vkit.config import check


@dataclass(kw_only=True)
class ShardStreamConfig:
    """Streaming from tar shards (`w2vkit shard`) instead of a manifest; docs/data.md."""

    shards: str = ""
    """Shard set with <split>/index.json: a folder, a glob of folders, or a file/http(s)/s3/gs URL;
    "" reads data.manifest_dir."""
    shard_prefetch: int = 2
    """Shards each reader fetches ahead of the one it is reading."""
    shard_cache: str = ""
    """Folder keeping fetched remote shards (by sha256) for later epochs; "" keeps none."""
    shuffle_buffer: int = 32
    """Batches each reader draws the next one from at random."""
    shard_retries: int = 4
    """Tries after the first for an unreachable or slow shard, waiting shard_retry_wait * 2**k."""
    shard_retry_wait: float = 1.0
    shard_timeout: float = 120.0
    """Seconds an HTTP shard read may take before it counts as failed (and is retried)."""
    shard_errors: Literal["stop", "skip"] = "stop"
    """After the retries: stop the run naming the shard, or skip its items and count them."""

    def __post_init__(self) -> None:
        check(self.shard_prefetch >= 0, "data.shard_prefetch", "must be >= 0")
        check(self.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1")
        check(self.shard_retries >= 0, "data.shard_retries", "must be >= 0")
        check(self.shard_retry_wait >= 0, "data.shard_retry_wait", "must be >= 0")
        check(self.shard_timeout > 0, "data.shard_timeout", "must be > 0")
        check(self.shard_errors in ("stop", "skip"), "data.shard_errors", "must be stop or skip")


@dataclass(kw_only=True)
class DataConfig(ShardStreamConfig):
    """Where the audio is and how it is batched (fairseq `task` + `dataset`)."""

    manifest_dir: str = ""
    """Folder holding `<train_split>.tsv` and `<valid_split>.tsv` (fairseq `task.data`)."""
    train_split: str = "train"
    valid_split: str = "valid"
    """Validation manifest name; "" (or a missing file) disables validation."""
    sample_rate: int = 16000
    min_samples: int = 32000
    """Utterances shorter than this are skipped when the manifest is read (fairseq min_sample_size)."""
    max_samples: int = 250000
    """Longer utterances are randomly cropped to this length (fairseq max_sample_size)."""
    normalize: bool = False
    """Zero mean, unit variance per utterance; must match the model (True for LARGE LV-60)."""
    pad: bool = False
    """Pad rows to the longest with a padding mask instead of cropping to the shortest (enable_padding)."""
    max_batch_samples: int = 1_400_000
    """Rows x longest row per batch and per process (fairseq max_tokens)."""
    max_batch_size: int | None = None
    """At most this many rows per batch (fairseq batch_size); None: no limit."""
    required_batch_size_multiple: int = 8
    num_workers: int = 6
    """DataLoader worker processes per training process; 0 loads in the main process."""
    labels: list[str] = field(default_factory=list)
    """Frame label files read beside each manifest, `<split>.<name>` (HuBERT: `[km]`)."""
    label_rate: float = 50.0
    """Labels per second in those files (fairseq `label_rate`): 100 for HuBERT iteration 1's MFCC
    k-means (10 ms hop), 50 for labels from a model's 20 ms frames."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.sample_rate > 0, "data.sample_rate", f"must be > 0, got {self.sample_rate}")
        check(self.min_samples >= 0, "data.min_samples", f"must be >= 0, got {self.min_samples}")
        check(
            self.max_samples >= max(self.min_samples, 1),
            "data.max_samples",
            f"must be >= data.min_samples ({self.min_samples}) and > 0, got {self.max_samples}",
        )
        check(
            self.max_batch_samples >= self.max_samples,
            "data.max_batch_samples",
            f"must be >= data.max_samples ({self.max_samples}) so that one row fits, got {self.max_batch_samples}",
        )
        check(
            self.max_batch_size is None or self.max_batch_size >= 1,
            "data.max_batch_size",
            f"must be >= 1 or null, got {self.max_batch_size}",
        )
        check(
            self.required_batch_size_multiple >= 1,
            "data.required_batch_size_multiple",
            "must be >= 1",
        )
        check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.label_rate > 0, "data.label_rate", f"must be > 0, got {self.label_rate}")
        check(
            not (self.labels and self.shards),
            "data.labels",
            "frame labels are read beside a manifest (data.manifest_dir); shards do not carry "
            f"{self.labels} yet: train from the manifest",
        )


__all__ = ["DataConfig"]
