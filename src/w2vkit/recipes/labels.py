"""`w2vkit labels MANIFEST... --phones | --pitch | --letters [--transcripts TSV]`: labels per file.

For each manifest `DIR/{split}.tsv` (split = the file's stem), into `--dest` (default DIR):
- `--phones`: `{split}.phones.npz`, the phone at each 20 ms frame of speech that w2vkit
  synthesised (it reads the `X.json` that `make_speech_corpus` writes beside `X.flac`), and
  `{split}.utterances.tsv` (path, voice, sentence, rate_wpm, pitch, num_frames, text).
- `--pitch`: `{split}.pitch.npz`, a pitch token per frame (Praat f0 in 128 log levels, 128 =
  unvoiced), for any audio.
- `--letters`: fairseq's `{split}.wrd` and `{split}.ltr` in the manifest's line order, and one
  `dict.ltr.txt` counted over every manifest given. Transcripts come from `--transcripts TSV`
  (`relative_path<TAB>transcript`) or, without it, from `X.txt` beside each `X.flac`.
  `--phonemes` adds `{split}.phn` and `dict.phn.txt`: eSpeak NG phonemes in the same format.
Read the frame files with `w2vkit.data.labels.read_frame_labels`, the TSV with
`read_utterance_labels`; docs/labels.md describes the layout.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from w2vkit.config import ConfigError
from w2vkit.data.audio import SAMPLE_RATE, load_audio, resampled_length
from w2vkit.data.labels import frame_phone_labels, write_frame_labels, write_utterance_labels
from w2vkit.data.manifest import UNKNOWN_RATE, Manifest, read_manifest
from w2vkit.data.phonemes import phoneme_tokens
from w2vkit.data.synth import Phone
from w2vkit.data.text import (
    letter_counts,
    normalize_transcript,
    read_letter_dict,
    read_transcript_table,
    read_utf8,
    write_letter_dict,
)
from w2vkit.data.text import letters as ltr_line

UTTERANCE_COLUMNS = ("voice", "sentence", "rate_wpm", "pitch", "num_frames", "text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", type=Path, nargs="+", help="manifests (train.tsv, valid.tsv)")
    parser.add_argument(
        "--dest", type=Path, default=None, help="output folder (default: the first manifest's)"
    )
    parser.add_argument(
        "--phones",
        action="store_true",
        help="frame phone labels of speech synthesised by w2vkit (needs the X.json beside X.flac)",
    )
    parser.add_argument(
        "--pitch", action="store_true", help="frame pitch tokens (needs praat-parselmouth)"
    )
    parser.add_argument(
        "--letters",
        action="store_true",
        help="fairseq .ltr/.wrd and dict.ltr.txt from the X.txt beside each X.flac",
    )
    parser.add_argument(
        "--phonemes",
        action="store_true",
        help="with the letters, {split}.phn and dict.phn.txt: eSpeak NG phonemes of the transcripts",
    )
    parser.add_argument(
        "--g2p-voice", default="en", help="eSpeak NG voice for --phonemes (default: en)"
    )
    parser.add_argument(
        "--transcripts",
        type=Path,
        default=None,
        help="relative_path<TAB>transcript TSV for --letters (implies --letters)",
    )


def run(args: argparse.Namespace) -> int:
    write_labels(
        args.manifests,
        args.dest,
        phones=args.phones,
        pitch=args.pitch,
        letters=args.letters or args.phonemes or args.transcripts is not None,
        transcripts=args.transcripts,
        g2p_voice=args.g2p_voice if args.phonemes else None,
    )
    return 0


def write_labels(
    manifest_paths: list[Path],
    dest: Path | None = None,
    *,
    phones: bool = False,
    pitch: bool = False,
    letters: bool = False,
    transcripts: Path | None = None,
    g2p_voice: str | None = None,
) -> None:
    """What the command does, for Python callers (`w2vkit demo`); ConfigError on bad input.

    `g2p_voice` (with `letters`) adds phoneme targets in that eSpeak NG voice.
    """
    if not (phones or pitch or letters):
        raise ConfigError("choose what to write: --phones, --pitch, --letters or --transcripts")
    manifests = {Path(path): _read(Path(path)) for path in manifest_paths}
    splits = [path.name.removesuffix(".tsv") for path in manifests]
    if len(set(splits)) != len(splits):
        raise ConfigError(f"two manifests have the same name: {[str(p) for p in manifests]}")
    dest = Path(dest) if dest is not None else next(iter(manifests)).parent
    dest.mkdir(parents=True, exist_ok=True)
    if phones:
        for (path, manifest), split in zip(manifests.items(), splits, strict=True):
            write_phone_labels(path, manifest, dest, split)
    if pitch:
        for (path, manifest), split in zip(manifests.items(), splits, strict=True):
            write_pitch_labels(path, manifest, dest, split)
    if letters:
        write_letter_labels(manifests, splits, dest, transcripts, g2p_voice)


def _read(path: Path) -> Manifest:
    try:
        return read_manifest(path)
    except FileNotFoundError as err:
        raise ConfigError(f"no manifest {path}") from err
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _samples_16k(manifest: Manifest) -> np.ndarray:
    """Each file's length after resampling to 16 kHz (the model's grid). Shape: (N,) int64."""
    rates = manifest.sample_rates
    if rates is None:
        rates = np.full(len(manifest), SAMPLE_RATE)
    rates = np.where(rates == UNKNOWN_RATE, SAMPLE_RATE, rates)  # fairseq's assumption
    return np.asarray(resampled_length(manifest.num_frames, rates), dtype=np.int64)


def write_phone_labels(manifest_path: Path, manifest: Manifest, dest: Path, split: str) -> None:
    frames: dict[str, np.ndarray] = {}
    rows: dict[str, list[object]] = {}
    for n, (rel, num_samples) in enumerate(
        zip(manifest.paths, _samples_16k(manifest), strict=True)
    ):
        where = f"{manifest_path}:{n + 2}: {rel}"
        info = _synth_description(manifest.root / rel, where, int(manifest.num_frames[n]))
        rate = info["sample_rate"]  # the file's; the frame grid is at 16 kHz
        phones = [
            Phone(resampled_length(start, rate), resampled_length(end, rate), name)
            for start, end, name in info["phones"]
        ]
        frames[rel] = frame_phone_labels(phones, int(num_samples))
        rows[rel] = [
            info["voice"], info["sentence"], info["rate_wpm"], info["pitch"], len(frames[rel]),
            info["text"],
        ]  # fmt: skip
    write_frame_labels(dest / f"{split}.phones.npz", frames)
    write_utterance_labels(dest / f"{split}.utterances.tsv", UTTERANCE_COLUMNS, rows)
    num_frames = sum(len(f) for f in frames.values())
    num_classes = len(set().union(*(set(f.tolist()) for f in frames.values())))
    print(
        f"{split}.phones.npz: {len(frames)} files, {num_frames} frames, {num_classes} phone "
        f"classes; {split}.utterances.tsv"
    )


def _synth_description(audio: Path, where: str, num_samples: int) -> dict:
    """The `X.json` that make_speech_corpus wrote beside `audio`, checked against the audio."""
    path = audio.with_suffix(".json")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError as err:
        raise ConfigError(
            f"{where} has no phone labels: {path} does not exist (phone labels exist for "
            "speech made by w2vkit.data.synth.make_speech_corpus or `w2vkit demo`)"
        ) from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not JSON: {err}") from err
    missing = {*UTTERANCE_COLUMNS, "phones", "sample_rate", "num_samples"} - {"num_frames", *info}
    if missing:
        raise ConfigError(f"{path}: missing {sorted(missing)}")
    if info["num_samples"] != num_samples:
        raise ConfigError(
            f"{where}: the manifest says {num_samples} samples, {path} describes "
            f"{info['num_samples']}: the labels belong to other audio"
        )
    return info


def write_pitch_labels(manifest_path: Path, manifest: Manifest, dest: Path, split: str) -> None:
    from w2vkit.data.pitch import PitchTrackerUnavailable, pitch_tokens

    tokens: dict[str, np.ndarray] = {}
    progress = tqdm(manifest.paths, desc=f"{split} pitch", unit="file", disable=None)
    for n, rel in enumerate(progress):
        try:
            wav = load_audio(manifest.root / rel)
        except (OSError, ValueError, sf.LibsndfileError) as err:
            raise ConfigError(f"{manifest_path}:{n + 2}: {rel}: cannot decode: {err}") from err
        try:
            tokens[rel] = pitch_tokens(wav)
        except PitchTrackerUnavailable as err:
            raise ConfigError(str(err)) from err
    write_frame_labels(dest / f"{split}.pitch.npz", tokens)
    voiced = [np.mean(t < 128) for t in tokens.values() if len(t)]
    print(
        f"{split}.pitch.npz: {len(tokens)} files, {sum(len(t) for t in tokens.values())} frames, "
        f"{100 * float(np.mean(voiced)) if voiced else 0:.0f}% voiced"
    )


def write_letter_labels(
    manifests: dict[Path, Manifest],
    splits: list[str],
    dest: Path,
    table_path: Path | None,
    g2p_voice: str | None = None,
) -> None:
    """`.wrd`, `.ltr` and `dict.ltr.txt`; with `g2p_voice`, also `.phn` and `dict.phn.txt`."""
    table = _transcript_table(manifests, table_path) if table_path is not None else None
    kinds = ["ltr"] + (["phn"] if g2p_voice is not None else [])
    counts: dict[str, Counter[str]] = {kind: Counter() for kind in kinds}
    files: dict[Path, list[str]] = {}
    for (path, manifest), split in zip(manifests.items(), splits, strict=True):
        words = _normalized_transcripts(path, manifest, table, table_path)
        targets = {"ltr": [ltr_line(w) for w in words]}
        if g2p_voice is not None:
            # Lower case: eSpeak reads some capitalised words as abbreviations (US -> "U S").
            targets["phn"] = [" ".join(phoneme_tokens(w.lower(), voice=g2p_voice)) for w in words]
        files[dest / f"{split}.wrd"] = words
        for kind, lines in targets.items():
            files[dest / f"{split}.{kind}"] = lines
            counts[kind] += letter_counts(lines)
    keep = [kind for kind in kinds if _keeps_dictionary(dest / f"dict.{kind}.txt", counts[kind])]
    for path, lines in files.items():  # only once every dictionary is known to fit
        _write_lines(path, lines)
    for split, manifest in zip(splits, manifests.values(), strict=True):
        print(
            f"{split}.wrd, " + ", ".join(f"{split}.{k}" for k in kinds) + f": {len(manifest)} lines"
        )
    for kind in kinds:
        if kind in keep:
            print(f"dict.{kind}.txt: kept (it holds every symbol of these labels)")
        else:
            write_letter_dict(dest / f"dict.{kind}.txt", counts[kind])
            print(f"dict.{kind}.txt: {len(counts[kind])} symbols")


def _keeps_dictionary(path: Path, counts: Counter[str]) -> bool:
    """Whether an existing dictionary stays as it is. A fine-tuning run's output layer follows
    its symbols in file order, so rewriting it (e.g. from valid.tsv alone, after training) would
    make the run's resume refuse it. Kept when it holds every new symbol; refused when not."""
    if not path.is_file():
        return False
    try:
        existing = read_letter_dict(path)
    except ValueError:
        return False  # not a dictionary: nothing a run could depend on
    missing = sorted(set(counts) - set(existing))
    if missing:
        raise ConfigError(
            f"{path} exists without the symbols {' '.join(missing[:10])} of these labels, and a "
            "fine-tuning run may depend on its symbols: give every split at once (w2vkit labels "
            "train.tsv valid.tsv --letters), write elsewhere with --dest, or delete it first"
        )
    return True


