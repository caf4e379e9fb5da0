"""w2vkit encoder -> HF transformers `Data2VecAudioModel` directory (export only).

HF's data2vec-audio is wav2vec 2.0's post-LN encoder with a layer-norm conv extractor and
data2vec 2.0's positional encoder (`num_conv_pos_embeddings` convs of `conv_pos_kernel_size`, each
with a LayerNorm and GELU). A w2vkit model maps onto it when it has exactly that: the waveform conv
encoder with `norm_mode: layer_norm`, post-LN blocks and `transformer.pos_conv_depth` > 1 (the
`data2vec2_base` recipe). Anything else is a ConfigError that names the field: the spectrogram
front-end, a group-norm extractor, pre-LN blocks; a single weight-normed positional conv is a
wav2vec 2.0 encoder, which `--hf-class model` writes as `Wav2Vec2Model`.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from w2vkit.config import ConfigError
from w2vkit.interop.hf import hf_config_from_w2vkit, to_hf_state, write_preprocessor
from w2vkit.interop.native import ModelRecord
from w2vkit.model.config import ModelConfig

_POS = "encoder.pos_conv."
_HF_POS = "encoder.pos_conv_embed."


def check_maps(cfg: ModelConfig) -> None:
    """ConfigError naming the first field `Data2VecAudioModel` has no place for."""
    reasons = [
        (
            cfg.feature_extractor.kind == "conv",
            "model.feature_extractor.kind=spectrogram: HF data2vec-audio has only the waveform "
            "conv encoder",
        ),
        (
            cfg.feature_extractor.norm_mode == "layer_norm",
            "model.feature_extractor.norm_mode=group_norm: HF data2vec-audio normalises every "
            "conv layer (layer_norm)",
        ),
        (
            not cfg.transformer.layer_norm_first,
            "model.transformer.layer_norm_first=true: HF data2vec-audio has post-LN blocks only",
        ),
        (
            cfg.transformer.pos_conv_depth > 1,
            "model.transformer.pos_conv_depth=1: a single weight-normed positional conv is "
            "wav2vec 2.0's; write it as Wav2Vec2Model (--hf-class model)",
        ),
    ]
    for ok, reason in reasons:
        if not ok:
            raise ConfigError(f"cannot write Data2VecAudioModel: {reason}")


def hf_data2vec_config(cfg: ModelConfig) -> dict:
    """ModelConfig -> the dict `Data2VecAudioConfig(**d)` takes (config.json)."""
    check_maps(cfg)
    out = hf_config_from_w2vkit(cfg, architecture="Data2VecAudioModel")
    out.update(
        model_type="data2vec-audio",
        num_conv_pos_embeddings=cfg.transformer.pos_conv_depth,
        conv_pos_kernel_size=cfg.transformer.pos_conv_kernel,
        num_conv_pos_embedding_groups=cfg.transformer.pos_conv_groups,
    )
    for name in ("do_stable_layer_norm", "feat_extract_norm", "diversity_loss_weight"):
        out.pop(name, None)
    return out


def to_hf_data2vec_state(cfg: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """w2vkit encoder state dict -> `Data2VecAudioModel` keys."""
    positional = {k: v for k, v in state.items() if k.startswith(_POS)}
    rest = {k: v for k, v in state.items() if not k.startswith(_POS)}
    out = to_hf_state(cfg, rest, heads=False)  # the names wav2vec 2.0 and data2vec-audio share
    for key, value in positional.items():
        out[_HF_POS + key.removeprefix(_POS)] = value.detach().cpu().contiguous().clone()
    return out


def save_hf_data2vec(record: ModelRecord, directory: str | Path) -> None:
    """Write config.json, model.safetensors and preprocessor_config.json for
    `Data2VecAudioModel.from_pretrained` (a fine-tuned record: its encoder)."""
    cfg = record.cfg
    hf = hf_data2vec_config(cfg)
    state = to_hf_data2vec_state(cfg, record.encoder_state())
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    # A layer-norm extractor: normalised input and attention masks, as HF's data2vec-audio.
    write_preprocessor(directory, cfg, record.normalize)


__all__ = ["check_maps", "hf_data2vec_config", "save_hf_data2vec", "to_hf_data2vec_state"]
