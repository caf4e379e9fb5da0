"""What pretraining and fine-tuning share (w2vkit.train.session, recipes/run_args): the run lock,
the refusal of another kind of run's checkpoint or of changed data, one-line option errors, the
end-of-run summary, and the Adam fields of both optim sections."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import make_letter_corpus

from w2vkit import cli
from w2vkit.config import ConfigError
from w2vkit.finetune.config import TriStageOptimConfig
from w2vkit.interop import ModelRecord, save_w2vkit
from w2vkit.model.config import tiny
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.config import OptimConfig
from w2vkit.train import checkpoint, dist, rundir, session
from w2vkit.train.best import reconcile_best
from w2vkit.train.config import AdamConfig, TrainConfig


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("letters")
    make_letter_corpus(root / "data", {"train": 6, "valid": 2})
    torch.manual_seed(0)
    save_w2vkit(ModelRecord(tiny(), Wav2Vec2Model(tiny()).state_dict()), root / "init.pt")
    return root


def _finetune(data: Path, init: Path, out_dir: Path, *extra: str) -> int:
    return cli.main(
        [
            "finetune", "--init-from", str(init), "preset=cpu", f"data.manifest_dir={data}",
            f"train.out_dir={out_dir}", "data.max_batch_samples=40000", "optim.total_steps=4",
            "train.validate_interval_steps=2", "train.save_interval_steps=0", *extra,
        ]
    )  # fmt: skip


def _pretrain(data: Path, out_dir: Path, *extra: str) -> int:
    return cli.main(
        [
            "pretrain", "tiny", f"data.manifest_dir={data}", f"train.out_dir={out_dir}",
            "train.max_steps=1", "train.save_interval_steps=0", *extra,
        ]
    )  # fmt: skip


def test_finetune_refuses_a_pretraining_run_directory_and_the_reverse(corpus, tmp_path, capsys):
    data, init = corpus / "data", corpus / "init.pt"
    assert _pretrain(data, tmp_path / "pre") == 0
    capsys.readouterr()
    assert _finetune(data, init, tmp_path / "pre", "train.max_steps=1") == 2
    err = capsys.readouterr().err
    assert (
        f"{tmp_path / 'pre' / checkpoint.LAST} is a checkpoint of a `w2vkit pretrain` run, "
        "not of `w2vkit finetune`: choose another train.out_dir"
    ) in err
    assert _finetune(data, init, tmp_path / "ft", "train.max_steps=1") == 0
    capsys.readouterr()
    assert _pretrain(data, tmp_path / "ft") == 2
    assert "is a checkpoint of a `w2vkit finetune` run, not of `w2vkit pretrain`" in (
        capsys.readouterr().err
    )


def test_finetune_refuses_a_run_directory_in_use(corpus, tmp_path, capsys):
    with rundir.RunLock(tmp_path / "busy"):
        code = _finetune(
            corpus / "data", corpus / "init.pt", tmp_path / "busy", "train.max_steps=1"
        )
    assert code == 2
    assert f"{tmp_path / 'busy'} is in use by another w2vkit run" in capsys.readouterr().err


def test_finetune_resume_on_changed_data_is_refused(corpus, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(corpus / "data", data)
    assert _finetune(data, corpus / "init.pt", tmp_path / "run", "train.max_steps=2") == 0
    for suffix in ("tsv", "ltr", "wrd"):  # one utterance fewer; the same letters
        lines = (data / f"train.{suffix}").read_text().splitlines(keepends=True)
        (data / f"train.{suffix}").write_text("".join(lines[:-1]))
    capsys.readouterr()
    assert _finetune(data, corpus / "init.pt", tmp_path / "run", "train.max_steps=4") == 2
    assert "the data changed since the checkpoint" in capsys.readouterr().err
    more = ["train.max_steps=4", "train.allow_data_change=true"]
    assert _finetune(data, corpus / "init.pt", tmp_path / "run", *more) == 0
    assert checkpoint.load(tmp_path / "run" / checkpoint.LAST)["progress"]["step"] == 4


def test_finetune_ends_with_a_summary_naming_the_next_command(corpus, tmp_path, capsys):
    tmp_path = tmp_path / "run {braces}"  # a path is text in the summary, not a template
    assert _finetune(corpus / "data", corpus / "init.pt", tmp_path, "train.max_steps=2") == 0
    out = capsys.readouterr().out
    assert "finished (max_steps) at update 2" in out
    assert "  best valid WER  " in out
    valid = corpus / "data" / "valid.tsv"
    assert f"  next: w2vkit transcribe {tmp_path / checkpoint.BEST} --manifest {valid}" in out


def test_finetune_console_shows_one_loss_unit_in_train_and_valid_lines(
    corpus, tmp_path, capsys, monkeypatch
):
    # Train records' `loss` is bits per sentence (ctc.sentence_avg), validation's bits per letter:
    # the console shows bits per letter on both lines, and its header says so.
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # the terminal's table
    out_dir = tmp_path / "run"
    extra = ("train.max_steps=2", "train.log_interval=2")
    assert _finetune(corpus / "data", corpus / "init.pt", out_dir, *extra) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    train = next(r for r in records if r["split"] == "train")
    valid = next(r for r in records if r["split"] == "valid")
    assert train["loss"] != train["nll_loss"]  # two units in the log, named apart
    assert next(line for line in lines if "bits/ltr" in line).split()[:3] == [
        "update",
        "epoch",
        "bits/ltr",
    ]
    row = next(line for line in lines if line.split()[:2] == ["2", "1"]).split()
    assert row[2] == f"{train['nll_loss']:.3f}"
    valid_line = next(line for line in lines if line.startswith("valid @ 2:"))
    assert f"bits/ltr {valid['loss']:.3f}" in valid_line


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_an_unknown_option_after_the_config_is_one_line(command, capsys):
    assert cli.main([command, "cpu", "train.max_steps=1", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"w2vkit {command}: unrecognized arguments: --bogus (see `w2vkit {command} --help`)\n"
    )


def test_both_optim_sections_share_the_adam_fields_and_checks():
    shared = {f for f in AdamConfig.__dataclass_fields__}
    assert shared <= set(OptimConfig.__dataclass_fields__)
    assert shared <= set(TriStageOptimConfig.__dataclass_fields__)
    for cls in (OptimConfig, TriStageOptimConfig):
        with pytest.raises(ConfigError, match=r"optim.betas\[1\]: must be in \[0, 1\), got 1.0"):
            cls(betas=(0.9, 1.0))
        with pytest.raises(ConfigError, match="optim.weight_decay: must be >= 0, got -0.1"):
            cls(weight_decay=-0.1)
    # fairseq's fine-tuning recipes: no weight decay, eps 1e-8, a lower peak LR.
    assert (TriStageOptimConfig().weight_decay, TriStageOptimConfig().eps) == (0.0, 1e-8)
    assert TriStageOptimConfig().lr == 5e-5 and OptimConfig().lr == 5e-4


def test_an_option_given_before_and_after_the_config_with_two_values_is_refused(capsys):
    argv = ["finetune", "--init-from", "a.pt", "cpu", "--init-from", "b.pt"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        "w2vkit finetune: --init-from is given twice ('a.pt' and 'b.pt'); give it once\n"
    )


def test_resume_from_a_pretraining_checkpoint_points_at_init_from(corpus, tmp_path, capsys):
    data, init = corpus / "data", corpus / "init.pt"
    assert _pretrain(data, tmp_path / "pre") == 0
    capsys.readouterr()
    last = tmp_path / "pre" / checkpoint.LAST
    code = _finetune(data, init, tmp_path / "ft", "--resume-from", str(last), "train.max_steps=1")
    assert code == 2
    assert "not of `w2vkit finetune`: to start from its weights, pass it as --init-from" in (
        capsys.readouterr().err
    )


def test_a_stale_best_checkpoint_is_repaired_only_when_last_is_the_best_update(tmp_path):
    last = {
        "progress": {"step": 8, "best_metric": 12.5, "best_step": 8},
        "metrics": {"valid": {"loss": 3.0, "wer": 12.5}},
    }
    checkpoint.save_atomic(last, tmp_path / checkpoint.LAST)
    note = reconcile_best(tmp_path, last, "wer")
    assert note is not None and note.endswith("it now holds update 8, validation wer 12.5")
    assert checkpoint.saved_step(tmp_path / checkpoint.BEST) == 8
    assert reconcile_best(tmp_path, last, "wer") is None  # best holds update 8 now


def test_a_later_checkpoint_carrying_the_best_metric_never_replaces_the_best(tmp_path):
    # Update 10 was validated best; update 17 was saved by a SIGTERM (no validation): its last
    # validation record and its best metric are update 10's, but its weights are not.
    checkpoint.save_atomic({"progress": {"step": 10}}, tmp_path / checkpoint.BEST)
    later = {
        "progress": {"step": 17, "best_metric": 12.5, "best_step": 10},
        "metrics": {"valid": {"wer": 12.5}},
    }
    checkpoint.save_atomic(later, tmp_path / checkpoint.LAST)
    assert reconcile_best(tmp_path, later, "wer") is None
    assert checkpoint.saved_step(tmp_path / checkpoint.BEST) == 10
    # A checkpoint from before best_step was recorded cannot tell: best is left alone.
    older = {"progress": {"step": 17, "best_valid_loss": 12.5}, "metrics": later["metrics"]}
    assert reconcile_best(tmp_path, older, "wer") is None
    assert checkpoint.saved_step(tmp_path / checkpoint.BEST) == 10


@pytest.mark.parametrize(
    ("resume_from", "overwrite", "expected"),
    [
        (None, False, "the same command"),
        ("run/checkpoint_1_4.pt", False, "the same command without --resume-from"),
        (None, True, "the same command without --overwrite"),
        ("a.pt", True, "the same command without --resume-from and --overwrite"),
    ],
)
def test_an_interrupted_run_is_continued_without_the_options_that_chose_its_start(
    tmp_path, resume_from, overwrite, expected
):
    # Run again with --overwrite, it would start over; with --resume-from, go back to that file.
    rerun = session.rerun_command(resume_from=resume_from, overwrite=overwrite)
    assert rerun == expected
    (tmp_path / checkpoint.LAST).write_bytes(b"")
    lines: list[str] = []
    logger = SimpleNamespace(message=lines.append)
    state = SimpleNamespace(step=7)
    for reason in ("sigint", "nonfinite", "max_steps"):
        session.summary(
            logger,
            tmp_path,
            state,
            reason,
            best="loss",
            next_step=str,
            rerun=rerun,  # type: ignore[arg-type]
        )
    assert lines == [
        "finished (stopped by SIGINT) at update 7",
        f"  last checkpoint  {tmp_path / checkpoint.LAST}",
        f"  continue with {expected}: it resumes from the last checkpoint",
        "finished (nonfinite) at update 7",
        f"  last checkpoint  {tmp_path / checkpoint.LAST}",
        f"  continue with {expected}: it resumes from the last checkpoint",
        "finished (max_steps) at update 7",
        f"  last checkpoint  {tmp_path / checkpoint.LAST}",
        f"  next: {tmp_path / checkpoint.LAST}",
    ]


def test_finetune_resumed_from_another_vocabulary_names_the_checkpoint(corpus, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(corpus / "data", data)
    assert _finetune(data, corpus / "init.pt", tmp_path / "run", "train.max_steps=1") == 0
    dictionary = data / "dict.ltr.txt"
    dictionary.write_text(dictionary.read_text() + "Q 1\n")
    capsys.readouterr()
    assert _finetune(data, corpus / "init.pt", tmp_path / "run", "train.max_steps=2") == 2
    assert capsys.readouterr().err == (
        f"w2vkit finetune: {tmp_path / 'run' / checkpoint.LAST} was trained with another "
        "dict.ltr.txt\n"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only answers")
def test_the_device_a_train_section_asks_for_on_a_cpu_only_machine(monkeypatch):
    kept: list[bool] = []
    monkeypatch.setattr(session.host_memory, "keep_freed_memory", lambda: kept.append(True))
    assert session.device_for(TrainConfig(device="auto", precision="fp32")) == torch.device("cpu")
    assert session.device_for(TrainConfig(device="cpu", precision="bf16")) == torch.device("cpu")
    assert kept == [True, True]  # a CPU run keeps freed memory for reuse
    with pytest.raises(ConfigError) as err:
        session.device_for(TrainConfig(device="cuda", precision="fp32"))
    assert str(err.value) == "train.device: 'cuda' was asked for but no CUDA device is available"
    for device in ("auto", "cpu"):  # auto falls back to the CPU, where fp16 cannot run
        with pytest.raises(ConfigError) as err:
            session.device_for(TrainConfig(device=device, precision="fp16"))
        assert str(err.value) == (
            "train.precision: 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU"
        )


def test_a_full_disk_is_one_line_and_exit_1_and_the_lock_is_released(tmp_path, capsys):
    train = TrainConfig(out_dir=str(tmp_path / "run"), device="cpu", precision="fp32")
    lock = tmp_path / "run" / rundir.LOCK

    def body() -> int:
        assert lock.is_file()  # held while the body runs
        (tmp_path / "run" / "train_log.jsonl").write_text("")
        raise checkpoint.DiskFullError("disk full: writing X needs about 1 MiB")

    assert session.run_locked("pretrain", train, torch.device("cpu"), body) == 1
    assert capsys.readouterr().err == "w2vkit pretrain: disk full: writing X needs about 1 MiB\n"
    assert not lock.exists()
    assert session.run_locked("finetune", train, torch.device("cpu"), lambda: 3) == 3

    def silent_rank() -> int:
        raise dist.RankTimeout("rank 0: training waited 5 min for the other processes")

    assert session.run_locked("pretrain", train, torch.device("cpu"), silent_rank) == 1
    assert capsys.readouterr().err == (
        "w2vkit pretrain: rank 0: training waited 5 min for the other processes\n"
    )

    def bug() -> int:
        raise RuntimeError("a bug, not the field")

    with pytest.raises(RuntimeError, match="a bug, not the field"):  # a traceback, as it should
        session.run_locked("pretrain", train, torch.device("cpu"), bug)
    assert not lock.exists()


def test_a_run_starts_with_its_config_in_order_and_notes_what_it_dropped_and_repaired(tmp_path):
    out = tmp_path / "runs" / "a"
    session.prepare_dir(out)  # parents too
    (out / rundir.LOG).write_text("".join(f'{{"num_updates": {n}}}\n' for n in (1, 2, 3, 4)))
    (out / checkpoint.LAST).write_bytes(b"the last checkpoint")  # copied as it is, not loaded
    payload = {
        "config": {"train": {"seed": 1}},
        "metrics": {"valid": {"wer": 12.5}},
        "progress": {"step": 2, "best_metric": 12.5, "best_step": 2},
    }
    resume = session.Resume(payload, out / checkpoint.LAST)
    config = {"train": {"seed": 1}, "data": {"b": 2, "a": 1}}
    notes = session.start_files(out, config, 2, resume, best_metric="wer")
    assert notes == [
        "dropped 2 log records past update 2",
        f"{out / checkpoint.BEST} was stale (a crash came between saving {checkpoint.LAST} and "
        "copying it): it now holds update 2, validation wer 12.5",
    ]
    assert (out / checkpoint.BEST).read_bytes() == b"the last checkpoint"
    assert (out / rundir.CONFIG).read_text() == "train:\n  seed: 1\ndata:\n  b: 2\n  a: 1\n"
    # Last's weights are not the best's (update 1's): nothing to repair, whatever its metric.
    not_best = session.Resume(
        {**payload, "progress": {**payload["progress"], "best_step": 1}}, resume.path
    )
    assert session.start_files(out, config, 2, not_best, best_metric="wer") == []


def test_the_loss_scaler_exists_for_fp16_only():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for precision, scale in (("fp16", 64.0), ("bf16", None), ("fp32", None)):
        train = TrainConfig(precision=precision, fp16_init_scale=64.0)
        state = session.make_state(
            model, optimizer, schedule, train, torch.device("cpu"), None,
            find_unused_parameters=False,
        )  # fmt: skip
        assert (state.scaler.get_scale() if state.scaler else None) == scale
        assert state.model is model and state.generator.device == torch.device("cpu")


def test_a_checkpoint_of_an_unknown_kind_of_run_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    checkpoint.save_atomic(
        {"format": checkpoint.FORMAT, "config": {"data": {}}}, out / checkpoint.LAST
    )
    with pytest.raises(ConfigError) as err:
        session.resume_point(out, "pretrain", resume_from=None, overwrite=False)
    assert str(err.value) == (
        f"{out / checkpoint.LAST} is a checkpoint of an unknown kind of run, not of `w2vkit "
        "pretrain`: choose another train.out_dir"
    )
    assert session.resume_point(out, "pretrain", resume_from=None, overwrite=True) is None


def test_a_resume_with_other_optimisation_settings_names_them(tmp_path):
    out = tmp_path / "run"
    session.prepare_dir(out)
    saved = {
        "optim": {"lr": 0.0005, "clip_norm": 0.0},
        "train": {"update_freq": 1, "max_steps": 10},
    }
    resume = session.Resume({"config": saved, "progress": {"step": 10}}, out / checkpoint.LAST)
    now = {"optim": {"lr": 0.001, "clip_norm": 0.0}, "train": {"update_freq": 2, "max_steps": 20}}
    assert session.start_files(out, now, 10, resume, best_metric="loss") == [
        "optim.lr changed on resume: 0.0005 in the checkpoint, 0.001 now (the run goes on with "
        "the new value)",
        "train.update_freq changed on resume: 1 in the checkpoint, 2 now (the run goes on with the "
        "new value)",
    ]  # a longer run (train.max_steps) is what resuming is for: no note
    assert session.start_files(out, saved, 10, resume, best_metric="loss") == []
