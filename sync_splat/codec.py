"""The codec between RGB images and the space a denoiser works in: all a bridge needs of the denoiser.

A bridge renders RGB (splats) or samples a canonical variable already in the denoiser's space (textures, panoramas);
either way it needs only to encode, decode, and know the shape of that space. `Codec` is that part of the
`Denoiser` protocol, so bridges take a codec and never import `sync_splat.denoisers`. `PixelCodec` is the codec of
pixel-space models (the exact prior): `[-1, 1]` pixels, no downsampling.

Dimension letters (docs/conventions.md): N views, C channels, H W image pixels, h w denoiser-space pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor

Decode = Callable[[Tensor], Tensor]
"""Maps the denoiser's space `[N, C, h, w]` to `rgb01` `[N, 3, H, W]`, like `Codec.decode`."""


def decode_pixels(x: Float[Tensor, "N C H W"]) -> Float[Tensor, "N C H W"]:
    """The decoder of pixel-space models: `[-1, 1]` back to RGB in [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


@runtime_checkable
class Codec(Protocol):
    """Maps RGB images to the denoiser's space and back.

    Attributes:
        latent_channels: C, the channels of the denoiser's space (4 for SD latents, 3 for RGB priors).
        downsample: H / h, the spatial factor (8 for SD's VAE, 1 for pixel-space priors).
        native_size: the image size (long side, pixels) the model was trained at.
    """

    latent_channels: int
    downsample: int
    native_size: int

    def encode(self, rgb01: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N C h w"]:
        """RGB in [0, 1] to the denoiser's space, deterministically (SD: VAE mean times the scaling factor)."""
        ...

    def decode(self, x: Float[Tensor, "N C h w"]) -> Float[Tensor, "N 3 H W"]:
        """The denoiser's space back to RGB in [0, 1]."""
        ...


@dataclass(frozen=True)
class PixelCodec:
    """The codec of pixel-space models: RGB in [0, 1] as values in [-1, 1], at full resolution.

    Attributes:
        native_size: the image size the model works at.
        latent_channels: 3.
        downsample: 1.
    """

    native_size: int = 64
    latent_channels: int = 3
    downsample: int = 1

    def encode(self, rgb01: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N 3 H W"]:
        return 2 * rgb01 - 1

    def decode(self, x: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N 3 H W"]:
        """`[-1, 1]` back to RGB in [0, 1], clamped."""
        return decode_pixels(x)
