"""Camera rigs: orbit rigs look at the centre and see the whole sphere, nerfstudio cameras convert to OpenCV axes,
subsets spread evenly, and the resolution policy keeps the aspect on multiples of 64."""

import math

import pytest
import torch

from sync_splat.errors import InputError
from sync_splat.scene.cameras import Cameras, evenly_spread_indices


def project(cameras: Cameras, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points `[P, 3]` to pixel coordinates `[N, P, 2]` and camera depths `[N, P]` (OpenCV pinhole)."""
    homogeneous = torch.cat([points, torch.ones(len(points), 1)], dim=1).to(cameras.c2w.dtype)
    camera = torch.einsum("nij,pj->npi", cameras.viewmats, homogeneous)[..., :3]
    pixels = torch.einsum("nij,npj->npi", cameras.Ks, camera)
    return pixels[..., :2] / pixels[..., 2:], camera[..., 2]


def fibonacci_sphere(count: int) -> torch.Tensor:
    """Nearly uniform unit directions `[count, 3]`."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    y = 1 - 2 * i / count
    theta = math.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - y**2)
    return torch.stack([r * torch.cos(theta), y, r * torch.sin(theta)], dim=-1)


ORBITS = [
    # centre, radius, num_azimuths, elevations, top_views, fov, size (W, H)
    ((0.0, 0.0, 0.0), 1.0, 8, (0.0, 30.0), 1, 60.0, (512, 512)),
    ((1.0, -2.0, 0.5), 0.3, 6, (-15.0, 20.0, 45.0), 2, 50.0, (640, 384)),
    ((0.0, 1.0, 0.0), 2.0, 4, (10.0,), 0, 80.0, (256, 448)),
]


@pytest.mark.parametrize("centre, radius, num_azimuths, elevations, top_views, fov, size", ORBITS)
def test_orbit_rig_looks_at_the_centre(centre, radius, num_azimuths, elevations, top_views, fov, size) -> None:
    cameras = Cameras.orbit_rig(centre, radius, num_azimuths, elevations, top_views, fov, size)
    assert len(cameras) == num_azimuths * len(elevations) + top_views
    assert (cameras.width, cameras.height) == size
    pixels, depths = project(cameras, torch.tensor([centre]))
    torch.testing.assert_close(pixels[:, 0], torch.tensor([size[0] / 2, size[1] / 2]).expand(len(cameras), 2))
    # The distance fits the sphere in the field of view: d = r / sin(fov / 2).
    torch.testing.assert_close(depths[:, 0], torch.full((len(cameras),), radius / math.sin(math.radians(fov) / 2)))


@pytest.mark.parametrize("centre, radius, num_azimuths, elevations, top_views, fov, size", ORBITS)
def test_orbit_rig_sees_the_whole_sphere_in_every_view(
    centre, radius, num_azimuths, elevations, top_views, fov, size
) -> None:
    cameras = Cameras.orbit_rig(centre, radius, num_azimuths, elevations, top_views, fov, size)
    surface = torch.tensor(centre, dtype=torch.float64) + radius * fibonacci_sphere(2000)
    pixels, depths = project(cameras, surface.float())
    assert (depths > 0).all()
    width, height = size
    assert (pixels[..., 0] >= 0).all() and (pixels[..., 0] <= width).all()
    assert (pixels[..., 1] >= 0).all() and (pixels[..., 1] <= height).all()
    # ... and just fits: the silhouette touches the borders of the shorter side.
    short_axis = 0 if width <= height else 1
    extent = pixels[..., short_axis].amax(dim=1) - pixels[..., short_axis].amin(dim=1)
    assert (extent > 0.97 * min(size)).all()


def test_orbit_rig_covers_the_sphere_from_all_sides() -> None:
    # Default rig: every surface point down to 45 degrees below the equator faces at least one camera head-on
    # enough to be seen (in front of its tangent plane), so the rig leaves no side of the object unseen.
    cameras = Cameras.orbit_rig((0.0, 0.0, 0.0), 1.0)
    normals = fibonacci_sphere(4000)
    normals = normals[normals[:, 1] >= -math.sin(math.radians(45))]
    eyes = cameras.c2w[:, :3, 3].double()
    visible = (eyes @ normals.T) > 1.0  # the camera is outside the tangent plane at the point
    assert visible.any(dim=0).all()
    # Azimuths are evenly spread: consecutive ring cameras are 45 degrees apart.
    ring = eyes[:8]
    angles = torch.atan2(ring[:, 0], ring[:, 2])
    steps = torch.remainder(angles.roll(-1) - angles, 2 * math.pi)
    torch.testing.assert_close(steps, torch.full((8,), math.pi / 4, dtype=torch.float64))


