"""The panorama bridge against the Bridge protocol's promises and the paper's panorama setting: its views,
g inverting f on what the views see, full coverage with pole views, no seam at +-180 degrees after sampling,
unit-variance view-consistent initial noise, near-bright depth conditions, and atomic PNG export."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace

import imageio.v3 as iio
import pytest
import torch

from sync_splat.bridges.base import Bridge
from sync_splat.bridges.panorama import PanoramaBridge, PanoramaBridgeConfig, cube_face_paths, export_cube_faces
from sync_splat.codec import PixelCodec
from sync_splat.denoisers.prior import GaussianTexturePriorConfig
from sync_splat.errors import InputError
from sync_splat.functional.equirect import (
    direction_to_lonlat,
    equirect_directions,
    project_to_view,
    sample_equirect,
)
from sync_splat.sampler import SyncConfig, SyncSampler
from sync_splat.studies.fidelity import band_powers, lag_correlation, texel_shared_correlation

FULL_SPHERE = PanoramaBridgeConfig(elevations_deg=(0.0, 45.0, -45.0), pole_views=True)


def bridge(
    config: PanoramaBridgeConfig = FULL_SPHERE,
    channels: int = 3,
    height: int = 32,
    view_size: int | None = None,
    downsample: int = 1,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    depth: torch.Tensor | None = None,
    texel_oversample: int = 1,
) -> PanoramaBridge:
    """A bridge whose codec has `channels`, `downsample` and 64-pixel native views (and `decode`, when given); its
    texels matched to the views' pixels unless `texel_oversample` says otherwise, so that small panoramas still have
    views of a useful size."""
    config = replace(config, height=height, view_size=view_size, texel_oversample=texel_oversample, device="cpu")
    codec = PixelCodec(native_size=64 * downsample, latent_channels=channels, downsample=downsample)
    if decode is not None:
        codec = SimpleNamespace(latent_channels=channels, downsample=downsample, native_size=64 * downsample,
                                encode=codec.encode, decode=decode)  # fmt: skip
    return PanoramaBridge(codec, config, depth)


def smooth_panorama(height: int) -> torch.Tensor:
    """Three smooth functions on the sphere (no seam, no pole singularity), in about [-1, 1]."""
    d = equirect_directions(height)
    x, y, z = d.unbind(-1)
    return torch.stack((x * z + 0.3 * y, 0.5 * torch.sin(2 * x) + y**2 - 0.3, torch.cos(2 * z) * 0.8))


def psnr(estimate: torch.Tensor, target: torch.Tensor, peak: float = 2.0) -> float:
    return 10 * math.log10(peak**2 / float(((estimate - target) ** 2).mean()))


def measured_fov_deg(panorama: PanoramaBridge) -> float:
    """The views' horizontal field of view as their rays span it. The last column's centre lies half a pixel inside
    the frame, so `tan(fov / 2) = tan(that column's angle off the axis) * w / (w - 1)`."""
    camera = torch.einsum("nhwi,nik->nhwk", panorama.view_rays().double(), panorama.axes)  # rays in camera axes
    tangent = float((camera[..., -1, 0] / camera[..., -1, 2]).mean())
    width = panorama.instance_shape[-1]
    return math.degrees(2 * math.atan(tangent * width / (width - 1)))


def test_default_views_are_the_papers_ring() -> None:
    """One ring on the horizon, `views_per_ring` views at equal yaw steps from the front, each sharing a good part
    of its frame with the next (that is how the ring synchronises all round); view n/2, the ring attention's
    reference, faces the seam."""
    config = PanoramaBridgeConfig()
    panorama = bridge(config)
    assert isinstance(panorama, Bridge)
    n = config.views_per_ring
    assert panorama.num_views == n
    lon, lat = direction_to_lonlat(panorama.axes[:, :, 2])
    assert torch.allclose(lat, torch.zeros(n, dtype=lat.dtype))
    steps = (lon.roll(-1) - lon) % (2 * math.pi)
    torch.testing.assert_close(steps, torch.full_like(steps, 2 * math.pi / n))
    assert float(lon[0]) == pytest.approx(0.0, abs=1e-9) and float(lon[n // 2].abs()) == pytest.approx(math.pi)

    tan_half = math.tan(math.radians(measured_fov_deg(panorama)) / 2)
    rays = panorama.view_rays().double().reshape(n, -1, 3)
    for k in range(n):
        camera = rays[(k + 1) % n] @ panorama.axes[k]  # the next view's rays in view k's camera axes
        inside = (camera[:, 2] > 0) & (camera[:, :2].abs() < tan_half * camera[:, 2:]).all(dim=1)
        assert float(inside.float().mean()) > 0.25, k


def test_full_sphere_views_ring_by_ring_then_poles() -> None:
    orientations = FULL_SPHERE.view_orientations()
    assert len(orientations) == 26
    assert orientations[:8] == PanoramaBridgeConfig().view_orientations()
    assert [pitch for _, pitch in orientations[8:24]] == [45.0] * 8 + [-45.0] * 8
    assert orientations[24:] == ((0.0, 90.0), (0.0, -90.0))


@pytest.mark.parametrize("oversample", [1, 4])
@pytest.mark.parametrize(
    ("height", "view_size", "fov_deg", "native_size", "downsample"),
    [
        (None, None, 75.0, 64, 1),
        (None, None, 90.0, 512, 8),
        (256, None, 72.0, 64, 1),
        (None, 20, 72.0, 64, 1),
        (None, 23, 100.0, 64, 1),
        (40, 10, 72.0, 64, 1),
    ],
)
def test_resolution_has_texel_oversample_texels_per_view_pixel(
    height, view_size, fov_deg, native_size, downsample, oversample
) -> None:
    """A texel subtends 1 / texel_oversample of what a view pixel does on average (the field of view over the view's
    side), to the nearest whole size; a size that is given is kept, and with neither given the views take the codec's
    native size."""
    codec = PixelCodec(native_size=native_size, downsample=downsample)
    config = PanoramaBridgeConfig(
        height=height, view_size=view_size, fov_deg=fov_deg, texel_oversample=oversample, device="cpu"
    )
    panorama = PanoramaBridge(codec, config)
    _, rows, columns = panorama.canonical_shape
    side = panorama.instance_shape[-1]
    assert columns == 2 * rows and panorama.instance_shape[-2] == side
    fov = measured_fov_deg(panorama)
    assert fov == pytest.approx(fov_deg, abs=1e-3)
    if height is None and view_size is None:
        assert side == native_size // downsample
    if view_size is not None:
        assert side == view_size
    if height is not None:
        assert rows == height
    if height is None:  # texel degrees 180 / Ht ~ pixel degrees fov / side / oversample
        assert abs(rows - oversample * 180.0 / (fov / side)) <= 0.5 + 1e-6
    elif view_size is None:
        assert abs(side - fov / (oversample * 180.0 / rows)) <= 0.5 + 1e-6


@pytest.mark.parametrize("config", [PanoramaBridgeConfig(), FULL_SPHERE], ids=["ring", "full_sphere"])
def test_unproject_after_project_reproduces_the_covered_panorama(config) -> None:
    panorama = bridge(config, height=40)  # matched: 16-pixel views
    assert panorama.instance_shape == (3, 16, 16)
    z = smooth_panorama(40)
    covered = panorama.texel_coverage()
    recovered = panorama.unproject(panorama.project(z))
    assert psnr(recovered[:, covered], z[:, covered]) >= 35.0


def test_back_projection_keeps_a_views_finest_detail() -> None:
    """One view of exact prior samples, carried into the panorama and rendered back: the weighted average blurs the
    finest band (0.73 of its power kept), one back-projection step keeps 0.95 of it and two 0.99."""
    prior = GaussianTexturePriorConfig(prompt="marble", native_size=16).setup()
    x = prior.sample(8, 16, 16, torch.Generator().manual_seed(0))
    mask = torch.ones(8, 1, 16, 16, dtype=torch.bool)
    finest = {}
    for steps in (0, 1, 2):
        config = replace(PanoramaBridgeConfig(views_per_ring=1), back_projection_steps=steps)
        panorama = bridge(config, height=None, view_size=16, texel_oversample=4)
        fitted = torch.cat([panorama.project(panorama.unproject(view[None])) for view in x])
        finest[steps] = float(band_powers(fitted, mask)[-1] / band_powers(x, mask)[-1])
    assert finest[0] < 0.8 < 0.9 < finest[1] < finest[2] < 1.01, finest


def test_pole_views_cover_every_texel() -> None:
    assert bool(bridge(FULL_SPHERE).texel_coverage().all())
    ring = bridge(PanoramaBridgeConfig()).texel_coverage()
    assert not bool(ring[0].any()) and not bool(ring[-1].any())  # the paper's ring leaves the poles unseen
    assert bool(ring[ring.shape[0] // 2].all())


def test_unseen_texels_are_filled_or_keep_the_warm_start() -> None:
    ring = PanoramaBridgeConfig()
    views = torch.full((8, 3, 13, 13), 0.5)
    torch.testing.assert_close(bridge(ring).unproject(views), torch.full((3, 32, 64), 0.5))
    previous = torch.full((3, 32, 64), -1.0)
    average = bridge(replace(ring, fill_uncovered=False, back_projection_steps=0))
    z = average.unproject(views, previous=previous)
    seen = average.texel_coverage()
    torch.testing.assert_close(z[:, seen], torch.full_like(z[:, seen], 0.5))
    assert bool((z[:, ~seen] == -1.0).all())
    # Back-projection corrects what the views see (f reads unseen texels at the coverage's edge) and leaves the rest.
    corrected = bridge(replace(ring, fill_uncovered=False)).unproject(views, previous=previous)
    assert bool((corrected[:, ~seen] == -1.0).all())


@pytest.mark.parametrize("sampling", ["bilinear", "nearest"])
def test_project_and_unproject_are_linear(sampling) -> None:
    panorama = bridge(replace(FULL_SPHERE, sampling=sampling), channels=2, height=16)
    generator = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(panorama.canonical_shape, generator=generator) for _ in range(2))
    torch.testing.assert_close(panorama.project(2 * z1 - z2), 2 * panorama.project(z1) - panorama.project(z2))
    x1, x2 = panorama.project(z1), panorama.project(z2)
    torch.testing.assert_close(panorama.unproject(2 * x1 - x2), 2 * panorama.unproject(x1) - panorama.unproject(x2))
    assert panorama.linear
    assert bool((panorama.coverage() == 1).all())


def cells_seen(panorama: PanoramaBridge, view: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The initial noise's cells (flat in its k times finer grid) whose centres `view` sees, and the flat pixel
    each falls in."""
    k, size = panorama.config.noise_cells(), panorama.instance_shape[-1]
    cells = equirect_directions(k * panorama.canonical_shape[1], dtype=torch.float64).reshape(-1, 3)
    projection = project_to_view(cells, panorama.axes[view], panorama.config.fov_deg, size, size)
    seen = torch.nonzero(projection.visible).squeeze(1)
    column, row = projection.pixels[seen].floor().long().clamp(0, size - 1).unbind(-1)
    return seen, row * size + column


