"""Faults 3, 6, 7, 8, 11, 13, 14: validation NaN, divergence, restarts over an earlier run, a stale
best checkpoint, files written by failed starts, validation after resume, a reused directory.

Every test checks the message and that nothing was lost: the last good checkpoint, the best one,
the log and the directory's config stay what an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import signal
from pathlib import Path

import fault_runs as runs
import numpy as np
import pytest

from w2vkit.data.manifest import read_manifest
from w2vkit.pretrain import wav2vec2
from w2vkit.train import checkpoint, loop, rundir
from w2vkit.train.state import StepOutput


@pytest.fixture
def corpus(tmp_path) -> Path:
    """12 tones of 0.6-2.0 s: 9 in train.tsv, 3 in valid.tsv."""
    return runs.make_manifest(tmp_path, num_files=12, valid_percent=0.25)


def _nan_when(condition):
    """Patch for `wav2vec2.pretraining_objective`: the real objective, its loss NaN when
    condition(model, step)."""
    real = wav2vec2.pretraining_objective

    def make(*args, **kwargs):
        objective = real(*args, **kwargs)
        step_fn = objective.step

        def nan_step(model, batch, step, generator):
            out = step_fn(model, batch, step, generator)
            if not condition(model, step):
                return out
            sums = {**out.sums, "loss": math.nan}
            return StepOutput(out.loss * math.nan, out.sample_size, sums, out.means)

        return dataclasses.replace(objective, step=nan_step)

    return make


def test_fault03_nan_file_in_valid_is_replaced_and_best_is_written(corpus, tmp_path, caplog):
    wav = np.full(12_000, np.nan, dtype=np.float32)
    path = runs.replace_audio(corpus / "valid.tsv", 0, wav, subtype="FLOAT")
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        code = runs.pretrain(corpus, out, "train.max_steps=4", "train.validate_interval_steps=2")
    assert code == 0
    valid = runs.records(out, "valid")  # strict JSON
    assert [r["num_updates"] for r in valid] == [2, 4]
    assert all(math.isfinite(r["loss"]) and "nonfinite" not in r for r in valid)
    best = checkpoint.load(out / checkpoint.BEST)  # written: before, never
    assert best["progress"]["best_metric"] == pytest.approx(min(r["loss"] for r in valid))
    named = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(named) == 1 and "non-finite samples (12000 NaN/Inf samples)" in named[0]


def test_fault03_nonfinite_valid_loss_is_null_flagged_and_never_best(
    corpus, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(
        wav2vec2, "pretraining_objective", _nan_when(lambda model, step: not model.training)
    )
    out = tmp_path / "run"
    assert runs.pretrain(corpus, out, "train.max_steps=4", "train.validate_interval_steps=2") == 0
    valid = runs.records(out, "valid")  # parses with NaN/Infinity refused
    assert [(r["num_updates"], r["loss"]) for r in valid] == [(2, None), (4, None)]
    assert all({"loss", "best_loss"} <= set(r["nonfinite"]) for r in valid)
    assert all(r["best_loss"] is None for r in valid)  # inf: no finite best yet, logged as null
    stdout = capsys.readouterr().out
    assert (
        "warning: validation loss at update 2 is nan: logged as null, and checkpoint_best.pt "
        "is not updated from it" in stdout
    )
    assert not (out / checkpoint.BEST).exists()
    assert checkpoint.load(out / checkpoint.LAST)["progress"]["step"] == 4  # training went on


def test_fault06_nonfinite_stop_keeps_the_last_good_checkpoint(
    corpus, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    monkeypatch.setattr(wav2vec2, "pretraining_objective", _nan_when(lambda model, step: step >= 3))
    code = runs.pretrain(
        corpus, out, "train.max_steps=10", "train.save_interval_steps=2",
        "train.max_consecutive_nonfinite=2", "data.valid_split=",
    )  # fmt: skip
    assert code == 1
    assert (
        f"{out / checkpoint.LAST} keeps the last good state, the failed state is in "
        "checkpoint_failed.pt" in capsys.readouterr().out
    )
    assert checkpoint.load(out / checkpoint.LAST)["progress"]["step"] == 2  # the last save
    failed = checkpoint.load(out / checkpoint.FAILED)["progress"]
    assert failed["step"] == 3 and failed["consecutive_nonfinite"] == 2
    monkeypatch.undo()  # the cause is fixed: the rerun resumes from the good state
    assert runs.pretrain(corpus, out, "train.max_steps=4", "data.valid_split=") == 0
    assert checkpoint.load(out / checkpoint.LAST)["progress"]["step"] == 4


def _two_saves(corpus: Path, out: Path) -> None:
    assert runs.pretrain(
        corpus, out, "train.max_steps=4", "train.save_interval_steps=2",
        "train.keep_interval_checkpoints=0", "train.validate_interval_steps=2",
    ) == 0  # fmt: skip


def test_fault07_fresh_start_over_an_earlier_run_is_refused(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    _two_saves(corpus, out)
    (out / checkpoint.LAST).unlink()  # deleted because it was corrupt, say
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert runs.pretrain(corpus, out, "train.max_steps=6") == 2
    err = capsys.readouterr().err
    (newest,) = out.glob("checkpoint_*_4.pt")
    assert (
        f"{out} holds checkpoints of an earlier run but no checkpoint_last.pt. Resume from "
        f"the newest readable one, {newest} (update 4), with --resume-from {newest}, or start "
        "over with --overwrite" in err
    )
    assert sorted(p.name for p in out.iterdir()) == before  # nothing overwritten or pruned
    assert runs.pretrain(corpus, out, "train.max_steps=6", "--resume-from", str(newest)) == 0
    out_text = capsys.readouterr().out
    assert f"resumed from {newest} at update 4" in out_text  # the file given, not checkpoint_last
    assert checkpoint.load(out / checkpoint.LAST)["progress"]["step"] == 6
    assert [r["num_updates"] for r in runs.records(out)] == [1, 2, 3, 4, 5, 6]


def test_fault07_unreadable_last_names_the_newest_readable(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    _two_saves(corpus, out)
    last = out / checkpoint.LAST
    last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()
    assert runs.pretrain(corpus, out, "train.max_steps=6") == 2
    err = capsys.readouterr().err
    assert f"checkpoint {last} cannot be read: truncated or corrupt" in err
    assert "--resume-from" in err and "(update 4)" in err
    assert runs.pretrain(corpus, out, "train.max_steps=2", "--overwrite") == 0
    # The old run's checkpoints are gone, only because --overwrite said so.
    assert sorted(p.name for p in out.glob("checkpoint_*")) == [checkpoint.BEST, checkpoint.LAST]
    assert checkpoint.saved_step(out / checkpoint.BEST) == 2  # the new run's best
    assert [r["num_updates"] for r in runs.records(out)] == [1, 2]


def test_fault08_stale_best_is_reconciled_on_start(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    _two_saves(corpus, out)
    last = checkpoint.load(out / checkpoint.LAST)
    # The state of a crash between saving last (which holds the new best) and copying it:
    last["progress"]["best_step"] = last["progress"]["step"]
    checkpoint.save_atomic(last, out / checkpoint.LAST)
    shutil.copy(next(out.glob("checkpoint_*_2.pt")), out / checkpoint.BEST)
    assert checkpoint.saved_step(out / checkpoint.BEST) == 2
    capsys.readouterr()
    assert runs.pretrain(corpus, out, "train.max_steps=4") == 0  # nothing left to train
    assert checkpoint.saved_step(out / checkpoint.BEST) == 4
    assert "was stale" in capsys.readouterr().out


def test_fault11_failed_start_writes_no_config_and_resume_drops_later_log(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    _two_saves(corpus, out)
    config = (out / rundir.CONFIG).read_text()
    # A refused start (another seed than the checkpoint's) leaves config.yaml as it was.
    assert runs.pretrain(corpus, out, "train.max_steps=6", "train.seed=5") == 2
    assert "sampler state was saved with seed=1" in capsys.readouterr().err
    assert (out / rundir.CONFIG).read_text() == config
    # A refused start in a new directory leaves no directory behind.
    new = tmp_path / "new"
    assert runs.pretrain(corpus, new, "--resume-from", str(out / "missing.pt")) == 2
    assert f"--resume-from {out / 'missing.pt'}: no such file" in capsys.readouterr().err
    assert not new.exists()
    # A crash after update 4 was logged but before it was saved: last still holds update 2.
    shutil.copy(next(out.glob("checkpoint_*_2.pt")), out / checkpoint.LAST)
    assert runs.pretrain(corpus, out, "train.max_steps=4") == 0
    assert [r["num_updates"] for r in runs.records(out)] == [1, 2, 3, 4]
    assert [r["num_updates"] for r in runs.records(out, "valid")] == [2, 4]


def test_fault13_validation_after_resume_equals_an_uninterrupted_run(tmp_path):
    corpus = runs.make_manifest(tmp_path, num_files=20, valid_percent=0.5)
    manifest = read_manifest(corpus / "valid.tsv")
    longest = int(np.argmax(manifest.num_frames))  # its replacement is drawn among all others
    (manifest.root / manifest.paths[longest]).write_bytes(b"not audio")
    args = ("train.validate_interval_steps=2", "train.save_interval_steps=2")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert runs.pretrain(corpus, straight, "train.max_steps=6", *args) == 0
    assert runs.pretrain(corpus, split, "train.max_steps=2", *args) == 0
    assert runs.pretrain(corpus, split, "train.max_steps=6", *args) == 0
    assert runs.records(straight, "valid") == runs.records(split, "valid")
    assert len(runs.records(straight, "valid")) == 3


def test_fault14_resume_with_another_model_is_refused_with_what_differs(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert runs.pretrain(corpus, out, "train.max_steps=2") == 0
    saved = (out / checkpoint.LAST).read_bytes()
    capsys.readouterr()
    assert runs.pretrain(corpus, out, "train.max_steps=4", "model.transformer.num_layers=3") == 2
    err = capsys.readouterr().err
    assert (
        f"{out / checkpoint.LAST} was trained with another model: model.transformer.num_layers: 2 in the "
        "checkpoint, 3 now. Resume without these model.* overrides" in err
    )
    assert (out / checkpoint.LAST).read_bytes() == saved
    # A change that keeps the shapes resumes, and says so.
    assert runs.pretrain(corpus, out, "train.max_steps=4", "model.masking.time_prob=0.5") == 0
    assert (
        "model changed on resume: model.masking.time_prob: 0.65 in the checkpoint, 0.5 now"
        in capsys.readouterr().out
    )


def test_fault14_reused_directory_with_another_dataset_is_refused(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert runs.pretrain(corpus, out, "train.max_steps=2") == 0
    other = runs.make_manifest(tmp_path / "other", num_files=14, valid_percent=0.0)
    capsys.readouterr()
    assert runs.pretrain(other, out, "train.max_steps=4") == 2
    assert "the data changed since the checkpoint" in capsys.readouterr().err
    assert checkpoint.load(out / checkpoint.LAST)["progress"]["step"] == 2


def test_issue28_1_sigterm_and_rerun_keep_the_validated_best(corpus, tmp_path, monkeypatch, capsys):
    """Validated and saved at update 3 (its best), SIGTERM during update 4: last holds update 5
    with update 3's validation record and best metric. The rerun must not take it for the best."""
    real_update = loop.run_update

    def sigterm_in_update_4(state, *args, **kwargs):  # the stop is asked for with update 5
        if state.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_update(state, *args, **kwargs)

    monkeypatch.setattr(loop, "run_update", sigterm_in_update_4)
    out = tmp_path / "run"
    every_3 = ("train.save_interval_steps=3", "train.validate_interval_steps=3")
    assert runs.pretrain(corpus, out, "train.max_steps=9", *every_3) == 143
    last = checkpoint.load(out / checkpoint.LAST)
    assert (last["progress"]["step"], last["progress"]["best_step"]) == (5, 3)
    assert checkpoint.saved_step(out / checkpoint.BEST) == 3
    monkeypatch.setattr(loop, "run_update", real_update)
    capsys.readouterr()
    assert runs.pretrain(corpus, out, "train.max_steps=5", *every_3) == 0  # nothing left to train
    assert checkpoint.saved_step(out / checkpoint.BEST) == 3
    assert "was stale" not in capsys.readouterr().out
