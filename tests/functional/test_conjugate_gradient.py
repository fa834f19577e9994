"""The shared preconditioned conjugate gradient: exact on small systems, one independent solve per column."""

import torch

from sync_splat.functional.conjugate_gradient import conjugate_gradient


def test_conjugate_gradient_solves_a_small_system_per_column() -> None:
    generator = torch.Generator().manual_seed(0)
    M = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    M = M @ M.T + 0.1 * torch.eye(6, dtype=torch.float64)
    rhs = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    fit = conjugate_gradient(
        lambda p: M @ p, rhs, torch.zeros_like(rhs), 1 / M.diagonal()[:, None], tolerance=1e-12, max_iterations=20
    )
    torch.testing.assert_close(fit.z, torch.linalg.solve(M, rhs))
    assert fit.iterations <= 7  # exact in at most n steps, up to rounding