def test_initial_noise_has_unit_variance_and_is_view_consistent() -> None:
    panorama = bridge(FULL_SPHERE, channels=4, height=40)
    z_T, x_T = panorama.initial_noise(torch.Generator().manual_seed(0))
    assert z_T.shape == panorama.canonical_shape and x_T.shape == (panorama.num_views, *panorama.instance_shape)
    for noise in (z_T, x_T):
        assert abs(float(noise.mean())) < 0.05
        assert float(noise.var()) == pytest.approx(1.0, abs=0.05)

    # Both come from one fine white noise: z_T sums each texel's k x k cells over k, and every view pixel sums the
    # cells whose centres it sees over the square root of their count.
    k = panorama.config.noise_cells()
    assert k == 2  # texels matched to pixels: cells twice as fine
    channels, height, width = panorama.canonical_shape
    fine = torch.randn((channels, k * height, k * width), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z_T, fine.reshape(channels, height, k, width, k).sum(dim=(2, 4)) / k)
    for view in (0, panorama.num_views - 1):  # a ring view and a pole view
        seen, pixel = cells_seen(panorama, view)
        count = pixel.bincount(minlength=panorama.instance_shape[-1] ** 2)
        assert int(count.min()) >= 1
        sums = torch.zeros(channels, len(count)).index_add_(1, pixel, fine.reshape(channels, -1)[:, seen])
        torch.testing.assert_close(x_T[view].reshape(channels, -1), sums / count.sqrt())


