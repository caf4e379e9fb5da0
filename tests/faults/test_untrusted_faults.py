"""Faults 19, 20, 21: crafted checkpoints and HF directories are refused before harm.

A numpy dtype rebuilt through BUILD state (segfault on an attacker-chosen pointer before), sizes
in config.json that drive allocation (terabytes, minutes), malformed or escaping weight indexes.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from w2vkit.config import ConfigError
from w2vkit.interop import ModelRecord, hf, read_model
from w2vkit.interop.safe_load import CheckpointError, load_torch_file
from w2vkit.model.config import tiny
from w2vkit.model.wav2vec2 import Wav2Vec2Model


def _craft_dtype_pickle(path: Path, name: bytes, state: tuple) -> None:
    """A torch zip checkpoint whose pickle is numpy.core.multiarray.scalar(dtype, bytes), the
    dtype being numpy.dtype(name) given `state` by BUILD (what a real scalar pickle does)."""
    torch.save({"x": 1}, path)
    with zipfile.ZipFile(path) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    data = (
        b"\x80\x02cnumpy._core.multiarray\nscalar\ncnumpy\ndtype\n"
        + pickle.dumps((name.decode(), False, True), protocol=2)[2:-1]
        + b"R"
        + pickle.dumps(state, protocol=2)[2:-1]
        + b"bc_codecs\nencode\n"
        + pickle.dumps(("AAAAAAAA", "latin1"), protocol=2)[2:-1]
        + b"R\x86R."
    )
    files[next(n for n in files if n.endswith("data.pkl"))] = data
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for n, content in files.items():
            archive.writestr(n, content)


LOAD = "from w2vkit.interop.safe_load import load_torch_file; print(load_torch_file({path!r}))"


@pytest.mark.parametrize(
    ("name", "state"),
    [
        (b"V8", (3, "|", None, ("a",), {"a": (None, 0)}, 8, 1, 16)),  # segfaulted before
        (b"f8", (3, "|", None, None, None, 8, 8, 0x3F)),  # object flags on a float
        (b"O8", (3, "|", None, None, None, -1, -1, 63)),  # object dtype
    ],
)
def test_fault19_numpy_dtype_through_build_state_is_refused_in_a_subprocess(tmp_path, name, state):
    path = tmp_path / "evil.pt"
    _craft_dtype_pickle(path, name, state)
    # A subprocess: a segfault must fail this test, not kill pytest.
    done = subprocess.run(
        [sys.executable, "-c", LOAD.format(path=str(path))],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        timeout=120,
    )
    assert done.returncode == 1, (done.returncode, done.stderr[-500:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"w2vkit.interop.safe_load.CheckpointError: {path}: refusing to load: ")
    assert "is not a plain numeric dtype" in last and "weights_only" not in last


def test_fault19_plain_numpy_scalars_still_load(tmp_path):
    """fairseq's extra_state holds numpy float64/int64 scalars: still read, values exact."""
    path = tmp_path / "scalars.pt"
    values = {"f8": np.float64(2.5), "i8": np.int64(-7), "f4": np.float32(0.25), "b": np.bool_(1)}
    torch.save(values, path)
    loaded = load_torch_file(path)
    assert loaded == values and {k: type(v) for k, v in loaded.items()} == {
        k: type(v) for k, v in values.items()
    }


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    model = Wav2Vec2Model(tiny())
    hf.save_hf(ModelRecord(model.cfg, model.state_dict()), tmp_path / "hf")
    return tmp_path / "hf"


def _edit_config(directory: Path, **changes) -> Path:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": 1_000_000, "conv_dim": [1_000_000] * 7},
         "hidden_size=1e+06 exceeds 16384, the most w2vkit loads"),
        ({"hidden_size": 20000}, "hidden_size=20000 exceeds 16384"),
        ({"num_hidden_layers": 200_000}, "num_hidden_layers=200000 exceeds 256"),
        ({"intermediate_size": 10**9}, "intermediate_size=1e+09 exceeds 65536"),
        ({"conv_dim": [64] * 7 + [10**6]}, "conv_dim[7]=1000000 is not a number up to 16384"),
        ({"conv_kernel": [10, 3, 3, 3, 3, 2, 10**7]}, "conv_kernel[6]=10000000 is not a number"),
        ({"conv_dim": [64] * 500}, "conv_dim must be a list of 1 to 64 numbers"),
        ({"vocab_size": 10**12}, "vocab_size=1e+12 exceeds 1048576"),
        ({"num_attention_heads": "many"}, "num_attention_heads='many' is not a number"),
    ],
)  # fmt: skip
def test_fault20_oversized_config_is_refused_before_building(hf_dir, changes, message):
    config = _edit_config(hf_dir, **changes)
    with pytest.raises(ConfigError) as caught:
        read_model(hf_dir)
    assert str(caught.value).startswith(f"{config}: {message}")


SHAPE_CHECK = """
import resource, sys
from w2vkit.interop import read_model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_model(sys.argv[1])
except Exception as err:
    print(type(err).__name__, err)
print("grew_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_fault20_weights_are_checked_against_the_config_before_allocation(hf_dir):
    """conv_dim = hidden_size = 16384 within bounds, weights of 64: no 1 GiB identity, no model."""
    _edit_config(hf_dir, hidden_size=16384, conv_dim=[16384] * 7, num_attention_heads=16)
    done = subprocess.run(
        [sys.executable, "-c", SHAPE_CHECK, str(hf_dir)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        timeout=120,
    )
    lines = done.stdout.strip().splitlines()
    assert lines[0] == (
        f"CheckpointError {hf_dir}: feature_projection.projection.weight (64, 64) does not fit "
        "the config (conv_dim = hidden_size = 16384)"
    ), done.stderr[-500:]
    assert int(lines[1].split()[1]) < 200 * 1024  # an eye(16384) alone is 1 GiB


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ("{not json", "not a valid HF weight index (Expecting property name"),
        ("[1, 2]", "not a valid HF weight index (list indices must be integers"),
        ('{"metadata": {}}', 'not a valid HF weight index (no "weight_map" key)'),
        ('{"weight_map": {"a": 3}}', "does not map tensor names to shard file names"),
        ('{"weight_map": {}}', "does not map tensor names to shard file names"),
        ('{"weight_map": {"a": "../outside.safetensors"}}',
         "shard '../outside.safetensors' lies outside"),
        ('{"weight_map": {"a": "/etc/passwd"}}', "shard '/etc/passwd' lies outside"),
    ],
)  # fmt: skip
def test_fault21_malformed_or_escaping_weight_index_is_refused(hf_dir, index, message):
    weights = hf_dir / "model.safetensors"
    state = {"a": torch.zeros(1)}
    save_file(state, str(hf_dir.parent / "outside.safetensors"))  # a real file, outside the dir
    weights.rename(hf_dir / "model-00001-of-00001.safetensors")
    (hf_dir / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError) as caught:
        read_model(hf_dir)
    text = str(caught.value)
    assert text.startswith(f"{hf_dir / 'model.safetensors.index.json'}: ") and message in text
    assert "\n" not in text


def test_fault21_a_valid_sharded_index_still_loads(hf_dir):
    reference = read_model(hf_dir).state_dict
    weights = hf_dir / "model.safetensors"
    weights.rename(hf_dir / "model-00001-of-00001.safetensors")
    names = json.loads(json.dumps(list(hf.to_hf_state(tiny(), reference))))
    index = {"weight_map": dict.fromkeys(names, "model-00001-of-00001.safetensors")}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = read_model(hf_dir).state_dict
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
