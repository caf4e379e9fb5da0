"""Model configs and presets for wav2vec 2.0 (Baevski et al., 2020, arXiv:2006.11477).

Defaults equal fairseq's LibriSpeech BASE pretraining model (`wav2vec2_base_librispeech.yaml`
merged with `Wav2Vec2Config`). `docs/model_config.md` maps every field to fairseq's and HF's names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from w2vkit.config import check

SpanSelection = Literal["static", "uniform", "normal", "poisson"]
BASE_CONV_LAYERS: list[tuple[int, int, int]] = (
    [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
)


@dataclass(kw_only=True)
class FeatureExtractorConfig:
    """Convolutional waveform encoder f: X -> Z (Sec. 2)."""

    conv_layers: list[tuple[int, int, int]] = field(default_factory=lambda: list(BASE_CONV_LAYERS))
    """(channels, kernel, stride) per layer; BASE strides give 320 samples (20 ms) per frame."""
    norm_mode: Literal["group_norm", "layer_norm"] = "group_norm"
    """`group_norm`: GroupNorm on the first layer only (fairseq `default`); `layer_norm`: every layer."""
    conv_bias: bool = False
    grad_scale: float = 0.1
    """Gradient multiplier into the extractor (fairseq `feature_grad_mult`); 0 freezes it."""
    kind: Literal["conv", "spectrogram"] = "conv"
    """`conv`: the waveform encoder; `spectrogram`: log-mel/STFT + 2-D convs on the same frame grid
    (`model/spectrogram.py`; w2vkit only: no HF or fairseq equivalent)."""
    spectrogram: Literal["logmel", "stft"] = "logmel"
    """kind=spectrogram: mel filterbank energies or the STFT power bins, both log-compressed."""
    num_mels: int = 80
    spectrogram_channels: int = 32
    """Channels of the 2-D convolutions of the spectrogram front-end."""
    frequency_embedding_weight: float = 0.2
    """Mix weight of the frequency embedding after the first 2-D conv (Demucs 0.2; 0 disables)."""

    def __post_init__(self) -> None:
        check(
            len(self.conv_layers) > 0, "feature_extractor.conv_layers", "needs at least one layer"
        )
        for i, layer in enumerate(self.conv_layers):
            check(
                len(layer) == 3 and all(int(v) > 0 for v in layer),
                f"feature_extractor.conv_layers[{i}]",
                f"expected (channels, kernel, stride) > 0, got {layer}",
            )
        self.conv_layers = [(int(c), int(k), int(s)) for c, k, s in self.conv_layers]
        check(
            self.grad_scale >= 0,
            "feature_extractor.grad_scale",
            f"must be >= 0, got {self.grad_scale}",
        )
        check(
            self.num_mels >= 8, "feature_extractor.num_mels", f"must be >= 8, got {self.num_mels}"
        )
        check(
            self.spectrogram_channels >= 1,
            "feature_extractor.spectrogram_channels",
            f"must be >= 1, got {self.spectrogram_channels}",
        )


@dataclass(kw_only=True)
class MaskingConfig:
    """Span masking of the encoder input (Sec. 3.1), fairseq `compute_mask_indices` semantics."""

    time_prob: float = 0.65
    """Span-start probability times span length (fairseq `mask_prob`); 0.65 masks ~49% of frames."""
    time_span_frames: int = 10
    time_span_selection: SpanSelection = "static"
    time_span_other: float = 0.0
    """Second parameter of the span-length distribution (fairseq `mask_other`)."""
    time_min_spans: int = 2
    """fairseq hard-codes `min_masks=2` for wav2vec 2.0 pretraining."""
    time_no_overlap: bool = False
    time_min_space_frames: int = 1
    require_same_masks: bool = True
    """Equalise the masked count across the batch (subsamples the longer rows, as fairseq)."""
    mask_dropout_prob: float = 0.0
    channel_prob: float = 0.0
    channel_span_channels: int = 10
    channel_span_selection: SpanSelection = "static"
    channel_span_other: float = 0.0
    channel_no_overlap: bool = False
    channel_min_space_channels: int = 1
    channel_before: bool = False
    """Mask channels before the time mask (masked frames keep their whole embedding), not after."""

    def __post_init__(self) -> None:
        for name in ("time_prob", "channel_prob", "mask_dropout_prob"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, f"masking.{name}", f"must be in [0, 1], got {value}")
        check(self.time_span_frames >= 1, "masking.time_span_frames", "must be >= 1")
        check(self.channel_span_channels >= 1, "masking.channel_span_channels", "must be >= 1")
        check(self.time_min_spans >= 0, "masking.time_min_spans", "must be >= 0")


@dataclass(kw_only=True)
class QuantizerConfig:
    """Gumbel-softmax product quantizer (Sec. 2, Eq. 1)."""

    quantize_targets: bool = True
    """False: targets are the (projected) continuous features, no quantizer, no diversity loss."""
    num_groups: int = 2
    """G codebooks (fairseq `latent_groups`)."""
    num_entries: int = 320
    """V entries per codebook (fairseq `latent_vars`)."""
    dim: int = 0
    """Concatenated code dimension (fairseq `latent_dim`); 0 means `final_dim`."""
    temperature_start: float = 2.0
    temperature_end: float = 0.5
    temperature_decay: float = 0.999995
    """Temperature after `step` optimizer updates = max(start * decay**step, end)."""

    def __post_init__(self) -> None:
        check(self.num_groups >= 1, "quantizer.num_groups", "must be >= 1")
        check(self.num_entries >= 2, "quantizer.num_entries", "must be >= 2")
        check(self.dim >= 0, "quantizer.dim", "must be >= 0 (0 = final_dim)")
        check(
            self.temperature_start >= self.temperature_end > 0,
            "quantizer.temperature_end",
            "need temperature_start >= temperature_end > 0",
        )
        check(0 < self.temperature_decay <= 1, "quantizer.temperature_decay", "must be in (0, 1]")


@dataclass(kw_only=True)
class TransformerConfig:
    """Context network g: Z -> C with a convolutional relative positional embedding."""

    num_layers: int = 12
    model_dim: int = 768
    ffn_dim: int = 3072
    num_heads: int = 12
    layer_norm_first: bool = False
    """False: post-LN (BASE); True: pre-LN with a final LayerNorm (LARGE LV-60)."""
    dropout_prob: float = 0.1
    attention_dropout_prob: float = 0.1
    activation_dropout_prob: float = 0.0
    layerdrop_prob: float = 0.05
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    pos_conv_depth: int = 1
    """1: one weight-normed conv (wav2vec 2.0); more: that many convs of `pos_conv_kernel`, each
    with a LayerNorm and GELU (data2vec 2.0: 5 of kernel 19; HF `Data2VecAudioModel`)."""
    required_seq_len_multiple: int = 2
    """Pad the encoder input of a padded batch to a multiple of this many frames (masked in
    attention); an unpadded batch keeps its length, so attention runs without a mask."""
    activation_checkpointing: bool = False
    """Training keeps only each layer's input and recomputes the layer in the backward: about a
    third more compute for the activation memory of one layer (LARGE on long crops)."""

    def __post_init__(self) -> None:
        check(
            self.model_dim % self.num_heads == 0,
            "transformer.num_heads",
            f"model_dim {self.model_dim} is not divisible by num_heads {self.num_heads}",
        )
        check(
            self.model_dim % self.pos_conv_groups == 0,
            "transformer.pos_conv_groups",
            f"model_dim {self.model_dim} is not divisible by pos_conv_groups {self.pos_conv_groups}",
        )
        for name in (
            "dropout_prob",
            "attention_dropout_prob",
            "activation_dropout_prob",
            "layerdrop_prob",
        ):
            value = getattr(self, name)
            check(0.0 <= value < 1.0, f"transformer.{name}", f"must be in [0, 1), got {value}")
        check(self.pos_conv_depth >= 1, "transformer.pos_conv_depth", "must be >= 1")
        check(
            self.required_seq_len_multiple >= 1,
            "transformer.required_seq_len_multiple",
            "must be >= 1",
        )


@dataclass(kw_only=True)
class ModelConfig:
    """wav2vec 2.0 pretraining model. Defaults are fairseq's LibriSpeech BASE."""

    feature_extractor: FeatureExtractorConfig = field(default_factory=FeatureExtractorConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    input_dropout_prob: float = 0.1
    """Dropout after the feature projection (fairseq `dropout_input`)."""
    features_dropout_prob: float = 0.1
    """Dropout on the unmasked features fed to the quantizer (fairseq `dropout_features`)."""
    final_dim: int = 256
    logit_temperature: float = 0.1
    """kappa in Eq. 3: cosine similarity is divided by it."""
    num_negatives: int = 100
    """K distractors per masked frame from the same utterance's masked frames."""
    num_cross_sample_negatives: int = 0
    num_codebook_negatives: int = 0

    def __post_init__(self) -> None:
        check(self.final_dim > 0, "model.final_dim", "must be > 0")
        check(self.logit_temperature > 0, "model.logit_temperature", "must be > 0")
        for name in ("num_negatives", "num_cross_sample_negatives", "num_codebook_negatives"):
            check(getattr(self, name) >= 0, f"model.{name}", "must be >= 0")
        check(
            self.num_negatives + self.num_cross_sample_negatives > 0,
            "model.num_negatives",
            "need at least one negative (num_negatives or num_cross_sample_negatives)",
        )
        check(
            self.num_codebook_negatives == 0 or self.quantizer.quantize_targets,
            "model.num_codebook_negatives",
            "needs quantizer.quantize_targets",
        )
        vq_dim = self.quantizer.dim or self.final_dim
        check(
            vq_dim % self.quantizer.num_groups == 0,
            "quantizer.dim",
            f"code dim {vq_dim} is not divisible by num_groups {self.quantizer.num_groups}",
        )
        for name in ("input_dropout_prob", "features_dropout_prob"):
            check(0.0 <= getattr(self, name) < 1.0, f"model.{name}", "must be in [0, 1)")

    @property
    def code_dim(self) -> int:
        """Width of a quantized vector (all groups concatenated)."""
        return self.quantizer.dim or self.final_dim

    @property
    def conv_dim(self) -> int:
        return self.feature_extractor.conv_layers[-1][0]


def base() -> ModelConfig:
    """fairseq `wav2vec2_base_librispeech` (~95 M parameters)."""
    return ModelConfig()


def large() -> ModelConfig:
    """fairseq `wav2vec2_large_librivox` (LV-60 "new" checkpoints, ~317 M parameters)."""
    cfg = base()
    return replace(
        cfg,
        feature_extractor=replace(
            cfg.feature_extractor, norm_mode="layer_norm", conv_bias=True, grad_scale=1.0
        ),
        quantizer=replace(cfg.quantizer, temperature_end=0.1),
        transformer=replace(
            cfg.transformer,
            num_layers=24,
            model_dim=1024,
            ffn_dim=4096,
            num_heads=16,
            layer_norm_first=True,
            dropout_prob=0.0,
            attention_dropout_prob=0.0,
            layerdrop_prob=0.0,
        ),
        input_dropout_prob=0.0,
        features_dropout_prob=0.0,
        final_dim=768,
    )


def large_paper() -> ModelConfig:
    """The paper's LARGE CLI recipe (fairseq README 2020-10): group-norm extractor, post-LN."""
    cfg = base()
    return replace(
        cfg,
        feature_extractor=replace(cfg.feature_extractor, grad_scale=0.03),
        quantizer=replace(cfg.quantizer, temperature_end=0.1),
        transformer=replace(
            cfg.transformer,
            num_layers=24,
            model_dim=1024,
            ffn_dim=4096,
            num_heads=16,
            dropout_prob=0.0,
            attention_dropout_prob=0.1,
            layerdrop_prob=0.0,
        ),
        final_dim=768,
    )


def tiny() -> ModelConfig:
    """CPU-sized model for tests and demos: real strides (1 s -> 49 frames), narrow layers."""
    cfg = base()
    return replace(
        cfg,
        feature_extractor=replace(
            cfg.feature_extractor, conv_layers=[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2
        ),
        quantizer=replace(cfg.quantizer, num_entries=16),
        transformer=replace(
            cfg.transformer,
            num_layers=2,
            model_dim=64,
            ffn_dim=128,
            num_heads=4,
            pos_conv_kernel=16,
            pos_conv_groups=4,
            dropout_prob=0.0,
            attention_dropout_prob=0.0,
            layerdrop_prob=0.0,
        ),
        input_dropout_prob=0.0,
        features_dropout_prob=0.0,
        final_dim=32,
        num_negatives=10,
    )


PRESETS = {"tiny": tiny, "base": base, "large": large, "large_paper": large_paper}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
