"""The splat fit's pixel weights: a weighted least-squares problem, solved alike by every storage, and the bridge's
weights (how finely a view sees each Gaussian: squarely, from close by) let a Gaussian take its colour from the view
that sees it best."""

from __future__ import annotations

import math

import pytest
import torch

from sync_splat.bridges.splat import SplatBridgeConfig
from sync_splat.bridges.splat_fit import SplatLeastSquares
from sync_splat.bridges.splat_matrix_free import MatrixFreeSplatSystem
from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.render.gaussians import gaussian_weights
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.gaussians import GaussianScene

SIZE = 12


def tiny_scene() -> tuple[GaussianScene, Cameras]:
    """40 overlapping Gaussians seen by 3 views of 12 x 12 pixels, float64."""
    generator = torch.Generator().manual_seed(0)
    g = 40
    scene = GaussianScene(
        means=0.6 * torch.randn(g, 3, generator=generator, dtype=torch.float64),
        quats_wxyz=torch.randn(g, 4, generator=generator, dtype=torch.float64),
        log_scales=torch.full((g, 3), 0.35, dtype=torch.float64).log(),
        opacity_logits=torch.full((g,), 0.6, dtype=torch.float64).logit(),
        sh=torch.zeros(g, 1, 3, dtype=torch.float64),
    )
    cameras = Cameras.orbit_rig((0.0, 0.0, 0.0), 1.6, num_azimuths=3, elevations_deg=(10.0,), top_views=0,
                                size=(SIZE, SIZE)).to(dtype=torch.float64)  # fmt: skip
    return scene, cameras


def table_evidence(views: int, gaussians: int):  # noqa: ANN201
    """A positive weight per view and Gaussian, from 0.01 to 1, as an `Evidence` function."""
    table = 0.01 + 0.99 * torch.rand(views, gaussians, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return lambda view, gaussian: table[view, gaussian], table


def weighted_optimum(
    scene: GaussianScene, cameras: Cameras, table: torch.Tensor, content: torch.Tensor
) -> torch.Tensor:
    """argmin_c sum_v ||D_v^(1/2) (W_v c - y_v)||^2, D_v = diag(W_v e_v / alpha_v), densely."""
    geometry = (scene.means, scene.quats_wxyz, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits))
    W = gaussian_weights(*geometry, cameras.viewmats, cameras.Ks, SIZE, SIZE).to_dense()  # [N h w, G]
    view = torch.arange(W.shape[0]) // (SIZE * SIZE)
    alpha = W.sum(dim=1)
    d = torch.where(alpha > 0, (W * table[view]).sum(dim=1) / alpha.clamp_min(1e-300), 1.0)
    y = content.permute(0, 2, 3, 1).reshape(-1, content.shape[1])
    root = d.sqrt()[:, None]
    return torch.linalg.lstsq(root * W, root * y).solution


@pytest.mark.parametrize(
    "storage", ["stored", "stored-per-view", "stored-assembled", "matrix_free", "matrix_free-per-view"]
)
def test_the_weighted_fit_is_the_weighted_least_squares_optimum(storage: str) -> None:
    scene, cameras = tiny_scene()
    evidence, table = table_evidence(len(cameras), scene.num_gaussians)
    per_view = storage.endswith("per-view")
    if storage.startswith("matrix_free"):
        system = MatrixFreeSplatSystem(scene, cameras, 1 if per_view else 3, backend="torch", evidence=evidence)
    else:
        geometry = (scene.means, scene.quats_wxyz, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits))
        weights = gaussian_weights(*geometry, cameras.viewmats, cameras.Ks, SIZE, SIZE)
        normal = "assembled" if storage == "stored-assembled" else "implicit"
        system = SplatLeastSquares(weights, 3, SIZE, SIZE, 1 if per_view else None, normal, evidence=evidence)
    content = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    content = content * system.alpha
    fit = system.fit(content, damping=0.0, tolerance=1e-11, max_iterations=1000)
    optimum = weighted_optimum(scene, cameras, table, content)
    torch.testing.assert_close(fit.z, optimum, rtol=0, atol=1e-6)
    unweighted = SplatLeastSquares(
        gaussian_weights(scene.means, scene.quats_wxyz, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits),
                         cameras.viewmats, cameras.Ks, SIZE, SIZE), 3, SIZE, SIZE)  # fmt: skip
    plain = unweighted.fit(content, damping=0.0, tolerance=1e-11, max_iterations=1000).z
    assert (plain - optimum).abs().max() > 0.05  # the weights change the answer
    # Views that one colouring explains are fixed points whatever the weights.
    colours = torch.rand(scene.num_gaussians, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = system.fit(system.render(colours), damping=0.0, tolerance=1e-11, max_iterations=1000).z
    torch.testing.assert_close(exact, colours, rtol=0, atol=1e-6)


def test_weights_of_one_everywhere_are_the_unweighted_fit() -> None:
    scene, cameras = tiny_scene()
    geometry = (scene.means, scene.quats_wxyz, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits))
    weights = gaussian_weights(*geometry, cameras.viewmats, cameras.Ks, SIZE, SIZE)
    ones = SplatLeastSquares(weights, 3, SIZE, SIZE, evidence=lambda view, gaussian: torch.ones(len(view)))
    plain = SplatLeastSquares(weights, 3, SIZE, SIZE)
    content = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    settings = {"damping": 0.01, "tolerance": 1e-6, "max_iterations": 50}
    torch.testing.assert_close(ones.fit(content, **settings).z, plain.fit(content, **settings).z, rtol=0, atol=1e-12)
    assert torch.equal(ones.root_weights, torch.ones(3, 1, SIZE, SIZE, dtype=torch.float64))


