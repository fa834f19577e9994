"""Moving a scene into another frame: the quaternion of a rotation, the Hamilton product, and a transformed scene
that renders from transformed cameras exactly as the original renders from the original cameras."""

from __future__ import annotations

import math

import pytest
import torch

from sync_splat.apps.restyle import render_rgb
from sync_splat.errors import InputError
from sync_splat.functional.rotation import quat_to_rotmat
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.frames import quat_multiply, rotmat_to_quat, transform_scene


def random_rotations(count: int, seed: int = 0) -> torch.Tensor:
    quats = torch.randn(count, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return quat_to_rotmat(quats)


def test_rotmat_to_quat_inverts_quat_to_rotmat() -> None:
    special = [
        torch.eye(3),
        torch.diag(torch.tensor([1.0, -1, -1])),
        torch.diag(torch.tensor([-1.0, 1, -1])),
        torch.diag(torch.tensor([-1.0, -1, 1])),
    ]  # fmt: skip  (half turns: the trace is not positive)
    for rotation in [*random_rotations(50), *(r.double() for r in special)]:
        quat = rotmat_to_quat(rotation)
        assert quat[0] >= 0 and abs(float(quat.norm()) - 1) < 1e-12
        torch.testing.assert_close(quat_to_rotmat(quat[None])[0], rotation, atol=1e-10, rtol=0)


def test_quat_multiply_composes_rotations() -> None:
    a, b = random_rotations(2, seed=1)
    product = quat_multiply(rotmat_to_quat(a), rotmat_to_quat(b))
    torch.testing.assert_close(quat_to_rotmat(product[None])[0], a @ b, atol=1e-10, rtol=0)


def test_a_transformed_scene_renders_as_the_original_from_transformed_cameras() -> None:
    scene = make_demo_scene()
    (rotation,) = random_rotations(1, seed=2)
    transform = torch.cat([rotation, torch.tensor([[0.3], [-1.2], [2.0]], dtype=torch.float64)], dim=1)
    scale = 0.37
    moved = transform_scene(scene, transform, scale)
    centre, radius = scene.bounding_sphere()
    cameras = Cameras.orbit_rig(centre, radius, num_azimuths=3, elevations_deg=(20.0,), top_views=1, size=(48, 48))
    # The cameras move with the frame: rotate and translate their poses, scale their positions.
    similarity = torch.eye(4, dtype=torch.float64)
    similarity[:3] = transform
    c2w = similarity.float() @ cameras.c2w
    c2w[:, :3, 3] *= scale
    moved_cameras = Cameras(c2w, cameras.Ks, cameras.width, cameras.height)
    torch.testing.assert_close(render_rgb(moved, moved_cameras), render_rgb(scene, cameras), atol=2e-3, rtol=0)
    assert moved.source == scene.source and torch.equal(moved.opacity_logits, scene.opacity_logits)
    torch.testing.assert_close(moved.log_scales, scene.log_scales + math.log(scale))


@pytest.mark.parametrize(
    ("transform", "scale", "message"),
    [
        (torch.eye(3), 1.0, "3 x 4"),
        (torch.cat([2 * torch.eye(3), torch.zeros(3, 1)], dim=1), 1.0, "rotation"),
        (torch.cat([torch.diag(torch.tensor([1.0, 1, -1])), torch.zeros(3, 1)], dim=1), 1.0, "rotation"),
        (torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1), 0.0, "positive"),
    ],
    ids=["shape", "not-orthonormal", "reflection", "zero-scale"],
)
def test_bad_transforms_are_refused(transform: torch.Tensor, scale: float, message: str) -> None:
    with pytest.raises(InputError, match=message):
        transform_scene(make_demo_scene(), transform, scale)
