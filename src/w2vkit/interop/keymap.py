"""State-dict key renaming as a two-column table of templates, usable in both directions.

A row is `(foreign template, w2vkit template)`. `{i}` matches a layer index, `{p}` a parameter name
(`weight`/`bias`), `{qkv}` one of the attention projections. Every key must match exactly one row:
an unmatched key is an error naming it, never dropped.
"""

from __future__ import annotations

import re

from torch import Tensor

from w2vkit.interop.safe_load import CheckpointError

_FIELDS = {"i": r"\d+", "p": r"weight|bias", "qkv": r"q|k|v|out"}


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name, regex in _FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{regex})")
    return re.compile(pattern)


class KeyMap:
    """Rename state-dict keys between a foreign layout and w2vkit's (see the module docstring)."""

    def __init__(self, rows: list[tuple[str, str]]) -> None:
        self.rows = rows
        self._foreign = [(_compile(f), w) for f, w in rows]
        self._native = [(_compile(w), f) for f, w in rows]

    def to_w2vkit(self, state: dict[str, Tensor], *, source: str) -> dict[str, Tensor]:
        return _rename(state, self._foreign, source)

    def from_w2vkit(self, state: dict[str, Tensor], *, source: str) -> dict[str, Tensor]:
        return _rename(state, self._native, source)


def _rename(
    state: dict[str, Tensor], table: list[tuple[re.Pattern[str], str]], source: str
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        for pattern, template in table:
            match = pattern.fullmatch(key)
            if match:
                out[template.format(**match.groupdict())] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: no mapping for parameter(s) {', '.join(unknown[:8])}"
            + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        )
    return out
