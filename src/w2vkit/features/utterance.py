"""`embed_file`: the hidden states of one recording in one call, from Python.

The same path as `w2vkit extract` takes for each manifest item: decode (libsndfile), average the
channels, resample to 16 kHz (soxr), normalise as the model was trained, run in eval mode, in
windows of `max_seconds` for long recordings (`extract_utterance`).
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from w2vkit.data.audio import SAMPLE_RATE, load_audio, normalize, to_mono
from w2vkit.features.extract import extract_utterance, parse_layers
from w2vkit.model.ctc import Wav2Vec2ForCTC
from w2vkit.model.wav2vec2 import Wav2Vec2Model

DEFAULT_MAX_SECONDS = 30.0  # as `w2vkit extract --max-seconds`


def embed_file(
    model: Wav2Vec2Model | Wav2Vec2ForCTC,
    audio: str | os.PathLike | np.ndarray | Tensor,
    sample_rate: int | None = None,
    *,
    layer: int | None = None,
    normalize_input: bool | None = None,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    return_tensors: Literal["np", "pt"] = "np",
) -> np.ndarray | Tensor:
    """Hidden states of one recording. Shape: (T, D), one row per 20 ms frame.

    model: what `w2vkit.load_model` gives; a fine-tuned `Wav2Vec2ForCTC` gives its encoder's states.

    audio: a file soundfile decodes (WAV, FLAC, OGG, MP3, ...), or samples with their
        `sample_rate`: (S,) mono or (S, channels) as `soundfile.read` returns them; float in
        [-1, 1], or signed integer PCM (scaled to [-1, 1) as libsndfile does).
    layer: 0 = encoder input, k = output of Transformer layer k; None = the last layer (after the
        final LayerNorm of a pre-LN model, as HF's `last_hidden_state`).
    normalize_input: per-utterance zero mean / unit variance; None = `model.normalize_input`
        (what the checkpoint records, see `w2vkit.load_model`).
    max_seconds: longer recordings run in frame-aligned windows of this length, whose edge
        frames see no context across the edge; None or 0 = one pass however long (memory grows
        with the square of the length).
    return_tensors: "np" = float32 numpy on the CPU, "pt" = a torch tensor on the model's device.
    """
    if isinstance(model, Wav2Vec2ForCTC):
        model = model.wav2vec2
    wav = _mono_16k(audio, sample_rate)  # (S,)
    if model.normalize_input if normalize_input is None else normalize_input:
        wav = normalize(wav)
    num_layers = model.cfg.transformer.num_layers
    # parse_layers: the range check and message `extract --layers` gives
    layers = parse_layers(str(num_layers if layer is None else layer), num_layers)
    max_samples = round(max_seconds * SAMPLE_RATE) if max_seconds else None
    was_training = model.training
    model.eval()  # no dropout, no LayerDrop
    try:
        states = extract_utterance(model, torch.from_numpy(wav), layers, max_samples=max_samples)
    finally:
        model.train(was_training)
    states = states[0]  # (1, T, D) -> (T, D)
    if return_tensors == "pt":
        return states
    if return_tensors == "np":
        return states.cpu().numpy()
    raise ValueError(f"return_tensors must be 'np' or 'pt', got {return_tensors!r}")


def _mono_16k(
    audio: str | os.PathLike | np.ndarray | Tensor, sample_rate: int | None
) -> np.ndarray:
    """Any accepted input -> mono float32 at 16 kHz. Shape: (S,)."""
    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError(
                f"sample_rate={sample_rate} given with a file: the file's header says its rate"
            )
        return load_audio(audio)
    if sample_rate is None:
        raise ValueError("sample_rate is required with an array of samples")
    wav = audio.detach().cpu().numpy() if isinstance(audio, Tensor) else np.asarray(audio)
    if wav.ndim == 1:
        wav = wav[:, None]  # (S,) -> (S, 1)
    if wav.ndim != 2 or wav.shape[1] > max(wav.shape[0], 1):
        raise ValueError(
            f"audio must be (samples,) or (samples, channels), got shape {wav.shape} "
            "(for (channels, samples) pass its transpose)"
        )
    if np.issubdtype(wav.dtype, np.signedinteger):
        wav = wav / -float(np.iinfo(wav.dtype).min)  # int16 full scale 32768 -> 1.0
    elif not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"audio must hold float or signed integer samples, got {wav.dtype}")
    return to_mono(wav.astype(np.float32), sample_rate)
