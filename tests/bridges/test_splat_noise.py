"""The splat bridge's starting noise: unit variance per pixel, white in every view ('integral'), and shared by views
that see the same part of the same Gaussian; the official square-root construction is consistent but not white."""

from __future__ import annotations

import functools

import pytest
import torch

from sync_splat.apps.restyle import orbit_cameras
from sync_splat.bridges.splat import GaussianSplatBridge, SplatBridgeConfig
from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.scene.demo import make_demo_scene
from sync_splat.studies.fidelity import lag_correlation, same_surface_pixels, shared_correlation

SIZE = 48


@functools.cache
def bridge(noise: str) -> GaussianSplatBridge:
    scene = make_demo_scene()
    prior = GaussianTexturePrior.from_prompt("marble", native_size=SIZE)
    cameras = orbit_cameras(scene, 12, SIZE, 50.0)  # 30 degrees apart: neighbours share most of what they see
    return SplatBridgeConfig(noise=noise).setup(prior, scene, cameras)


def draws(noise: str, seeds: int = 4) -> torch.Tensor:
    return torch.stack([bridge(noise).initial_noise(torch.Generator().manual_seed(s))[1] for s in range(seeds)])


@pytest.mark.parametrize("noise", ["integral", "sqrt_weights"])
def test_starting_noise_has_unit_variance_per_pixel(noise: str) -> None:
    x = draws(noise, seeds=6)
    assert x.shape[1:] == (12 + 1, 3, SIZE, SIZE)
    per_pixel_variance = x.var(dim=0).mean()
    assert per_pixel_variance == pytest.approx(1.0, abs=0.06)
    assert x.mean().abs() < 0.02


def test_integral_noise_is_white_and_sqrt_weights_noise_is_not() -> None:
    covered = (bridge("integral").coverage() > 0.99).repeat(4, 1, 1, 1)
    integral = draws("integral").flatten(0, 1)
    official = draws("sqrt_weights").flatten(0, 1)
    assert lag_correlation(integral, covered) < 0.05
    assert lag_correlation(official, covered) > 0.5


def test_integral_noise_is_shared_where_views_see_the_same_surface() -> None:
    system = bridge("integral").linear_system("instance")
    first, second = same_surface_pixels(system, 0, 1)
    assert len(first) > 30
    x = draws("integral", seeds=8)  # [S, N, C, h, w]
    shared = shared_correlation(x, system, [(0, 1)])
    assert shared is not None and shared > 0.1  # independent views would give 0 +- 0.02 here
    a = x[:, 0].flatten(2)[:, :, first]
    unrelated = float((a * x[:, 1].flatten(2)[:, :, second.roll(7)]).mean())
    assert abs(unrelated) < 0.05
    independent = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    assert abs(shared_correlation(independent, system, [(0, 1)])) < 0.05


def test_latent_canonical_noise_is_the_gaussians_own() -> None:
    scene = make_demo_scene()
    prior = GaussianTexturePrior.from_prompt("marble", native_size=SIZE)
    config = SplatBridgeConfig(noise="integral", canonical="latent")
    latent = config.setup(prior, scene, orbit_cameras(scene, 4, SIZE, 50.0))
    z_T, x_T = latent.initial_noise(torch.Generator().manual_seed(0))
    assert z_T.shape == latent.canonical_shape and x_T.shape == (latent.num_views, *latent.instance_shape)
    assert float(z_T.var()) == pytest.approx(1.0, abs=0.05)
