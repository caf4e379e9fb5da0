"""Shared test setup.

The models under test are tiny: one intra-op thread is as fast as two for them, and it does not
collapse when the 2-core CI machine also runs worker subprocesses (DDP, DataLoader workers).
"""

import torch

torch.set_num_threads(1)
