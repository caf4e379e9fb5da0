"""Crafted HF `Wav2Vec2ForCTC` folders: each damage is one line naming the file and the key, never a
traceback and never a letter silently dropped from the vocabulary (issue 28, item 7)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from w2vkit import cli
from w2vkit.config import ConfigError
from w2vkit.data.vocab import Vocabulary
from w2vkit.interop import ModelRecord, build, hf_ctc, read_model
from w2vkit.interop.safe_load import CheckpointError
from w2vkit.model.config import tiny
from w2vkit.model.ctc import Wav2Vec2ForCTC

VOCAB = Vocabulary(["A", "B", "|"])  # HF rows: <pad> 0, <s> 1, </s> 2, <unk> 3, A 4, B 5, | 6


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_ctc") / "good"
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(tiny(), len(VOCAB))
    record = ModelRecord(tiny(), model.state_dict(), False, vocab=VOCAB, kind="ctc")
    hf_ctc.save_hf_ctc(record, directory)
    return directory


def _edit_json(name: str, change):
    def apply(directory):
        path = directory / name
        content = json.loads(path.read_text())
        change(content)
        path.write_text(json.dumps(content))

    return apply


def _write(name: str, text: str):
    def apply(directory):
        (directory / name).write_text(text)

    return apply


def _set(name: str, key: str, value):
    return _edit_json(name, lambda content: content.__setitem__(key, value))


def _pad_from_tokenizer(value):
    def apply(directory):
        _edit_json("config.json", lambda c: c.pop("pad_token_id"))(directory)
        _set("tokenizer_config.json", "pad_token", value)(directory)

    return apply


CASES = {
    "string id": (_set("vocab.json", "A", "4"), "vocab.json: 'A' has id '4', not an integer"),
    "id past the rows": (
        _set("vocab.json", "A", 7),
        "vocab.json: 'A' has id 7, outside the output layer's 7 rows",
    ),
    "negative id": (
        _set("vocab.json", "A", -1),
        "vocab.json: 'A' has id -1, outside the output layer's 7 rows",
    ),
    "duplicate id": (_set("vocab.json", "A", 5), "vocab.json: id 5 names both"),
    "a row nobody names": (
        _edit_json("vocab.json", lambda c: c.pop("B")),
        "vocab.json: the output layer has 7 rows but no token names row(s) 5",
    ),
    "pad_token_id null": (
        _set("config.json", "pad_token_id", None),
        "config.json: pad_token_id=None is not a row of the output layer (0 to 6)",
    ),
    "pad_token_id text": (
        _set("config.json", "pad_token_id", "abc"),
        "config.json: pad_token_id='abc' is not a row of the output layer (0 to 6)",
    ),
    "pad_token_id past the rows": (
        _set("config.json", "pad_token_id", 99999),
        "config.json: pad_token_id=99999 is not a row of the output layer (0 to 6)",
    ),
    "pad_token a number": (
        _pad_from_tokenizer(5),
        "tokenizer_config.json: pad_token=5 is not a token",
    ),
    "malformed tokenizer_config.json": (
        _write("tokenizer_config.json", "{not json"),
        "tokenizer_config.json: not readable JSON",
    ),
    "malformed preprocessor_config.json": (
        _write("preprocessor_config.json", "[1, 2"),
        "preprocessor_config.json: not readable JSON",
    ),
    "preprocessor_config.json not an object": (
        _write("preprocessor_config.json", "[1, 2]"),
        "preprocessor_config.json: a JSON object expected, found list",
    ),
    "do_normalize text": (
        _set("preprocessor_config.json", "do_normalize", "yes"),
        "preprocessor_config.json: do_normalize='yes' is not true or false",
    ),
    "malformed vocab.json": (_write("vocab.json", '{"A": 4,'), "vocab.json: not readable JSON"),
    "vocab.json a list": (
        _write("vocab.json", '["A"]'),
        "vocab.json: a JSON object expected, found list",
    ),
    "zero hidden_size": (
        _set("config.json", "hidden_size", 0),
        "config.json: hidden_size=0 must be at least 1",
    ),
    "negative attention heads": (
        _set("config.json", "num_attention_heads", -4),
        "config.json: num_attention_heads=-4 must be at least 1",
    ),
    "zero vocab_size": (
        _set("config.json", "vocab_size", 0),
        "config.json: vocab_size=0 must be at least 1",
    ),
    "zero conv channels": (
        _edit_json("config.json", lambda c: c["conv_dim"].__setitem__(0, 0)),
        "config.json: conv_dim[0]=0 must be at least 1",
    ),
    "final_dropout text": (
        _set("config.json", "final_dropout", "0.1"),
        "config.json: final_dropout='0.1' is not a number",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_crafted_folder_is_one_line_naming_file_and_key(good, tmp_path, case):
    damage, message = CASES[case]
    directory = tmp_path / "hf"
    shutil.copytree(good, directory)
    damage(directory)
    with pytest.raises((CheckpointError, ConfigError)) as raised:
        read_model(directory)
    text = str(raised.value)
    assert "\n" not in text
    assert text.startswith(str(directory))
    assert re.search(re.escape(message), text), text


def test_crafted_folder_through_the_cli_is_exit_2_and_one_line(good, tmp_path, capsys):
    directory = tmp_path / "hf"
    shutil.copytree(good, directory)
    _set("vocab.json", "A", 5)(directory)
    wav = tmp_path / "x.wav"
    wav.write_bytes(b"")
    assert cli.main(["transcribe", str(directory), str(wav)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "vocab.json: id 5 names both" in err


def test_added_token_dict_as_pad_token_is_read_as_its_content(good, tmp_path):
    directory = tmp_path / "hf"
    shutil.copytree(good, directory)
    _pad_from_tokenizer({"content": "<pad>", "lstrip": False, "__type": "AddedToken"})(directory)
    wav = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = build(read_model(good), "ctc").eval()(wav).logits
        got = build(read_model(directory), "ctc").eval()(wav).logits
    assert read_model(directory).vocab == VOCAB
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
