"""The README's layout picture is the tree, and no source file outgrows one concept (400 lines)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "w2vkit"
MAX_LINES = 400


def test_no_source_file_is_over_400_lines():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def _drawn() -> dict[str, set[str]]:
    """{package: the modules its `{...}` lists} from the README's Layout picture."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("\n## Layout\n", 1)[1].split("```", 2)[1]
    return {
        package: set(re.findall(r"[a-z_0-9]+", modules))
        for package, modules in re.findall(r"^  ([a-z_/]+)/\s+\{([^}]*)\}", block, flags=re.M)
    }


def _tree() -> dict[str, set[str]]:
    return {
        str(init.parent.relative_to(PACKAGE)): {
            p.stem for p in init.parent.glob("*.py") if p.stem != "__init__"
        }
        for init in PACKAGE.rglob("__init__.py")
        if init.parent != PACKAGE
    }


def test_the_readme_layout_draws_every_package_and_module_and_no_other():
    assert _drawn() == _tree()


def test_the_layout_picture_is_read_as_packages_and_modules():
    # The parser itself: a picture that lost a module or named a stale one would compare unequal.
    drawn = _drawn()
    assert drawn["embed"] == {"layers"}
    assert {"wav2vec2", "ctc"} <= drawn["model"] and "configs" in drawn
