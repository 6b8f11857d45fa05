"""Suite-wide settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests train tiny models: one torch thread is as fast as two on an idle 2-core machine and up to
    3× faster on a loaded one (two-thread kernels stall at every barrier). Bitwise-equality tests
    compare runs made under the same setting. Restored at the end of the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
