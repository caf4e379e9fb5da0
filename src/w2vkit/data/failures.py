"""`DecodeFailures`: which files of a split failed to decode, counted once each, across resumes.

A bad file is met again every epoch (and by every worker); counting events would report 54
failures for 4 bad files over 12 epochs. The loader records each batch's failures here, in the
training process, logs a file the first time it fails, and the sampler's state carries the set,
so a resumed run neither names a known file again nor counts it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as torch_dist

logger = logging.getLogger(__name__)


class DecodeFailures:
    """Distinct failed items (dataset index -> reason) and failure events of this process."""

    def __init__(self) -> None:
        self.reasons: dict[int, str] = {}
        self.num_events = 0

    @property
    def num_files(self) -> int:
        return len(self.reasons)

    def record(
        self, failures: dict[int, str], num_events: int, path: Callable[[int], Path | str]
    ) -> None:
        """Add one batch's failures; log each item the first time it fails."""
        self.num_events += num_events
        for index, reason in failures.items():
            if index not in self.reasons:
                self.reasons[index] = reason
                logger.warning(
                    "skipping %s (item %d): %s; it is replaced in every batch from now on",
                    path(index),
                    index,
                    reason,
                )

    def reduce(self) -> tuple[int, int]:
        """(distinct failed files, failure events) over all processes; ranks may share files."""
        if not torch_dist.is_initialized():
            return self.num_files, self.num_events
        gathered: list = [None] * torch_dist.get_world_size()
        torch_dist.all_gather_object(gathered, (sorted(self.reasons), self.num_events))
        return len(set().union(*(set(i) for i, _ in gathered))), sum(n for _, n in gathered)

    def state_dict(self) -> dict:
        return {"indices": torch.tensor(sorted(self.reasons), dtype=torch.long),
                "reasons": [self.reasons[i] for i in sorted(self.reasons)],
                "num_events": self.num_events}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        indices = state["indices"].tolist()
        self.reasons = dict(zip(indices, state["reasons"], strict=True))
        self.num_events = int(state["num_events"])


__all__ = ["DecodeFailures"]
