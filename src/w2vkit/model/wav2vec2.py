"""wav2vec 2.0 (Baevski et al., 2020, arXiv:2006.11477): the pretraining graph of Figure 1.

raw audio -> conv features Z -> (mask) -> Transformer context C
          -> quantized targets Q at the masked frames -> contrastive logits against distractors.

Each arrow is a public stage: `frontend` (audio -> Z and the encoder input), `contextualize` (mask,
Transformer -> C), `contrast` (Q, distractors, logits); `encode` = frontend + contextualize, what a
CTC head, a feature reader or another objective runs. `forward` composes them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from w2vkit.model.config import ModelConfig, preset
from w2vkit.model.dropout import Dropout
from w2vkit.model.feature_extractor import ConvFeatureExtractor, frame_padding_mask, scale_grad
from w2vkit.model.host_rng import to_device
from w2vkit.model.masking import MaskDraw, SpanMasker
from w2vkit.model.negatives import contrastive_logits, sample_negatives
from w2vkit.model.quantizer import GumbelVectorQuantizer
from w2vkit.model.spectrogram import SpectrogramFeatureExtractor
from w2vkit.model.transformer import TransformerEncoder


@dataclass
class PretrainOutput:
    logits: Tensor
    """(N, 1+K) fp32, positive in column 0; one row per masked frame in row-major (b, t) order."""
    time_mask: Tensor
    """(B, T) True = masked."""
    frame_padding_mask: Tensor | None
    """(B, T) True = padded."""
    features_penalty: Tensor
    """Mean squared conv feature over unpadded frames (fp32 scalar)."""
    prob_perplexity: Tensor | None
    code_perplexity: Tensor | None
    num_vars: int
    """G * V (0 without a quantizer)."""
    temperature: float
    negative_indices: Tensor
    """(N, K) indices into the N masked targets."""


@dataclass
class FrontendOutput:
    features: Tensor
    """(B, T, C) conv features z after `feature_norm`, unmasked."""
    encoder_input: Tensor
    """(B, T, D) the features projected to the model width, after input dropout."""
    padding_mask: Tensor | None
    """(B, T) True = padded."""
    features_penalty: Tensor
    """Mean squared conv feature over unpadded frames (fp32 scalar)."""


@dataclass
class EncoderOutput:
    hidden_states: list[Tensor]
    """[encoder input (masked), output of layer 1, ...], each (B, T, D)."""
    frontend: FrontendOutput
    time_mask: Tensor | None
    """(B, T) True = masked; None when nothing was masked in time."""
    masks: MaskDraw | None = None
    """The masks as drawn (on the host, copied to the device); None without masking."""

    @property
    def context(self) -> Tensor:
        """(B, T, D) the last layer's output: the context c of Figure 1."""
        return self.hidden_states[-1]

    @property
    def padding_mask(self) -> Tensor | None:
        return self.frontend.padding_mask


@dataclass
class FeatureOutput:
    hidden_states: list[Tensor]
    """[encoder input, output of layer 1, ...], each (B, T, D)."""
    features: Tensor
    """(B, T, C) conv features after `feature_norm`."""
    padding_mask: Tensor | None
    """(B, T) True = padded."""

    @property
    def context(self) -> Tensor:
        return self.hidden_states[-1]


