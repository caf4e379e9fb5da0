"""`w2vkit <command>`: one argparse entry point; each command lives in `w2vkit.recipes.<command>`.

A recipe module provides `add_arguments(parser)` and `run(args) -> int`. Modules are imported only
for the command that runs, so `w2vkit manifest` does not pay for importing the model.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from w2vkit.config import ConfigError

COMMANDS = {
    "manifest": "scan an audio folder and write fairseq-format train.tsv / valid.tsv",
    "pretrain": "wav2vec 2.0 self-supervised pretraining (works under torchrun)",
    "finetune": "CTC fine-tuning of a pretrained model on labelled audio (works under torchrun)",
    "transcribe": "speech to text with a fine-tuned model: greedy or n-gram LM beam search",
    "lm": "build a small n-gram language model (ARPA) from text, for transcribe --lm",
    "extract": "per-layer hidden states of a manifest's audio -> safetensors shards + index.tsv",
    "probe": "layer-wise linear probes: which layer of extracted features encodes a label",
    "convert": "convert checkpoints between fairseq, HF transformers and w2vkit",
    "demo": "synthesise a little speech, then manifest -> tiny pretraining, with the loss printed",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="w2vkit",
        description="wav2vec 2.0 self-supervised pretraining: from a folder of raw audio to speech "
        "representations. `w2vkit COMMAND --help` describes each command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    # Import only the recipe that runs; the others register a placeholder parser for --help.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _recipe(name).add_arguments(sub)
    args = parser.parse_args(argv)
    try:
        return int(_recipe(args.command).run(args) or 0)
    except ConfigError as err:
        print(f"w2vkit {args.command}: config error: {err}", file=sys.stderr)
        return 2


def _recipe(name: str):
    return importlib.import_module(f"w2vkit.recipes.{name}")
