"""fairseq fine-tuned (`wav2vec_ctc`) checkpoints: encoder, output rows and fine-tuning overrides.

The checkpoint is built from the committed fairseq pretraining fixture the way fairseq's
`Wav2VecEncoder` saves one: pretraining config as `w2v_args`, heads removed, weights under
`w2v_encoder.w2v_model.`, output layer `w2v_encoder.proj` over the dictionary's indices.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from w2vkit.config import ConfigError
from w2vkit.interop import build, read_model
from w2vkit.interop.safe_load import load_torch_file, to_plain
from w2vkit.model.wav2vec2 import Wav2Vec2Model

FIXTURE = Path(__file__).parent / "fixtures" / "fairseq" / "base_omegaconf.pt"
HEADS = ("quantizer.", "project_q.", "final_proj.")


def _fairseq_ctc(path: Path, num_symbols: int) -> torch.Tensor:
    pretrained = load_torch_file(FIXTURE)
    cfg = to_plain(pretrained["cfg"])
    model = {
        f"w2v_encoder.w2v_model.{k}": v
        for k, v in pretrained["model"].items()
        if not k.startswith(HEADS)
    }
    dim = cfg["model"]["encoder_embed_dim"]
    proj = torch.randn(4 + num_symbols, dim + 1, generator=torch.Generator().manual_seed(0))
    model["w2v_encoder.proj.weight"], model["w2v_encoder.proj.bias"] = proj[:, :-1], proj[:, -1]
    outer = {"_name": "wav2vec_ctc", "w2v_args": cfg, "final_dropout": 0.1, "layerdrop": 0.05}
    outer |= {
        "mask_prob": 0.5,
        "mask_channel_prob": 0.25,
        "mask_channel_length": 64,
        "feature_grad_mult": 0.0,
    }
    torch.save({"cfg": {"model": outer, "task": {"normalize": False}}, "model": model}, path)
    return proj


def test_fairseq_ctc_logits_and_overrides(tmp_path):
    (tmp_path / "dict.ltr.txt").write_text("| 5\nE 3\nT 2\n")
    proj = _fairseq_ctc(tmp_path / "ctc.pt", 3)
    finetuned = read_model(tmp_path / "ctc.pt")  # dict.ltr.txt found beside it
    assert finetuned.vocab.symbols[4:] == ["|", "E", "T"] and finetuned.final_dropout_prob == 0.1
    cfg = finetuned.cfg
    assert (cfg.masking.time_prob, cfg.masking.channel_prob, cfg.masking.channel_span_channels) == (
        0.5,
        0.25,
        64,
    )
    assert (cfg.transformer.layerdrop_prob, cfg.feature_extractor.grad_scale) == (0.05, 0.0)
    # Logits = fairseq encoder output (the pretraining fixture through w2vkit, already checked
    # against fairseq) times the proj rows, in the dictionary's order.
    record = read_model(FIXTURE)
    encoder_cfg, state = record.cfg, record.state_dict
    encoder = Wav2Vec2Model(encoder_cfg)
    encoder.load_state_dict(state)
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = encoder.eval().extract_features(wav).context @ proj[:, :-1].T + proj[:, -1]
        got = build(finetuned, "ctc").eval()(wav).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_fairseq_ctc_needs_its_dictionary(tmp_path):
    _fairseq_ctc(tmp_path / "ctc.pt", 3)
    with pytest.raises(ConfigError, match="does not store its dictionary"):
        read_model(tmp_path / "ctc.pt")
    (tmp_path / "other.txt").write_text("| 5\nE 3\n")
    with pytest.raises(ConfigError, match="the output layer has 7 rows, the dictionary 6 symbols"):
        read_model(tmp_path / "ctc.pt", dict_path=tmp_path / "other.txt")
