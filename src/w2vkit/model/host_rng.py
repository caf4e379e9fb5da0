"""Random draws whose values the host needs (mask shapes, LayerDrop), made on the host.

Masks decide how many frames are scored, and LayerDrop which layers run: the host must know both
before it queues the next kernels. Drawn on the GPU, each read would be a device sync. fairseq draws
masks with numpy on the CPU for the same reason.
"""

from __future__ import annotations

import hashlib

import torch


def host_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """The generator for host-side draws: a CPU generator (or None, torch's CPU default) itself, so
    CPU runs draw exactly as before; for a CUDA generator, a CPU generator seeded from its seed and
    Philox offset, both host-side state, and the CUDA generator moves on so the next call differs.
    The same seed gives the same draws.
    """
    if generator is None or generator.device.type == "cpu":
        return generator
    offset = generator.get_offset()
    key = hashlib.sha256(f"{generator.initial_seed()}:{offset}".encode()).digest()
    generator.set_offset(offset + 4)  # Philox offsets move in steps of 4
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto `device` without waiting: pinned memory lets the copy run asynchronously
    (a copy from pageable memory would wait for the stream)."""
    if x.device == device:
        return x
    return x.pin_memory().to(device, non_blocking=True)
