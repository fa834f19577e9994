"""The mesh-texture bridge: f is a texture lookup composited over the background, g bakes views back into the
texture (splat, per-view fill, cos^p weights, fill of unseen texels), and the two agree; noise, conditions, export."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from torch import Tensor

from sync_splat.bridges.base import Bridge
from sync_splat.bridges.mesh import MeshBridgeConfig, MeshTextureBridge
from sync_splat.bridges.mesh_views import mesh_rig
from sync_splat.codec import PixelCodec
from sync_splat.denoisers.prior import GaussianTexturePrior, GaussianTexturePriorConfig
from sync_splat.errors import InputError
from sync_splat.sampler import SyncConfig, SyncSampler
from sync_splat.scene.mesh import MeshAsset

SMALL = MeshBridgeConfig(view_size=32, texture_size=64, rgb_texture_size=64, device="cpu")


def wavy_sheet(n: int = 17) -> MeshAsset:
    """A gently curved square sheet facing +z with the seamless UV layout u = (x + 1) / 2, v = (y + 1) / 2."""
    ticks = torch.linspace(-1.0, 1.0, n)
    y, x = torch.meshgrid(ticks, ticks, indexing="ij")
    z = 0.15 * torch.sin(2 * x) * torch.cos(y)
    vertices = torch.stack([x, y, z], -1).reshape(-1, 3)
    index = torch.arange(n * n).reshape(n, n)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    return MeshAsset.from_arrays(vertices, faces, (vertices[:, :2] + 1) / 2, uv_mode="file")


def smooth_texture(size: int) -> torch.Tensor:
    """A smooth 3-channel texture in [-1, 1] (as the prior's space), a function of (u, v)."""
    v, u = torch.meshgrid(1 - (torch.arange(size) + 0.5) / size, (torch.arange(size) + 0.5) / size, indexing="ij")
    return torch.stack([torch.sin(3 * u), torch.cos(2 * v), u * v - 0.5])


@pytest.fixture(scope="module")
def sheet_bridge() -> MeshTextureBridge:
    return SMALL.setup(PixelCodec(), wavy_sheet())


def test_the_bridge_has_the_papers_views_and_shapes(sheet_bridge: MeshTextureBridge) -> None:
    assert isinstance(sheet_bridge, Bridge)
    assert sheet_bridge.num_views == 10
    assert sheet_bridge.canonical_shape == (3, 64, 64) and sheet_bridge.instance_shape == (3, 32, 32)
    cameras = mesh_rig(MeshBridgeConfig().view_angles(), 60.0, 2.0, 96)
    distances = cameras.c2w[:, :3, 3].norm(dim=1)
    torch.testing.assert_close(distances, torch.full((10,), 2.0))
    elevations = torch.rad2deg(torch.asin(cameras.c2w[:, 1, 3] / 2.0))
    torch.testing.assert_close(elevations, torch.tensor([0.0] * 8 + [30.0, 30.0]), atol=1e-4, rtol=0)
    # Azimuth 0 looks from +z, azimuths grow towards +x; the upper views sit at azimuths 0 and 180.
    azimuths = torch.rad2deg(torch.atan2(cameras.c2w[:, 0, 3], cameras.c2w[:, 2, 3])) % 360
    torch.testing.assert_close(
        azimuths, torch.tensor([0.0, 45, 90, 135, 180, 225, 270, 315, 0, 180]), atol=1e-3, rtol=0
    )
    assert cameras.Ks[0, 0, 0].item() == pytest.approx(48 / math.tan(math.radians(30)))


def test_view_suffixes_follow_the_official_rules() -> None:
    rule = MeshBridgeConfig().suffixes
    suffixes = [rule.label(el, az) for el, az in MeshBridgeConfig().view_angles()]
    assert suffixes == [", front view", ", side view", ", side view", ", back view", ", back view",
                        ", back view", ", side view", ", side view", ", front view", ", back view"]  # fmt: skip
    assert rule.label(45.0, 90.0) == ", top view" and rule.label(-60.0, 0.0) == ", bottom view"


def test_project_looks_the_texture_up_and_composites_the_background(sheet_bridge: MeshTextureBridge) -> None:
    z = smooth_texture(64)
    background = torch.full((10, 3, 32, 32), 7.0)
    x = sheet_bridge.project(z, background)
    coverage = sheet_bridge.coverage()
    assert coverage.shape == (10, 1, 32, 32) and set(coverage.unique().tolist()) <= {0.0, 1.0}
    assert coverage[0].mean() > 0.3  # the front view sees the sheet
    assert (x == 7.0).expand_as(x)[coverage.expand_as(x) == 0].all()
    covered = coverage.expand_as(x) == 1
    assert (x[covered].abs() <= 1.0).all()
    # A constant texture projects to that constant on every mesh pixel.
    constant = sheet_bridge.project(torch.full((3, 64, 64), 0.25))
    assert torch.allclose(constant[covered], torch.tensor(0.25)) and (constant[~covered] == 0).all()


@pytest.mark.parametrize(("cos_power", "max_error"), [(1.0, 0.04), (24.0, 0.06)])
def test_bake_then_render_reproduces_the_covered_pixels(cos_power: float, max_error: float) -> None:
    """f(g(f(texture))) is f(texture) up to resampling. With the default cos^24 weights a texel follows the views
    facing it, so fewer views average its resampling error away than with cos^1 (0.055 against 0.031 at most)."""
    bridge = dataclasses.replace(SMALL, cos_power=cos_power).setup(PixelCodec(), wavy_sheet())
    x = bridge.project(smooth_texture(64))
    again = bridge.project(bridge.unproject(x))
    covered = bridge.coverage().expand_as(x) == 1
    error = (again - x).abs()[covered]
    assert error.max() < max_error, error.max()
    assert error.mean() < 0.007


@pytest.mark.parametrize("cos_power", [1.0, 24.0])
def test_back_projection_keeps_repeated_round_trips_near_the_views(cos_power: float) -> None:
    """The sampler makes a round trip f(g(x)) at every synchronised step. Without back-projection each one blurs the
    views a little more (six trips: mean error 0.0105 at cos^1, 0.0124 at cos^24); with one step they drift half
    as far or less (0.0059, 0.0080)."""
    drift = {}
    for steps in (0, 1):
        config = dataclasses.replace(SMALL, cos_power=cos_power, back_projection_steps=steps)
        bridge = config.setup(PixelCodec(), wavy_sheet())
        x = bridge.project(smooth_texture(64))
        covered = bridge.coverage().expand_as(x) == 1
        y = x
        for _ in range(6):
            y = bridge.project(bridge.unproject(y))
        drift[steps] = float((y - x).abs()[covered].mean())
    assert drift[1] < 0.7 * drift[0], drift


def test_the_rgb_bake_back_projects_too() -> None:
    """The exported texture is g at the image size: with back-projection its renders are closer to the views it was
    baked from (a detailed texture: mean error 0.049 -> 0.040)."""
    prior = GaussianTexturePriorConfig(prompt="marble", native_size=64).setup()
    texture = prior.decode(prior.sample(1, 64, 64, torch.Generator().manual_seed(0)))[0]
    error = {}
    for steps in (0, 1):
        bridge = replace(SMALL, back_projection_steps=steps).setup(PixelCodec(), wavy_sheet())
        views = bridge.render_rgb(texture)
        again = bridge.render_rgb(bridge.bake_rgb(views))
        covered = bridge.render_rgb(torch.zeros_like(texture), background=1.0) == 0  # the mesh's pixels
        error[steps] = float((again - views).abs()[covered].mean())
    assert error[1] < 0.85 * error[0], error


def test_the_fill_leaves_no_texel_empty(sheet_bridge: MeshTextureBridge) -> None:
    x = torch.full((10, 3, 32, 32), -0.6)
    z = sheet_bridge.unproject(x)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z, torch.full_like(z, -0.6))


