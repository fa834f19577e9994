"""Starting noise for splat views that is white in every view and shared where views see the same surface.

The sampler and every denoiser assume `x_T ~ N(0, I)`: unit variance per pixel and no correlation between pixels.
Spreading one noise value per Gaussian over all the pixels it covers (the official construction, `sqrt_weights`)
gives unit variance and consistent views, but neighbouring pixels that share a large Gaussian share its value, so
the noise is low-pass and the samples come out blotchy and over-contrasted.

`integral_noise` gives each Gaussian a fine white noise of its own instead, in the spirit of integral noise warping:
K_g sub-points drawn from the Gaussian's 3D distribution, each with an independent N(0, 1) value, and K_g a few
times the most pixels the Gaussian covers in any view. A pixel's share of Gaussian g is the sum of the values of
g's sub-points that project into that pixel, divided by the square root of their count: unit variance, independent
of the neighbouring pixels' shares (they hold other sub-points), and shared by another view's pixel in proportion to
the sub-points the two pixels have in common, i.e. to how much of the same surface they see. A pixel then is

    x_T(p) = sum_g sqrt(w_g(p)) u_g(p) + sqrt(1 - alpha(p)) n(p),

with `w_g(p)` the compositing weights: variance `sum_g w_g + 1 - alpha = 1`. Where no sub-point of g falls into a
pixel that g still reaches (its faint tails), `u_g(p)` is a fresh independent value. The canonical noise `z_T` of
Gaussian g is the normalised sum of all its sub-points' values, so it is the same white noise seen whole.

Views split across processes (`sync_splat.distributed`) get the noise one process would draw: every process draws
the sub-points and every random value of the whole rig, in the same order, and keeps those of its views (the largest
footprint and the per-Gaussian count of weights, which place each weight among all of them, are summed or maximised
over the processes).

Dimension letters (docs/conventions.md): N views, G Gaussians, C channels, h w instance pixels, S sub-points.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.bridges.splat_fit import SplatLeastSquares
from sync_splat.distributed import ViewShard, shard_views
from sync_splat.functional.rotation import quat_to_rotmat
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.gaussians import GaussianScene

SUBPOINTS_PER_PIXEL = 4.0
"""Sub-points per pixel of a Gaussian's largest footprint: enough that most covered pixels receive a few."""
TRUNCATION = 3.0
"""Sub-points are drawn from the Gaussian's distribution truncated at this many standard deviations."""


