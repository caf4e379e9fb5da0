"""HF `Wav2Vec2ForCTC` export and import: logits equal HF's, processor files load, round trip."""

from __future__ import annotations

import json

import pytest
import torch

from w2vkit.config import from_dict
from w2vkit.data.vocab import Vocabulary
from w2vkit.interop import ModelRecord, build, hf_ctc
from w2vkit.model.config import ModelConfig, tiny
from w2vkit.model.ctc import Wav2Vec2ForCTC

transformers = pytest.importorskip("transformers")


def _finetuned(**model) -> ModelRecord:
    torch.manual_seed(0)
    cfg = from_dict(ModelConfig, model, base=tiny(), where="model")
    vocab = Vocabulary(["|", "E", "T", "A"])
    net = Wav2Vec2ForCTC(cfg, len(vocab))
    with torch.no_grad():  # a trained-looking head, not xavier noise around zero bias
        net.lm_head.bias.copy_(torch.randn(len(vocab)))
    return ModelRecord(
        cfg=cfg, state_dict=net.state_dict(), normalize=False, vocab=vocab, kind="ctc"
    )


@pytest.mark.parametrize("model", [{}, {"transformer": {"layer_norm_first": True}}])
def test_hf_logits_equal_w2vkit_for_exported_weights(tmp_path, model):
    finetuned = _finetuned(**model)
    hf_ctc.save_hf_ctc(finetuned, tmp_path)
    theirs = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    ours = build(finetuned, "ctc").eval()
    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(wav).logits
        got = ours(wav).logits
    assert got.shape == expected.shape == (2, 49, 8)
    assert float((got - expected).abs().max()) < 1e-4


def test_processor_files_load_and_decode_like_w2vkit(tmp_path):
    finetuned = _finetuned()
    hf_ctc.save_hf_ctc(finetuned, tmp_path)
    processor = transformers.Wav2Vec2Processor.from_pretrained(tmp_path)
    ids = finetuned.vocab.encode("T E A | E A T |")
    # HF's tokenizer decodes CTC ids (pad = blank 0, repeats merged) to words as w2vkit does.
    assert processor.decode([ids[0], ids[0], 0, *ids[1:]]) == finetuned.vocab.text(ids) == "TEA EAT"
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["pad_token_id"], config["vocab_size"]) == (0, 8)


def test_import_round_trip_is_exact(tmp_path):
    finetuned = _finetuned()
    hf_ctc.save_hf_ctc(finetuned, tmp_path)
    back = hf_ctc.load_hf_ctc(tmp_path)
    assert back.vocab == finetuned.vocab and back.cfg == finetuned.cfg
    for key, value in finetuned.state_dict.items():
        assert torch.equal(back.state_dict[key], value), key


def test_import_reorders_an_hf_vocabulary_into_w2vkit_rows(tmp_path):
    # An HF-trained layout: letters first, [UNK] and [PAD] (the blank) last, no <s> or </s>.
    finetuned = _finetuned()
    hf_ctc.save_hf_ctc(finetuned, tmp_path)
    theirs = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    order = [4, 5, 6, 7, 3, 0]  # |, E, T, A, <unk>, blank (rows of the exported model)
    with torch.no_grad():
        head = theirs.lm_head
        theirs.lm_head = torch.nn.Linear(head.in_features, len(order))
        theirs.lm_head.weight.copy_(head.weight[order])
        theirs.lm_head.bias.copy_(head.bias[order])
    theirs.config.vocab_size, theirs.config.pad_token_id = len(order), 5
    out = tmp_path / "hf_layout"
    theirs.save_pretrained(out)
    tokens = {"|": 0, "E": 1, "T": 2, "A": 3, "[UNK]": 4, "[PAD]": 5}
    (out / "vocab.json").write_text(json.dumps(tokens))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"unk_token": "[UNK]", "pad_token": "[PAD]"})
    )
    back = hf_ctc.load_hf_ctc(out)
    assert back.vocab.symbols[4:] == ["|", "E", "T", "A"]
    wav = torch.randn(1, 8000)
    with torch.no_grad():
        expected = theirs(wav).logits[0]  # (T, 6)
        got = build(back, "ctc").eval()(wav).logits[0]  # (T, 8): blank, <pad>, </s>, <unk>, letters
    torch.testing.assert_close(got[:, [4, 5, 6, 7, 3, 0]], expected, atol=1e-4, rtol=0)
    assert (got[:, [1, 2]] < -1e3).all()  # the specials HF lacks are never chosen
