"""fairseq wav2vec 2.0 pretraining checkpoints (`wav2vec_small.pt`, `libri960_big.pt`) -> w2vkit.

A fairseq checkpoint is a `torch.save` dict with `"model"` (state dict) and either `"cfg"` (hydra
era: `cfg["model"]` is a `Wav2Vec2Config`, pickled as an omegaconf tree or a plain dict) or
`"args"` (before 2021: one flat argparse Namespace). It is read through `safe_load`, which never
runs code from the file. Fields missing from old checkpoints take fairseq's `Wav2Vec2Config`
defaults (fairseq-fixed 0.12.3.1, `fairseq/models/wav2vec/wav2vec2.py`).
"""

from __future__ import annotations

import ast
from typing import Any

from w2vkit.config import ConfigError, from_dict
from w2vkit.interop.keymap import KeyMap
from w2vkit.interop.native import check_state_dict
from w2vkit.interop.record import ModelRecord
from w2vkit.interop.safe_load import CheckpointError, to_plain
from w2vkit.model.config import ModelConfig

# fairseq Wav2Vec2Config defaults for the fields that matter (old checkpoints lack newer ones).
DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_type": "transformer",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "dropout_features": 0.0,
    "final_dim": 0,
    "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
    "conv_bias": False,
    "logit_temp": 0.1,
    "quantize_targets": False,
    "quantize_input": False,
    "same_quantizer": False,
    "target_glu": False,
    "feature_grad_mult": 1.0,
    "quantizer_depth": 1,
    "quantizer_factor": 3,
    "latent_vars": 320,
    "latent_groups": 2,
    "latent_dim": 0,
    "mask_length": 10,
    "mask_prob": 0.65,
    "mask_selection": "static",
    "mask_other": 0.0,
    "no_mask_overlap": False,
    "mask_min_space": 1,
    "require_same_masks": True,
    "mask_dropout": 0.0,
    "mask_channel_length": 10,
    "mask_channel_prob": 0.0,
    "mask_channel_before": False,
    "mask_channel_selection": "static",
    "mask_channel_other": 0.0,
    "no_mask_channel_overlap": False,
    "mask_channel_min_space": 1,
    "num_negatives": 100,
    "negatives_from_everywhere": False,
    "cross_sample_negatives": 0,
    "codebook_negatives": 0,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "pos_conv_depth": 1,
    "latent_temp": (2.0, 0.5, 0.999995),
    "required_seq_len_multiple": 2,
    "crop_seq_to_multiple": 1,
    "conv_pos_batch_norm": False,
    # no effect on a `transformer` model with a depth-1 quantizer:
    "max_positions": 100000,
    "checkpoint_activations": False,
    "fp16": False,
    "depthwise_conv_kernel_size": 31,
    "attn_type": "",
    "pos_enc_type": "abs",
    "adp_num": -1,
    "adp_dim": 64,
    "adp_act_fn": "relu",
    "adp_trf_idx": "all",
    "offload_activations": False,
    "min_params_to_wrap": 100000000,
}
# fairseq field -> w2vkit dotted field, values copied as they are.
FIELDS: dict[str, str] = {
    "encoder_layers": "transformer.num_layers",
    "encoder_embed_dim": "transformer.model_dim",
    "encoder_ffn_embed_dim": "transformer.ffn_dim",
    "encoder_attention_heads": "transformer.num_heads",
    "layer_norm_first": "transformer.layer_norm_first",
    "dropout": "transformer.dropout_prob",
    "attention_dropout": "transformer.attention_dropout_prob",
    "activation_dropout": "transformer.activation_dropout_prob",
    "encoder_layerdrop": "transformer.layerdrop_prob",
    "conv_pos": "transformer.pos_conv_kernel",
    "conv_pos_groups": "transformer.pos_conv_groups",
    "required_seq_len_multiple": "transformer.required_seq_len_multiple",
    "conv_bias": "feature_extractor.conv_bias",
    "feature_grad_mult": "feature_extractor.grad_scale",
    "dropout_input": "input_dropout_prob",
    "dropout_features": "features_dropout_prob",
    "logit_temp": "logit_temperature",
    "num_negatives": "num_negatives",
    "cross_sample_negatives": "num_cross_sample_negatives",
    "codebook_negatives": "num_codebook_negatives",
    "quantize_targets": "quantizer.quantize_targets",
    "latent_vars": "quantizer.num_entries",
    "latent_groups": "quantizer.num_groups",
    "latent_dim": "quantizer.dim",
    "mask_prob": "masking.time_prob",
    "mask_length": "masking.time_span_frames",
    "mask_selection": "masking.time_span_selection",
    "mask_other": "masking.time_span_other",
    "no_mask_overlap": "masking.time_no_overlap",
    "mask_min_space": "masking.time_min_space_frames",
    "require_same_masks": "masking.require_same_masks",
    "mask_dropout": "masking.mask_dropout_prob",
    "mask_channel_prob": "masking.channel_prob",
    "mask_channel_length": "masking.channel_span_channels",
    "mask_channel_selection": "masking.channel_span_selection",
    "mask_channel_other": "masking.channel_span_other",
    "no_mask_channel_overlap": "masking.channel_no_overlap",
    "mask_channel_min_space": "masking.channel_min_space_channels",
    "mask_channel_before": "masking.channel_before",
}
# fairseq options w2vkit does not implement: the only value it can represent.
REQUIRED: dict[str, Any] = {
    "activation_fn": "gelu",
    "layer_type": "transformer",
    "quantize_input": False,
    "target_glu": False,
    "negatives_from_everywhere": False,
    "quantizer_depth": 1,
    "pos_conv_depth": 1,
    "crop_seq_to_multiple": 1,
    "conv_pos_batch_norm": False,
}
SPECIAL = {"extractor_mode", "final_dim", "conv_feature_layers", "latent_temp"}
IGNORED = set(DEFAULTS) - set(FIELDS) - set(REQUIRED) - SPECIAL  # no effect on this model
_NORM_MODES = {"default": "group_norm", "layer_norm": "layer_norm"}

