"""Preconditioned conjugate gradient for symmetric positive semi-definite systems, one independent solve per column.

Shared by the least-squares fits of the bridges whose views are linear in the canonical space (the splat colour fit,
`sync_splat.bridges.splat_fit`, and the layered toy bridge, `sync_splat.studies.layered_image`). A caller that wants
one solve over a whole tensor passes it as a single column.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class LeastSquaresFit:
    """One fit of per-Gaussian features to views.

    Attributes:
        z: the features, `[G, C]`.
        iterations: conjugate-gradient iterations taken.
        relative_residual: `||rhs - (A + lambda I) z|| / ||rhs||` at the end (the largest over channels).
    """

    z: Float[Tensor, "G C"]
    iterations: int
    relative_residual: float


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    rhs: Float[Tensor, "G C"],
    start: Float[Tensor, "G C"],
    inverse_preconditioner: Float[Tensor, "G 1"],
    *,
    tolerance: float,
    max_iterations: int,
    start_product: Float[Tensor, "G C"] | None = None,
    min_gain_db: float = 0.0,
    objective_offset: float | None = None,
) -> LeastSquaresFit:
    """Conjugate gradient for `M c = rhs` with a diagonal preconditioner, M symmetric positive semi-definite, one
    independent CG per column (channel), all columns stepped together.

    Args:
        apply: `p -> M p` for `[G, C]` tensors.
        rhs: the right-hand side.
        start: the initial guess (a warm start).
        inverse_preconditioner: `1 / d` for a positive diagonal preconditioner d (Jacobi: `diag(M)`), 0 on rows
            that keep their starting value (no evidence).
        tolerance: stop when every column's `||rhs - M c|| / ||rhs||` is at most this (checked before each step).
        max_iterations: the most steps.
        start_product: `M start` when the caller knows it (it saves one product).
        min_gain_db: also stop once a step lowers the least-squares objective `E(c) = sum over columns of
            c^T M c - 2 rhs^T c + objective_offset` by less than this many decibels, `10 log10(E_before / E_after)`
            (0: never). A CG step lowers E by exactly `step * rho`.
        objective_offset: E at c = 0 (`||y||^2` for the normal equations of `||W c - y||^2`); needed when
            `min_gain_db > 0`.

    Returns:
        The solution, the steps taken and the final relative residual.
    """
    c = start.clone()
    residual = rhs - (apply(c) if start_product is None else start_product)
    rhs_norm = rhs.norm(dim=0).clamp_min(torch.finfo(rhs.dtype).tiny)

    def relative() -> float:
        return float((residual.norm(dim=0) / rhs_norm).max())

    preconditioned = inverse_preconditioner * residual
    direction = preconditioned
    rho = (residual * preconditioned).sum(dim=0)
    if min_gain_db > 0:
        if objective_offset is None:
            raise ValueError("conjugate_gradient: min_gain_db needs objective_offset")
        objective = objective_offset - float((c.double() * (rhs + residual).double()).sum())
    iterations, gaining = 0, True
    while gaining and iterations < max_iterations and relative() > tolerance:
        m_direction = apply(direction)
        curvature = (direction * m_direction).sum(dim=0)
        step = torch.where(curvature > 0, rho / curvature.clamp_min(torch.finfo(rhs.dtype).tiny), 0.0)
        if min_gain_db > 0:
            lowered = objective - float((step * rho).sum())
            # Near an exact fit E is lost in rounding (lowered <= 0): leave the decision to the residual test.
            gaining = lowered <= 0 or 10 * math.log10(objective / lowered) >= min_gain_db
            objective = lowered
        c = c + step * direction
        residual = residual - step * m_direction
        preconditioned = inverse_preconditioner * residual
        rho_next = (residual * preconditioned).sum(dim=0)
        direction = (
            preconditioned
            + torch.where(rho > 0, rho_next / rho.clamp_min(torch.finfo(rhs.dtype).tiny), 0.0) * direction
        )
        rho = rho_next
        iterations += 1
    return LeastSquaresFit(c, iterations, relative())
