"""torchrun with 2 gloo processes: `w2vkit pretrain` with `objective: data2vec2` and `best_rq`
under DDP (frozen teacher and quantizer: no unused-parameter stall, the EMA stepped once per
update, rank-0-only log and checkpoint).

The file is also the worker script:
`python -m torch.distributed.run ... THIS_FILE MANIFEST OUT OBJECTIVE`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_YAML, make_manifest

from w2vkit import cli
from w2vkit.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = {
    "data2vec2": [
        "data2vec2.num_clones=2",
        "data2vec2.average_top_k_layers=2",
        "data2vec2.decoder_dim=32",
        "data2vec2.decoder_groups=4",
        "data2vec2.decoder_layers=2",
    ],
    "best_rq": ["best_rq.codebook_size=64", "best_rq.num_mels=40"],
}


def _tiny_yaml(directory: Path) -> str:
    """tiny.yaml without its wav2vec 2.0 `loss` section, which other objectives do not have."""
    raw = yaml.safe_load(Path(TINY_YAML).read_text())
    raw.pop("loss")
    path = directory / f"tiny_objective_{os.environ.get('RANK', '0')}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _worker(manifest: Path, out: Path, objective: str) -> None:
    # One recipe run per torchrun: the recipe shuts the process group down when it ends.
    code = cli.main(
        [
            "pretrain",
            _tiny_yaml(out),
            f"objective={objective}",
            *OBJECTIVES[objective],
            f"data.manifest_dir={manifest}",
            "data.min_samples=4000",
            "data.max_samples=8000",
            "data.max_batch_samples=16000",
            "train.max_steps=3",
            "train.log_interval=1",
            "train.validate_interval_steps=0",
            "model.transformer.layerdrop_prob=0.0",
            f"train.out_dir={out / objective}",
        ]
    )
    raise SystemExit(code)


@pytest.mark.distributed
def test_two_processes_train_both_objectives(tmp_path):
    manifest = make_manifest(tmp_path, num_files=16, valid_percent=0.0)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
        ),
        OMP_NUM_THREADS="1",
    )
    for objective in OBJECTIVES:
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
            objective,
        ]
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=240, check=False
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert done.stdout.count("world size 2") == 1  # rank 0 only
    for objective in OBJECTIVES:
        log = (tmp_path / objective / "train_log.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in log]
        assert [r["num_updates"] for r in records] == [1, 2, 3]
        assert all(r["gnorm"] > 0 for r in records)
        saved = checkpoint.load(tmp_path / objective / checkpoint.LAST)
        assert saved["progress"]["step"] == 3
        if objective == "data2vec2":
            state = saved["model"]
            assert int(state["teacher._extra_state"]) == 2
            assert not torch.equal(
                state["teacher.encoder.layers.0.fc1.weight"], state["encoder.layers.0.fc1.weight"]
            )


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
