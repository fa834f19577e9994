"""`backend="auto"` and gsplat: quiet where gsplat cannot be expected (no CUDA, not installed), one warning naming
the failure where it is installed on a CUDA machine but unusable (the torch compositor takes over, much slower).

The CUDA machine is simulated (`torch.cuda.is_available`) and gsplat is replaced by an import hook that builds a
stand-in package whose `gsplat.cuda._backend` fails as a broken install does, so these run on any CPU."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch

import sync_splat.render.gsplat_check as gsplat_check

JIT_FAILURE = "Error building extension 'gsplat_cuda': nvcc fatal : Unsupported gpu architecture 'compute_90'"


class StandInGsplat(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `gsplat` and its subpackages before the real one; `gsplat.cuda._backend` runs `backend(module)`."""

    def __init__(self, backend: Callable[[types.ModuleType], None]) -> None:
        self.backend = backend

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name != "gsplat" and not name.startswith("gsplat."):
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=name != "gsplat.cuda._backend")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == "gsplat.cuda._backend":
            self.backend(module)


def failing_build(module: types.ModuleType) -> None:
    raise RuntimeError(f"{JIT_FAILURE}\n[1/12] c++ -MMD -MF ...\n(the rest of the compiler log)")


def no_toolkit(module: types.ModuleType) -> None:
    module._C = None  # what gsplat 1.4.0 leaves when it finds no nvcc


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """A process that has not imported gsplat or decided on it yet; `install(backend, cuda=True)` puts the
    stand-in gsplat first on the import path (backend=None: gsplat is not installed). Restored afterwards."""
    is_gsplat = lambda name: name == "gsplat" or name.startswith("gsplat.")  # noqa: E731
    saved = {name: module for name, module in sys.modules.items() if is_gsplat(name)}
    for name in saved:
        del sys.modules[name]
    gsplat_check.gsplat_works.cache_clear()

    def install(backend: Callable[[types.ModuleType], None] | None, cuda: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        if backend is None:
            sys.modules["gsplat"] = None  # the import system's "not installed"
        else:
            monkeypatch.setattr(sys, "meta_path", [StandInGsplat(backend), *sys.meta_path])

    yield install
    for name in [name for name in sys.modules if is_gsplat(name)]:
        del sys.modules[name]
    sys.modules.update(saved)
    gsplat_check.gsplat_works.cache_clear()


def gsplat_works_with_warnings() -> tuple[bool, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        works = gsplat_check.gsplat_works()
    return works, list(caught)


def test_broken_gsplat_on_cuda_warns_once_with_the_first_line_of_the_error(fresh_process) -> None:
    fresh_process(failing_build)
    works, caught = gsplat_works_with_warnings()
    assert works is False
    (warning,) = caught
    message = str(warning.message)
    assert warning.category is RuntimeWarning
    assert JIT_FAILURE in message and "RuntimeError" in message and "compiler log" not in message
    assert "pure-torch renderer" in message and "much slower" in message
    assert "\n" not in message
    assert gsplat_works_with_warnings() == (False, [])  # decided once per process: no second warning


def test_gsplat_without_cuda_kernels_on_cuda_warns(fresh_process) -> None:
    fresh_process(no_toolkit)
    works, caught = gsplat_works_with_warnings()
    assert works is False
    (warning,) = caught
    assert "no CUDA kernels" in str(warning.message) and "pure-torch renderer" in str(warning.message)


@pytest.mark.parametrize(
    ("backend", "cuda"),
    [(None, True), (failing_build, False)],
    ids=["gsplat-not-installed", "no-cuda-device"],
)
def test_expected_cpu_setups_fall_back_quietly(fresh_process, backend, cuda: bool) -> None:
    fresh_process(backend, cuda=cuda)
    assert gsplat_works_with_warnings() == (False, [])


def test_working_gsplat_is_used_without_a_warning(fresh_process) -> None:
    def built(module: types.ModuleType) -> None:
        module._C = types.SimpleNamespace()  # compiled kernels

    fresh_process(built)
    assert gsplat_works_with_warnings() == (True, [])
