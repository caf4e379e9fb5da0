"""HuBERT through the real commands: `w2vkit targets` writes one label line per manifest row,
training on synthetic speech lowers the loss, an interrupted run resumes exactly, and two gloo
processes train it under DDP.

The file is also the DDP worker script: `python -m torch.distributed.run ... test_hubert_train.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from w2vkit import cli, load_model
from w2vkit.data.manifest import read_manifest
from w2vkit.pretrain.hubert import kmeans
from w2vkit.pretrain.hubert.mfcc import mfcc_features
from w2vkit.train import checkpoint, dist

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = 8


TINY_HUBERT = f"""# the tiny model as a HuBERT run on 100 Hz MFCC labels of {CLUSTERS} clusters
objective: hubert
model: {{preset: tiny, masking: {{time_prob: 0.8}}}}
hubert: {{num_classes: [{CLUSTERS}], feature_penalty_weight: 0.0}}
data: {{label_rate: 100, num_workers: 0, required_batch_size_multiple: 1}}
optim: {{lr: 3.0e-3, warmup_steps: 30}}
train: {{precision: fp32, log_interval: 10}}
"""


def _hubert_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    """The tiny HuBERT recipe (`TINY_HUBERT`, written beside the manifests) on `manifest`."""
    recipe = manifest / "tiny_hubert.yaml"
    if not recipe.exists():
        recipe.write_text(TINY_HUBERT)
    return [
        "pretrain",
        str(recipe),
        f"data.manifest_dir={manifest}",
        "data.min_samples=4000",
        "data.max_samples=8000",
        "data.max_batch_samples=32000",
        f"train.out_dir={out}",
        *extra,
    ]


@pytest.fixture(scope="module")
def labelled(manifest_dir, tmp_path_factory) -> Path:
    """The shared tone manifests with 8-cluster MFCC labels beside them (a copy: read-only share)."""
    dest = tmp_path_factory.mktemp("labelled")
    for name in ("train.tsv", "valid.tsv", "train.meta.tsv", "valid.meta.tsv"):
        if (manifest_dir / name).exists():
            (dest / name).write_text((manifest_dir / name).read_text())
    code = cli.main(["targets", str(dest), "--clusters", str(CLUSTERS), "--max-frames", "4000"])
    assert code == 0
    return dest


def test_targets_label_every_manifest_row_with_its_nearest_mfcc_cluster(labelled):
    centroids = np.load(labelled / "km_centroids.npy")
    assert centroids.shape == (CLUSTERS, 39)
    assert (labelled / "dict.km.txt").read_text().splitlines()[-1] == f"{CLUSTERS - 1} 1"
    for split in ("train", "valid"):
        manifest = read_manifest(labelled / f"{split}.tsv")
        rows = kmeans.read_km(labelled / f"{split}.km")
        assert len(rows) == len(manifest.paths)
        for path, row in zip(manifest.paths, rows, strict=True):
            wav, _ = sf.read(manifest.root / path, dtype="float32")
            assert len(row) == 1 + (len(wav) - 400) // 160
            expected = kmeans.nearest_centroid(
                mfcc_features(torch.from_numpy(wav)).numpy(), centroids
            )
            np.testing.assert_array_equal(row, expected)


def test_targets_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["targets", str(tmp_path), "--clusters", "1"]) == 2
    assert capsys.readouterr().err == "w2vkit targets: --clusters must be >= 2, got 1\n"
    assert cli.main(["targets", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"w2vkit targets: {tmp_path / 'train.tsv'} not found\n"


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_resume_continues_exactly(labelled, tmp_path):
    common = [
        "train.log_interval=5",
        "train.save_interval_steps=10",
        "optim.warmup_steps=5",
        "optim.total_steps=20",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli.main(_hubert_args(labelled, straight, *common, "train.max_steps=20")) == 0
    assert cli.main(_hubert_args(labelled, split, *common, "train.max_steps=10")) == 0
    assert checkpoint.load(split / checkpoint.LAST)["progress"]["step"] == 10
    assert cli.main(_hubert_args(labelled, split, *common, "train.max_steps=20")) == 0
    a, b = checkpoint.load(straight / checkpoint.LAST), checkpoint.load(split / checkpoint.LAST)
    assert a["progress"]["step"] == b["progress"]["step"] == 20
    assert "label_embeddings" in a["model"]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    # extract, probe and finetune --init-from read a HuBERT run's encoder through load_model.
    encoder = load_model(straight / checkpoint.LAST, head="encoder").state_dict()
    shared = [k for k in encoder if k in a["model"]]
    assert {k.split(".")[0] for k in shared} == {
        "feature_extractor",
        "feature_norm",
        "masker",
        "encoder",
    }
    assert all(torch.equal(encoder[k], a["model"][k]) for k in shared)
    keys = ("split", "num_updates", "loss", "loss_m", "accuracy", "label_ppl", "lr", "gnorm")
    assert [[r.get(k) for k in keys] for r in _records(split)] == [
        [r.get(k) for k in keys] for r in _records(straight)
    ]


@pytest.mark.slow
def test_training_on_synthetic_speech_lowers_the_loss(tmp_path):
    from w2vkit.data.synth import make_speech_corpus

    make_speech_corpus(tmp_path / "audio", minutes=0.5, seed=0)
    manifest = tmp_path / "manifest"
    assert cli.main(["manifest", str(tmp_path / "audio"), "--dest", str(manifest)]) == 0
    assert cli.main(["targets", str(manifest), "--clusters", str(CLUSTERS)]) == 0
    out = tmp_path / "run"
    args = _hubert_args(
        manifest, out, "train.max_steps=60", "train.log_interval=10", "data.max_samples=16000"
    )
    assert cli.main(args) == 0
    losses = [r["loss"] for r in _records(out) if r["split"] == "train"]
    # Chance is log2(8) = 3 bits; the labels are learnable from the masked context.
    assert losses[0] > 2.7
    assert losses[-1] < losses[0] - 0.3, losses


def _worker(manifest: Path, out: Path) -> None:
    dist.init(torch.device("cpu"))
    code = cli.main(_hubert_args(manifest, out, "train.max_steps=2", "train.log_interval=1"))
    raise SystemExit(code)


@pytest.mark.distributed
def test_two_processes_train_hubert(labelled, tmp_path):
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
        str(labelled),
        str(tmp_path / "ddp"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [r for r in _records(tmp_path / "ddp") if r["split"] == "train"]
    assert [r["num_updates"] for r in records] == [1, 2]  # rank 0 logs, once per update
    assert all(np.isfinite(r["loss"]) and r["sample_size"] > 0 for r in records)
    assert checkpoint.load(tmp_path / "ddp" / checkpoint.LAST)["progress"]["step"] == 2


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