def integral_noise(
    scene: GaussianScene,
    cameras: Cameras,
    system: SplatLeastSquares,
    channels: int,
    generator: torch.Generator,
    shard: ViewShard | None = None,
    subpoints_per_pixel: float = SUBPOINTS_PER_PIXEL,
) -> tuple[Float[Tensor, "G C"], Float[Tensor, "N C h w"]]:
    """White, view-consistent starting noise (module docstring).

    Args:
        scene: the Gaussians (their device is where the noise is assembled).
        cameras: the views at the instance size `w x h` of `system`.
        system: the views' compositing weights at the instance size.
        channels: C.
        generator: the run's random source; values are drawn on its device.
        shard: which of the rig's views `cameras` and `system` hold (None: all of them).
        subpoints_per_pixel: sub-points per pixel of each Gaussian's largest footprint.

    Returns:
        `z_T` `[G, C]` and `x_T` `[N, C, h, w]`, both of unit variance per element.
    """
    device, dtype = scene.means.device, scene.means.dtype
    num_views, height, width = system.num_views, system.height, system.width
    shard = shard_views(num_views) if shard is None else shard
    pixels, rig_pixels = height * width, shard.total * height * width

    def normal(*shape: int) -> Tensor:
        return torch.randn(shape, generator=generator, device=generator.device).to(device, dtype)

    # Every weight, keyed by (Gaussian, pixel over all views of the rig), in key order.
    gaussian, pixel, weight = system.entries()
    entry_keys, order = torch.sort(gaussian * rig_pixels + pixel + shard.first * pixels)
    gaussian, pixel, weight = gaussian[order], pixel[order], weight[order]
    view_of_entry = pixel // pixels
    footprint = torch.bincount(gaussian * num_views + view_of_entry, minlength=scene.num_gaussians * num_views)
    footprint = shard.max(footprint.reshape(scene.num_gaussians, num_views).amax(dim=1))

    # The sub-points and their values; z_T is each Gaussian's normalised sum.
    per_gaussian = (footprint * subpoints_per_pixel).ceil().long().clamp_min(1)
    owner = torch.repeat_interleave(torch.arange(scene.num_gaussians, device=device), per_gaussian)
    offsets = normal(owner.numel(), 3)
    offsets = offsets * (TRUNCATION / offsets.norm(dim=1, keepdim=True)).clamp(max=1.0)
    rotations = quat_to_rotmat(scene.quats_wxyz)
    local = offsets * scene.log_scales.exp()[owner]
    points = scene.means[owner] + (rotations[owner] @ local[:, :, None])[:, :, 0]
    values = normal(owner.numel(), channels)
    z_T = torch.zeros(scene.num_gaussians, channels, device=device, dtype=dtype).index_add_(0, owner, values)
    z_T = z_T / per_gaussian.to(dtype).sqrt()[:, None]

    # Each sub-point adds its value to the weight (g, pixel it projects to) in every view, when that weight exists.
    sums = torch.zeros(entry_keys.numel(), channels, device=device, dtype=dtype)
    counts = torch.zeros(entry_keys.numel(), device=device, dtype=dtype)
    for view in range(num_views):
        x, y, _, inside = cameras.project(points, view)
        col, row = x.floor(), y.floor()
        keys = owner[inside] * rig_pixels + (shard.first + view) * pixels + (row[inside] * width + col[inside]).long()
        position = torch.searchsorted(entry_keys, keys).clamp(max=entry_keys.numel() - 1)
        hit = entry_keys[position] == keys
        sums.index_add_(0, position[hit], values[inside][hit])
        counts.index_add_(0, position[hit], torch.ones_like(position[hit], dtype=dtype))

    # Fresh values where no sub-point of g fell into the pixel (the Gaussian's faint tails), one per weight of the rig.
    if shard.sharded:
        rig_weights, positions = _rig_positions(gaussian, scene.num_gaussians, shard)
        fresh = normal(rig_weights, channels)[positions]
    else:
        fresh = normal(*sums.shape)
    shares = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1).sqrt()[:, None], fresh)
    images = torch.zeros(num_views * pixels, channels, device=device, dtype=dtype)
    images.index_add_(0, pixel, weight.to(dtype).sqrt()[:, None] * shares)
    images = images.reshape(num_views, height, width, channels).permute(0, 3, 1, 2)
    uncovered = (1 - system.alpha).clamp_min(0).sqrt()
    return z_T, images + uncovered * shard.local(normal(shard.total, channels, height, width))


def _rig_positions(gaussian: Tensor, num_gaussians: int, shard: ViewShard) -> tuple[int, Tensor]:
    """The number of weights over every view of the rig, and where each of this process's weights (sorted by
    Gaussian, then pixel) stands among them: after the rig's weights of lower Gaussians, those of the same Gaussian in
    lower processes' views (lower pixels), and its own predecessors."""
    own = torch.bincount(gaussian, minlength=num_gaussians)
    counts = torch.zeros(shard.world, num_gaussians, dtype=torch.int64, device=gaussian.device)
    counts[shard.rank] = own
    counts = shard.sum(counts)  # [world, G]: every process's weights per Gaussian
    per_gaussian = counts.sum(dim=0)
    rig_start, own_start = per_gaussian.cumsum(0) - per_gaussian, own.cumsum(0) - own
    lower = counts[: shard.rank].sum(dim=0)
    index = torch.arange(gaussian.numel(), device=gaussian.device)
    return int(per_gaussian.sum()), rig_start[gaussian] + lower[gaussian] + index - own_start[gaussian]


__all__ = ["SUBPOINTS_PER_PIXEL", "integral_noise"]
