"""`w2vkit demo`, the recognisers: does pretraining pay off once there is a transcript to learn?

The seen voices' transcripts label the pretraining manifest; three recognisers fine-tune on it
with the same CTC head, data, seed and updates: the pretrained model, a random-init twin of the
same architecture (only the initial weights differ), and the supervised log-mel baseline
(`finetune logmel_cpu`: no pretraining at all). Each transcribes the voices pretraining never
heard, greedily and with a word 3-gram LM built from the training transcripts.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from pathlib import Path

FINETUNE_CONFIG = "cpu"  # the shipped fine-tuning recipe, for the pretrained model and its twin
BASELINE_CONFIG = "logmel_cpu"  # the supervised baseline: the same recipe from random init
RECOGNISERS = ("pretrained", "random", "logmel")  # the probe table's row names

INTERRUPTED_CODES = (130, 143)  # what a w2vkit command returns after SIGINT / SIGTERM
RunRecipe = Callable[[str, list[str]], int]
"""`w2vkit NAME argv` in this process, returning its exit code (the demo's `_run_recipe`)."""


class StepFailed(Exception):
    """A step of the demo failed: its one line for stderr, and the exit code to return."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _check(code: int, what: str) -> None:
    if code in INTERRUPTED_CODES:  # Ctrl-C: stop the demo, as the command line reports it
        raise KeyboardInterrupt
    if code != 0:
        raise StepFailed(f"{what} failed (exit code {code})", code)


def label_splits(corpus: Path, manifest: Path, seed: int, run: RunRecipe) -> tuple[Path, str]:
    """Letters for the seen voices' manifest and a test manifest of the unseen voices
    (`manifest/unseen/train.tsv`); returns that test manifest and the valid split ('' if empty)."""
    from w2vkit.data.manifest import read_manifest

    valid = manifest / "valid.tsv"
    valid_split = "valid" if valid.is_file() and len(read_manifest(valid)) else ""
    seen = [str(manifest / "train.tsv"), *([str(valid)] if valid_split else [])]
    test = manifest / "unseen" / "train.tsv"
    with contextlib.redirect_stdout(io.StringIO()):
        code = (
            run("labels", [*seen, "--letters"])
            or run("manifest", [str(corpus / "unseen"), f"--dest={test.parent}",
                                "--valid-percent=0", f"--seed={seed}", "--workers=1"])
            or run("labels", [str(test), "--letters"])
            or run("lm", ["build", str(manifest / "train.wrd"), "--order=3",
                          f"--output={manifest / 'words.arpa'}"])
        )  # fmt: skip
    _check(code, "writing the labels or the LM")
    return test, valid_split


def random_twin(checkpoint: Path, out: Path, seed: int) -> Path:
    """The pretrained model's architecture with fresh weights drawn from `seed`."""
    import torch

    from w2vkit.interop import ModelRecord, read_model, save_w2vkit
    from w2vkit.model.wav2vec2 import Wav2Vec2Model

    cfg = read_model(checkpoint).cfg
    torch.manual_seed(seed)
    save_w2vkit(ModelRecord(cfg, Wav2Vec2Model(cfg).state_dict()), out)
    return out


def finetune_all(
    checkpoint: Path,
    manifest: Path,
    asr_dir: Path,
    *,
    steps: int,
    seed: int,
    valid_split: str,
    run: RunRecipe,
) -> dict[str, Path]:
    """Fine-tune the three recognisers with the same budget; {row name: checkpoint_last.pt}."""
    twin = random_twin(checkpoint, asr_dir / "random_init.pt", seed)
    configs = {
        "pretrained": [FINETUNE_CONFIG, f"--init-from={checkpoint}"],
        "random": [FINETUNE_CONFIG, f"--init-from={twin}"],
        "logmel": [BASELINE_CONFIG],
    }
    done = {}
    for name, config in configs.items():
        out = asr_dir / name
        out.mkdir(parents=True, exist_ok=True)
        argv = [*config, f"data.manifest_dir={manifest}", f"train.out_dir={out}",
                f"train.max_steps={steps}", f"train.seed={seed}", f"data.valid_split={valid_split}",
                f"train.validate_interval_steps={steps}", f"train.save_interval_steps={steps}",
                f"train.log_interval={max(1, steps // 10)}"]  # fmt: skip
        print(
            f"      fine-tuning {name} ({' '.join(config[:1])}, {steps} updates): {out}/stdout.log"
        )
        started = time.perf_counter()
        with (
            open(out / "stdout.log", "w", encoding="utf-8") as log,
            contextlib.redirect_stdout(log),
        ):
            code = run("finetune", argv)
        _check(code, f"fine-tuning {name} (see {out}/stdout.log)")
        print(f"      ... done in {time.perf_counter() - started:.0f} s")
        done[name] = out / "checkpoint_last.pt"
    return done


def score(models: dict[str, Path], test: Path, lm: Path, run: RunRecipe) -> dict[str, dict]:
    """{row name: {cer, wer, cer_lm, wer_lm}} in percent on the `test` manifest's .wrd."""
    from w2vkit.finetune.decode import char_errors, word_errors

    refs = test.with_suffix(".wrd").read_text(encoding="utf-8").splitlines()
    scores: dict[str, dict] = {}
    for name, model in models.items():
        scores[name] = {}
        for suffix, extra in (("", []), ("_lm", [f"--lm={lm}"])):
            hyp = model.parent / f"test{suffix}.tsv"
            argv = [str(model), f"--manifest={test}", "--format=tsv", f"--output={hyp}", *extra]
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                code = run("transcribe", argv)
            _check(code, f"transcribing with {name}")
            lines = hyp.read_text(encoding="utf-8").splitlines()
            hyps = [line.partition("\t")[2] for line in lines]
            scores[name]["cer" + suffix] = 100 * char_errors(refs, hyps).rate
            scores[name]["wer" + suffix] = 100 * word_errors(refs, hyps).rate
    return scores


__all__ = [
    "INTERRUPTED_CODES",
    "StepFailed",
    "BASELINE_CONFIG",
    "FINETUNE_CONFIG",
    "RECOGNISERS",
    "finetune_all",
    "label_splits",
    "score",
]
