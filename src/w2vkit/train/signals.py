"""Stopping a run from outside: SIGTERM/SIGINT stop it after the current update, and each stop
reason has its process exit status."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = {signal.SIGINT: "sigint", signal.SIGTERM: "sigterm"}
"""The signals that stop a run after the current update, and the stop reason each gives."""

STOP_REQUESTS = ("sigterm", "sigint", "max_minutes")
"""What one process can ask all to stop for after the current update; the first present wins."""

EXIT_STATUS = {
    "nonfinite": 1,
    "stuck": 3,
    "sigint": 128 + signal.SIGINT,
    "sigterm": 128 + signal.SIGTERM,
}
"""Process exit status per stop reason (the shell's 130/143 for a signal); 0 for the others."""


def exit_status(reason: str) -> int:
    """0 when training ran to its end (max_steps, max_epochs, max_minutes), else EXIT_STATUS."""
    return EXIT_STATUS.get(reason, 0)


class StopSignals:
    """SIGTERM/SIGINT ask the loop to stop after the current update (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        """"sigint" or "sigterm": the first signal received."""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only; nothing to install
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = self.reason or STOP_SIGNALS[signal.Signals(signum)]
