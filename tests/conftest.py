"""Shared test setup; helpers that tests import live in helpers.py (and audiogen.py).

The models under test are tiny: one intra-op thread is as fast as two for them, and it does not
collapse when the 2-core CI machine also runs worker subprocesses (DDP, DataLoader workers).
"""

from pathlib import Path

import pytest
import torch
from helpers import make_manifest

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def manifest_dir(tmp_path_factory) -> Path:
    """12 tones of 0.6-2.0 s and their train/valid manifests, shared read-only by every test."""
    return make_manifest(tmp_path_factory.mktemp("tones"))
