"""Up axes: parsing, the rotation that stands a y-up rig on another up, and each kind of evidence `estimate_up`
weighs (the user's choice, a splatfacto run's settings, an ns-export PLY header, cameras, principal axes)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sync_splat.errors import InputError
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.gaussians import GaussianScene
from sync_splat.scene.up_axis import UpAxis, estimate_up, parse_up, rotation_from_y, stand_on

Y_TO_Z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # +y becomes +z, +z becomes -y


def turned(scene: GaussianScene, rotation: torch.Tensor) -> GaussianScene:
    """The scene's Gaussians moved by a rotation (means only: the estimates look at positions and opacities)."""
    return GaussianScene(scene.means @ rotation.T, scene.quats_wxyz, scene.log_scales, scene.opacity_logits, scene.sh)


def ground_scene(up: torch.Tensor, seed: int = 0) -> GaussianScene:
    """A captured-looking scene: a dense 10 x 10 ground and a few sparse objects standing on it, `up` up."""
    generator = torch.Generator().manual_seed(seed)
    ground = torch.cat(
        [torch.rand(3000, 2, generator=generator) * 10 - 5, torch.rand(3000, 1, generator=generator) * 0.1], dim=1
    )
    objects = torch.cat(
        [torch.rand(600, 2, generator=generator) * 6 - 3, torch.rand(600, 1, generator=generator) * 3], dim=1
    )
    z_up = torch.cat([ground, objects])  # x, y across, z up
    rotation = rotation_from_y(up.double()).float() @ Y_TO_Z.T  # z -> y -> up
    means = z_up @ rotation.T
    g = means.shape[0]
    return GaussianScene(means, torch.tensor([1.0, 0, 0, 0]).expand(g, 4), torch.full((g, 3), -3.0),
                         torch.full((g,), 2.0), torch.zeros(g, 1, 3))  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [("z", (0, 0, 1)), ("+z", (0, 0, 1)), ("-y", (0, -1, 0)), ("X", (1, 0, 0)), ("0,0,2", (0, 0, 1)),
     ("0 3 4", (0, 0.6, 0.8))],
)  # fmt: skip
def test_parse_up(text: str, expected: tuple[float, float, float]) -> None:
    torch.testing.assert_close(parse_up(text), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("text", ["up", "--z", "0,0", "0,0,0", "1,2,nan"])
def test_parse_up_refuses_in_one_line(text: str) -> None:
    with pytest.raises(InputError, match="give an axis"):
        parse_up(text)


@pytest.mark.parametrize("up", [(0, 1, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0.3, -0.2, 0.9)])
def test_rotation_from_y_is_a_rotation_onto_up(up: tuple[float, float, float]) -> None:
    up_t = torch.tensor(up, dtype=torch.float64)
    rotation = rotation_from_y(up_t)
    torch.testing.assert_close(rotation @ torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), up_t / up_t.norm())
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(3, dtype=torch.float64))
    assert abs(float(torch.linalg.det(rotation)) - 1) < 1e-12


def test_a_rig_standing_on_z_sees_a_z_up_scene_as_the_y_rig_sees_it_upright() -> None:
    """Rotating the scene and standing the rig on the new up leaves every view (and so every render) as it was."""
    scene = make_demo_scene()
    centre, radius = scene.bounding_sphere()

    def rig(centre: torch.Tensor) -> Cameras:
        return Cameras.orbit_rig(centre, radius, num_azimuths=4, elevations_deg=(15.0,), top_views=1, size=(32, 32))

    up = UpAxis((0.0, 0.0, 1.0), "test")
    stood = stand_on(rig(Y_TO_Z @ centre), Y_TO_Z @ centre, up)  # a y-up rig around the turned scene, stood on z
    # World-to-camera of the turned rig applied to turned points equals the original's on the original points.
    points = scene.means[:50]
    ours = (stood.viewmats[:, :3, :3] @ (points @ Y_TO_Z.T).T + stood.viewmats[:, :3, 3:]).transpose(1, 2)
    upright = rig(centre)
    theirs = (upright.viewmats[:, :3, :3] @ points.T + upright.viewmats[:, :3, 3:]).transpose(1, 2)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert torch.equal(stand_on(upright, centre, UpAxis((0.0, 1.0, 0.0), "y")).c2w, upright.c2w)  # y up: unchanged
    torch.testing.assert_close(torch.tensor(up.front), torch.tensor([0.0, -1.0, 0.0]))  # azimuth 0: from -y


