"""The splat colour fit without stored weights: W and W^T applied chunk of views by chunk of views, each chunk's
weights computed when a product needs them and dropped after it.

Every view's weights of a real capture at 50 views of 512 x 512 are hundreds of millions of numbers; the geometry that
makes them is a few per Gaussian. So the fit's products can be recomputed from the geometry each time: `W p` is a
render of the per-Gaussian features p, and `W^T y` hands every pixel of y back to the Gaussians in proportion to
their weights, which is the gradient of `<render(c), y>` with respect to the colours c. The conjugate gradient and the
closed form are those of `sync_splat.bridges.splat_fit` (`SplatLinearSystem.fit`); only the products change, so the
answer is the stored fit's up to rounding.

- Any device: the pure-torch compositor (`gaussian_weight_entries`) gives a chunk's weights as unsorted entries,
  applied by index-adds. `A p = W^T (W p)` uses one computation of a chunk's weights for both products, so a CG
  iteration composites every view once. The solver's pruned weights (`solver_cutoff`) are a mask on the same entries,
  and the pixels' weights (`evidence`) a scale on their rows.
- CUDA with gsplat: `W p` is `gsplat.rasterization` of p and `W^T y` its backward pass with respect to the colours;
  `A p` is one forward and one backward pass, the pixels' weights applied to the images between them. gsplat cannot
  leave weights out, so this path solves the normal equations of every weight (`solver_cutoff` only affects the CPU
  paths). Square-root renders, single views' matrices and the entries of the starting noise come from the torch
  compositor, which runs on CUDA tensors too.

What it costs: every product composites every view again, so a fit step costs its CG iterations plus two renders of
all views, where the stored fit reads its weights instead. What it holds: alpha, the row sums, the CG vectors, and
one chunk of views' weights at a time.

Dimension letters (docs/conventions.md): N views, G Gaussians, C channels, h w pixels, E weights of a chunk.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.bridges.csr import csr_matrix, row_offsets
from sync_splat.bridges.splat_fit import SplatLinearSystem, _by_gaussian
from sync_splat.bridges.splat_weights import Evidence, pixel_root_weights
from sync_splat.errors import InputError
from sync_splat.render.gaussians import gaussian_weight_entries, render_gaussians
from sync_splat.render.gsplat_check import gsplat_works
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.gaussians import GaussianScene

MatrixFreeBackend = Literal["auto", "torch", "gsplat"]


class _Chunk(Protocol):
    """The weights of a few consecutive views, for as long as one product needs them. `rows` stack the chunk's
    pixels `[count h w, C]`; `solver` selects the solver's (possibly pruned) weights."""

    root: Tensor | None
    """The square roots of the chunk's pixels' weights `[count h w, 1]` (None: 1), applied by the solver's products."""

    def render(self, features: Tensor, solver: bool) -> Tensor: ...

    def back_project(self, rows: Tensor, solver: bool) -> Tensor: ...

    def normal_product(self, features: Tensor) -> Tensor: ...


