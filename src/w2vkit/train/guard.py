"""Checks around the training loop that keep a field run from losing work or stopping for good.

Each is one call in the loop or the recipe:
- `strict_record`: a log record with NaN/Inf replaced by null and the keys listed, so that
  `train_log.jsonl` stays strict JSON.
- `warn_nonfinite_valid`: names what may have caused a NaN validation loss.
- `check_resume_config`: a run directory resumed with a model of other shapes is refused with
  what differs, before `load_state_dict` fails on it.
- `optimisation_changes`: a resume with other optimisation settings (`optim.*`,
  `train.update_freq`) goes on with them, and says which.
"""

from __future__ import annotations

import math

import torch

from w2vkit.config import ConfigError, flatten, from_dict, to_dict
from w2vkit.model.config import ModelConfig


def strict_record(record: dict) -> dict:
    """`record` with non-finite floats as None and their keys under "nonfinite" (strict JSON)."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return record
    flagged = [*record.get("nonfinite", []), *bad]
    return {**{k: (None if k in bad else v) for k, v in record.items()}, "nonfinite": flagged}


def warn_nonfinite_valid(record: dict, step: int, loader: object) -> str | None:
    """A warning for a non-finite validation loss, naming the validation files that failed to
    decode (when `loader` keeps them: a `ResumableLoader`'s sampler `failures` and `path_of`)."""
    loss = record.get("loss")
    if loss is None or math.isfinite(loss):
        return None
    failures = getattr(getattr(loader, "sampler", None), "failures", None)
    path_of = getattr(loader, "path_of", None)
    named = ""
    if failures is not None and path_of is not None:
        named = ", ".join(str(path_of(i)) for i in sorted(failures.reasons)[:4])
    suspects = f"; validation files that failed to decode: {named}" if named else ""
    return (
        f"warning: validation loss at update {step} is {loss}: logged as null, and "
        f"checkpoint_best.pt is not updated from it{suspects}"
    )


def check_resume_config(saved: dict, now: ModelConfig, *, source: str) -> list[str]:
    """Refuse a resume whose model has other parameter shapes than the checkpoint's; returns
    notes for model changes that keep the shapes (dropout, masking), which resume fine."""
    before = from_dict(ModelConfig, saved, where="model")
    if before == now:
        return []
    old, new = flatten({"model": to_dict(before)}), flatten({"model": to_dict(now)})
    changed = [
        f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    if _shapes(before) != _shapes(now):
        raise ConfigError(
            f"{source} was trained with another model: {'; '.join(changed[:6])}. Resume "
            "without these model.* overrides, or start a new run in another train.out_dir"
        )
    return [f"model changed on resume: {c}" for c in changed]


OPTIMISATION = ("optim.", "train.update_freq")
"""Config keys (prefixes) of the optimisation, which a resumed run may change but must name."""


def optimisation_changes(saved: dict, now: dict) -> list[str]:
    """Notes naming each optimisation setting of config `now` that differs from the checkpoint's
    config `saved` (both resolved config dicts); the resumed run goes on with the new values."""
    old, new = flatten(saved), flatten(now)
    keys = sorted(k for k in set(old) | set(new) if k.startswith(OPTIMISATION))
    return [
        f"{k} changed on resume: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now (the run "
        "goes on with the new value)"
        for k in keys
        if old.get(k) != new.get(k)
    ]


def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    from w2vkit.model.wav2vec2 import Wav2Vec2Model

    with torch.device("meta"):  # shapes only, no memory
        return {k: tuple(v.shape) for k, v in Wav2Vec2Model(cfg).state_dict().items()}


__all__ = [
    "check_resume_config",
    "optimisation_changes",
    "strict_record",
    "warn_nonfinite_valid",
]
