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

Pixels may count unequally (`evidence`): with a weight `d_p > 0` per pixel the fit minimises
`sum_v ||D_v^(1/2) (W_v c - y_v)||^2`, which is the problem above for the weights `D^(1/2) W` and the content
`D^(1/2) y`. The solver's copy of the weights is stored (or, matrix-free, applied) scaled that way, so A, b, the row
sums and the closed form below are all the weighted ones. A pixel's weight is the alpha-weighted mean of a weight per
Gaussian and view, `d = W_v e_v / alpha_v`: the bridge's is how finely the view sees the Gaussian's surface.

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
  coverage keep every weight. The pruned W~ and W~^T are stored beside W, whose full transpose no product then reads.
- A is applied either assembled (a sparse `G x G` matrix built on the first fit) or implicitly as `W^T (W p)`;
  "auto" assembles when a row sample predicts `nnz(A) <= nnz(W)`.

The fit is written once (`SplatLinearSystem.fit`) over the products of a system that holds the weights one of three
ways (`SplatBridgeConfig.storage`, chosen against a memory budget by `sync_splat.bridges.splat_memory`): stored as CSR
both ways (`SplatLeastSquares`, built shard of views by shard so that one shard's uncompressed weights exist at a
time), the same with float16 values read back in the system's dtype one shard at a time ("compact"), or recomputed on
every product (`sync_splat.bridges.splat_matrix_free`).

No state is kept between fits, so a resumed run ends bit for bit as an uninterrupted one. What the settings cost and
gain on real scenes is measured in docs/splat_fit.md.

Dimension letters (docs/conventions.md): N views, G Gaussians, C channels, h w pixels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.bridges.csr import (
    csr_bytes,
    csr_matrix,
    csr_rows,
    row_offsets,
    transpose_coo,
    with_index_dtype,
    with_values_dtype,
)
from sync_splat.bridges.plumbing import expect_shape
from sync_splat.bridges.splat_weights import Evidence, pixel_root_weights
from sync_splat.distributed import ViewShard
from sync_splat.errors import InputError
from sync_splat.functional.conjugate_gradient import LeastSquaresFit, conjugate_gradient

NormalMatrix = Literal["auto", "assembled", "implicit"]


@dataclass(frozen=True)
class _Shard:
    """The weights of views `[first, first + count)`: `W` `[count h w, G]` and `W^T` `[G, count h w]`, both CSR, with
    values in the storage dtype (`weights_as` and `transposed_as` give them in the dtype a product needs). `W^T` is
    None where no product reads it (the full weights of a shard whose solver copy is pruned)."""

    first: int
    count: int
    weights: Tensor
    transposed: Tensor | None

    def weights_as(self, dtype: torch.dtype) -> Tensor:
        return with_values_dtype(self.weights, dtype)

    def transposed_as(self, dtype: torch.dtype) -> Tensor:
        assert self.transposed is not None, "the full weights' transpose is only kept where the solver reads it"
        return with_values_dtype(self.transposed, dtype)


