"""What `w2vkit demo` prints while and after it pretrains: the curve, row by row, and a summary."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import TextIO

import yaml

BAR_WIDTH = 40  # characters for accuracy 1.0


def read_records(run_dir: Path) -> list[dict]:
    """The run's train_log.jsonl records (imported late: the demo starts before torch loads)."""
    from w2vkit.train.diagnostics import read_log

    return read_log(run_dir / "train_log.jsonl")


class CurvePrinter:
    """Follows the trainer's JSON log from a thread and prints each record as a row of the curve."""

    HEADER = (
        f"  update    loss  contrast  accuracy  prob_ppl   temp  bar: one # per {1 / BAR_WIDTH:g}"
    )

    def __init__(self, log_path: Path, out: TextIO, poll_seconds: float = 0.2) -> None:
        self.log_path, self.out, self.poll_seconds = log_path, out, poll_seconds
        self.records: list[dict] = []
        self._offset = 0  # bytes of the log already read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> CurvePrinter:
        print(self.HEADER, file=self.out, flush=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read_new()  # lines written after the last poll

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._read_new()

    def _read_new(self) -> None:
        if not self.log_path.is_file():
            return
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits a poll
        self._offset += len(complete)
        for line in complete.decode("utf-8").splitlines():
            record = json.loads(line)
            self.records.append(record)
            self.out.write(row(record) + "\n")
        self.out.flush()


def row(record: dict) -> str:
    label = "valid" if record.get("split") == "valid" else str(record["num_updates"])
    accuracy = record.get("accuracy", math.nan)
    bar = "#" * round(BAR_WIDTH * accuracy) if math.isfinite(accuracy) else ""
    return (
        f"  {label:>6}  {record['loss']:6.3f}  {record.get('loss_0', math.nan):8.3f}  "
        f"{accuracy:8.3f}  {record.get('prob_perplexity', math.nan):8.2f}  "
        f"{record.get('temp', math.nan):5.3f}  {bar}"
    )


def print_summary(records: list[dict], run_dir: Path, seconds: float) -> None:
    model = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["model"]
    num_candidates = 1 + model["num_negatives"] + model["num_cross_sample_negatives"]
    num_codes = model["quantizer"]["num_groups"] * model["quantizer"]["num_entries"]
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    print(f"\ndemo finished in {seconds:.0f} s")
    if train:
        first, last = train[0], train[-1]
        chance_bits = math.log2(num_candidates)
        print(
            f"  loss (bits/frame): {first['loss']:.3f} at update {first['num_updates']} -> "
            f"{last['loss']:.3f} at update {last['num_updates']}"
        )
        print(
            f"  contrastive part : {first['loss_0']:.3f} -> {last['loss_0']:.3f} "
            f"(chance: log2({num_candidates}) = {chance_bits:.3f})"
        )
        print(
            f"  accuracy         : {first['accuracy']:.3f} -> {last['accuracy']:.3f} "
            f"(chance: 1/{num_candidates} = {1 / num_candidates:.3f})"
        )
        if "prob_perplexity" in last:
            print(
                f"  prob_perplexity  : {first['prob_perplexity']:.1f} -> "
                f"{last['prob_perplexity']:.1f} (of {num_codes} codebook entries)"
            )
        if last["loss_0"] > chance_bits - 0.05:
            print("  note: the contrastive loss is still at chance; try more --steps or --minutes")
    if valid:
        print(
            f"  validation       : loss {valid[-1]['loss']:.3f}, "
            f"accuracy {valid[-1]['accuracy']:.3f}"
        )
    others = sorted(
        p.name for p in run_dir.glob("checkpoint*.pt") if p.name != "checkpoint_last.pt"
    )
    print(
        f"  checkpoint       : {run_dir / 'checkpoint_last.pt'} (also {', '.join(others) or 'none'})"
    )
    print(f"  log              : {run_dir / 'train_log.jsonl'}")
    print(f"  trainer output   : {run_dir / 'stdout.log'}")


__all__ = ["BAR_WIDTH", "CurvePrinter", "print_summary", "read_records", "row"]
