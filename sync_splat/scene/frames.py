"""Moving a Gaussian scene into another world frame by a similarity transform `x' = s (R x + t)`.

Trainers keep scenes in different frames: nerfstudio's dataparsers orient, centre and scale a capture (the
transform they apply is saved as a run's `dataparser_transforms.json`: `transform` is `[R | t]`, 3 x 4, and `scale`
is `s`), while COLMAP-based trainers keep COLMAP's frame. A Gaussian moves with the frame: its mean as a point,
its log scales by `log s`, its rotation by `R` (`quats' = q(R) * quats`, wxyz).

Spherical harmonics of degree > 0 are expressed in the world frame too; rotating them needs Wigner matrices, so
`transform_scene` keeps the DC term (the colour seen from everywhere) and zeroes the rest, which a restyle replaces
anyway.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError
from sync_splat.scene.gaussians import GaussianScene


def rotmat_to_quat(rotation: Float[Tensor, "3 3"]) -> Float[Tensor, "4"]:
    """The unit quaternion (w, x, y, z), w >= 0, of a rotation matrix (the largest-component branch, stable)."""
    r = rotation.to(torch.float64)
    trace = float(r[0, 0] + r[1, 1] + r[2, 2])
    if trace > 0:
        s = 2 * math.sqrt(1 + trace)
        q = [s / 4, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(torch.argmax(torch.diagonal(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * math.sqrt(max(1e-300, 1 + float(r[i, i] - r[j, j] - r[k, k])))
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = float(r[k, j] - r[j, k]) / s
        q[1 + i] = s / 4
        q[1 + j] = float(r[j, i] + r[i, j]) / s
        q[1 + k] = float(r[k, i] + r[i, k]) / s
    quat = torch.tensor([float(v) for v in q], dtype=torch.float64)
    quat = quat / quat.norm()
    return -quat if quat[0] < 0 else quat


def quat_multiply(a: Float[Tensor, "*B 4"], b: Float[Tensor, "*B 4"]) -> Float[Tensor, "*B 4"]:
    """The Hamilton product `a * b` of wxyz quaternions (the rotation `b`, then `a`)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def transform_scene(scene: GaussianScene, transform: Float[Tensor, "3 4"], scale: float = 1.0) -> GaussianScene:
    """The scene in the frame `x' = scale * (R x + t)`, `transform = [R | t]` (a rotation and a translation).

    Opacities and the DC colour are kept; higher SH coefficients become zero (module docstring). `source` is kept,
    so that `save` still refuses to overwrite the file the scene came from.
    """
    transform = torch.as_tensor(transform, dtype=torch.float64).cpu()
    if transform.shape == (4, 4):
        transform = transform[:3]
    if transform.shape != (3, 4) or not torch.isfinite(transform).all():
        raise InputError(f"a frame transform is a finite 3 x 4 matrix [R | t], got shape {tuple(transform.shape)}")
    rotation, translation = transform[:, :3], transform[:, 3]
    if not torch.allclose(rotation.T @ rotation, torch.eye(3, dtype=torch.float64), atol=1e-5) or not (
        float(torch.linalg.det(rotation)) > 0
    ):
        raise InputError("a frame transform's 3 x 3 part must be a rotation (orthonormal, determinant +1)")
    if not scale > 0 or not math.isfinite(scale):
        raise InputError(f"a frame transform's scale must be positive and finite, got {scale}")
    dtype, device = scene.means.dtype, scene.means.device
    means = scale * (scene.means.to(torch.float64) @ rotation.T.to(device) + translation.to(device))
    quat = rotmat_to_quat(rotation).to(device)
    quats = quat_multiply(quat.expand_as(scene.quats_wxyz), scene.quats_wxyz.to(torch.float64))
    sh = torch.zeros_like(scene.sh)
    sh[:, 0] = scene.sh[:, 0]
    return GaussianScene(
        means=means.to(dtype),
        quats_wxyz=quats.to(scene.quats_wxyz.dtype),
        log_scales=scene.log_scales + math.log(scale),
        opacity_logits=scene.opacity_logits,
        sh=sh,
        source=scene.source,
    )
