"""Untrusted checkpoints: malicious pickles are refused before anything runs; damage is reported."""

from __future__ import annotations

import argparse
import enum
import os
import pickle
import sys
import types
import zipfile

import pytest
import torch

from w2vkit.interop import read_model
from w2vkit.interop.safe_load import (
    CheckpointError,
    Record,
    load_torch_file,
    referenced_globals,
    to_plain,
)


class _RunsShell:
    """Unpickling this calls os.system (pickled as posix.system on Linux)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize(
    "payload_cls, refused", [(_RunsShell, "system"), (_RunsEval, "builtins.eval")]
)
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_checkpoint_is_refused_and_runs_nothing(
    tmp_path, payload_cls, refused, zip_format
):
    marker = tmp_path / "pwned"
    checkpoint = {
        "model": {"w": torch.zeros(2)},
        "cfg": {"model": {}},
        "extra": payload_cls(marker),
    }
    torch.save(checkpoint, tmp_path / "evil.pt", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match=f"refusing to load: .*{refused}"):
        read_model(tmp_path / "evil.pt")
    assert not marker.exists()


def test_malicious_pytorch_model_bin_in_hf_directory_is_refused(tmp_path):
    import json

    from w2vkit.interop.hf import hf_config_from_w2vkit
    from w2vkit.model.config import tiny

    marker = tmp_path / "pwned"
    (tmp_path / "config.json").write_text(json.dumps(hf_config_from_w2vkit(tiny())))
    torch.save({"wav2vec2.masked_spec_embed": _RunsShell(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_model(tmp_path)
    assert not marker.exists()


def test_protocol_4_stack_global_is_refused(tmp_path):
    """torch.save writes protocol 2; a hand-made zip checkpoint with STACK_GLOBAL is refused."""
    torch.save({"model": {}}, tmp_path / "ok.pt")
    with (
        zipfile.ZipFile(tmp_path / "ok.pt") as src,
        zipfile.ZipFile(tmp_path / "p4.pt", "w") as dst,
    ):
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps(argparse.Namespace(a=1), protocol=4)
            dst.writestr(item, data)
    with pytest.raises(CheckpointError, match="STACK_GLOBAL") as refused:
        load_torch_file(tmp_path / "p4.pt")
    # A refusal of an intact file must not send the user off to re-download a "corrupt" one.
    assert "corrupt" not in str(refused.value) and "truncated" not in str(refused.value)


def test_config_objects_become_inert_records(tmp_path):
    """An argparse Namespace (fairseq's pre-2021 `args`) loads as an inert Record of plain data."""
    namespace = argparse.Namespace(arch="wav2vec2", latent_temp="(2,0.5,0.999995)", lr=[5e-4])
    torch.save({"args": namespace, "model": {"mask_emb": torch.ones(3)}}, tmp_path / "ns.pt")
    assert referenced_globals(tmp_path / "ns.pt")[0] == "argparse.Namespace"
    loaded = load_torch_file(tmp_path / "ns.pt")
    assert isinstance(loaded["args"], Record) and loaded["args"].global_name == "argparse.Namespace"
    assert to_plain(loaded["args"]) == {
        "arch": "wav2vec2",
        "latent_temp": "(2,0.5,0.999995)",
        "lr": [5e-4],
    }
    assert torch.equal(loaded["model"]["mask_emb"], torch.ones(3))


def test_enum_members_become_their_values(tmp_path, monkeypatch):
    """An enum from a fairseq module pickles as `Choice("static")`; it loads as "static"."""

    class Choice(enum.Enum):
        STATIC = "static"

    Choice.__module__, Choice.__qualname__ = "fairseq", "Choice"
    module = types.ModuleType("fairseq")
    module.Choice = Choice
    monkeypatch.setitem(sys.modules, "fairseq", module)
    torch.save({"cfg": {"model": {"mask_selection": Choice.STATIC}}}, tmp_path / "enum.pt")
    monkeypatch.delitem(sys.modules, "fairseq")
    assert referenced_globals(tmp_path / "enum.pt") == ["fairseq.Choice"]
    loaded = to_plain(load_torch_file(tmp_path / "enum.pt"))
    assert loaded == {"cfg": {"model": {"mask_selection": "static"}}}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a PyTorch checkpoint"),
        (b"hello world", "not a PyTorch checkpoint"),
        (b"PK\x03\x04garbage", "truncated or corrupt"),
    ],
)
def test_not_a_checkpoint_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_model(tmp_path / "x.pt")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, zip_format):
    torch.save(
        {"model": {"w": torch.randn(1000)}, "config": {"model": {}}},
        tmp_path / "full.pt",
        _use_new_zipfile_serialization=zip_format,
    )
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) - 1500])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_model(tmp_path / "cut.pt")


