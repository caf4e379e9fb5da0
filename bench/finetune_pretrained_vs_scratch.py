"""Does pretraining help? CER/WER of CTC fine-tuning: pretrained vs random init vs supervised log-mel.

Synthetic eSpeak NG speech, nothing downloaded: unlabelled audio from the training voices for
pretraining, labelled audio from the same voices for fine-tuning and validation, and a test set
of held-out voices speaking held-out sentences (no test sentence occurs in any training text).
Per seed, three recognisers get the same labelled data, updates and `cpu` recipe:
- pretrained: `w2vkit pretrain CONFIG` (`--pretrain-config`, default tiny), then
  `w2vkit finetune cpu --init-from` it;
- random init: the same fine-tuning from a randomly initialised tiny model (only the init differs);
- log-mel: `w2vkit finetune logmel_cpu`, the supervised baseline (no pretraining, log-mel
  front-end, random init, nothing frozen).
Each is scored greedily and with a word 3-gram LM from the training transcripts (lexicon mode),
the LM weight and word score tuned on the validation split, then applied once to the test split.
Prints a Markdown table (per seed, then the mean) and one JSON line.

The issue's full run (1 h unlabelled, 15 min labelled, 30 min pretraining and 15 min fine-tuning
per recogniser and seed on an idle 2-core CPU, about 6 hours for 3 seeds):

    PYTHONPATH=src python bench/finetune_pretrained_vs_scratch.py --out-dir runs/ft_bench \
        --pretrain-minutes 60 --labelled-minutes 15 --pretrain-steps 100000 \
        --pretrain-max-minutes 30 --finetune-steps 100000 --finetune-max-minutes 15

A smoke run in a few minutes:

    PYTHONPATH=src python bench/finetune_pretrained_vs_scratch.py --out-dir runs/ft_smoke \
        --seeds 0 --pretrain-minutes 0.5 --labelled-minutes 0.5 --valid-minutes 0.2 \
        --test-minutes 0.2 --pretrain-steps 10 --finetune-steps 10 --lm-weights 1 2 --word-scores 0
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from w2vkit import cli
from w2vkit.data.manifest import Manifest, write_manifest
from w2vkit.data.synth import DEFAULT_VOICES, make_speech_corpus, random_sentence, synthesize
from w2vkit.data.vocab import letters_from_words
from w2vkit.finetune.decode import char_errors, word_errors
from w2vkit.interop import ModelRecord, save_w2vkit
from w2vkit.model.config import tiny
from w2vkit.model.wav2vec2 import Wav2Vec2Model

TRAIN_VOICES, TEST_VOICES = DEFAULT_VOICES[:6], DEFAULT_VOICES[6:]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^A-Z' ]", " ", text.upper()).split())


def labelled_split(
    out: Path, split: str, minutes: float, voices, seed: int, avoid: set[str]
) -> None:
    """About `minutes` of speech in `voices`, none of whose sentences is in `avoid`."""
    rng = np.random.default_rng(seed)
    paths, frames, texts, total = [], [], [], 0
    while total < minutes * 60 * 16000:
        voice = voices[int(rng.integers(len(voices)))]
        text = random_sentence(rng, int(rng.integers(4, 12)))
        if normalise(text) in avoid:  # held-out sentences: never one a model trained on
            continue
        wav = synthesize(
            text,
            voice=voice,
            rate_wpm=int(rng.integers(150, 200)),
            pitch=int(rng.integers(30, 70)),
            sample_rate=16000,
        )
        path = f"audio/{split}/{len(paths):04d}.flac"
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / path, wav, 16000, format="FLAC", subtype="PCM_16")
        paths.append(path)
        frames.append(len(wav))
        texts.append(normalise(text))
        total += len(wav)
    write_manifest(out / f"{split}.tsv", Manifest(out, paths, np.array(frames)))
    (out / f"{split}.wrd").write_text("".join(t + "\n" for t in texts))
    (out / f"{split}.ltr").write_text("".join(letters_from_words(t) + "\n" for t in texts))


def write_dict(out: Path) -> None:
    counts: dict[str, int] = {}
    for line in (out / "train.ltr").read_text().split():
        counts[line] = counts.get(line, 0) + 1
    letters = sorted(counts, key=lambda s: (-counts[s], s))
    letters += [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ'" if c not in counts]
    (out / "dict.ltr.txt").write_text("".join(f"{s} {counts.get(s, 0)}\n" for s in letters))


def texts_of(*files: Path) -> set[str]:
    return {normalise(line) for f in files for line in f.read_text().splitlines()}


def make_data(out: Path, args: argparse.Namespace) -> None:
    """The unlabelled manifest and the labelled train/valid/test splits, once per out-dir."""
    unlabelled, data = out / "unlabelled", out / "data"
    if not (out / "manifest" / "train.tsv").is_file():
        make_speech_corpus(unlabelled, minutes=args.pretrain_minutes, voices=args.train_voices)
        manifest = ["manifest", str(unlabelled), "--dest", str(out / "manifest")]
        assert cli.main([*manifest, "--valid-percent", "0.05", "--workers", "1"]) == 0
    if not (data / "test.tsv").is_file():
        seen = texts_of(*unlabelled.rglob("*.txt"))
        labelled_split(data, "train", args.labelled_minutes, args.train_voices, 1, set())
        labelled_split(data, "valid", args.valid_minutes, args.train_voices, 2, set())
        seen |= texts_of(data / "train.wrd", data / "valid.wrd")
        labelled_split(data, "test", args.test_minutes, args.test_voices, 3, seen)
        write_dict(data)


def transcribe(out: Path, model: Path, split: str, lm: list[str]) -> tuple[float, float]:
    """CER and WER in percent of `model` on `split`, greedy or with the `lm` arguments."""
    data = out / "data"
    hyp = out / "hyp.tsv"
    args = ["transcribe", str(model), "--manifest", str(data / f"{split}.tsv"), "--format", "tsv"]
    assert cli.main([*args, "-o", str(hyp), *lm]) == 0
    hyps = [line.partition("\t")[2] for line in hyp.read_text().splitlines()]
    refs = (data / f"{split}.wrd").read_text().splitlines()
    return 100 * char_errors(refs, hyps).rate, 100 * word_errors(refs, hyps).rate


def score(out: Path, model: Path, args: argparse.Namespace) -> dict:
    """Greedy test scores, and LM test scores at the weights best on the validation split."""
    cer, wer = transcribe(out, model, "test", [])
    lm = ["--lm", str(out / "words.arpa")]
    grid = [(w, s) for w in args.lm_weights for s in args.word_scores]
    valid = {
        (w, s): transcribe(
            out, model, "valid", [*lm, "--lm-weight", str(w), "--word-score", str(s)]
        )
        for w, s in grid
    }
    weight, word_score = min(grid, key=lambda ws: valid[ws])  # lowest valid CER, then WER
    flags = ["--lm-weight", str(weight), "--word-score", str(word_score)]
    lm_cer, lm_wer = transcribe(out, model, "test", [*lm, *flags])
    return {
        "cer": cer, "wer": wer, "cer_lm": lm_cer, "wer_lm": lm_wer,
        "lm_weight": weight, "word_score": word_score,
    }  # fmt: skip


def finetune(out: Path, name: str, seed: int, args: argparse.Namespace, *config: str) -> Path:
    run_dir = out / f"seed{seed}" / f"finetune_{name}"
    data = out / "data"
    command = ["finetune", *config, f"data.manifest_dir={data}", f"train.out_dir={run_dir}",
               f"train.seed={seed}", f"train.max_steps={args.finetune_steps}",
               f"train.max_minutes={args.finetune_max_minutes}",
               f"data.max_batch_samples={args.finetune_batch_samples}"]  # fmt: skip
    assert cli.main(command) == 0, f"fine-tuning {name} (seed {seed}) failed"
    return run_dir / "checkpoint_last.pt"


def run_seed(out: Path, seed: int, args: argparse.Namespace) -> dict[str, dict]:
    pretrained = out / f"seed{seed}" / "pretrain"
    if not (pretrained / "checkpoint_last.pt").is_file():
        command = ["pretrain", args.pretrain_config, f"data.manifest_dir={out / 'manifest'}",
                   f"train.out_dir={pretrained}", f"train.seed={seed}",
                   f"train.max_steps={args.pretrain_steps}",
                   f"train.max_minutes={args.pretrain_max_minutes}"]  # fmt: skip
        assert cli.main(command) == 0, f"pretraining (seed {seed}) failed"
    random_init = out / f"seed{seed}" / "random_init.pt"
    torch.manual_seed(seed)
    save_w2vkit(ModelRecord(tiny(), Wav2Vec2Model(tiny()).state_dict()), random_init)
    models = {
        "pretrained": finetune(out, "pretrained", seed, args, "cpu", "--init-from",
                               str(pretrained / "checkpoint_last.pt")),
        "random init": finetune(out, "random", seed, args, "cpu", "--init-from", str(random_init)),
        "log-mel supervised": finetune(out, "logmel", seed, args, "logmel_cpu"),
    }  # fmt: skip
    return {name: score(out, model, args) for name, model in models.items()}


METRICS = ("cer", "wer", "cer_lm", "wer_lm")


def report(results: dict[int, dict[str, dict]], args: argparse.Namespace) -> None:
    names = list(next(iter(results.values())))
    mean = {n: {m: float(np.mean([r[n][m] for r in results.values()])) for m in METRICS}
            for n in names}  # fmt: skip
    print(
        "| recogniser | seed | CER greedy | WER greedy | CER + LM | WER + LM | LM weight, word score |"
    )
    print("|---|---|---|---|---|---|---|")
    for seed, rows in results.items():
        for name, r in rows.items():
            values = " | ".join(f"{r[m]:.1f}" for m in METRICS)
            print(f"| {name} | {seed} | {values} | {r['lm_weight']:g}, {r['word_score']:g} |")
    for name, r in mean.items():
        print(f"| {name} | mean | " + " | ".join(f"{r[m]:.1f}" for m in METRICS) + " | |")
    sizes = {k: v for k, v in vars(args).items() if k != "out_dir"}
    line = {"bench": "finetune_pretrained_vs_scratch", "sizes": sizes,
            "results": {str(s): r for s, r in results.items()}, "mean": mean}  # fmt: skip
    print(json.dumps(line))
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/ft_bench"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-config", default="tiny", help="w2vkit pretrain CONFIG")
    parser.add_argument("--pretrain-minutes", type=float, default=10.0, help="unlabelled audio")
    parser.add_argument("--labelled-minutes", type=float, default=4.0)
    parser.add_argument("--valid-minutes", type=float, default=0.5)
    parser.add_argument("--test-minutes", type=float, default=1.0)
    parser.add_argument("--train-voices", nargs="+", default=list(TRAIN_VOICES))
    parser.add_argument("--test-voices", nargs="+", default=list(TEST_VOICES))
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--pretrain-max-minutes", type=float, default=0.0, help="0: no limit")
    parser.add_argument("--finetune-steps", type=int, default=400)
    parser.add_argument("--finetune-max-minutes", type=float, default=0.0, help="0: no limit")
    parser.add_argument("--finetune-batch-samples", type=int, default=160_000)
    parser.add_argument("--lm-weights", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--word-scores", type=float, nargs="+", default=[-1.0, 0.0, 1.0])
    args = parser.parse_args()
    out = args.out_dir
    if set(args.train_voices) & set(args.test_voices):
        parser.error("--train-voices and --test-voices must not share a voice (held-out voices)")
    make_data(out, args)
    lm = ["lm", "build", str(out / "data" / "train.wrd"), "--order", "3"]
    assert cli.main([*lm, "-o", str(out / "words.arpa")]) == 0
    report({seed: run_seed(out, seed, args) for seed in args.seeds}, args)


if __name__ == "__main__":
    main()