class MatrixFreeSplatSystem(SplatLinearSystem):
    """The frozen-geometry linear system of N views with no weights stored (module docstring).

    Args:
        scene: the Gaussians; their device and dtype are the system's.
        cameras: the N views at the system's resolution.
        views_per_chunk: views whose weights are computed and applied together (memory: one chunk's weights).
        solver_cutoff: weights below this are left out of the fit's A and b, as in `SplatLeastSquares`.
        antialiased: gsplat's antialiased rasterisation.
        backend: "torch" (the compositor, any device), "gsplat" (CUDA tensors) or "auto" (gsplat where it works).
        evidence: the weight of each Gaussian in each view (`sync_splat.bridges.splat_weights.Evidence`; None: every
            pixel counts the same).
    """

    storage = "matrix_free"
    normal_matrix_mode = "implicit"

    def __init__(
        self,
        scene: GaussianScene,
        cameras: Cameras,
        views_per_chunk: int,
        solver_cutoff: float = 0.0,
        antialiased: bool = False,
        backend: MatrixFreeBackend = "auto",
        evidence: Evidence | None = None,
    ) -> None:
        if views_per_chunk < 1:
            raise InputError(f"views_per_chunk must be at least 1, got {views_per_chunk}")
        if solver_cutoff < 0:
            raise InputError(f"solver_cutoff must be non-negative, got {solver_cutoff}")
        if backend == "auto":
            backend = "gsplat" if scene.means.is_cuda and gsplat_works() else "torch"
        if backend not in ("torch", "gsplat") or (backend == "gsplat" and not scene.means.is_cuda):
            raise InputError(f"the matrix-free fit's backend must be 'torch', or 'gsplat' on CUDA, got {backend!r}")
        self.backend = backend
        self.dtype, self.device = scene.means.dtype, scene.means.device
        self.cameras = cameras.to(self.device, self.dtype)
        self.num_views, self.height, self.width = len(cameras), cameras.height, cameras.width
        self.num_gaussians = scene.num_gaussians
        self.views_per_chunk, self.solver_cutoff, self.antialiased = views_per_chunk, solver_cutoff, antialiased
        self._geometry = (
            scene.means, scene.quats_wxyz, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits)
        )  # fmt: skip

        # One pass for alpha = W 1, the pixels' weights and the row sums A~ 1 = W~^T (W~ 1) (W^T alpha unpruned and
        # unweighted).
        self.root_weights = None
        ones = torch.ones(self.num_gaussians, 1, dtype=self.dtype, device=self.device)
        alphas, roots, row_sums = [], [], torch.zeros(self.num_gaussians, 1, dtype=self.dtype, device=self.device)
        for first, count in self._chunks():
            chunk = self._chunk(first, count)
            alpha = chunk.render(ones, solver=False)
            alphas.append(alpha)
            if evidence is not None:
                chunk.root = self._chunk_roots(chunk, evidence, first, count, alpha)
                roots.append(chunk.root)
            solver_alpha = chunk.render(ones, solver=True) if self._prunes() or evidence is not None else alpha
            row_sums = row_sums + chunk.back_project(solver_alpha, solver=True)
        pixels = (self.num_views, self.height, self.width, 1)
        self.alpha: Float[Tensor, "N 1 h w"] = torch.cat(alphas).reshape(pixels).permute(0, 3, 1, 2)
        if evidence is not None:
            self.root_weights = torch.cat(roots).reshape(pixels).permute(0, 3, 1, 2)
        self._solver_row_sums = row_sums

    @property
    def weight_bytes(self) -> int:
        return 0

    def _prunes(self) -> bool:
        return self.solver_cutoff > 0 and self.backend == "torch"

    def _chunks(self) -> list[tuple[int, int]]:
        step = self.views_per_chunk
        return [(first, min(step, self.num_views - first)) for first in range(0, self.num_views, step)]

    def _entries(self, first: int, count: int) -> tuple[Tensor, Tensor, Tensor]:
        """The torch compositor's weights of views `[first, first + count)`: `(pixel, gaussian, weight)`, pixels
        local to the chunk."""
        means, quats_wxyz, scales, opacities = self._geometry
        viewmats, Ks = self.cameras.viewmats[first : first + count], self.cameras.Ks[first : first + count]
        return tuple(
            gaussian_weight_entries(
                means, quats_wxyz, scales, opacities, viewmats, Ks, self.width, self.height,
                antialiased=self.antialiased,
            )
        )  # fmt: skip

    def _chunk(self, first: int, count: int) -> _Chunk:
        """Views `[first, first + count)`' weights, their rows scaled by the pixels' weights once those are known."""
        if self.backend == "gsplat":
            cameras = (self.cameras.viewmats[first : first + count], self.cameras.Ks[first : first + count])
            chunk: _Chunk = _GsplatChunk(self._geometry, *cameras, self.width, self.height, self.antialiased)
        else:
            pixel, gaussian, weight = self._entries(first, count)
            chunk = _EntriesChunk(pixel, gaussian, weight, count * self.height * self.width, self.num_gaussians,
                                  self.solver_cutoff)  # fmt: skip
        if self.root_weights is not None:
            chunk.root = self._rows(self.root_weights[first : first + count])
        return chunk

    def _chunk_roots(self, chunk: _Chunk, evidence: Evidence, first: int, count: int, alpha: Tensor) -> Tensor:
        """`sqrt(W_v e_v / alpha_v)` of views `[first, first + count)`' pixels `[count h w, 1]`, 1 where nothing is
        seen."""
        pixels = self.height * self.width
        if isinstance(chunk, _EntriesChunk):
            pixel, gaussian, weight = chunk.full
            return pixel_root_weights(pixel, gaussian, weight, evidence, first, pixels, chunk.num_rows)[:, None]
        gaussians = torch.arange(self.num_gaussians, device=self.device)
        own = torch.cat([
            self._chunk(view, 1).render(evidence(torch.full_like(gaussians, view), gaussians)[:, None], solver=False)
            for view in range(first, first + count)
        ])  # fmt: skip
        seen = alpha > 0
        return torch.where(seen, own / torch.where(seen, alpha, 1.0), 1.0).sqrt()

    def _rows(self, images: Float[Tensor, "N C h w"]) -> Float[Tensor, "NHW C"]:
        return images.to(self.dtype).permute(0, 2, 3, 1).reshape(-1, images.shape[1])

    # ---- products ---------------------------------------------------------------------------------------------

    def render(self, features: Float[Tensor, "G C"]) -> Float[Tensor, "N C h w"]:
        features = features.to(self.dtype)
        parts = [self._chunk(first, count).render(features, solver=False) for first, count in self._chunks()]
        return torch.cat(parts).reshape(self.num_views, self.height, self.width, -1).permute(0, 3, 1, 2)

    def render_sqrt(self, features: Float[Tensor, "G C"]) -> Float[Tensor, "N C h w"]:
        features, parts = features.to(self.dtype), []
        for first, count in self._chunks():
            pixel, gaussian, weight = self._entries(first, count)
            rows = torch.zeros(
                count * self.height * self.width, features.shape[1], dtype=self.dtype, device=self.device
            )
            parts.append(rows.index_add_(0, pixel, weight.sqrt()[:, None] * features[gaussian]))
        return torch.cat(parts).reshape(self.num_views, self.height, self.width, -1).permute(0, 3, 1, 2)

    def view_matrix(self, view: int) -> Tensor:
        """`W_view` `[h w, G]` (CSR), computed now."""
        pixel, gaussian, weight = self._entries(view, 1)
        order = torch.argsort(pixel * self.num_gaussians + gaussian)
        pixel, gaussian, weight = pixel[order], gaussian[order], weight[order]
        pixels = self.height * self.width
        return csr_matrix(row_offsets(pixel, pixels), gaussian, weight, (pixels, self.num_gaussians))

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every weight as `(gaussian, pixel, value)` in the order of `SplatLinearSystem.entries`: all of them at
        once, so this holds what the stored fit would while the caller needs them."""
        gaussians, pixels, values = [], [], []
        for first, count in self._chunks():
            pixel, gaussian, weight = self._entries(first, count)
            gaussians.append(gaussian)
            pixels.append(pixel + first * self.height * self.width)
            values.append(weight)
        num_pixels = self.num_views * self.height * self.width
        return _by_gaussian(torch.cat(gaussians), torch.cat(pixels), torch.cat(values), num_pixels)

    def _solver_back_project(self, rows: Tensor) -> Tensor:
        pixels = self.height * self.width
        total = torch.zeros(self.num_gaussians, rows.shape[1], dtype=self.dtype, device=self.device)
        for first, count in self._chunks():
            part = rows[first * pixels : (first + count) * pixels]
            total = total + self._chunk(first, count).back_project(part, solver=True)
        return total

    def back_project_with_product(
        self, images: Float[Tensor, "N C h w"], features: Float[Tensor, "G C"]
    ) -> tuple[Float[Tensor, "G C"], Float[Tensor, "G C"]]:
        """As `SplatLinearSystem.back_project_with_product`, one composite of every view: `W~^T [images | W~ f]`."""
        rows, features, channels = self._rows(images), features.to(self.dtype), images.shape[1]
        pixels = self.height * self.width
        total = torch.zeros(self.num_gaussians, 2 * channels, dtype=self.dtype, device=self.device)
        for first, count in self._chunks():
            chunk = self._chunk(first, count)
            both = torch.cat([rows[first * pixels : (first + count) * pixels], chunk.render(features, True)], dim=1)
            total = total + chunk.back_project(both, solver=True)
        return total[:, :channels], total[:, channels:]

    def apply(self, features: Float[Tensor, "G C"], damping: float = 0.0) -> Float[Tensor, "G C"]:
        total = torch.zeros_like(features)
        for first, count in self._chunks():
            total = total + self._chunk(first, count).normal_product(features)
        return total + damping * features


class _EntriesChunk:
    """A chunk's weights as unsorted entries from the torch compositor, applied by gathers and index-adds."""

    def __init__(
        self, pixel: Tensor, gaussian: Tensor, weight: Tensor, num_rows: int, num_gaussians: int, cutoff: float
    ) -> None:
        self.full = (pixel, gaussian, weight)
        if cutoff > 0:
            kept = weight >= cutoff
            self.solver = (pixel[kept], gaussian[kept], weight[kept])
        else:
            self.solver = self.full
        self.num_rows, self.num_gaussians = num_rows, num_gaussians
        self.root: Tensor | None = None

    def render(self, features: Tensor, solver: bool) -> Tensor:
        pixel, gaussian, weight = self.solver if solver else self.full
        rows = torch.zeros(self.num_rows, features.shape[1], dtype=features.dtype, device=features.device)
        rows.index_add_(0, pixel, weight[:, None] * features[gaussian])
        return rows * self.root if solver and self.root is not None else rows

    def back_project(self, rows: Tensor, solver: bool) -> Tensor:
        pixel, gaussian, weight = self.solver if solver else self.full
        if solver and self.root is not None:
            rows = rows * self.root
        total = torch.zeros(self.num_gaussians, rows.shape[1], dtype=rows.dtype, device=rows.device)
        return total.index_add_(0, gaussian, weight[:, None] * rows[pixel])

    def normal_product(self, features: Tensor) -> Tensor:
        return self.back_project(self.render(features, solver=True), solver=True)


