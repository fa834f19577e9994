"""The splat fit's pixel weights: how much each pixel counts in the least-squares colour fit
(`sync_splat.bridges.splat_fit`, whose module docstring derives the weighted problem).

A pixel's weight is the alpha-weighted mean over the Gaussians it shows of a weight per Gaussian and view (the
`Evidence`); the splat bridge's is how finely the view sees the Gaussian's surface, in pixels per unit of it
(`SplatBridgeConfig.cos_power`).
The fit uses their square roots, which scale the rows of the solver's weights and of the content.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

Evidence = Callable[[Tensor, Tensor], Tensor]
"""`(view, gaussian) -> weight`: the positive weight of Gaussian `gaussian[i]`'s evidence in view `view[i]` (module
docstring), elementwise over index tensors; a pixel's weight in the fit is the alpha-weighted mean over the Gaussians
it shows."""


def pixel_root_weights(
    pixel: Tensor, gaussian: Tensor, weight: Tensor, evidence: Evidence, first_view: int, pixels_per_view: int,
    num_rows: int,
) -> Float[Tensor, " R"]:  # fmt: skip
    """`sqrt(W_v e_v / alpha_v)` for the pixels of views `[first_view, ...)` from their compositing weights
    `(pixel, gaussian, weight)` (pixels stacked over the views from 0, `num_rows` of them); 1 where nothing is seen."""
    view = torch.div(pixel, pixels_per_view, rounding_mode="floor") + first_view
    weighted = torch.zeros(num_rows, dtype=weight.dtype, device=weight.device)
    weighted.index_add_(0, pixel, weight * evidence(view, gaussian).to(weight))
    alpha = torch.zeros_like(weighted).index_add_(0, pixel, weight)
    seen = alpha > 0
    return torch.where(seen, weighted / torch.where(seen, alpha, 1.0), 1.0).sqrt()


__all__ = ["Evidence", "pixel_root_weights"]