KEYS = KeyMap([
    ("feature_extractor.conv_layers.{i}.0.{p}", "feature_extractor.layers.{i}.conv.{p}"),
    # layer_norm mode
    ("feature_extractor.conv_layers.{i}.2.1.{p}", "feature_extractor.layers.{i}.norm.{p}"),
    # GroupNorm, layer 0
    ("feature_extractor.conv_layers.{i}.2.{p}", "feature_extractor.layers.{i}.norm.{p}"),
    ("layer_norm.{p}", "feature_norm.{p}"),
    ("post_extract_proj.{p}", "feature_projection.{p}"),
    ("mask_emb", "masker.mask_embedding"),
    ("encoder.pos_conv.0.weight_g", "encoder.pos_conv.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", "encoder.pos_conv.conv.parametrizations.weight.original1"),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv.conv.bias"),
    ("encoder.layer_norm.{p}", "encoder.norm.{p}"),
    ("encoder.layers.{i}.self_attn.{qkv}_proj.{p}", "encoder.layers.{i}.attention.{qkv}_proj.{p}"),
    ("encoder.layers.{i}.self_attn_layer_norm.{p}", "encoder.layers.{i}.attention_norm.{p}"),
    ("encoder.layers.{i}.fc1.{p}", "encoder.layers.{i}.fc1.{p}"),
    ("encoder.layers.{i}.fc2.{p}", "encoder.layers.{i}.fc2.{p}"),
    ("encoder.layers.{i}.final_layer_norm.{p}", "encoder.layers.{i}.ffn_norm.{p}"),
    ("quantizer.vars", "quantizer.codevectors"),
    ("quantizer.weight_proj.{p}", "quantizer.weight_proj.{p}"),
    ("project_q.{p}", "target_proj.{p}"),
    ("final_proj.{p}", "context_proj.{p}"),
])  # fmt: skip


