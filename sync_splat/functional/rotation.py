"""Rotations of Gaussians: unit quaternions in wxyz order (docs/conventions.md) to rotation matrices."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def quat_to_rotmat(quats_wxyz: Float[Tensor, "G 4"]) -> Float[Tensor, "G 3 3"]:
    """The rotation matrices of quaternions `(w, x, y, z)`, normalised first (stored quaternions need not be)."""
    w, x, y, z = F.normalize(quats_wxyz, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).unflatten(-1, (3, 3))  # fmt: skip
