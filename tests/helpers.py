"""Helpers shared by several test modules (test modules never import each other).

Import as `from helpers import ...` (pytest puts tests/ on sys.path; `audiogen` writes test audio).

- `TINY_YAML`, `make_manifest`: the tiny pretraining config and a manifest of generated tones.
- `ToyModel`, `toy_step`, `toy_config`, `toy_state`, `toy_train`: the real training loop around a toy
  per-frame regression whose summed loss splits exactly over rows, ranks and micro-batches.
- `tiny_model`, `wav`, `right_padding`: a seeded tiny `Wav2Vec2Model`, seeded noise audio, and a
  (B, T) right-padding mask.
"""

from __future__ import annotations

import sys
from pathlib import Path

import audiogen
import numpy as np
import soundfile as sf
import torch
from safetensors.torch import save_file
from torch import nn

from w2vkit import cli
from w2vkit.config import to_dict
from w2vkit.data.collate import Batch
from w2vkit.data.loader import build_loaders
from w2vkit.data.manifest import Manifest, write_manifest
from w2vkit.data.vocab import letters_from_words
from w2vkit.features.store import INDEX_HEADER
from w2vkit.model.config import ModelConfig, tiny
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.config import PretrainConfig
from w2vkit.pretrain.registry import build_config
from w2vkit.pretrain.schedule import PolynomialDecaySchedule
from w2vkit.train import checkpoint, dist
from w2vkit.train.config import load_layers
from w2vkit.train.loop import train
from w2vkit.train.metrics import RunLogger
from w2vkit.train.optim import build_optimizer
from w2vkit.train.state import Objective, StepOutput, TrainState
from w2vkit.train.update import run_update

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = str(ROOT / "configs" / "pretrain" / "tiny.yaml")


