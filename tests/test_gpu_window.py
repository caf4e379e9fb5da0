"""The GPU window's one command, rehearsed on CPU: `bench/gpu_rehearsal.sh` builds a fresh venv of
the borrowed machine's package list (a CPU torch from the local disk standing in for its CUDA one),
the bundle for this interpreter, and runs `bench/gpu_window.sh --rehearsal`: every stage, tiny
shapes, the bundle installed with --no-index. Needs PyPI for the venv and the bundle."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TORCH_WHEELS = Path(os.environ.get("TORCH_WHEELS", "/opt/wheels"))
STAGES = [
    "install",
    "versions",
    "base_fit",
    "base",
    "pytest_gpu",
    "large",
    "large_ckpt",
    "torchrun",
    "extract",
    "base_compile",
]


@pytest.mark.rehearsal
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not list(TORCH_WHEELS.glob("torch-*.whl")), reason="no local torch wheel")
def test_the_gpu_window_runs_every_stage_in_its_rehearsal(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_rehearsal.sh"), str(tmp_path / "work"), str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1700, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    records = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["stage"]] = record
    assert list(records) == STAGES
    failed = {s: (r["status"], (out / f"{s}.err").read_text()[-800:]) for s, r in records.items()}
    assert all(r["rc"] == 0 for r in records.values()), failed
    # the machine's own torch (the stand-in) and the bundle's packages were the ones used
    assert records["versions"]["result"]["torch"].startswith("2.13.0")
    assert records["base_fit"]["result"]["batch"] == 4
    base = records["base"]["result"]["results"]
    assert set(base) == {"w2vkit", "hf"} and base["w2vkit"]["audio_sec_per_sec"] > 0
    assert "Self CPU" in (out / "base_kernels.txt").read_text()
    assert "skipped" in (out / "pytest_gpu.out").read_text()  # collected and imported, no CUDA
    large, large_ckpt = records["large"]["result"], records["large_ckpt"]["result"]
    assert large["checkpointing"] is False and large_ckpt["checkpointing"] is True
    trained = records["torchrun"]["result"]
    assert trained["num_updates"] == 4 and trained["audio_sec_per_sec"] > 0
    assert 0 <= trained["data_wait_frac"] <= 1 and "checkpoint_last.pt" in trained["checkpoint"]
    assert records["base_compile"]["result"]["compile"] is True
    summary = (out / "summary.md").read_text()
    assert all(f"## {stage}: ok" in summary for stage in STAGES)
