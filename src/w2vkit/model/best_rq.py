"""BEST-RQ (Chiu et al., 2022, arXiv:2202.01855) on the wav2vec 2.0 encoder, either front-end.

    wav -> targets: stacked log-mel -> frozen random projection -> nearest unit code   (B, T, N)
    wav -> masked spans of frames: their samples replaced by N(0, noise_std) noise   (B, S)
        -> conv or spectrogram front-end -> Transformer -> linear head          (B, T, N, V)
    loss: cross-entropy against the codes at the masked frames, mean over the N codebooks.

The masking acts on the input audio, so the front-end sees noise where frames are masked (the
paper masks its input features the same way); a frame's samples are its receptive field. The
encoder keeps `Wav2Vec2Model`'s names, so `extract`, `probe` and `finetune --init-from` read its
checkpoint as a wav2vec 2.0 encoder; `rq.` (the frozen quantizer) and `rq_head.` are heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vkit.config import check
from w2vkit.model.config import ModelConfig
from w2vkit.model.feature_extractor import frame_geometry, frame_padding_mask, output_lengths
from w2vkit.model.normalize import instance_norm_over_time
from w2vkit.model.random_projection import RandomProjectionQuantizer, stacked_log_mel
from w2vkit.model.wav2vec2 import Wav2Vec2Model


@dataclass(kw_only=True)
class BestRQConfig:
    """The BEST-RQ section of a run; defaults are the paper's (80 mels, 16-dim codes, 8192)."""

    num_mels: int = 80
    stack: int = 2
    """Log-mel sub-frames per encoder frame (2: 10-ms log-mel on the 20-ms grid)."""
    codebook_dim: int = 16
    codebook_size: int = 8192
    num_codebooks: int = 1
    noise_std: float = 0.1
    """Standard deviation of the noise that replaces the masked frames' samples."""

    def __post_init__(self) -> None:
        for name in ("num_mels", "stack", "codebook_dim", "num_codebooks"):
            check(getattr(self, name) >= 1, f"best_rq.{name}", "must be >= 1")
        check(self.codebook_size >= 2, "best_rq.codebook_size", "must be >= 2")
        check(self.noise_std >= 0, "best_rq.noise_std", "must be >= 0")


@dataclass
class BestRQOutput:
    logits: Tensor
    """(N, C, V) at the N masked frames, row-major (b, t); C codebooks of V entries."""
    targets: Tensor
    """(N, C) long, the codes of the clean audio at the same frames."""
    time_mask: Tensor
    """(B, T) True = masked."""


def masked_samples(
    time_mask: Tensor, conv_layers: list[tuple[int, int, int]], num_samples: int
) -> Tensor:
    """Samples inside the receptive field of a masked frame. (B, T) -> (B, S) bool."""
    receptive, stride = frame_geometry(conv_layers)
    kernel = torch.ones(1, 1, receptive, device=time_mask.device)
    # Frame t covers samples [t * stride, t * stride + receptive): a transposed conv spreads it there.
    covered = F.conv_transpose1d(time_mask[:, None].float(), kernel, stride=stride)[:, 0]
    covered = covered[:, :num_samples] > 0
    return F.pad(covered, (0, num_samples - covered.shape[1]), value=False)


class BestRQModel(Wav2Vec2Model):
    """Encoder (wav2vec 2.0's, without its quantizer and contrastive heads), frozen quantizer, head."""

    def __init__(self, cfg: ModelConfig, rq: BestRQConfig) -> None:
        super().__init__(cfg)
        _, stride = frame_geometry(cfg.feature_extractor.conv_layers)
        check(
            stride % rq.stack == 0,
            "best_rq.stack",
            f"{rq.stack} does not divide the frame stride {stride} of model.feature_extractor",
        )
        check(
            cfg.masking.channel_prob == 0,
            "model.masking.channel_prob",
            "best_rq masks frames of the input audio only; set it to 0",
        )
        self.rq_cfg = rq
        self.quantizer = None
        del self.target_proj, self.context_proj
        # Masked frames are noise at the input, not the mask embedding: it stays (extract reads a
        # wav2vec 2.0 encoder) but frozen, as a parameter without a gradient would stall DDP.
        self.masker.mask_embedding.requires_grad_(False)
        self.rq = RandomProjectionQuantizer(
            rq.stack * rq.num_mels, rq.codebook_dim, rq.codebook_size, rq.num_codebooks
        )
        self.rq_head = nn.Linear(cfg.transformer.model_dim, rq.num_codebooks * rq.codebook_size)

    def targets(self, wav: Tensor, frame_pad: Tensor | None, num_frames: int) -> Tensor:
        """Codes of the clean audio. (B, S) -> (B, T, C) long."""
        rq = self.rq_cfg
        mel = stacked_log_mel(
            wav,
            self.cfg.feature_extractor.conv_layers,
            num_frames,
            num_mels=rq.num_mels,
            stack=rq.stack,
        )  # (B, T, stack * M)
        return self.rq(instance_norm_over_time(mel, frame_pad))

    def forward(  # type: ignore[override]
        self,
        wav: Tensor,
        padding_mask: Tensor | None = None,
        *,
        time_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> BestRQOutput:
        """Shape: wav (B, S) -> logits (N, C, V) and targets (N, C) at the N masked frames.

        `time_mask` (B, T) replaces the sampled one (tests)."""
        conv_layers = self.cfg.feature_extractor.conv_layers
        batch = wav.shape[0]
        frames = int(output_lengths(torch.tensor(wav.shape[1]), conv_layers))
        frame_pad = None
        if padding_mask is not None:
            frame_pad = frame_padding_mask(padding_mask, conv_layers, frames)
        if time_mask is None:
            time_mask = self.masker.time_mask(batch, frames, frame_pad, generator, wav.device)
            if time_mask is None:
                raise ValueError("masking.time_prob is 0: BEST-RQ needs masked frames")
        else:
            self._check_time_mask(time_mask, batch, frames, frame_pad)
        with torch.no_grad():
            targets = self.targets(wav, frame_pad, frames)  # (B, T, C)
            noise = (
                torch.randn(wav.shape, generator=generator, device=wav.device, dtype=torch.float32)
                * self.rq_cfg.noise_std
            )
            noisy = torch.where(
                masked_samples(time_mask, conv_layers, wav.shape[1]), noise.to(wav.dtype), wav
            )
        context = self.encode(noisy, padding_mask, mask=False, generator=generator).context
        logits = self.rq_head(context[time_mask])  # (N, C * V)
        rq = self.rq_cfg
        return BestRQOutput(
            logits=logits.view(-1, rq.num_codebooks, rq.codebook_size),
            targets=targets[time_mask],
            time_mask=time_mask,
        )


__all__ = ["BestRQConfig", "BestRQModel", "BestRQOutput", "masked_samples"]