def _normalized_transcripts(
    path: Path, manifest: Manifest, table: dict | None, table_path: Path | None
) -> list[str]:
    """Each manifest line's transcript, normalised, in the manifest's order."""
    words = []
    for n, rel in enumerate(manifest.paths):
        where = f"{path}:{n + 2}: {rel}"
        raw = _transcript(manifest.root, rel, where, table, table_path)
        words.append(normalize_transcript(raw))
        if not words[-1]:
            raise ConfigError(f"{where}: the transcript has no letters: {raw!r}")
    return words


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _transcript_table(manifests: dict[Path, Manifest], table_path: Path) -> dict:
    """The TSV's rows, after checking that every row has audio."""
    try:
        table = read_transcript_table(table_path)
    except FileNotFoundError as err:
        raise ConfigError(f"no transcript file {table_path}") from err
    except ValueError as err:
        raise ConfigError(str(err)) from err
    listed = {rel for manifest in manifests.values() for rel in manifest.paths}
    roots = {manifest.root for manifest in manifests.values()}
    for rel, (_, line_number) in table.items():
        # A row may name audio that no manifest lists (e.g. too long for it); it must exist.
        if rel not in listed and not any(os.path.exists(root / rel) for root in roots):
            raise ConfigError(
                f"{table_path}:{line_number}: {rel} has no audio: it is in no manifest "
                f"({', '.join(str(p) for p in manifests)}) and not under "
                f"{', '.join(str(r) for r in sorted(roots))}"
            )
    return table


def _transcript(
    root: Path, rel: str, where: str, table: dict | None, table_path: Path | None
) -> str:
    if table is not None:
        if rel not in table:
            raise ConfigError(f"{where} has no transcript in {table_path}")
        return table[rel][0]
    beside = (root / rel).with_suffix(".txt")
    try:
        return read_utf8(beside)
    except FileNotFoundError as err:
        raise ConfigError(f"{where} has no transcript: {beside} does not exist") from err
