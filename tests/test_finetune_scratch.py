"""`w2vkit finetune` without `--init-from`: the supervised baseline trained from random init.

The `logmel_cpu` config resolves to the tiny Transformer over the log-mel front-end with the `cpu`
recipe's head and budget; a run trains every part of the model, is fixed by its seed and resumes
exactly; neither or both of `--init-from` and `model.preset` is a one-line usage error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_letter_corpus

from w2vkit import cli
from w2vkit.config import ConfigError
from w2vkit.finetune.config import build_finetune_config
from w2vkit.model.config import tiny
from w2vkit.recipes.finetune import resolve
from w2vkit.train import checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("letters") / "data"
    make_letter_corpus(root, {"train": 8, "valid": 3})
    return root


def _scratch(data: Path, out_dir: Path, *extra: str) -> int:
    return cli.main(
        [
            "finetune", "logmel_cpu", f"data.manifest_dir={data}", f"train.out_dir={out_dir}",
            "data.max_batch_samples=40000", "optim.total_steps=4", "train.validate_interval_steps=2",
            "train.save_interval_steps=0", "train.log_interval=1", *extra,
        ]
    )  # fmt: skip


def test_logmel_config_resolves_to_a_random_tiny_spectrogram_model(data, tmp_path):
    cfg, resume, init = resolve(
        ["logmel_cpu", f"data.manifest_dir={data}", f"train.out_dir={tmp_path}"], None
    )
    assert resume is None and init is None  # nothing to load: random init
    extractor = cfg.model.feature_extractor
    assert extractor.kind == "spectrogram" and extractor.grad_scale == 1.0
    assert extractor.conv_layers == tiny().feature_extractor.conv_layers  # the same frame grid
    assert (
        cfg.model.transformer
        == build_finetune_config([{"preset": "cpu"}], init_model=tiny()).model.transformer
    )
    # The cpu recipe's budget and masking, but nothing frozen: no pretrained encoder to protect.
    assert cfg.train.max_steps == 600 and cfg.optim.lr == 2e-3
    assert cfg.model.masking.time_prob == 0.3 and cfg.ctc.freeze_encoder_steps == 0


def test_model_preset_without_a_file_picks_the_waveform_twin(data, tmp_path):
    cfg, _, init = resolve(["preset=cpu", "model.preset=tiny", f"data.manifest_dir={data}"], None)
    assert init is None and cfg.model.feature_extractor.kind == "conv"
    with pytest.raises(ConfigError, match=r"model.preset: 'huge' is not one of 'tiny', 'base'"):
        resolve(["preset=cpu", "model.preset=huge", f"data.manifest_dir={data}"], None)


def test_neither_or_both_sources_is_a_one_line_usage_error(data, tmp_path, capsys):
    assert cli.main(["finetune", "cpu", f"data.manifest_dir={data}"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "w2vkit finetune: in cpu + the command line: --init-from is required: the pretrained "
        "model to fine-tune (or model.preset=NAME to train one from random init, e.g. the "
        "logmel_cpu config)\n"
    )
    assert cli.main(["finetune", "logmel_cpu", "--init-from", "x.pt"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "w2vkit finetune: in logmel_cpu + the command line: --init-from x.pt and model.preset=tiny "
        "both pick the model: give --init-from to fine-tune it, or model.preset to train from "
        "random init\n"
    )


def test_training_from_scratch_moves_every_part_is_seeded_and_resumes(data, tmp_path, capsys):
    assert _scratch(data, tmp_path / "whole", "train.max_steps=4") == 0
    assert "random initialisation (seed 1): no pretrained weights" in capsys.readouterr().out
    assert _scratch(data, tmp_path / "split", "train.max_steps=2") == 0
    first_half = checkpoint.load(tmp_path / "split" / checkpoint.LAST)["model"]
    assert _scratch(data, tmp_path / "split", "train.max_steps=4") == 0  # resumes at 2
    whole = checkpoint.load(tmp_path / "whole" / checkpoint.LAST)
    split = checkpoint.load(tmp_path / "split" / checkpoint.LAST)
    assert whole["progress"]["step"] == split["progress"]["step"] == 4
    assert whole["config"]["model"]["feature_extractor"]["kind"] == "spectrogram"
    for key, value in whole["model"].items():
        assert torch.equal(value, split["model"][key]), key
    # Front-end, Transformer and output layer all train (nothing frozen, grad_scale 1).
    for key in ("feature_extractor", "encoder.layers.0", "lm_head"):
        moved = [
            k for k, v in whole["model"].items()
            if key in k and v.is_floating_point() and not torch.equal(v, first_half[k])
        ]  # fmt: skip
        assert moved, f"no {key} weight changed between update 2 and 4"
