"""w2vkit checkpoints through `load_pretrained` and the `w2vkit convert` CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from w2vkit.cli import main as cli_main
from w2vkit.config import ConfigError, to_dict
from w2vkit.interop import CheckpointError, detect_format, read_model
from w2vkit.model.config import tiny
from w2vkit.model.wav2vec2 import Wav2Vec2Model


def _trainer_checkpoint(path, cfg, model):
    """The layout the trainer writes: weights, config, and loop state conversion ignores."""
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": 7,
            "config": {
                "model": to_dict(cfg),
                "data": {"normalize": True},
                "train": {"max_steps": 9},
            },
        },
        path,
    )


def test_trainer_checkpoint_and_bare_dict_load(tmp_path):
    cfg = tiny()
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg)
    _trainer_checkpoint(tmp_path / "step.pt", cfg, model)
    torch.save(
        {"model": model.state_dict(), "config": {"model": to_dict(cfg)}}, tmp_path / "bare.pt"
    )
    for name in ("step.pt", "bare.pt"):
        assert detect_format(tmp_path / name) == "w2vkit"
        record = read_model(tmp_path / name)
        loaded_cfg, state = record.cfg, record.state_dict
        assert loaded_cfg == cfg
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert read_model(tmp_path / "step.pt").normalize is True
    assert read_model(tmp_path / "bare.pt").normalize is None


def test_weights_that_do_not_fit_the_config_are_errors_naming_the_key(tmp_path):
    cfg = tiny()
    state = Wav2Vec2Model(cfg).state_dict()
    state["context_proj.weight"] = torch.zeros(3, 3)
    torch.save({"model": state, "config": {"model": to_dict(cfg)}}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"context_proj\.weight"):
        read_model(tmp_path / "shape.pt")
    del state["context_proj.weight"]
    torch.save({"model": state, "config": {"model": to_dict(cfg)}}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing context_proj\.weight"):
        read_model(tmp_path / "missing.pt")
    bad_cfg = to_dict(cfg)
    bad_cfg["transformer"]["num_layer"] = 3
    torch.save({"model": state, "config": {"model": bad_cfg}}, tmp_path / "cfg.pt")
    with pytest.raises(ConfigError, match="transformer.num_layer"):
        read_model(tmp_path / "cfg.pt")
    torch.save({"weights": state}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither a w2vkit checkpoint"):
        read_model(tmp_path / "other.pt")


def test_cli_round_trip_w2vkit_hf_w2vkit_is_bit_exact(tmp_path):
    cfg = dataclasses.replace(tiny(), logit_temperature=0.2, num_negatives=7)
    torch.manual_seed(1)
    model = Wav2Vec2Model(cfg)
    _trainer_checkpoint(tmp_path / "step.pt", cfg, model)
    assert cli_main(["convert", str(tmp_path / "step.pt"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (
        json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["do_normalize"]
        is True
    )
    assert (
        cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "back.pt"), "--to", "w2vkit"])
        == 0
    )
    payload = torch.load(tmp_path / "back.pt", weights_only=True)
    assert payload["config"]["model"] == to_dict(cfg) and payload["audio"] == {"normalize": True}
    assert set(payload["model"]) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(payload["model"][key], value), key


def test_cli_refuses_to_overwrite_and_reports_bad_input(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert (
        cli_main(["convert", str(tmp_path / "junk.pt"), str(tmp_path / "out"), "--to", "hf"]) == 2
    )
    assert "not a PyTorch checkpoint" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    assert (
        cli_main(["convert", str(tmp_path / "junk.pt"), str(tmp_path / "out"), "--to", "hf"]) == 2
    )
    assert "--force" in capsys.readouterr().err
    cfg = dataclasses.replace(tiny(), num_cross_sample_negatives=4)
    torch.save(
        {"model": Wav2Vec2Model(cfg).state_dict(), "config": {"model": to_dict(cfg)}},
        tmp_path / "x.pt",
    )
    assert cli_main(["convert", str(tmp_path / "x.pt"), str(tmp_path / "hf2"), "--to", "hf"]) == 2
    assert "num_cross_sample_negatives" in capsys.readouterr().err
