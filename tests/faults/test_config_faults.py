"""Fault 15: a seed the run cannot use is refused when the config is read, not at update 1."""

from __future__ import annotations

import fault_runs as runs
import pytest

from w2vkit.config import ConfigError
from w2vkit.pretrain.registry import build_config


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64 + 1])
def test_fault15_unusable_seed_is_a_config_error(seed):
    with pytest.raises(ConfigError, match=rf"^train\.seed: must be in \[0, 2\*\*32\), got {seed}$"):
        build_config([{"train": {"seed": seed}}])


def test_fault15_seed_bounds_through_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert runs.pretrain(tmp_path / "no-manifest-needed", out, "train.seed=-1") == 2
    assert "train.seed: must be in [0, 2**32), got -1" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    assert build_config([{"train": {"seed": 2**32 - 1}}]).train.seed == 2**32 - 1
