"""The web viewers' `.splat` file: the 32-byte layout read back byte by byte, the export command, and bad input.

The reader in `decode` follows the published layout (what a web viewer does), not the writer's record type, so a
field written at the wrong offset, in the wrong order or with the wrong encoding fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sync_splat.cli import entrypoint
from sync_splat.errors import InputError
from sync_splat.functional.rotation import quat_to_rotmat
from sync_splat.functional.sh import SH_C0
from sync_splat.scene.gaussians import GaussianScene
from sync_splat.scene.splat_file import read_splat, write_splat


def random_scene(num_gaussians: int = 200, sh_degree: int = 1, seed: int = 0) -> GaussianScene:
    generator = torch.Generator().manual_seed(seed)
    return GaussianScene(
        means=torch.randn(num_gaussians, 3, generator=generator) * 3,
        quats_wxyz=torch.randn(num_gaussians, 4, generator=generator) * 2,  # unnormalised, as files store them
        log_scales=torch.randn(num_gaussians, 3, generator=generator) - 3,
        opacity_logits=torch.randn(num_gaussians, generator=generator) * 2,
        sh=torch.randn(num_gaussians, (sh_degree + 1) ** 2, 3, generator=generator),
    )


def decode(path: Path) -> dict[str, np.ndarray]:
    """A web viewer's reading of a .splat file: little-endian, 32 bytes per Gaussian."""
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8).reshape(-1, 32)
    floats = raw[:, :24].copy().view("<f4")
    return {
        "position": floats[:, 0:3],
        "scale": floats[:, 3:6],
        "rgb01": raw[:, 24:27] / 255.0,
        "alpha": raw[:, 27] / 255.0,
        "quat_wxyz": (raw[:, 28:32].astype(np.float64) - 128) / 128,
    }


def match(scene: GaussianScene, positions: np.ndarray) -> np.ndarray:
    """The scene index of each record, found by its (exact, float32) position."""
    index = {scene.means[i].numpy().tobytes(): i for i in range(scene.num_gaussians)}
    return np.array([index[p.tobytes()] for p in positions])


def test_every_field_reads_back_within_its_quantisation(tmp_path: Path) -> None:
    scene = random_scene()
    path = tmp_path / "scene.splat"
    assert write_splat(scene, path) == scene.num_gaussians
    assert path.stat().st_size == 32 * scene.num_gaussians
    fields = decode(path)
    order = match(scene, fields["position"])
    assert sorted(order.tolist()) == list(range(scene.num_gaussians))  # every Gaussian once

    np.testing.assert_allclose(fields["scale"], scene.log_scales.exp()[order].numpy(), rtol=1e-6)
    dc = (0.5 + SH_C0 * scene.sh[:, 0]).clamp(0, 1)[order].numpy()  # the view-independent colour
    assert np.abs(fields["rgb01"] - dc).max() <= 0.5 / 255 + 1e-6
    alpha = torch.sigmoid(scene.opacity_logits)[order].numpy()
    assert np.abs(fields["alpha"] - alpha).max() <= 0.5 / 255 + 1e-6

    unit = torch.nn.functional.normalize(scene.quats_wxyz, dim=-1)[order].numpy()
    assert np.abs(fields["quat_wxyz"] - unit).max() <= 1 / 128 + 1e-6
    # wxyz order, not xyzw: the decoded rotations are the scene's rotations.
    rotations = quat_to_rotmat(torch.from_numpy(fields["quat_wxyz"]).float())
    assert (rotations - quat_to_rotmat(scene.quats_wxyz)[order]).abs().max() < 0.05


def test_records_come_largest_and_most_opaque_first(tmp_path: Path) -> None:
    scene = random_scene()
    path = tmp_path / "scene.splat"
    write_splat(scene, path)
    order = match(scene, decode(path)["position"])
    importance = (scene.log_scales.sum(dim=-1).exp() * torch.sigmoid(scene.opacity_logits))[order]
    assert bool((importance[:-1] >= importance[1:]).all())
    assert not bool((importance[:-1] <= importance[1:]).all())  # the file order is not the input order by chance


def test_gaussians_with_non_finite_values_are_left_out(tmp_path: Path) -> None:
    scene = random_scene(num_gaussians=10)
    scene.means[2, 0] = float("nan")
    scene.log_scales[5, 1] = float("inf")
    scene.quats_wxyz[7] = 0.0  # no rotation at all
    path = tmp_path / "scene.splat"
    assert write_splat(scene, path) == 7
    order = match(scene, decode(path)["position"])
    assert sorted(order.tolist()) == [0, 1, 3, 4, 6, 8, 9]


def test_read_splat_returns_the_scene_within_quantisation(tmp_path: Path) -> None:
    scene = random_scene(sh_degree=0)
    path = tmp_path / "scene.splat"
    write_splat(scene, path)
    back = read_splat(path)
    order = match(scene, back.means.numpy())
    assert back.sh_degree == 0 and back.source == path
    torch.testing.assert_close(back.log_scales, scene.log_scales[order], rtol=0, atol=1e-5)
    assert (back.rgb01 - scene.rgb01[order]).abs().max() <= 0.5 / 255 + 1e-6
    alpha, expected = torch.sigmoid(back.opacity_logits), torch.sigmoid(scene.opacity_logits[order])
    assert (alpha - expected).abs().max() <= 0.5 / 255 + 1e-6
    assert (quat_to_rotmat(back.quats_wxyz) - quat_to_rotmat(scene.quats_wxyz[order])).abs().max() < 0.05


@pytest.mark.parametrize(
    ("size", "message"), [(0, "not a whole number"), (33, "not a whole number"), (None, "no such file")]
)
def test_read_splat_refuses_files_that_are_not_whole_records(tmp_path: Path, size: int | None, message: str) -> None:
    path = tmp_path / "bad.splat"
    if size is not None:
        path.write_bytes(bytes(size))
    with pytest.raises(InputError, match=message):
        read_splat(path)


def test_write_splat_refuses_another_extension(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.splat"):
        write_splat(random_scene(), tmp_path / "scene.ply")
    assert not (tmp_path / "scene.ply").exists()


def test_export_command_writes_both_formats_and_leaves_the_input_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    scene = random_scene(sh_degree=0)
    source = scene.save(tmp_path / "scene.ply")
    before = source.read_bytes()
    entrypoint(["export", str(source), "--format", "splat", "--out", str(tmp_path / "web.splat")])
    assert f"{scene.num_gaussians:,} of {scene.num_gaussians:,} Gaussians" in capsys.readouterr().out
    fields = decode(tmp_path / "web.splat")
    order = match(scene, fields["position"])
    np.testing.assert_allclose(fields["scale"], scene.log_scales.exp()[order].numpy(), rtol=1e-6)

    # Back from .splat to the standard PLY: the geometry and colours of the .splat file, in its order.
    entrypoint(["export", str(tmp_path / "web.splat"), "--out", str(tmp_path / "again.ply")])
    again = GaussianScene.load(tmp_path / "again.ply")
    assert torch.equal(again.means, scene.means[order])
    assert source.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "splat", "--out", "web.ply"], "must end in .splat"),
        (["--out", "web.txt"], "end in .ply or .splat"),
        (["--out", "exists.splat"], "already exists"),
    ],
)
def test_export_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    source = random_scene().save(tmp_path / "scene.ply")
    (tmp_path / "exists.splat").write_bytes(b"keep")
    args = [str(tmp_path / a) if a.startswith(("web", "exists")) else a for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "sync_splat.cli", "export", str(source), *args], capture_output=True, text=True
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert (tmp_path / "exists.splat").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.splat", "scene.ply"]
