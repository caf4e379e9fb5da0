"""PretrainConfig: defaults, presets, YAML diffs, overrides, errors, and the fairseq translation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from w2vkit import cli
from w2vkit.config import ConfigError, parse_overrides, to_dict
from w2vkit.interop import fairseq as fairseq_model
from w2vkit.model.config import base, large, tiny
from w2vkit.pretrain.config import OptimConfig
from w2vkit.pretrain.registry import build_config
from w2vkit.pretrain.wav2vec2 import Wav2Vec2PretrainConfig
from w2vkit.train.config import load_layers
from w2vkit.train.fairseq_config import FAIRSEQ_KEYS, load_fairseq_config, translate_fairseq_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "pretrain"
# fairseq's recipe settings (`wav2vec2_base_librispeech.yaml`, `wav2vec2_large_librivox.yaml`), in
# fairseq's section/key layout and value spellings (hydra `???`, tuple strings, `1e-06`), written
# out by the tests. The opt-in `parity_fairseq` test translates the real files shipped with an
# installed fairseq as well.
_COMMON = {"fp16": True, "log_format": "json", "log_interval": 200}
_CHECKPOINT = {
    "save_interval_updates": 25000,
    "keep_interval_updates": 1,
    "no_epoch_checkpoints": True,
}
_OPTIMIZER = {
    "_name": "adam",
    "adam_betas": "(0.9,0.98)",
    "adam_eps": "1e-06",
    "weight_decay": 0.01,
}
FAIRSEQ_RECIPES = {
    "wav2vec2_base_librispeech.yaml": {
        "common": _COMMON,
        "checkpoint": _CHECKPOINT,
        "task": {
            "_name": "audio_pretraining",
            "data": "???",
            "max_sample_size": 250000,
            "min_sample_size": 32000,
            "normalize": False,
        },
        "dataset": {
            "num_workers": 6,
            "max_tokens": 1400000,
            "skip_invalid_size_inputs_valid_test": True,
        },
        "distributed_training": {"distributed_world_size": 64, "ddp_backend": "legacy_ddp"},
        "criterion": {
            "_name": "wav2vec",
            "infonce": True,
            "log_keys": ["prob_perplexity", "code_perplexity", "temp"],
            "loss_weights": [0.1, 10],
        },
        "optimization": {"max_update": 400000, "lr": [0.0005]},
        "optimizer": _OPTIMIZER,
        "lr_scheduler": {"_name": "polynomial_decay", "warmup_updates": 32000},
        "model": {
            "_name": "wav2vec2",
            "quantize_targets": True,
            "final_dim": 256,
            "encoder_layerdrop": 0.05,
            "dropout_input": 0.1,
            "dropout_features": 0.1,
            "feature_grad_mult": 0.1,
            "encoder_embed_dim": 768,
        },
    },
    "wav2vec2_large_librivox.yaml": {
        "common": _COMMON,
        "checkpoint": _CHECKPOINT,
        "task": {
            "_name": "audio_pretraining",
            "data": "???",
            "max_sample_size": 320000,
            "min_sample_size": 32000,
            "normalize": True,
        },
        "dataset": {
            "batch_size": 4,
            "num_workers": 6,
            "max_tokens": 1200000,
            "skip_invalid_size_inputs_valid_test": True,
        },
        "distributed_training": {"distributed_world_size": 128, "ddp_backend": "legacy_ddp"},
        "criterion": {
            "_name": "wav2vec",
            "infonce": True,
            "log_keys": ["prob_perplexity", "code_perplexity", "temp"],
            "loss_weights": [0.1, 0],
        },
        "optimization": {"max_update": 1000000, "lr": [0.005]},
        "optimizer": _OPTIMIZER,
        "lr_scheduler": {"_name": "polynomial_decay", "warmup_updates": 32000},
        "model": {
            "_name": "wav2vec2",
            "quantize_targets": True,
            "extractor_mode": "layer_norm",
            "layer_norm_first": True,
            "final_dim": 768,
            "latent_temp": "[2.0,0.1,0.999995]",
            "encoder_layerdrop": 0.00,
            "dropout_input": 0.0,
            "dropout_features": 0.0,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "conv_bias": True,
            "encoder_layers": 24,
            "encoder_embed_dim": 1024,
            "encoder_ffn_embed_dim": 4096,
            "encoder_attention_heads": 16,
            "feature_grad_mult": 1.0,
        },
    },
}


@pytest.fixture
def fairseq_yaml(tmp_path):
    """Writes one of FAIRSEQ_RECIPES as a fairseq YAML file and returns its path."""

    def write(name: str) -> Path:
        path = tmp_path / name
        path.write_text(
            "# @package _group_\n" + yaml.safe_dump(FAIRSEQ_RECIPES[name], sort_keys=False)
        )
        return path

    return write


def _config(*overrides: str, path: Path | None = None) -> Wav2Vec2PretrainConfig:
    return build_config(load_layers(path, list(overrides)))


def test_defaults_are_the_fairseq_base_recipe():
    cfg = Wav2Vec2PretrainConfig()
    assert to_dict(cfg.model) == to_dict(base())
    assert (cfg.data.max_batch_samples, cfg.data.min_samples, cfg.data.max_samples) == (
        1_400_000,
        32_000,
        250_000,
    )
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.eps, cfg.optim.weight_decay) == (
        5e-4,
        (0.9, 0.98),
        1e-6,
        0.01,
    )
    assert (cfg.optim.warmup_steps, cfg.train.max_steps, cfg.total_steps) == (
        32_000,
        400_000,
        400_000,
    )
    assert (cfg.loss.diversity_weight, cfg.loss.feature_penalty_weight) == (0.1, 10.0)
    # fairseq's recipe says fp16; "auto" is bf16 on CUDA (no loss scale) and fp32 on CPU
    assert (cfg.train.precision, cfg.train.log_interval, cfg.train.save_interval_steps) == (
        "auto",
        200,
        25_000,
    )


@pytest.mark.parametrize(
    "fairseq_file, shipped",
    [
        ("wav2vec2_base_librispeech.yaml", "base_ls960.yaml"),
        ("wav2vec2_large_librivox.yaml", "large_lv60k.yaml"),
    ],
)
def test_fairseq_recipes_translate_to_the_shipped_presets(fairseq_file, shipped, fairseq_yaml):
    _check_translates_to_preset(fairseq_yaml(fairseq_file), shipped)


@pytest.mark.parity_fairseq
@pytest.mark.parametrize(
    "fairseq_file, shipped",
    [
        ("wav2vec2_base_librispeech.yaml", "base_ls960.yaml"),
        ("wav2vec2_large_librivox.yaml", "large_lv60k.yaml"),
    ],
)
def test_installed_fairseq_recipe_files_translate_to_the_shipped_presets(fairseq_file, shipped):
    python = os.environ.get("W2VKIT_FAIRSEQ_PYTHON", str(ROOT / ".fairseq-venv" / "bin" / "python"))
    if not Path(python).exists():
        pytest.fail(
            f"parity_fairseq needs fairseq-fixed installed at {python} (W2VKIT_FAIRSEQ_PYTHON)"
        )
    package = subprocess.run(
        [python, "-c", "import fairseq, os; print(os.path.dirname(fairseq.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    _check_translates_to_preset(
        Path(package) / "examples/wav2vec/config/pretraining" / fairseq_file, shipped
    )


def _check_translates_to_preset(fairseq_path: Path, shipped: str) -> None:
    translation = load_fairseq_config(fairseq_path)
    from_fairseq = build_config([translation.layer])
    from_preset = _config(path=CONFIGS / shipped)
    # The one intended difference: fairseq's fp16 is the shipped preset's `auto` (bf16 on CUDA,
    # which needs no loss scale; fp32 on CPU).
    assert (from_fairseq.train.precision, from_preset.train.precision) == ("fp16", "auto")
    from_fairseq.train.precision = "auto"
    assert to_dict(from_fairseq) == to_dict(from_preset)
    assert to_dict(from_preset.model) == to_dict(base() if "base" in shipped else large())
    # What fairseq sets that w2vkit has no use for is reported, each key once.
    unused = [line.split("=")[0] for line in translation.unused]
    assert len(unused) == len(set(unused))
    assert {
        "common.log_format",
        "distributed_training.distributed_world_size",
        "criterion.log_keys",
    } <= set(unused)


def test_large_preset_differs_from_base_where_fairseq_does():
    cfg = _config(path=CONFIGS / "large_lv60k.yaml")
    assert cfg.data.normalize and cfg.data.max_samples == 320_000 and cfg.data.max_batch_size == 4
    assert (
        cfg.loss.feature_penalty_weight == 0.0
        and cfg.optim.lr == 0.005
        and cfg.train.max_steps == 1_000_000
    )


def test_every_shipped_yaml_loads_and_holds_only_differences():
    for path in sorted(CONFIGS.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert path.read_text().startswith("#"), f"{path.name} needs a command header"
        cfg = _config(path=path)
        defaults = to_dict(type(cfg)())  # the objective's config class (`objective:`)
        for section, values in raw.items():
            if section == "objective":  # picks the config class whose defaults these are
                continue
            for key, value in values.items():
                if key != "preset":
                    assert defaults[section][key] != value, (
                        f"{path.name}: {section}.{key} repeats the default"
                    )
        assert cfg.train.out_dir


def test_tiny_yaml_uses_the_tiny_model_on_cpu_precision():
    cfg = _config(path=CONFIGS / "tiny.yaml")
    assert to_dict(cfg.model) == to_dict(tiny()) and cfg.train.precision == "fp32"


def test_overrides_apply_after_the_yaml_and_over_the_preset():
    cfg = _config(
        "model.transformer.num_layers=3",
        "train.max_steps=7",
        "optim.betas=[0.8, 0.9]",
        path=CONFIGS / "tiny.yaml",
    )
    assert (
        cfg.model.transformer.num_layers == 3
        and cfg.model.transformer.model_dim == tiny().transformer.model_dim
    )
    assert cfg.train.max_steps == 7 and cfg.optim.betas == (0.8, 0.9) and cfg.total_steps == 7


@pytest.mark.parametrize(
    "override, named, allowed",
    [
        ("train.max_step=5", "'train.max_step'", "max_steps"),  # typo: the valid keys are listed
        ("optimm.lr=1", "'optimm'", "optim"),
        ("optim.lr=fast", "optim.lr", "a number"),
        ("train.precision=fp8", "train.precision", "'bf16'"),
        ("optim.betas=[0.9, 1.5]", "optim.betas[1]", "[0, 1)"),
        ("data.max_samples=2000000", "data.max_batch_samples", ">= data.max_samples"),
        ("train.update_freq=0", "train.update_freq", ">= 1"),
        ("model.preset=huge", "model.preset", "'tiny'"),
        ("model.transformer.num_heads=5", "transformer.num_heads", "divisible"),
    ],
)
def test_bad_values_fail_naming_the_key_and_what_is_allowed(override, named, allowed):
    with pytest.raises(ConfigError) as err:
        _config(override)
    assert named in str(err.value) and allowed in str(err.value)


def test_stopping_needs_a_limit():
    with pytest.raises(ConfigError, match="train.max_steps"):
        _config("train.max_steps=0")
    with pytest.raises(ConfigError, match="optim.total_steps"):
        _config("train.max_steps=0", "train.max_epochs=3")
    assert (
        _config("train.max_steps=0", "train.max_epochs=3", "optim.total_steps=100").total_steps
        == 100
    )


def test_cli_reports_a_typo_with_the_file_and_key(capsys):
    code = cli.main(["pretrain", str(CONFIGS / "tiny.yaml"), "train.max_stepz=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "tiny.yaml" in err and "'train.max_stepz'" in err and "max_steps" in err


def test_cli_prints_the_resolved_fairseq_config(capsys, tmp_path, fairseq_yaml):
    code = cli.main(
        [
            "pretrain",
            "--fairseq-config",
            str(fairseq_yaml("wav2vec2_base_librispeech.yaml")),
            f"train.out_dir={tmp_path}",
            "--print-config",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    printed = yaml.safe_load(out)
    assert (
        printed["optim"]["lr"] == 5e-4 and printed["model"]["transformer"]["layerdrop_prob"] == 0.05
    )


def test_fairseq_keys_start_at_fairseq_defaults_not_w2vkit_defaults():
    # An almost empty fairseq file means fairseq's dataclass defaults (lr 0.25, Adam betas
    # (0.9, 0.999), no layerdrop, no quantizer...), which are not w2vkit's BASE defaults.
    translation = translate_fairseq_config(
        {
            "criterion": {"_name": "wav2vec", "infonce": True},
            "task": {"max_sample_size": 1000, "min_sample_size": 10},
            "dataset": {"max_tokens": 4000},
            "optimization": {"max_update": 9},
        }
    )
    cfg = build_config([translation.layer])
    assert cfg.optim.lr == 0.25 and cfg.optim.betas == (0.9, 0.999) and cfg.optim.eps == 1e-8
    assert (
        cfg.optim.weight_decay == 0.0
        and cfg.optim.warmup_steps == 0
        and cfg.train.precision == "fp32"
    )
    assert cfg.model.transformer.layerdrop_prob == 0.0 and not cfg.model.quantizer.quantize_targets
    assert cfg.model.final_dim == 768  # fairseq final_dim 0 = encoder_embed_dim
    assert (
        cfg.loss.diversity_weight == 0.0 and cfg.loss.feature_penalty_weight == 0.0
    )  # loss_weights None
    assert (cfg.data.max_samples, cfg.data.min_samples, cfg.data.max_batch_samples) == (
        1000,
        10,
        4000,
    )


def test_fairseq_scalars_written_as_strings_are_read_as_omegaconf_does():
    translation = translate_fairseq_config(
        {
            "criterion": {"infonce": True},
            "optimizer": {"adam_eps": "1e-06", "adam_betas": "(0.9,0.98)"},
            "optimization": {"max_update": 10, "lr": [0.001]},
        }
    )
    cfg = build_config([translation.layer])
    assert cfg.optim.eps == 1e-6 and cfg.optim.betas == (0.9, 0.98) and cfg.optim.lr == 0.001


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("model", "layer_type", "conformer", "model.layer_type"),
        ("criterion", "infonce", False, "criterion.infonce"),
        ("optimizer", "_name", "sgd", "optimizer._name"),
        ("lr_scheduler", "_name", "tri_stage", "lr_scheduler._name"),
        ("optimization", "lr", [0.1, 0.2], "optimization.lr"),
        ("model", "conv_feature_layers", "__import__('os').system('true')", "conv_feature_layers"),
    ],
)
def test_fairseq_values_w2vkit_cannot_honour_are_errors(section, key, value, message):
    data = {"criterion": {"infonce": True}, "optimization": {"max_update": 10}}
    data.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        translate_fairseq_config(data)


def test_fairseq_unknown_keys_are_reported_once_not_fatal():
    translation = translate_fairseq_config(
        {
            "criterion": {"infonce": True},
            "optimization": {"max_update": 5},
            "common": {"user_dir": "x"},
            "model": {"max_positions": 10},
            "ema": {"store_ema": True},
        }
    )
    lines = "\n".join(translation.unused)
    assert "common.user_dir" in lines and "model.max_positions" in lines and "ema" in lines


def test_fairseq_none_limits_keep_w2vkit_defaults_and_say_so():
    translation = translate_fairseq_config(
        {"criterion": {"infonce": True}, "optimization": {"max_update": 5}}
    )
    cfg = build_config([translation.layer])
    assert cfg.data.max_samples == Wav2Vec2PretrainConfig().data.max_samples
    assert any("task.max_sample_size" in note for note in translation.notes)


def test_the_mapping_table_is_documented():
    doc = (ROOT / "docs" / "fairseq_config.md").read_text()
    for section, key in FAIRSEQ_KEYS:
        assert f"| {section}.{key} |" in doc, f"{section}.{key} missing from docs/fairseq_config.md"
    for key in fairseq_model.FIELDS:
        assert f"| `{key}`" in doc, f"model.{key} missing from docs/fairseq_config.md"


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["train.seed=3", "data.manifest_dir=/x"]) == {
        "train": {"seed": 3},
        "data": {"manifest_dir": "/x"},
    }


# Each bound: the value at it is accepted, the first value past it is refused with this message.
BOUNDS = [
    ("data.sample_rate=0", "data.sample_rate=1", "data.sample_rate: must be > 0, got 0"),
    ("data.min_samples=-1", "data.min_samples=0", "data.min_samples: must be >= 0, got -1"),
    ("data.min_samples=100 data.max_samples=99", "data.min_samples=100 data.max_samples=100",
     "data.max_samples: must be >= data.min_samples (100) and > 0, got 99"),
    ("data.min_samples=0 data.max_samples=0", "data.min_samples=0 data.max_samples=1",
     "data.max_samples: must be >= data.min_samples (0) and > 0, got 0"),
    ("data.max_batch_samples=249999", "data.max_batch_samples=250000",
     "data.max_batch_samples: must be >= data.max_samples (250000) so that one row fits, got 249999"),
    ("data.max_batch_size=0", "data.max_batch_size=1", "data.max_batch_size: must be >= 1 or null, got 0"),
    ("data.required_batch_size_multiple=0", "data.required_batch_size_multiple=1",
     "data.required_batch_size_multiple: must be >= 1"),
    ("data.num_workers=-1", "data.num_workers=0", "data.num_workers: must be >= 0, got -1"),
    ("optim.lr=0", "optim.lr=1e-12", "optim.lr: must be > 0, got 0.0"),
    ("optim.betas=[-0.1,0.9]", "optim.betas=[0.0,0.9]", "optim.betas[0]: must be in [0, 1), got -0.1"),
    ("optim.betas=[0.9,1.0]", "optim.betas=[0.9,0.9999]", "optim.betas[1]: must be in [0, 1), got 1.0"),
    ("optim.eps=0", "optim.eps=1e-30", "optim.eps: must be > 0, got 0.0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=0", "optim.weight_decay: must be >= 0, got -0.1"),
    ("optim.clip_norm=-1", "optim.clip_norm=0", "optim.clip_norm: must be >= 0 (0 = off), got -1.0"),
    ("optim.total_steps=-1", "optim.total_steps=0",
     "optim.total_steps: must be >= 0 (0 = train.max_steps), got -1"),
    ("optim.warmup_steps=-1", "optim.warmup_steps=0", "optim.warmup_steps: must be >= 0, got -1"),
    ("optim.end_lr=0.0006", "optim.end_lr=0.0005", "optim.end_lr: must be in [0, optim.lr], got 0.0006"),
    ("optim.end_lr=-0.001", "optim.end_lr=0", "optim.end_lr: must be in [0, optim.lr], got -0.001"),
    ("optim.power=0", "optim.power=1e-9", "optim.power: must be > 0, got 0.0"),
    ("loss.diversity_weight=-0.1", "loss.diversity_weight=0", "loss.diversity_weight: must be >= 0, got -0.1"),
    ("loss.feature_penalty_weight=-1", "loss.feature_penalty_weight=0",
     "loss.feature_penalty_weight: must be >= 0, got -1.0"),
    *[(f"train.{key}=-1", f"train.{key}=0 train.max_minutes=1", f"train.{key}: must be >= 0, got -1")
      for key in ("max_steps", "max_epochs", "validate_interval_steps", "save_interval_steps",
                  "keep_interval_checkpoints")],
    ("train.max_minutes=-1", "train.max_minutes=0", "train.max_minutes: must be >= 0, got -1.0"),
    ("train.max_steps=0", "train.max_steps=0 train.max_minutes=0.5",
     "train.max_steps: set train.max_steps, train.max_epochs or train.max_minutes (all are 0, the "
     "run would never stop)"),
    ("train.max_steps=0 train.max_epochs=1", "train.max_steps=0 train.max_epochs=1 optim.total_steps=1",
     "optim.total_steps: the LR schedule needs a length: set optim.total_steps when training by "
     "train.max_epochs"),
    ("train.update_freq=0", "train.update_freq=1", "train.update_freq: must be >= 1, got 0"),
    ("train.log_interval=0", "train.log_interval=1", "train.log_interval: must be >= 1, got 0"),
    ("train.fp16_init_scale=0", "train.fp16_init_scale=1e-9", "train.fp16_init_scale: must be > 0"),
    ("train.max_consecutive_nonfinite=0", "train.max_consecutive_nonfinite=1",
     "train.max_consecutive_nonfinite: must be >= 1"),
    ("train.out_dir=", "train.out_dir=r", "train.out_dir: must not be empty"),
    ("train.seed=-1", "train.seed=0", "train.seed: must be in [0, 2**32), got -1"),
    ("train.seed=4294967296", "train.seed=4294967295", "train.seed: must be in [0, 2**32), got 4294967296"),
    ("train.dist_timeout_minutes=0", "train.dist_timeout_minutes=0.01",
     "train.dist_timeout_minutes: must be > 0, got 0.0"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "boundary", "message"), BOUNDS, ids=[b[0] for b in BOUNDS])
def test_every_bound_is_refused_past_it_and_accepted_at_it(bad, boundary, message):
    with pytest.raises(ConfigError) as err:
        _config(*bad.split())
    assert str(err.value) == message
    _config(*boundary.split())


def test_the_optimizer_name_is_checked_when_built_in_python():
    # From YAML the Literal type refuses other names first; a config built in code meets this.
    with pytest.raises(ConfigError, match="^optim.optimizer: must be adamw or adam$"):
        OptimConfig(optimizer="sgd")  # type: ignore[arg-type]
    assert OptimConfig(optimizer="adam").optimizer == "adam"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=3", "model: expected a mapping such as {preset: tiny}, got 3"),
        ("model.preset=huge", "model.preset: 'huge' is not one of 'tiny', 'base', 'large', 'large_paper'"),
        ("model.transformer.num_layerz=3", "unknown config key 'model.transformer.num_layerz'; valid keys here: "),
    ],
)  # fmt: skip
def test_model_section_errors_name_the_full_key(override, message):
    with pytest.raises(ConfigError) as err:
        _config(override)
    assert str(err.value).startswith(message)


def test_a_config_name_is_looked_up_among_its_commands_configs():
    # `cpu` names a pretraining and a fine-tuning config; each command reads its own.
    for kind in ("finetune", "pretrain"):
        shipped = yaml.safe_load((ROOT / "configs" / kind / "cpu.yaml").read_text())
        assert load_layers("cpu", [], kind=kind) == [shipped]
    assert load_layers("cpu", [], kind="finetune") != load_layers("cpu", [])


_MINIMAL = {"criterion": {"infonce": True}, "optimization": {"max_update": 5}}


def test_fairseq_unused_keys_are_listed_with_their_reasons():
    translation = translate_fairseq_config(
        {
            **_MINIMAL,
            "common": {"log_format": "json", "user_dir": "x"},
            "lr_scheduler": {"foo": 1},
            "model": {"_name": "wav2vec2", "max_positions": 10, "encoder_layers": 2, "bogus": 1},
            "ema": {"store_ema": True},
        }
    )
    assert translation.unused == [
        "ema: section not used by w2vkit",
        "common.log_format='json': w2vkit always logs JSON lines",
        "common.user_dir='x': not used by w2vkit",
        "lr_scheduler.foo=1: not used by w2vkit",
        "model.bogus=1: not a fairseq wav2vec2 model field",
        "model.max_positions=10: no effect on a transformer model with a depth-1 quantizer",
    ]  # encoder_layers is used: not listed
    assert translation.layer["model"]["transformer"]["num_layers"] == 2


def test_fairseq_no_limit_keys_say_which_default_they_keep_and_a_set_one_is_used():
    assert translate_fairseq_config(_MINIMAL).notes == [
        "task.max_sample_size is not set (no limit in fairseq): w2vkit keeps its default "
        "data.max_samples",
        "dataset.max_tokens is not set (no limit in fairseq): w2vkit keeps its default "
        "data.max_batch_samples",
    ]
    translation = translate_fairseq_config({**_MINIMAL, "task": {"max_sample_size": 1000}})
    assert translation.layer["data"]["max_samples"] == 1000
    assert [n.split(" ")[0] for n in translation.notes] == ["dataset.max_tokens"]


@pytest.mark.parametrize(
    ("weights", "expected"), [([0.5], (0.5, 0.5)), ([0.1, 10], (0.1, 10.0)), (None, (0.0, 0.0))]
)
def test_fairseq_loss_weights_broadcast_one_weight_as_fairseq_does(weights, expected):
    criterion = {"infonce": True, "loss_weights": weights}
    loss = translate_fairseq_config({**_MINIMAL, "criterion": criterion}).layer["loss"]
    assert (loss["diversity_weight"], loss["feature_penalty_weight"]) == expected


def test_fairseq_total_num_update_is_the_schedule_length_and_defaults_to_max_update():
    translate = translate_fairseq_config
    scheduler = {"lr_scheduler": {"total_num_update": 123}}
    assert translate({**_MINIMAL, **scheduler}).layer["optim"]["total_steps"] == 123
    assert translate(_MINIMAL).layer["optim"]["total_steps"] == 0  # 0: train.max_steps


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"criterion": {"infonce": True, "loss_weights": [1, 2, 3]}},
         "fairseq criterion.loss_weights=[1, 2, 3]: expected [diversity, feature_penalty]"),
        ({"task": 3}, "FILE: section 'task' must be a mapping, got 3"),
        ({"optimizer": {"adam_betas": "(0.9,"}},
         "fairseq optimizer.adam_betas='(0.9,' is not a tuple of numbers"),
        ({"optimizer": {"adam_betas": 3}}, "fairseq optimizer.adam_betas=3 is not a tuple of numbers"),
        ({"model": {"_name": "wav2vec"}},
         "FILE: model._name='wav2vec': only wav2vec2 pretraining is supported"),
        ({"model": {"encoder_layers": "many"}},
         "FILE: model.transformer.num_layers: expected an integer, got 'many' (fairseq field "
         "encoder_layers)"),
        ({"model": {"dropout": 1.5}},
         "FILE: transformer.dropout_prob: must be in [0, 1), got 1.5 (fairseq field dropout)"),
    ],
)  # fmt: skip
def test_fairseq_file_errors_name_the_file_and_key(tmp_path, data, message):
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump({**_MINIMAL, **data}))
    with pytest.raises(ConfigError) as err:
        load_fairseq_config(path)
    assert str(err.value).startswith(message.replace("FILE", str(path)))
