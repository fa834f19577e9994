"""The splat colour fit (the splat bridge's g): a damped least-squares problem over frozen compositing weights.

Geometry is frozen, so a rendered pixel is linear in the per-Gaussian features: with `W_v` the compositing weights of
view v (`sync_splat.render.gaussians.gaussian_weights`, sparse `[h w, G]`, computed once),

    x_v = W_v z + (1 - alpha_v) background_v,        alpha_v = W_v 1.

The sampler composites every view over its own value, `f(z, background=x)`, so a view agrees with z exactly when its
covered content `alpha_v x_v` equals `W_v z`. The fit therefore matches that content,

    min_c  sum_v ||W_v c - y_v||^2 + lambda ||c - c_ref||^2,      y_v = alpha_v x_v,

whose normal equations `(A + lambda I) c = b + lambda c_ref`, `A = sum_v W_v^T W_v`, `b = sum_v W_v^T y_v`, are sums
over views (so views can be split into shards, or processes, whose sums add). (Fitting `W c` to the whole of `x`
would treat the uncovered part as black and add it again in f: consistent views would not be fixed points.) Callers
may instead take views as composited over a known background, `y_v = x_v - (1 - alpha_v) background`.

- `c_ref = b / (A 1)`, the closed form: one back-projection, the splat colour average re-weighted by coverage. It is
  exact where a pixel's Gaussians share one colour, not where different colours overlap; it starts the solver when
  there is no warm start.
- Conjugate gradient (`sync_splat.functional.conjugate_gradient`), preconditioned with the row sums `A 1 + lambda`,
  then runs from the warm start or `c_ref`, one solve per channel, until the relative residual falls to `tolerance`
  (checked before the first step, so a converged warm start costs nothing), an iteration improves the fit by less
  than `min_gain_db` decibels (each CG step lowers the squared error by exactly `step * rho`), or `max_iterations`.
  Views that agree end on the residual; views that disagree, as the sampler's do, end on the gain.
- `lambda` (`damping`, in fully opaque pixels' worth of evidence) keeps weakly seen Gaussians near `c_ref`; without it
  a Gaussian seen through a few faint pixels may take any colour at all, which held-out views would show. Gaussians
  no view sees keep the warm start (or the unseen default).
- `solver_cutoff` leaves weights below it out of A and b (the products then read fewer weights); rendering, alpha and
  coverage keep every weight. It costs a pruned copy of W and W^T.
- A is applied either assembled (a sparse `G x G` matrix built on the first fit) or implicitly as `W^T (W p)`;
  "auto" assembles when a row sample predicts `nnz(A) <= nnz(W)`.

No state is kept between fits, so a resumed run ends bit for bit as an uninterrupted one. What the settings cost and
gain on real scenes is measured in docs/splat_fit.md. torch's sparse CSR tensors are built with their invariant
checks explicitly off (the indices are made here) and their "beta" notice silenced, in `_csr` only.

Dimension letters (docs/conventions.md): N views, G Gaussians, C channels, h w pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.bridges.plumbing import expect_shape
from sync_splat.errors import InputError
from sync_splat.functional.conjugate_gradient import LeastSquaresFit, conjugate_gradient

NormalMatrix = Literal["auto", "assembled", "implicit"]


@dataclass(frozen=True)
class _Shard:
    """The weights of views `[first, first + count)`: `W` `[count h w, G]` and `W^T` `[G, count h w]`, both CSR."""

    first: int
    count: int
    weights: Tensor
    transposed: Tensor


class SplatLeastSquares:
    """The frozen-geometry linear system of N views at one resolution: render, back-project, and fit.

    Args:
        weights: the compositing weights `[N h w, G]` (`gaussian_weights`, sparse COO, coalesced).
        num_views: N.
        height: h.
        width: w.
        views_per_shard: views stored and summed together (None: all).
        normal_matrix: how CG applies A (see `SplatBridgeConfig.normal_matrix`).
        solver_cutoff: weights below this are left out of the fit's A and b (see `SplatBridgeConfig.solver_cutoff`;
            0: none).
    """

    def __init__(
        self,
        weights: Tensor,
        num_views: int,
        height: int,
        width: int,
        views_per_shard: int | None = None,
        normal_matrix: NormalMatrix = "auto",
        solver_cutoff: float = 0.0,
    ) -> None:
        pixels, self.num_gaussians = height * width, weights.shape[1]
        if weights.shape[0] != num_views * pixels:
            raise ValueError(f"weights must have {num_views} x {height} x {width} rows, got {weights.shape[0]}")
        if normal_matrix not in ("auto", "assembled", "implicit"):
            raise InputError(f"normal_matrix must be 'auto', 'assembled' or 'implicit', got {normal_matrix!r}")
        self.num_views, self.height, self.width = num_views, height, width
        self.normal_matrix_mode = normal_matrix
        weights = weights.coalesce()
        rows, columns = weights.indices()
        values = weights.values()
        self.dtype, self.device = values.dtype, values.device
        # 32-bit indices halve the memory traffic of sparse products (2.5x faster on CPU) wherever they fit.
        small = max(weights.shape) < 2**31 and values.numel() < 2**31
        index_dtype = torch.int32 if small else torch.int64
        per_shard = num_views if views_per_shard is None else views_per_shard
        if per_shard < 1:
            raise InputError(f"views_per_shard must be at least 1, got {views_per_shard}")
        self.shards = self._shards(rows, columns, values, per_shard, index_dtype)
        self.nnz = values.numel()
        ones = torch.ones(self.num_gaussians, 1, dtype=self.dtype, device=self.device)
        self.alpha: Float[Tensor, "N 1 h w"] = self.render(ones)
        if solver_cutoff < 0:
            raise InputError(f"solver_cutoff must be non-negative, got {solver_cutoff}")
        self.solver_cutoff = solver_cutoff
        kept = values >= solver_cutoff
        if solver_cutoff > 0 and not bool(kept.all()):
            self._solver_shards = self._shards(rows[kept], columns[kept], values[kept], per_shard, index_dtype)
            self.solver_nnz = int(kept.sum())
            self._solver_row_sums = self._solver_back_project(self._solver_render(ones))
        else:
            self._solver_shards, self.solver_nnz = self.shards, self.nnz
            self._solver_row_sums = None
        # A 1 = W^T alpha, a per-view sum: the closed form's denominator and the preconditioner.
        self.row_sums = self.back_project(self.alpha)
        if self._solver_row_sums is None:
            self._solver_row_sums = self.row_sums
        self._assembled: Tensor | None = None
        self._decided = normal_matrix != "auto"

    def _shards(
        self, rows: Tensor, columns: Tensor, values: Tensor, per_shard: int, index_dtype: torch.dtype
    ) -> tuple[_Shard, ...]:
        """The weights (sorted COO `rows, columns, values`) split into shards of `per_shard` views, CSR both ways."""
        pixels, num_views = self.height * self.width, self.num_views
        firsts = list(range(0, num_views, per_shard))
        bounds = torch.searchsorted(rows, torch.tensor([*firsts, num_views], device=rows.device) * pixels).tolist()
        shards = []
        for k, first in enumerate(firsts):
            count = min(per_shard, num_views - first)
            begin, end = bounds[k], bounds[k + 1]
            local, cols, vals = rows[begin:end] - first * pixels, columns[begin:end], values[begin:end]
            crow = _offsets(local, count * pixels).to(index_dtype)
            forward = _csr(crow, cols.to(index_dtype), vals, (count * pixels, self.num_gaussians))
            order = torch.sort(cols, stable=True).indices  # rows stay ascending within each column
            crow_t = _offsets(cols, self.num_gaussians).to(index_dtype)
            transposed = _csr(crow_t, local[order].to(index_dtype), vals[order], (self.num_gaussians, count * pixels))
            shards.append(_Shard(first, count, forward, transposed))
        return tuple(shards)

    def _solver_render(self, features: Tensor) -> Tensor:
        """`W~ features` stacked over views `[N h w, C]` (the solver's, possibly pruned, weights)."""
        return torch.cat([shard.weights @ features for shard in self._solver_shards])

    def _solver_back_project(self, rows: Tensor) -> Tensor:
        """`W~^T rows` for rows stacked over views `[N h w, C]`."""
        pixels = self.height * self.width
        total = torch.zeros(self.num_gaussians, rows.shape[1], dtype=self.dtype, device=self.device)
        for shard in self._solver_shards:
            total = total + shard.transposed @ rows[shard.first * pixels : (shard.first + shard.count) * pixels]
        return total

    # ---- products ---------------------------------------------------------------------------------------------

    def render(self, features: Float[Tensor, "G C"]) -> Float[Tensor, "N C h w"]:
        """`W_v features` for every view (no background): the premultiplied render."""
        features = features.to(self.dtype)
        views = [(shard.weights @ features).reshape(shard.count, self.height, self.width, -1) for shard in self.shards]
        return torch.cat(views).permute(0, 3, 1, 2)

    def render_sqrt(self, features: Float[Tensor, "G C"]) -> Float[Tensor, "N C h w"]:
        """`sqrt(W_v) features` for every view: the renderer with square-root weights (consistent noise)."""
        views = []
        for shard in self.shards:
            w = shard.weights
            root = _csr(w.crow_indices(), w.col_indices(), w.values().sqrt(), w.shape)
            views.append((root @ features.to(self.dtype)).reshape(shard.count, self.height, self.width, -1))
        return torch.cat(views).permute(0, 3, 1, 2)

    def back_project(self, images: Float[Tensor, "N C h w"]) -> Float[Tensor, "G C"]:
        """`sum_v W_v^T images_v`: every pixel handed back to the Gaussians in proportion to their weights."""
        total = torch.zeros(self.num_gaussians, images.shape[1], dtype=self.dtype, device=self.device)
        for shard in self.shards:
            part = images[shard.first : shard.first + shard.count].to(self.dtype).permute(0, 2, 3, 1)
            total = total + shard.transposed @ part.reshape(-1, images.shape[1])
        return total

    def view_matrix(self, view: int) -> Tensor:
        """`W_view` `[h w, G]` (CSR), a zero-copy slice of its shard."""
        shard = next(s for s in self.shards if s.first <= view < s.first + s.count)
        pixels = self.height * self.width
        crow = shard.weights.crow_indices()[(view - shard.first) * pixels : (view - shard.first + 1) * pixels + 1]
        begin, end = int(crow[0]), int(crow[-1])
        return _csr(
            crow - crow[0], shard.weights.col_indices()[begin:end], shard.weights.values()[begin:end],
            (pixels, self.num_gaussians),
        )  # fmt: skip

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every weight as `(gaussian, pixel, value)`, `pixel` flat over all views (`view * h * w + row * w + col`),
        ordered by Gaussian, then pixel within each shard."""
        gaussians, pixels, values = [], [], []
        for shard in self.shards:
            crow = shard.transposed.crow_indices().long()
            gaussians.append(torch.repeat_interleave(torch.arange(self.num_gaussians, device=self.device), crow.diff()))
            pixels.append(shard.transposed.col_indices().long() + shard.first * self.height * self.width)
            values.append(shard.transposed.values())
        return torch.cat(gaussians), torch.cat(pixels), torch.cat(values)

    def back_project_with_product(
        self, images: Float[Tensor, "N C h w"], features: Float[Tensor, "G C"]
    ) -> tuple[Float[Tensor, "G C"], Float[Tensor, "G C"]]:
        """The fit's right-hand side `W~^T images` and `A~ features`, with `W~` the solver's weights (`W` itself
        unless `solver_cutoff` prunes it). With A implicit both share one pass over `W~^T`:
        `W~^T [images | W~ features]` (a warm start's residual then costs one pass over the weights, not two)."""
        assembled = self.normal_matrix()
        channels = images.shape[1]
        rows = images.to(self.dtype).permute(0, 2, 3, 1).reshape(-1, channels)
        if assembled is not None:
            return self._solver_back_project(rows), assembled @ features.to(self.dtype)
        both = self._solver_back_project(torch.cat([rows, self._solver_render(features.to(self.dtype))], dim=1))
        return both[:, :channels], both[:, channels:]

    def normal_matrix(self) -> Tensor | None:
        """The assembled `A~ = sum_v W~_v^T W~_v` (sparse CSR `[G, G]`; `W~` the solver's weights, `W` unless
        `solver_cutoff` prunes it), or None when A is applied implicitly."""
        if not self._decided:
            self._decided = True
            self.normal_matrix_mode = "assembled" if self._predicted_nnz() <= self.solver_nnz else "implicit"
        if self.normal_matrix_mode == "assembled" and self._assembled is None:
            total = None
            for shard in self._solver_shards:
                part = shard.transposed @ shard.weights
                total = part if total is None else total + part
            self._assembled = _with_index_dtype(total, shard.weights.crow_indices().dtype)
        return self._assembled

    def _predicted_nnz(self) -> float:
        """nnz(A~) estimated from every 64th row of `W~^T W~` (cheap: 1/64 of the assembly's work)."""
        rows = torch.arange(0, self.num_gaussians, 64, device=self.device)
        sampled = None
        for shard in self._solver_shards:
            part = _csr_rows(shard.transposed, rows) @ shard.weights
            sampled = part if sampled is None else sampled + part
        return sampled.values().numel() * self.num_gaussians / max(len(rows), 1)

    def apply(self, features: Float[Tensor, "G C"], damping: float = 0.0) -> Float[Tensor, "G C"]:
        """`(A~ + damping I) features`, A~ the normal matrix of the solver's weights (`A` unless pruned)."""
        assembled = self.normal_matrix()
        if assembled is not None:
            product = assembled @ features
        else:
            product = self._solver_back_project(self._solver_render(features))
        return product + damping * features

    # ---- the fit ----------------------------------------------------------------------------------------------

    def fit(
        self,
        content: Float[Tensor, "N C h w"],
        previous: Float[Tensor, "G C"] | None = None,
        *,
        unseen: float = 0.0,
        damping: float,
        tolerance: float,
        max_iterations: int,
        min_gain_db: float = 0.0,
    ) -> LeastSquaresFit:
        """Least-squares features whose render matches `content` (module docstring): the closed form, then CG.

        Args:
            content: the covered content `y` of every view (what `W z` should equal).
            previous: the warm start; also the value of Gaussians no view sees.
            unseen: the value of unseen Gaussians without `previous`.
            damping: lambda, the pull towards the closed form.
            tolerance: the relative residual CG stops at.
            max_iterations: the most CG iterations.
            min_gain_db: CG also stops after an iteration that lowers the fit's squared error (damping included)
                by less than this many decibels (0: never).
        """
        row_sums = self._solver_row_sums
        seen = row_sums > 0
        if previous is None:
            b = self._solver_back_project(content.to(self.dtype).permute(0, 2, 3, 1).reshape(-1, content.shape[1]))
            fallback = torch.full_like(b, unseen)
        else:
            expect_shape("previous", previous, (self.num_gaussians, content.shape[1]))
            fallback = previous.to(device=self.device, dtype=self.dtype)
            b, product = self.back_project_with_product(content, fallback)
        reference = torch.where(seen, b / torch.where(seen, row_sums, 1.0), fallback)
        start = reference if previous is None else fallback
        start_product = None if previous is None else product + damping * start
        # The lumped (row-sum) preconditioner diag(A 1) + lambda: A is non-negative, so diag(A 1) - A is a graph
        # Laplacian (positive semi-definite) and the preconditioned spectrum lies in (0, 1]; the closed form is one
        # preconditioned step from zero. On the benchmark's scenes it needs a third fewer iterations than Jacobi.
        lumped = row_sums + damping
        inverse_preconditioner = torch.where(seen, 1 / torch.where(seen, lumped, 1.0), 0.0)
        rhs = b + damping * reference
        offset = float(content.square().sum()) + damping * float(reference.square().sum()) if min_gain_db > 0 else None
        return conjugate_gradient(
            lambda p: self.apply(p, damping),
            rhs,
            start,
            inverse_preconditioner,
            tolerance=tolerance,
            max_iterations=max_iterations,
            start_product=start_product,
            min_gain_db=min_gain_db,
            objective_offset=offset,
        )


def _csr(crow_indices: Tensor, col_indices: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A sparse CSR tensor built from indices made here (sorted, in range), without torch's construction warnings:
    the invariant checks are explicitly off (not implicitly, which warns) and the one-off notice that sparse CSR
    support is in beta is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)
        return torch.sparse_csr_tensor(crow_indices, col_indices, values, shape, check_invariants=False)


def _offsets(rows: Tensor, count: int) -> Tensor:
    """CSR row offsets `[count + 1]` of sorted row indices."""
    offsets = torch.zeros(count + 1, dtype=torch.long, device=rows.device)
    offsets[1:] = torch.bincount(rows, minlength=count).cumsum(0)
    return offsets


def _csr_rows(matrix: Tensor, rows: Tensor) -> Tensor:
    """The rows `rows` of a CSR matrix, as a new CSR matrix."""
    crow = matrix.crow_indices().long()
    starts, counts = crow[rows], crow[rows + 1] - crow[rows]
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long, device=crow.device)
    offsets[1:] = counts.cumsum(0)
    gather = torch.repeat_interleave(starts - offsets[:-1], counts) + torch.arange(int(offsets[-1]), device=crow.device)
    index_dtype = matrix.crow_indices().dtype
    return _csr(
        offsets.to(index_dtype), matrix.col_indices()[gather], matrix.values()[gather], (len(rows), matrix.shape[1])
    )


def _with_index_dtype(matrix: Tensor, index_dtype: torch.dtype) -> Tensor:
    """A CSR matrix with its indices converted (sparse products return 64-bit indices)."""
    if matrix.crow_indices().dtype == index_dtype:
        return matrix
    return _csr(
        matrix.crow_indices().to(index_dtype), matrix.col_indices().to(index_dtype), matrix.values(), matrix.shape
    )
