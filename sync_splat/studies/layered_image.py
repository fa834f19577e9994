"""The layered-image bridge: blended layers over a background, a small stand-in for a splat render (n-to-1).

The canonical variable `z` is K colour layers `[K, C, h, w]` in the denoiser's space. Each view composites them front
to back with fixed, smooth alpha masks of its own (Gaussian blobs whose centre and size shift per view, alphas in
[0.3, 0.9]) and its own layer order (cyclic: view v puts layer v mod K in front); the masks are drawn once from
`seed`. With `alpha_{v,k}` the mask of layer k in view v and the layers in that view's order, a pixel's weights are

    w_{v,k}(p) = alpha_{v,k}(p) * prod_{j in front of k} (1 - alpha_{v,j}(p)),

so a view is `x_v = sum_k w_{v,k} z_k + (1 - coverage_v) background_v` with `coverage_v = sum_k w_{v,k}` in (0, 1):
several canonical elements mix into one pixel, and part of every pixel is background the canonical does not cover.
That is a rendered splat pixel with frozen geometry, with layers for Gaussians.

g (`unproject`) is the splat colour fit without damping (derived in `sync_splat.bridges.splat_fit`): the
least-squares fit of each view's covered content `coverage_v x_v` by `W_v c`, so views that agree with some z (the
un-premultiplied render) give back exactly that z. Two solvers (`fit`):

- "closed_form": `c = b / (A 1)`, one back-projection (numerator and denominator are per-view sums,
  `unproject_sums`): exact when a pixel's layers carry one colour (K = 1), only approximate where layers with
  different colours overlap (here: everywhere once K > 1).
- "iterative": `iterations` steps of Jacobi-preconditioned conjugate gradient on `A c = b`, started from `previous`
  when given (the sampler's warm start) and from the closed form otherwise. Each step costs one projection and one
  back-projection, as a splat fit would; it converges to the least-squares solution (unique when the views
  determine the layers, e.g. `num_views >= num_layers` with these masks).

Because g is a least-squares fit of blended pixels, `f(g(x), background=x)` is not a projection for views that
disagree: applying it twice differs from applying it once. That is the n-to-1 behaviour the paper's cases react to.

Initial noise: `z_T ~ N(0, I)` per layer and `x_T = f(z_T) + sqrt(1 - sum_k w_{v,k}^2) e_v`, with `e_v ~ N(0, I)`
independent per view and pixel, so every pixel has variance exactly `sum_k w^2 + (1 - sum_k w^2) = 1`. This keeps
`x_T` equal to the projection `f(z_T)` plus independent noise, so the instance cases start from the same content the
canonical cases project. The splat construction of the official code (render `z_T` with square-root weights, plus
background noise times `sqrt(1 - coverage)`) also has unit variance and shares more noise between views, but its
covered part is not `f(z_T)`, which would need a second operator beside the bridge's linear `f`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.bridges.plumbing import divide_sums, expect_shape
from sync_splat.codec import Decode, decode_pixels
from sync_splat.conditions import ViewConditions
from sync_splat.functional.conjugate_gradient import conjugate_gradient
from sync_splat.scene.images import write_image_rows

MAX_ALPHA = 0.9
"""The most opaque a layer gets (a blob's centre), so some background always shows: coverage < 1."""
MIN_ALPHA = 0.3
"""The alpha far from a blob. Every layer is then seen in every pixel of every view, and the views' weight vectors
stay far from parallel: with near-transparent layers (alpha -> 0) the normal equations become ill-conditioned
(condition numbers of 1e5 and more at alpha 0.05), and their least-squares answer explodes on noisy views."""


def blob_alphas(num_views: int, num_layers: int, height: int, width: int, seed: int) -> Float[Tensor, "N K 1 h w"]:
    """Smooth alpha masks in [MIN_ALPHA, MAX_ALPHA]: one Gaussian blob per layer, its centre moved by a per-view shift
    times a per-layer parallax factor and its size scaled per view, as a camera moving past layers at different
    depths."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape: tuple[int, ...], low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)

    size = float(max(height, width))
    centres = uniform((num_layers, 2), 0.2, 0.8) * torch.tensor([width, height], dtype=torch.float64)
    sigmas = uniform((num_layers,), 0.15, 0.35) * size
    shifts = uniform((num_views, 2), -0.15, 0.15) * size
    scales = uniform((num_views,), 0.8, 1.25)
    parallax = (torch.arange(num_layers, dtype=torch.float64) + 1) / num_layers

    centre = centres[None] + shifts[:, None] * parallax[None, :, None]
    sigma = sigmas[None] * scales[:, None]
    rows = torch.arange(height, dtype=torch.float64) + 0.5
    cols = torch.arange(width, dtype=torch.float64) + 0.5
    dx = cols[None, None, None, :] - centre[..., 0, None, None]
    dy = rows[None, None, :, None] - centre[..., 1, None, None]
    blob = torch.exp(-(dx**2 + dy**2) / (2 * sigma[..., None, None] ** 2))
    return (MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * blob)[:, :, None]


def cyclic_orders(num_views: int, num_layers: int) -> list[list[int]]:
    """Layer orders, front to back: view v puts layer `v mod K` in front, then the others cyclically. Every layer is
    in front in some view once `num_views >= num_layers`, which keeps the layers identifiable; random orders can
    leave a layer always behind the same one, and the fit ill-conditioned."""
    return [[(view + depth) % num_layers for depth in range(num_layers)] for view in range(num_views)]


def composite_weights(alphas: Float[Tensor, "N K 1 h w"], orders: list[list[int]]) -> Float[Tensor, "N K 1 h w"]:
    """Front-to-back compositing weights `w_k = alpha_k * transmittance in front of k`, per view, in each view's
    layer order (`orders[v]` lists layer indices from front to back)."""
    weights = torch.zeros_like(alphas)
    for view, order in enumerate(orders):
        transmittance = torch.ones_like(alphas[view, 0])
        for layer in order:
            weights[view, layer] = alphas[view, layer] * transmittance
            transmittance = transmittance * (1 - alphas[view, layer])
    return weights


class LayeredImageBridge:
    """K colour layers blended front to back into N views, over a per-view background.

    Args:
        channels: C, the denoiser's channels (3 for pixel priors, 4 for SD latents).
        height: h, the views' and layers' height in denoiser pixels.
        width: w, their width.
        num_views: N.
        num_layers: K, the canonical layers.
        seed: draws the alpha masks (deterministic; independent of the sampler's noise).
        fit: how `unproject` solves the least-squares problem: "closed_form" (one backward pass, approximate where
            layers overlap) or "iterative" (preconditioned conjugate gradient, warm-started).
        iterations: conjugate-gradient steps per `unproject` when `fit` is "iterative".
        decode: the denoiser space to `rgb01` `[N, 3, H, W]`; used only by `export`.
    """

    linear = True

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        num_views: int = 4,
        num_layers: int = 3,
        seed: int = 0,
        fit: Literal["closed_form", "iterative"] = "iterative",
        iterations: int = 3,
        decode: Decode = decode_pixels,
    ) -> None:
        if min(channels, height, width, num_views, num_layers) < 1:
            raise ValueError(
                f"channels, height, width, num_views and num_layers must be >= 1, got "
                f"{channels}, {height}, {width}, {num_views}, {num_layers}"
            )
        if fit not in ("closed_form", "iterative"):
            raise ValueError(f"fit must be 'closed_form' or 'iterative', got {fit!r}")
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        self.fit = fit
        self.iterations = iterations
        self.decode = decode
        self.num_views = num_views
        self.canonical_shape = (num_layers, channels, height, width)
        self.instance_shape = (channels, height, width)
        self.orders = cyclic_orders(num_views, num_layers)
        alphas = blob_alphas(num_views, num_layers, height, width, seed)
        self.weights = composite_weights(alphas, self.orders).float()
        self._coverage = self.weights.sum(dim=1)

    def _weights_like(self, tensor: Tensor) -> Float[Tensor, "N K 1 h w"]:
        return self.weights.to(device=tensor.device, dtype=tensor.dtype)

    def _render(self, z: Float[Tensor, "K C h w"]) -> Float[Tensor, "N C h w"]:
        """`W_v z` for every view: the blended layers without background."""
        return (self._weights_like(z) * z[None]).sum(dim=1)

    def _back_project(self, x: Float[Tensor, "N C h w"]) -> Float[Tensor, "K C h w"]:
        """`sum_v W_v^T x_v`: every view pixel handed back to the layers in proportion to their weights."""
        return (self._weights_like(x) * x[:, None]).sum(dim=0)

    def project(
        self, z: Float[Tensor, "K C h w"], background: Float[Tensor, "N C h w"] | None = None
    ) -> Float[Tensor, "N C h w"]:
        """Composite the layers in every view; the uncovered remainder `1 - coverage` of each pixel shows
        `background` (zero when None)."""
        expect_shape("z", z, self.canonical_shape)
        x = self._render(z)
        if background is None:
            return x
        expect_shape("background", background, (self.num_views, *self.instance_shape))
        coverage = self._coverage.to(z)
        return x + (1 - coverage) * background

    def unproject_sums(self, x: Float[Tensor, "N C h w"]) -> tuple[Float[Tensor, "K C h w"], Float[Tensor, "K 1 h w"]]:
        """Per-view sums of the closed form: `b = sum_v W_v^T (coverage_v x_v)` (numerator, also the normal
        equations' right-hand side) and `A 1 = sum_v W_v^T coverage_v` (denominator, the row sums of `A`)."""
        expect_shape("x", x, (self.num_views, *self.instance_shape))
        coverage = self._coverage.to(x)
        return self._back_project(coverage * x), self._back_project(coverage)

    def unproject(self, x: Float[Tensor, "N C h w"], previous: Tensor | None = None) -> Float[Tensor, "K C h w"]:
        """The layers that best explain the views (see the module docstring for the two fits); layer elements that no
        view sees keep `previous` (or zero)."""
        num, den = self.unproject_sums(x)
        if self.fit == "closed_form":
            return divide_sums(num, den, previous)
        if previous is None:
            start = divide_sums(num, den)
        else:
            expect_shape("previous", previous, self.canonical_shape)
            start = previous.to(num)
        return self._conjugate_gradient(num, start)

    def _conjugate_gradient(self, b: Float[Tensor, "K C h w"], c: Float[Tensor, "K C h w"]) -> Tensor:
        """`self.iterations` steps of Jacobi-preconditioned conjugate gradient on `A c = b`, `A = sum_v W_v^T W_v`,
        as one solve over every layer element (one column for `conjugate_gradient`).

        A is symmetric positive semi-definite. Rows of A that are zero (elements no view sees) have a zero right-hand
        side and a zero preconditioner, so those elements keep their starting value.
        """
        weights = self._weights_like(b)
        diagonal = (weights**2).sum(dim=0)
        inverse_diagonal = torch.where(diagonal > 0, 1 / diagonal.clamp_min(torch.finfo(b.dtype).tiny), 0)

        def apply(p: Tensor) -> Tensor:
            return self._back_project(self._render(p.view_as(b))).reshape(-1, 1)

        column = (-1, 1)
        fit = conjugate_gradient(
            apply, b.reshape(column), c.reshape(column), inverse_diagonal.expand_as(b).reshape(column),
            tolerance=0.0, max_iterations=self.iterations,
        )  # fmt: skip
        return fit.z.view_as(b)

    def coverage(self) -> Float[Tensor, "N 1 h w"]:
        """`sum_k w_{v,k}`, in (0, 1): how much of each pixel the layers determine."""
        return self._coverage.clone()

    def initial_noise(self, generator: torch.Generator) -> tuple[Float[Tensor, "K C h w"], Float[Tensor, "N C h w"]]:
        """`z_T ~ N(0, I)` and `x_T = f(z_T)` completed to unit variance per pixel with independent noise scaled by
        `sqrt(1 - sum_k w^2)` (the module docstring says why this construction)."""
        z_T = torch.randn(self.canonical_shape, generator=generator, device=generator.device)
        independent = torch.randn((self.num_views, *self.instance_shape), generator=generator, device=generator.device)
        weights = self._weights_like(z_T)
        completion = (1 - (weights**2).sum(dim=1)).clamp_min(0).sqrt()
        return z_T, self._render(z_T) + completion * independent

    def conditions(self) -> ViewConditions:
        """No suffixes and no depth."""
        return ViewConditions.plain(self.num_views)

    def export(self, z: Float[Tensor, "K C h w"], path: Path) -> Path:
        """Decode the K layers and write them side by side as one PNG, atomically."""
        expect_shape("z", z, self.canonical_shape)
        return write_image_rows((self.decode(z),), path)
