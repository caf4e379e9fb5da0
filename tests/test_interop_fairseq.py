"""fairseq checkpoints -> w2vkit, checked against fairseq's own outputs.

`tests/fixtures/fairseq/` holds tiny checkpoints written by fairseq itself (by `make_fixture.py`,
in the three on-disk layouts: omegaconf cfg, plain-dict cfg, argparse args) with fairseq's hidden
states and quantizer codes. The CI tests convert them without fairseq installed. The opt-in
`parity_fairseq` test regenerates everything with a real fairseq (fairseq-fixed 0.12.3.1):
    pytest -m parity_fairseq tests/test_interop_fairseq.py
(`W2VKIT_FAIRSEQ_PYTHON` names its interpreter; `W2VKIT_WRITE_FAIRSEQ_FIXTURE=1` also refreshes the
committed fixture.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from w2vkit.cli import main as cli_main
from w2vkit.config import ConfigError
from w2vkit.interop import detect_format, read_model
from w2vkit.interop.fairseq import DEFAULTS, config_from_fairseq, parse_conv_layers
from w2vkit.interop.safe_load import CheckpointError
from w2vkit.model.wav2vec2 import Wav2Vec2Model

FIXTURE = Path(__file__).parent / "fixtures" / "fairseq"
CHECKPOINTS = {"base_omegaconf.pt": "base", "large_dict.pt": "large", "base_args.pt": "base"}


def _model(path: Path) -> Wav2Vec2Model:
    record = read_model(path)
    cfg, state = record.cfg, record.state_dict
    model = Wav2Vec2Model(cfg)
    model.load_state_dict(state)  # strict: every key present, none extra
    return model.eval()


def _compare_with_reference(directory: Path) -> None:
    ref = np.load(directory / "reference.npz")
    for name, variant in CHECKPOINTS.items():
        model = _model(directory / name)
        with torch.no_grad():
            out = model.extract_features(torch.from_numpy(ref["wav"]))
            padded = model.extract_features(
                torch.from_numpy(ref["padded_wav"]), torch.from_numpy(ref["padding_mask"])
            )
            flat = out.features.reshape(-1, out.features.shape[-1])  # (B*T, C)
            codes = model.quantizer(flat, temperature=2.0).codes.view(*out.features.shape[:2], -1)
        expected = torch.from_numpy(ref[f"{variant}_states"])  # (L+1, B, T, D)
        assert len(out.hidden_states) == expected.shape[0]
        for layer, state in enumerate(out.hidden_states):
            torch.testing.assert_close(
                state, expected[layer], atol=1e-4, rtol=0, msg=f"{name} state {layer}"
            )
        torch.testing.assert_close(
            out.features, torch.from_numpy(ref[f"{variant}_features"]), atol=1e-4, rtol=0
        )
        assert torch.equal(codes, torch.from_numpy(ref[f"{variant}_codes"])), (
            f"{name}: quantizer codes differ"
        )
        valid = ~torch.from_numpy(ref[f"{variant}_padded_frame_padding_mask"])
        assert torch.equal(padded.padding_mask, ~valid)
        expected = torch.from_numpy(ref[f"{variant}_padded_states"])
        for layer, state in enumerate(padded.hidden_states):
            torch.testing.assert_close(
                state[valid],
                expected[layer][valid],
                atol=1e-4,
                rtol=0,
                msg=f"{name} padded state {layer}",
            )


def test_committed_fixture_matches_fairseq_outputs():
    _compare_with_reference(FIXTURE)


def test_fixture_configs_translate_every_field():
    base = read_model(FIXTURE / "base_omegaconf.pt")
    args = read_model(FIXTURE / "base_args.pt")
    large = read_model(FIXTURE / "large_dict.pt")
    assert detect_format(FIXTURE / "base_args.pt") == "fairseq"
    assert base.cfg == args.cfg  # the omegaconf cfg and the argparse Namespace describe one model
    assert base.normalize is False and large.normalize is False
    assert (
        base.cfg.feature_extractor.norm_mode == "group_norm"
        and not base.cfg.transformer.layer_norm_first
    )
    assert (
        base.cfg.feature_extractor.conv_layers
        == [(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2
    )
    assert (
        base.cfg.feature_extractor.grad_scale == 0.1 and base.cfg.transformer.layerdrop_prob == 0.05
    )
    assert (base.cfg.quantizer.num_groups, base.cfg.quantizer.num_entries, base.cfg.final_dim) == (
        2,
        8,
        16,
    )
    assert base.cfg.masking.time_min_spans == 2  # fairseq hard-codes min_masks=2
    assert (
        large.cfg.feature_extractor.norm_mode == "layer_norm"
        and large.cfg.feature_extractor.conv_bias
    )
    assert large.cfg.transformer.layer_norm_first and large.cfg.quantizer.temperature_end == 0.1
    for key, value in base.state_dict.items():
        assert torch.equal(value, args.state_dict[key]), key


def test_fairseq_to_hf_keeps_fairseq_outputs(tmp_path):
    """fairseq -> HF through the CLI: HF's hidden states equal fairseq's stored ones."""
    transformers = pytest.importorskip("transformers")
    ref = np.load(FIXTURE / "reference.npz")
    assert (
        cli_main(["convert", str(FIXTURE / "large_dict.pt"), str(tmp_path / "hf"), "--to", "hf"])
        == 0
    )
    hf_model = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        out = hf_model.wav2vec2(torch.from_numpy(ref["wav"]), output_hidden_states=True)
    expected = torch.from_numpy(ref["large_states"])
    for layer, state in enumerate([*out.hidden_states[:-1], out.last_hidden_state]):
        torch.testing.assert_close(state, expected[layer], atol=1e-4, rtol=0)
    assert (
        cli_main(
            ["convert", str(FIXTURE / "base_args.pt"), str(tmp_path / "w.pt"), "--to", "w2vkit"]
        )
        == 0
    )
    record = read_model(tmp_path / "w.pt")
    cfg, state = record.cfg, record.state_dict
    assert cfg == read_model(FIXTURE / "base_args.pt").cfg


@pytest.mark.parametrize(
    "text, layers",
    [
        (
            "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
            [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2,
        ),
        (
            "[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2",
            [(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2,
        ),
        ("[(32, 3, 1)]", [(32, 3, 1)]),
    ],
)
def test_conv_feature_layers_parse_without_eval(text, layers):
    assert parse_conv_layers(text, where="cfg.model.conv_feature_layers") == layers


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch /tmp/x')",
        "[(1, 2, 3)] * 10**9",
        "[(1, 2)]",
        "[(1, 2, 3)] + x",
        "[(1, 2, 3.5)]",
    ],
)
def test_conv_feature_layers_reject_anything_else(text):
    with pytest.raises(ConfigError, match="conv_feature_layers"):
        parse_conv_layers(text, where="cfg.model.conv_feature_layers")


@pytest.mark.parametrize(
    "field, value",
    [
        ("layer_type", "conformer"),
        ("quantize_input", True),
        ("target_glu", True),
        ("negatives_from_everywhere", True),
        ("quantizer_depth", 2),
        ("pos_conv_depth", 5),
        ("activation_fn", "relu"),
        ("crop_seq_to_multiple", 2),
    ],
)
def test_fairseq_options_w2vkit_cannot_represent_are_errors_naming_them(field, value):
    with pytest.raises(ConfigError, match=f"cfg.model.{field}"):
        config_from_fairseq({**DEFAULTS, "quantize_targets": True, field: value})


def test_unknown_fairseq_field_and_finetuned_model_are_errors(tmp_path):
    state = torch.load(FIXTURE / "large_dict.pt", weights_only=False)  # our own fixture: trusted
    state["cfg"]["model"]["brand_new_option"] = 3
    torch.save(state, tmp_path / "unknown.pt")
    with pytest.raises(ConfigError, match="brand_new_option"):
        read_model(tmp_path / "unknown.pt")
    del state["cfg"]["model"]["brand_new_option"]
    state["cfg"]["model"]["_name"] = "wav2vec_ctc"
    torch.save(state, tmp_path / "ctc.pt")
    with pytest.raises(ConfigError, match="wav2vec_ctc"):
        read_model(tmp_path / "ctc.pt")


def test_truncated_fixture_is_a_clear_error(tmp_path):
    data = (FIXTURE / "base_omegaconf.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_model(tmp_path / "cut.pt")


@pytest.mark.parity_fairseq
def test_fresh_fairseq_models_match(tmp_path):
    """Build random models with fairseq's builders, save with its checkpoint writer, compare."""
    python = os.environ.get(
        "W2VKIT_FAIRSEQ_PYTHON", str(Path(__file__).parents[1] / ".fairseq-venv/bin/python")
    )
    if not Path(python).is_file():
        pytest.fail(
            f"{python} not found: python3 -m venv .fairseq-venv && .fairseq-venv/bin/pip install "
            "torch==2.13.0 'numpy<2' soundfile fairseq-fixed (or set W2VKIT_FAIRSEQ_PYTHON)"
        )
    subprocess.run(
        [python, str(FIXTURE / "make_fixture.py"), str(tmp_path)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _compare_with_reference(tmp_path)
    if os.environ.get("W2VKIT_WRITE_FAIRSEQ_FIXTURE") == "1":
        for path in [*tmp_path.glob("*.pt"), tmp_path / "reference.npz"]:
            shutil.copy(path, FIXTURE / path.name)
