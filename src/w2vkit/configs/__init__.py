"""The pretraining configs shipped inside the package: `pretrain/NAME.yaml`.

`w2vkit pretrain tiny` and `w2vkit pretrain path/to/my.yaml` both work: a name is looked up here,
so an installed wheel runs without a source checkout. In a checkout, `configs/` at the top of the
repository points at this folder.
"""

from __future__ import annotations

from pathlib import Path

from w2vkit.config import ConfigError

PRETRAIN_DIR = Path(__file__).resolve().parent / "pretrain"


def pretrain_config_names() -> list[str]:
    """Names `w2vkit pretrain NAME` accepts, sorted: `base_ls960`, `large_lv60k`, `tiny`, ..."""
    return sorted(path.stem for path in PRETRAIN_DIR.glob("*.yaml"))


def find_pretrain_config(name_or_path: str | Path) -> Path:
    """An existing YAML file as it is, else the shipped config of that name.

    A bare word (no folder, no `.yaml`) that names no shipped config, or a path that does not
    exist, is a ConfigError listing the shipped names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    known = ", ".join(pretrain_config_names())
    if path.parent == Path(".") and not path.suffix:
        shipped = PRETRAIN_DIR / f"{path.name}.yaml"
        if shipped.is_file():
            return shipped
        raise ConfigError(
            f"unknown config name {str(name_or_path)!r}: give a YAML file or one of {known}"
        )
    raise ConfigError(
        f"config file {path} does not exist (shipped configs, usable by name: {known})"
    )


__all__ = ["PRETRAIN_DIR", "find_pretrain_config", "pretrain_config_names"]
