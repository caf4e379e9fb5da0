"""Issue 28 items 6 and 10: files that pass the pickle scan but would exhaust the machine or crash
later (a billion-laughs config, deep nesting, compressed zip members, conv layers multiplied past
any model, meta/sparse/quantized weights) are refused in one line naming what is wrong."""

from __future__ import annotations

import pickle
import time
import zipfile
from pathlib import Path

import pytest
import torch

from w2vkit.config import ConfigError
from w2vkit.interop.fairseq import parse_conv_layers
from w2vkit.interop.safe_load import (
    MAX_DEPTH,
    MAX_NODES,
    CheckpointError,
    load_torch_file,
    to_plain,
)


def _with_data_pkl(path: Path, data: bytes, compress: dict[str, int] | None = None) -> None:
    """Rewrite a torch zip checkpoint with `data` as its pickle, members compressed per `compress`."""
    with zipfile.ZipFile(path) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    if data:
        files[next(n for n in files if n.endswith("data.pkl"))] = data
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            kind = next((c for suffix, c in (compress or {}).items() if name.endswith(suffix)), 0)
            archive.writestr(name, content, compress_type=kind)


def test_billion_laughs_config_is_refused_quickly(tmp_path):
    laughs: list = [0] * 10
    for _ in range(9):
        laughs = [laughs] * 10  # 10^10 values once copied out, a few hundred bytes pickled
    torch.save({"cfg": {"model": laughs}, "model": {}}, tmp_path / "laughs.pt")
    assert (tmp_path / "laughs.pt").stat().st_size < 2048
    start = time.perf_counter()
    payload = load_torch_file(tmp_path / "laughs.pt")
    with pytest.raises(CheckpointError) as err:
        to_plain(payload["cfg"])
    assert str(err.value) == (
        f"refusing the checkpoint's config: more than {MAX_NODES} values (one list referenced "
        "many times?): a crafted file"
    )
    assert time.perf_counter() - start < 30  # past 60 s (and 2.6 GB) before


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.pt"
    torch.save({"x": 1}, path)
    depth = 200_000
    _with_data_pkl(path, b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")
    with pytest.raises(CheckpointError) as err:
        load_torch_file(path)
    assert str(err.value) == (
        f"{path}: refusing to load: containers nest deeper than {MAX_DEPTH} levels: a crafted file"
    )
    shallow = [[[1]]]
    assert to_plain(shallow) == shallow


@pytest.mark.parametrize("member", ["data.pkl", "data/0"])
def test_compressed_zip_members_are_refused_before_decompression(tmp_path, member):
    path = tmp_path / "deflated.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    _with_data_pkl(path, b"", compress={member: zipfile.ZIP_DEFLATED})
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member))
    with pytest.raises(CheckpointError) as err:
        load_torch_file(path)
    assert str(err.value) == (
        f"{path}: refusing to load: zip member {info.filename} is compressed "
        f"({info.compress_size} bytes declaring {info.file_size}); torch.save never compresses, "
        "so this file was crafted or rewritten"
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: torch.zeros(4, device="meta"), "is a meta tensor (a shape with no values)"),
        (
            lambda: torch.sparse_coo_tensor(torch.tensor([[0, 1]]), torch.ones(2), (4,)),
            "is torch.sparse_coo (w2vkit weights are dense)",
        ),
        (
            lambda: torch.quantize_per_tensor(torch.zeros(4), 0.1, 0, torch.qint8),
            "is quantized (torch.qint8): dequantize it",
        ),
    ],
)
def test_weights_without_plain_values_are_refused(tmp_path, make, message):
    path = tmp_path / "w.pt"
    torch.save({"model": {"encoder.weight": make(), "ok": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError) as err:
        load_torch_file(path)
    assert str(err.value) == f"{path}: refusing to load: tensor model.encoder.weight {message}"


def test_conv_layers_whose_product_is_huge_are_refused():
    text = "[(512, 10, 5)] * 9999 * 9999"  # each factor was capped, not the product
    with pytest.raises(ConfigError, match=r"^cfg.model.conv_feature_layers: .* is not a list of"):
        parse_conv_layers(text, where="cfg.model.conv_feature_layers")
    with pytest.raises(ConfigError):
        parse_conv_layers("[(1, 2, 2)] * 999 + [(1, 2, 2)] * 999", where="x")
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4", where="x") == [
        (512, 10, 5), *[(512, 3, 2)] * 4,
    ]  # fmt: skip


def test_a_plain_pickle_still_loads(tmp_path):
    torch.save({"model": {"w": torch.ones(3)}, "cfg": {"a": [1, 2]}}, tmp_path / "ok.pt")
    payload = load_torch_file(tmp_path / "ok.pt")
    assert to_plain(payload["cfg"]) == {"a": [1, 2]}
    assert pickle.dumps(payload["model"]["w"].tolist()) == pickle.dumps([1.0, 1.0, 1.0])