def test_orbit_rig_keeps_world_up_up_and_views_from_above() -> None:
    cameras = Cameras.orbit_rig((0.0, 0.0, 0.0), 1.0, num_azimuths=8, elevations_deg=(0.0, 30.0), top_views=1)
    up = torch.tensor([[0.0, 0.9, 0.0]])  # a point above the centre appears above it in the image
    pixels, _ = project(cameras.subset(range(16)), up)
    assert (pixels[:, 0, 1] < 256).all()
    torch.testing.assert_close(pixels[:, 0, 0], torch.full((16,), 256.0))
    top = cameras.c2w[16]
    torch.testing.assert_close(top[:3, 2], torch.tensor([0.0, -1.0, 0.0]))  # looking straight down
    # Rotations are proper (det +1) and orthonormal for every view.
    rotations = cameras.c2w[:, :3, :3]
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), torch.eye(3).expand(17, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(17))


def test_nerfstudio_camera_looking_down_minus_z_looks_along_opencv_plus_z() -> None:
    # OpenGL camera at (1, 2, 3) with identity rotation: it looks along world -z, its y axis is world +y.
    camera_to_worlds = torch.tensor([[[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 1.0, 3.0]]])
    cameras = Cameras.from_nerfstudio(camera_to_worlds, fx=100.0, fy=100.0, cx=32.0, cy=24.0, width=64, height=48)
    torch.testing.assert_close(cameras.c2w[0, :3, 2], torch.tensor([0.0, 0.0, -1.0]))  # OpenCV +z = world -z
    torch.testing.assert_close(cameras.c2w[0, :3, 3], torch.tensor([1.0, 2.0, 3.0]))
    points = torch.tensor([[1.0, 2.0, 1.0], [1.0, 2.5, 1.0], [1.5, 2.0, 1.0]])  # ahead; above; to the right
    pixels, depths = project(cameras, points)
    torch.testing.assert_close(depths[0], torch.full((3,), 2.0))
    torch.testing.assert_close(pixels[0, 0], torch.tensor([32.0, 24.0]))
    assert pixels[0, 1, 1] < 24.0  # world up is image up (OpenCV rows grow downwards)
    assert pixels[0, 2, 0] > 32.0  # the camera's right is image right


def test_from_nerfstudio_accepts_per_view_intrinsics_and_keeps_an_even_subset() -> None:
    n = 10
    camera_to_worlds = torch.eye(4)[:3].expand(n, 3, 4).clone()
    camera_to_worlds[:, 0, 3] = torch.arange(n, dtype=torch.float32)  # view i sits at x = i
    fx = torch.arange(n, dtype=torch.float32)[:, None] + 100.0  # nerfstudio stores [N, 1]
    width = torch.full((n, 1), 64)
    cameras = Cameras.from_nerfstudio(camera_to_worlds, fx, fx, 32.0, 24.0, width, 48, max_views=4)
    kept = evenly_spread_indices(n, 4)
    assert len(cameras) == 4 and (cameras.width, cameras.height) == (64, 48)
    torch.testing.assert_close(cameras.c2w[:, 0, 3], torch.tensor(kept, dtype=torch.float32))
    torch.testing.assert_close(cameras.Ks[:, 0, 0], torch.tensor(kept, dtype=torch.float32) + 100.0)


def test_from_nerfstudio_refuses_mixed_image_sizes() -> None:
    camera_to_worlds = torch.eye(4)[:3].expand(2, 3, 4)
    with pytest.raises(InputError, match="width"):
        Cameras.from_nerfstudio(camera_to_worlds, 1.0, 1.0, 1.0, 1.0, torch.tensor([64, 32]), 48)


