"""Fixtures for the nerfstudio plugin: a tiny scene as every kind of source, a tiny nerfstudio dataset of it, a
capture laid out as users have them, and ways to run `ns-train sync-splat` (the tiny SD models are
tests/conftest.py's `tiny_sd`).

Everything is generated in code. The scene is a thinned copy of the demo teapot (a few hundred Gaussians, made
larger so the surfaces stay closed); the dataset is its renders from an orbit rig, 64 x 64 PNGs with a
`transforms.json` whose poses are used as they are (the dataparser's orientation, centring and scaling are
turned off), so the scene and the dataset share one frame, as a splatfacto run and its dataset do. The capture
(`write_capture`) is what `ns-process-data` leaves and what GaussCtrl's released captures hold: 512 x 512 photos
taken through a lens with distortion (OPENCV k1 k2 p1 p2), `applied_transform`, `sparse_pc.ply`, and a camera path
made in nerfstudio's viewer, which lives in the dataparser's frame.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from tiny_scene import tiny_scene
from tiny_sd import TinySDPaths

from sync_splat.apps.restyle import render_rgb
from sync_splat.scene.cameras import OPENGL_TO_OPENCV, Cameras
from sync_splat.scene.gaussians import GaussianScene
from sync_splat.scene.ply import ply_property_names

IMAGE_SIZE = 64
NUM_IMAGES = 6
# Poses are taken as written, so the scene's frame is the dataset's frame (a dataparser subcommand: it comes last).
FRAME_AS_IS = [
    "nerfstudio-data", "--orientation-method", "none", "--center-method", "none", "--auto-scale-poses", "False",
]  # fmt: skip


def dataset_cameras(scene: GaussianScene) -> Cameras:
    centre, radius = scene.bounding_sphere()
    return Cameras.orbit_rig(
        centre, radius, num_azimuths=NUM_IMAGES, elevations_deg=(20.0,), top_views=0, fov_deg=55.0,
        size=(IMAGE_SIZE, IMAGE_SIZE),
    )  # fmt: skip


def write_dataset(
    scene: GaussianScene,
    root: Path,
    cameras: Cameras | None = None,
    distortion: dict[str, float] | None = None,
    first_index: int = 0,
    **extra: Any,
) -> Path:
    """A nerfstudio dataset of `scene`: PNG renders and transforms.json (OpenGL camera-to-world poses).

    Args:
        cameras: the pinhole cameras of the photos (sharing one K); `dataset_cameras(scene)` by default.
        distortion: OPENCV `k1 k2 p1 p2`: the photos are the renders seen through that lens (`distorted_renders`).
        first_index: the number of the first image file (`ns-process-data` counts from 1).
        extra: more top-level entries of transforms.json.
    """
    cameras = dataset_cameras(scene) if cameras is None else cameras
    images = render_rgb(scene, cameras) if distortion is None else distorted_renders(scene, cameras, distortion)
    (root / "images").mkdir(parents=True)
    frames = []
    for i, (image, c2w) in enumerate(zip(images, cameras.c2w, strict=True)):
        name = f"images/frame_{i + first_index:05d}.png"
        pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        iio.imwrite(root / name, np.ascontiguousarray(pixels))
        c2w_opengl = c2w @ OPENGL_TO_OPENCV  # the flip is its own inverse
        frames.append({"file_path": name, "transform_matrix": c2w_opengl.tolist()})
        if distortion is not None:
            frames[-1]["colmap_im_id"] = i + first_index
    K = cameras.Ks[0]
    transforms = {
        "w": cameras.width, "h": cameras.height,
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        **(distortion or {}), "camera_model": "OPENCV", "frames": frames, **extra,
    }  # fmt: skip
    (root / "transforms.json").write_text(json.dumps(transforms, indent=2))
    return root


def distorted_renders(scene: GaussianScene, cameras: Cameras, distortion: dict[str, float]) -> torch.Tensor:
    """`[N, 3, H, W]` photos of `scene` through pinhole cameras `cameras` with OPENCV lens distortion: each photo
    pixel looks along the ray OpenCV undistorts it to, sampled from a wider pinhole render (at half the size: the
    tiny scene is smooth, and rendering is what takes the time)."""
    import cv2

    K = cameras.Ks[0].double().numpy()
    coefficients = np.array([distortion[name] for name in ("k1", "k2", "p1", "p2")])
    columns, rows = np.meshgrid(np.arange(cameras.width), np.arange(cameras.height))
    pixels = np.stack([columns, rows], axis=-1).reshape(-1, 1, 2).astype(np.float64)
    K_opencv = K.copy()
    K_opencv[:2, 2] -= 0.5  # OpenCV puts pixel centres at whole numbers, this project at halves
    rays = cv2.undistortPoints(pixels, K_opencv, coefficients).reshape(cameras.height, cameras.width, 2)
    width, height = cameras.width // 2, cameras.height // 2
    half = np.array([width, height]) / 2
    focal = 0.95 * float(np.min(half / np.abs(rays).reshape(-1, 2).max(axis=0)))  # every ray inside the render
    K_wide = torch.tensor([[focal, 0.0, half[0]], [0.0, focal, half[1]], [0.0, 0.0, 1.0]])
    wide = Cameras(cameras.c2w, K_wide.expand(len(cameras), 3, 3).clone(), width, height)
    maps = (rays * focal + half - 0.5).astype(np.float32)
    photos = []
    for render in render_rgb(scene, wide).permute(0, 2, 3, 1).numpy():
        photo = cv2.remap(render, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        photos.append(torch.from_numpy(photo).permute(2, 0, 1))
    return torch.stack(photos)


CAPTURE_SIZE = 512
CAPTURE_IMAGES = 8
CAPTURE_DISTORTION = {"k1": -0.12, "k2": 0.02, "p1": 0.002, "p2": -0.001}
# What ns-process-data records as applied to COLMAP's frame (axes swapped, z flipped).
APPLIED_TRANSFORM = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0]]
PATH_SIZE = (48, 32)
"""The camera path's render size (width, height): small, so ns-render is quick."""


