"""`convert --to hf` of a data2vec 2.0 encoder: HF transformers' `Data2VecAudioModel` loads it with no
missing keys and gives the same hidden states (1e-4); what cannot map is named."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from w2vkit import cli
from w2vkit.config import ConfigError, to_dict
from w2vkit.interop import load_model
from w2vkit.interop.hf_data2vec import check_maps
from w2vkit.model.config import ModelConfig, tiny
from w2vkit.model.data2vec2 import Data2Vec2Config, Data2Vec2Model

transformers = pytest.importorskip("transformers")


def _data2vec_config() -> ModelConfig:
    cfg = tiny()
    return replace(
        cfg,
        feature_extractor=replace(cfg.feature_extractor, norm_mode="layer_norm"),
        transformer=replace(cfg.transformer, pos_conv_depth=3, pos_conv_kernel=5),
    )


def test_data2vec_export_loads_in_transformers_with_equal_hidden_states(tmp_path):
    torch.manual_seed(0)
    d2v = Data2Vec2Config(num_clones=2, average_top_k_layers=2, decoder_dim=32, decoder_groups=4)
    model = Data2Vec2Model(_data2vec_config(), d2v)
    with torch.no_grad():  # non-trivial values for every tensor (LayerNorm weights start at 1)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "d2v.pt"  # a checkpoint as training writes it: teacher and decoder included
    torch.save({"model": model.state_dict(), "config": {"model": to_dict(model.cfg)}}, path)
    assert cli.main(["convert", str(path), str(tmp_path / "hf"), "--to", "hf"]) == 0
    hf, info = transformers.Data2VecAudioModel.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    wav = torch.randn(2, 8000)
    ours = load_model(path).eval().extract_features(wav).hidden_states
    with torch.no_grad():
        theirs = hf.eval()(wav, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs) == 3
    for mine, other in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"feature_extractor": {"kind": "spectrogram"}}, "feature_extractor.kind=spectrogram"),
        ({"feature_extractor": {"norm_mode": "group_norm"}}, "norm_mode=group_norm"),
        ({"transformer": {"layer_norm_first": True}}, "layer_norm_first=true"),
        ({"transformer": {"pos_conv_depth": 1}}, "pos_conv_depth=1"),
    ],
)
def test_what_cannot_map_is_named(change, named):
    cfg = _data2vec_config()
    section, values = next(iter(change.items()))
    cfg = replace(cfg, **{section: replace(getattr(cfg, section), **values)})
    with pytest.raises(ConfigError, match=named):
        check_maps(cfg)
