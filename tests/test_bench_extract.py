"""bench/extract.py end to end at a tiny scale: it runs, and its figures add up."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "extract.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_extract", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_extract_runs_and_reports_every_batch_size(capsys):
    bench = _bench_module()
    argv = ["--files", "3", "--min-seconds", "0.5", "--max-seconds", "1", "--batch-sizes", "1", "3",
            "--window-seconds", "0.5", "--repeats", "2", "--warmup", "0", "--threads", "1"]  # fmt: skip
    report = bench.main(argv)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["batch", "median", "s", "min"]
    assert json.loads(lines[-1])["results"] == json.loads(json.dumps(report["results"]))
    assert 1.5 <= report["audio_seconds"] <= 3.0  # 3 files of 0.5-1 s
    for row in report["results"].values():
        assert row["min_s"] <= row["median_s"]
        assert row["audio_sec_per_sec"] == pytest.approx(report["audio_seconds"] / row["median_s"])
        assert row["max_diff"] < 1e-5  # 0.5 s windows of the group-norm tiny model batch exactly
    assert report["results"][1]["speedup"] == 1.0 and report["results"][1]["max_diff"] == 0.0


def test_bench_extract_rejects_an_empty_length_range():
    with pytest.raises(SystemExit):
        _bench_module().parse_args(["--min-seconds", "3", "--max-seconds", "2"])
