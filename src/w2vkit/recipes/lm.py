"""`w2vkit lm build TEXT --order N [-o OUT.arpa] [--letters]`: an n-gram LM for `transcribe --lm`.

Interpolated Kneser-Ney (w2vkit.finetune.ngram) over the whitespace-separated words of each line;
`--letters` models letters instead (`H E L L O |`, upper-cased, for lexicon-free decoding), and
fits the `.ltr` layout of the fine-tuning labels. KenLM and flashlight-text read the ARPA output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from w2vkit.config import UsageError
from w2vkit.data.vocab import letters_from_words
from w2vkit.finetune.ngram import KneserNeyModel, read_sentences


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="estimate an ARPA model from a text file")
    build.add_argument("text", type=Path, help="one sentence per line (e.g. the train.wrd file)")
    build.add_argument("--order", type=int, default=3, help="n-gram order, >= 2 (default 3)")
    build.add_argument("-o", "--output", type=Path, required=True, help="the .arpa file to write")
    build.add_argument(
        "--letters",
        action="store_true",
        help="a letter LM (`.ltr` layout) for lexicon-free decoding",
    )


def run(args: argparse.Namespace) -> int:
    try:
        _check_text(args.text)
        sentences = read_sentences(args.text)
    except OSError as err:
        raise UsageError(f"cannot read {args.text}: {err.strerror}") from err
    if args.letters:
        sentences = [letters_from_words(" ".join(s).upper()).split() for s in sentences]
    try:
        model = KneserNeyModel(sentences, args.order)
    except ValueError as err:
        raise UsageError(f"{args.text}: {err}") from err
    if args.output.resolve() == args.text.resolve():
        raise UsageError(f"-o {args.output} is the input text: write the model elsewhere")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    model.write_arpa(args.output)
    print(
        f"w2vkit lm: {len(sentences)} sentences, {len(model.vocab)} {'letters' if args.letters else 'words'}"
        f" (with </s>, <unk>), order {args.order} -> {args.output}"
    )
    return 0


def _check_text(path: Path) -> None:
    """Sentences of words, not a manifest, a transcript table or an audio file read as text."""
    with open(path, "rb") as f:
        if b"\0" in f.read(4096):
            raise UsageError(
                f"{path} is binary, not text (audio?): give one sentence per line, such as the "
                "train.wrd that w2vkit labels writes"
            )
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if "\t" in line:
                raise UsageError(
                    f"{path}:{number}: a tab-separated row (a manifest or transcript table?): "
                    "an LM is built from one sentence per line, such as the train.wrd that "
                    "w2vkit labels writes"
                )
