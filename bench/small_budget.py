"""Does a small pretraining budget beat log-mel? A frame phone probe on held-out voices and sentences.

    python bench/small_budget.py --config cpu --seeds 1 2 3                # issue 18's table
    python bench/small_budget.py --config cpu --seeds 1 --set train.max_steps=300
    python bench/small_budget.py --quick                                   # seconds, for the test
    python bench/small_budget.py --objective wav2vec2 data2vec2 best_rq --set train.max_minutes=10
    python bench/small_budget.py --corpus prose --seeds 1 2 3 --set train.max_steps=500
    python bench/small_budget.py --corpus prose_long_noisy --real-dir DEBS   # issue 27's corpora

Three synthetic English corpora (eSpeak NG, `w2vkit.data.synth.make_speech_corpus`) go to
`--cache` and are reused: pretraining audio (26 voice variants x 8 accents = 208 voices), probe
training audio (3 other variants x 8 accents) and probe test audio (10 more variants x 8 accents).
No variant is shared between the three, and probe files whose text occurs in another corpus are
dropped, so the test voices and sentences are unseen in pretraining and in probe training.

For every seed, `w2vkit pretrain CONFIG` runs on the pretraining corpus; then a linear probe
(StandardScaler + LogisticRegression) is fitted per layer on frame features of the probe training
voices and scored on the test voices, for the pretrained model, the same architecture at random
initialisation, 80-band log-mel and log-mel with +-4 frames of context. Chance is the test
accuracy of always answering the commonest training phone. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from w2vkit import load_model
from w2vkit.data.labels import read_frame_labels
from w2vkit.data.synth import make_speech_corpus
from w2vkit.model.spectrogram import log_mel
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.recipes.labels import write_labels

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402 (bench/corpora.py beside this script)

ACCENTS = (
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
    "en-us-nyc",
)  # fmt: skip
# eSpeak NG voice variants (espeak-ng-data/voices/!v), split once: pretraining, probe train, test.
PRETRAIN_VARIANTS = (
    "m1", "m2", "m3", "m4", "f1", "f2", "f3", "klatt", "klatt2", "klatt3", "Alex", "Andy",
    "Annie", "Denis", "Gene", "Jacky", "Lee", "Michael", "Reed", "adam", "anika", "belinda",
    "caleb", "david", "edward", "grandma",
)  # fmt: skip
PROBE_TRAIN_VARIANTS = ("m5", "f4", "klatt4")
PROBE_TEST_VARIANTS = (
    "m6", "m7", "f5", "klatt5", "Alicia", "Andrea", "john", "linda", "paul", "steph",
)  # fmt: skip
OBJECTIVE_CONFIGS = {"wav2vec2": "cpu", "data2vec2": "data2vec2_cpu", "best_rq": "best_rq_cpu"}
"""`--objective NAME`: the CPU recipe each objective runs."""
CONTEXT_FRAMES = 4  # log-mel +-4 frames: the stacked baseline of issue 18


@dataclass(frozen=True)
class Sizes:
    """Minutes of audio per corpus and how many probe training frames the classifier sees."""

    pretrain_minutes: float
    probe_train_minutes: float
    probe_test_minutes: float
    max_train_frames: int
    max_iter: int


FULL = Sizes(60.0, 6.0, 6.0, max_train_frames=20000, max_iter=300)
QUICK = Sizes(0.25, 0.15, 0.15, max_train_frames=1500, max_iter=30)
QUICK_OVERRIDES = [
    "train.max_steps=3", "train.max_minutes=0", "data.max_batch_samples=64000",
    "data.min_samples=8000", "data.max_samples=16000", "train.validate_interval_steps=0",
    "train.log_interval=1",
]  # fmt: skip


def voices(variants: tuple[str, ...]) -> list[str]:
    return [f"{accent}+{variant}" for variant in variants for accent in ACCENTS]


def _synth(out: Path, minutes: float, seed: int, names: list[str]) -> Path:
    """The corpus in `out` (made once: `out/done` marks a finished one)."""
    if not (out / "done").is_file():
        make_speech_corpus(out / "audio", minutes=minutes, seed=seed, voices=names)
        (out / "done").write_text("ok\n")
    return out / "audio"


def _w2vkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "w2vkit", *args], check=True)


def _texts(audio_dir: Path) -> dict[str, str]:
    """Path relative to `audio_dir` (as in a manifest) -> the transcript of its file."""
    return {
        str(p.relative_to(audio_dir).with_suffix(".flac")): json.loads(p.read_text())["text"]
        for p in sorted(audio_dir.rglob("*.json"))
    }


def build_corpora(
    cache: Path, sizes: Sizes, corpus: str = "default", real_dir: Path | None = None
) -> tuple[Path, dict[str, Path]]:
    """(pretraining manifest dir, {"train" | "test": probe manifest dir with train.phones.npz}).

    `corpus`: "default" (issue 18's) or a `corpora.CORPORA` name, with the real recordings of
    `real_dir` mixed in when given (`corpora.add_real`)."""
    if corpus == "default":
        pretrain_audio = _synth(
            cache / "pretrain", sizes.pretrain_minutes, 100, voices(PRETRAIN_VARIANTS)
        )
        manifest = cache / "pretrain" / "manifest"
    else:
        pretrain_audio = corpora.build(corpus, cache, sizes.pretrain_minutes)
        print(corpora.add_real(pretrain_audio.parent / "real", real_dir))
        manifest = pretrain_audio.parent / ("manifest_real" if real_dir else "manifest")
        pretrain_audio = pretrain_audio.parent if real_dir else pretrain_audio  # audio/ + real/
    if not (manifest / "train.tsv").is_file():
        _w2vkit("manifest", str(pretrain_audio), "--dest", str(manifest), "--valid-percent", "0.02")
    probes = {}
    for split, seed, variants, minutes in (
        ("train", 200, PROBE_TRAIN_VARIANTS, sizes.probe_train_minutes),
        ("test", 300, PROBE_TEST_VARIANTS, sizes.probe_test_minutes),
    ):
        audio = _synth(cache / f"probe_{split}", minutes, seed, voices(variants))
        probes[split] = cache / f"probe_{split}" / "manifest"
        if not (probes[split] / "train.phones.npz").is_file():
            _w2vkit("manifest", str(audio), "--dest", str(probes[split]), "--valid-percent", "0")
            write_labels([probes[split] / "train.tsv"], phones=True)
    return manifest, probes


@dataclass
class ProbeSet:
    """One probe split: wavs[i] (S,) float32, labels[i] (T,) phone names, texts[i] its sentence."""

    wavs: list[np.ndarray]
    labels: list[np.ndarray]
    texts: list[str]


def load_probe_set(manifest_dir: Path, banned_texts: set[str]) -> ProbeSet:
    """The split's files whose transcript is not in `banned_texts` (held-out sentences)."""
    root = Path((manifest_dir / "train.tsv").read_text().splitlines()[0])
    texts = _texts(root)
    kept = ProbeSet([], [], [])
    for rel, frames in read_frame_labels(manifest_dir / "train.phones.npz").items():
        if texts[rel] in banned_texts:
            continue
        kept.wavs.append(sf.read(root / rel, dtype="float32")[0])
        kept.labels.append(frames)
        kept.texts.append(texts[rel])
    return kept


def held_out_probe_sets(cache: Path, probes: dict[str, Path]) -> dict[str, ProbeSet]:
    """Probe train and test sets with every test sentence unseen in pretraining and probe train."""
    pretrain = set(_texts(cache / "pretrain" / "audio").values())
    train_texts = set(_texts(cache / "probe_train" / "audio").values())
    return {
        "train": load_probe_set(probes["train"], pretrain),
        "test": load_probe_set(probes["test"], pretrain | train_texts),
    }


def with_context(features: np.ndarray, frames: int) -> np.ndarray:
    """Each frame with its `frames` neighbours each side, edges repeated. (T, F) -> (T, (2k+1)F)."""
    padded = np.pad(features, ((frames, frames), (0, 0)), mode="edge")
    length = len(features)
    return np.concatenate([padded[i : i + length] for i in range(2 * frames + 1)], axis=1)


def log_mel_features(wav: np.ndarray) -> np.ndarray:
    """80-band log-mel on the model's 20 ms frame grid. (S,) -> (T, 80)."""
    return log_mel(torch.from_numpy(wav)[None])[0].T.numpy()


@torch.no_grad()
def model_layers(model: Wav2Vec2Model, wav: np.ndarray) -> list[np.ndarray]:
    """[encoder input, layer 1, ...] states of one file. (S,) -> L+1 arrays (T, D)."""
    x = torch.from_numpy(wav)[None]  # (1, S)
    if model.normalize_input:
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)
    return [h[0].numpy() for h in model.extract_features(x).hidden_states]


