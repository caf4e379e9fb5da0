"""Baseline feature sources on the same audio as a features directory: did pretraining help?

- `logmel`: 80-band log-mel on the model's 20 ms frame grid (`w2vkit.features.logmel`), one "layer".
- `random`: the same architecture at random initialisation (`torch.manual_seed(seed)` before
  building it), the same layers, the same input normalisation.

Both read the audio through the manifest the features were extracted from (`meta.json` records
it, and the checkpoint whose architecture `random` copies) and yield what `probe_data.collect`
takes, for the requested relative paths only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from w2vkit.data.dataset import AudioDataset
from w2vkit.data.manifest import read_manifest
from w2vkit.features.extract import extract_utterance, relative_path
from w2vkit.features.logmel import log_mel
from w2vkit.model.config import ModelConfig
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.probe.data import SourceItem

BASELINES = ("logmel", "random")


def read_meta(features_dir: str | os.PathLike) -> dict:
    path = Path(features_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: baselines need the features' meta.json")
    return json.loads(path.read_text(encoding="utf-8"))


def _audio(
    manifest_path: str | os.PathLike, paths: Iterable[str], normalize: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    """(relative_path, wav (S,)) of the manifest items in `paths`, in manifest order."""
    dataset = AudioDataset(read_manifest(manifest_path), normalize=normalize)
    wanted = set(paths)
    for i in range(len(dataset)):
        relative = relative_path(dataset, i)
        if relative not in wanted:
            continue
        wav = dataset.load(i)
        if wav is None:
            raise ValueError(f"{dataset.path(i)}: cannot decode (it was extracted before)")
        yield relative, wav


def logmel_source(
    manifest_path: str | os.PathLike, paths: Iterable[str], cfg: ModelConfig
) -> Iterator[SourceItem]:
    """(path, [None], (1, T, 80)) per item, T = the model's frame count."""
    conv_layers = cfg.feature_extractor.conv_layers
    for relative, wav in _audio(manifest_path, paths, normalize=False):
        yield relative, [None], log_mel(wav.numpy(), conv_layers)[None]


def random_model_source(
    manifest_path: str | os.PathLike,
    paths: Iterable[str],
    cfg: ModelConfig,
    layers: list[int],
    *,
    normalize: bool,
    seed: int = 0,
    max_samples: int | None = None,
) -> Iterator[SourceItem]:
    """(path, layers, (L, T, D)) of a randomly initialised model of architecture `cfg`, run like
    the extraction (windows of `max_samples`)."""
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG stream is left untouched
        torch.manual_seed(seed)
        model = Wav2Vec2Model(cfg).eval()
    for relative, wav in _audio(manifest_path, paths, normalize=normalize):
        states = extract_utterance(model, wav, layers, max_samples=max_samples)  # (L, T, D)
        yield relative, list(layers), states.numpy()
