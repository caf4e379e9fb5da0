"""`w2vkit transcribe MODEL AUDIO... | --manifest M.tsv`: speech to text with a fine-tuned model.

MODEL is a w2vkit fine-tuning checkpoint, an HF `Wav2Vec2ForCTC` directory or a fairseq fine-tuned
checkpoint (with `--dict`). Utterances are
sorted by length and batched (`--batch-seconds` of padded audio per batch), on the GPU when there
is one; output keeps the input order. Greedy CTC decoding by default; `--lm` adds beam search with
an n-gram model (w2vkit.finetune.beam: lexicon mode with a word LM, `--lexicon-free` with a letter
LM). `--format text` writes one transcript per line, `jsonl` adds word start/end times in seconds
from the CTC frame positions, `tsv` writes `path<TAB>transcript` rows (a manifest's relative paths).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from w2vkit.checks import device_option
from w2vkit.config import ConfigError
from w2vkit.data.audio import SAMPLE_RATE, load_audio, normalize, probe_audio, resampled_length
from w2vkit.data.manifest import read_manifest
from w2vkit.finetune.beam import BeamOptions, BeamSearchDecoder, lexicon_from_arpa, read_lexicon
from w2vkit.finetune.decode import Hypothesis, greedy_decode, word_times
from w2vkit.interop import build, read_model
from w2vkit.interop.safe_load import CheckpointError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="w2vkit finetune checkpoint or HF Wav2Vec2ForCTC directory")
    parser.add_argument("audio", nargs="*", type=Path, help="audio files to transcribe")
    parser.add_argument("--manifest", type=Path, help="transcribe every row of a .tsv manifest")
    parser.add_argument(
        "--dict", type=Path, help="dict.ltr.txt of a fairseq fine-tuned model (default: beside it)"
    )
    parser.add_argument("--format", choices=["text", "jsonl", "tsv"], default="text")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument("--batch-seconds", type=float, default=200.0, help="padded audio per batch")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    lm = parser.add_argument_group("n-gram LM beam search (flashlight-text)")
    lm.add_argument("--lm", type=Path, help="KenLM model (.arpa or binary); enables beam search")
    lm.add_argument(
        "--lexicon", type=Path, help="WORD t1 t2 ... | lines; default: the ARPA's words"
    )
    lm.add_argument(
        "--lexicon-free",
        action="store_true",
        help="no lexicon: --lm is a letter LM (lm build --letters)",
    )
    lm.add_argument("--lm-weight", type=float, default=2.0)
    lm.add_argument("--word-score", type=float, default=0.0, help="per-word insertion score")
    lm.add_argument("--sil-score", type=float, default=0.0, help="score per word boundary")
    lm.add_argument("--beam-size", type=int, default=50)


def run(args: argparse.Namespace) -> int:
    try:
        finetuned = read_model(args.model, dict_path=args.dict)
    except (CheckpointError, OSError) as err:
        raise ConfigError(f"cannot read {args.model}: {err}") from err
    paths, names = _inputs(args)
    device = device_option(args.device)
    model = build(finetuned, "ctc", source=str(args.model)).to(device).eval()
    assert finetuned.vocab is not None  # the "ctc" head refuses a record without one
    decoder = _beam_decoder(args, finetuned.vocab)
    conv = finetuned.cfg.feature_extractor.conv_layers
    frame_sec = math.prod(stride for _, _, stride in conv) / SAMPLE_RATE
    results: list[Hypothesis | None] = [None] * len(paths)
    with tqdm(total=len(paths), unit="file", file=sys.stderr, disable=None) as bar:
        for batch in _batches(paths, bool(finetuned.normalize), args.batch_seconds):
            indices, wavs = zip(*batch, strict=True)
            hyps = _decode(model, list(wavs), device, decoder)
            for index, decoded in zip(indices, hyps, strict=True):
                results[index] = decoded
            bar.update(len(batch))
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for name, hyp in zip(names, results, strict=True):
            assert hyp is not None
            text = finetuned.vocab.text(hyp.tokens)
            if args.format == "text":
                out.write(text + "\n")
            elif args.format == "tsv":
                out.write(f"{name}\t{text}\n")
            else:
                words = word_times(hyp, finetuned.vocab, frame_sec)
                out.write(json.dumps({"path": name, "text": text, "words": words}) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


def _inputs(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """Files to read and the names to print for them."""
    if args.manifest is not None and args.audio:
        raise ConfigError("give audio files or --manifest, not both")
    if args.manifest is not None:
        manifest = read_manifest(args.manifest)
        return [manifest.root / p for p in manifest.paths], list(manifest.paths)
    if not args.audio:
        raise ConfigError("nothing to transcribe: give audio files or --manifest M.tsv")
    folders = [p for p in args.audio if p.is_dir()]
    if folders:
        raise ConfigError(
            f"{folders[0]} is a folder: give audio files, or a manifest of the folder "
            f"(`w2vkit manifest {folders[0]} --dest DIR --valid-percent 0`, then --manifest "
            "DIR/train.tsv)"
        )
    missing = [str(p) for p in args.audio if not p.is_file()]
    if missing:
        raise ConfigError(f"no such audio file: {missing[0]}")
    return list(args.audio), [str(p) for p in args.audio]


def _beam_decoder(args: argparse.Namespace, vocab) -> BeamSearchDecoder | None:
    if args.lm is None:
        if args.lexicon or args.lexicon_free:
            raise ConfigError("--lexicon and --lexicon-free need --lm")
        return None
    if not args.lm.is_file():
        raise ConfigError(f"--lm {args.lm}: no such file")
    if args.lexicon_free:
        lexicon = None
    elif args.lexicon is not None:
        lexicon = read_lexicon(args.lexicon)
    else:
        lexicon = lexicon_from_arpa(args.lm)
    options = BeamOptions(
        beam_size=args.beam_size,
        lm_weight=args.lm_weight,
        word_score=args.word_score,
        sil_score=args.sil_score,
    )
    return BeamSearchDecoder(vocab, args.lm, lexicon=lexicon, options=options)


def _batches(paths: list[Path], normalize_audio: bool, batch_seconds: float):
    """Length-sorted batches of (input index, waveform (S,)) within the padded-audio budget.

    Lengths come from the file headers, so only one batch of audio is in memory at a time.
    """
    lengths = []
    for path in paths:
        try:
            info = probe_audio(path)
        except Exception as err:  # noqa: BLE001 (libsndfile and OS errors: not readable audio)
            raise ConfigError(f"cannot read {path}: {err}") from err
        lengths.append(resampled_length(info.num_frames, info.sample_rate, SAMPLE_RATE))
    order = sorted(range(len(paths)), key=lambda i: -lengths[i])  # longest first
    budget = batch_seconds * SAMPLE_RATE
    group: list[int] = []
    for i in order:
        if group and lengths[group[0]] * (len(group) + 1) > budget:
            yield [(j, _load(paths[j], normalize_audio)) for j in group]
            group = []
        group.append(i)
    if group:
        yield [(j, _load(paths[j], normalize_audio)) for j in group]


def _load(path: Path, normalize_audio: bool) -> torch.Tensor:
    try:
        wav = load_audio(path, SAMPLE_RATE)
    except Exception as err:  # noqa: BLE001 (libsndfile, soxr and OS errors: a bad file)
        raise ConfigError(f"cannot decode {path}: {err}") from err
    return torch.from_numpy(normalize(wav) if normalize_audio else wav)


def _decode(model, wavs: list[torch.Tensor], device, decoder) -> list[Hypothesis]:
    lengths = torch.tensor([len(w) for w in wavs])
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)  # (B, S)
    padding_mask = torch.arange(padded.shape[1])[None] >= lengths[:, None]  # (B, S)
    with torch.no_grad():
        out = model(padded.to(device), padding_mask.to(device) if padding_mask.any() else None)
    log_probs = out.logits.float().log_softmax(-1)  # (B, T, V)
    if decoder is None:
        return greedy_decode(log_probs, out.lengths)
    return [decoder.decode(lp[:n]) for lp, n in zip(log_probs, out.lengths.tolist(), strict=True)]


__all__ = ["add_arguments", "run"]