@pytest.mark.parametrize(
    "count, max_count, expected",
    [
        (10, 4, [1, 3, 6, 8]),
        (8, 8, list(range(8))),
        (5, 20, list(range(5))),
        (100, 5, [10, 30, 50, 70, 90]),
        (7, 1, [3]),
    ],
)
def test_evenly_spread_indices(count: int, max_count: int, expected: list[int]) -> None:
    assert evenly_spread_indices(count, max_count) == expected


def test_subset_keeps_the_chosen_cameras_in_order() -> None:
    cameras = Cameras.orbit_rig((0.0, 0.0, 0.0), 1.0, num_azimuths=6, elevations_deg=(0.0,), top_views=0)
    sub = cameras.subset([4, 1])
    torch.testing.assert_close(sub.c2w, cameras.c2w[[4, 1]])
    torch.testing.assert_close(sub.viewmats, torch.linalg.inv(cameras.c2w[[4, 1]]))
    with pytest.raises(InputError, match="indices"):
        cameras.subset([6])


@pytest.mark.parametrize(
    "size, native, expected",
    [
        ((1920, 1080), 512, (512, 320)),  # 288 = 4.5 x 64 rounds up
        ((1080, 1920), 512, (320, 512)),
        ((640, 480), 512, (512, 384)),
        ((512, 512), 512, (512, 512)),
        ((100, 30), 512, (512, 128)),  # 153.6 -> 128
        ((1000, 10), 512, (512, 64)),  # at least one multiple
        ((800, 600), 768, (768, 576)),
    ],
)
def test_resized_for_keeps_aspect_on_multiples_of_64(size, native, expected) -> None:
    width, height = size
    K = torch.tensor([[[500.0, 0.0, width / 2 + 3], [0.0, 480.0, height / 2 - 2], [0.0, 0.0, 1.0]]])
    cameras = Cameras(torch.eye(4)[None], K, width, height).resized_for(native_size=native, multiple=64)
    assert (cameras.width, cameras.height) == expected
    assert cameras.width % 64 == 0 and cameras.height % 64 == 0 and max(expected) == native
    sx, sy = expected[0] / width, expected[1] / height
    expected_K = torch.tensor(
        [[[500.0 * sx, 0.0, (width / 2 + 3) * sx], [0.0, 480.0 * sy, (height / 2 - 2) * sy], [0, 0, 1]]]
    )
    torch.testing.assert_close(cameras.Ks, expected_K)
    torch.testing.assert_close(cameras.c2w, torch.eye(4)[None])


def test_resized_keeps_what_each_pixel_sees() -> None:
    # A world point lands at the same fractional image position before and after resizing.
    cameras = Cameras.orbit_rig((0.0, 0.0, 0.0), 1.0, num_azimuths=3, elevations_deg=(20.0,), size=(300, 200))
    smaller = cameras.resized(150, 120)
    points = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]])
    before, _ = project(cameras, points)
    after, _ = project(smaller, points)
    torch.testing.assert_close(after / torch.tensor([150.0, 120.0]), before / torch.tensor([300.0, 200.0]))


def test_cameras_check_shapes() -> None:
    with pytest.raises(InputError, match="c2w"):
        Cameras(torch.eye(4)[None], torch.eye(3).expand(2, 3, 3), 64, 64)


def test_project_puts_the_look_at_point_at_the_principal_point_and_refuses_what_is_behind() -> None:
    cameras = Cameras.orbit_rig(
        (1.0, 2.0, 3.0), 2.0, num_azimuths=4, elevations_deg=(20.0,), top_views=0, size=(40, 30)
    )
    for view in range(len(cameras)):
        centre, camera = torch.tensor([[1.0, 2.0, 3.0]]), cameras.c2w[view, :3, 3]
        behind = camera + (camera - centre[0])  # as far behind the camera as the centre is in front
        x, y, depth, inside = cameras.project(torch.cat([centre, behind[None]]), view)
        assert (float(x[0]), float(y[0])) == pytest.approx(
            (float(cameras.Ks[view, 0, 2]), float(cameras.Ks[view, 1, 2]))
        )
        assert float(depth[0]) == pytest.approx(float((camera - centre[0]).norm()), rel=1e-5)
        assert inside.tolist() == [True, False] and float(depth[1]) < 0
    far_right = cameras.project(torch.tensor([[1.0, 2.0, 3.0]]) + 100 * cameras.c2w[0, :3, 0], 0)[3]
    assert not bool(far_right.any())  # in front, but outside the frame
