"""The generated demo scene: deterministic, the promised size and frame, solid-looking flat grey splats."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.gaussians import GaussianScene

FIELDS = ("means", "quats_wxyz", "log_scales", "opacity_logits", "sh")


def rotate(quats_wxyz: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Rotate one vector by each unit quaternion: v' = v + 2 w (u x v) + 2 u x (u x v)."""
    w, u = quats_wxyz[:, :1], quats_wxyz[:, 1:]
    v = vector.expand_as(u)
    uv = torch.cross(u, v, dim=1)
    return v + 2 * w * uv + 2 * torch.cross(u, uv, dim=1)


def test_same_seed_gives_identical_tensors_and_another_seed_moves_the_samples() -> None:
    a, b, c = make_demo_scene(0), make_demo_scene(0), make_demo_scene(1)
    assert all(torch.equal(getattr(a, name), getattr(b, name)) for name in FIELDS)
    assert c.num_gaussians == a.num_gaussians and not torch.equal(a.means, c.means)


def test_size_dtype_and_values() -> None:
    scene = make_demo_scene()
    assert 3000 <= scene.num_gaussians <= 6000
    assert scene.sh_degree == 0 and scene.source is None
    for name in FIELDS:
        tensor = getattr(scene, name)
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and torch.isfinite(tensor).all(), name
    assert torch.allclose(scene.quats_wxyz.norm(dim=1), torch.ones(scene.num_gaussians), atol=1e-6)
    assert torch.all(torch.sigmoid(scene.opacity_logits) > 0.9)


def test_y_up_frame_with_the_object_standing_on_a_ground_disc_near_the_origin() -> None:
    scene = make_demo_scene()
    y = scene.means[:, 1]
    assert y.min() >= 0.0  # nothing below the ground plane y = 0
    on_ground = y.abs() < 1e-6
    ground = scene.means[on_ground]
    assert 0.15 * scene.num_gaussians < len(ground) < 0.5 * scene.num_gaussians
    assert ground[:, [0, 2]].norm(dim=1).max() <= 1.0 + 1e-6
    assert y.max() > 0.7  # the teapot rises above the disc
    assert scene.centre.norm() < 0.6 and 0.8 < scene.radius < 1.5
    assert torch.all((scene.means - scene.centre).norm(dim=1) <= scene.radius + 1e-6)


def test_splats_are_small_flat_and_lie_in_their_surface() -> None:
    scene = make_demo_scene()
    scales = scene.log_scales.exp()
    assert scales.max() < 0.05 * scene.radius  # small: a 128 px view of the scene shows each as a pixel or two
    assert torch.all(scales[:, 2] < 0.3 * scales[:, 0])  # flat: thin along their local z
    # The ground's splats lie in the plane y = 0, so their thin axis (local z) is vertical.
    thin_axis = rotate(scene.quats_wxyz, torch.tensor([0.0, 0.0, 1.0]))
    on_ground = scene.means[:, 1].abs() < 1e-6
    assert torch.allclose(thin_axis[on_ground, 1].abs(), torch.ones(int(on_ground.sum())), atol=1e-5)


def test_neighbouring_splats_overlap_so_surfaces_look_solid() -> None:
    scene = make_demo_scene()
    distances = torch.cdist(scene.means, scene.means)
    distances.fill_diagonal_(math.inf)
    nearest = distances.min(dim=1).values
    sigma = scene.log_scales.exp()[:, 0]
    assert torch.quantile(nearest / sigma, 0.95) < 2.0  # neighbours sit within two standard deviations


def test_neutral_grey_colours() -> None:
    rgb = make_demo_scene().rgb01
    assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1e-6) and torch.allclose(rgb[:, 1], rgb[:, 2], atol=1e-6)
    assert rgb.min() > 0.2 and rgb.max() < 0.95


def test_saves_and_loads_bit_exactly(tmp_path: Path) -> None:
    scene = make_demo_scene()
    loaded = GaussianScene.load(scene.save(tmp_path / "demo.ply"))
    assert all(torch.equal(getattr(scene, name), getattr(loaded, name)) for name in FIELDS)
