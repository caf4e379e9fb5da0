"""HuBERT encoders -> HF transformers `HubertModel` directories (`convert --to hf`).

HF's `HubertModel` is the wav2vec 2.0 encoder under the same parameter names (with the feature
projection's LayerNorm, `feat_proj_layer_norm`), so the encoder maps key for key through the
wav2vec 2.0 tables of `interop.hf`. What cannot map: HuBERT's prediction head (`context_proj`,
fairseq `final_proj`, and `label_embeddings`), since transformers has no HuBERT pretraining
class, and the spectrogram front-end, as for wav2vec 2.0. The head is left out and named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from w2vkit.interop import hf
from w2vkit.interop.native import is_w2vkit_checkpoint
from w2vkit.interop.record import ModelRecord
from w2vkit.interop.safe_load import load_torch_file

WAV2VEC2_ONLY = (
    "adapter_attn_dim",
    "add_adapter",
    "codevector_dim",
    "contrastive_logits_temperature",
    "diversity_loss_weight",
    "feat_quantizer_dropout",
    "num_codevector_groups",
    "num_codevectors_per_group",
    "num_negatives",
    "proj_codevector_dim",
)
"""`Wav2Vec2Config` fields with no `HubertConfig` counterpart (the quantizer and adapters)."""
NOT_EXPORTED = "context_proj, label_embeddings (transformers has no HuBERT pretraining head)"


def is_hubert_source(path: str | Path) -> bool:
    """A w2vkit HuBERT run checkpoint or a fairseq HuBERT checkpoint (HF directories: no)."""
    from w2vkit.interop.fairseq_hubert import is_hubert

    path = Path(path)
    if not path.is_file():
        return False
    payload: Any = load_torch_file(path)
    if is_w2vkit_checkpoint(payload):
        return payload["config"].get("objective") == "hubert"
    return is_hubert(payload)


def hubert_config(pretrained: ModelRecord) -> dict:
    """The `HubertConfig(**d)` dict (config.json) of an encoder."""
    out = hf.hf_config_from_w2vkit(pretrained.cfg, architecture="HubertModel")
    for name in WAV2VEC2_ONLY:
        out.pop(name, None)
    out.update(model_type="hubert", feat_proj_layer_norm=True, conv_pos_batch_norm=False)
    return out


def save_hf_hubert(pretrained: ModelRecord, directory: str | Path) -> str:
    """Write config.json, model.safetensors and preprocessor_config.json for
    `transformers.HubertModel.from_pretrained`; returns what was left out."""
    config = hubert_config(pretrained)
    state = hf.to_hf_state(pretrained.cfg, pretrained.state_dict, heads=False)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    hf.write_preprocessor(directory, pretrained.cfg, pretrained.normalize)
    return NOT_EXPORTED


__all__ = ["NOT_EXPORTED", "hubert_config", "is_hubert_source", "save_hf_hubert"]