def test_initial_noise_is_white_in_every_view_and_shared_between_views() -> None:
    """The pixels of a view hold disjoint cells (white noise); views overlap in the cells they see, so they share
    most of their noise there, which sampling each pixel's centre cell (nearest) would not give."""
    for panorama in (bridge(FULL_SPHERE, channels=2, height=40), bridge(FULL_SPHERE, channels=2, height=160,
                                                                         texel_oversample=4)):  # fmt: skip
        generator = torch.Generator().manual_seed(1)
        x = torch.stack([panorama.initial_noise(generator)[1] for _ in range(8)])
        assert lag_correlation(x.flatten(0, 1)) < 0.02
        shared = texel_shared_correlation(x, panorama)
        assert shared is not None and shared > 0.55
        k = panorama.config.noise_cells()
        channels, height, width = panorama.canonical_shape
        nearest = torch.stack([
            sample_equirect(torch.randn((channels, k * height, k * width), generator=generator), panorama.view_rays(),
                            "nearest").transpose(0, 1)
            for _ in range(8)
        ])  # fmt: skip
        assert texel_shared_correlation(nearest, panorama) < shared - 0.2


def test_pixels_that_see_no_noise_cell_draw_their_own_value() -> None:
    """Cells as coarse as the texels of a panorama matched to its views: the views' border pixels, smaller than a
    texel, see no cell centre; they keep unit variance."""
    panorama = bridge(replace(FULL_SPHERE, noise_oversample=1), channels=1, height=40)
    generator = torch.Generator().manual_seed(2)
    x = torch.stack([panorama.initial_noise(generator)[1] for _ in range(400)])
    pixels = panorama.instance_shape[-1] ** 2
    for view in range(panorama.num_views):
        empty = cells_seen(panorama, view)[1].bincount(minlength=pixels) == 0
        assert int(empty.sum()) > 0
        assert float(x[:, view].var(dim=0).flatten()[empty].mean()) == pytest.approx(1.0, abs=0.15)


