"""w2vkit's own checkpoint layout, and the record every interop reader returns.

A w2vkit checkpoint is a `torch.save` dict with `"model"` (state dict) and `"config"` (a plain dict
whose `"model"` entry is `w2vkit.config.to_dict(ModelConfig)`); the trainer adds optimizer and loop
state, which conversion ignores. `convert --to w2vkit` writes only the weights and config, plus
`"audio"` (`normalize`: whether the model expects per-utterance normalised input).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from w2vkit.config import ConfigError, from_dict, to_dict
from w2vkit.interop.safe_load import CheckpointError
from w2vkit.model.config import ModelConfig

if TYPE_CHECKING:
    from w2vkit.model.wav2vec2 import Wav2Vec2Model


@dataclass
class Pretrained:
    """A model read from any supported format, in w2vkit's names."""

    cfg: ModelConfig
    state_dict: dict[str, Tensor]
    normalize: bool | None = None
    """Per-utterance input normalisation the model was trained with; None = not recorded."""


def is_w2vkit_checkpoint(payload: object) -> bool:
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("model"), dict)
        and isinstance(payload.get("config"), dict)
        and isinstance(payload["config"].get("model"), dict)
    )


def from_payload(payload: dict, *, source: str) -> Pretrained:
    """Build a `Pretrained` from an already loaded w2vkit checkpoint dict (validated)."""
    if not is_w2vkit_checkpoint(payload):
        raise CheckpointError(
            f"{source}: not a w2vkit checkpoint (needs 'model' and 'config'['model'])"
        )
    try:
        cfg = from_dict(ModelConfig, payload["config"]["model"], where="model")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    audio: dict = payload["audio"] if isinstance(payload.get("audio"), dict) else {}
    data: dict = (
        payload["config"]["data"] if isinstance(payload["config"].get("data"), dict) else {}
    )
    normalize = audio.get("normalize", data.get("normalize"))
    # The heads of other objectives (data2vec 2.0, BEST-RQ) around the same encoder: not read.
    state = {k: v for k, v in payload["model"].items() if not k.startswith(OBJECTIVE_HEADS)}
    # A w2vkit file converted from an HF encoder-only model has no heads: it loads, not pretrains.
    check_state_dict(cfg, state, source=source, optional_prefixes=encoder_only_prefixes(cfg, state))
    return Pretrained(cfg, state, normalize if isinstance(normalize, bool) else None)


def save_w2vkit(pretrained: Pretrained, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": {k: v.detach().cpu().contiguous() for k, v in pretrained.state_dict.items()},
        "config": {"model": to_dict(pretrained.cfg)},
    }
    if pretrained.normalize is not None:
        payload["audio"] = {"normalize": pretrained.normalize}
    torch.save(payload, path)


PRETRAINING_HEADS = ("quantizer.", "target_proj.", "context_proj.")
OBJECTIVE_HEADS = ("teacher.", "decoder.", "rq.", "rq_head.")
"""What `Data2Vec2Model` and `BestRQModel` add to the wav2vec 2.0 encoder's names."""


def encoder_only_prefixes(cfg: ModelConfig, state: dict[str, Tensor]) -> tuple[str, ...]:
    """Tensors an encoder-only checkpoint (HF `Wav2Vec2Model`/`ForCTC`) may lack: all pretraining
    heads (a head present in part is damage, not a format), and the mask embedding when the model
    never masks (HF then keeps none)."""

    def present(prefixes: tuple[str, ...]) -> bool:
        return any(key.startswith(prefixes) for key in state)

    optional: tuple[str, ...] = () if present(PRETRAINING_HEADS) else PRETRAINING_HEADS
    never_masks = cfg.masking.time_prob == 0 and cfg.masking.channel_prob == 0
    if never_masks and not present(("masker.",)):
        optional += ("masker.",)
    return optional


def load_weights(model: Wav2Vec2Model, state: dict[str, Tensor], *, source: str) -> list[str]:
    """Copy `state` into `model`; the one place that decides which tensors a checkpoint may lack.

    Every key and shape of `model` must be in `state`, except what `encoder_only_prefixes`
    allows (a whole pretraining head, or the mask embedding of a model that never masks): those
    keep the values `model` has. Returns their keys (empty when every tensor was loaded).
    """
    check_state_dict(
        model.cfg, state, source=source, optional_prefixes=encoder_only_prefixes(model.cfg, state)
    )
    missing, _ = model.load_state_dict(state, strict=False)  # unexpected keys: none, checked above
    return missing


def check_state_dict(
    cfg: ModelConfig,
    state: dict[str, Tensor],
    *,
    source: str,
    optional_prefixes: tuple[str, ...] = (),
) -> None:
    """Keys and shapes must equal those of `Wav2Vec2Model(cfg)`; keys under `optional_prefixes`
    (heads a format may lack, e.g. an HF `Wav2Vec2Model` has no quantizer) may be missing."""
    from w2vkit.model.wav2vec2 import Wav2Vec2Model

    with torch.device("meta"):  # shapes only, no memory or init cost
        expected = {k: tuple(v.shape) for k, v in Wav2Vec2Model(cfg).state_dict().items()}
    missing = [k for k in expected if k not in state and not k.startswith(optional_prefixes)]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(v.shape)} (model expects {expected[k]})"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else ""))
    if unexpected:
        problems.append(
            f"unexpected {', '.join(unexpected[:6])}" + (" ..." if len(unexpected) > 6 else "")
        )
    if wrong:
        problems.append(f"wrong shape {', '.join(wrong[:4])}")
    if problems:
        raise CheckpointError(
            f"{source}: weights do not fit the model its config describes: " + "; ".join(problems)
        )
