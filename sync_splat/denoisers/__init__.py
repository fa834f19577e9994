"""Denoisers: the `Denoiser` protocol and its implementations.

`GaussianTexturePrior` is exact and needs no weights (CPU, tests, the demo); `StableDiffusionDenoiser` wraps SD 1.5 /
2.x with an optional ControlNet depth through diffusers, imported only when it is built.
"""

from sync_splat.denoisers.base import Denoiser

__all__ = ["Denoiser"]
