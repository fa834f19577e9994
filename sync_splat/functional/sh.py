"""Real spherical harmonics up to degree 3, in the order and signs of 3DGS and gsplat (docs/conventions.md).

A Gaussian's colour seen along a unit direction d is `clamp(sum_k sh_k Y_k(d) + 0.5, 0, 1)`; the DC term alone gives
`rgb01 = 0.5 + SH_C0 * sh_0`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

SH_C0 = 0.28209479177387814
"""The degree-0 spherical-harmonic constant 1 / (2 sqrt(pi)): `rgb01 = 0.5 + SH_C0 * sh_dc`."""

SH_DEGREES = {1: 0, 4: 1, 9: 2, 16: 3}
"""The degree of a set of K = (degree + 1)^2 coefficients per colour channel."""


def sh_bases(degree: int, dirs: Float[Tensor, "G 3"]) -> Float[Tensor, "G K"]:
    """Real SH basis functions up to degree 3 at unit directions, in the order and signs of 3DGS and gsplat."""
    x, y, z = dirs.unbind(-1)
    bases = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        c1 = 0.4886025119029199
        bases += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        bases += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.31539156525252005 * (2 * zz - xx - yy),
            -1.0925484305920792 * x * z,
            0.5462742152960396 * (xx - yy),
        ]
    if degree >= 3:
        bases += [
            -0.5900435899266435 * y * (3 * xx - yy),
            2.890611442640554 * x * y * z,
            -0.4570457994644658 * y * (4 * zz - xx - yy),
            0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
            -0.4570457994644658 * x * (4 * zz - xx - yy),
            1.445305721320277 * z * (xx - yy),
            -0.5900435899266435 * x * (xx - 3 * yy),
        ]
    return torch.stack(bases, dim=-1)
