"""`w2vkit convert SRC DST --to {w2vkit,hf}`: fairseq / HF / w2vkit checkpoints -> w2vkit or HF.

SRC is a fairseq `.pt` checkpoint, an HF model directory (config.json + safetensors or
pytorch_model.bin; or one `.safetensors` file next to its config.json) or a w2vkit checkpoint; its
format is detected. `--to hf` writes a directory for `Wav2Vec2ForPreTraining.from_pretrained` (or,
with `--hf-class model`, a `Wav2Vec2Model` one without the pretraining heads) with config.json,
model.safetensors and preprocessor_config.json. A HuBERT checkpoint (w2vkit or fairseq) writes an
HF `HubertModel` directory: the encoder; its prediction head has no HF class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from w2vkit.config import UsageError
from w2vkit.interop import hf, hf_ctc, hf_hubert, read_model, save_w2vkit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", type=Path, help="fairseq .pt, HF model directory or w2vkit checkpoint"
    )
    parser.add_argument(
        "dst", type=Path, help="output: a .pt file (--to w2vkit) or a directory (--to hf)"
    )
    parser.add_argument("--to", required=True, choices=["w2vkit", "hf"], help="output format")
    parser.add_argument(
        "--hf-class",
        choices=["pretraining", "model", "ctc"],
        default="pretraining",
        help="--to hf: Wav2Vec2ForPreTraining with quantizer and projection heads "
        "(default), a bare Wav2Vec2Model, or Wav2Vec2ForCTC with its processor files "
        "(SRC: a w2vkit finetune checkpoint)",
    )
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether the model expects per-utterance normalised audio; default: what "
        "the source records, else true for layer-norm extractors (HF convention)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")


def run(args: argparse.Namespace) -> int:
    if args.dst.exists() and not args.force:
        raise UsageError(f"{args.dst} exists; pass --force to overwrite")
    record = read_model(args.src)  # CheckpointError: a UsageError, main reports it
    if args.normalize is not None:
        record.normalize = args.normalize
    if args.to == "hf" and args.hf_class == "ctc":
        hf_ctc.save_hf_ctc(record, args.dst)
        symbols = len(record.vocab) if record.vocab is not None else 0
        print(f"w2vkit convert: {args.src} -> {args.dst} (HF Wav2Vec2ForCTC, {symbols} symbols)")
        return 0
    if args.to == "hf" and hf_hubert.is_hubert_source(args.src):
        left_out = hf_hubert.save_hf_hubert(record, args.dst)
        print(f"w2vkit convert: HuBERT -> HF HubertModel; not exported: {left_out}")
    elif args.to == "hf":
        hf.save_hf(record, args.dst, heads=args.hf_class == "pretraining")
    else:
        save_w2vkit(record, args.dst)
    num_params = sum(v.numel() for v in record.state_dict.values())
    print(f"w2vkit convert: {args.src} -> {args.dst} ({args.to}, {num_params:,} parameters)")
    return 0