def parse_conv_layers(text: str, *, where: str) -> list[tuple[int, int, int]]:
    """Parse fairseq's `conv_feature_layers` without `eval`: literals, `+` and `*` only."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if (
                isinstance(node.op, ast.Add)
                and isinstance(left, list)
                and isinstance(right, list)
                and len(left) + len(right) <= 1_000
            ):
                return left + right
            if (
                isinstance(node.op, ast.Mult)
                and isinstance(left, list)
                and type(right) is int
                and len(left) * right <= 1_000  # each factor small, their product too
            ):
                return left * right
        raise ConfigError(
            f"{where}: {text!r} is not a list of (channels, kernel, stride) "
            f"tuples built with + and * (found {ast.dump(node)[:60]})"
        )

    try:
        tree = ast.parse(str(text).strip(), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"{where}: cannot parse {text!r}: {err.msg}") from err
    layers = value(tree.body)
    if not isinstance(layers, list) or not all(
        isinstance(t, tuple) and len(t) == 3 for t in layers
    ):
        raise ConfigError(f"{where}: {text!r} is not a list of (channels, kernel, stride) tuples")
    return layers


def model_fields(checkpoint: dict, *, source: str) -> tuple[dict[str, Any], str, bool | None]:
    """The model fields, where they came from (`cfg.model` or `args`), and `task.normalize`."""
    cfg = to_plain(checkpoint.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        fields, where = dict(cfg["model"]), "cfg.model"
        name = fields.pop("_name", "wav2vec2")
        task: dict = cfg["task"] if isinstance(cfg.get("task"), dict) else {}
        unknown = sorted(set(fields) - set(DEFAULTS))
        if unknown:
            raise ConfigError(
                f"{source}: {where}.{unknown[0]} is a fairseq model field w2vkit does not know; "
                "cannot translate it"
            )
    elif checkpoint.get("args") is not None:
        args = to_plain(checkpoint["args"])
        if not isinstance(args, dict):
            raise CheckpointError(f"{source}: 'args' is not an argparse Namespace")
        where, name, task = "args", args.get("arch", "wav2vec2"), args
        # one flat Namespace: task and optimizer options sit beside the model's
        fields = {k: v for k, v in args.items() if k in DEFAULTS}
    else:
        raise CheckpointError(
            f"{source}: a fairseq checkpoint needs 'cfg' or 'args'; found {sorted(checkpoint)}"
        )
    if name != "wav2vec2":
        raise ConfigError(
            f"{source}: {where} describes a {name!r} model; only wav2vec2 pretraining "
            "checkpoints convert (fine-tuned wav2vec_ctc ones do not)"
        )
    normalize = task.get("normalize")
    return {**DEFAULTS, **fields}, where, normalize if isinstance(normalize, bool) else None


def config_from_fairseq(fields: dict[str, Any], *, where: str = "cfg.model") -> ModelConfig:
    """fairseq `Wav2Vec2Config` fields (complete, see `model_fields`) -> ModelConfig."""
    for name, required in REQUIRED.items():
        if fields[name] != required:
            raise ConfigError(
                f"{where}.{name}={fields[name]!r} cannot be represented in w2vkit "
                f"(it supports only {required!r})"
            )
    if fields["extractor_mode"] not in _NORM_MODES:
        raise ConfigError(
            f"{where}.extractor_mode: {fields['extractor_mode']!r} is not one of "
            f"{', '.join(_NORM_MODES)}"
        )
    temp = fields["latent_temp"]
    if isinstance(temp, str):  # argparse-era checkpoints keep the tuple as its string
        try:
            temp = ast.literal_eval(temp)
        except (ValueError, SyntaxError) as err:
            raise ConfigError(f"{where}.latent_temp: cannot parse {temp!r}") from err
    if not (isinstance(temp, (list, tuple)) and len(temp) == 3):
        raise ConfigError(f"{where}.latent_temp: expected (start, end, decay), got {temp!r}")
    tree: dict[str, Any] = {
        "feature_extractor": {},
        "masking": {"time_min_spans": 2},
        "quantizer": {},
        "transformer": {},
    }
    for name, dotted in FIELDS.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = fields[name]
    tree["feature_extractor"]["norm_mode"] = _NORM_MODES[fields["extractor_mode"]]
    tree["feature_extractor"]["conv_layers"] = parse_conv_layers(
        fields["conv_feature_layers"], where=f"{where}.conv_feature_layers"
    )
    tree["final_dim"] = (
        fields["final_dim"] if fields["final_dim"] > 0 else fields["encoder_embed_dim"]
    )
    start, end, decay = temp
    tree["quantizer"].update(temperature_start=start, temperature_end=end, temperature_decay=decay)
    # fairseq hard-codes min_masks=2 for time masks in wav2vec2.apply_mask (set above).
    try:
        return from_dict(ModelConfig, tree, where=where)
    except ConfigError as err:  # the message names w2vkit's key; the file has fairseq's
        key = str(err).split(": ", 1)[0]  # `cfg.model.transformer.dropout_prob`, `mask_prob`...
        named = [f for f, dotted in FIELDS.items() if key == dotted or key.endswith(f".{dotted}")]
        if not named:
            raise
        raise ConfigError(f"{err} (fairseq field {named[0]})") from err


def from_checkpoint(checkpoint: Any, *, source: str) -> ModelRecord:
    """A loaded fairseq checkpoint dict (see `safe_load.load_torch_file`) -> `ModelRecord`."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"{source}: not a fairseq checkpoint (no 'model' state dict)")
    fields, where, normalize = model_fields(checkpoint, source=source)
    try:
        cfg = config_from_fairseq(fields, where=where)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    state = KEYS.to_w2vkit(checkpoint["model"], source=source)
    check_state_dict(cfg, state, source=source)
    return ModelRecord(cfg, state, normalize)