def test_the_fill_reaches_texels_outside_every_chart() -> None:
    half = MeshAsset.from_arrays(
        torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]), torch.tensor([[0, 1, 2]]),
        torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]]), uv_mode="file",
    )  # fmt: skip
    bridge = SMALL.setup(PixelCodec(), half)
    num, den = bridge.unproject_sums(torch.ones(10, 3, 32, 32))
    assert (den == 0).float().mean() > 0.8  # the chart fills an eighth of the texture
    z = bridge.unproject(torch.ones(10, 3, 32, 32))
    torch.testing.assert_close(z, torch.ones_like(z))


def test_per_view_fill_lets_every_view_reach_the_dense_texture() -> None:
    dense = MeshBridgeConfig(view_size=16, texture_size=128, device="cpu", upper_azimuths_deg=(), azimuths=1)
    for per_view_fill in (True, False):
        bridge = replace(dense, per_view_fill=per_view_fill).setup(PixelCodec(), wavy_sheet())
        _, den = bridge.unproject_sums(torch.zeros(1, 3, 16, 16))
        seen = (den > 0).float().mean().item()
        # 16 x 16 pixels reach at most 256 of 16384 texels by splatting; the per-view fill reaches the whole sheet.
        assert (seen > 0.9) if per_view_fill else (seen < 0.02)


