"""Equirectangular geometry against docs/conventions.md: longitude/latitude, texel centres, sampling that wraps at the
seam and continues across the poles, unmirrored perspective views and their inverse, and cube-map faces."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sync_splat.functional.equirect import (
    CUBE_FACES,
    direction_to_lonlat,
    equirect_directions,
    equirect_lonlat,
    equirect_to_cube_faces,
    image_taps,
    lonlat_to_direction,
    lonlat_to_texel,
    perspective_rays,
    project_to_view,
    sample_equirect,
    sample_views,
    view_axes,
)

PI = math.pi


def linear_field(directions: torch.Tensor) -> torch.Tensor:
    """A smooth function on the sphere, `[3, ...]`: three different linear functions of the direction."""
    a = torch.tensor([[0.3, -0.5, 0.2], [0.1, 0.4, -0.6], [-0.7, 0.2, 0.3]], dtype=directions.dtype)
    return torch.einsum("ck,...k->c...", a, directions)


@pytest.mark.parametrize(
    ("direction", "lon", "lat"),
    [
        ((0.0, 0.0, 1.0), 0.0, 0.0),  # longitude 0 looks along +z
        ((1.0, 0.0, 0.0), PI / 2, 0.0),
        ((-1.0, 0.0, 0.0), -PI / 2, 0.0),
        ((0.0, 0.0, -1.0), -PI, 0.0),  # the seam: +pi is reported as -pi, inside [-pi, pi)
        ((0.0, 2.0, 0.0), 0.0, PI / 2),  # y up; length does not matter
        ((0.0, -1.0, 1.0), 0.0, -PI / 4),
    ],
)
def test_lonlat_follows_the_conventions(direction, lon, lat) -> None:
    got_lon, got_lat = direction_to_lonlat(torch.tensor(direction, dtype=torch.float64))
    assert float(got_lon) == pytest.approx(lon, abs=1e-12)
    assert float(got_lat) == pytest.approx(lat, abs=1e-12)


def test_direction_lonlat_round_trip() -> None:
    d = F.normalize(torch.randn(1000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=-1)
    lon, lat = direction_to_lonlat(d)
    assert bool(((lon >= -PI) & (lon < PI)).all())
    torch.testing.assert_close(lonlat_to_direction(lon, lat), d)


def test_texel_centres_and_texel_coordinates() -> None:
    height, width = 4, 8
    lon, lat = equirect_lonlat(height, dtype=torch.float64)
    assert lon.shape == (height, width)
    j = torch.arange(width, dtype=torch.float64)
    i = torch.arange(height, dtype=torch.float64)
    torch.testing.assert_close(lon[0], -PI + 2 * PI * (j + 0.5) / width)  # longitude grows to the right
    torch.testing.assert_close(lat[:, 0], PI / 2 - PI * (i + 0.5) / height)  # row 0 is north
    col, row = lonlat_to_texel(lon, lat, height, width)
    torch.testing.assert_close(col, j.expand(height, width))
    torch.testing.assert_close(row, i[:, None].expand(height, width))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_sampling_at_texel_centres_returns_the_texels(mode) -> None:
    panorama = torch.randn(2, 6, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sample_equirect(panorama, equirect_directions(6, dtype=torch.float64), mode), panorama)


def test_bilinear_sampling_wraps_at_the_seam() -> None:
    panorama = torch.randn(1, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, lat = equirect_lonlat(4, dtype=torch.float64)
    row_lat = lat[1, 0]
    seam = sample_equirect(panorama, lonlat_to_direction(torch.tensor(-PI, dtype=torch.float64), row_lat))
    torch.testing.assert_close(seam, (panorama[:, 1, 0] + panorama[:, 1, -1]) / 2)
    just_left = sample_equirect(panorama, lonlat_to_direction(torch.tensor(PI - 1e-9, dtype=torch.float64), row_lat))
    torch.testing.assert_close(just_left, seam, atol=1e-7, rtol=0)


def test_bilinear_sampling_continues_across_the_pole() -> None:
    """At the north pole the four blended texels are row 0 at the pole's longitude and at the opposite one."""
    panorama = torch.randn(1, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    north = sample_equirect(panorama, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    # lon = 0 lies between columns 3 and 4; the opposite meridian between columns 7 and 0.
    torch.testing.assert_close(north, panorama[:, 0, [3, 4, 7, 0]].mean(dim=1))


def test_bilinear_sampling_is_accurate_everywhere_including_the_poles() -> None:
    height = 32
    panorama = linear_field(equirect_directions(height, dtype=torch.float64))
    generator = torch.Generator().manual_seed(4)
    d = F.normalize(torch.randn(4000, 3, dtype=torch.float64, generator=generator), dim=-1)
    polar = F.normalize(d * torch.tensor([0.05, 1.0, 0.05], dtype=torch.float64), dim=-1)
    for directions in (d, polar):
        error = (sample_equirect(panorama, directions) - linear_field(directions)).abs().max()
        assert float(error) < 5e-3


def test_view_axes_are_orthonormal_and_unmirrored() -> None:
    yaw = torch.tensor([0.0, 0.7, -2.0, PI], dtype=torch.float64)
    pitch = torch.tensor([0.0, 0.4, -1.2, PI / 2], dtype=torch.float64)
    axes = view_axes(yaw, pitch)
    torch.testing.assert_close(axes.mT @ axes, torch.eye(3, dtype=torch.float64).expand(4, 3, 3))
    torch.testing.assert_close(torch.linalg.det(axes), torch.full((4,), -1.0, dtype=torch.float64))
    torch.testing.assert_close(axes[0], torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)))
    lon, lat = direction_to_lonlat(axes[:3, :, 2])  # the optical axis looks at (yaw, pitch)
    torch.testing.assert_close(lon, yaw[:3])
    torch.testing.assert_close(lat, pitch[:3])

    # A view shows the panorama unmirrored: right in the image is larger longitude, up is larger latitude (views
    # that contain neither a pole nor the seam).
    rays = perspective_rays(axes[:2], 60.0, 8, 8)
    lon, lat = direction_to_lonlat(rays)
    assert bool((torch.diff(lon, dim=-1) > 0).all())
    assert bool((torch.diff(lat, dim=-2) < 0).all())


