"""Worker of the distributed fault tests: `w2vkit pretrain` under torchrun, optionally stopping
(SIGSTOP) rank STOP_RANK once the run has logged STOP_AFTER_LINES lines; its PID goes to
OUT_DIR/stopped.pid.

    torchrun ... tests/faults/dist_worker.py OUT_DIR [pretrain args ...]
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from w2vkit import cli


def _stop_later(log: Path, lines: int) -> None:
    while not (log.is_file() and log.read_text().count("\n") >= lines):
        time.sleep(0.05)
    (log.parent / "stopped.pid").write_text(str(os.getpid()))  # the test kills it at the end
    os.kill(os.getpid(), signal.SIGSTOP)


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    if os.environ.get("RANK") == os.environ.get("STOP_RANK"):
        threading.Thread(
            target=_stop_later,
            args=(out_dir / "train_log.jsonl", int(os.environ["STOP_AFTER_LINES"])),
            daemon=True,
        ).start()
    raise SystemExit(cli.main(sys.argv[2:]))
