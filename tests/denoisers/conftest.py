"""Fixtures for denoiser tests: tiny random SD 1.5-geometry models, built and saved once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from tiny_sd import TinySDPaths, save_tiny_sd


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> TinySDPaths:
    """Folders of a tiny SD pipeline (epsilon and v-prediction) and a tiny ControlNet depth, as safetensors."""
    return save_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def one_intra_op_thread() -> Iterator[None]:
    """Run the tiny models on one CPU thread, then restore the thread count.

    They gain nothing from intra-op parallelism, and on busy cores torch's OpenMP threads wait on each other: a
    forward pass that takes 10 ms on one thread was measured at 0.3-1.6 s on two.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