def test_a_sampled_panorama_has_no_seam() -> None:
    """Column 0 continues column Wt - 1 as smoothly as any two neighbouring columns; two halves painted
    independently (the control) show a seam there."""
    prior = GaussianTexturePriorConfig(prompt="clouds").setup()
    panorama = PanoramaBridgeConfig(height=32).setup(prior)  # the paper's ring, whose view 4 straddles the seam
    sampler = SyncSampler(prior, panorama, replace(SyncConfig(), num_steps=15))
    painted = [sampler.sample(torch.Generator().manual_seed(seed)).z for seed in range(2)]

    def seam_ratio(z: torch.Tensor) -> float:
        neighbours = (z[..., 1:] - z[..., :-1]).abs().mean(dim=(0, 1))
        return float((z[..., 0] - z[..., -1]).abs().mean() / neighbours.median())

    for z in painted:
        assert seam_ratio(z) < 1.5
    half = painted[0].shape[-1] // 2
    assert seam_ratio(torch.cat((painted[0][..., :half], painted[1][..., half:]), dim=-1)) > 3.0


def front_near_depth(height: int = 32) -> torch.Tensor:
    """Distance 1 in the front hemisphere (z > 0), 10 behind."""
    return torch.where(equirect_directions(height)[..., 2] > 0, 1.0, 10.0)


