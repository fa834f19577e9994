"""Statistics that say whether sampled views look like exact samples of the prior: the oracle of the fidelity bench.

`GaussianTexturePrior` knows the true distribution of every view, so a restyle is right when its views carry the
prior's contrast and detail. These functions measure both on the pixels a bridge determines (a mask per view), and
measure exact prior samples through the very same masks, so the masks' edges bias both sides alike and the ratios
compare like with like:

- `masked_std`: the standard deviation of the pixel values over the masked pixels (contrast);
- `band_powers`: the radially averaged power of each image's masked, mean-removed values in frequency bands
  (detail), normalised by the masked fraction;
- `lag_correlation`: the correlation of horizontally and vertically neighbouring pixels (whiteness of noise);
- `shared_correlation`: the correlation of two views' pixels that see the same part of one Gaussian (consistency of
  a splat bridge's noise; `same_surface_pixels` finds them);
- `texel_shared_correlation`: the correlation of two views at the texels both see, each view carried into the
  canonical grid alone (consistency of a mesh's or a panorama's noise);
- `component_fractions`: how often each mixture component is the most likely one, under the noise-aware posterior.

Images are in the denoiser's space, `[N, C, h, w]`; masks are `[N, 1, h, w]` booleans.
"""

from __future__ import annotations

from typing import Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sync_splat.bridges.splat_fit import SplatLinearSystem
from sync_splat.denoisers.prior import GaussianTexturePrior

BANDS: tuple[float, ...] = (0.0, 0.0625, 0.125, 0.25, 0.75)
"""Edges of the radial frequency bands in cycles per pixel (the last edge is above the corner frequency 0.71)."""


def masked_std(x: Float[Tensor, "N C h w"], mask: Bool[Tensor, "N 1 h w"]) -> float:
    """The standard deviation of the masked pixel values, pooled over images and channels (each channel around its
    own mean)."""
    values = x.double().transpose(0, 1)[mask.transpose(0, 1).expand(x.shape[1], -1, -1, -1)]
    values = values.reshape(x.shape[1], -1)
    return float(values.var(dim=1).mean().sqrt())


