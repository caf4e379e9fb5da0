"""`w2vkit <command>`: one argparse entry point; each command lives in `w2vkit.recipes.<command>`.

A recipe module provides `add_arguments(parser)` and `run(args) -> int`. Modules are imported only
for the command that runs, so `w2vkit manifest` does not pay for importing the model.

Errors follow one convention: a recipe raises `w2vkit.config.UsageError` (or its subclass
`ConfigError`) for anything the user gave wrong, and `main` prints `w2vkit COMMAND: message` on
stderr and returns 2. Ctrl-C returns 130 and a closed stdout pipe (`... | head -1`) 141, as the
shell reports those signals, and an OSError (disk full, a file vanished) returns 1, each with one
line and no traceback. `--verbose`, anywhere before a `--`, adds the traceback to each of these.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
import traceback
from typing import NoReturn

from w2vkit.config import UsageError

COMMANDS = {
    "manifest": "scan an audio folder and write fairseq-format train.tsv / valid.tsv",
    "shard": "write a manifest's audio as tar shards + index, to stream from disk, HTTP or S3",
    "pretrain": "wav2vec 2.0 self-supervised pretraining (works under torchrun)",
    "finetune": "CTC fine-tuning of a pretrained model on labelled audio (works under torchrun)",
    "transcribe": "speech to text with a fine-tuned model: greedy or n-gram LM beam search",
    "lm": "build a small n-gram language model (ARPA) from text, for transcribe --lm",
    "extract": "per-layer hidden states of a manifest's audio -> safetensors shards + index.tsv",
    "labels": "frame phone labels, pitch tokens, and fairseq letter labels for a manifest",
    "targets": "HuBERT frame labels: k-means of MFCCs or of a model layer -> fairseq .km files",
    "probe": "layer-wise linear probes: which layer of extracted features encodes a label",
    "report": "report.html + report.md of a run: health findings, curves, codebook usage, probes",
    "plot": "the training curves of a run as PNGs",
    "convert": "convert checkpoints between fairseq, HF transformers and w2vkit",
    "demo": "synthesise speech, then the whole path: manifest, tiny pretraining, features, "
    "probes with baselines, report",
}

# Shown under each command's --help; tests parse every one of them with the command's own parser.
EXAMPLES = {
    "manifest": [
        "w2vkit manifest data/audio --dest data/manifest",
        "w2vkit manifest data/audio --dest data/manifest --ext flac --valid-percent 0.05 "
        "--max-seconds 30",
        "w2vkit manifest data/LibriSpeech --dest data/ls --path-must-contain train-clean",
    ],
    "shard": [
        "w2vkit shard data/manifest --out data/shards",
        "w2vkit shard data/manifest --out data/shards --shard-size 1GB --workers 16 --verify",
    ],
    "pretrain": [
        "w2vkit pretrain configs/pretrain/tiny.yaml data.manifest_dir=data/manifest "
        "train.out_dir=runs/tiny",
        "torchrun --nproc_per_node 8 -m w2vkit pretrain configs/pretrain/base_ls960.yaml "
        "data.manifest_dir=data/ls train.out_dir=runs/base",
        "w2vkit pretrain configs/pretrain/base_ls960.yaml --init-from wav2vec_small.pt "
        "data.manifest_dir=data/manifest train.out_dir=runs/continued",
        "w2vkit pretrain configs/pretrain/tiny.yaml train.max_steps=50 --print-config",
    ],
    "finetune": [
        "w2vkit finetune cpu --init-from runs/tiny/checkpoint_best.pt data.manifest_dir=data/labelled",
        "torchrun --nproc_per_node 2 -m w2vkit finetune base_10h --init-from wav2vec_small.pt "
        "data.manifest_dir=data/ls10h train.out_dir=runs/ft10h",
    ],
    "transcribe": [
        "w2vkit transcribe runs/finetune/checkpoint_best.pt speech.wav",
        "w2vkit transcribe runs/finetune/checkpoint_best.pt --manifest data/test.tsv --format tsv "
        "-o hyp.tsv",
        "w2vkit transcribe runs/finetune/checkpoint_best.pt speech.wav --lm lm.arpa --lm-weight 1.5",
    ],
    "lm": [
        "w2vkit lm build data/labelled/train.wrd --order 3 -o lm.arpa",
        "w2vkit lm build data/labelled/train.wrd --order 5 --letters -o letters.arpa",
    ],
    "extract": [
        "w2vkit extract runs/tiny/checkpoint_best.pt data/manifest/valid.tsv --out feats",
        "w2vkit extract wav2vec_small.pt data/manifest/train.tsv --out feats --layers 6,12 "
        "--pool mean --storage-dtype float16",
    ],
    "probe": [
        "w2vkit probe feats --labels speakers.tsv",
        "w2vkit probe feats --labels speakers.tsv --test-fraction 0.2 --out probes/speakers",
    ],
    "targets": [
        "w2vkit targets data/manifest --clusters 100",
        "w2vkit targets data/manifest --clusters 500 --model runs/hubert1/checkpoint_best.pt "
        "--layer 6",
    ],
    "convert": [
        "w2vkit convert wav2vec_small.pt hf/wav2vec_small --to hf",
        "w2vkit convert runs/tiny/checkpoint_best.pt hf/tiny --to hf --hf-class model",
        "w2vkit convert hf/wav2vec_small small.pt --to w2vkit",
    ],
    "labels": [
        "w2vkit labels data/manifest/train.tsv data/manifest/valid.tsv --phones --pitch",
        "w2vkit labels data/manifest/train.tsv --transcripts transcripts.tsv",
        "w2vkit labels data/manifest/train.tsv data/manifest/valid.tsv --letters --phonemes",
    ],
    "report": [
        "w2vkit report runs/demo/pretrain",
        "w2vkit report runs/tiny --probe feats/probe_phone/probe.json "
        "--valid-manifest data/manifest/valid.tsv",
    ],
    "plot": [
        "w2vkit plot runs/tiny",
        "w2vkit plot runs/tiny --out plots/",
    ],
    "demo": [
        "w2vkit demo",
        "w2vkit demo --minutes 10 --steps 1000 --out-dir runs/demo10",
        "w2vkit demo train.device=cuda",
    ],
}

# Printed under a command's examples.
HELP_NOTES = {
    "finetune": "defaults: `w2vkit finetune cpu --print-config` prints every config key with its "
    "default value; docs/finetune.md explains each",
    "lm": "defaults: `w2vkit lm build --help` lists the builder's options and their defaults",
    "pretrain": "defaults: `w2vkit pretrain --print-config` prints every config key with its "
    "default value; docs/training.md explains each",
}

FAILED = 1  # the environment failed us (disk full, a file vanished): not the user's mistake
USAGE_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a Ctrl-C'd program
BROKEN_PIPE = 141  # 128 + SIGPIPE
VERBOSE_FLAG = "--verbose"
VERBOSE_HELP = "on an error, also print the traceback (accepted anywhere on the command line)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Appends `(default: X)` where there is a default worth showing; keeps the examples' lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        # `is`, not `in (None, False)`: a default of 0 equals False and is worth showing.
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = _take_flag(argv, VERBOSE_FLAG)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
        args.verbose = verbose  # taken out of argv above; a command that runs others passes it on
        code = int(_recipe(args.command).run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here rather than at interpreter exit
        return code
    except KeyboardInterrupt:
        return _fail(command, "interrupted", INTERRUPTED, verbose)
    except BrokenPipeError:
        _discard_stdout()  # whoever read our stdout has gone (`| head`): nothing to say
        return _fail(None, "", BROKEN_PIPE, verbose)
    except UsageError as err:
        return _fail(command, str(err), USAGE_ERROR, verbose)
    except OSError as err:
        return _fail(command, f"{err} (--verbose shows where)", FAILED, verbose)


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error line: `w2vkit CMD: message (see ... --help)`, exit 2,
    instead of the usage block first (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `w2vkit` parser. Only `command`'s recipe is imported; the others get a placeholder
    parser, which is all that `w2vkit --help` needs."""
    parser = _Parser(
        prog="w2vkit",
        description="wav2vec 2.0 self-supervised pretraining: from a folder of raw audio to\n"
        "speech representations. `w2vkit COMMAND --help` describes each command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"w2vkit {_version()}")
    parser.add_argument(VERBOSE_FLAG, action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_epilog(name),
            formatter_class=HelpFormatter,
        )
        # Only documented here: main() has already taken the flag out of argv.
        sub.add_argument(VERBOSE_FLAG, action="store_true", help=VERBOSE_HELP)
        if name == command:
            _recipe(name).add_arguments(sub)
    return parser


def _epilog(command: str) -> str:
    text = "examples:\n" + "".join(f"  {line}\n" for line in EXAMPLES[command])
    return text + (f"\n{HELP_NOTES[command]}" if command in HELP_NOTES else "")


def _take_flag(argv: list[str], flag: str) -> bool:
    """Remove every `flag` before a `--` from argv (in place); True if there was one."""
    end = argv.index("--") if "--" in argv else len(argv)
    found = flag in argv[:end]
    argv[:end] = [a for a in argv[:end] if a != flag]
    return found


def _fail(command: str | None, message: str, code: int, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    if message:
        print(f"w2vkit {command}: {message}" if command else f"w2vkit: {message}", file=sys.stderr)
    return code


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the flush at interpreter exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (stdout replaced in-process)
        pass


def _version() -> str:
    """The installed distribution's version; the package's own from a bare source tree."""
    try:
        return importlib.metadata.version("w2vkit")
    except importlib.metadata.PackageNotFoundError:
        from w2vkit import __version__

        return __version__


def _recipe(name: str):
    return importlib.import_module(f"w2vkit.recipes.{name}")