def make_manifest(directory: Path, num_files: int = 12, valid_percent: float = 0.25) -> Path:
    """Tones of 0.6-2.0 s and their train/valid manifests; returns the manifest folder."""
    audiogen.make_corpus(directory / "audio", num_files, (0.6, 2.0), 16_000, seed=0)
    dest = directory / "manifest"
    assert (
        cli.main(
            [
                "manifest",
                str(directory / "audio"),
                "--dest",
                str(dest),
                "--valid-percent",
                str(valid_percent),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    return dest


class ToyModel(nn.Module):
    """Per-frame regression on raw audio: its summed loss splits exactly over rows, ranks, micro-batches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=400, stride=320)
        self.head = nn.Linear(4, 1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        # (B, 1, S) -> (B, C, T) -> (B, T, C)
        x = torch.tanh(self.conv(wav[:, None])).transpose(1, 2)
        return self.head(x).squeeze(-1)  # (B, T)


def toy_step(model, batch, step: int, generator: torch.Generator) -> StepOutput:
    prediction = model(batch.wav)  # (B, T)
    loss = (prediction - 0.3).pow(2).sum()
    return StepOutput(loss=loss, sample_size=prediction.numel(), sums={})


def mean_loss(sums: dict[str, float]) -> dict[str, float]:
    return {"loss": sums["loss"] / sums["sample_size"]}


TOY = Objective(step=toy_step, summarize=mean_loss)


def update(state: TrainState, micro, objective: Objective, cfg: PretrainConfig, **kwargs):
    """`run_update` with the pretraining config's train section and clip norm."""
    return run_update(
        state,
        micro,
        objective,
        cfg=cfg.train,
        clip_norm=cfg.optim.clip_norm,
        device=torch.device("cpu"),
        **kwargs,
    )


def toy_config(*overrides: str) -> PretrainConfig:
    return build_config(
        load_layers(TINY_YAML, ["optim.warmup_steps=0", "optim.lr=0.01", *overrides])
    )


def toy_state(cfg: PretrainConfig, sampler=None, model: nn.Module | None = None) -> TrainState:
    torch.manual_seed(0)
    model = model if model is not None else ToyModel()
    optimizer = build_optimizer(model, cfg.optim)
    return TrainState(
        model=model,
        optimizer=optimizer,
        schedule=PolynomialDecaySchedule(optimizer, cfg.optim, cfg.total_steps or sys.maxsize),
        scaler=None,
        generator=torch.Generator(),
        sampler=sampler,
    )


def toy_train(
    manifest: Path, out_dir: Path, *overrides: str, objective: Objective = TOY, validate=False
) -> tuple[TrainState, str]:
    """The real loop, data pipeline and DDP wrapping (under torchrun) around the toy model."""
    cfg = toy_config(
        f"data.manifest_dir={manifest}",
        f"train.out_dir={out_dir}",
        "data.min_samples=4000",
        "data.max_samples=16000",
        "data.max_batch_samples=48000",
        "train.validate_interval_steps=0",
        *overrides,
    )
    loaders = build_loaders(cfg.data, cfg.train.seed, dist.rank(), dist.world_size())
    state = toy_state(cfg, loaders["train"].sampler)
    state.model = dist.wrap_model(state.model, torch.device("cpu"), find_unused_parameters=False)
    if (out_dir / checkpoint.LAST).is_file():
        checkpoint.restore(state, checkpoint.load(out_dir / checkpoint.LAST))
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = RunLogger(
        out_dir,
        total_steps=cfg.train.max_steps,
        start_step=state.step,
        tensorboard=False,
        progress_bar=False,
    )
    reason = train(
        state,
        objective,
        cfg=cfg.train,
        clip_norm=cfg.optim.clip_norm,
        train_loader=loaders["train"],
        valid_loader=loaders.get("valid") if validate else None,
        device=torch.device("cpu"),
        out_dir=out_dir,
        config_dict={},
        logger=logger,
    )
    return state, reason


def tiny_model(cfg: ModelConfig | None = None, seed: int = 0) -> Wav2Vec2Model:
    """A `Wav2Vec2Model` of `cfg` (default: the tiny preset) with weights from `seed`, train mode."""
    torch.manual_seed(seed)
    return Wav2Vec2Model(cfg or tiny())


def wav(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    """Standard normal noise from `seed`. Shape: (batch, samples) float32."""
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def right_padding(lengths: list[int], num_frames: int) -> torch.Tensor:
    """(B, T) bool, True = padded: row b has `lengths[b]` valid frames, then padding."""
    return torch.arange(num_frames)[None, :] >= torch.tensor(lengths)[:, None]


def random_rows(num_rows: int, num_samples: int, seed: int) -> Batch:
    wav = torch.randn(num_rows, num_samples, generator=torch.Generator().manual_seed(seed))
    return Batch(wav=wav, padding_mask=None, indices=torch.arange(seed * 10, seed * 10 + num_rows))


class TemperatureRecorder(Wav2Vec2Model):
    """The tiny model, remembering the Gumbel temperature of every forward."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.temperatures: list[float] = []

    def forward(self, *args, temperature: float, **kwargs):
        self.temperatures.append(temperature)
        return super().forward(*args, temperature=temperature, **kwargs)


VOICES = [f"v{i}" for i in range(8)]


def write_features(directory: Path, items: dict[str, np.ndarray], layers=(0, 4)) -> None:
    """A features directory by hand (independent of the extractor): {path: (L, T, D) | (L, D)}."""
    directory.mkdir(parents=True)
    tensors = {f"k{i}": torch.tensor(x, dtype=torch.float32) for i, x in enumerate(items.values())}
    save_file(tensors, str(directory / "features-00000.safetensors"))
    layer_text = ",".join(map(str, layers))
    rows = [
        f"{p}\tfeatures-00000.safetensors\tk{i}\t{x.shape[1] if x.ndim == 3 else 10}\t{layer_text}"
        for i, (p, x) in enumerate(items.items())
    ]
    (directory / "index.tsv").write_text("\n".join([INDEX_HEADER, *rows]) + "\n")


def save_random_tiny(path: Path, seed: int = 1) -> Wav2Vec2Model:
    """A randomly initialised tiny model saved as a w2vkit checkpoint."""
    torch.manual_seed(seed)
    model = Wav2Vec2Model.from_preset("tiny")
    torch.save({"model": model.state_dict(), "config": {"model": to_dict(model.cfg)}}, path)
    return model


# Letter-labelled tone corpora for fine-tuning tests (fairseq's .tsv/.ltr/.wrd layout).
LETTERS = "ABCDE"

WORDS = ["BAD", "CAB", "DEAD", "BEAD", "ACE", "BED", "DAB", "CEDE"]

LETTER_SEC = 0.08  # 4 frames per letter

GAP_SEC = 0.06  # silence between words


def letter_wav(text: str, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """Each letter a tone (A 300 Hz ... E 1500 Hz), words separated by silence, a little noise."""
    pieces = [np.zeros(int(GAP_SEC * sample_rate), np.float32)]
    for word in text.split():
        for letter in word:
            t = np.arange(int(LETTER_SEC * sample_rate)) / sample_rate
            freq = 300.0 * (1 + LETTERS.index(letter)) * rng.uniform(0.97, 1.03)
            pieces.append((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32))
        pieces.append(np.zeros(int(GAP_SEC * sample_rate), np.float32))
    wav = np.concatenate(pieces)
    return wav + 0.01 * rng.standard_normal(len(wav)).astype(np.float32)


def make_letter_corpus(directory: Path, splits: dict[str, int], seed: int = 0) -> Path:
    """Write <split>.tsv/.ltr/.wrd and dict.ltr.txt for `splits` ({name: utterances})."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split, num in splits.items():
        paths, frames, words = [], [], []
        for i in range(num):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
            wav = letter_wav(text, rng)
            path = f"audio/{split}/{i:03d}.wav"
            (directory / path).parent.mkdir(parents=True, exist_ok=True)
            sf.write(directory / path, wav, 16000, subtype="PCM_16")
            paths.append(path)
            frames.append(len(wav))
            words.append(text)
        write_manifest(directory / f"{split}.tsv", Manifest(directory, paths, np.array(frames)))
        ltr = [letters_from_words(w) for w in words]
        (directory / f"{split}.ltr").write_text("".join(f"{line}\n" for line in ltr))
        (directory / f"{split}.wrd").write_text("".join(f"{w}\n" for w in words))
        for line in ltr:
            for symbol in line.split():
                counts[symbol] = counts.get(symbol, 0) + 1
    order = sorted(counts, key=lambda s: (-counts[s], s))  # fairseq: by descending count
    (directory / "dict.ltr.txt").write_text("".join(f"{s} {counts[s]}\n" for s in order))
    return directory
