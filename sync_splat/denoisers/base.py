"""The Denoiser protocol: what the sampler needs from a diffusion model.

A denoiser owns the model, its noise schedule and its codec between RGB images and the space it denoises in
(SD latents, or pixels for pixel-space priors). Everything is expressed as an epsilon prediction: models that
predict v convert inside `predict_eps`, so the sampler's maths is written once.

Dimension letters (docs/conventions.md): N views, C channels, H W image pixels, h w denoiser-space pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor

from sync_splat.functional.diffusion import NoiseSchedule


@dataclass(frozen=True)
class ViewConditions:
    """What each view is conditioned on, beside its noisy sample; a bridge provides it (`Bridge.conditions`).

    The prompt itself belongs to the denoiser (it owns the text encoder); a view adds its suffix to it.

    Attributes:
        prompt_suffixes: one suffix per view, such as ", front view" (empty strings for none).
        depth: per-view normalised inverse depth in [0, 1] (near is bright) for ControlNet depth, or None.
    """

    prompt_suffixes: tuple[str, ...]
    depth: Float[Tensor, "N 1 H W"] | None = None

    @classmethod
    def plain(cls, num_views: int) -> ViewConditions:
        """No suffixes and no depth."""
        return cls(prompt_suffixes=("",) * num_views)

    def select(self, index: slice) -> ViewConditions:
        """The conditions of a contiguous chunk of views."""
        depth = None if self.depth is None else self.depth[index]
        return ViewConditions(prompt_suffixes=self.prompt_suffixes[index], depth=depth)


@runtime_checkable
class Denoiser(Protocol):
    """A diffusion model seen through its epsilon prediction.

    Attributes:
        schedule: the training noise schedule (alpha_bar per train timestep) and the timestep spacing.
        latent_channels: C, the channels of the denoiser's space (4 for SD latents, 3 for RGB priors).
        downsample: H / h, the codec's spatial factor (8 for SD's VAE, 1 for pixel-space priors).
        native_size: the image size (long side, pixels) the model was trained at.
        max_batch: the most views one forward pass takes; more views are processed in chunks.
    """

    schedule: NoiseSchedule
    latent_channels: int
    downsample: int
    native_size: int
    max_batch: int

    def encode(self, rgb01: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N C h w"]:
        """RGB in [0, 1] to the denoiser's space, deterministically (SD: VAE mean times the scaling factor)."""
        ...

    def decode(self, x: Float[Tensor, "N C h w"]) -> Float[Tensor, "N 3 H W"]:
        """The denoiser's space back to RGB in [0, 1]."""
        ...

    def predict_eps(self, x_t: Float[Tensor, "N C h w"], t: int, cond: ViewConditions) -> Float[Tensor, "N C h w"]:
        """The noise prediction eps_hat for every view at train timestep t, classifier-free guidance included."""
        ...
