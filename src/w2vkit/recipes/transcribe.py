"""`w2vkit transcribe MODEL AUDIO... | --manifest M.tsv`: speech to text with a fine-tuned model.

MODEL is a w2vkit fine-tuning checkpoint, an HF `Wav2Vec2ForCTC` directory or a fairseq fine-tuned
checkpoint (with `--dict`). Files run in input-order blocks of a few batches; within a block,
utterances are sorted by length and batched (`--batch-seconds` of padded audio per batch), on the
GPU when there is one, and each block is written before the next runs, in input order. Files over
`--max-seconds` run in frame-aligned windows whose log-probabilities are joined. A file gives the
same transcript whatever it is batched with (only a layer-norm model pads; others batch equal
lengths). A file that cannot be used (unreadable, too short, NaN samples) is skipped and named on
stderr; `-o` is opened before any work. Greedy CTC decoding by default; `--lm` adds beam search with
an n-gram model (w2vkit.finetune.beam: lexicon mode with a word LM, `--lexicon-free` with a letter
LM). `--format text` writes one transcript per line, `jsonl` adds word start/end times in seconds
from the CTC frame positions, `tsv` writes `path<TAB>transcript` rows (a manifest's relative paths).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import soundfile as sf
import torch
from tqdm import tqdm

from w2vkit.checks import device_option
from w2vkit.config import ConfigError
from w2vkit.data.audio import (
    SAMPLE_RATE,
    DecodeError,
    decode_checked,
    normalize,
    probe_audio,
    resampled_length,
)
from w2vkit.data.manifest import read_manifest
from w2vkit.data.vocab import Vocabulary
from w2vkit.features.batching import BatchLimits, group_windows, padding_invariant
from w2vkit.features.extract import plan_chunks
from w2vkit.finetune.beam import BeamOptions, BeamSearchDecoder, lexicon_from_arpa, read_lexicon
from w2vkit.finetune.decode import Hypothesis, greedy_decode, word_times
from w2vkit.interop import build, read_model
from w2vkit.interop.safe_load import CheckpointError
from w2vkit.model.feature_extractor import frame_geometry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="w2vkit finetune checkpoint or HF Wav2Vec2ForCTC directory")
    parser.add_argument("audio", nargs="*", type=Path, help="audio files to transcribe")
    parser.add_argument("--manifest", type=Path, help="transcribe every row of a .tsv manifest")
    parser.add_argument(
        "--dict", type=Path, help="dict.ltr.txt of a fairseq fine-tuned model (default: beside it)"
    )
    parser.add_argument("--format", choices=["text", "jsonl", "tsv"], default="text")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=200.0,
        help="padded audio per batch (default %(default)s)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=30.0,
        help="longer files run in frame-aligned windows of this length, their log-probabilities "
        "joined before decoding (0 = whole files; default %(default)s)",
    )
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
    lm.add_argument(
        "--lm-weight", type=float, default=2.0, help="LM score weight (default %(default)s)"
    )
    lm.add_argument(
        "--word-score",
        type=float,
        default=0.0,
        help="per-word insertion score (default %(default)s)",
    )
    lm.add_argument(
        "--sil-score", type=float, default=0.0, help="score per word boundary (default %(default)s)"
    )
    lm.add_argument(
        "--beam-size", type=int, default=50, help="hypotheses kept (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    if args.batch_seconds <= 0 or args.max_seconds < 0:
        raise ConfigError("--batch-seconds must be > 0 and --max-seconds >= 0")
    existed = args.output is not None and args.output.exists()
    out = _open_output(args)  # before any work: a bad -o must not cost the whole run
    started = False
    try:
        try:
            finetuned = read_model(args.model, dict_path=args.dict)
        except (CheckpointError, OSError) as err:
            raise ConfigError(f"cannot read {args.model}: {err}") from err
        paths, names = _inputs(args)
        device = device_option(args.device)
        model = build(finetuned, "ctc", source=str(args.model)).to(device).eval()
        assert finetuned.vocab is not None  # the "ctc" head refuses a record without one
        _check_dict(args, finetuned.vocab)
        decoder = _beam_decoder(args, finetuned.vocab)
        if out is not sys.stdout and out.seekable():  # not a pipe such as -o /dev/stdout
            out.truncate(0)  # opened for appending: a refused model leaves an earlier -o intact
        started = True
        return _transcribe(args, finetuned, model, decoder, device, paths, names, out)
    finally:
        if out is not sys.stdout:
            out.close()
            if not started and not existed:
                args.output.unlink()


def _transcribe(args, finetuned, model, decoder, device, paths, names, out) -> int:
    conv = finetuned.cfg.feature_extractor.conv_layers
    frame_sec = math.prod(stride for _, _, stride in conv) / SAMPLE_RATE
    reader = _Reader(conv, bool(finetuned.normalize), args.max_seconds)
    budget = round(args.batch_seconds * SAMPLE_RATE)
    skipped: list[tuple[str, str]] = []
    done = 0
    with tqdm(total=len(paths), unit="file", file=sys.stderr, disable=None) as bar:
        for block in _blocks(paths, reader, budget, skipped, names):
            for index, hyp in zip(
                block, _decode(model, block, device, decoder, budget), strict=True
            ):
                _write(out, args.format, names[index.index], hyp, finetuned.vocab, frame_sec)
            out.flush()  # each block is on disk before the next one runs
            done += len(block)
            bar.update(len(block))
    for name, reason in skipped:
        print(f"w2vkit transcribe: skipped {name}: {reason}", file=sys.stderr)
    if skipped:
        print(
            f"w2vkit transcribe: {done} files transcribed, {len(skipped)} skipped (left out of "
            "the output)",
            file=sys.stderr,
        )
    return 0 if done else 1


def _open_output(args: argparse.Namespace) -> TextIO:
    if args.output is None:
        return sys.stdout
    inputs = [*args.audio, *([args.manifest] if args.manifest is not None else [])]
    if any(Path(p).resolve() == args.output.resolve() for p in inputs):
        raise ConfigError(f"-o {args.output} is one of the inputs: write elsewhere")
    try:
        return open(args.output, "a", encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot write -o {args.output}: {err.strerror}") from err


def _check_dict(args: argparse.Namespace, vocab: Vocabulary) -> None:
    """`--dict` is the vocabulary of a fairseq checkpoint, which stores none; a model that stores
    its own must not be decoded with another one quietly."""
    if args.dict is not None and Vocabulary.load(args.dict) != vocab:
        raise ConfigError(
            f"--dict {args.dict} differs from the vocabulary stored in {args.model}: --dict is "
            "only for fairseq fine-tuned checkpoints, which store none; leave it out"
        )


def _write(out: TextIO, fmt: str, name: str, hyp: Hypothesis, vocab, frame_sec: float) -> None:
    text = vocab.text(hyp.tokens)
    if fmt == "text":
        out.write(text + "\n")
    elif fmt == "tsv":
        out.write(f"{name}\t{text}\n")
    else:
        words = word_times(hyp, vocab, frame_sec)
        out.write(json.dumps({"path": name, "text": text, "words": words}) + "\n")


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


@dataclass
class _File:
    index: int
    """Position among the inputs (the output order)."""
    windows: list[torch.Tensor]
    """Frame-aligned pieces of the waveform, each (S_w,); one for a short file."""


class _Reader:
    """Decodes a file and cuts it into windows of at most `max_seconds` (extract's frame-aligned
    windows: each yields exactly its frames of the whole-file grid, so the transcript of a long
    file only loses context across window edges, and memory stays bounded)."""

    def __init__(self, conv, normalize_audio: bool, max_seconds: float) -> None:
        self.conv = conv
        self.normalize = normalize_audio
        self.max_samples = round(max_seconds * SAMPLE_RATE) if max_seconds > 0 else None
        self.receptive_field = frame_geometry(conv)[0]
        if self.max_samples is not None and self.max_samples < self.receptive_field:
            raise ConfigError(f"--max-seconds {max_seconds} is shorter than one frame")

    def length(self, path: Path) -> int:
        """Samples at 16 kHz, from the header; ValueError (why) for a file that cannot be used."""
        try:
            info = probe_audio(path)
        except Exception as err:  # noqa: BLE001 (libsndfile and OS errors: not readable audio)
            detail = err.error_string if isinstance(err, sf.LibsndfileError) else str(err)
            raise ValueError(f"not readable audio: {detail}") from err
        length = resampled_length(info.num_frames, info.sample_rate, SAMPLE_RATE)
        if length < self.receptive_field:
            raise ValueError(
                f"too short: {length} samples at 16 kHz, one frame needs {self.receptive_field}"
            )
        return length

    def read(self, index: int, path: Path) -> _File:
        """File `index`, decoded and windowed; ValueError: why it cannot be used."""
        try:
            wav = decode_checked(path, SAMPLE_RATE, min_samples=self.receptive_field)
        except DecodeError as err:
            cause = f": {err.__cause__}" if err.__cause__ is not None else ""
            raise ValueError(f"{err}{cause}") from err
        samples = torch.from_numpy(normalize(wav) if self.normalize else wav)
        chunks = plan_chunks(len(samples), self.conv, self.max_samples)
        return _File(index, [samples[start:end] for start, end, _, _ in chunks])


def _blocks(paths: list[Path], reader: _Reader, budget: int, skipped: list, names: list[str]):
    """Consecutive runs of input files holding about 4 batches of audio, decoded and windowed.

    Within a block, windows are length-sorted into batches; blocks follow the input order, so
    output is written as it comes, in input order, and a failure late in a long list costs at
    most one block. Files that cannot be used are recorded in `skipped` (name, reason).
    """
    block: list[_File] = []
    block_samples = 0
    for index, path in enumerate(paths):
        try:
            length = reader.length(path)
            block.append(reader.read(index, path))
        except ValueError as err:
            skipped.append((names[index], str(err)))
            continue
        block_samples += length
        if block_samples >= 4 * budget:
            yield block
            block, block_samples = [], 0
    if block:
        yield block


def _decode(model, files: list[_File], device, decoder, budget: int) -> list[Hypothesis]:
    """The hypothesis of each file of `files`: its windows' log-probabilities, joined, decoded.

    Rows of unequal length share a padded batch only when padding cannot change their frames
    (`padding_invariant`: a layer-norm extractor); a group-norm model normalises over the padded
    row, so its windows batch only with windows of equal length: a transcript never depends on
    the other files of its batch.
    """
    windows = [(f, w) for f in files for w in f.windows]
    lengths = [len(w) for _, w in windows]
    pad = padding_invariant(model.cfg.feature_extractor)
    pieces: dict[int, torch.Tensor] = {}
    for batch in group_windows(lengths, BatchLimits(len(windows), budget), pad=pad):
        wavs = [windows[i][1] for i in batch]
        rows = torch.tensor([len(w) for w in wavs])
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)  # (B, S)
        padding_mask = torch.arange(padded.shape[1])[None] >= rows[:, None]  # (B, S)
        with torch.no_grad():
            out = model(padded.to(device), padding_mask.to(device) if padding_mask.any() else None)
        log_probs = out.logits.float().log_softmax(-1).cpu()  # (B, T, V)
        for i, lp, n in zip(batch, log_probs, out.lengths.tolist(), strict=True):
            pieces[i] = lp[:n]
    hyps, i = [], 0
    for f in files:
        joined = torch.cat([pieces[j] for j in range(i, i + len(f.windows))])  # (T, V)
        i += len(f.windows)
        hyps.append(greedy_decode(joined[None])[0] if decoder is None else decoder.decode(joined))
    return hyps


__all__ = ["add_arguments", "run"]
