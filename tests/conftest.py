"""Test-wide settings: offline, CPU, deterministic, small thread pools.

Every test runs without a GPU and without network access; models are built from config (see
tests/tiny_sd.py). CUDA-only tests carry the `gpu` marker and skip themselves without CUDA.
"""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

# Never reach the Hugging Face hub, and keep torch's compiler out of the way (nerfstudio decorates some camera
# utilities with torch.compile, which would need a C++ toolchain at first call on CPU).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_clip import save_tiny_clip  # noqa: E402
from tiny_sd import TinySDPaths, save_tiny_sd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run every test on one intra-op thread, then restore the count.

    The tests use tiny models and small scenes, which gain nothing from intra-op parallelism; on 2 busy cores
    torch's OpenMP threads wait on each other instead (a tiny UNet forward pass that takes 10 ms on one thread was
    measured at 0.3-1.6 s on two).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FIXTURE_ROOTS = (
    os.environ.get("SYNC_SPLAT_FIXTURES"),
    REPO / "shared" / "fixtures",
    REPO.parent / "shared" / "fixtures",
    "/work/shared/fixtures",
)
"""Where the real files nobody here wrote (../shared/fixtures) are looked for: $SYNC_SPLAT_FIXTURES first."""


@pytest.fixture(scope="session")
def shared_fixture() -> Callable[[str], Path]:
    """`shared_fixture(name)`: the path of a shared fixture file (skips the test, naming the file, when absent)."""

    def find(name: str) -> Path:
        for root in FIXTURE_ROOTS:
            if root and (Path(root) / name).is_file():
                return Path(root) / name
        pytest.skip(f"the shared fixture {name} is not here: set SYNC_SPLAT_FIXTURES to its folder")

    return find


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> TinySDPaths:
    """Folders of tiny random SD 1.5-geometry models (tests/tiny_sd.py: epsilon and v-prediction pipelines and a
    ControlNet depth, latent views of 8, VAE factor 8), built once per session and saved as safetensors."""
    return save_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of a tiny random CLIP (tests/tiny_clip.py: 16-dimensional embeddings of 32 x 32 images), built once
    per session."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))
