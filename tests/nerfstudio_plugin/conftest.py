"""Fixtures for the nerfstudio plugin: a tiny scene as every kind of source, a tiny nerfstudio dataset of it, and
ways to run `ns-train sync-splat` (the tiny SD models are tests/conftest.py's `tiny_sd`).

Everything is generated in code. The scene is a thinned copy of the demo teapot (a few hundred Gaussians, made
larger so the surfaces stay closed); the dataset is its renders from an orbit rig, 64 x 64 PNGs with a
`transforms.json` whose poses are used as they are (the dataparser's orientation, centring and scaling are
turned off), so the scene and the dataset share one frame, as a splatfacto run and its dataset do.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
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


def write_dataset(scene: GaussianScene, root: Path) -> Path:
    """A nerfstudio dataset of `scene`: PNG renders and transforms.json (OpenGL camera-to-world poses)."""
    cameras = dataset_cameras(scene)
    images = render_rgb(scene, cameras)
    (root / "images").mkdir(parents=True)
    frames = []
    for i, (image, c2w) in enumerate(zip(images, cameras.c2w, strict=True)):
        name = f"images/frame_{i:05d}.png"
        pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        iio.imwrite(root / name, np.ascontiguousarray(pixels))
        c2w_opengl = c2w @ OPENGL_TO_OPENCV  # the flip is its own inverse
        frames.append({"file_path": name, "transform_matrix": c2w_opengl.tolist()})
    K = cameras.Ks[0]
    transforms = {
        "camera_model": "OPENCV",
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        "w": IMAGE_SIZE, "h": IMAGE_SIZE, "frames": frames,
    }  # fmt: skip
    (root / "transforms.json").write_text(json.dumps(transforms, indent=2))
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


def ns_train_command(output_dir: Path, *args: str, vis: str = "tensorboard") -> list[str]:
    """The `ns-train` console script of this environment with `ns_train_args`."""
    return [str(Path(sys.executable).with_name("ns-train")), *ns_train_args(output_dir, *args, vis=vis)]


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
