"""Whether gsplat's CUDA rasteriser can be used here, decided once per process, and the warning when it cannot.

`render_gaussians(backend="auto")` takes gsplat for CUDA tensors when this says it works, else the pure-torch
compositor: quietly where that is expected (no CUDA device, gsplat not installed), with one warning where gsplat is
installed on a CUDA machine but unusable.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import torch


@functools.cache
def gsplat_works() -> bool:
    """Whether gsplat imports with its CUDA kernels, for `backend="auto"` on CUDA tensors; decided once per process.

    No CUDA device, or gsplat not installed, is the expected CPU setup and stays quiet. gsplat installed on a CUDA
    machine but unusable (its kernels fail to import or JIT-compile, or it found no CUDA toolkit to build them and
    disabled itself) warns once, naming the failure: the pure-torch compositor that takes over is correct but far
    slower on large scenes.
    """
    if not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None:
        return False
    try:
        from gsplat.cuda._backend import _C
    except Exception as error:  # a failed JIT build raises RuntimeError, a broken wheel ImportError or OSError
        first_line = (str(error).strip().splitlines() or [""])[0]
        warn_torch_fallback(f"importing gsplat's CUDA kernels failed ({type(error).__name__}: {first_line})")
        return False
    if _C is None:
        warn_torch_fallback("gsplat has no CUDA kernels (it found no CUDA toolkit, nvcc, to compile them)")
        return False
    return True


def warn_torch_fallback(reason: str) -> None:
    warnings.warn(
        f"render_gaussians: {reason}; falling back to the pure-torch renderer, much slower on large scenes "
        "(reinstall gsplat 1.4.0 where a CUDA toolkit is present for the fast path)",
        RuntimeWarning,
        stacklevel=4,  # the caller of render_gaussians
    )