def two_views_bridge(cos_power: float) -> MeshTextureBridge:
    """A flat sheet seen head-on (azimuth 0) and obliquely (azimuth 60)."""
    config = MeshBridgeConfig(
        view_size=32, texture_size=32, device="cpu", azimuths=1, upper_azimuths_deg=(60.0,), upper_elevation_deg=0.0,
        cos_power=cos_power,
    )  # fmt: skip
    flat = MeshAsset.from_arrays(
        torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]]),
        torch.tensor([[0, 1, 2], [0, 2, 3]]), torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]),
        uv_mode="file",
    )  # fmt: skip
    return config.setup(PixelCodec(), flat)


@pytest.mark.parametrize("cos_power", [0.0, 1.0, 6.0])
def test_views_are_weighted_by_cos_to_the_power_p(cos_power: float) -> None:
    bridge = two_views_bridge(cos_power)
    x = torch.stack([torch.zeros(3, 32, 32), torch.ones(3, 32, 32)])  # head-on says 0, oblique says 1
    num, den = bridge.unproject_sums(x)
    both = den[0] > 0
    z = bridge.unproject(x)
    # Where both views reach a texel, it holds w_oblique / (w_head_on + w_oblique) with w = cos^p; the oblique
    # camera sees the plane at 60 degrees up to the perspective spread of directions (about +-20 degrees).
    expected = math.cos(math.radians(60)) ** cos_power / (1 + math.cos(math.radians(60)) ** cos_power)
    values = z[0][both]
    middle = values.median().item()
    assert middle == pytest.approx(expected, abs=0.12 if cos_power else 1e-6)
    if cos_power == 6.0:
        assert middle < 0.1


def test_initial_noise_has_unit_variance_and_consistent_covered_pixels(sheet_bridge: MeshTextureBridge) -> None:
    generator = torch.Generator().manual_seed(0)
    samples = [sheet_bridge.initial_noise(generator) for _ in range(30)]
    z_T = torch.stack([s[0] for s in samples])
    x_T = torch.stack([s[1] for s in samples])
    assert z_T.shape == (30, 3, 64, 64) and x_T.shape == (30, 10, 3, 32, 32)
    covered = sheet_bridge.coverage().bool().expand(10, 3, 32, 32)
    variance = x_T.var(dim=0)
    assert variance[covered].mean().item() == pytest.approx(1.0, abs=0.05)
    assert variance[~covered].mean().item() == pytest.approx(1.0, abs=0.05)
    # Covered pixels carry the projected canonical noise: they correlate with f(z_T).
    projected = torch.stack([sheet_bridge.project(z) for z in z_T])
    correlation = (projected * x_T)[:, covered].mean() / projected[:, covered].pow(2).mean().sqrt()
    assert correlation > 0.5


def test_conditions_carry_suffixes_and_normalised_inverse_depth(sheet_bridge: MeshTextureBridge) -> None:
    conditions = sheet_bridge.conditions()
    assert len(conditions.prompt_suffixes) == 10 and conditions.prompt_suffixes[0] == ", front view"
    depth = conditions.depth
    assert depth.shape == (10, 1, 32, 32) and depth.min() >= 0 and depth.max() <= 1
    front = depth[0, 0]
    assert front.max() == pytest.approx(1.0, abs=0.05) and front[0, 0] < 0.05  # near is bright, background dark


