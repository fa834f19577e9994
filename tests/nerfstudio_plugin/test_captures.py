"""A capture as users have them (`write_capture`: a lens with distortion, 512 x 512 photos, `sparse_pc.ply`, a camera
path from nerfstudio's viewer): the views are rendered with the cameras of the undistorted photos, and
`ns-train sync-splat`, `ns-render camera-path` and `ns-viewer` run on it as a user runs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import free_port
from conftest import (
    CAPTURE_SIZE,
    FRAME_AS_IS,
    PATH_SIZE,
    assert_restyled,
    ns_command,
    ns_train_command,
    running,
    subprocess_env,
    talk_to_viewer,
    tiny_scene,
    train_in_process,
    wait_for_http,
    write_dataset,
)

from sync_splat.apps.restyle import render_rgb
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.frames import transform_scene
from sync_splat.scene.gaussians import GaussianScene

STEPS = 3
VIEWS = 3
needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None,
    reason="no ffmpeg, which ns-render needs (`make test` installs Debian's ffmpeg when run as root)",
)


def pinhole(cameras, views: list[int]) -> Cameras:
    """Some of a set of nerfstudio cameras as this project's pinhole cameras (their distortion ignored)."""
    cameras = cameras[torch.tensor(views)]
    return Cameras.from_nerfstudio(
        cameras.camera_to_worlds, cameras.fx, cameras.fy, cameras.cx, cameras.cy, cameras.width, cameras.height
    )


def run_args(capture: dict[str, Path]) -> list[str]:
    """`ns-train sync-splat` on the capture as a user runs it: a 3DGS PLY in the frame of the capture's
    transforms.json, the prior, few steps and small views."""
    return [
        "--pipeline.source", str(capture["ply"]), "--pipeline.source-frame", "transforms", "--pipeline.denoiser",
        "prior", "--prompt", "wood", "--pipeline.steps", str(STEPS), "--pipeline.views", str(VIEWS),
        "--pipeline.resolution", "64", "--data", str(capture["data"]),
    ]  # fmt: skip


def test_views_are_picked_from_the_capture_and_rendered_undistorted(tmp_path: Path, capture: dict[str, Path]) -> None:
    """The views to restyle stand where some of the capture's cameras stand, with the pinhole cameras nerfstudio
    gives the photos it undistorts for splatfacto; the source, moved into the dataset's frame and rendered with
    those, is what the undistorted photos show."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from nerfstudio_plugin.frames import source_transform

    # nerfstudio reads the capture as a capture: the lens, and the sparse points.
    points = NerfstudioDataParserConfig(data=capture["data"], load_3D_points=True).setup().get_dataparser_outputs()
    assert len(points.metadata["points3D_xyz"]) == GaussianScene.load(capture["ply"]).num_gaussians
    seen = {}
    train_in_process(tmp_path, *run_args(capture), "--max-num-iterations", "1",
                     during=lambda pipeline, step: seen.setdefault("pipeline", pipeline))  # fmt: skip
    datamanager = seen["pipeline"].datamanager
    every = torch.arange(len(datamanager.train_dataset))  # indexing copies: nerfstudio undistorts cameras in place
    distorted = datamanager.train_dataset.cameras[every]
    assert distorted.distortion_params is not None and distorted.distortion_params.abs().sum() > 0
    cameras = datamanager.pinhole_train_cameras()[every]

    views = seen["pipeline"]._instance_cameras()
    everywhere = pinhole(cameras, every.tolist())
    nearest = torch.cdist(views.c2w[:, :3, 3], everywhere.c2w[:, :3, 3]).min(dim=1)
    assert len(views) == VIEWS and len(set(nearest.indices.tolist())) == VIEWS
    torch.testing.assert_close(views.c2w, everywhere.c2w[nearest.indices])  # standing where capture cameras stand
    fov = everywhere.Ks[0, 0, 0] / everywhere.width  # of the undistorted photos
    torch.testing.assert_close(views.Ks[:, 0, 0] / views.width, fov.expand(VIEWS))

    photos = datamanager.cached_train  # nerfstudio undistorts the photos and sets its cameras to match
    undistorted = datamanager.train_dataset.cameras
    for name in ("fx", "fy", "cx", "cy", "width", "height"):
        torch.testing.assert_close(getattr(cameras, name), getattr(undistorted, name), rtol=0, atol=1e-4)
    assert int(cameras.width[0]) < CAPTURE_SIZE  # cropped to where the undistorted photo has pixels
    assert datamanager.pinhole_train_cameras() is undistorted  # once nerfstudio has undistorted, not again

    scene = transform_scene(GaussianScene.load(capture["ply"]), *source_transform(datamanager, "transforms"))
    some = [0, 3]
    shown = torch.stack([photos[i]["image"] for i in some]).permute(0, 3, 1, 2)
    error = (render_rgb(scene, pinhole(cameras, some)) - shown).abs().mean()
    assert error < 0.003  # about 0.0006: the photos went through two resamplings
    # The lens matters: the photos as taken are not pinhole renders with the capture's own intrinsics.
    taken = torch.stack([datamanager.train_dataset[i]["image"] for i in some]).permute(0, 3, 1, 2)
    assert (render_rgb(scene, pinhole(distorted, some)) - taken).abs().mean() > 5 * error  # about 14 times


@pytest.fixture(scope="module")
def capture_run(tmp_path_factory: pytest.TempPathFactory, capture: dict[str, Path]) -> Path:
    """The `ns-train sync-splat` console script on the capture (`run_args`)."""
    output = tmp_path_factory.mktemp("capture_run")
    done = subprocess.run(
        ns_train_command(output, *run_args(capture)), env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return output / "test" / "sync-splat" / "run"


@pytest.mark.slow
def test_ns_train_restyles_a_capture(capture_run: Path, capture: dict[str, Path]) -> None:
    assert_restyled(capture_run / "restyled.ply", capture["ply"])


def decode_video(path: Path, width: int, height: int) -> np.ndarray:
    """The frames of a video, `[N, H, W, 3]` uint8, decoded by ffmpeg."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