def write_capture(scene: GaussianScene, root: Path) -> Path:
    """A capture as users have them, with `scene` in the frame of its transforms.json: `CAPTURE_IMAGES` 512 x 512
    photos through a distorting lens (OPENCV), `applied_transform`, `sparse_pc.ply` (points on the scene) and
    `camera_paths/path.json` as nerfstudio's viewer writes it (keyframes and the path, in the dataparser's frame)."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from plyfile import PlyData, PlyElement

    centre, radius = scene.bounding_sphere()
    cameras = Cameras.orbit_rig(
        centre, radius, num_azimuths=CAPTURE_IMAGES, elevations_deg=(25.0,), top_views=0, fov_deg=50.0,
        size=(CAPTURE_SIZE, CAPTURE_SIZE),
    )  # fmt: skip
    write_dataset(
        scene, root, cameras, CAPTURE_DISTORTION, first_index=1, applied_transform=APPLIED_TRANSFORM,
        ply_file_path="sparse_pc.ply",
    )  # fmt: skip
    points = np.empty(scene.num_gaussians, [(c, "f4") for c in "xyz"] + [(c, "u1") for c in ("red", "green", "blue")])
    for axis, name in enumerate("xyz"):
        points[name] = scene.means[:, axis].numpy()
    for channel, name in enumerate(("red", "green", "blue")):
        points[name] = (scene.rgb01[:, channel] * 255).round().numpy()
    PlyData([PlyElement.describe(points, "vertex")]).write(str(root / "sparse_pc.ply"))

    # The path a user would make in the viewer: keyframes at a few of the training cameras (the dataparser's frame).
    train = NerfstudioDataParserConfig(data=root).setup().get_dataparser_outputs("train").cameras
    c2w = torch.cat([train.camera_to_worlds, torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]).expand(len(train), 1, 4)], 1)
    fov = math.degrees(2 * math.atan(CAPTURE_SIZE / 2 / float(train.fy[0])))
    poses = [c2w[i].flatten().tolist() for i in range(0, len(train), 2)]
    path = {
        "default_fov": fov, "default_transition_sec": 1.0, "camera_type": "perspective",
        "render_width": PATH_SIZE[0], "render_height": PATH_SIZE[1], "fps": 2, "seconds": len(poses) / 2,
        "is_cycle": False, "smoothness_value": 0.5,
        "keyframes": [
            {"matrix": pose, "fov": fov, "aspect": 1.0, "override_transition_enabled": False,
             "override_transition_sec": None} for pose in poses
        ],
        "camera_path": [{"camera_to_world": pose, "fov": fov, "aspect": PATH_SIZE[0] / PATH_SIZE[1]} for pose in poses],
    }  # fmt: skip
    (root / "camera_paths").mkdir()
    (root / "camera_paths" / "path.json").write_text(json.dumps(path, indent=2))
    return root


def write_splatfacto_run(scene: GaussianScene, output_dir: Path) -> Path:
    """A splatfacto run as `ns-train splatfacto` leaves it: `config.yml` (splatfacto's datamanager and nerfstudio's
    dataparser, whose default orientation turns the frame z up) and `nerfstudio_models/step-*.ckpt`.

    Returns the run's config.yml.
    """
    from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.models.splatfacto import SplatfactoModelConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

    pipeline = VanillaPipelineConfig(
        datamanager=FullImageDatamanagerConfig(dataparser=NerfstudioDataParserConfig(load_3D_points=True)),
        model=SplatfactoModelConfig(sh_degree=scene.sh_degree),
    )
    config = TrainerConfig(
        method_name="splatfacto", experiment_name="data", output_dir=output_dir, timestamp="run", pipeline=pipeline
    )
    config.save_config()
    write_splatfacto_checkpoint(scene, config.get_checkpoint_dir() / "step-000000999.ckpt")
    return config.get_base_dir() / "config.yml"


def write_splatfacto_checkpoint(scene: GaussianScene, path: Path) -> Path:
    """A checkpoint laid out as splatfacto's (degree-0 models keep logit colours in features_dc)."""
    rgb01 = scene.rgb01.clamp(1e-4, 1 - 1e-4)
    state = {
        "_model.gauss_params.means": scene.means,
        "_model.gauss_params.scales": scene.log_scales,
        "_model.gauss_params.quats": scene.quats_wxyz,
        "_model.gauss_params.opacities": scene.opacity_logits[:, None],
        "_model.gauss_params.features_dc": torch.logit(rgb01),
        "_model.gauss_params.features_rest": scene.sh[:, 1:],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 999, "pipeline": state}, path)
    return path