class _GsplatChunk:
    """A chunk of views rasterised by gsplat (float32): `W p` its forward pass, `W^T y` its backward pass with
    respect to the colours. Every weight takes part (`solver` is ignored: gsplat cannot prune)."""

    def __init__(
        self, geometry: tuple[Tensor, ...], viewmats: Tensor, Ks: Tensor, width: int, height: int, antialiased: bool
    ) -> None:
        self.geometry = tuple(tensor.float() for tensor in geometry)
        self.viewmats, self.Ks = viewmats.float(), Ks.float()
        self.width, self.height, self.antialiased = width, height, antialiased
        self.dtype = geometry[0].dtype
        self.root: Tensor | None = None

    def _rasterize(self, colors: Tensor) -> Tensor:
        """`W colors` stacked over the chunk's pixels `[count h w, C]`, differentiable with respect to `colors`."""
        means, quats_wxyz, scales, opacities = self.geometry
        images = render_gaussians(
            means,
            quats_wxyz,
            scales,
            opacities,
            colors,
            self.viewmats,
            self.Ks,
            self.width,
            self.height,
            backend="gsplat",
            antialiased=self.antialiased,
        ).image  # [count, C, h, w]; gsplat's autograd reaches the colours
        return images.permute(0, 2, 3, 1).reshape(-1, colors.shape[1])

    def render(self, features: Tensor, solver: bool) -> Tensor:
        with torch.no_grad():
            rows = self._rasterize(features.float()).to(self.dtype)
        return rows * self.root if solver and self.root is not None else rows

    def back_project(self, rows: Tensor, solver: bool) -> Tensor:
        if solver and self.root is not None:
            rows = rows * self.root
        colors = torch.zeros(self.geometry[0].shape[0], rows.shape[1], device=rows.device, requires_grad=True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(self._rasterize(colors), colors, grad_outputs=rows.float())
        return gradient.to(self.dtype)

    def normal_product(self, features: Tensor) -> Tensor:
        colors = features.detach().float().requires_grad_(True)
        with torch.enable_grad():
            images = self._rasterize(colors)
            weighted = images.detach() if self.root is None else images.detach() * self.root.float().square()
            (gradient,) = torch.autograd.grad(images, colors, grad_outputs=weighted)
        return gradient.to(self.dtype)


__all__ = ["MatrixFreeSplatSystem"]
