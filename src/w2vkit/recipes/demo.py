"""`w2vkit demo`: synthesise a little speech, write its manifest, pretrain the tiny model on it.

The three steps of a real run (audio folder -> `w2vkit manifest` -> `w2vkit pretrain`), on about
three minutes of eSpeak NG speech made on the spot: no download, a few minutes on two CPU cores.
While it trains it prints the curve: the contrastive loss falls below its chance level and the
accuracy (masked frames whose true quantized target scores highest) rises above 1/(1+K).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import yaml

from w2vkit.config import ConfigError
from w2vkit.configs import PRETRAIN_DIR

TINY_CONFIG = PRETRAIN_DIR / "tiny.yaml"  # shipped in the package: the demo runs from a wheel
MARKER = ".w2vkit-demo"  # marks an out-dir as the demo's own, so a re-run may replace its folders
STEP_FOLDERS = ("corpus", "manifest", "pretrain")
VALID_FRACTION = 0.1
BAR_WIDTH = 40  # characters for accuracy 1.0
INTERRUPTED_CODES = (130, 143)  # what `w2vkit pretrain` returns after saving on SIGINT / SIGTERM


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/demo"),
        help="run folder; its corpus/, manifest/ and pretrain/ are replaced on a re-run",
    )
    parser.add_argument(
        "--minutes", type=float, default=3.0, help="minutes of speech to synthesise"
    )
    parser.add_argument("--steps", type=int, default=300, help="pretraining updates")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the corpus, the split and training"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help=f"pretraining overrides over {TINY_CONFIG.name}, e.g. train.device=cuda",
    )


def run(args: argparse.Namespace) -> int:
    from w2vkit.data.synth import SynthesisUnavailable, make_speech_corpus

    if args.minutes <= 0 or args.steps < 1:
        raise ConfigError(
            f"--minutes must be > 0 and --steps >= 1, got {args.minutes}, {args.steps}"
        )
    started = time.perf_counter()
    out_dir: Path = args.out_dir
    corpus, manifest, run_dir = (out_dir / name for name in STEP_FOLDERS)
    _claim(out_dir)

    print(f"[1/3] synthesising {args.minutes:g} min of speech with eSpeak NG into {corpus}")
    try:
        paths = make_speech_corpus(corpus, minutes=args.minutes, seed=args.seed)
    except SynthesisUnavailable as err:
        print(f"w2vkit demo: {err}", file=sys.stderr)
        return 1
    voices = sorted({p.relative_to(corpus).parts[0] for p in paths})
    print(f"      {len(paths)} FLAC files, voices: {', '.join(voices)}")

    print(f"[2/3] writing the manifest into {manifest}")
    manifest_args = [str(corpus), f"--dest={manifest}", f"--valid-percent={VALID_FRACTION}"]
    code = _run_recipe("manifest", [*manifest_args, f"--seed={args.seed}", "--workers=1"])
    if code != 0:
        return code

    overrides = [
        f"data.manifest_dir={manifest}",
        f"train.out_dir={run_dir}",
        f"train.max_steps={args.steps}",
        f"train.seed={args.seed}",
        f"train.log_interval={max(1, min(10, args.steps // 20))}",
    ]
    if _num_rows(manifest / "valid.tsv") == 0:  # a tiny corpus may put no file in valid
        overrides.append("data.valid_split=")
    print(
        f"[3/3] pretraining the tiny model for {args.steps} updates ({TINY_CONFIG.name}); "
        f"trainer output: {run_dir / 'stdout.log'}"
    )
    run_dir.mkdir(parents=True)
    with (
        _CurvePrinter(run_dir / "train_log.jsonl", sys.stdout) as curve,
        open(run_dir / "stdout.log", "w", encoding="utf-8") as trainer_out,
        contextlib.redirect_stdout(trainer_out),
    ):
        code = _run_recipe("pretrain", [str(TINY_CONFIG), *overrides, *args.overrides])
    if code in INTERRUPTED_CODES:
        print(
            f"w2vkit demo: interrupted during pretraining; the run so far is saved in {run_dir} "
            "(`w2vkit demo` again starts afresh)",
            file=sys.stderr,
        )
        return code
    if code != 0:
        print(
            f"pretraining failed (exit code {code}); see {run_dir / 'stdout.log'}", file=sys.stderr
        )
        return code
    _summary(curve.records, run_dir, time.perf_counter() - started)
    return 0


def _claim(out_dir: Path) -> None:
    """Clear the demo's folders of an earlier run, but never folders the demo did not make."""
    existing = [out_dir / name for name in STEP_FOLDERS if (out_dir / name).exists()]
    if existing and not (out_dir / MARKER).is_file():
        raise ConfigError(
            f"--out-dir {out_dir} already holds {', '.join(p.name for p in existing)} "
            f"not made by `w2vkit demo` (no {MARKER} file); choose another --out-dir"
        )
    for path in existing:
        shutil.rmtree(path)  # a pretrain/ left in place would be resumed, not trained afresh
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text(
        "made by `w2vkit demo`, which replaces corpus/, manifest/ and "
        "pretrain/ here when it runs again\n",
        encoding="utf-8",
    )


def _run_recipe(name: str, argv: list[str]) -> int:
    """`w2vkit <name> argv`, in this process, through the recipe's own argument parser."""
    recipe = importlib.import_module(f"w2vkit.recipes.{name}")
    parser = argparse.ArgumentParser(prog=f"w2vkit {name}")
    recipe.add_arguments(parser)
    return int(recipe.run(parser.parse_args(argv)) or 0)


def _num_rows(manifest_path: Path) -> int:
    from w2vkit.data.manifest import read_manifest

    return len(read_manifest(manifest_path)) if manifest_path.is_file() else 0


class _CurvePrinter:
    """Follows the trainer's JSON log from a thread and prints each record as a row of the curve."""

    HEADER = "  update    loss  contrast  accuracy  prob_ppl   temp  accuracy"

    def __init__(self, log_path: Path, out: TextIO, poll_seconds: float = 0.2) -> None:
        self.log_path, self.out, self.poll_seconds = log_path, out, poll_seconds
        self.records: list[dict] = []
        self._offset = 0  # bytes of the log already read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> _CurvePrinter:
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
            self.out.write(_row(record) + "\n")
        self.out.flush()


def _row(record: dict) -> str:
    label = "valid" if record.get("split") == "valid" else str(record["num_updates"])
    accuracy = record.get("accuracy", math.nan)
    bar = "#" * round(BAR_WIDTH * accuracy) if math.isfinite(accuracy) else ""
    return (
        f"  {label:>6}  {record['loss']:6.3f}  {record.get('loss_0', math.nan):8.3f}  "
        f"{accuracy:8.3f}  {record.get('prob_perplexity', math.nan):8.2f}  "
        f"{record.get('temp', math.nan):5.3f}  {bar}"
    )


def _summary(records: list[dict], run_dir: Path, seconds: float) -> None:
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
