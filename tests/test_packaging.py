"""The shipped configs, `pretrain NAME`, `--version`, and a built wheel that works on its own."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from w2vkit import __version__ as w2vkit_version
from w2vkit.cli import main as cli_main
from w2vkit.config import ConfigError
from w2vkit.configs import FINETUNE_DIR, PRETRAIN_DIR, config_names, find_config

ROOT = Path(__file__).resolve().parents[1]


def test_configs_live_in_the_package_and_the_checkout_path_still_works():
    assert PRETRAIN_DIR == ROOT / "src" / "w2vkit" / "configs" / "pretrain"
    assert {"tiny", "base_ls960", "large_lv60k"} <= set(config_names())
    assert find_config("tiny") == PRETRAIN_DIR / "tiny.yaml"
    assert find_config("cpu", "finetune") == FINETUNE_DIR / "cpu.yaml"
    checkout_path = ROOT / "configs" / "pretrain" / "tiny.yaml"  # the path the docs show
    assert find_config(checkout_path).read_bytes() == (PRETRAIN_DIR / "tiny.yaml").read_bytes()


def test_unknown_names_and_missing_files_list_the_shipped_configs(tmp_path):
    known = ", ".join(config_names())
    with pytest.raises(ConfigError) as err:
        find_config("tinyy")
    assert (
        str(err.value)
        == f"unknown pretrain config name 'tinyy': give a YAML file or one of {known}"
    )
    with pytest.raises(
        ConfigError,
        match=f"config file {tmp_path}/x.yaml does not exist \\(shipped pretrain configs.*{known}",
    ):
        find_config(tmp_path / "x.yaml")


def test_pretrain_takes_a_name_or_a_path(capsys):
    assert cli_main(["pretrain", "tiny", "--print-config"]) == 0
    by_name = capsys.readouterr().out
    assert cli_main(["pretrain", str(PRETRAIN_DIR / "tiny.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == by_name
    assert "preset: tiny" not in by_name and "max_steps: 300" in by_name
    assert cli_main(["pretrain", "nope"]) == 2
    assert "unknown pretrain config name 'nope'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"w2vkit {importlib.metadata.version('w2vkit')}\n"


def test_version_from_a_source_tree_without_metadata(monkeypatch, capsys):
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(SystemExit):
        cli_main(["--version"])
    assert capsys.readouterr().out == f"w2vkit {w2vkit_version}\n"


@pytest.mark.slow
def test_a_built_wheel_runs_pretrain_by_name_without_the_source_tree(tmp_path, capsys):
    """`pip install .` (not editable): configs resolve from the installed package; `w2vkit demo`
    and `w2vkit pretrain tiny data.manifest_dir=DIR` run from it (briefly)."""
    source = tmp_path / "source"  # build from a copy: the build writes build/ and *.egg-info
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = tmp_path / "wheels"
    subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
    )
    (wheel,) = wheels.glob("w2vkit-*.whl")
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        check=True,
    )
    # torch and the other dependencies come from this interpreter's site-packages (a path line in
    # a .pth does not run that folder's own .pth files, so an editable w2vkit there stays out).
    purelib = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "outer-site-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # This pip installs into the new venv (--python), never into the running one.
    subprocess.run(
        [*pip, "--python", venv / "bin" / "python", "install", "--no-deps", wheel], check=True
    )

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    work = tmp_path / "work"  # no configs/ folder here
    work.mkdir()

    def w2vkit(*args: str) -> str:
        done = subprocess.run(
            [venv / "bin" / "w2vkit", *args], cwd=work, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import w2vkit.configs as c; print(c.PRETRAIN_DIR)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where) == Path(purelib) / "w2vkit" / "configs" / "pretrain"
    assert w2vkit("--version") == f"w2vkit {w2vkit_version}\n"  # the wheel's metadata
    printed = w2vkit("pretrain", "tiny", "--print-config")
    assert cli_main(["pretrain", "tiny", "--print-config"]) == 0  # from the source tree
    assert printed == capsys.readouterr().out and "max_steps: 300" in printed
    w2vkit("demo", "--out-dir", "demo", "--minutes", "0.1", "--steps", "2")
    assert (work / "demo" / "pretrain" / "checkpoint_last.pt").is_file()
    w2vkit("pretrain", "tiny", "data.manifest_dir=demo/manifest", "train.max_steps=1",
           "train.out_dir=run")  # fmt: skip
    assert (work / "run" / "checkpoint_last.pt").is_file()
