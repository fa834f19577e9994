"""The `sync-splat` command line: the demo's outputs, restyling a real file, and one-line errors."""

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from plyfile import PlyData

from sync_splat.apps.run_record import RunRecord
from sync_splat.cli import entrypoint
from sync_splat.scene.gaussians import GaussianScene

FAST = ["--steps", "4", "--views", "4"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sync_splat.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_demo_writes_the_restyled_ply_the_views_and_a_turntable(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    entrypoint(["demo", "--out", str(out), *FAST, "--preview-size", "96"])
    scene = GaussianScene.load(out / "restyled.ply")
    from sync_splat.scene.demo import make_demo_scene

    source = make_demo_scene()
    assert torch.equal(scene.means, source.means) and torch.equal(scene.log_scales, source.log_scales)
    assert not torch.allclose(scene.rgb01, source.rgb01, atol=0.05)
    grid = iio.imread(out / "views.png")
    assert grid.shape == (2 * 96, 5 * 96, 3)  # two rows of five square views at the preview size
    frames = iio.imread(out / "turntable.gif", index=None)
    assert frames.shape[0] == 36
    assert sorted(p.name for p in out.iterdir()) == [
        "delivered.npz",
        "restyled.ply",
        "run.json",
        "turntable.gif",
        "views.png",
    ]
    record = RunRecord.load(out / "run.json")
    assert (record.kind, record.source, record.builtin_source) == ("demo", None, "demo")
    assert record.delivered_views().shape == (5, 3, 64, 64) and record.phases["calls"]["denoise"] == 4


@pytest.mark.slow
def test_restyle_the_mip_splatting_fixture_with_the_prior(tmp_path: Path, shared_fixture) -> None:
    donut = shared_fixture("donut_mipsplatting.ply")
    before = donut.read_bytes()
    out = tmp_path / "donut.ply"
    entrypoint(["restyle", str(donut), "--out", str(out), "--prompt", "wood", *FAST, "--preview-size", "128"])
    assert donut.read_bytes() == before
    source, restyled = GaussianScene.load(donut), GaussianScene.load(out)
    assert torch.equal(source.means, restyled.means) and torch.equal(source.quats_wxyz, restyled.quats_wxyz)
    names = [p.name for p in PlyData.read(str(out))["vertex"].properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert iio.imread(tmp_path / "donut_views.png").shape == (2 * 128, 5 * 128, 3)


def test_existing_outputs_are_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    result = run_cli("demo", "--out", str(out))
    assert result.returncode == 2
    assert "already exists" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["restyle", "missing.ply", "--out", "x.ply"], "missing.ply"),
        (["demo", "--prompt", "a purple unicorn"], "marble"),
        (["restyle", "missing.ply", "--out", "x.png"], ".ply"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path, args: list[str], message: str) -> None:
    args = [a if not a.endswith((".ply", ".png")) or a.startswith("missing") else str(tmp_path / a) for a in args]
    if args[0] == "demo":
        args += ["--out", str(tmp_path / "demo")]
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sync-splat: error:") and message in lines[0], result.stderr


def test_compact_ply_writes_degree_0_from_a_degree_3_source(tmp_path: Path) -> None:
    """The restyled colours are view-independent: --compact-ply drops the source's 45 all-zero f_rest columns,
    and without it the restyled file keeps the source's layout."""
    from dataclasses import replace

    from sync_splat.scene.demo import make_demo_scene

    demo = make_demo_scene()
    sh = torch.zeros(demo.num_gaussians, 16, 3)
    sh[:, :1] = demo.sh[:, :1]
    source = tmp_path / "degree3.ply"
    replace(demo, sh=sh).save(source)
    sizes = {}
    for name, flag in (("full", []), ("compact", ["--compact-ply"])):
        out = tmp_path / f"{name}.ply"
        entrypoint(["restyle", str(source), "--out", str(out), "--steps", "2", "--views", "2", *flag])
        rest = [p.name for p in PlyData.read(str(out))["vertex"].properties if p.name.startswith("f_rest_")]
        assert len(rest) == (0 if name == "compact" else 45)
        sizes[name] = out.stat().st_size
    assert sizes["full"] > 3 * sizes["compact"]