class Wav2Vec2Model(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Per-utterance input normalisation this model expects; HF's default, until a loaded
        # checkpoint says what it was trained with (`w2vkit.load_model`).
        self.normalize_input = cfg.feature_extractor.norm_mode == "layer_norm"
        conv_dim, model_dim = cfg.conv_dim, cfg.transformer.model_dim
        self.feature_extractor: nn.Module
        if cfg.feature_extractor.kind == "spectrogram":
            self.feature_extractor = SpectrogramFeatureExtractor(cfg.feature_extractor)
        else:
            self.feature_extractor = ConvFeatureExtractor(
                cfg.feature_extractor, checkpointing=cfg.transformer.activation_checkpointing
            )
        self.feature_norm = nn.LayerNorm(conv_dim)
        self.feature_projection = nn.Linear(conv_dim, model_dim) if conv_dim != model_dim else None
        self.input_dropout = Dropout(cfg.input_dropout_prob)
        self.features_dropout = Dropout(cfg.features_dropout_prob)
        self.masker = SpanMasker(cfg.masking, model_dim)
        self.encoder = TransformerEncoder(cfg.transformer)
        q = cfg.quantizer
        self.quantizer: GumbelVectorQuantizer | None
        if q.quantize_targets:
            self.quantizer = GumbelVectorQuantizer(
                conv_dim, q.num_groups, q.num_entries, cfg.code_dim
            )
            self.target_proj = nn.Linear(cfg.code_dim, cfg.final_dim)
        else:
            self.quantizer = None
            self.target_proj = nn.Linear(conv_dim, cfg.final_dim)
        self.context_proj = nn.Linear(model_dim, cfg.final_dim)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Wav2Vec2Model:
        return cls(cfg)

    @classmethod
    def from_preset(cls, name: str) -> Wav2Vec2Model:
        """`tiny`, `base` (fairseq LibriSpeech BASE), `large` (LV-60 LARGE) or `large_paper`."""
        return cls(preset(name))

    def forward(
        self,
        wav: Tensor,
        padding_mask: Tensor | None = None,
        *,
        temperature: float,
        time_mask: Tensor | None = None,
        negative_indices: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        """Shape: wav (B, S), padding_mask (B, S) -> logits (N, 1+K) over the N masked frames.

        `time_mask` (B, T) and `negative_indices` (N, K) replace the sampled ones (parity tests).
        """
        # 1. Conv features z and the penalty on their scale.
        front = self.frontend(wav, padding_mask)
        # 2. The quantizer sees the unmasked features (dropped out before the masks are drawn).
        unmasked = self.features_dropout(front.features)  # (B, T, C)
        # 3. Masked encoder input -> Transformer context c.
        encoded = self.contextualize(front, mask=True, generator=generator, time_mask=time_mask)
        # 4-5. Quantized targets at the masked frames, distractors, logits.
        return self.contrast(
            encoded,
            unmasked,
            temperature=temperature,
            negative_indices=negative_indices,
            generator=generator,
        )

    def encode(
        self,
        wav: Tensor,
        padding_mask: Tensor | None = None,
        *,
        mask: bool,
        generator: torch.Generator | None = None,
        time_mask: Tensor | None = None,
        num_layers: int | None = None,
    ) -> EncoderOutput:
        """Raw audio -> context: `frontend` then `contextualize` (what a CTC head or a feature
        reader runs). Shape: wav (B, S) -> hidden states (B, T, D)."""
        return self.contextualize(
            self.frontend(wav, padding_mask),
            mask=mask,
            generator=generator,
            time_mask=time_mask,
            num_layers=num_layers,
        )

    def frontend(
        self, wav: Tensor, padding_mask: Tensor | None = None, *, num_frames: int | None = None
    ) -> FrontendOutput:
        """Raw audio -> conv features z (layer-normed) and the encoder input (projected, dropped
        out). Shape: wav (B, S), padding_mask (B, S) -> (B, T, C) and (B, T, D). `num_frames`
        keeps the first conv frames only, penalty included (HuBERT: the frames with a label)."""
        grad_scale = self.cfg.feature_extractor.grad_scale
        # grad_scale 0 freezes the extractor: skip its autograd graph entirely (fairseq).
        with torch.no_grad() if grad_scale == 0 else contextlib.nullcontext():
            conv = self.feature_extractor(wav)  # (B, C, T)
        if grad_scale > 0:
            conv = scale_grad(conv, grad_scale)
        features = conv.transpose(1, 2)[:, :num_frames]  # (B, C, T) -> (B, T, C)
        frame_pad = None
        if padding_mask is not None:
            frame_pad = frame_padding_mask(
                padding_mask, self.cfg.feature_extractor.conv_layers, features.shape[1]
            )
        squared = features.float().pow(2).mean(-1)  # (B, T)
        if frame_pad is None:
            penalty = squared.mean()
        else:
            # fairseq averages over padded frames too; only real audio counts here
            # (docs/fairseq_differences.md#fd-feature-penalty-padding).
            valid = (~frame_pad).float()
            penalty = (squared * valid).sum() / valid.sum().clamp(min=1.0)
        features = self.feature_norm(features)
        projected = (
            features if self.feature_projection is None else self.feature_projection(features)
        )
        return FrontendOutput(features, self.input_dropout(projected), frame_pad, penalty)

    def contextualize(
        self,
        front: FrontendOutput,
        *,
        mask: bool,
        generator: torch.Generator | None = None,
        time_mask: Tensor | None = None,
        num_layers: int | None = None,
    ) -> EncoderOutput:
        """Span-mask the encoder input in time and channels (when `mask`; `time_mask` (B, T)
        replaces the sampled one) and run the first `num_layers` Transformer layers (all: None)."""
        x, frame_pad = front.encoder_input, front.padding_mask  # (B, T, D)
        masks = None
        if mask:
            batch, frames, dim = x.shape
            if time_mask is not None:
                self._check_time_mask(time_mask, batch, frames, frame_pad)
            # Drawn on the host (model/host_rng.py): the masked counts size what follows, and
            # reading them costs no device sync.
            masks = self.masker.draw(
                (batch, frames, dim), frame_pad, generator, x.device, time_mask
            )
            x = self.masker(x, masks.time_mask, masks.channel_mask)
        elif time_mask is not None:
            raise ValueError("time_mask given with mask=False")
        states = self.encoder(x, frame_pad, num_layers=num_layers, generator=generator)
        return EncoderOutput(states, front, None if masks is None else masks.time_mask, masks)

    def contrast(
        self,
        encoded: EncoderOutput,
        unmasked: Tensor,
        *,
        temperature: float,
        negative_indices: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        """Context at the masked frames against their quantized targets (from `unmasked`, (B, T, C))
        and distractors: the contrastive logits of the paper's loss."""
        masks = encoded.masks
        if (
            masks is None
            or masks.time_mask is None
            or masks.positions is None
            or masks.masked_per_row is None
        ):
            raise ValueError("masking.time_prob is 0: pretraining needs masked frames")
        device = unmasked.device
        # The masked frames by position (a boolean index would read the device for N).
        context = encoded.context.flatten(0, 1).index_select(0, masks.positions)  # (N, D)
        context = self.context_proj(context)  # (N, F)
        unmasked = unmasked.flatten(0, 1).index_select(0, masks.positions)  # (N, C)
        # Targets: quantized unmasked features at the masked frames (fairseq quantizes only these).
        temperature = float(temperature)
        target_ids = extra = extra_ids = None
        prob_ppl = code_ppl = None
        if self.quantizer is not None:
            # (N, C) -> (N, code_dim)
            quantized = self.quantizer(unmasked, temperature, generator)
            targets = self.target_proj(quantized.quantized)  # (N, F)
            target_ids, prob_ppl, code_ppl = (
                quantized.codes,
                quantized.prob_perplexity,
                quantized.code_perplexity,
            )
            if self.cfg.num_codebook_negatives > 0:
                extra_ids, extra = self._codebook_negatives(targets.shape[0], generator, device)
        else:
            targets = self.target_proj(unmasked)  # (N, C) -> (N, F)
        if negative_indices is None:
            negatives = sample_negatives(
                masks.masked_per_row,
                self.cfg.num_negatives,
                self.cfg.num_cross_sample_negatives,
                generator=masks.generator,
                num_masked=masks.num_masked,
                fewest_masked=masks.fewest_masked,
            )  # drawn on the host with the masks
            negative_indices = to_device(negatives, device)
        logits = contrastive_logits(
            context,
            targets,
            negative_indices,
            time_mask=masks.time_mask,
            num_within=self.cfg.num_negatives,
            target_ids=target_ids,
            extra_negatives=extra,
            extra_ids=extra_ids,
            logit_temperature=self.cfg.logit_temperature,
        )
        return PretrainOutput(
            logits=logits,
            time_mask=masks.time_mask,
            frame_padding_mask=encoded.padding_mask,
            features_penalty=encoded.frontend.features_penalty,
            prob_perplexity=prob_ppl,
            code_perplexity=code_ppl,
            num_vars=self.quantizer.num_vars if self.quantizer is not None else 0,
            temperature=temperature,
            negative_indices=negative_indices,
        )

    def extract_features(
        self, wav: Tensor, padding_mask: Tensor | None = None, layer: int | None = None
    ) -> FeatureOutput:
        """Per-layer hidden states for downstream use: no masking, no quantizer.

        `layer=k` runs only the first k Transformer layers. Shape: wav (B, S) -> states (B, T, D).
        """
        encoded = self.encode(wav, padding_mask, mask=False, num_layers=layer)
        return FeatureOutput(
            hidden_states=encoded.hidden_states,
            features=encoded.frontend.features,
            padding_mask=encoded.padding_mask,
        )

    def _codebook_negatives(
        self, num_frames: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        # fairseq `sample_from_codebook`: random entries of each group, projected like the targets.
        q = self.quantizer
        assert q is not None  # codebook negatives need the quantizer (checked by ModelConfig)
        ids = torch.randint(
            q.num_entries,
            (num_frames, self.cfg.num_codebook_negatives, q.num_groups),
            generator=generator,
            device=device,
        )  # (N, Kq, G)
        return ids, self.target_proj(q.codevectors_for(ids))  # (N, Kq, F)

    @staticmethod
    def _check_time_mask(
        time_mask: Tensor, batch: int, frames: int, frame_pad: Tensor | None
    ) -> None:
        if time_mask.shape != (batch, frames) or time_mask.dtype != torch.bool:
            raise ValueError(
                f"time_mask must be a bool tensor of shape ({batch}, {frames}), "
                f"got {time_mask.dtype} {tuple(time_mask.shape)}"
            )
        if frame_pad is not None and bool((time_mask & frame_pad).any()):
            raise ValueError("time_mask masks padded frames")