def test_missing_file_and_bare_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_model(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="without config.json"):
        read_model(tmp_path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_the_opcode_scan_refuses_before_anything_is_unpickled(tmp_path, monkeypatch, zip_format):
    """torch's weights-only load refuses these files too, so the scan's own refusal is proven by the
    unpickler never being reached (and by the message, which names the global)."""
    torch.save(
        {"model": {}, "extra": _RunsShell(tmp_path / "pwned")},
        tmp_path / "evil.pt",
        _use_new_zipfile_serialization=zip_format,
    )
    unpickled = []

    def record(*args, **kwargs):
        unpickled.append(args)
        raise AssertionError("torch.load reached")

    monkeypatch.setattr(torch, "load", record)
    monkeypatch.setattr(torch.serialization, "load", record)
    monkeypatch.setattr(pickle, "Unpickler", record)
    message = (
        r"evil\.pt: refusing to load: its pickle references \w+\.system, which is not a tensor, "
        r"container or known config type \(loading it could run code\)$"
    )
    with pytest.raises(CheckpointError, match=message):
        load_torch_file(tmp_path / "evil.pt")
    assert unpickled == []


def _zip_checkpoint_with_pickle(tmp_path, data: bytes):
    """A torch zip checkpoint whose data.pkl is replaced by `data`."""
    torch.save({"model": {}}, tmp_path / "ok.pt")
    with (
        zipfile.ZipFile(tmp_path / "ok.pt") as src,
        zipfile.ZipFile(tmp_path / "hand.pt", "w") as dst,
    ):
        for item in src.infolist():
            is_pickle = item.filename.endswith("data.pkl")
            dst.writestr(item, data if is_pickle else src.read(item.filename))
    return tmp_path / "hand.pt"


@pytest.mark.parametrize(
    "opcode, data",
    [("INST", b"(i__main__\nThing\n."), ("OBJ", b"(c__main__\nThing\no.")],
)
def test_protocol_0_and_1_object_opcodes_are_refused(tmp_path, opcode, data):
    path = _zip_checkpoint_with_pickle(tmp_path, data)
    message = (
        f"hand.pt: refusing to load: pickle opcode {opcode} builds objects from computed names, "
        "which no torch checkpoint needs$"
    )
    with pytest.raises(CheckpointError, match=message):
        load_torch_file(path)


def test_python_2_names_are_mapped_as_torch_maps_them(tmp_path):
    """Protocol 2 pickles name builtins the Python 2 way; `__builtin__.long` is `builtins.int`."""
    path = _zip_checkpoint_with_pickle(tmp_path, b"\x80\x02c__builtin__\nlong\nq\x00.")
    assert referenced_globals(path) == ["builtins.int"]


def test_every_refused_global_is_named(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"a": _RunsShell(marker), "b": _RunsEval(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"references \w+\.system, builtins\.eval, which"):
        load_torch_file(tmp_path / "evil.pt")


def test_numpy_scalars_load_next_to_config_records(tmp_path):
    """fairseq's `extra_state` holds numpy scalars; they need numpy's dtype classes allowed too."""
    import numpy as np

    extra = {"best": np.float64(0.25), "step": np.int64(7)}
    torch.save({"args": argparse.Namespace(lr=0.1), "extra_state": extra}, tmp_path / "np.pt")
    assert "numpy.dtype" in referenced_globals(tmp_path / "np.pt")
    loaded = to_plain(load_torch_file(tmp_path / "np.pt"))
    assert loaded == {"args": {"lr": 0.1}, "extra_state": {"best": 0.25, "step": 7}}


def test_omegaconf_nodes_in_submodules_become_their_content(tmp_path, monkeypatch):
    """omegaconf pickles `omegaconf.dictconfig.DictConfig` (a submodule) with `_content`, and
    `omegaconf.nodes.AnyNode` with `_val`; a fairseq object with slots keeps both kinds of state."""
    from w2vkit.interop import safe_load

    classes = {}
    for module_name, class_name, slots in [
        ("omegaconf.dictconfig", "DictConfig", ()),
        ("omegaconf.nodes", "AnyNode", ()),
        ("fairseq.dataclass", "Slotted", ("slot", "__dict__")),
    ]:
        cls = type(class_name, (), {"__slots__": slots} if slots else {})
        cls.__module__, cls.__qualname__ = module_name, class_name
        module = types.ModuleType(module_name)
        setattr(module, class_name, cls)
        parent = module_name.split(".")[0]
        monkeypatch.setitem(sys.modules, parent, sys.modules.get(parent, types.ModuleType(parent)))
        monkeypatch.setitem(sys.modules, module_name, module)
        classes[class_name] = cls
    node, tree, slotted = classes["AnyNode"](), classes["DictConfig"](), classes["Slotted"]()
    node.__dict__["_val"] = 16000
    tree.__dict__["_content"] = {"sample_rate": node}
    slotted.slot, slotted.attr, slotted._cache = 1, 2, 3  # private attributes are not config
    torch.save({"cfg": tree, "obj": slotted}, tmp_path / "cfg.pt")
    for module_name in ("omegaconf.dictconfig", "omegaconf.nodes", "fairseq.dataclass"):
        monkeypatch.delitem(sys.modules, module_name)  # loading must not need them
    monkeypatch.setattr(safe_load, "_RECORD_TYPES", {})  # stand-in classes are made afresh
    loaded = load_torch_file(tmp_path / "cfg.pt")
    assert type(loaded["cfg"]).__name__ == "DictConfig"
    assert loaded["cfg"].global_name == "omegaconf.dictconfig.DictConfig"
    assert type(load_torch_file(tmp_path / "cfg.pt")["cfg"]) is type(loaded["cfg"])  # one per name
    assert to_plain(loaded) == {"cfg": {"sample_rate": 16000}, "obj": {"slot": 1, "attr": 2}}


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\x02\xffgarbage", r"hand\.pt: truncated or corrupt checkpoint \(.+\)$"),
        (None, r"hand\.pt: a zip file without data\.pkl, not a torch checkpoint$"),
    ],
    ids=["bad-opcode", "no-data-pkl"],
)
def test_damaged_zip_checkpoints_are_named(tmp_path, data, message):
    if data is None:
        with zipfile.ZipFile(tmp_path / "hand.pt", "w") as archive:
            archive.writestr("archive/version", "3\n")
        path = tmp_path / "hand.pt"
    else:
        path = _zip_checkpoint_with_pickle(tmp_path, data)
    with pytest.raises(CheckpointError, match=message):
        referenced_globals(path)


def test_torch_still_refuses_a_global_the_scan_lets_through(tmp_path, monkeypatch):
    """The second gate: were the scan's allowlist wrong, torch's weights-only load still refuses."""
    from w2vkit.interop import safe_load

    marker = tmp_path / "pwned"
    torch.save({"x": _RunsShell(marker)}, tmp_path / "evil.pt")
    names = frozenset(referenced_globals(tmp_path / "evil.pt"))
    monkeypatch.setattr(safe_load, "_torch_allowed", lambda: names)  # the scan lets it through
    with pytest.raises(
        CheckpointError, match=r"(?s)evil\.pt: refusing to load: .*GLOBAL \w+\.system"
    ):
        load_torch_file(tmp_path / "evil.pt")
    assert not marker.exists()