@needs_ffmpeg
@pytest.mark.slow
def test_ns_render_renders_the_capture_camera_path(capture_run: Path, capture: dict[str, Path], tmp_path: Path) -> None:
    """The video of the capture's camera path (made in the viewer, so in the dataparser's frame) shows the restyled
    scene: each frame is the restyled colours' render from its camera, not the source colours'."""
    import json

    from nerfstudio.cameras.camera_paths import get_path_from_json
    from nerfstudio.utils.eval_utils import eval_setup

    path_file = capture["data"] / "camera_paths" / "path.json"
    video = tmp_path / "path.mp4"
    command = ns_command(
        "ns-render", "camera-path", "--load-config", str(capture_run / "config.yml"),
        "--camera-path-filename", str(path_file), "--output-path", str(video),
    )  # fmt: skip
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    frames = torch.from_numpy(decode_video(video, *PATH_SIZE).copy()).permute(0, 3, 1, 2) / 255.0
    path = json.loads(path_file.read_text())
    assert len(frames) == len(path["camera_path"])

    _, pipeline, _, _ = eval_setup(capture_run / "config.yml", test_mode="inference")
    cameras = get_path_from_json(path)
    cameras = pinhole(cameras, list(range(len(cameras))))
    restyled, source = pipeline.model.to_scene(), pipeline._source  # in the dataset's frame
    # Compared where the scene is opaque (its render is the same over black and white): the video's background is
    # the model's, not white.
    opaque = (render_rgb(restyled, cameras, 0.0) - render_rgb(restyled, cameras, 1.0)).abs().amax(1) < 0.05
    assert opaque.float().mean() > 0.1  # the path looks at the scene
    error = (frames - render_rgb(restyled, cameras)).abs().amax(1)[opaque].mean()  # about 0.04: the video is lossy
    assert error < 0.08 and (frames - render_rgb(source, cameras)).abs().amax(1)[opaque].mean() > 4 * error


@pytest.mark.slow
def test_ns_viewer_shows_the_finished_run(capture_run: Path, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "ns-viewer.log"
    command = ns_command(
        "ns-viewer", "--load-config", str(capture_run / "config.yml"), "--viewer.websocket-port", str(port)
    )
    with running(command, log) as process:
        wait_for_http(f"http://127.0.0.1:{port}/", process, log, timeout=150)
        complete = f"{STEPS} / {STEPS} (complete)".encode()
        gui, render = talk_to_viewer(f"ws://127.0.0.1:{port}", [b"Denoising step", complete], timeout=60)
        assert complete in gui and b"Restart sampling" in gui
        assert b"BackgroundImageMessage" in render  # the run's model rendered the client's view
        assert "Traceback" not in log.read_text()


def test_a_capture_of_panoramas_is_refused_in_one_line(
    tmp_path: Path, scene_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Views are rendered by a pinhole renderer: equirectangular cameras have no pinhole equivalent."""
    data = write_dataset(tiny_scene(), tmp_path / "panoramas", camera_model="EQUIRECTANGULAR")
    with pytest.raises(SystemExit) as exit_info:
        train_in_process(tmp_path, "--pipeline.source", str(scene_files["ply"]), "--pipeline.denoiser", "prior",
                         "--data", str(data), *FRAME_AS_IS)  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "sync-splat: error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "cameras of type EQUIRECTANGULAR" in lines[0] and "a capture of perspective or fisheye cameras" in lines[0]