def band_powers(
    x: Float[Tensor, "N C h w"], mask: Bool[Tensor, "N 1 h w"], bands: tuple[float, ...] = BANDS
) -> Float[Tensor, " B"]:
    """The mean power per image in each radial frequency band of its masked pixels, DC excluded.

    Each image's channels have their masked mean removed, then are zeroed outside the mask, transformed with the
    unitary FFT and divided by the masked fraction; the power is summed over channels and over each band's
    frequencies, then averaged over images.
    """
    x = x.double()
    weight = mask.double()
    count = weight.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    centred = (x - (x * weight).sum(dim=(2, 3), keepdim=True) / count) * weight
    power = torch.fft.fft2(centred, norm="ortho").abs().square().sum(dim=1)  # [N, h, w]
    power = power / (count[:, 0] / (x.shape[2] * x.shape[3]))
    fy = torch.fft.fftfreq(x.shape[2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(x.shape[3], dtype=torch.float64)[None, :]
    radius = (fy.square() + fx.square()).sqrt()
    totals = []
    for low, high in zip(bands[:-1], bands[1:], strict=True):
        band = (radius > low) & (radius <= high)
        totals.append(power[:, band].sum(dim=1).mean())
    return torch.stack(totals)


def lag_correlation(x: Float[Tensor, "N C h w"], mask: Bool[Tensor, "N 1 h w"] | None = None) -> float:
    """The largest magnitude of the lag-1 correlation between neighbouring pixels, horizontal or vertical, over the
    pairs whose two pixels are both masked (all pairs without a mask). White noise gives about 0."""
    x = x.double()
    mask = torch.ones_like(x[:, :1], dtype=torch.bool) if mask is None else mask
    worst = 0.0
    for dim in (3, 2):
        length = x.shape[dim]
        a, b = x.narrow(dim, 0, length - 1), x.narrow(dim, 1, length - 1)
        both = (mask.narrow(dim, 0, length - 1) & mask.narrow(dim, 1, length - 1)).expand_as(a)
        a, b = a[both], b[both]
        a, b = a - a.mean(), b - b.mean()
        correlation = float((a * b).mean() / (a.square().mean() * b.square().mean()).sqrt())
        worst = max(worst, abs(correlation))
    return worst


def component_fractions(prior: GaussianTexturePrior, x: Float[Tensor, "N 3 h w"]) -> Float[Tensor, " M"]:
    """How often each component is the most probable one for the images `x`, under the posterior p(m | x) at t = 0.

    The posterior at t = 0 allows for the noise a sampler's last step leaves (variance `1 - alpha_bar(0)`), which is
    larger than the smallest components' variance at high frequencies; a clean-image likelihood would not.
    """
    chosen = most_probable_components(prior, x)
    return torch.bincount(chosen, minlength=prior.num_components).double() / x.shape[0]


def most_probable_components(prior: GaussianTexturePrior, x: Float[Tensor, "N 3 h w"]) -> Int[Tensor, " N"]:
    """The most probable component of each image `x` under the posterior p(m | x) at t = 0 (see
    `component_fractions`)."""
    return prior.responsibilities(x, t=0).argmax(dim=1)


__all__ = ["BANDS", "band_powers", "component_fractions", "lag_correlation", "masked_std", "most_probable_components"]


def same_surface_pixels(
    system: SplatLinearSystem, first: int, second: int, dominance: float = 0.3
) -> tuple[Tensor, Tensor]:
    """Flat pixel indices of views `first` and `second` where one Gaussian has more than `dominance` of the
    compositing weight in both, one pixel per Gaussian and view, where its weight peaks (nearest its centre): about
    the same part of one surface, seen twice."""
    strongest = []
    for view in (first, second):
        weight, gaussian = system.view_matrix(view).to_dense().max(dim=1)  # [h w]
        pixels = torch.nonzero(weight > dominance).squeeze(1)
        pixels = pixels[torch.argsort(weight[pixels], stable=True)]  # the last pixel kept per Gaussian: its peak
        strongest.append(dict(zip(gaussian[pixels].tolist(), pixels.tolist(), strict=True)))
    both = sorted(set(strongest[0]) & set(strongest[1]))
    return torch.tensor([strongest[0][g] for g in both]), torch.tensor([strongest[1][g] for g in both])


def shared_correlation(
    x: Float[Tensor, "S N C h w"], system: SplatLinearSystem, pairs: list[tuple[int, int]]
) -> float | None:
    """The correlation of unit-variance, zero-mean noise `x` (draws S of every view) at the pixels of each pair of
    views that see the same surface (`same_surface_pixels`), pooled over the pairs; None where no pair shares any."""
    products, count = 0.0, 0
    for first, second in pairs:
        a, b = same_surface_pixels(system, first, second)
        if len(a):
            products += float((x[:, first].flatten(2)[:, :, a] * x[:, second].flatten(2)[:, :, b]).double().sum())
            count += x.shape[0] * x.shape[2] * len(a)
    return products / count if count else None


class SummedBridge(Protocol):
    """A bridge whose g is written as per-view sums (meshes, panoramas, wide images)."""

    def unproject_sums(self, x: Float[Tensor, "N C h w"]) -> tuple[Tensor, Tensor]: ...


def texel_shared_correlation(x: Float[Tensor, "S N C h w"], bridge: SummedBridge) -> float | None:
    """The correlation of zero-mean noise `x` (draws S of every view) between two views at the texels both see, pooled
    over every pair of views and the draws; None where no two views share a texel.

    Each view is carried into the canonical grid alone, through its own terms of g (`bridge.unproject_sums` with the
    other views zero), and divided by its own weights: 1 where every view starts from the same noise there, 0 for
    independent noise per view. g's resampling smooths both sides alike.
    """
    num_views = x.shape[1]
    seen, values = [], []  # per view: the flat texels it sees, and its noise there [S, C, texels]
    for view in range(num_views):
        only = torch.zeros_like(x[0])
        only[view] = 1.0
        weight = bridge.unproject_sums(only)[0][0].flatten()
        texels = torch.nonzero(weight > 1e-6).squeeze(1)
        sums = torch.stack([bridge.unproject_sums(only * draw)[0].flatten(1)[:, texels] for draw in x])
        seen.append(texels)
        values.append(sums.double() / weight[texels].double())
    totals = torch.zeros(3, dtype=torch.float64)  # sum of a b, a^2 and b^2 over the shared texels
    for first in range(num_views):
        position = torch.full((len(weight),), -1, dtype=torch.long)
        position[seen[first]] = torch.arange(len(seen[first]))
        for second in range(first + 1, num_views):
            where_first = position[seen[second]]
            both = where_first >= 0
            a, b = values[first][..., where_first[both]], values[second][..., both]
            totals += torch.stack([(a * b).sum(), a.square().sum(), b.square().sum()])
    if totals[1] == 0:
        return None
    return float(totals[0] / (totals[1] * totals[2]).sqrt())
