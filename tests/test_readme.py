"""The README's snippets run as written, and the docs point only inside the repo.

Every ```python and ```bash block of README.md runs, in README order, in one scratch directory (as a
reader following the page would: the manifest block writes `data/run1`, the loader block reads it).
A new block is picked up automatically. A block this test cannot run either starts with a line
`# not run in tests: <reason>`, or is listed in `NOT_RUN` below by its first line, with the reason.
`SUBSTITUTIONS` replaces a path that stands for the reader's own data by generated audio.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import audiogen
import pytest
from helpers import save_random_tiny

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OPT_OUT = "# not run in tests:"

# The start of a block's first line -> why this test cannot run the block.
NOT_RUN = {
    "make demo": (
        "`make install` would rebuild the shared .venv and `make test` would run this suite again"
    ),
    "w2vkit demo [": ("a usage synopsis, not a command; tests/test_demo.py runs the demo"),
    "w2vkit manifest AUDIO_DIR": (
        "torchrun on 8 GPUs and 2 nodes, the reader's fairseq YAML and checkpoint; the CPU lines are "
        "the recipes tests/test_train_resume.py runs"
    ),
    "w2vkit convert wav2vec_small.pt": (
        "needs the reader's fairseq checkpoint and a BASE run; tests/test_interop_*.py convert fixtures"
    ),
    "w2vkit extract ckpt.pt": (
        "needs the reader's checkpoint and speaker labels; tests/test_extract.py and test_probe.py "
        "run both commands"
    ),
}

# A path in a snippet that stands for the reader's own data -> the generated stand-in (relative to
# the scratch directory).
SUBSTITUTIONS = {"/data/audio": "audio"}

_FENCE = re.compile(r"^```(python|bash)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number of the opening fence, language, code) of every python/bash block."""
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in _FENCE.finditer(text)
    ]


def _first_line(code: str) -> str:
    return code.splitlines()[0].strip() if code.strip() else ""


def _skip_reason(code: str) -> str | None:
    first = _first_line(code)
    if first.startswith(OPT_OUT):
        return first[len(OPT_OUT) :].strip()
    return next((why for start, why in NOT_RUN.items() if first.startswith(start)), None)


def _scratch(tmp_path: Path) -> dict[str, str]:
    """Stand-in data, and an environment whose `w2vkit` / `python` are this interpreter."""
    audiogen.make_corpus(tmp_path / "audio", 6, (2.5, 4.0), 16_000, seed=0)
    demo_checkpoint = tmp_path / "runs" / "demo" / "pretrain" / "checkpoint_last.pt"
    demo_checkpoint.parent.mkdir(parents=True)
    save_random_tiny(demo_checkpoint)  # what `make demo` leaves, for the "From Python" block
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    for name, command in (("w2vkit", f'"{sys.executable}" -m w2vkit'), ("python", sys.executable)):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", MPLBACKEND="Agg")
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def test_readme_blocks_are_found():
    blocks = readme_blocks(README.read_text())
    assert {lang for _, lang, _ in blocks} == {"python", "bash"}
    assert len(blocks) >= 8


def test_every_not_run_entry_names_a_block():
    firsts = [_first_line(code) for _, _, code in readme_blocks(README.read_text())]
    stale = [start for start in NOT_RUN if not any(f.startswith(start) for f in firsts)]
    assert stale == [], "NOT_RUN lists blocks the README no longer has"


@pytest.mark.slow
def test_readme_snippets_run_as_written(tmp_path):
    env = _scratch(tmp_path)
    ran = 0
    for line, lang, code in readme_blocks(README.read_text()):
        if _skip_reason(code) is not None:
            continue
        for placeholder, stand_in in SUBSTITUTIONS.items():
            code = code.replace(placeholder, stand_in)
        command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail"]
        done = subprocess.run(
            command,
            input=None if lang == "python" else code,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, (
            f"README.md:{line} ({lang}) exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
        ran += 1
    assert ran >= 4


def test_docs_point_only_inside_the_repo():
    """Comments and docs name no file outside the repository (the notes the code was written from
    are not shipped); a departure from fairseq is described in docs/fairseq_differences.md."""
    outside = re.compile(r"REFERENCE(\.md)?\b|\.\./shared")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("src", "tests", "docs", "bench", "configs")
        for path in sorted((ROOT / folder).rglob("*"))
        if path.suffix in {".py", ".md", ".yaml", ".toml"} and path != Path(__file__)
        for number, text in enumerate(path.read_text().splitlines(), 1)
        if outside.search(text)
    ]
    offenders += [
        f"README.md:{n}"
        for n, text in enumerate(README.read_text().splitlines(), 1)
        if outside.search(text)
    ]
    assert offenders == []


def test_fairseq_difference_links_resolve():
    """Every `fairseq_differences.md#fd-...` link in code and docs names an anchor of that page."""
    page = (ROOT / "docs" / "fairseq_differences.md").read_text()
    anchors = set(re.findall(r'<a id="(fd-[a-z0-9-]+)"></a>', page))
    assert len(anchors) >= 20
    link = re.compile(r"fairseq_differences\.md#(fd-[a-z0-9-]+)")
    linked = {
        (str(path.relative_to(ROOT)), name)
        for folder in ("src", "tests", "docs")
        for path in sorted((ROOT / folder).rglob("*"))
        if path.suffix in {".py", ".md"}
        for name in link.findall(path.read_text())
    }
    assert linked, "nothing links to the page"
    assert {(where, name) for where, name in linked if name not in anchors} == set()


def test_no_test_module_imports_another():
    """Shared helpers live in helpers.py / audiogen.py / conftest.py, never in a test module."""
    importing = re.compile(r"^\s*(from|import)\s+(tests\.|test_)", re.MULTILINE)
    offenders = [
        p.name for p in sorted((ROOT / "tests").glob("*.py")) if importing.search(p.read_text())
    ]
    assert offenders == []
