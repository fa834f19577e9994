"""Small helpers shared by the image bridges (wide, ambiguous, layered): the aggregation's final division, shape
checks, the default codec and PNG export.

Every bridge writes `g` as per-view sums, a numerator and a denominator accumulated over views (so views can later be
split across processes and combined with one all-reduce); `divide_sums` turns them into the canonical answer.
Colours follow docs/conventions.md: `rgb01` is float RGB in [0, 1], images are channel-first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError
from sync_splat.scene.files import atomic_output

Decode = Callable[[Tensor], Tensor]
"""Maps the denoiser's space `[N, C, h, w]` to `rgb01` `[N, 3, H, W]`, like `Denoiser.decode`."""


def decode_pixels(x: Float[Tensor, "N C h w"]) -> Float[Tensor, "N C h w"]:
    """The codec of pixel-space priors: `[-1, 1]` back to `rgb01`, clamped (docs/conventions.md)."""
    return ((x + 1) / 2).clamp(0, 1)


def divide_sums(num: Tensor, den: Tensor, previous: Tensor | None = None) -> Tensor:
    """The aggregated canonical value `num / den` where `den > 0`, else the warm start `previous` (or zero).

    Args:
        num: the per-view sums of weighted instance values, in the canonical shape.
        den: the per-view sums of weights, broadcastable to `num`.
        previous: the previous canonical value, used where no view contributes.

    Returns:
        A tensor shaped like `num`.
    """
    den = den.expand_as(num)
    covered = den > 0
    fallback = torch.zeros_like(num) if previous is None else previous.to(num).expand_as(num)
    return torch.where(covered, num / torch.where(covered, den, torch.ones_like(den)), fallback)


def expect_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    """Raise a one-line ValueError when `tensor` is not shaped `shape` (a programming error, not a user one)."""
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")


def write_png(rgb01: Float[Tensor, "C H W"], path: str | Path) -> Path:
    """Write a channel-first image in [0, 1] (1 or 3 channels) to `path` as an 8-bit PNG, atomically.

    Args:
        rgb01: the image; values outside [0, 1] are clamped.
        path: the destination, which must end in `.png`; parent folders are created.

    Returns:
        The written path.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: export writes a PNG image, so the file name must end in .png")
    if rgb01.ndim != 3 or rgb01.shape[0] not in (1, 3):
        raise ValueError(
            f"export needs a decoded image [1 or 3, H, W], got {tuple(rgb01.shape)}: pass the bridge a `decode` that "
            "maps the denoiser's space to RGB (e.g. the denoiser's own decode for SD latents)"
        )
    pixels = (rgb01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    with atomic_output(path) as tmp:
        iio.imwrite(tmp, np.ascontiguousarray(array), extension=".png")
    return path


def export_side_by_side(images: Float[Tensor, "K C h w"], decode: Decode, path: str | Path) -> Path:
    """Decode K images of the denoiser's space and write them left to right as one PNG (atomically)."""
    rgb01 = decode(images)
    return write_png(torch.cat(list(rgb01), dim=-1), path)


def write_image_rows(rows: tuple[Float[Tensor, "N 3 H W"], ...], path: str | Path) -> Path:
    """One PNG grid: each tensor of images becomes a row, its images side by side (e.g. views before and after)."""
    return write_png(torch.cat([torch.cat(list(images), dim=-1) for images in rows], dim=-2), path)
