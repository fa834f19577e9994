"""The mesh rasteriser on analytic cases: which pixels a triangle covers, and the UV, depth, normal and position it
interpolates there (perspective-correct), plus the UV-layout rasteriser and, with CUDA, parity with nvdiffrast."""

from __future__ import annotations

import math

import pytest
import torch

from sync_splat.errors import InputError
from sync_splat.render.mesh import rasterize_mesh, rasterize_uv
from sync_splat.scene.cameras import Cameras


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These tests run many small tensor operations: on 2 shared cores one torch thread is several times faster
    (no spinning OpenMP workers). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def camera_looking_down_minus_z(distance: float, focal: float, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An OpenCV camera at (0, 0, distance) looking along -z with world +y up in the image: viewmat and K."""
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])  # columns: right, down, forward
    c2w[2, 3] = distance
    K = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
    return torch.linalg.inv(c2w)[None], K[None]


def quad(half: float, z: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A square in the plane `z`, facing +z, with UV (0, 0) at its bottom-left corner (-half, -half)."""
    vertices = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    return vertices, faces, uvs[faces]


def pixel_rays(K: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-space ray directions (x / z, y / z) through every pixel centre, `[H, W]` each."""
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    x = (centres[None, :] - K[0, 0, 2]) / K[0, 0, 0]
    y = (centres[:, None] - K[0, 1, 2]) / K[0, 1, 1]
    return x.expand(size, size), y.expand(size, size)


def test_quad_facing_the_camera_covers_the_expected_pixels_with_the_expected_uv_depth_and_normal() -> None:
    size, distance, focal, half = 16, 2.0, 12.0, 0.83
    viewmat, K = camera_looking_down_minus_z(distance, focal, size)
    vertices, faces, face_uvs = quad(half)
    raster = rasterize_mesh(vertices, faces, face_uvs, viewmat, K, size, size, backend="torch")

    # The ray through pixel (i, j) meets z = 0 at X = d x, Y = -d y (image y points down, world y up).
    x, y = pixel_rays(K, size)
    X, Y = distance * x, -distance * y
    inside = (X.abs() < half) & (Y.abs() < half)
    assert torch.equal(raster.mask[0], inside)
    assert inside.sum() > 50
    hit = raster.mask[0]
    torch.testing.assert_close(raster.uv[0, ..., 0][hit], ((X + half) / (2 * half))[hit].float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(raster.uv[0, ..., 1][hit], ((Y + half) / (2 * half))[hit].float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(raster.depth[0][hit], torch.full_like(raster.depth[0][hit], distance))
    torch.testing.assert_close(raster.normal[0][hit], torch.tensor([0.0, 0.0, 1.0]).expand(int(hit.sum()), 3))
    # Background pixels hold zeros and face id -1.
    assert (raster.face_id[0][~hit] == -1).all() and (raster.depth[0][~hit] == 0).all()
    # v grows upwards: the top image row holds the largest v.
    rows_with_hits = hit.any(1).nonzero()[:, 0]
    assert raster.uv[0, rows_with_hits[0], :, 1][hit[rows_with_hits[0]]].min() > 0.9


def test_a_quad_seen_from_behind_is_drawn_with_its_normal_towards_the_camera() -> None:
    size = 12
    viewmat, K = camera_looking_down_minus_z(2.0, 10.0, size)
    vertices, faces, face_uvs = quad(0.5)
    flipped = faces[:, [0, 2, 1]]  # reversed winding: the camera sees the back
    raster = rasterize_mesh(vertices, flipped, face_uvs[:, [0, 2, 1]], viewmat, K, size, size, backend="torch")
    assert raster.mask.any()
    assert (raster.normal[raster.mask][:, 2] > 0.99).all()


def test_the_nearest_surface_wins_whatever_the_face_order() -> None:
    size = 12
    viewmat, K = camera_looking_down_minus_z(3.0, 10.0, size)
    near_v, near_f, near_uv = quad(0.4, z=0.5)
    far_v, far_f, far_uv = quad(2.0, z=0.0)
    for near_first in (True, False):
        parts = [(near_v, near_f, near_uv), (far_v, far_f, far_uv)]
        if not near_first:
            parts.reverse()
        vertices = torch.cat([parts[0][0], parts[1][0]])
        faces = torch.cat([parts[0][1], parts[1][1] + 4])
        face_uvs = torch.cat([parts[0][2], parts[1][2]])
        raster = rasterize_mesh(vertices, faces, face_uvs, viewmat, K, size, size, backend="torch")
        near_faces = {0, 1} if near_first else {2, 3}
        centre = raster.face_id[0, size // 2, size // 2].item()
        assert centre in near_faces
        assert raster.depth[0, size // 2, size // 2].item() == pytest.approx(2.5)
        assert raster.depth[0, 0, 0].item() == pytest.approx(3.0)  # the corner sees only the far quad


def cube_with_cell_uvs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int, float]]]:
    """The cube [-1, 1]^3, 12 triangles; face k (axis, sign) gets UV cell k of a 3 x 2 grid, mapped affinely from
    its two in-plane coordinates. Returns vertices, faces, face_uvs and the (axis, in-plane axes, sign) per side."""
    vertices, faces, face_uvs, sides = [], [], [], []
    for side, (axis, sign) in enumerate([(a, s) for a in range(3) for s in (1.0, -1.0)]):
        a, b = [k for k in range(3) if k != axis]
        corners = []
        for p, q in [(-1, -1), (1, -1), (1, 1), (-1, 1)]:
            point = [0.0, 0.0, 0.0]
            point[axis], point[a], point[b] = sign, p, q
            corners.append(point)
        base = len(vertices)
        vertices += corners
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
        cell_u, cell_v = side % 3, side // 3
        uv = [[(cell_u + (p + 1) / 2) / 3, (cell_v + (q + 1) / 2) / 2] for p, q in [(-1, -1), (1, -1), (1, 1), (-1, 1)]]
        face_uvs += [[uv[0], uv[1], uv[2]], [uv[0], uv[2], uv[3]]]
        sides.append((axis, a, b, sign))
    return torch.tensor(vertices), torch.tensor(faces), torch.tensor(face_uvs), sides


def test_cube_from_an_oblique_camera_gives_surface_points_on_the_rays_and_the_uvs_of_their_side() -> None:
    vertices, faces, face_uvs, sides = cube_with_cell_uvs()
    size = 40
    cameras = Cameras.orbit_rig(
        (0.0, 0.0, 0.0),
        math.sqrt(3),
        num_azimuths=3,
        elevations_deg=(25.0,),
        top_views=0,
        fov_deg=60,
        size=(size, size),
    )
    raster = rasterize_mesh(vertices, faces, face_uvs, cameras.viewmats, cameras.Ks, size, size, backend="torch")
    for view in range(len(cameras)):
        hit = raster.mask[view]
        assert hit.float().mean() > 0.2
        position = raster.position[view][hit]
        # Every surface point lies on the cube's surface and on its pixel's ray at the returned depth.
        assert torch.allclose(position.abs().amax(-1), torch.ones(len(position)), atol=1e-4)
        rows, cols = hit.nonzero().unbind(1)
        K = cameras.Ks[view]
        ray_cam = torch.stack(
            [(cols + 0.5 - K[0, 2]) / K[0, 0], (rows + 0.5 - K[1, 2]) / K[1, 1], torch.ones(len(rows))], 1
        )
        c2w = cameras.c2w[view]
        expected = c2w[:3, 3] + raster.depth[view][hit][:, None] * (ray_cam @ c2w[:3, :3].T)
        torch.testing.assert_close(position, expected, atol=1e-4, rtol=1e-4)
        # The UV is the affine map of the point's in-plane coordinates into its side's cell (perspective-correct).
        side = raster.face_id[view][hit] // 2
        for k, (axis, a, b, sign) in enumerate(sides):
            on_side = side == k
            if not on_side.any():
                continue
            assert torch.allclose(position[on_side, axis], torch.tensor(sign), atol=1e-4)
            expected_u = (k % 3 + (position[on_side, a] + 1) / 2) / 3
            expected_v = (k // 3 + (position[on_side, b] + 1) / 2) / 2
            uv = raster.uv[view][hit][on_side]
            torch.testing.assert_close(uv[:, 0], expected_u, atol=1e-4, rtol=0)
            torch.testing.assert_close(uv[:, 1], expected_v, atol=1e-4, rtol=0)
            normal = torch.zeros(3)
            normal[axis] = sign
            torch.testing.assert_close(raster.normal[view][hit][on_side], normal.expand(int(on_side.sum()), 3))
        # From outside a convex cube only sides facing the camera are seen.
        centre = c2w[:3, 3]
        seen = side.unique().tolist()
        for k in seen:
            axis, _, _, sign = sides[k]
            assert centre[axis] * sign > 1


def test_uv_layout_raster_finds_the_face_and_barycentrics_of_each_texel_centre() -> None:
    face_uvs = torch.tensor([[[0.1, 0.1], [0.9, 0.1], [0.1, 0.9]], [[0.9, 0.2], [0.9, 0.9], [0.2, 0.9]]])
    height, width = 20, 30
    face_id, barycentrics = rasterize_uv(face_uvs, height, width)
    rows = torch.arange(height)[:, None].expand(height, width)
    cols = torch.arange(width)[None, :].expand(height, width)
    u, v = (cols + 0.5) / width, 1 - (rows + 0.5) / height
    first = (u > 0.1) & (v > 0.1) & (u + v < 1.0)
    second = (u < 0.9) & (v < 0.9) & (u + v > 1.1)
    # No texel centre lies on an edge here ((c + 0.5) / 30 and (r + 0.5) / 20 never hit them), so the sets are exact.
    assert torch.equal(face_id == 0, first)
    assert torch.equal(face_id == 1, second)
    assert (face_id[~(first | second)] == -1).all()
    hit = face_id >= 0
    uv = (barycentrics[..., None] * face_uvs[face_id.clamp_min(0)]).sum(-2)
    torch.testing.assert_close(uv[hit], torch.stack([u, v], -1)[hit].float(), atol=1e-5, rtol=0)


def test_nvdiffrast_backend_needs_cuda() -> None:
    vertices, faces, face_uvs = quad(0.5)
    viewmat, K = camera_looking_down_minus_z(2.0, 10.0, 8)
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the CPU-only error does not apply")
    with pytest.raises(InputError, match="nvdiffrast"):
        rasterize_mesh(vertices, faces, face_uvs, viewmat, K, 8, 8, backend="nvdiffrast")


@pytest.mark.gpu
def test_torch_rasteriser_matches_nvdiffrast() -> None:
    pytest.importorskip("nvdiffrast.torch")
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3)
    wobble = torch.tensor(sphere.vertices, dtype=torch.float32)
    wobble = wobble * (1 + 0.2 * torch.sin(3 * wobble[:, :1]))  # not convex: occlusion matters
    faces = torch.tensor(sphere.faces)
    face_uvs = torch.rand(len(faces), 3, 2, generator=torch.Generator().manual_seed(0))
    size = 64
    cameras = Cameras.orbit_rig(
        (0.0, 0.0, 0.0), 1.3, num_azimuths=4, elevations_deg=(20.0,), top_views=1, size=(size, size)
    )
    device = torch.device("cuda")
    args = (
        wobble.to(device),
        faces.to(device),
        face_uvs.to(device),
        cameras.viewmats.to(device),
        cameras.Ks.to(device),
    )
    reference = rasterize_mesh(*args, size, size, backend="nvdiffrast")
    ours = rasterize_mesh(*args, size, size, backend="torch")
    same = reference.face_id == ours.face_id
    assert same.float().mean() > 0.99  # pixel centres on shared edges may go either way
    assert (reference.mask == ours.mask).float().mean() > 0.995
    hit = same & reference.mask
    torch.testing.assert_close(ours.barycentrics[hit], reference.barycentrics[hit], atol=1e-3, rtol=0)
    torch.testing.assert_close(ours.depth[hit], reference.depth[hit], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(ours.uv[hit], reference.uv[hit], atol=1e-3, rtol=0)