def test_the_users_choice_wins() -> None:
    assert estimate_up(ground_scene(torch.tensor([0.0, 0, 1])), override="-x") == UpAxis((-1.0, 0.0, 0.0), "--up")


@pytest.mark.parametrize(("orientation", "expected"), [("up", (0.0, 0.0, 1.0)), ("pca", (0.0, 0.0, 1.0))])
def test_a_splatfacto_run_oriented_by_its_dataparser_is_z_up(
    tmp_path: Path, orientation: str, expected: tuple[float, float, float]
) -> None:
    run = tmp_path / "outputs" / "garden" / "splatfacto" / "2026"
    (run / "nerfstudio_models").mkdir(parents=True)
    (run / "config.yml").write_text(
        f"pipeline:\n  datamanager:\n    dataparser:\n      orientation_method: {orientation}\n"
    )
    scene = ground_scene(torch.tensor([0.0, 1.0, 0.0]))  # its own shape would say y: the run's settings win
    for source in (run / "config.yml", run / "nerfstudio_models" / "step-000000999.ckpt", run):
        up = estimate_up(scene, source=source)
        assert up.up == expected and orientation in up.reason, source


@pytest.mark.parametrize("orientation", ["none", "up"])
def test_the_cameras_of_a_capture_come_first(tmp_path: Path, orientation: str) -> None:
    """A dataset's cameras share the scene's frame: they win over what the run's config says of its own frame."""
    (tmp_path / "config.yml").write_text(f"orientation_method: {orientation}\n")
    rig = Cameras.orbit_rig((0.0, 0.0, 0.0), 1.0, num_azimuths=6, elevations_deg=(20.0,), top_views=0)
    c2w = torch.eye(4).expand(6, 4, 4).clone()
    x_up = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # +y becomes +x
    c2w[:, :3] = torch.cat([x_up, torch.zeros(3, 1)], dim=1) @ rig.c2w  # the rig turned x up
    up = estimate_up(make_demo_scene(), source=tmp_path / "config.yml", c2w=c2w)
    assert up == UpAxis((1.0, 0.0, 0.0), "the cameras' mean up direction")


@pytest.mark.parametrize(("axis", "expected"), [("z", (0.0, 0.0, 1.0)), ("-y", (0.0, -1.0, 0.0))])
def test_an_ns_export_ply_names_its_vertical_axis(
    tmp_path: Path, axis: str, expected: tuple[float, float, float]
) -> None:
    path = make_demo_scene().save(tmp_path / "splat.ply")
    data = path.read_bytes()
    head, rest = data.split(b"\n", 2)[:2], data.split(b"\n", 2)[2]
    path.write_bytes(b"\n".join([*head, f"comment Vertical Axis: {axis}".encode(), rest]))
    up = estimate_up(GaussianScene.load(path), source=path)
    assert up.up == expected and "Vertical Axis" in up.reason


@pytest.mark.parametrize("up", [(0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (0.0, -1.0, 0.0), (0.6, 0.0, 0.8)])
def test_a_flat_scene_stands_on_its_dense_ground(up: tuple[float, float, float]) -> None:
    estimate = estimate_up(ground_scene(torch.tensor(up)))
    assert estimate.reason == "the scene's principal axes"
    assert math.degrees(math.acos(min(1.0, float(torch.tensor(estimate.up) @ torch.tensor(up))))) < 3


def test_a_round_object_gives_no_evidence() -> None:
    """A ball of Gaussians has no ground: y up, and the estimate says it is the default."""
    generator = torch.Generator().manual_seed(0)
    means = torch.nn.functional.normalize(torch.randn(2000, 3, generator=generator), dim=1)
    g = means.shape[0]
    ball = GaussianScene(means, torch.tensor([1.0, 0, 0, 0]).expand(g, 4), torch.full((g, 3), -3.0),
                         torch.zeros(g), torch.zeros(g, 1, 3))  # fmt: skip
    assert estimate_up(ball) == UpAxis((0.0, 1.0, 0.0), "no evidence: the default")
