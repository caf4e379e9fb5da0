"""Issue 28 item 17: `make demo` then `make lint`. The demo writes its run folder under the
repository root; a test helper module of the same name as that folder's top directory is then filed
by ruff as first-party (and `make lint` wants the imports reordered)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from w2vkit.recipes import demo

TESTS = Path(__file__).resolve().parents[1]


def test_no_test_module_is_named_like_the_demo_output_folder():
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    top = Path(parser.get_default("out_dir")).parts[0]
    helper_modules = {p.stem for p in TESTS.rglob("*.py")} | {
        p.name for p in TESTS.rglob("*") if p.is_dir()
    }
    assert top not in helper_modules


def test_the_docs_give_the_exit_status_of_a_sigterm():
    """Issue 28 item 11: the README and docs/reliability.md said a SIGTERM exits 0; it exits 143
    (`test_signal_faults.py` runs it)."""
    repo = TESTS.parent
    for doc in (repo / "README.md", repo / "docs" / "reliability.md"):
        text = " ".join(doc.read_text(encoding="utf-8").split())
        after_sigterm = [text[m.start() : m.start() + 120] for m in re.finditer("SIGTERM", text)]
        assert any("143" in window for window in after_sigterm), doc
        assert not [w for w in after_sigterm if "exits 0" in w], doc