class SplatLinearSystem(ABC):
    """The frozen-geometry linear system of N views at one resolution, however its weights are held: the products
    the bridge and the fit need, and the fit itself (module docstring), written once.

    Attributes:
        num_views, height, width, num_gaussians: N, h, w, G.
        dtype, device: of every product's result.
        alpha: the coverage `W 1` of every view, `[N, 1, h, w]`.
        storage: how the weights are held ("stored", "compact" or "matrix_free").
        root_weights: the square roots of the pixels' weights in the fit, `[N, 1, h, w]` (module docstring; None
            where every pixel counts the same).
    """

    num_views: int
    height: int
    width: int
    num_gaussians: int
    dtype: torch.dtype
    device: torch.device
    alpha: Tensor
    storage: str
    root_weights: Tensor | None  # [N, 1, h, w] square roots of the pixels' weights (None: every pixel counts 1)
    _solver_row_sums: Tensor  # A~ 1, the closed form's denominator and the preconditioner

    @abstractmethod
    def render(self, features: Float[Tensor, "G C"]) -> Float[Tensor, "N C h w"]:
        """`W_v features` for every view (no background): the premultiplied render."""

    @abstractmethod
    def render_sqrt(self, features: Float[Tensor, "G C"]) -> Float[Tensor, "N C h w"]:
        """`sqrt(W_v) features` for every view: the renderer with square-root weights (consistent noise)."""

    @abstractmethod
    def view_matrix(self, view: int) -> Tensor:
        """`W_view` `[h w, G]` as a sparse CSR tensor in `dtype`."""

    @abstractmethod
    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every weight as `(gaussian, pixel, value)`, `pixel` flat over all views (`view * h * w + row * w + col`),
        ordered by Gaussian, then pixel (`_by_gaussian`)."""

    @abstractmethod
    def back_project_with_product(
        self, images: Float[Tensor, "N C h w"], features: Float[Tensor, "G C"]
    ) -> tuple[Float[Tensor, "G C"], Float[Tensor, "G C"]]:
        """The fit's right-hand side `W~^T images` and `A~ features`, `W~` the solver's weights (`W` itself unless
        `solver_cutoff` prunes it), in one pass over the weights where the layout allows."""

    @abstractmethod
    def apply(self, features: Float[Tensor, "G C"], damping: float = 0.0) -> Float[Tensor, "G C"]:
        """`(A~ + damping I) features`, A~ the normal matrix of the solver's weights (`A` unless pruned)."""

    @abstractmethod
    def _solver_back_project(self, rows: Tensor) -> Tensor:
        """`W~^T rows` for rows stacked over views `[N h w, C]`."""

    @property
    @abstractmethod
    def weight_bytes(self) -> int:
        """Bytes of the weights held (CSR indices and values of W, W^T and the solver's copies; 0 matrix-free)."""

    @property
    def normal_matrix_bytes(self) -> int:
        """Bytes of the assembled normal matrix (0 while A is applied implicitly or not yet assembled)."""
        return 0

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
        shard: ViewShard | None = None,
    ) -> LeastSquaresFit:
        """Least-squares features whose render matches `content` (module docstring): the closed form, then CG.

        Args:
            content: the covered content `y` of every view (what `W z` should equal), unweighted.
            previous: the warm start; also the value of Gaussians no view sees.
            unseen: the value of unseen Gaussians without `previous`.
            damping: lambda, the pull towards the closed form.
            tolerance: the relative residual CG stops at.
            max_iterations: the most CG iterations.
            min_gain_db: CG also stops after an iteration that lowers the fit's squared error (damping included)
                by less than this many decibels (0: never).
            shard: which of the views this process holds when they are split across processes
                (`sync_splat.distributed`): the system and `content` hold those views, every sum over views (b, the
                row sums, `A p`, the squared error) is added over the processes, and each gets the whole answer.
        """
        total = shard.sum if shard is not None else lambda tensor: tensor
        content = content.to(self.dtype)
        if self.root_weights is not None:
            content = content * self.root_weights
        row_sums = total(self._solver_row_sums)
        seen = row_sums > 0
        if previous is None:
            b = self._solver_back_project(content.permute(0, 2, 3, 1).reshape(-1, content.shape[1]))
            b = total(b)
            fallback = torch.full_like(b, unseen)
        else:
            expect_shape("previous", previous, (self.num_gaussians, content.shape[1]))
            fallback = previous.to(device=self.device, dtype=self.dtype)
            b, product = total(torch.cat(self.back_project_with_product(content, fallback), dim=1)).chunk(2, dim=1)
        reference = torch.where(seen, b / torch.where(seen, row_sums, 1.0), fallback)
        start = reference if previous is None else fallback
        start_product = None if previous is None else product + damping * start
        # The lumped (row-sum) preconditioner diag(A 1) + lambda: A is non-negative, so diag(A 1) - A is a graph
        # Laplacian (positive semi-definite) and the preconditioned spectrum lies in (0, 1]; the closed form is one
        # preconditioned step from zero. On the benchmark's scenes it needs a third fewer iterations than Jacobi.
        lumped = row_sums + damping
        inverse_preconditioner = torch.where(seen, 1 / torch.where(seen, lumped, 1.0), 0.0)
        rhs = b + damping * reference
        offset = None
        if min_gain_db > 0:  # the objective at c = 0: ||y||^2 over every view, and the damping's ||c_ref||^2
            offset = float(total(content.square().sum())) + damping * float(reference.square().sum())
        if shard is None or not shard.sharded:
            apply = lambda p: self.apply(p, damping)  # noqa: E731
        else:
            apply = lambda p: total(self.apply(p)) + damping * p  # noqa: E731
        return conjugate_gradient(
            apply,
            rhs,
            start,
            inverse_preconditioner,
            tolerance=tolerance,
            max_iterations=max_iterations,
            start_product=start_product,
            min_gain_db=min_gain_db,
            objective_offset=offset,
        )


