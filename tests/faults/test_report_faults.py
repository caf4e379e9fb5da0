"""Issue 28 item 10: `report` on a train_log.jsonl holding a line the training loop never writes
(`[1]`, `null`, a non-integer update count such as 1e400) says which line, instead of a traceback."""

from __future__ import annotations

import json

import pytest
import yaml

from w2vkit import cli
from w2vkit.config import to_dict
from w2vkit.model.config import tiny


def _run(tmp_path, bad: str):
    records = [
        {"split": "train", "num_updates": step, "loss": 4.0 - step / 100, "accuracy": 0.1}
        for step in (10, 20, 30)
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(1, bad)
    (tmp_path / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": to_dict(tiny())}))
    return tmp_path


@pytest.mark.parametrize(
    "bad", ["[1]", "null", '{"split": "train", "num_updates": 1e400, "loss": 1.0}', '"text"']
)
def test_a_line_the_loop_never_writes_is_named(tmp_path, capsys, bad):
    run = _run(tmp_path, bad)
    assert cli.main(["report", str(run)]) == 2
    assert capsys.readouterr().err == (
        f"w2vkit report: {run / 'train_log.jsonl'}:2: not a record of the training loop (a JSON "
        f"object whose num_updates is a count): {bad[:40]!r}\n"
    )


def test_non_finite_metrics_are_still_reported(tmp_path, capsys):
    run = _run(tmp_path, '{"split": "train", "num_updates": 15, "loss": 1e400, "gnorm": NaN}')
    assert cli.main(["plot", str(run)]) == 0
