"""`w2vkit convert --to hf` on a HuBERT checkpoint writes a transformers `HubertModel` directory:
no missing or unexpected keys, the same hidden states, and the head it cannot map named."""

from __future__ import annotations

import pytest
import torch
from transformers import HubertModel as HFHubert

from w2vkit import cli
from w2vkit.config import to_dict
from w2vkit.model.config import tiny
from w2vkit.pretrain.hubert.config import HubertConfig
from w2vkit.pretrain.hubert.model import HubertModel


@pytest.mark.parametrize("pre_ln", [False, True], ids=["post_ln", "pre_ln"])
def test_a_hubert_checkpoint_exports_to_hf_hubert_model(pre_ln, tmp_path, capsys):
    cfg = tiny()
    cfg.transformer.layer_norm_first = pre_ln
    torch.manual_seed(0)
    model = HubertModel(cfg, HubertConfig(num_classes=[12]), label_rate=50).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped key would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    payload = {
        "model": model.state_dict(),
        "config": {"model": to_dict(cfg), "objective": "hubert"},
    }
    torch.save(payload, tmp_path / "hubert.pt")
    assert (
        cli.main(["convert", str(tmp_path / "hubert.pt"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    )
    assert "not exported: context_proj, label_embeddings" in capsys.readouterr().out

    theirs, info = HFHubert.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.extract_features(wav).hidden_states
        out = theirs.eval()(wav, output_hidden_states=True)
    # HF's hidden_states[-1] is taken before a pre-LN model's final LayerNorm; last_hidden_state after.
    expected = list(out.hidden_states[:-1]) + [out.last_hidden_state]
    assert len(ours) == len(expected) == cfg.transformer.num_layers + 1
    for layer, (a, b) in enumerate(zip(ours, expected, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"layer {layer}")