def test_project_to_view_inverts_perspective_rays() -> None:
    axes = view_axes(torch.tensor([0.5, -2.9], dtype=torch.float64), torch.tensor([0.3, -0.8], dtype=torch.float64))
    height, width = 6, 10
    rays = perspective_rays(axes, 72.0, height, width)
    j, i = torch.meshgrid(torch.arange(width) + 0.5, torch.arange(height) + 0.5, indexing="xy")
    for view in range(2):
        projection = project_to_view(rays[view], axes[view], 72.0, height, width)
        assert bool(projection.visible.all())
        torch.testing.assert_close(projection.pixels, torch.stack((j, i), dim=-1).double())
        behind = project_to_view(-rays[view], axes[view], 72.0, height, width)
        assert not bool(behind.visible.any())
        assert bool(torch.isfinite(behind.pixels).all())


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_image_taps_match_grid_sample(mode) -> None:
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(1, 2, 5, 7, dtype=torch.float64, generator=generator)
    pixels = torch.rand(1, 9, 11, 2, dtype=torch.float64, generator=generator) * torch.tensor([9.0, 7.0]) - 1.0
    index, weight = image_taps(pixels[0], 5, 7, mode)
    blended = (image[0].reshape(2, -1)[:, index] * weight).sum(dim=1)
    torch.testing.assert_close(blended, sample_views(image, pixels, mode)[0])


def test_cube_faces_sample_the_panorama_in_their_directions() -> None:
    panorama = linear_field(equirect_directions(32, dtype=torch.float64))
    faces = equirect_to_cube_faces(panorama, 8)
    assert faces.shape == (6, 3, 8, 8)
    yaw = torch.tensor([math.radians(face[1]) for face in CUBE_FACES], dtype=torch.float64)
    pitch = torch.tensor([math.radians(face[2]) for face in CUBE_FACES], dtype=torch.float64)
    rays = perspective_rays(view_axes(yaw, pitch), 90.0, 8, 8)
    torch.testing.assert_close(faces, linear_field(rays).transpose(0, 1), atol=5e-3, rtol=0)
    # Faces meet: the front face's right edge continues into the right face's left edge.
    front, right = faces[0], faces[1]
    edge_step = (front[..., -1] - right[..., 0]).abs().mean()
    inner_step = (front[..., -1] - front[..., -2]).abs().mean()
    assert float(edge_step) < 1.5 * float(inner_step)


def test_sampling_rejects_odd_widths_and_unknown_modes() -> None:
    with pytest.raises(ValueError, match="even width"):
        sample_equirect(torch.zeros(1, 3, 5), torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="mode"):
        sample_equirect(torch.zeros(1, 3, 6), torch.tensor([0.0, 0.0, 1.0]), mode="bicubic")


def test_grid_sample_convention_is_pixel_centres() -> None:
    """`sample_views` reads pixel (i, j) exactly at (j + 0.5, i + 0.5), as docs/conventions.md places pixel centres."""
    image = torch.arange(12.0).reshape(1, 1, 3, 4)
    j, i = torch.meshgrid(torch.arange(4) + 0.5, torch.arange(3) + 0.5, indexing="xy")
    pixels = torch.stack((j, i), dim=-1)[None]
    torch.testing.assert_close(sample_views(image, pixels), image)