def flat_ground() -> GaussianScene:
    """A 10 x 10 grid of flat Gaussians on the ground plane (shortest axis: y, up), overlapping their neighbours."""
    side = torch.linspace(-1.0, 1.0, 10)
    x, z = torch.meshgrid(side, side, indexing="ij")
    g = x.numel()
    return GaussianScene(
        means=torch.stack([x.flatten(), torch.zeros(g), z.flatten()], dim=1),
        quats_wxyz=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(g, 4).clone(),
        log_scales=torch.tensor([0.15, 0.005, 0.15]).log().expand(g, 3).clone(),
        opacity_logits=torch.full((g,), 4.0),
        sh=torch.zeros(g, 1, 3),
    )


@pytest.mark.parametrize("cos_power", [0.0, SplatBridgeConfig().cos_power])
def test_a_gaussian_takes_its_colour_from_the_view_that_faces_it(cos_power: float) -> None:
    """The top view sees the ground squarely and says red; a view from 20 degrees above it sees it edge-on and says
    blue. Counted alike, the colours are a blend; weighted by cos^24, they are the top view's."""
    prior = GaussianTexturePrior.from_prompt("marble", native_size=32)
    cameras = Cameras.orbit_rig((0.0, 0.0, 0.0), 3.0, num_azimuths=1, elevations_deg=(20.0,), top_views=1,
                                fov_deg=50.0, size=(32, 32))  # fmt: skip
    bridge = SplatBridgeConfig(cos_power=cos_power).setup(prior, flat_ground(), cameras)
    red, blue = torch.tensor([1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0])  # the prior's [-1, 1]
    views = torch.stack([blue.view(3, 1, 1).expand(3, 32, 32), red.view(3, 1, 1).expand(3, 32, 32)])
    colours = bridge.unproject(views)
    seen = bridge.linear_system("image").alpha[0].sum() > 0 and bridge.linear_system("image").alpha[1].sum() > 0
    assert seen
    blue_share = colours[:, 2].mean()  # rgb01: 0 for the top view's red, 1 for the oblique view's blue
    if cos_power == 0:
        assert blue_share > 0.2
    else:
        assert blue_share < 0.02
        assert colours[:, 0].mean() > 0.98


def top_camera(radius: float, fov_deg: float) -> Cameras:
    """One view straight down at the ground, from `radius / sin(fov / 2)` above it, 32 x 32 pixels."""
    return Cameras.orbit_rig((0.0, 0.0, 0.0), radius, num_azimuths=0, elevations_deg=(), top_views=1,
                             fov_deg=fov_deg, size=(32, 32))  # fmt: skip


@pytest.mark.parametrize(
    ("sharp", "coarse"),
    [
        (top_camera(1.5, 60.0), top_camera(3.0, 60.0)),
        (top_camera(1.5, 2 * math.degrees(math.asin(0.25))), top_camera(3.0, 60.0)),
    ],
    ids=["closer", "zoomed_in"],
)
def test_a_gaussian_takes_its_colour_from_the_view_that_sees_it_finest(sharp: Cameras, coarse: Cameras) -> None:
    """Two views see the ground equally squarely; the one that spends more pixels on it (from 3 instead of 6 units
    away, or from as far with a 2x longer focal length) says red, the other blue. Counted alike, the colours are a
    blend (0.18 to 0.21 blue); weighted by the views' pixels per unit of surface, they are the sharp view's."""
    prior = GaussianTexturePrior.from_prompt("marble", native_size=32)
    cameras = Cameras(torch.cat([sharp.c2w, coarse.c2w]), torch.cat([sharp.Ks, coarse.Ks]), 32, 32)
    red, blue = torch.tensor([1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0])  # the prior's [-1, 1]
    views = torch.stack([red.view(3, 1, 1).expand(3, 32, 32), blue.view(3, 1, 1).expand(3, 32, 32)])
    blended = SplatBridgeConfig(cos_power=0.0).setup(prior, flat_ground(), cameras).unproject(views)
    weighted = SplatBridgeConfig().setup(prior, flat_ground(), cameras).unproject(views)
    assert blended[:, 2].mean() > 0.1
    assert weighted[:, 2].max() < 0.01 and weighted[:, 0].min() > 0.99


def test_pixel_weights_from_renders_equal_those_from_the_weights() -> None:
    """gsplat cannot list its weights, so on CUDA the pixels' weights come from rendering each view's evidence; the
    same route on the torch compositor gives the weights' own answer."""
    scene, cameras = tiny_scene()
    evidence, _ = table_evidence(len(cameras), scene.num_gaussians)
    system = MatrixFreeSplatSystem(scene, cameras, 3, backend="torch", evidence=evidence)

    class Rendered:  # a chunk that can only render, as gsplat's
        root = None

    alpha = system._rows(system.alpha)
    from_renders = system._chunk_roots(Rendered(), evidence, 0, 3, alpha)
    torch.testing.assert_close(from_renders, system._rows(system.root_weights), rtol=1e-12, atol=1e-12)
