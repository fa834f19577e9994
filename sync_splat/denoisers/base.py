"""The Denoiser protocol: what the sampler needs from a diffusion model.

A denoiser owns the model, its noise schedule and its codec (`sync_splat.codec`) between RGB images and the space
it denoises in (SD latents, or pixels for pixel-space priors). Everything is expressed as an epsilon prediction:
models that predict v convert inside `predict_eps`, so the sampler's maths is written once.

Dimension letters (docs/conventions.md): N views, C channels, H W image pixels, h w denoiser-space pixels.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor

from sync_splat.codec import Codec
from sync_splat.conditions import ViewConditions
from sync_splat.functional.diffusion import NoiseSchedule


@runtime_checkable
class Denoiser(Codec, Protocol):
    """A diffusion model seen through its epsilon prediction, with its codec (`Codec`: encode, decode, channels,
    downsampling, native size).

    Attributes:
        schedule: the training noise schedule (alpha_bar per train timestep) and the timestep spacing.
        max_batch: the most views one forward pass takes; more views are processed in chunks.
    """

    schedule: NoiseSchedule
    max_batch: int

    def predict_eps(self, x_t: Float[Tensor, "N C h w"], t: int, cond: ViewConditions) -> Float[Tensor, "N C h w"]:
        """The noise prediction eps_hat for every view at train timestep t, classifier-free guidance included."""
        ...