def stack(per_file: list[np.ndarray], labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    for features, frames in zip(per_file, labels, strict=True):
        if len(features) != len(frames):
            raise ValueError(f"{len(features)} feature frames for {len(frames)} labels")
    return np.concatenate(per_file), np.concatenate(labels)


def probe_accuracy(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], sizes: Sizes
) -> float:
    """Test accuracy of a linear classifier fitted on (a seeded subsample of) `train`."""
    x, y = train
    keep = np.random.default_rng(0).permutation(len(y))[: sizes.max_train_frames]
    scaler = StandardScaler().fit(x[keep])
    classifier = LogisticRegression(max_iter=sizes.max_iter)
    with warnings.catch_warnings():  # a capped iteration count is the budget, not a fault
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(scaler.transform(x[keep]), y[keep])
    return float(np.mean(classifier.predict(scaler.transform(test[0])) == test[1]))


def chance_accuracy(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Test accuracy of always answering the commonest phone of the probe training set."""
    names, counts = np.unique(train_labels, return_counts=True)
    return float(np.mean(test_labels == names[np.argmax(counts)]))


def feature_accuracy(
    extract: Callable[[np.ndarray], list[np.ndarray]], sets: dict[str, ProbeSet], sizes: Sizes
) -> list[float]:
    """Probe accuracy of every feature stream `extract(wav)` returns (a list per file)."""
    per_split = {split: [extract(w) for w in s.wavs] for split, s in sets.items()}
    num_streams = len(per_split["train"][0])
    return [
        probe_accuracy(
            stack([f[k] for f in per_split["train"]], sets["train"].labels),
            stack([f[k] for f in per_split["test"]], sets["test"].labels),
            sizes,
        )
        for k in range(num_streams)
    ]


def baselines(sets: dict[str, ProbeSet], sizes: Sizes, cache: Path) -> dict[str, float]:
    """Chance, log-mel and log-mel +-4 accuracies (kept in `cache`: they do not depend on a run)."""
    saved = cache / f"baselines_{sizes.max_train_frames}_{sizes.max_iter}.json"
    if saved.is_file():
        return json.loads(saved.read_text())

    def streams(wav: np.ndarray) -> list[np.ndarray]:
        mel = log_mel_features(wav)
        return [mel, with_context(mel, CONTEXT_FRAMES)]

    mel, mel_context = feature_accuracy(streams, sets, sizes)
    train, test = (np.concatenate(sets[s].labels) for s in ("train", "test"))
    result = {
        "chance": chance_accuracy(train, test),
        "log_mel": mel,
        "log_mel_context": mel_context,
    }
    saved.write_text(json.dumps(result) + "\n")
    return result


def pretrain(config: str, manifest: Path, out_dir: Path, seed: int, overrides: list[str]) -> dict:
    """Run `w2vkit pretrain` (reused when `out_dir` holds a finished run); its log summary."""
    done = out_dir / "done.json"
    if not done.is_file():
        start = time.monotonic()
        _w2vkit(
            "pretrain", config, f"data.manifest_dir={manifest}", f"train.out_dir={out_dir}",
            f"train.seed={seed}", *overrides,
        )  # fmt: skip
        minutes = (time.monotonic() - start) / 60
        done.write_text(json.dumps({"wall_minutes": minutes}) + "\n")
    return {**json.loads(done.read_text()), **plateau_summary(out_dir / "train_log.jsonl")}


def plateau_summary(log_path: Path) -> dict:
    """Updates, final train loss, and the logged update from which the contrastive loss (`loss_0`,
    without the diversity term) stays 0.1 bit below the chance plateau log2(K + 1) (None: it
    ends above). "Stays": a dip in the first updates, before the codebook spreads, is no escape."""
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    if train and "loss_0" not in train[-1]:  # data2vec 2.0 or BEST-RQ: no contrastive plateau
        last = train[-1]
        return {
            "updates": last["num_updates"],
            "plateau_bits": math.nan,
            "left_plateau_at": None,
            "final_loss_bits": last["loss"],
            "final_accuracy": last.get("accuracy"),
            "final_code_perplexity": last.get("code_perplexity"),
        }
    config = (log_path.parent / "config.yaml").read_text()
    negatives = int(config.split("num_negatives:")[1].split()[0])
    plateau = math.log2(negatives + 1)
    above = [n for n, r in enumerate(train) if r["loss_0"] >= plateau - 0.1]
    start = above[-1] + 1 if above else 0
    left = train[start]["num_updates"] if start < len(train) else None
    last = train[-1] if train else {}
    return {
        "updates": last.get("num_updates", 0),
        "plateau_bits": plateau,
        "left_plateau_at": left,
        "final_loss_bits": last.get("loss_0"),
        "final_accuracy": last.get("accuracy"),
        "final_code_perplexity": last.get("code_perplexity"),
    }


def random_init(model: Wav2Vec2Model, seed: int) -> Wav2Vec2Model:
    """The same architecture, freshly initialised from `seed`."""
    torch.manual_seed(seed)
    fresh = Wav2Vec2Model(model.cfg).eval()
    fresh.normalize_input = model.normalize_input
    return fresh


def run_seed(
    args: argparse.Namespace, manifest: Path, sets: dict[str, ProbeSet], sizes: Sizes, seed: int
) -> dict:
    out_dir = args.cache / "runs" / f"{args.name}_seed{seed}"
    run = pretrain(args.config, manifest, out_dir, seed, args.overrides)
    model = load_model(out_dir / "checkpoint_last.pt")
    pretrained = feature_accuracy(lambda w: model_layers(model, w), sets, sizes)
    fresh = random_init(model, seed)
    random = feature_accuracy(lambda w: model_layers(fresh, w), sets, sizes)
    return {"seed": seed, **run, "pretrained_layers": pretrained, "random_layers": random}


def _mean_spread(values: list[float]) -> str:
    mean = 100 * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.1f}%"
    return f"{mean:.1f}% ± {100 * float(np.std(values)):.1f} ({', '.join(f'{100 * v:.1f}' for v in values)})"


def table(base: dict[str, float], runs: list[tuple[str, list[dict]]]) -> str:
    """One row per (label, seeds) run, each with its architecture at random initialisation."""
    rows = [("chance", f"{100 * base['chance']:.1f}%")]
    for label, seeds in runs:
        random = [max(s["random_layers"]) for s in seeds]
        rows.append((f"{label} at random initialisation (best layer)", _mean_spread(random)))
        rows.append(
            (f"{label} (best layer)", _mean_spread([max(s["pretrained_layers"]) for s in seeds]))
        )
    rows += [
        ("80-band log-mel", f"{100 * base['log_mel']:.1f}%"),
        ("80-band log-mel with ±4 frames of context", f"{100 * base['log_mel_context']:.1f}%"),
    ]
    lines = ["| features | frame phone accuracy, held-out voices |", "|---|---|"]
    return "\n".join(lines + [f"| {name} | {value} |" for name, value in rows])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="cpu", help="pretraining recipe: a name or a YAML file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a pretraining override, e.g. --set train.max_steps=300 (repeatable)")  # fmt: skip
    parser.add_argument(
        "--name", default=None, help="run name in the cache (default: config + overrides)"
    )
    parser.add_argument("--cache", type=Path, default=Path("runs/small_budget"))
    parser.add_argument("--quick", action="store_true", help="tiny corpora and 3 updates (tests)")
    parser.add_argument(
        "--objective", nargs="+", choices=sorted(OBJECTIVE_CONFIGS), default=None,
        help="compare objectives, each with its CPU recipe (replaces --config)",
    )  # fmt: skip
    parser.add_argument("--corpus", default="default", choices=["default", *corpora.CORPORA],
                        help="the pretraining corpus (bench/corpora.py); probes stay the same")  # fmt: skip
    parser.add_argument(
        "--real-dir", type=Path, help="mix in Debian's recordings (bench/corpora.py)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.overrides = QUICK_OVERRIDES + args.overrides
    args.configs = (
        [OBJECTIVE_CONFIGS[o] for o in args.objective] if args.objective else [args.config]
    )
    return args


def _run_name(args: argparse.Namespace, config: str) -> str:
    if args.name is not None and len(args.configs) == 1:
        return args.name
    corpus = [] if args.corpus == "default" else [args.corpus + ("+real" if args.real_dir else "")]
    return "_".join([Path(config).stem, *corpus, *args.overrides]).replace("/", "-")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    args.cache.mkdir(parents=True, exist_ok=True)
    manifest, probes = build_corpora(args.cache, sizes, args.corpus, args.real_dir)
    sets = held_out_probe_sets(args.cache, probes)
    base = baselines(sets, sizes, args.cache)
    runs: list[tuple[str, list[dict]]] = []
    for config in args.configs:
        args.config, args.name = config, _run_name(args, config)
        seeds = [run_seed(args, manifest, sets, sizes, seed) for seed in args.seeds]
        runs.append((f"`{config}` {' '.join(args.overrides)}".strip(), seeds))
    print(table(base, runs))
    for label, seeds in runs:
        for s in seeds:
            print(
                f"{label} seed {s['seed']}: {s['updates']} updates in {s['wall_minutes']:.1f} min, "
                f"plateau {s['plateau_bits']:.3f} bits left at update {s['left_plateau_at']}, final "
                f"loss {s['final_loss_bits']:.3f}, layers "
                f"{[round(100 * a, 1) for a in s['pretrained_layers']]}"
            )
    by_config = {config: seeds for config, (_, seeds) in zip(args.configs, runs, strict=True)}
    result = {"overrides": args.overrides, **base, "runs": by_config}
    if len(runs) == 1:  # one recipe: its seeds at the top level, as before `--objective`
        result |= {"config": args.configs[0], "seeds": runs[0][1]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
