"""Bad input at the `sync-splat` front doors: one line on stderr and a non-zero exit, before any work, and no output.

Each case runs the command the way a user would: `entrypoint([...])` in-process, or a subprocess where the case
could hang (a timeout then fails the test instead of CI) or needs a real signal (Ctrl-C, SIGKILL).
"""

from __future__ import annotations

import dataclasses
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from interrupts import ctrl_c_in_this_process, ctrl_c_reaches_the_child

from sync_splat.cli import entrypoint
from sync_splat.errors import INTERRUPTED_EXIT_STATUS, InputError, note_written, one_line_errors
from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.files import TEMP_MARK, atomic_output, staged_files
from sync_splat.scene.gaussians import GaussianScene

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "--views", "2"]
OVERFLOWING_OBJ = "v 0 0 0\nv 1e38 0 0\nv 0 1e38 0\nv 0 0 1e38\nf 1 2 3\nf 1 2 4\nf 1 3 4\n"
"""A tetrahedron whose coordinates overflow single-precision normals: xatlas used to loop on it forever."""


def one_error_line(capsys: pytest.CaptureFixture[str], args: list[str], status: int = 2) -> str:
    """Run `sync-splat args` in-process; assert it exits with `status` and one stderr line; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(args)
    assert exit_info.value.code == status
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def small_scene(**changes: torch.Tensor) -> GaussianScene:
    """Every tenth Gaussian of the demo scene, a little larger so the views stay solid; `changes` replace tensors."""
    scene = make_demo_scene()
    every = slice(None, None, 10)
    fields = ("means", "quats_wxyz", "log_scales", "opacity_logits", "sh")
    subset = {name: getattr(scene, name)[every] for name in fields}
    subset["log_scales"] = subset["log_scales"] + 0.8
    return dataclasses.replace(scene, **{**subset, **changes})


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if TEMP_MARK in p.name)


# ---- meshes xatlas cannot handle ------------------------------------------------------------------------------------


def test_a_mesh_whose_coordinates_overflow_is_refused_without_hanging(tmp_path: Path) -> None:
    mesh = tmp_path / "h.obj"
    mesh.write_text(OVERFLOWING_OBJ)
    out = tmp_path / "o"
    command = [sys.executable, "-m", "sync_splat.cli", "mesh", str(mesh), "--out", str(out), "--denoiser", "prior"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=cli_env())
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "h.obj" in lines[0] and "1e+38" in lines[0] and "rescale" in lines[0]
    assert not out.exists()


def test_xatlas_sees_very_large_and_very_small_meshes_at_unit_size() -> None:
    """Single-precision xatlas hangs on a tetrahedron 1e10 across and returns NaN UVs for one 1e-5 across."""
    code = (
        "import numpy as np, torch\n"
        "from sync_splat.scene.mesh import MeshAsset\n"
        "v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)\n"
        "f = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3]])\n"
        "for scale in (1e10, 1e-5):\n"
        "    mesh = MeshAsset.from_arrays(v * scale, f, uv_mode='xatlas')\n"
        "    assert torch.isfinite(mesh.face_uvs).all() and torch.isfinite(mesh.normals).all(), scale\n"
        "    assert torch.allclose(mesh.normals.norm(dim=-1), torch.ones(4)), scale\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=cli_env())
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n", "one point"),
        ("v 0 0 0\nv 1 0 0\nv 2 0 0\nv 3 0 0\nf 1 2 3\nf 2 3 4\n", "zero area"),
    ],
    ids=["one-point", "collinear"],
)
def test_a_mesh_without_surface_is_refused(tmp_path: Path, capsys, obj: str, message: str) -> None:
    mesh = tmp_path / "flat.obj"
    mesh.write_text(obj)
    line = one_error_line(capsys, ["mesh", str(mesh), "--out", str(tmp_path / "o")])
    assert "flat.obj" in line and message in line
    assert not (tmp_path / "o").exists()


# ---- where outputs go ------------------------------------------------------------------------------------------------


def front_doors(tmp_path: Path, out: Path) -> dict[str, list[str]]:
    """Every front door with an output under `out`, and inputs that would fail if they were read first."""
    missing = str(tmp_path / "missing")
    return {
        "restyle": ["restyle", missing + ".ply", "--out", str(out / "x.ply")],
        "demo": ["demo", "--out", str(out / "demo"), "--prompt", "no such preset"],
        "mesh": ["mesh", missing + ".obj", "--out", str(out / "mesh")],
        "panorama": ["panorama", "--out", str(out / "p.png"), "--depth", missing + ".npy"],
        "case-study": ["case-study", "--out", str(out / "study")],
    }


@pytest.mark.parametrize("door", ["restyle", "demo", "mesh", "panorama", "case-study"])
def test_an_out_under_a_file_is_refused_before_inputs_are_read(tmp_path: Path, capsys, door: str) -> None:
    blocker = tmp_path / "some_file.txt"
    blocker.write_text("not a folder")
    line = one_error_line(capsys, front_doors(tmp_path, blocker / "sub")[door])
    assert "--out" in line and f"{blocker} is a file, not a folder" in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("door", ["restyle", "demo", "mesh", "panorama", "case-study"])
def test_an_out_where_nothing_can_be_created_is_refused(tmp_path: Path, capsys, door: str) -> None:
    # /proc refuses new files even to root, unlike a chmod'ed folder.
    line = one_error_line(capsys, front_doors(tmp_path, Path("/proc/sync-splat-test"))[door])
    assert "--out" in line and "cannot create files in /proc" in line


# ---- settings -------------------------------------------------------------------------------------------------------


@pytest.fixture()
def scene_file(tmp_path: Path) -> Path:
    return small_scene().save(tmp_path / "scene.ply")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "1000000"], "--steps 1000000 is more than the denoiser's schedule allows: at most 1000 (its 1000"),
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--steps", "-4"], "--steps must be at least 1, got -4"),
        (["--fov-deg", "0"], "--fov-deg must be in (0, 180)"),
        (["--fov-deg", "180"], "--fov-deg must be in (0, 180)"),
        (["--views", "-3"], "--views must be at least 1, got -3"),
        (["--sync-until", "2"], "--sync-until must be in [0, 1]"),
        (["--case", "9"], "--case 9 does not exist"),
        (["--seed", str(2**64)], f"--seed must be an integer from 0 to {2**64 - 1}"),
        (["--seed", "-1"], f"--seed must be an integer from 0 to {2**64 - 1}"),
    ],
)
def test_restyle_settings_are_checked_and_named(tmp_path: Path, capsys, scene_file: Path, flags, message) -> None:
    out = tmp_path / "out.ply"
    line = one_error_line(capsys, ["restyle", str(scene_file), "--out", str(out), *flags])
    assert line.startswith("sync-splat: error: --") and message in line
    assert not out.exists() and hidden_leftovers(tmp_path) == []


def test_restyle_config_checks_its_fields_when_built() -> None:
    from sync_splat.apps.restyle import MAX_VIEWS, RestyleConfig
    from sync_splat.apps.settings import MAX_SEED

    for bad in ({"views": 0}, {"views": MAX_VIEWS + 1}, {"fov_deg": -10.0}, {"steps": 0}, {"seed": MAX_SEED + 1}):
        with pytest.raises(InputError):
            RestyleConfig(**bad)
    assert RestyleConfig(views=MAX_VIEWS, seed=MAX_SEED).views == MAX_VIEWS


@pytest.mark.timeout(300)  # without the limit the run goes on for hours: fail instead of hanging the suite
def test_too_many_views_are_refused_with_the_work_they_would_take(tmp_path: Path, capsys) -> None:
    """A hundred thousand views used to run for minutes without a word; the refusal names the limit and the cost."""
    scene = small_scene().save(tmp_path / "scene.ply")
    line = one_error_line(capsys, ["restyle", str(scene), "--out", str(tmp_path / "o.ply"), "--views", "100000"])
    assert "at most 360" in line and f"{100_001 * 30:,} view passes" in line


def test_the_largest_seed_runs(tmp_path: Path, capsys) -> None:
    """2**64 - 1 is the last seed torch takes; one more used to end in an overflow traceback when sampling began."""
    out = tmp_path / "p.png"
    entrypoint(["panorama", "--out", str(out), "--steps", "2", "--seed", str(2**64 - 1)])
    assert out.is_file()


@pytest.mark.parametrize(
    ("door", "flags", "message"),
    [
        ("restyle", ["--fit.damping", "nan"], "damping=nan: these settings must be finite and non-negative"),
        ("mesh", ["--bridge.view-size", "0"], "view_size must be at least 1"),
        ("panorama", ["--view-size", "0"], "view_size must be at least 1, got 0"),
    ],
)
def test_settings_of_the_bridges_are_refused_before_any_work(
    tmp_path: Path, capsys, scene_file: Path, door: str, flags: list[str], message: str
) -> None:
    mesh = tmp_path / "tri.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    out = tmp_path / "out"
    args = {
        "restyle": ["restyle", str(scene_file), "--out", str(out / "x.ply")],
        "mesh": ["mesh", str(mesh), "--out", str(out)],
        "panorama": ["panorama", "--out", str(out / "p.png")],
    }[door]
    line = one_error_line(capsys, [*args, *flags])
    assert message in line
    assert not out.exists() and hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--seeds", "0"], "--seeds must be at least 1"), (["--size", "0"], "--size must be at least 8")],
)
def test_case_study_settings_are_refused_before_its_folder_is_made(tmp_path: Path, capsys, flags, message) -> None:
    out = tmp_path / "study"
    line = one_error_line(capsys, ["case-study", "--out", str(out), *flags])
    assert message in line
    assert list(tmp_path.iterdir()) == []


# ---- input files ---------------------------------------------------------------------------------------------------


def test_an_obj_face_with_index_zero_is_refused_naming_the_line(tmp_path: Path, capsys) -> None:
    mesh = tmp_path / "zero.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 3\nf 2 4 0\n")
    out = tmp_path / "o"
    line = one_error_line(capsys, ["mesh", str(mesh), "--out", str(out)])
    assert "zero.obj: line 6 ('f 2 4 0')" in line and "index 0" in line and "start at 1" in line
    assert not out.exists()


def test_a_ply_with_utf8_comments_restyles(tmp_path: Path, capsys) -> None:
    plain = small_scene().save(tmp_path / "plain.ply").read_bytes()
    scene = tmp_path / "commented.ply"
    scene.write_bytes(plain.replace(b"ply\n", "ply\ncomment Scène exportée par Blender – 日本\n".encode(), 1))
    out = tmp_path / "out.ply"
    entrypoint(["restyle", str(scene), "--out", str(out), *FAST])
    assert GaussianScene.load(out).num_gaussians == small_scene().num_gaussians
    assert "error" not in capsys.readouterr().err


def test_a_checkpoint_of_random_bytes_is_not_a_checkpoint(tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    line = one_error_line(capsys, ["restyle", str(checkpoint), "--out", str(tmp_path / "o.ply")])
    assert "model.ckpt" in line and "not a PyTorch checkpoint" in line and "Python objects" not in line


@pytest.mark.slow
def test_an_offline_model_that_is_not_cached_is_the_only_line(tmp_path: Path) -> None:
    """Offline, huggingface_hub warns and diffusers logs before the failure; the user sees only the error line."""
    scene = small_scene().save(tmp_path / "scene.ply")
    command = [sys.executable, "-m", "sync_splat.cli", "restyle", str(scene), "--out", str(tmp_path / "o.ply")]
    command += ["--denoiser", "sd", "--sd.model", "sync-splat-tests/no-such-model", *FAST]
    env = {**cli_env(), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "always"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "sync-splat-tests/no-such-model" in lines[0] and "--denoiser prior" in lines[0]


# ---- depth maps ------------------------------------------------------------------------------------------------------


def test_an_empty_npy_depth_map_is_one_line(tmp_path: Path, capsys) -> None:
    depth = tmp_path / "empty.npy"
    depth.touch()
    line = one_error_line(capsys, ["panorama", "--depth", str(depth), "--out", str(tmp_path / "p.png")])
    assert "empty.npy" in line and "empty" in line.split("empty.npy", 1)[1]


def test_an_npy_header_claiming_more_than_the_file_holds_is_refused_unread(tmp_path: Path, capsys) -> None:
    depth = tmp_path / "huge.npy"
    with depth.open("wb") as stream:  # a 74.5 GiB float32 array by its header, 100 bytes of data
        header = {"descr": "<f4", "fortran_order": False, "shape": (100_000, 200_000)}
        np.lib.format.write_array_header_1_0(stream, header)
        stream.write(b"\0" * 100)
    line = one_error_line(capsys, ["panorama", "--depth", str(depth), "--out", str(tmp_path / "p.png")])
    assert "huge.npy" in line and "truncated" in line and "(100000, 200000)" in line


# ---- scenes no view can see ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["huge-scales", "far-away"])
def test_a_scene_no_view_sees_is_refused(tmp_path: Path, capsys, change: str) -> None:
    scene = small_scene()
    if change == "huge-scales":
        scene = dataclasses.replace(scene, log_scales=torch.full_like(scene.log_scales, 60.0))
    else:
        scene = dataclasses.replace(scene, means=scene.means * 1e30)
    path = scene.save(tmp_path / "scene.ply")
    out = tmp_path / "out.ply"
    line = one_error_line(capsys, ["restyle", str(path), "--out", str(out), *FAST])
    assert "scene.ply" in line and "no view sees the scene" in line and "check" in line
    assert not out.exists() and hidden_leftovers(tmp_path) == []


def test_a_one_gaussian_scene_names_the_scene_not_the_rig(tmp_path: Path, capsys) -> None:
    scene = small_scene()
    one = dataclasses.replace(
        scene, means=scene.means[:1], quats_wxyz=scene.quats_wxyz[:1], log_scales=scene.log_scales[:1],
        opacity_logits=scene.opacity_logits[:1], sh=scene.sh[:1],
    )  # fmt: skip
    path = one.save(tmp_path / "one.ply")
    line = one_error_line(capsys, ["restyle", str(path), "--out", str(tmp_path / "out.ply"), *FAST])
    assert "one.ply" in line and "the scene's Gaussians all sit at one point (radius 0" in line
    assert "orbit_rig" not in line


# ---- Ctrl-C ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_during_a_run_is_one_line_exit_130_and_leaves_nothing(tmp_path: Path) -> None:
    scene = small_scene().save(tmp_path / "scene.ply")
    out = tmp_path / "out" / "restyled.ply"
    command = [sys.executable, "-m", "sync_splat.cli", "restyle", str(scene), "--out", str(out)]
    command += ["--steps", "900", "--views", "2"]
    # On a terminal the progress bar shows when sampling runs; wait for it, then press Ctrl-C.
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE, text=True,
        env={**cli_env(), "TERM": "xterm"}, preexec_fn=ctrl_c_reaches_the_child,
    )  # fmt: skip
    os.close(terminal)
    shown, deadline = b"", time.monotonic() + 300
    try:
        while b"restyling" not in shown:
            assert time.monotonic() < deadline and process.poll() is None, shown.decode(errors="replace")
            if select.select([controller], [], [], 1.0)[0]:
                shown += os.read(controller, 4096)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
        os.close(controller)
    assert process.returncode == INTERRUPTED_EXIT_STATUS
    assert stderr.strip().splitlines() == ["sync-splat: interrupted; nothing was written"]
    assert not out.exists() and not out.parent.exists() and hidden_leftovers(tmp_path) == []


def test_an_interrupt_after_some_outputs_names_them(tmp_path: Path, capsys) -> None:
    done = tmp_path / "done.png"
    with pytest.raises(SystemExit) as exit_info, one_line_errors("sync-splat"):
        note_written(done)
        raise KeyboardInterrupt
    assert exit_info.value.code == INTERRUPTED_EXIT_STATUS
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(done) in lines[0] and "interrupted" in lines[0]


def test_ctrl_c_while_a_set_is_written_leaves_none_of_it(tmp_path: Path) -> None:
    first, second = tmp_path / "a.ply", tmp_path / "a_views.png"
    with ctrl_c_in_this_process(), pytest.raises(KeyboardInterrupt), staged_files(first, second) as (first_tmp, _):
        first_tmp.write_bytes(b"complete")
        os.kill(os.getpid(), signal.SIGINT)  # delivered here, in the main thread, as a KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# ---- file modes and stale temporaries -------------------------------------------------------------------------------


def test_outputs_get_the_umask_mode_and_stale_temporaries_are_cleaned(tmp_path: Path, capsys) -> None:
    scene = small_scene().save(tmp_path / "scene.ply")
    out, grid = tmp_path / "out" / "x.ply", tmp_path / "out" / "x_views.png"
    # A process killed while it wrote this very output leaves its staged temporaries behind.
    killed = (
        "import os, signal, sys\n"
        "from sync_splat.scene.files import atomic_output, staged_files\n"
        "with staged_files(sys.argv[1], sys.argv[2]) as (ply, png), atomic_output(ply) as tmp:\n"
        "    tmp.write_bytes(b'half a scene')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", killed, str(out), str(grid)], env=cli_env(), timeout=120)
    assert result.returncode == -signal.SIGKILL
    stale = hidden_leftovers(tmp_path)
    assert stale and all(name.startswith(".x.ply" + TEMP_MARK) for name in stale)
    previous = os.umask(0o027)
    try:
        entrypoint(["restyle", str(scene), "--out", str(out), *FAST])
    finally:
        os.umask(previous)
    assert GaussianScene.load(out).num_gaussians == small_scene().num_gaussians
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and stat.S_IMODE(grid.stat().st_mode) == 0o640
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.ply", "x_delivered.npz", "x_run.json", "x_views.png"]
    assert hidden_leftovers(tmp_path) == []


def test_a_single_atomic_write_gets_the_umask_mode(tmp_path: Path) -> None:
    previous = os.umask(0o002)
    try:
        with atomic_output(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o664