def assert_restyled(ply: Path, source: Path) -> GaussianScene:
    """`ply` is a standard 3DGS PLY with the source's geometry bit for bit and new colours."""
    from plyfile import PlyData

    vertex = PlyData.read(str(ply))["vertex"]
    restyled, original = GaussianScene.load(ply), GaussianScene.load(source)
    assert [p.name for p in vertex.properties] == ply_property_names(restyled.sh_degree)
    assert vertex.count == original.num_gaussians
    for name in ("means", "quats_wxyz", "log_scales", "opacity_logits"):
        assert torch.equal(getattr(restyled, name), getattr(original, name)), name
    assert torch.count_nonzero(restyled.sh[:, 1:]) == 0  # view-independent colours
    assert (restyled.rgb01 - original.rgb01).abs().mean() > 0.02  # the colours did change
    return restyled


@pytest.fixture(scope="session")
def scene_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny scene as each kind of --pipeline.source ("ply", "ckpt", "config": a splatfacto run's config.yml),
    and a nerfstudio dataset of it ("data")."""
    root = tmp_path_factory.mktemp("scene")
    scene = tiny_scene()
    ply = scene.save(root / "source.ply")
    config = write_splatfacto_run(GaussianScene.load(ply), root / "outputs")
    (ckpt,) = (config.parent / "nerfstudio_models").glob("step-*.ckpt")
    return {"ply": ply, "ckpt": ckpt, "config": config, "data": write_dataset(scene, root / "data")}


@pytest.fixture(scope="session")
def capture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A capture as users have them (`write_capture`, "data") and the tiny scene in its transforms.json's frame
    ("ply"), as a 3DGS trainer that reads transforms.json leaves it."""
    root = tmp_path_factory.mktemp("capture")
    scene = tiny_scene()
    return {"ply": scene.save(root / "point_cloud.ply"), "data": write_capture(scene, root / "garden")}


def subprocess_env() -> dict[str, str]:
    """Offline, no torch compiler, one thread per op (the tiny models gain nothing from more)."""
    env = dict(os.environ)
    env.update(TORCHDYNAMO_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def ns_train_args(output_dir: Path, *args: str, vis: str = "tensorboard") -> list[str]:
    """`ns-train sync-splat ARGS` on the CPU, logging to tensorboard only by default, writing under `output_dir`."""
    return [
        "sync-splat", "--machine.device-type", "cpu", "--vis", vis, "--output-dir", str(output_dir),
        "--experiment-name", "test", "--timestamp", "run", *args,
    ]  # fmt: skip


def ns_command(name: str, *args: str) -> list[str]:
    """A nerfstudio console script of this environment (`ns-render`, `ns-viewer`, ...) with `args`."""
    return [str(Path(sys.executable).with_name(name)), *args]


def ns_train_command(output_dir: Path, *args: str, vis: str = "tensorboard") -> list[str]:
    """The `ns-train` console script of this environment with `ns_train_args`."""
    return ns_command("ns-train", *ns_train_args(output_dir, *args, vis=vis))


@contextlib.contextmanager
def running(command: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """`command` started in a session of its own, its output in `log`, and ended with its children on leaving (a
    viewer keeps ns-train alive after the last step)."""
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=subprocess_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll `url` until it answers 200; fail, with the end of `log`, if `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{Path(process.args[0]).name} exited ({process.returncode}) before {url} answered:\n"
                        f"{log.read_text()[-4000:]}")  # fmt: skip
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the viewer did not answer on {url} within {timeout} s:\n{log.read_text()[-4000:]}")


VIEWER_CAMERA = {
    "type": "ViewerCameraMessage", "wxyz": (1.0, 0.0, 0.0, 0.0), "position": (0.0, 4.6, 30.0), "fov": 0.9,
    "aspect": 1.0, "look_at": (0.0, 4.6, 0.0), "up_direction": (0.0, 1.0, 0.0),
}  # fmt: skip
"""A viewer client's camera looking at the tiny scene (viser's units: ten times nerfstudio's)."""


def talk_to_viewer(url: str, wanted: list[bytes], timeout: float) -> tuple[bytes, bytes]:
    """What the viewer sends a new client until all of `wanted` came (msgpack: labels are plain UTF-8), then what it
    sends back for a camera pose (a render of the model, as a background image)."""
    import msgspec
    from websockets.sync.client import connect

    def receive(websocket, until: list[bytes]) -> bytes:
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(label in received for label in until):
            try:
                message = websocket.recv(timeout=1)
            except TimeoutError:
                continue
            received += message if isinstance(message, bytes) else message.encode()
        return received

    with connect(url, open_timeout=timeout) as websocket:
        gui = receive(websocket, wanted)
        websocket.send(msgspec.msgpack.encode(VIEWER_CAMERA))
        render = receive(websocket, [b"BackgroundImageMessage"])
    return gui, render


def decoded(frame: bytes | str) -> list[dict]:
    """The viser messages of one websocket frame (msgpack: one message or a list of them)."""
    import msgspec

    data = msgspec.msgpack.decode(frame if isinstance(frame, bytes) else frame.encode())
    return [m for m in (data if isinstance(data, list) else [data]) if isinstance(m, dict)]


HIDDEN = {"visible": False}


def resume_training(url: str, timeout: float) -> None:
    """Press the viewer's "Resume Training" button, as a click does, and wait until the viewer took it (it hides the
    button). Viser registers a client once it has sent its camera, so the camera goes first."""
    import msgspec
    from websockets.sync.client import connect

    deadline, button = time.monotonic() + timeout, None
    with connect(url, open_timeout=timeout) as websocket:
        websocket.send(msgspec.msgpack.encode(VIEWER_CAMERA))
        while time.monotonic() < deadline:
            try:
                frame = websocket.recv(timeout=1)
            except TimeoutError:
                continue
            for message in decoded(frame):
                if button is None and message.get("label") == "Resume Training":
                    button = message["id"]
                    click = {"type": "GuiUpdateMessage", "id": button, "updates": {"value": True}}
                    websocket.send(msgspec.msgpack.encode(click))
                elif button is not None and message.get("id") == button and message.get("updates") == HIDDEN:
                    return
    pytest.fail(f"the viewer did not take the Resume Training button within {timeout} s")


def train_in_process(
    output_dir: Path,
    *args: str,
    timestamp: str = "run",
    during: Callable[[Any, int], None] | None = None,
    vis: str = "tensorboard",
) -> Path:
    """Parse `ns-train sync-splat ARGS` with nerfstudio's own CLI and run its train loop in this process.

    Args:
        during: called as `during(pipeline, step)` after each trainer iteration, under the trainer's lock, as a
            viewer control's callback would run (e.g. to press Restart at a chosen step).

    Returns the run folder.
    """
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
    from nerfstudio.scripts import train

    def train_loop(local_rank: int, world_size: int, config: Any, global_rank: int = 0) -> None:
        trainer = config.setup(local_rank=local_rank, world_size=world_size)
        trainer.setup()
        if during is not None:
            hook = TrainingCallback(
                [TrainingCallbackLocation.AFTER_TRAIN_ITERATION], lambda step: during(trainer.pipeline, step)
            )
            trainer.callbacks.insert(0, hook)  # before the pipeline's own, as a click between two steps
        trainer.train()

    argv = ns_train_args(output_dir, *args, vis=vis)
    argv[argv.index("--timestamp") + 1] = timestamp
    original = train.train_loop
    train.train_loop = train_loop
    try:
        train.main(tyro.cli(AnnotatedBaseConfigUnion, args=argv))
    finally:
        train.train_loop = original
    return output_dir / "test" / "sync-splat" / timestamp


def dataset_args(files: dict[str, Path], source: str) -> list[str]:
    """--data and --pipeline.source, then the dataparser subcommand: put these after every other option."""
    return ["--data", str(files["data"]), "--pipeline.source", str(files[source]), *FRAME_AS_IS]


def tiny_sd_args(models: TinySDPaths) -> list[str]:
    return [
        "--pipeline.denoiser", "sd", "--pipeline.sd.model", str(models.model),
        "--pipeline.sd.controlnet", str(models.controlnet), "--pipeline.sd.dtype", "fp32",
        "--pipeline.sd.guidance-scale", "3.0", "--pipeline.prompt", "a red teapot",
    ]  # fmt: skip
