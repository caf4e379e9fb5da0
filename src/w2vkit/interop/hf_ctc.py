"""HF transformers `Wav2Vec2ForCTC` directories (with their tokenizer) <-> w2vkit, both ways.

w2vkit keeps fairseq's index layout (0 blank, 1 <pad>, 2 </s>, 3 <unk>, then the letters). HF's
conversion of fairseq models keeps the rows and names index 0 "<pad>" (HF's CTC blank is its pad
token) and index 1 "<s>"; exported vocab.json files use these names. Reading re-orders the output
rows into w2vkit's layout; every id, size and file is checked first, so that a crafted folder is
one line naming the file and key, never a traceback or a letter silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from w2vkit.config import ConfigError
from w2vkit.data.vocab import BLANK, WORD_SEPARATOR, Vocabulary
from w2vkit.interop.hf import (
    config_from_hf,
    from_hf_state,
    hf_config_from_w2vkit,
    read_hf_weights,
    to_hf_state,
    write_preprocessor,
)
from w2vkit.interop.record import ModelRecord
from w2vkit.interop.safe_load import CheckpointError

HF_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
_FILLER_BIAS = -1e4  # a special the HF model lacks gets a row no frame ever picks


def save_hf_ctc(record: ModelRecord, directory: str | Path) -> None:
    """Write a `Wav2Vec2ForCTC` + `Wav2Vec2Processor` directory (weights, config, tokenizer)."""
    cfg, vocab = record.cfg, record.vocab
    if record.kind != "ctc" or vocab is None:
        raise ConfigError(
            "the model is not fine-tuned: it has no output layer or vocabulary to write as "
            "Wav2Vec2ForCTC; write a Wav2Vec2Model directory instead (--hf-class model)"
        )
    hf = hf_config_from_w2vkit(cfg, architecture="Wav2Vec2ForCTC")
    hf |= {
        "vocab_size": len(vocab),
        "pad_token_id": BLANK,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "final_dropout": record.final_dropout_prob,
        "ctc_loss_reduction": "sum",
        "ctc_zero_infinity": True,
    }
    state = record.state_dict
    encoder = {
        k.removeprefix("wav2vec2."): v for k, v in state.items() if k.startswith("wav2vec2.")
    }
    out = {f"wav2vec2.{k}": v for k, v in to_hf_state(cfg, encoder, heads=False).items()}
    out |= {
        k: state[k].detach().cpu().contiguous().clone() for k in ("lm_head.weight", "lm_head.bias")
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    save_file(out, str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_preprocessor(directory, cfg, record.normalize)
    names = list(HF_SPECIALS) + vocab.symbols[len(HF_SPECIALS) :]
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    files = {
        "vocab.json": {name: i for i, name in enumerate(names)},
        "special_tokens_map.json": specials,
        "tokenizer_config.json": specials
        | {
            "tokenizer_class": "Wav2Vec2CTCTokenizer",
            "word_delimiter_token": WORD_SEPARATOR,
            "do_lower_case": False,
            "processor_class": "Wav2Vec2Processor",
        },
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")


def load_hf_ctc(directory: str | Path) -> ModelRecord:
    """An HF `Wav2Vec2ForCTC` directory -> a CTC `ModelRecord`, rows in w2vkit's layout."""
    directory = Path(directory)
    config_path = directory / "config.json"
    hf = read_json(config_path)
    if "Wav2Vec2ForCTC" not in (hf.get("architectures") or []):
        raise ConfigError(
            f"{config_path}: architectures={hf.get('architectures')}, not Wav2Vec2ForCTC"
        )
    tokens = _read_vocab(directory / "vocab.json")
    cfg = config_from_hf(hf, source=str(config_path))
    weights = read_hf_weights(directory)
    weight, bias = _output_layer(weights, cfg.transformer.model_dim, source=str(directory))
    encoder = from_hf_state(cfg, weights, source=str(directory))
    rows = len(bias)
    by_index = _check_ids(tokens, rows, source=directory / "vocab.json")
    tokenizer = directory / "tokenizer_config.json"
    named = read_json(tokenizer) if tokenizer.is_file() else {}
    pad_id = _pad_id(hf, tokens, named, rows, config_path, tokenizer)
    # w2vkit rows 0-3: blank (HF pad), <pad> (HF bos), </s>, <unk>; then the other tokens in order.
    special_ids = [pad_id] + [
        tokens.get(_token_name(named, key, default, tokenizer))
        for key, default in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))
    ]
    rest = [i for i in sorted(by_index) if i not in special_ids]
    filler = (torch.zeros_like(weight[0]), torch.tensor(_FILLER_BIAS))
    rows_out = [(weight[i], bias[i]) if i is not None else filler for i in special_ids + rest]
    try:
        vocab = Vocabulary([by_index[i] for i in rest])
    except ConfigError as err:
        raise ConfigError(f"{directory / 'vocab.json'}: {err}") from err
    state = {f"wav2vec2.{k}": v for k, v in encoder.items()}
    state["lm_head.weight"] = torch.stack([w for w, _ in rows_out])
    state["lm_head.bias"] = torch.stack([b.to(bias.dtype) for _, b in rows_out])
    pre = directory / "preprocessor_config.json"
    normalize = read_json(pre).get("do_normalize", False) if pre.is_file() else False
    if not isinstance(normalize, bool):
        raise ConfigError(f"{pre}: do_normalize={normalize!r:.40} is not true or false")
    final_dropout = hf.get("final_dropout", 0.0)
    if isinstance(final_dropout, bool) or not isinstance(final_dropout, (int, float)):
        raise ConfigError(f"{config_path}: final_dropout={final_dropout!r:.40} is not a number")
    if not 0 <= final_dropout < 1:
        raise ConfigError(f"{config_path}: final_dropout={final_dropout:g} is not in [0, 1)")
    return ModelRecord(
        cfg=cfg,
        state_dict=state,
        normalize=normalize,
        vocab=vocab,
        kind="ctc",
        final_dropout_prob=float(final_dropout),
    )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or one CheckpointError naming the file."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: a JSON object expected, found {type(content).__name__}")
    return content


