"""Does pretraining help? CER/WER of CTC fine-tuning from a pretrained tiny model vs from random init.

Synthetic eSpeak NG speech, nothing downloaded: unlabelled audio from six training voices for
pretraining, a few minutes of labelled audio from the same voices for fine-tuning, and a test set
spoken by two held-out voices. Both fine-tuning runs use the same config, data, seed and number of
updates; only `--init-from` differs. Greedy decoding, then a word 3-gram LM from the training
transcripts (lexicon mode). Prints a Markdown table.

    PYTHONPATH=src python bench/finetune_pretrained_vs_scratch.py --out-dir runs/ft_bench \
        --pretrain-steps 600 --finetune-steps 400

About an hour on two busy CPU cores with these defaults.
"""

from __future__ import annotations

import argparse
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
ROOT = Path(__file__).resolve().parents[1]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^A-Z' ]", " ", text.upper()).split())


def labelled_split(out: Path, split: str, minutes: float, voices, seed: int) -> None:
    rng = np.random.default_rng(seed)
    paths, frames, texts, total = [], [], [], 0
    while total < minutes * 60 * 16000:
        voice = voices[int(rng.integers(len(voices)))]
        text = random_sentence(rng, int(rng.integers(4, 12)))
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


def score(out: Path, model: Path, lm: Path | None) -> tuple[float, float]:
    args = [
        "transcribe",
        str(model),
        "--manifest",
        str(out / "data" / "test.tsv"),
        "--format",
        "tsv",
        "-o",
        str(out / "hyp.tsv"),
    ]
    if lm is not None:
        args += ["--lm", str(lm)]
    assert cli.main(args) == 0
    hyps = [
        line.split("\t")[1] if "\t" in line else ""
        for line in (out / "hyp.tsv").read_text().splitlines()
    ]
    refs = (out / "data" / "test.wrd").read_text().splitlines()
    return 100 * char_errors(refs, hyps).rate, 100 * word_errors(refs, hyps).rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/ft_bench"))
    parser.add_argument("--pretrain-minutes", type=float, default=10.0)
    parser.add_argument("--labelled-minutes", type=float, default=4.0)
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--finetune-steps", type=int, default=400)
    parser.add_argument("--finetune-batch-samples", type=int, default=160_000)
    args = parser.parse_args()
    out = args.out_dir
    data = out / "data"
    if not (data / "test.tsv").is_file():
        labelled_split(data, "train", args.labelled_minutes, TRAIN_VOICES, seed=1)
        labelled_split(data, "valid", 0.5, TRAIN_VOICES, seed=2)
        labelled_split(data, "test", 1.0, TEST_VOICES, seed=3)
        write_dict(data)
    if not (out / "pretrain" / "checkpoint_last.pt").is_file():
        if not (out / "manifest" / "train.tsv").is_file():
            unlabelled = out / "unlabelled"
            make_speech_corpus(unlabelled, minutes=args.pretrain_minutes, voices=TRAIN_VOICES)
            manifest = ["manifest", str(unlabelled), "--dest", str(out / "manifest")]
            assert cli.main([*manifest, "--valid-percent", "0.05", "--workers", "1"]) == 0
        pretrain = ["pretrain", str(ROOT / "configs/pretrain/tiny.yaml")]
        pretrain += [f"data.manifest_dir={out / 'manifest'}", f"train.out_dir={out / 'pretrain'}"]
        pretrain += [f"train.max_steps={args.pretrain_steps}", "train.log_interval=50"]
        assert cli.main(pretrain) == 0
    torch.manual_seed(0)
    save_w2vkit(ModelRecord(tiny(), Wav2Vec2Model(tiny()).state_dict()), out / "random_init.pt")
    assert (
        cli.main(
            ["lm", "build", str(data / "train.wrd"), "--order", "3", "-o", str(out / "words.arpa")]
        )
        == 0
    )
    rows = []
    for name, init in (
        ("pretrained", out / "pretrain" / "checkpoint_last.pt"),
        ("random init", out / "random_init.pt"),
    ):
        run_dir = out / f"finetune_{name.replace(' ', '_')}"
        cli.main(["finetune", "--init-from", str(init), "preset=cpu", f"data.manifest_dir={data}",
                  f"train.out_dir={run_dir}", f"train.max_steps={args.finetune_steps}",
                  f"data.max_batch_samples={args.finetune_batch_samples}"])  # fmt: skip
        last = run_dir / "checkpoint_last.pt"
        rows.append((name, *score(out, last, None), *score(out, last, out / "words.arpa")))
    print("| init | CER greedy | WER greedy | CER + 3-gram LM | WER + 3-gram LM |")
    print("|---|---|---|---|---|")
    for name, *values in rows:
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
