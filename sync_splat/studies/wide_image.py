"""The wide-image bridge: the paper's wide images, a 1-to-n projection by overlapping crops.

The canonical variable `z` is one wide image `[C, h, W]` in the denoiser's space (the paper: a 4x64x384 SD latent,
i.e. a 512x3072 image). Each view is a square `h x h` window of it, the windows `stride` apart (the paper: every
h / 8, giving 41 views), the last one aligned to the right edge. One canonical column feeds up to h / stride views,
so this is a 1-to-n projection.

- f (`project`): crop. Every view pixel comes from z, so coverage is 1 and a background never shows.
- g (`unproject`): the per-pixel uniform average over the windows that cover it, i.e. the least-squares solution
  of `f(z) = x`; it is written as per-view sums (`unproject_sums`).
- Initial noise: `z_T ~ N(0, I)` and `x_T = f(z_T)`; crops of unit-variance noise keep unit variance, and the
  windows' overlaps start equal.
"""

from __future__ import annotations

from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.bridges.plumbing import divide_sums, expect_shape
from sync_splat.codec import Decode, decode_pixels
from sync_splat.conditions import ViewConditions
from sync_splat.scene.images import write_png


def window_offsets(width: int, window: int, stride: int) -> tuple[int, ...]:
    """The left columns of `window`-wide crops of a `width`-wide image, `stride` apart, the last at the right edge."""
    offsets = list(range(0, width - window + 1, stride))
    if offsets[-1] != width - window:
        offsets.append(width - window)
    return tuple(offsets)


class WideImageBridge:
    """A wide image seen through overlapping square windows.

    Args:
        channels: C, the denoiser's channels (4 for SD latents, 3 for pixel priors).
        height: h, the windows' side and the canonical image's height, in denoiser pixels.
        width: the canonical image's width (at least `height`).
        stride: columns between consecutive windows; None for the paper's h / 8.
        decode: the denoiser space to `rgb01` `[N, 3, H, W]`; used only by `export`.
    """

    linear = True

    def __init__(
        self, channels: int, height: int, width: int, stride: int | None = None, decode: Decode = decode_pixels
    ) -> None:
        stride = max(1, height // 8) if stride is None else stride
        if height < 1 or channels < 1 or width < height:
            raise ValueError(f"need channels >= 1 and 1 <= height <= width, got {channels}, {height}, {width}")
        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}")
        self.stride = stride
        self.decode = decode
        self.offsets = window_offsets(width, height, stride)
        self.num_views = len(self.offsets)
        self.canonical_shape = (channels, height, width)
        self.instance_shape = (channels, height, height)

    def project(self, z: Float[Tensor, "C h W"], background: Tensor | None = None) -> Float[Tensor, "N C h h"]:
        """The windows of z; `background` is ignored because every view pixel is covered."""
        expect_shape("z", z, self.canonical_shape)
        size = self.instance_shape[-1]
        return torch.stack([z[:, :, left : left + size] for left in self.offsets])

    def unproject_sums(self, x: Float[Tensor, "N C h h"]) -> tuple[Float[Tensor, "C h W"], Float[Tensor, "1 1 W"]]:
        """Per-view sums: every window added back where it was cropped (numerator), and the window count per column
        (denominator)."""
        expect_shape("x", x, (self.num_views, *self.instance_shape))
        size = self.instance_shape[-1]
        num = x.new_zeros(self.canonical_shape)
        den = x.new_zeros((1, 1, self.canonical_shape[-1]))
        for view, left in zip(x, self.offsets, strict=True):
            num[:, :, left : left + size] += view
            den[:, :, left : left + size] += 1
        return num, den

    def unproject(self, x: Float[Tensor, "N C h h"], previous: Tensor | None = None) -> Float[Tensor, "C h W"]:
        """The average of the windows covering each canonical pixel (a closed form: `previous` is never needed)."""
        num, den = self.unproject_sums(x)
        return divide_sums(num, den, previous)

    def coverage(self) -> Float[Tensor, "N 1 h h"]:
        """All ones: crops determine every view pixel."""
        size = self.instance_shape[-1]
        return torch.ones(self.num_views, 1, size, size)

    def initial_noise(self, generator: torch.Generator) -> tuple[Float[Tensor, "C h W"], Float[Tensor, "N C h h"]]:
        """`z_T ~ N(0, I)` on the generator's device and its crops, which keep unit variance and agree on overlaps."""
        z_T = torch.randn(self.canonical_shape, generator=generator, device=generator.device)
        return z_T, self.project(z_T)

    def conditions(self) -> ViewConditions:
        """No per-view suffixes: every window shows the same prompt."""
        return ViewConditions.plain(self.num_views)

    def export(self, z: Float[Tensor, "C h W"], path: Path) -> Path:
        """Decode the wide image and write it as one PNG, atomically."""
        expect_shape("z", z, self.canonical_shape)
        return write_png(self.decode(z[None])[0], path)
