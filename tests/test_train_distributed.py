"""torchrun with 2 gloo processes: the same parameters as 1 process on the same global batch, and the
real `w2vkit pretrain` recipe under DDP (rank-0-only log and checkpoints).

The file is also the worker script: `python -m torch.distributed.run ... test_train_distributed.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_YAML, make_manifest, toy_train

from w2vkit import cli
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.sampler import BucketBatchSampler
from w2vkit.train import checkpoint, dist

ROOT = Path(__file__).resolve().parents[1]
# One utterance per batch, lengths 0.6-2.0 s: the ranks' sample sizes differ in every update, so only
# the all-reduced sample size gives the single-process result.
TOY = [
    "data.max_batch_size=1",
    "data.max_samples=32000",
    "data.max_batch_samples=32000",
    "train.log_interval=1",
]
MID_WINDOW = ["train.log_interval=2", "train.save_interval_steps=3", "optim.total_steps=4"]
STEPS, UPDATE_FREQ = (
    3,
    2,
)  # per process; the single process accumulates 2 * UPDATE_FREQ micro-batches


def _worker(manifest: Path, out: Path) -> None:
    dist.init(torch.device("cpu"))
    # 1. The loop around a toy model whose loss splits exactly over rows.
    toy_train(
        manifest, out / "ddp", f"train.max_steps={STEPS}", f"train.update_freq={UPDATE_FREQ}", *TOY
    )
    # 2. A checkpoint in the middle of a log window (update 3 of 2 + 2), resumed.
    for name, steps in (("straight", 4), ("split", 3), ("split", 4)):
        toy_train(manifest, out / name, f"train.max_steps={steps}", *TOY, *MID_WINDOW)
    # 3. The real recipe, 2 updates (it shuts the process group down when it ends).
    code = cli.main(
        [
            "pretrain",
            TINY_YAML,
            f"data.manifest_dir={manifest}",
            "data.min_samples=4000",
            "data.max_samples=8000",
            "data.max_batch_samples=16000",
            "train.max_steps=2",
            "train.log_interval=1",
            f"train.out_dir={out / 'recipe'}",
        ]
    )
    raise SystemExit(code)


@pytest.mark.distributed
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    manifest = make_manifest(tmp_path, num_files=16, valid_percent=0.0)
    sizes = AudioDataset(manifest / "train.tsv", min_samples=4000, max_samples=32000).sizes
    one, two = (
        BucketBatchSampler(
            sizes,
            max_batch_samples=32000,
            max_batch_size=1,
            required_batch_size_multiple=1,
            world_size=w,
        )
        for w in (1, 2)
    )
    # Precondition: rank r gets global batches r, r+2, ... of the very list one process walks through.
    assert len(one) == 2 * len(two) >= 2 * STEPS * UPDATE_FREQ

    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
        ),
        OMP_NUM_THREADS="1",
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(manifest),
        str(tmp_path),
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    single, _ = toy_train(
        manifest,
        tmp_path / "single",
        f"train.max_steps={STEPS}",
        f"train.update_freq={2 * UPDATE_FREQ}",
        *TOY,
    )
    ddp = checkpoint.load(tmp_path / "ddp" / checkpoint.LAST)
    assert ddp["progress"]["step"] == single.step == STEPS
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=0, atol=1e-6, msg=name)
    logged = [
        json.loads(line) for line in (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["num_updates"] for r in logged] == list(
        range(1, STEPS + 1)
    )  # rank 0 only, once per update

    # The window saved at update 3 holds both ranks' sums once: the resumed line at 4 is the same.
    straight, split = (
        [
            json.loads(line)
            for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()
        ]
        for name in ("straight", "split")
    )
    keys = ("num_updates", "loss", "sample_size", "batch_audio_sec", "lr")
    assert [[r[k] for k in keys] for r in split] == [[r[k] for k in keys] for r in straight]

    recipe = [
        json.loads(line)
        for line in (tmp_path / "recipe" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["num_updates"] for r in recipe if r["split"] == "train"] == [1, 2]
    assert checkpoint.load(tmp_path / "recipe" / checkpoint.LAST)["progress"]["step"] == 2
    assert done.stdout.count("world size 2") == 1


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))


def test_torchrun_with_one_process_starts_the_group_and_ddp(monkeypatch):
    import socket

    from torch import nn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**launcher, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    assert dist.is_launched()
    dist.init(torch.device("cpu"), timeout_minutes=1.0)
    try:
        assert torch.distributed.is_initialized() and dist.world_size() == 1
        assert torch.distributed.get_backend() == "gloo"
        model = dist.wrap_model(nn.Linear(2, 2), torch.device("cpu"), find_unused_parameters=False)
        assert isinstance(model, nn.parallel.DistributedDataParallel)
        assert float(dist.all_reduce_sum(torch.tensor([2.0]))) == 2.0
    finally:
        dist.shutdown()
    monkeypatch.delenv("MASTER_ADDR")
    assert not dist.is_launched()  # a stray WORLD_SIZE alone is no launcher