def test_depth_conditions_are_near_bright() -> None:
    panorama = bridge(PanoramaBridgeConfig(), height=32, downsample=2, depth=front_near_depth())
    depth = panorama.conditions().depth
    size = panorama.instance_shape[-1] * 2  # the denoiser's image size
    assert depth.shape == (8, 1, size, size)
    assert float(depth.min()) >= 0.0 and float(depth.max()) <= 1.0
    assert float(depth[0].min()) > 0.5  # view 0 faces the near hemisphere
    assert float(depth[4].max()) < 0.1  # view 4 faces the far one

    # Distance along the ray becomes depth along the optical axis: on a sphere of one radius the view's centre is
    # the farthest point, so its corners are brighter than its centre.
    sphere = bridge(PanoramaBridgeConfig(), height=32, depth=torch.full((32, 64), 5.0)).view_depth()
    assert float(sphere[0, 0, 0, 0]) < float(sphere[0, 0, size // 4, size // 4])
    assert float(sphere.max()) == pytest.approx(5.0, rel=0.01)


def test_no_depth_no_conditions() -> None:
    conditions = bridge(FULL_SPHERE).conditions()
    assert conditions.depth is None and conditions.prompt_suffixes == ("",) * 26


def test_export_writes_the_equirect_png(tmp_path) -> None:
    panorama = bridge(FULL_SPHERE, height=16)
    z = smooth_panorama(16)
    path = panorama.export(z, tmp_path / "pano.png")
    image = iio.imread(path)
    assert image.shape == (16, 32, 3)
    expected = ((z + 1) / 2).clamp(0, 1).permute(1, 2, 0) * 255
    assert float((torch.from_numpy(image).float() - expected).abs().max()) <= 0.5 + 1e-3
    with pytest.raises(InputError, match=r"\.png"):
        panorama.export(z, tmp_path / "pano.jpg")


def test_export_by_views_matches_the_panorama_for_pixel_codecs() -> None:
    z = smooth_panorama(40)
    by_views = bridge(replace(FULL_SPHERE, export_decode="views"), height=40).rgb_panorama(z)
    direct = bridge(FULL_SPHERE, height=40).rgb_panorama(z)
    assert by_views.shape == direct.shape == (3, 40, 80)
    assert psnr(by_views, direct, peak=1.0) >= 35.0


def test_the_export_by_views_back_projects_too() -> None:
    """The decoded-views export is g in RGB at the views' resolution: with back-projection the exported panorama,
    seen again through the views, is closer to what they showed (a detailed panorama: 27.6 dB -> 31.1)."""
    prior = GaussianTexturePriorConfig(prompt="marble", native_size=64).setup()
    z = prior.sample(1, 40, 80, torch.Generator().manual_seed(0))[0]
    agreement = {}
    for steps in (0, 1):
        panorama = bridge(replace(FULL_SPHERE, export_decode="views", back_projection_steps=steps), height=40)
        views = prior.decode(panorama.project(z))
        seen_again = sample_equirect(panorama.rgb_panorama(z), panorama.view_rays()).transpose(0, 1)
        agreement[steps] = psnr(seen_again, views, peak=1.0)
    assert agreement[1] > agreement[0] + 2.0, agreement


def test_seam_padding_gives_the_codec_a_continuous_panorama() -> None:
    """A codec with a receptive field (a horizontal blur with zero padding, like a VAE's convolutions) sees wrapped
    columns at the seam, so the decoded edges come out as they would anywhere else."""

    def blurring_decode(x: torch.Tensor) -> torch.Tensor:
        kernel = torch.full((x.shape[1], 1, 1, 5), 0.2)
        return torch.nn.functional.conv2d(x, kernel, padding=(0, 2), groups=x.shape[1])

    z = smooth_panorama(16)
    padded = bridge(FULL_SPHERE, height=16, decode=blurring_decode).rgb_panorama(z)
    unpadded = bridge(replace(FULL_SPHERE, seam_padding=0), height=16, decode=blurring_decode).rgb_panorama(z)
    circular = blurring_decode(torch.cat((z[..., -2:], z, z[..., :2]), dim=-1)[None])[0][..., 2:-2]
    torch.testing.assert_close(padded, circular)
    assert float((unpadded[..., 0] - circular[..., 0]).abs().max()) > 0.05


def test_cube_faces_export(tmp_path) -> None:
    rgb01 = ((smooth_panorama(16) + 1) / 2).clamp(0, 1)
    paths = export_cube_faces(rgb01, tmp_path / "pano.png")
    assert paths == cube_face_paths(tmp_path / "pano.png")
    assert [p.name for p in paths] == [f"pano_{f}.png" for f in ("front", "right", "back", "left", "up", "down")]
    assert all(iio.imread(p).shape == (8, 8, 3) for p in paths)


@pytest.mark.parametrize(
    "field",
    [
        {"height": 1},
        {"view_size": 0},
        {"fov_deg": 180.0},
        {"views_per_ring": 0},
        {"elevations_deg": (95.0,)},
        {"elevations_deg": (), "pole_views": False},
        {"sampling": "bicubic"},
        {"weight_power": -1.0},
        {"border_feather": 2.0},
        {"noise_oversample": 0},
        {"back_projection_steps": -1},
        {"seam_padding": -1},
    ],
)
def test_bad_settings_are_input_errors(field) -> None:
    with pytest.raises(InputError, match="PanoramaBridgeConfig"):
        PanoramaBridgeConfig(**field)