class SplatLeastSquares(SplatLinearSystem):
    """The linear system with every view's weights stored as CSR, both ways: the fast path when they fit in memory.

    The weights arrive whole, or shard by shard from a function of the views (so that only one shard's uncompressed
    weights exist at a time); alpha and the row sums are taken from the full-precision weights before they are
    stored. With `value_dtype` float16 ("compact" storage) the values take 2 bytes and every product reads them back
    one shard at a time in the system's dtype.

    Args:
        weights: the compositing weights `[N h w, G]` (`gaussian_weights`, sparse COO), or a function
            `(first, count) -> [count h w, G]` weights of views `[first, first + count)`, called once per shard.
        num_views: N.
        height: h.
        width: w.
        views_per_shard: views stored and summed together (None: all).
        normal_matrix: how CG applies A (see `SplatBridgeConfig.normal_matrix`).
        solver_cutoff: weights below this are left out of the fit's A and b (see `SplatBridgeConfig.solver_cutoff`;
            0: none).
        value_dtype: the dtype the weights are stored in (None: the weights' own).
        evidence: the weight of each Gaussian in each view (`Evidence`; None: every pixel counts the same).
    """

    def __init__(
        self,
        weights: Tensor | Callable[[int, int], Tensor],
        num_views: int,
        height: int,
        width: int,
        views_per_shard: int | None = None,
        normal_matrix: NormalMatrix = "auto",
        solver_cutoff: float = 0.0,
        value_dtype: torch.dtype | None = None,
        evidence: Evidence | None = None,
    ) -> None:
        if normal_matrix not in ("auto", "assembled", "implicit"):
            raise InputError(f"normal_matrix must be 'auto', 'assembled' or 'implicit', got {normal_matrix!r}")
        if solver_cutoff < 0:
            raise InputError(f"solver_cutoff must be non-negative, got {solver_cutoff}")
        per_shard = num_views if views_per_shard is None else views_per_shard
        if per_shard < 1:
            raise InputError(f"views_per_shard must be at least 1, got {views_per_shard}")
        self.num_views, self.height, self.width = num_views, height, width
        self.normal_matrix_mode = normal_matrix
        self.solver_cutoff = solver_cutoff
        pixels = height * width
        chunk = _view_slicer(weights, num_views, pixels) if isinstance(weights, Tensor) else weights

        shards, solver_shards, alphas, roots = [], [], [], []
        solver_row_sums = None
        self.nnz = self.solver_nnz = 0
        for first in range(0, num_views, per_shard):
            count = min(per_shard, num_views - first)
            part = chunk(first, count).coalesce()
            if part.shape[0] != count * pixels:
                raise ValueError(f"weights of {count} views must have {count} x {height} x {width} rows")
            self.num_gaussians = part.shape[1]
            rows, columns = part.indices()
            values = part.values()
            self.dtype, self.device = values.dtype, values.device
            stored_dtype = self.dtype if value_dtype is None else value_dtype
            root = None
            if evidence is not None:
                root = pixel_root_weights(rows, columns, values, evidence, first, pixels, count * pixels)
            shard, solver, alpha, row_sums = self._shard(first, count, rows, columns, values, stored_dtype, root)
            del part, rows, columns, values  # one shard's uncompressed weights at a time
            shards.append(shard)
            solver_shards.append(solver)
            alphas.append(alpha)
            roots.append(root)
            solver_row_sums = row_sums if solver_row_sums is None else solver_row_sums + row_sums
        self.shards, self._solver_shards = tuple(shards), tuple(solver_shards)
        self.storage = "stored" if value_dtype in (None, self.dtype) else "compact"
        self.alpha: Float[Tensor, "N 1 h w"] = (
            torch.cat(alphas).reshape(num_views, height, width, 1).permute(0, 3, 1, 2)
        )
        self.root_weights = None if evidence is None else torch.cat(roots).reshape(num_views, 1, height, width)
        self._solver_row_sums = solver_row_sums
        self._assembled: Tensor | None = None
        self._decided = normal_matrix != "auto"

    def _shard(
        self,
        first: int,
        count: int,
        rows: Tensor,
        columns: Tensor,
        values: Tensor,
        stored_dtype: torch.dtype,
        root: Tensor | None,
    ) -> tuple[_Shard, _Shard, Tensor, Tensor]:
        """One shard from its sorted COO weights (`rows` local to the shard): the full weights, the solver's (the same
        shard unless the cutoff prunes some or the pixels' weights `root ** 2` scale them), the shard's alpha rows
        `[count h w, 1]` and its part of `A~ 1`."""
        shape = (count * self.height * self.width, self.num_gaussians)
        # 32-bit indices halve the memory traffic of sparse products (2.5x faster on CPU) wherever they fit.
        small = max(shape) < 2**31 and values.numel() < 2**31
        index_dtype = torch.int32 if small else torch.int64
        ones = torch.ones(self.num_gaussians, 1, dtype=self.dtype, device=self.device)
        forward = csr_matrix(row_offsets(rows, shape[0]).to(index_dtype), columns.to(index_dtype), values, shape)
        alpha = forward @ ones
        self.nnz += values.numel()
        kept = values >= self.solver_cutoff
        prunes = self.solver_cutoff > 0 and not bool(kept.all())
        if prunes or root is not None:
            if prunes:
                rows, columns, values = rows[kept], columns[kept], values[kept]
            if root is not None:
                values = values * root[rows].to(values)
            reduced = csr_matrix(row_offsets(rows, shape[0]).to(index_dtype), columns.to(index_dtype), values, shape)
            transposed = transpose_coo(rows, columns, values, shape, index_dtype)
            row_sums = transposed @ (reduced @ ones)
            full = _Shard(first, count, with_values_dtype(forward, stored_dtype), None)
            solver = _Shard(
                first, count, with_values_dtype(reduced, stored_dtype), with_values_dtype(transposed, stored_dtype)
            )
        else:
            transposed = transpose_coo(rows, columns, values, shape, index_dtype)
            row_sums = transposed @ alpha
            full = solver = _Shard(
                first, count, with_values_dtype(forward, stored_dtype), with_values_dtype(transposed, stored_dtype)
            )
        self.solver_nnz += values.numel()
        zeros = torch.zeros(self.num_gaussians, 1, dtype=self.dtype, device=self.device)
        return full, solver, alpha, zeros + row_sums

    @property
    def weight_bytes(self) -> int:
        tensors = {}
        for shard in (*self.shards, *self._solver_shards):
            for matrix in (shard.weights, shard.transposed):
                if matrix is not None:
                    tensors[id(matrix)] = csr_bytes(matrix)
        return sum(tensors.values())

    @property
    def normal_matrix_bytes(self) -> int:
        return 0 if self._assembled is None else csr_bytes(self._assembled)

    def _solver_render(self, features: Tensor) -> Tensor:
        """`W~ features` stacked over views `[N h w, C]` (the solver's, possibly pruned, weights)."""
        return torch.cat([shard.weights_as(self.dtype) @ features for shard in self._solver_shards])

    def _solver_back_project(self, rows: Tensor) -> Tensor:
        pixels = self.height * self.width
        total = torch.zeros(self.num_gaussians, rows.shape[1], dtype=self.dtype, device=self.device)
        for shard in self._solver_shards:
            part = rows[shard.first * pixels : (shard.first + shard.count) * pixels]
            total = total + shard.transposed_as(self.dtype) @ part
        return total

    # ---- products ---------------------------------------------------------------------------------------------

    def render(self, features: Float[Tensor, "G C"]) -> Float[Tensor, "N C h w"]:
        features = features.to(self.dtype)
        views = [
            (shard.weights_as(self.dtype) @ features).reshape(shard.count, self.height, self.width, -1)
            for shard in self.shards
        ]
        return torch.cat(views).permute(0, 3, 1, 2)

    def render_sqrt(self, features: Float[Tensor, "G C"]) -> Float[Tensor, "N C h w"]:
        views = []
        for shard in self.shards:
            w = shard.weights
            root = csr_matrix(w.crow_indices(), w.col_indices(), w.values().to(self.dtype).sqrt(), w.shape)
            views.append((root @ features.to(self.dtype)).reshape(shard.count, self.height, self.width, -1))
        return torch.cat(views).permute(0, 3, 1, 2)

    def view_matrix(self, view: int) -> Tensor:
        """`W_view` `[h w, G]` (CSR), a zero-copy slice of its shard (its values converted when stored compact)."""
        shard = next(s for s in self.shards if s.first <= view < s.first + s.count)
        pixels = self.height * self.width
        crow = shard.weights.crow_indices()[(view - shard.first) * pixels : (view - shard.first + 1) * pixels + 1]
        begin, end = int(crow[0]), int(crow[-1])
        return csr_matrix(
            crow - crow[0], shard.weights.col_indices()[begin:end],
            shard.weights.values()[begin:end].to(self.dtype), (pixels, self.num_gaussians),
        )  # fmt: skip

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        gaussians, pixels, values = [], [], []
        rows_per_view = self.height * self.width
        for shard in self.shards:
            crow = shard.weights.crow_indices().long()
            rows = torch.arange(shard.count * rows_per_view, device=self.device)
            pixels.append(torch.repeat_interleave(rows, crow.diff()) + shard.first * rows_per_view)
            gaussians.append(shard.weights.col_indices().long())
            values.append(shard.weights.values().to(self.dtype))
        return _by_gaussian(torch.cat(gaussians), torch.cat(pixels), torch.cat(values), self.num_views * rows_per_view)

    def back_project_with_product(
        self, images: Float[Tensor, "N C h w"], features: Float[Tensor, "G C"]
    ) -> tuple[Float[Tensor, "G C"], Float[Tensor, "G C"]]:
        """As `SplatLinearSystem.back_project_with_product`; with A implicit both share one pass over `W~^T`:
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
            self.normal_matrix_mode = "assembled" if self.predicted_normal_nnz() <= self.solver_nnz else "implicit"
        if self.normal_matrix_mode == "assembled" and self._assembled is None:
            total = None
            for shard in self._solver_shards:
                part = shard.transposed_as(self.dtype) @ shard.weights_as(self.dtype)
                total = part if total is None else total + part
            self._assembled = with_index_dtype(total, shard.weights.crow_indices().dtype)
        return self._assembled

    def predicted_normal_nnz(self) -> float:
        """nnz(A~) estimated from every 64th row of `W~^T W~` (cheap: 1/64 of the assembly's work)."""
        rows = torch.arange(0, self.num_gaussians, 64, device=self.device)
        sampled = None
        for shard in self._solver_shards:
            part = csr_rows(shard.transposed_as(self.dtype), rows) @ shard.weights_as(self.dtype)
            sampled = part if sampled is None else sampled + part
        return sampled.values().numel() * self.num_gaussians / max(len(rows), 1)

    def apply(self, features: Float[Tensor, "G C"], damping: float = 0.0) -> Float[Tensor, "G C"]:
        assembled = self.normal_matrix()
        if assembled is not None:
            product = assembled @ features
        else:
            product = self._solver_back_project(self._solver_render(features))
        return product + damping * features


def _by_gaussian(gaussian: Tensor, pixel: Tensor, value: Tensor, num_pixels: int) -> tuple[Tensor, Tensor, Tensor]:
    """Weights `(gaussian, pixel, value)` in the order of `entries`: by Gaussian, then pixel (`num_pixels` over all
    views)."""
    order = torch.argsort(gaussian * num_pixels + pixel)
    return gaussian[order], pixel[order], value[order]


def _view_slicer(weights: Tensor, num_views: int, pixels: int) -> Callable[[int, int], Tensor]:
    """`(first, count) -> the rows of views [first, first + count)` of whole weights `[N h w, G]` (sparse COO)."""
    if weights.shape[0] != num_views * pixels:
        raise ValueError(f"weights must have {num_views} views x {pixels} pixels rows, got {weights.shape[0]}")
    weights = weights.coalesce()
    rows, columns = weights.indices()
    values = weights.values()

    def rows_of(first: int, count: int) -> Tensor:
        bounds = torch.tensor([first, first + count], device=rows.device) * pixels
        begin, end = torch.searchsorted(rows, bounds).tolist()
        indices = torch.stack([rows[begin:end] - first * pixels, columns[begin:end]])
        shape = (count * pixels, weights.shape[1])
        return torch.sparse_coo_tensor(indices, values[begin:end], shape, is_coalesced=True, check_invariants=False)

    return rows_of
