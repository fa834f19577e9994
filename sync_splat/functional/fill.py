"""Filling the holes of a map with the value of the nearest valid pixel (a Voronoi fill), by jump flooding.

Texture and panorama aggregations leave texels that no view sees; sampling near them would blend in zeros. The
jump flood algorithm (Rong and Tan, 2006) finds, for every pixel, an approximately nearest valid seed in
O(log max(H, W)) passes of 9 lookups each, all vectorised, so it runs on any device without custom kernels.

Conventions: maps are channel-first `[C, H, W]` (`Ht Wt` for textures and panoramas in docs/conventions.md);
`wrap_x` treats the first and last columns as neighbours (equirectangular panoramas, whose seam is there).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int64
from torch import Tensor


def nearest_valid_index(valid: Bool[Tensor, "H W"], wrap_x: bool = False) -> Int64[Tensor, "H W"]:
    """For every pixel, the flat index `row * W + col` of an (approximately) nearest valid pixel.

    Args:
        valid: which pixels hold values.
        wrap_x: measure horizontal distances around a cylinder (columns 0 and W - 1 are neighbours).

    Returns:
        Flat indices `[H, W]`; -1 everywhere when no pixel is valid.
    """
    height, width = valid.shape
    device = valid.device
    rows = torch.arange(height, device=device)[:, None].expand(height, width)
    cols = torch.arange(width, device=device)[None, :].expand(height, width)
    flat = rows * width + cols
    seed = torch.where(valid, flat, torch.full_like(flat, -1))
    if not bool(valid.any()):
        return seed

    def distance(candidate: Tensor) -> Tensor:
        seed_rows = torch.div(candidate, width, rounding_mode="floor")
        seed_cols = candidate % width
        dx = (seed_cols - cols).abs()
        if wrap_x:
            dx = torch.minimum(dx, width - dx)
        d = (seed_rows - rows) ** 2 + dx**2
        return torch.where(candidate >= 0, d, torch.full_like(d, torch.iinfo(d.dtype).max))

    step = 1 << max(height, width).bit_length()
    # The extra passes with step 1 (the "JFA+1" variant) repair most of jump flooding's rare misses.
    steps = []
    while step > 1:
        step //= 2
        steps.append(step)
    for step in [*steps, 1]:
        best, best_distance = seed, distance(seed)
        for dy in (-step, 0, step):
            for dx in (-step, 0, step):
                if dy == 0 and dx == 0:
                    continue
                shifted_rows = rows + dy
                shifted_cols = cols + dx
                inside = (shifted_rows >= 0) & (shifted_rows < height)
                if wrap_x:
                    shifted_cols = shifted_cols % width
                else:
                    inside &= (shifted_cols >= 0) & (shifted_cols < width)
                neighbour = seed[shifted_rows.clamp(0, height - 1), shifted_cols.clamp(0, width - 1)]
                candidate = torch.where(inside, neighbour, torch.full_like(neighbour, -1))
                candidate_distance = distance(candidate)
                closer = candidate_distance < best_distance
                best = torch.where(closer, candidate, best)
                best_distance = torch.where(closer, candidate_distance, best_distance)
        seed = best
    return seed


def take_nearest(values: Float[Tensor, "C H W"], nearest: Int64[Tensor, "..."]) -> Float[Tensor, "C H W"]:
    """Give every pixel the value at its `nearest` index (from `nearest_valid_index`, flattened or not).

    Geometry-bound aggregations compute the index once and fill every step with this gather, which keeps them
    linear. Where no pixel was valid (the index is -1 everywhere), the values are returned unchanged.
    """
    index = nearest.reshape(-1)
    if index.numel() and int(index[0]) < 0:  # the flood leaves -1 only where nothing is valid, and then everywhere
        return values.clone()
    channels = values.shape[0]
    return values.reshape(channels, -1)[:, index.to(values.device)].reshape(values.shape)


def fill_nearest(
    values: Float[Tensor, "C H W"], valid: Bool[Tensor, "H W"], wrap_x: bool = False
) -> Float[Tensor, "C H W"]:
    """Give every invalid pixel the value of its nearest valid pixel; valid pixels are unchanged.

    Args:
        values: the map, channel-first.
        valid: which pixels hold values.
        wrap_x: columns wrap around (equirectangular panoramas).

    Returns:
        The filled map; unchanged (zeros stay zeros) when no pixel is valid.
    """
    return take_nearest(values, nearest_valid_index(valid, wrap_x))
