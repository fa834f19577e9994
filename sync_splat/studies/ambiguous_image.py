"""The ambiguous-image bridge (visual anagrams): the paper's 1-to-1, 1-to-n and n-to-1 pixel projections.

Every view is a pixel transform of one canonical image, so each view pixel is a copy of one canonical element
(the same element in all channels). The three projection types of the paper all appear here:

- **1-to-1**: "identity", "flip_h" (mirror left-right), "flip_v" (mirror top-bottom), "rot90", "rot180", "rot270"
  (clockwise on screen, as the official default "90-degree clockwise rotation") are permutations.
- **1-to-n**: "inner_rotate" turns the inner disc (radius `inner_radius` times the side) clockwise by
  `inner_rotate_degrees`, sampling the nearest canonical pixel; the pixels outside the disc are unchanged. Nearest
  sampling of a 45-degree turn reads some canonical elements twice and some never: duplicated pixels in the view,
  unrecoverable elements in the canonical image.
- **n-to-1** (`num_images = K > 1`): the canonical variable is K images `[K, C, h, w]` and a view is a transform of
  their mean (the paper's synthetic setup averages 10 images).

g (`unproject`) is the least-squares solution of `f(z) = x`, written as per-view sums: the numerator scatter-adds each
view pixel into the canonical element it was sampled from, the denominator counts the samples. For n-to-1 that gives
the mean image, and g returns the minimum-norm least-squares solution: every `z_k` equal to that mean, i.e. to the
average of the inverse-transformed views. (The official code fits the K images with 10 Adam steps warm-started from the
previous ones instead, which keeps them different; any such answer has the same mean, so the views are unaffected.)

Initial noise: `z_T ~ N(0, I)`. Permutations and nearest sampling keep unit variance, so `x_T = f(z_T)`. For
n-to-1 the mean of K i.i.d. images has variance 1/K, so `x_T = f(mean_k z_T + sqrt(1 - 1/K) n)` with `n ~ N(0, I)`
drawn ONCE in the (mean) image space: unit variance, and the views stay transforms of one image. `z_T` itself is
returned as drawn, so canonical cases see the variance drop that makes them fail in the n-to-1 setting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
from jaxtyping import Float, Int64
from torch import Tensor

from sync_splat.bridges.plumbing import divide_sums, expect_shape
from sync_splat.codec import Decode, decode_pixels
from sync_splat.conditions import ViewConditions
from sync_splat.errors import InputError
from sync_splat.scene.images import write_image_rows

ViewTransform = Literal["identity", "flip_h", "flip_v", "rot90", "rot180", "rot270", "inner_rotate"]
VIEW_TRANSFORMS: tuple[str, ...] = get_args(ViewTransform)


def inner_rotate_sources(size: int, degrees: float, radius: float) -> Int64[Tensor, "h w"]:
    """For each pixel of a `size x size` view, the flat index of the canonical pixel it shows after the inner disc
    (radius `radius` pixels around the image centre) is turned clockwise by `degrees`, with nearest sampling.

    Pixel (row i, column j) has its centre at (j + 0.5, i + 0.5) (docs/conventions.md). A view pixel at offset d from
    the centre shows the canonical point at offset R(-degrees) d, floored to the pixel that contains it.
    """
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    centre = size / 2
    coords = torch.arange(size, dtype=torch.float64) + 0.5 - centre
    dy, dx = torch.meshgrid(coords, coords, indexing="ij")
    # y points down, so (cos, -sin; sin, cos) turns clockwise on screen; its inverse is applied to find the source.
    source_x = cos * dx + sin * dy
    source_y = -sin * dx + cos * dy
    cols = (source_x + centre).floor().long().clamp(0, size - 1)
    rows = (source_y + centre).floor().long().clamp(0, size - 1)
    identity = torch.arange(size * size).reshape(size, size)
    inside = dx**2 + dy**2 < radius**2
    return torch.where(inside, rows * size + cols, identity)


def transform_sources(name: str, size: int, degrees: float, radius: float) -> Int64[Tensor, "h w"]:
    """The flat canonical index shown by each pixel of the view `name` (a gather map: view = z.flatten()[sources])."""
    flat = torch.arange(size * size).reshape(size, size)
    gather_maps = {
        "identity": lambda: flat,
        "flip_h": lambda: flat.flip(-1),
        "flip_v": lambda: flat.flip(-2),
        "rot90": lambda: torch.rot90(flat, -1, dims=(-2, -1)),
        "rot180": lambda: torch.rot90(flat, 2, dims=(-2, -1)),
        "rot270": lambda: torch.rot90(flat, 1, dims=(-2, -1)),
        "inner_rotate": lambda: inner_rotate_sources(size, degrees, radius),
    }
    return gather_maps[name]()


class AmbiguousImageBridge:
    """Views that are pixel transforms of one canonical image (or of the mean of K images).

    Args:
        channels: C, the denoiser's channels (3 for DeepFloyd's pixels, 4 for SD latents).
        size: the side of the square image, in denoiser pixels.
        views: one transform per view, from `VIEW_TRANSFORMS`; the paper's default is identity and a 90-degree turn.
        num_images: K; 1 for a canonical image `[C, h, w]`, K > 1 for the n-to-1 setting (`[K, C, h, w]`, a view shows
            a transform of the mean).
        inner_rotate_degrees: the clockwise turn of "inner_rotate" (the paper: 45).
        inner_radius: the radius of the turned disc, as a fraction of `size` (the paper: 24 px of 64, 0.375).
        decode: the denoiser space to `rgb01` `[N, 3, H, W]`; used only by `export`.
    """

    linear = True

    def __init__(
        self,
        channels: int,
        size: int,
        views: Sequence[ViewTransform] = ("identity", "rot90"),
        num_images: int = 1,
        inner_rotate_degrees: float = 45.0,
        inner_radius: float = 0.375,
        decode: Decode = decode_pixels,
    ) -> None:
        unknown = [name for name in views if name not in VIEW_TRANSFORMS]
        if unknown or not views:
            raise InputError(f"views {list(views)!r}: use one or more of {', '.join(VIEW_TRANSFORMS)}")
        if channels < 1 or size < 1 or num_images < 1:
            raise ValueError(f"need channels, size and num_images >= 1, got {channels}, {size}, {num_images}")
        self.views = tuple(views)
        self.num_images = num_images
        self.decode = decode
        self.num_views = len(self.views)
        image_shape = (channels, size, size)
        self.canonical_shape = image_shape if num_images == 1 else (num_images, *image_shape)
        self.instance_shape = image_shape
        self.sources = torch.stack(
            [transform_sources(name, size, inner_rotate_degrees, inner_radius * size).flatten() for name in self.views]
        )

    def _mean_image(self, z: Tensor) -> Float[Tensor, "C h w"]:
        expect_shape("z", z, self.canonical_shape)
        return z if self.num_images == 1 else z.mean(dim=0)

    def _gather(self, image: Float[Tensor, "C h w"]) -> Float[Tensor, "N C h w"]:
        sources = self.sources.to(image.device)
        channels = image.shape[0]
        return image.reshape(channels, -1)[:, sources].permute(1, 0, 2).reshape(self.num_views, *self.instance_shape)

    def project(self, z: Tensor, background: Tensor | None = None) -> Float[Tensor, "N C h w"]:
        """Every view's transform of z (of the mean of the K images for n-to-1); `background` is ignored because every
        view pixel is covered."""
        return self._gather(self._mean_image(z))

    def unproject_sums(self, x: Float[Tensor, "N C h w"]) -> tuple[Float[Tensor, "C h w"], Float[Tensor, "1 h w"]]:
        """Per-view sums in the (mean) image space: each view pixel scatter-added into the canonical element it was
        sampled from (numerator), and how many view pixels sampled each element (denominator)."""
        expect_shape("x", x, (self.num_views, *self.instance_shape))
        channels, size = self.instance_shape[0], self.instance_shape[-1]
        sources = self.sources.to(x.device)
        values = x.reshape(self.num_views, channels, -1).permute(1, 0, 2).reshape(channels, -1)
        num = x.new_zeros(channels, size * size).index_add_(1, sources.flatten(), values)
        den = x.new_zeros(size * size).index_add_(0, sources.flatten(), x.new_ones(sources.numel()))
        return num.reshape(channels, size, size), den.reshape(1, size, size)

    def unproject(self, x: Float[Tensor, "N C h w"], previous: Tensor | None = None) -> Tensor:
        """The least-squares canonical image (for n-to-1, the minimum-norm solution: all K images equal to the mean of
        the inverse-transformed views). Elements no view samples take `previous` (or zero)."""
        num, den = self.unproject_sums(x)
        if self.num_images > 1:
            num = num.expand(self.num_images, *num.shape)
        return divide_sums(num, den, previous)

    def coverage(self) -> Float[Tensor, "N 1 h w"]:
        """All ones: every view pixel is a copy of a canonical element."""
        size = self.instance_shape[-1]
        return torch.ones(self.num_views, 1, size, size)

    def initial_noise(self, generator: torch.Generator) -> tuple[Tensor, Float[Tensor, "N C h w"]]:
        """`z_T ~ N(0, I)` and unit-variance views that are all transforms of one image (see the module docstring)."""
        z_T = torch.randn(self.canonical_shape, generator=generator, device=generator.device)
        image = self._mean_image(z_T)
        if self.num_images > 1:
            shared = torch.randn(self.instance_shape, generator=generator, device=generator.device)
            image = image + math.sqrt(1 - 1 / self.num_images) * shared
        return z_T, self._gather(image)

    def conditions(self) -> ViewConditions:
        """No suffixes and no depth. (An anagram's views usually have different prompts; per-view suffixes would go
        here once the denoiser takes them.)"""
        return ViewConditions.plain(self.num_views)

    def export(self, z: Tensor, path: Path) -> Path:
        """Decode the canonical image (the K images side by side for n-to-1) and write one PNG, atomically."""
        expect_shape("z", z, self.canonical_shape)
        images = z[None] if self.num_images == 1 else z
        return write_image_rows((self.decode(images),), path)
