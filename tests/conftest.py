import os

import pytest
import torch

# Two cores: torch's intra-op threads fight each other and the test process (docs/design.md
# section 8), so tests run single-threaded.
torch.set_num_threads(1)
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # Memory Gym's pygame: no sound card here


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
