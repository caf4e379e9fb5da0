"""The error convention, tried as a new user would: one line on stderr, an exit code, no traceback.

`w2vkit COMMAND: message` and exit 2 for what the user gave wrong (UsageError / ConfigError), 130
for Ctrl-C, 141 for a closed stdout pipe; `--verbose` adds the traceback.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import audiogen
import pytest
import torch

from w2vkit import cli
from w2vkit.cli import EXAMPLES, main
from w2vkit.config import to_dict
from w2vkit.model.config import preset
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.registry import build_config
from w2vkit.recipes import manifest as manifest_recipe
from w2vkit.recipes.manifest import split_is_valid
from w2vkit.train import checkpoint
from w2vkit.train.config import load_layers
from w2vkit.train.preflight import check_run

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """30 files of 0.6-1 s (the tiny config keeps >= 0.5 s): a folder of under 100 files."""
    root = tmp_path_factory.mktemp("corpus")
    audiogen.make_corpus(root, 30, (0.6, 1.0))
    return root


@pytest.fixture(scope="module")
def manifest_dir(corpus, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("manifest")
    assert main(["manifest", str(corpus), "--dest", str(dest), "--valid-percent", "0"]) == 0
    return dest


def _error(capsys, *argv: str) -> str:
    """Run `w2vkit argv` in-process; it must fail as a usage error. Returns its stderr."""
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


# The README sequence on a small folder.


def test_a_small_folder_gets_no_empty_valid_tsv_and_pretraining_runs(corpus, tmp_path, capsys):
    assert not any(split_is_valid(p.name, 42, 0.01) for p in corpus.iterdir())  # none draws valid
    dest = tmp_path / "m"
    argv = ["manifest", str(corpus), "--dest", str(dest), "--valid-percent", "0.01"]
    assert main(argv) == 0
    assert capsys.readouterr().err == (
        "w2vkit manifest: the validation split is empty: --valid-percent 0.01 of 30 files drew "
        "none, so no valid.tsv was written and pretraining will run without validation; for a "
        "validation split pass e.g. --valid-percent 0.17\n"
    )
    assert sorted(p.name for p in dest.iterdir()) == ["skipped.tsv", "train.meta.tsv", "train.tsv"]
    run = ["pretrain", str(TINY), f"data.manifest_dir={dest}", "train.max_steps=1"]
    assert main([*run, f"train.out_dir={tmp_path / 'run'}"]) == 0
    assert (tmp_path / "run" / checkpoint.LAST).is_file()


def test_an_empty_valid_tsv_turns_validation_off_and_says_so_once(manifest_dir, tmp_path, capsys):
    dest = tmp_path / "m"
    dest.mkdir()
    for name in ("train.tsv", "train.meta.tsv"):
        (dest / name).write_bytes((manifest_dir / name).read_bytes())
    (dest / "valid.tsv").write_text(f"{manifest_dir}\n")  # a root line and no file
    run = ["pretrain", str(TINY), f"data.manifest_dir={dest}", "train.max_steps=1"]
    assert main([*run, f"train.out_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"{dest / 'valid.tsv'} lists no audio files: training without validation") == 1
    cfg, notes = check_run(build_config(load_layers(TINY, [f"data.manifest_dir={dest}"])))
    assert cfg.data.valid_split == "" and cfg.data.train_split == "train"  # the run sees no split
    assert notes == [
        f"{dest / 'valid.tsv'} lists no audio files: training without validation "
        "(data.valid_split= says so)"
    ]


# Pretraining: each input is checked before anything is built or written.


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.manifest_dir=MISSING", "data.manifest_dir=MISSING does not exist"),
        ("data.manifest_dir=MISSING/train.tsv", "data.manifest_dir=MISSING/train.tsv does not exist"),
        (
            "data.manifest_dir=MANIFEST/train.tsv",
            "data.manifest_dir=MANIFEST/train.tsv is a file, not a folder; "
            "did you mean data.manifest_dir=MANIFEST?",
        ),
        (
            "data.manifest_dir=MANIFEST/skipped.tsv",
            "data.manifest_dir=MANIFEST/skipped.tsv is a file, not a folder; "
            "did you mean data.manifest_dir=MANIFEST data.train_split=skipped?",
        ),
        (
            "data.manifest_dir=TMP",
            "data.manifest_dir=TMP has no train.tsv (data.train_split=train); "
            "write one with `w2vkit manifest AUDIO_DIR --dest DIR`",
        ),
        ("data.manifest_dir=EMPTY", "EMPTY/train.tsv lists no audio files: there is nothing to train on"),
        ("train.out_dir=FILE", "train.out_dir=FILE: FILE is a file, not a folder"),
        ("train.out_dir=FILE/run", "train.out_dir=FILE/run: FILE is a file, not a folder"),
        ("data.manifest_dir=", "data.manifest_dir is not set: point it at the folder with train.tsv"),
        ("train.init_from=MISSING.pt", "MISSING.pt: no such file"),
    ],
)  # fmt: skip
def test_pretrain_refuses_bad_paths_before_the_run(
    manifest_dir, tmp_path, capsys, override, message
):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.tsv").write_text(f"{tmp_path}\n")

    def fill(text: str) -> str:
        for name, value in (("MISSING", tmp_path / "nope"), ("MANIFEST", manifest_dir),
                            ("EMPTY", empty), ("TMP", tmp_path), ("FILE", empty / "train.tsv")):  # fmt: skip
            text = text.replace(name, str(value))
        return text

    out_dir = tmp_path / "run"
    argv = ["pretrain", str(TINY), f"data.manifest_dir={manifest_dir}", f"train.out_dir={out_dir}"]
    err = _error(capsys, *argv, fill(override))
    assert err.startswith(f"w2vkit pretrain: {fill(message)}") and err.count("\n") == 1
    assert ("did you mean" in err) == ("did you mean" in message)
    assert not out_dir.exists()


def test_init_from_a_missing_file_names_it(manifest_dir, tmp_path, capsys):
    missing = tmp_path / "wav2vec_small.pt"
    argv = ["pretrain", str(TINY), f"data.manifest_dir={manifest_dir}", "--init-from", str(missing)]
    assert _error(capsys, *argv, f"train.out_dir={tmp_path / 'run'}") == (
        f"w2vkit pretrain: {missing}: no such file\n"
    )


def test_splits_too_short_for_min_samples(manifest_dir, tmp_path, capsys):
    run = ["pretrain", str(TINY), f"data.manifest_dir={manifest_dir}", "data.min_samples=16001"]
    assert _error(capsys, *run, "data.max_samples=20000", f"train.out_dir={tmp_path / 'r'}") == (
        f"w2vkit pretrain: all 30 files in {manifest_dir / 'train.tsv'} are shorter than "
        "data.min_samples=16001 (1.00006 s); lower it, or use longer files: there is nothing to "
        "train on\n"
    )
    dest = tmp_path / "m"  # a valid split of files all too short only turns validation off
    dest.mkdir()
    for name in ("train.tsv", "train.meta.tsv"):
        (dest / name).write_bytes((manifest_dir / name).read_bytes())
    (dest / "valid.tsv").write_text(f"{manifest_dir.parent}\nshort.wav\t100\n")
    run = ["pretrain", str(TINY), f"data.manifest_dir={dest}", "train.max_steps=1"]
    assert main([*run, f"train.out_dir={tmp_path / 'run'}"]) == 0
    assert (
        f"all 1 files in {dest / 'valid.tsv'} are shorter than data.min_samples=8000 (0.5 s); "
        "lower it, or use longer files: training without validation"
    ) in capsys.readouterr().out


def test_tensorboard_without_the_package_says_how_to_get_it(
    manifest_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    argv = ["pretrain", str(TINY), f"data.manifest_dir={manifest_dir}", "train.tensorboard=true"]
    assert _error(capsys, *argv, f"train.out_dir={tmp_path / 'run'}") == (
        "w2vkit pretrain: train.tensorboard=true needs the tensorboard package: pip install "
        "tensorboard (or set train.tensorboard=false)\n"
    )
    assert not (tmp_path / "run").exists()


# manifest: --dest and --valid-percent are checked before any file is read.


def test_manifest_dest_that_is_a_file_or_below_one(corpus, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for dest in (a_file, a_file / "sub" / "dir"):
        assert _error(capsys, "manifest", str(corpus), "--dest", str(dest)) == (
            f"w2vkit manifest: --dest {dest}: {a_file} is a file, not a folder\n"
        )


def test_manifest_audio_dir_that_is_missing_or_a_file(corpus, tmp_path, capsys):
    dest = str(tmp_path / "m")
    missing, wav = tmp_path / "nope", corpus / "utt_000.wav"
    assert _error(capsys, "manifest", str(missing), "--dest", dest) == (
        f"w2vkit manifest: AUDIO_DIR {missing} does not exist\n"
    )
    assert _error(capsys, "manifest", str(wav), "--dest", dest) == (
        f"w2vkit manifest: AUDIO_DIR {wav} is a file, not a folder\n"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_manifest_dest_without_write_permission(corpus, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    dest = locked / "m"
    assert _error(capsys, "manifest", str(corpus), "--dest", str(dest)) == (
        f"w2vkit manifest: --dest {dest}: no permission to write in {locked}\n"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "--valid-percent 5: it is a fraction, as in fairseq, not a percentage; use 0.05 for 5%"),
        ("100", "--valid-percent 100: it is a fraction, as in fairseq, not a percentage; use 1 for 100%"),
        ("150", "--valid-percent must be a fraction in [0, 1], got 150"),
        ("-0.1", "--valid-percent must be a fraction in [0, 1], got -0.1"),
    ],
)  # fmt: skip
def test_valid_percent_is_a_fraction(corpus, tmp_path, capsys, value, message):
    argv = ["manifest", str(corpus), "--dest", str(tmp_path / "m"), f"--valid-percent={value}"]
    assert _error(capsys, *argv) == f"w2vkit manifest: {message}\n"
    assert not (tmp_path / "m").exists()


# extract: the device and the manifest argument.


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    model = Wav2Vec2Model(preset("tiny"))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model": model.state_dict(), "config": {"model": to_dict(model.cfg)}}, path)
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_extract_on_cuda_without_cuda(tmp_path, capsys):
    argv = ["extract", str(tmp_path / "c.pt"), str(tmp_path / "train.tsv"), "--out", str(tmp_path)]
    err = _error(capsys, *argv, "--device", "cuda")
    assert err.startswith("w2vkit extract: --device cuda: no CUDA device is available (torch ")
    assert err.endswith("); use --device cpu\n")
    assert _error(capsys, *argv, "--device", "gpu") == (
        "w2vkit extract: --device 'gpu' is not a device; use auto, cpu, cuda or cuda:N\n"
    )


def test_extract_given_the_manifest_folder_or_an_audio_file(
    tiny_checkpoint, manifest_dir, corpus, tmp_path, capsys
):
    argv = ["extract", str(tiny_checkpoint), str(manifest_dir), "--out", str(tmp_path / "f")]
    assert _error(capsys, *argv) == (
        f"w2vkit extract: {manifest_dir} is a folder, not a manifest file; "
        f"did you mean {manifest_dir / 'train.tsv'}?\n"
    )
    wav = corpus / "utt_000.wav"
    argv = ["extract", str(tiny_checkpoint), str(wav), "--out", str(tmp_path / "f")]
    assert _error(capsys, *argv) == (
        f"w2vkit extract: {wav}:1: not a text manifest (binary data: an audio file?); a manifest "
        "is a .tsv written by `w2vkit manifest AUDIO_DIR --dest DIR`\n"
    )


# Interrupts, closed pipes, OSErrors and --verbose.


def test_ctrl_c_is_one_line_and_exit_130(corpus, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(manifest_recipe, "probe_all", interrupted)
    argv = ["manifest", str(corpus), "--dest", str(tmp_path / "m")]
    assert main(argv) == 130
    assert capsys.readouterr().err == "w2vkit manifest: interrupted\n"
    assert main([*argv, "--verbose"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and "in interrupted" in err
    assert err.endswith("KeyboardInterrupt\nw2vkit manifest: interrupted\n")


def test_a_second_ctrl_c_while_pretraining_saves(manifest_dir, tmp_path, monkeypatch, capsys):
    save = checkpoint.save_atomic
    signals = []

    def save_interrupted_twice(payload, path):
        signals.append(path)
        if len(signals) == 1:
            signal.raise_signal(signal.SIGINT)  # the first asks the loop to stop
            signal.raise_signal(signal.SIGINT)  # the second, during the save, aborts
        save(payload, path)

    monkeypatch.setattr(checkpoint, "save_atomic", save_interrupted_twice)
    run = ["pretrain", str(TINY), f"data.manifest_dir={manifest_dir}", "train.max_steps=1"]
    assert main([*run, f"train.out_dir={tmp_path / 'run'}"]) == 130
    assert capsys.readouterr().err.endswith("w2vkit pretrain: interrupted\n")
    assert len(signals) == 1 and not (tmp_path / "run" / checkpoint.LAST).exists()


def _default_sigint() -> None:
    """In the child: Ctrl-C raises KeyboardInterrupt even when this test runs in the background
    (a shell starts background jobs with SIGINT ignored, and Python keeps that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_real_sigint_during_the_demo_exits_130_without_a_traceback(tmp_path):
    pytest.importorskip("espeakng_loader")
    demo = subprocess.Popen(
        [sys.executable, "-m", "w2vkit", "demo", "--out-dir", str(tmp_path), "--minutes", "30"],
        env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_default_sigint,
    )  # fmt: skip
    assert demo.stdout.readline().startswith("[1/6] synthesising")  # 30 minutes take a while
    time.sleep(0.3)
    demo.send_signal(signal.SIGINT)
    out, err = demo.communicate(timeout=60)
    assert demo.returncode == 130
    assert err == "w2vkit demo: interrupted\n"


def test_demo_says_pretraining_was_interrupted(tmp_path, monkeypatch, capsys):
    pytest.importorskip("espeakng_loader")
    from w2vkit.recipes import pretrain

    monkeypatch.setattr(pretrain, "run", lambda args: 130)  # what pretrain returns after Ctrl-C
    argv = ["demo", "--out-dir", str(tmp_path), "--minutes", "0.1", "--steps", "1"]
    assert main(argv) == 130
    assert capsys.readouterr().err.endswith(
        f"w2vkit demo: interrupted during pretraining; the run so far is saved in "
        f"{tmp_path / 'pretrain'} (`w2vkit demo` again starts afresh)\n"
    )


@pytest.mark.parametrize("unbuffered", [False, True])
def test_a_closed_stdout_pipe_is_a_quiet_exit(corpus, tmp_path, unbuffered):
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    dest = tmp_path / "m"
    command = [
        sys.executable,
        "-m",
        "w2vkit",
        "manifest",
        str(corpus),
        "--dest",
        str(dest),
        "--valid-percent=0",
    ]
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # as `| head -1` does once it has its line
    err = child.stderr.read().decode()
    assert child.wait(timeout=60) == 141
    assert err == ""
    assert len((dest / "train.tsv").read_text().splitlines()) == 31  # written before printing


def test_an_os_error_is_one_line_and_exit_1(corpus, tmp_path, monkeypatch, capsys):
    def disk_full(path, manifest):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(manifest_recipe, "write_manifest", disk_full)
    dest = tmp_path / "m"
    assert main(["manifest", str(corpus), "--dest", str(dest)]) == 1
    assert capsys.readouterr().err == (
        f"w2vkit manifest: [Errno 28] No space left on device: '{dest / 'train.tsv'}' "
        "(--verbose shows where)\n"
    )


@pytest.mark.parametrize("where", ["first", "after the command", "after the config"])
def test_verbose_anywhere_adds_the_traceback(tmp_path, capsys, where):
    argv = ["pretrain", str(TINY), f"data.manifest_dir={tmp_path / 'nope'}"]
    argv.insert({"first": 0, "after the command": 1, "after the config": 2}[where], "--verbose")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and "UsageError" in err
    assert err.endswith(f"w2vkit pretrain: data.manifest_dir={tmp_path / 'nope'} does not exist\n")


# --help


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_shows_defaults_and_examples(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "examples:\n" + "".join(f"  {line}\n" for line in EXAMPLES[command]) in out
    assert 2 <= len(EXAMPLES[command]) <= 4
    assert "default" in out.replace("\n", " ")
    assert "(default: None)" not in out and "(default: False)" not in out


@pytest.mark.parametrize(
    ("command", "defaults"),
    [
        ("manifest", ["(default: wav,flac,ogg,mp3)", "(default: 0.01)", "(default: 42)"]),
        ("demo", ["(default: runs/demo)", "(default: 3.0)", "(default: 300)", "(default: 0)"]),
    ],
)
def test_help_names_the_default_values(capsys, command, defaults):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    for default in defaults:
        assert default in out


def _example_argv(line: str) -> tuple[str, list[str]]:
    words = shlex.split(line.split("  #")[0])
    start = words.index("w2vkit") + 1
    return words[start], words[start + 1 :]


@pytest.mark.parametrize("line", [line for lines in EXAMPLES.values() for line in lines])
def test_every_example_parses(line, monkeypatch, capsys):
    command, argv = _example_argv(line)
    args = cli.build_parser(command).parse_args([command, *argv])
    assert args.command == command
    if command == "pretrain" and "--init-from" not in argv:  # its overrides must be real keys
        monkeypatch.chdir(REPO)
        assert main([command, *argv, "--print-config"]) == 0
        assert "data:" in capsys.readouterr().out


def test_help_imports_no_recipe():
    code = "import sys; from w2vkit.cli import build_parser; build_parser(); "
    code += "print(sorted(m for m in sys.modules if m.startswith('w2vkit.recipes.')))"
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert done.stdout == "[]\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["manifest", "audio"], "the following arguments are required: --dest"),
        (["convert", "a", "b", "--to", "hff"], "argument --to: invalid choice: 'hff'"),
        (["nosuchcommand"], "argument COMMAND: invalid choice: 'nosuchcommand'"),
    ],
)
def test_a_flag_mistake_is_one_line_with_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("w2vkit")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"hello: [unclosed\n",
            "bad.yaml:2:1: not valid YAML: expected ',' or ']', but got '<stream end>'",
        ),
        (b"a: 1\n  b: 2\n", "bad.yaml:2:4: not valid YAML: mapping values are not allowed here"),
        (b"\xff\xfe\x00", "bad.yaml: not a text file (byte 0 is not UTF-8)"),
    ],
)
def test_a_broken_config_file_is_one_line_naming_line_and_column(
    tmp_path, capsys, content, message
):
    (tmp_path / "bad.yaml").write_bytes(content)
    err = _error(capsys, "pretrain", str(tmp_path / "bad.yaml"))
    assert err == f"w2vkit pretrain: {tmp_path / message}\n"


def test_no_recipe_prints_its_own_usage_error():
    # The convention: raise UsageError, and cli.main prints it; a recipe that prints and returns 2
    # bypasses --verbose and the message format.
    recipes = sorted((REPO / "src" / "w2vkit" / "recipes").glob("*.py"))
    offenders = [p.name for p in recipes if "return 2\n" in p.read_text()]
    assert recipes and offenders == []


@pytest.mark.parametrize("command", ["extract", "transcribe", "convert"])
def test_a_run_directory_given_for_a_model_names_its_checkpoint(tmp_path, capsys, command):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"placeholder": 1}, run / "checkpoint_last.pt")
    rest = {
        "extract": [str(tmp_path / "m.tsv"), "--out", str(tmp_path / "f")],
        "transcribe": [str(tmp_path / "a.wav")],
        "convert": [str(tmp_path / "hf"), "--to", "hf"],
    }[command]
    err = _error(capsys, command, str(run), *rest)
    hint = f"{run} is a training run directory: give one of its checkpoints, e.g. {run / 'checkpoint_last.pt'}"
    assert hint in err
