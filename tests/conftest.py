"""Test-wide settings: offline, CPU, deterministic, small thread pools.

Every test runs without a GPU and without network access; models are built from config (see
tests/denoisers/tiny_sd.py). CUDA-only tests carry the `gpu` marker and skip themselves without CUDA.
"""

import os

# Never reach the Hugging Face hub, and keep torch's compiler out of the way (nerfstudio decorates some camera
# utilities with torch.compile, which would need a C++ toolchain at first call on CPU).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
