"""`w2vkit pretrain` from shards: served by a real HTTP server and by an S3-compatible one (moto),
a run SIGKILLed mid-epoch and resumed ends with the weights of an uninterrupted run (1 and 2
DataLoader workers), two torchrun "nodes" read disjoint shards and resume exactly, and CTC
fine-tuning reads its transcripts from the shards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_YAML, make_letter_corpus, make_manifest
from shard_servers import serve_http

from w2vkit import cli
from w2vkit.interop import ModelRecord, save_w2vkit
from w2vkit.model.config import tiny
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.train import checkpoint

SMALL = [
    "data.min_samples=4000",
    "data.max_samples=8000",
    "data.max_batch_samples=24000",
    "train.log_interval=2",
    "train.validate_interval_steps=4",
    "optim.warmup_steps=2",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_shards")
    manifest = make_manifest(root, num_files=24, valid_percent=0.25)
    assert cli.main(["shard", str(manifest), "--out", str(root / "out"), "--shard-size", "3s"]) == 0
    return root / "out"


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(out / checkpoint.LAST)["model"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def _trained(out: Path, steps: int) -> None:
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["num_updates"] == steps
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)


def test_pretraining_streams_shards_from_a_local_http_server(shards, tmp_path):
    with serve_http(shards) as (url, sent):
        args = ["pretrain", TINY_YAML, f"data.shards={url}", *SMALL, "data.num_workers=2"]
        assert cli.main([*args, "train.max_steps=4", f"train.out_dir={tmp_path}"]) == 0
    _trained(tmp_path, 4)
    index = json.loads((shards / "train" / "index.json").read_text())
    fetched = {p: n for p, n in sent.items() if p.startswith("/train/shard-")}
    assert fetched  # shards came over HTTP, each whole and once
    sizes = {f"/train/{s['name']}": s["bytes"] for s in index["shards"]}
    assert all(n == sizes[p] for p, n in fetched.items())


@pytest.mark.slow
def test_pretraining_streams_shards_from_an_s3_compatible_server(shards, tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for key, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir("corpus")
        fs.put(str(shards), "corpus/shards", recursive=True)
        args = ["pretrain", TINY_YAML, "data.shards=s3://corpus/shards", *SMALL]
        assert cli.main([*args, "train.max_steps=2", f"train.out_dir={tmp_path}"]) == 0
    finally:
        server.stop()
    _trained(tmp_path, 2)


def _pretrain_command(shards: str, out: Path, workers: int, steps: int) -> list[str]:
    return [
        "w2vkit",
        "pretrain",
        TINY_YAML,
        f"data.shards={shards}",
        *SMALL,
        f"data.num_workers={workers}",
        f"train.max_steps={steps}",
        f"optim.total_steps={steps}",
        "train.save_interval_steps=3",
        "train.keep_interval_checkpoints=1",
        f"train.out_dir={out}",
    ]


def _wait_for_checkpoint(out: Path, process: subprocess.Popen) -> None:
    """Until the run has saved once (the first save is at update 3 of 10, mid-epoch)."""
    deadline = time.monotonic() + 240
    while not (out / checkpoint.LAST).is_file():
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_one(
    shards, tmp_path, workers
):
    steps = 10  # the train split makes 5-6 batches an epoch: step 3 is mid-epoch
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _start(_pretrain_command(str(shards), straight, workers, steps)).wait(280) == 0
    process = _start(_pretrain_command(str(shards), killed, workers, steps))
    try:
        _wait_for_checkpoint(killed, process)
    finally:
        _kill_group(process)
    assert checkpoint.load(killed / checkpoint.LAST)["progress"]["step"] < steps
    assert _start(_pretrain_command(str(shards), killed, workers, steps)).wait(280) == 0
    _same_weights(straight, killed)


def _start(args: list[str]) -> subprocess.Popen:
    """`python -m ARGS` in its own session, on one thread (its floating-point sums are then the
    same in every run, whatever the machine's load)."""
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a run and its DataLoader workers at once, as when its machine dies."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(urls: list[str], out: Path, steps: int) -> list[subprocess.Popen]:
    """Two torchrun "nodes" of one process each, meeting at a c10d rendezvous on localhost."""
    port = _free_port()
    rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d"]
    rendezvous += ["--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", out.name]
    return [
        _start(["torch.distributed.run", *rendezvous, "-m", *_pretrain_command(url, out, 0, steps)])
        for url in urls
    ]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_read_disjoint_shards_over_http_and_resume_exactly_after_one_is_killed(
    shards, tmp_path
):
    steps = 6
    with serve_http(shards) as (url_a, sent_a), serve_http(shards) as (url_b, sent_b):
        straight = tmp_path / "straight"
        assert [p.wait(timeout=280) for p in _nodes([url_a, url_b], straight, steps)] == [0, 0]
        read_a = {p for p in sent_a if p.startswith("/train/shard-")}
        read_b = {p for p in sent_b if p.startswith("/train/shard-")}
        assert read_a and read_b and not read_a & read_b  # each node its own shards
        killed = tmp_path / "killed"
        nodes = _nodes([url_a, url_b], killed, steps)
        try:
            _wait_for_checkpoint(killed, nodes[0])
        finally:
            _kill_group(nodes[1])  # node B dies; the job with it
            _kill_group(nodes[0])
        assert checkpoint.load(killed / checkpoint.LAST)["progress"]["step"] < steps
        assert [p.wait(timeout=280) for p in _nodes([url_a, url_b], killed, steps)] == [0, 0]
    _same_weights(straight, killed)


def test_finetuning_streams_labelled_shards_and_resumes_exactly(tmp_path):
    make_letter_corpus(tmp_path / "data", {"train": 8, "valid": 3})
    torch.manual_seed(0)
    save_w2vkit(ModelRecord(tiny(), Wav2Vec2Model(tiny()).state_dict()), tmp_path / "init.pt")
    shards = tmp_path / "shards"
    assert (
        cli.main(["shard", str(tmp_path / "data"), "--out", str(shards), "--shard-size", "2s"]) == 0
    )
    assert (shards / "dict.ltr.txt").read_text() == (tmp_path / "data" / "dict.ltr.txt").read_text()

    def finetune(out: str, steps: int) -> int:
        return cli.main(
            [
                "finetune", "--init-from", str(tmp_path / "init.pt"), "preset=cpu",
                f"data.shards={shards}", f"train.out_dir={tmp_path / out}",
                "data.max_batch_samples=40000", "ctc.freeze_encoder_steps=2", "optim.total_steps=6",
                "train.validate_interval_steps=3", "train.save_interval_steps=0",
                "train.log_interval=1", f"train.max_steps={steps}",
            ]
        )  # fmt: skip

    assert finetune("whole", 6) == 0
    assert finetune("split", 4) == 0
    assert finetune("split", 6) == 0  # resumes at 4
    records = (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()
    valid = [json.loads(r) for r in records if '"valid"' in r]
    assert valid and all("wer" in r for r in valid)
    _same_weights(tmp_path / "whole", tmp_path / "split")
