"""`w2vkit demo`: the whole path on speech synthesised on the spot, nothing downloaded.

1. eSpeak NG speech: `corpus/seen/` (6 voices, for pretraining) and `corpus/unseen/` (2 voices
   pretraining never hears), frame labels kept beside the audio when the synthesiser writes them.
2. Manifests: `manifest/` (seen voices, train/valid) and `manifest/all/` (every file).
3. Pretraining of the tiny model; it prints the curve as it trains: the contrastive loss falls
   below its chance level and the accuracy rises above 1/(1+K).
4. Features of every file, all layers (`features/`).
5. Probes with both baselines (log-mel, random init): phones per frame on the unseen voices
   (trained on the seen ones), when frame labels exist; voice identity per utterance.
6. The report (`pretrain/report.html`), then the table and the next commands.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

from w2vkit.config import ConfigError
from w2vkit.configs import PRETRAIN_DIR
from w2vkit.recipes.demo_console import CurvePrinter, print_summary, read_records

TINY_CONFIG = PRETRAIN_DIR / "tiny.yaml"  # shipped in the package: the demo runs from a wheel
MARKER = ".w2vkit-demo"  # marks an out-dir as the demo's own, so a re-run may replace its folders
STEP_FOLDERS = ("corpus", "manifest", "pretrain", "features", "labels")
UNSEEN_VOICES = ("en+f4", "en-gb-scotland")  # held out from pretraining; the phone probe's test
UNSEEN_SHARE = 0.25  # of --minutes
VALID_FRACTION = 0.1
INTERRUPTED_CODES = (130, 143)  # what `w2vkit pretrain` returns after saving on SIGINT / SIGTERM


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/demo"),
        help="run folder; its corpus/, manifest/, pretrain/, features/ and labels/ are replaced "
        "on a re-run",
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
    from w2vkit.data.espeak import SynthesisUnavailable
    from w2vkit.data.synth import DEFAULT_VOICES, make_speech_corpus

    if args.minutes <= 0 or args.steps < 1:
        raise ConfigError(
            f"--minutes must be > 0 and --steps >= 1, got {args.minutes}, {args.steps}"
        )
    started = time.perf_counter()
    out_dir: Path = args.out_dir
    corpus, manifest, run_dir, features, labels = (out_dir / name for name in STEP_FOLDERS)
    _claim(out_dir)

    seen_voices = [v for v in DEFAULT_VOICES if v not in UNSEEN_VOICES]
    print(
        f"[1/6] synthesising {args.minutes:g} min of speech with eSpeak NG into {corpus}: "
        f"{', '.join(seen_voices)} for pretraining, {', '.join(UNSEEN_VOICES)} held out"
    )
    try:
        seen = make_speech_corpus(
            corpus / "seen",
            minutes=args.minutes * (1 - UNSEEN_SHARE),
            seed=args.seed,
            voices=seen_voices,
        )
        unseen = make_speech_corpus(
            corpus / "unseen",
            minutes=args.minutes * UNSEEN_SHARE,
            seed=args.seed + 1,
            voices=UNSEEN_VOICES,
        )
    except SynthesisUnavailable as err:
        print(f"w2vkit demo: {err}", file=sys.stderr)
        return 1
    print(f"      {len(seen)} + {len(unseen)} FLAC files")

    print(f"[2/6] writing the manifests into {manifest} (seen voices) and {manifest / 'all'}")
    manifest_args = [f"--seed={args.seed}", "--workers=1"]
    code = _run_recipe(
        "manifest",
        [str(corpus / "seen"), f"--dest={manifest}", f"--valid-percent={VALID_FRACTION}"]
        + manifest_args,
        args.verbose,
    ) or _run_recipe(
        "manifest",
        [str(corpus), f"--dest={manifest / 'all'}", "--valid-percent=0"] + manifest_args,
        args.verbose,
    )
    if code != 0:
        return code

    code = _pretrain(args, manifest, run_dir)
    if code != 0:
        return code
    from w2vkit.report.build import CHECKPOINTS

    checkpoint = next(run_dir / name for name in CHECKPOINTS if (run_dir / name).is_file())

    print(f"[4/6] extracting every layer of {checkpoint.name} for all files into {features}")
    code = _run_recipe(
        "extract",
        [str(checkpoint), str(manifest / "all" / "train.tsv"), f"--out={features}", "--quiet"],
        args.verbose,
    )
    if code != 0:
        return code

    print(f"[5/6] linear probes, with the log-mel and random-init baselines: {features}/probe_*")
    frame_labels, utterances = _write_labels(corpus, manifest / "all" / "train.tsv", labels)
    probes = _probes(features, frame_labels, utterances, args.seed, args.verbose)

    print(f"[6/6] writing the report of {run_dir}")
    report_args = [str(run_dir)] + [f"--probe={p}" for p in probes.values()]
    code = _run_recipe("report", report_args, args.verbose)
    if code != 0:
        return code
    print_summary(read_records(run_dir), run_dir, time.perf_counter() - started)
    _probe_table(probes)
    _next_steps(run_dir)
    return 0


def _pretrain(args: argparse.Namespace, manifest: Path, run_dir: Path) -> int:
    """Step 3: pretrain the tiny model, printing the curve from its log as it goes."""
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
        f"[3/6] pretraining the tiny model for {args.steps} updates ({TINY_CONFIG.name}); "
        f"trainer output: {run_dir / 'stdout.log'}"
    )
    run_dir.mkdir(parents=True)
    with (
        CurvePrinter(run_dir / "train_log.jsonl", sys.stdout),
        open(run_dir / "stdout.log", "w", encoding="utf-8") as trainer_out,
        contextlib.redirect_stdout(trainer_out),
    ):
        code = _run_recipe(
            "pretrain", [str(TINY_CONFIG), *overrides, *args.overrides], args.verbose
        )
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


def _write_labels(corpus: Path, all_manifest: Path, labels: Path) -> tuple[Path, Path]:
    """labels/utterances.tsv (path, voice, sentence, pretraining) for every file, and the frame
    phone labels of the `all` manifest (`w2vkit labels --phones`: labels/train.phones.npz).
    Paths are relative to `corpus`, as in the `all` manifest."""
    from w2vkit.recipes.labels import write_labels

    labels.mkdir(parents=True)
    rows = ["path\tvoice\tsentence\tpretraining"]
    for part in ("seen", "unseen"):
        for path in sorted((corpus / part).rglob("*.flac")):
            relative = path.relative_to(corpus)
            sentence = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["sentence"]
            rows.append(f"{relative.as_posix()}\t{relative.parts[1]}\t{sentence}\t{part}")
    (labels / "utterances.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        write_labels([all_manifest], labels, phones=True)
    return labels / f"{all_manifest.stem}.phones.npz", labels / "utterances.tsv"


def _probes(
    features: Path, frame_labels: Path, utterances: Path, seed: int, verbose: bool
) -> dict[str, Path]:
    """Run the phone probe (voices pretraining never heard) and the voice probe, each with both
    baselines; {name: probe.json} of those that ran."""
    common = ["--baseline=logmel", "--baseline=random", f"--seed={seed}"]
    from w2vkit.data.labels import read_utterance_labels

    # The voices pretraining never heard that did get files (a short corpus may skip one).
    rows = read_utterance_labels(utterances).values()
    held_out = ",".join(sorted({r["voice"] for r in rows if r["pretraining"] == "unseen"}))
    jobs = {
        "phone": [
            str(features),
            "--task=frame",
            f"--labels={frame_labels}",
            f"--utterances={utterances}",
            "--split-by=voice",
            f"--test-values=voice={held_out}",
        ]
        + common,
        "voice": [str(features), f"--labels={utterances}", "--target=voice"] + common,
    }
    done = {}
    for name, argv in jobs.items():
        out = features / f"probe_{name}"
        with contextlib.redirect_stdout(io.StringIO()):  # the table is printed at the end
            code = _run_recipe("probe", [*argv, f"--out={out}"], verbose)
        if code in INTERRUPTED_CODES:  # Ctrl-C: stop the demo, not just this probe
            raise KeyboardInterrupt
        if code == 0:
            done[name] = out / "probe.json"
        else:
            print(f"      the {name} probe did not run (exit code {code}, see above)")
    return done


def _probe_table(probes: dict[str, Path]) -> None:
    """The best layer per source for each probe, side by side, against chance."""
    from w2vkit.report.build import best_rows

    if not probes:
        return
    results = {name: json.loads(path.read_text(encoding="utf-8")) for name, path in probes.items()}
    titles = {"phone": "phones, unseen voices", "voice": "voice identity"}
    header = "  " + f"{'features':<14}" + "".join(f"{titles[n]:>24}" for n in results)
    lines = [
        "",
        "probe test accuracy, best layer per source (macro-F1, per-class F1: probe.json):",
        header,
    ]
    sources = ["pretrained", "random", "logmel", "logmel ±4"]
    table = {n: {row[0]: row for row in best_rows(r)} for n, r in results.items()}
    for source in sources:
        cells = []
        for name in results:
            row = table[name].get(source)
            cells.append(
                f"{'-':>24}" if row is None else f"{row[2]:>14.3f} (layer {row[1]:>2})".rjust(24)
            )
        lines.append(f"  {source:<14}" + "".join(cells))
    lines.append(
        f"  {'chance':<14}" + "".join(f"{r['chance_accuracy']:>24.3f}" for r in results.values())
    )
    print("\n".join(lines))
    for name, path in probes.items():
        print(f"  {name} probe: {path}")


def _next_steps(run_dir: Path) -> None:
    print(
        f"""