def _read_vocab(path: Path) -> dict[str, int]:
    """vocab.json, plus added_tokens.json beside it (HF keeps e.g. <s> and </s> there)."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no vocab.json (the tokenizer of a Wav2Vec2ForCTC)")
    tokens = read_json(path)
    added = path.with_name("added_tokens.json")
    if added.is_file():
        tokens |= {t: i for t, i in read_json(added).items() if t not in tokens}
    for token, index in tokens.items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise CheckpointError(f"{path}: {token!r:.40} has id {index!r:.40}, not an integer")
    return tokens


def _check_ids(tokens: dict[str, int], rows: int, *, source: Path) -> dict[int, str]:
    """Each output row named by exactly one token, each id a row: id -> token."""
    by_index: dict[int, str] = {}
    for token, index in tokens.items():
        if not 0 <= index < rows:
            raise CheckpointError(
                f"{source}: {token!r:.40} has id {index}, outside the output layer's {rows} rows"
            )
        if index in by_index:
            raise CheckpointError(
                f"{source}: id {index} names both {by_index[index]!r:.40} and {token!r:.40}"
            )
        by_index[index] = token
    unnamed = [i for i in range(rows) if i not in by_index]
    if unnamed:
        raise CheckpointError(
            f"{source}: the output layer has {rows} rows but no token names row(s) "
            f"{', '.join(map(str, unnamed[:6]))}"
        )
    return by_index


def _output_layer(weights: dict, dim: int, *, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`lm_head.weight` (V, D) and `lm_head.bias` (V,), taken out of `weights`."""
    weight, bias = weights.pop("lm_head.weight", None), weights.pop("lm_head.bias", None)
    if weight is None or bias is None:
        raise CheckpointError(
            f"{source}: no lm_head.weight and lm_head.bias (the CTC output layer)"
        )
    if weight.dim() != 2 or weight.shape[1] != dim or tuple(bias.shape) != (weight.shape[0],):
        raise CheckpointError(
            f"{source}: lm_head.weight {tuple(weight.shape)} and lm_head.bias "
            f"{tuple(bias.shape)} are not (V, {dim}) and (V,)"
        )
    return weight, bias


def _token_name(named: dict[str, Any], key: str, default: str, source: Path) -> str:
    """A special token's text: a string, or an AddedToken dict's `content`."""
    value = named.get(key, default)
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key}={named.get(key)!r:.60} is not a token")
    return value


def _pad_id(
    hf: dict[str, Any],
    tokens: dict[str, int],
    named: dict[str, Any],
    rows: int,
    config_path: Path,
    tokenizer: Path,
) -> int:
    """The CTC blank: config.json's `pad_token_id`, else the tokenizer's pad token, else 0."""
    if "pad_token_id" not in hf:
        return tokens.get(_token_name(named, "pad_token", "<pad>", tokenizer), 0)
    value = hf["pad_token_id"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < rows:
        raise ConfigError(
            f"{config_path}: pad_token_id={value!r:.40} is not a row of the output layer "
            f"(0 to {rows - 1}); it names the CTC blank"
        )
    return value


__all__ = ["HF_SPECIALS", "load_hf_ctc", "read_json", "save_hf_ctc"]