def test_export_bakes_an_rgb_texture_and_writes_obj_and_glb(sheet_bridge: MeshTextureBridge, tmp_path: Path) -> None:
    z = torch.zeros(3, 64, 64)
    z[0] = 0.8  # prior space: rgb01 = (z + 1) / 2 -> (0.9, 0.5, 0.5)
    path = sheet_bridge.export(z, tmp_path / "sheet.obj")
    assert path == tmp_path / "sheet.obj"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.mtl", "sheet.obj", "sheet.png"]
    loaded = trimesh.load(path, process=False)
    image = np.asarray(loaded.visual.material.image.convert("RGB")).astype(float) / 255
    assert np.allclose(image, [0.9, 0.5, 0.5], atol=2 / 255)
    # The mesh is written in its own coordinates, not the normalised ones used for rendering.
    assert np.allclose(np.sort(np.asarray(loaded.vertices)[:, 0])[[0, -1]], [-1.0, 1.0], atol=1e-5)

    glb = sheet_bridge.export(z, tmp_path / "sheet.glb")
    (geometry,) = trimesh.load(glb).geometry.values()
    assert geometry.visual.material.baseColorTexture.size == (64, 64)


def prior_within_view_std(prior: GaussianTexturePrior, size: int) -> torch.Tensor:
    """The prior's expected per-channel standard deviation within one size x size image (its mean colour aside),
    exactly: every frequency but DC contributes its power, `Var = sum_{k != 0} Sigma_cc(k) / (h w)`. `[3]`"""
    covariance = prior.spectral_covariance(size, size).diagonal(dim1=-2, dim2=-1)  # [M, h, w, 3]
    field_power = covariance.sum(dim=(1, 2)) - covariance[:, 0, 0]
    return (prior.weights @ field_power / size**2).sqrt()


def sample_views(prior: GaussianTexturePrior, bridge: MeshTextureBridge, case: int) -> tuple[Tensor, Tensor]:
    """(z, x): a 10-step run of the paper's `case` with every step synchronised, ending on the views the sampler
    stepped (no final re-projection of the texture into them)."""
    config = replace(SyncConfig.case(case), num_steps=10, sync_until=1.0, final_aggregation=False)
    result = SyncSampler(prior, bridge, config).sample(torch.Generator().manual_seed(0))
    return result.z, result.x


def test_the_prior_samples_a_texture_through_the_bridge() -> None:
    """SyncTweedies over the sheet's 10 views ends on views that one texture explains, and that texture has detail
    on the prior's scale (neither flattened nor blown up)."""
    prior = GaussianTexturePriorConfig(prompt="marble").setup()
    bridge = SMALL.setup(prior, wavy_sheet())
    covered = bridge.coverage()[:, 0] == 1  # [N, h, w]

    def per_view_std(x: torch.Tensor) -> torch.Tensor:
        """Per-channel std over each view's mesh pixels, averaged over views: `[3]`."""
        return torch.stack([view[:, mask].std(dim=1) for view, mask in zip(x, covered, strict=True)]).mean(dim=0)

    def disagreement(z: torch.Tensor, x: torch.Tensor) -> float:
        """RMS of f(z) - x on mesh pixels, relative to the views' own detail."""
        residual = (bridge.project(z) - x).transpose(0, 1)[:, covered]
        return float(residual.square().mean().sqrt() / per_view_std(x).mean())

    z, x = sample_views(prior, bridge, case=2)
    assert z.shape == (3, 64, 64) and torch.isfinite(z).all()
    # What is left is the bridge's resampling (bake a view into texels, look them up again): about 0.2 here.
    assert disagreement(z, x) < 0.4
    # The control: ten independent samplings (case 0), baked into one texture, disagree with it by about their
    # whole detail.
    assert disagreement(*sample_views(prior, bridge, case=0)) > 0.8

    # The views carry the prior's kind of detail. Views that see the texture at different scales propose details
    # of their own, and averaging them keeps about a third of the prior's within-image std on this sheet; a
    # synchronisation that flattens the texture, or one that lets the noise through (case 1 here: some fifteen times
    # the prior's std), falls outside.
    ratio = per_view_std(x) / prior_within_view_std(prior, bridge.instance_shape[-1])
    assert ((ratio > 0.2) & (ratio < 1.5)).all(), ratio


@pytest.mark.parametrize(
    "field",
    [
        {"texture_size": 0},
        {"azimuths": -1},
        {"azimuths": 0, "upper_azimuths_deg": ()},
        {"fov_deg": 0.0},
        {"camera_distance": 1.0},
        {"cos_power": math.inf},
        {"texture_filter": "bicubic"},
        {"visibility_tolerance": -1.0},
        {"back_projection_steps": -1},
    ],
)
def test_bad_settings_are_input_errors(field: dict) -> None:
    with pytest.raises(InputError, match="MeshBridgeConfig"):
        MeshBridgeConfig(**field)