report: {run_dir / "report.html"} (and report.md); open it in a browser.
next, on your own audio:
  w2vkit manifest /path/to/audio --dest data/ --valid-percent 0.01
  w2vkit pretrain tiny data.manifest_dir=data/ train.out_dir=runs/mine
  w2vkit extract runs/mine/checkpoint_best.pt data/valid.tsv --out feats/
  w2vkit probe feats/ --labels speakers.tsv --baseline logmel --baseline random
  w2vkit report runs/mine --probe feats/probe_speakers/probe.json
  (speakers.tsv: one line per file of data/valid.tsv, relative_path<TAB>speaker)"""
    )


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
        f"made by `w2vkit demo`, which replaces {', '.join(f'{n}/' for n in STEP_FOLDERS)} "
        "here when it runs again\n",
        encoding="utf-8",
    )


def _run_recipe(name: str, argv: list[str], verbose: bool) -> int:
    """`w2vkit <name> argv`, in this process: a usage error is that step's one line on stderr and
    exit code 2, and the demo goes on where a step may fail (a probe on too small a corpus).
    `w2vkit demo --verbose` passes --verbose on, so a failed step shows its traceback."""
    from w2vkit import cli  # the command line's own error convention, not a copy of it

    return cli.main([name, *argv, *([cli.VERBOSE_FLAG] if verbose else [])])


def _num_rows(manifest_path: Path) -> int:
    from w2vkit.data.manifest import read_manifest

    return len(read_manifest(manifest_path)) if manifest_path.is_file() else 0
