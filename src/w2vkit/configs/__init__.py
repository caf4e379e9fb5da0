"""The configs shipped inside the package: `pretrain/NAME.yaml` and `finetune/NAME.yaml`.

`w2vkit pretrain tiny` and `w2vkit pretrain path/to/my.yaml` both work (likewise
`w2vkit finetune cpu`): a name is looked up here, so an installed wheel runs without a source
checkout. In a checkout, `configs/` at the top of the repository points at this folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from w2vkit.config import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent
PRETRAIN_DIR = CONFIG_DIR / "pretrain"
FINETUNE_DIR = CONFIG_DIR / "finetune"
Kind = Literal["pretrain", "finetune"]


def config_names(kind: Kind = "pretrain") -> list[str]:
    """Names `w2vkit KIND NAME` accepts, sorted: `base_ls960`, `large_lv60k`, `tiny`, ..."""
    return sorted(path.stem for path in (CONFIG_DIR / kind).glob("*.yaml"))


def find_config(name_or_path: str | Path, kind: Kind = "pretrain") -> Path:
    """An existing YAML file as it is, else the shipped `kind` config of that name.

    A bare word (no folder, no `.yaml`) that names no shipped config, or a path that does not
    exist, is a ConfigError listing the shipped names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    known = ", ".join(config_names(kind))
    if path.parent == Path(".") and not path.suffix:
        shipped = CONFIG_DIR / kind / f"{path.name}.yaml"
        if shipped.is_file():
            return shipped
        raise ConfigError(
            f"unknown {kind} config name {str(name_or_path)!r}: give a YAML file or one of {known}"
        )
    raise ConfigError(
        f"config file {path} does not exist (shipped {kind} configs, usable by name: {known})"
    )


__all__ = ["CONFIG_DIR", "FINETUNE_DIR", "PRETRAIN_DIR", "config_names", "find_config"]
