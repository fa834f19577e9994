"""Writing images: the one PNG encoder of the project, and the atomic PNG writer every export uses.

Images are channel-first `rgb01` tensors (docs/conventions.md): float RGB (or grey) in [0, 1], row 0 on top. They are
stored as 8-bit PNGs, values rounded to the nearest level.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError
from sync_splat.scene.files import atomic_output


def to_uint8(rgb01: Float[Tensor, "C H W"]) -> np.ndarray:
    """An image in [0, 1] (1 or 3 channels; clamped) as 8-bit `[H, W]` (grey) or `[H, W, 3]` (RGB) array."""
    if rgb01.ndim != 3 or rgb01.shape[0] not in (1, 3):
        raise ValueError(f"an image must be [1 or 3, H, W] in [0, 1], got {tuple(rgb01.shape)}")
    pixels = (rgb01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    return np.ascontiguousarray(array)


def encode_png(pixels: np.ndarray, path: Path) -> None:
    """Encode 8-bit pixels `[H, W]` or `[H, W, 3]` into `path` as a PNG, in place (callers choose the path)."""
    iio.imwrite(path, np.ascontiguousarray(pixels), extension=".png")


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
        raise InputError(f"{path}: this export writes a PNG image, so the file name must end in .png")
    pixels = to_uint8(rgb01)
    with atomic_output(path) as tmp:
        encode_png(pixels, tmp)
    return path


def write_image_rows(rows: tuple[Float[Tensor, "N 3 H W"], ...], path: str | Path) -> Path:
    """One PNG grid: each tensor of images becomes a row, its images side by side (e.g. views before and after)."""
    return write_png(torch.cat([torch.cat(list(images), dim=-1) for images in rows], dim=-2), path)
