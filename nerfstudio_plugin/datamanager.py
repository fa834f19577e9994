"""Where sync-splat's cameras come from: a nerfstudio dataset, or an orbit rig around a bare PLY.

With `--data`, the dataset's images and cameras are served by nerfstudio's `FullImageDatamanager`, as for
splatfacto (the views to restyle are then picked among its training cameras). Without it, the trainer and the
viewer still need a training dataset with cameras and images (frustums, thumbnails), so `OrbitDatamanager`
serves the pipeline's orbit cameras with renders of the source scene as their images. The config's target,
`SyncSplatDatamanager`, makes the choice when it is built, so one method, `ns-train sync-splat`, covers both; it is a
class (a `FullImageDatamanager`), as nerfstudio's scripts expect a datamanager target to be (`ns-render dataset`
patches its `setup_train`).

Captured datasets often have distorted cameras (COLMAP's OPENCV model: k1, k2, p1, p2; or a fisheye). The splat
renderer is a pinhole renderer, so the views to restyle are rendered with the pinhole cameras of the undistorted
images, the ones nerfstudio's `FullImageDatamanager` gives splatfacto when it undistorts a capture
(`pinhole_train_cameras`): the same poses, OpenCV's optimal new camera matrix, the image cropped to its valid
region. The dataset's images themselves are never used to restyle (only the source scene is rendered); the viewer
shows them as they are.

Conventions: `sync_splat` cameras are OpenCV (`c2w`), nerfstudio's are OpenGL; converted here with
`OPENGL_TO_OPENCV` (its own inverse).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras as NerfstudioCameras
from nerfstudio.cameras.cameras import CameraType
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.base_datamanager import DataManager
from nerfstudio.data.datamanagers.full_images_datamanager import (
    FullImageDatamanager,
    FullImageDatamanagerConfig,
    _undistort_image,
)
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.scene_box import SceneBox
from torch import Tensor

from sync_splat.apps.restyle import render_rgb
from sync_splat.errors import InputError, one_line_errors
from sync_splat.scene.cameras import OPENGL_TO_OPENCV, Cameras
from sync_splat.scene.gaussians import GaussianScene


@dataclass
class SyncSplatDatamanagerConfig(FullImageDatamanagerConfig):
    """With --data: the dataset's images and cameras (as splatfacto). Without: orbit views rendered from the
    source scene, so a bare PLY needs no dataset."""

    _target: type = field(default_factory=lambda: SyncSplatDatamanager)
    dataparser: AnnotatedDataParserUnion = field(
        default_factory=lambda: NerfstudioDataParserConfig(load_3D_points=False)
    )
    """The dataset's parser; keep the splatfacto run's settings so that cameras and Gaussians share one frame."""
    orbit_image_size: int = 256
    """Without --data: the long side, in pixels, of the rendered orbit views the viewer shows as thumbnails."""

    @property
    def has_dataset(self) -> bool:
        """Whether a dataset was given (--data, or --pipeline.datamanager.dataparser.data)."""
        return self.data is not None or Path(self.dataparser.data) != Path()


class SyncSplatDatamanager(FullImageDatamanager):
    """`FullImageDatamanager` when the config names a dataset; otherwise building one returns an
    `OrbitDatamanager` over the pipeline's orbit cameras (`scene` and `cameras`, which the pipeline passes)."""

    def __new__(
        cls,
        config: SyncSplatDatamanagerConfig,
        *args: Any,
        scene: GaussianScene | None = None,
        cameras: Cameras | None = None,
        **kwargs: Any,
    ) -> DataManager:
        if config.has_dataset:
            return super().__new__(cls)
        if scene is None or cameras is None:  # e.g. `ns-render dataset`, which builds a datamanager on its own
            with one_line_errors("sync-splat"):
                raise InputError(
                    "this run restyled orbit views of a bare scene, without --data: there is no dataset to render; "
                    "use ns-render camera-path or ns-render interpolate"
                )
        device = kwargs.get("device", args[0] if args else "cpu")
        test_mode = kwargs.get("test_mode", args[1] if len(args) > 1 else "val")
        return OrbitDatamanager(config, scene, cameras, device=device, test_mode=test_mode)

    def __init__(
        self,
        config: SyncSplatDatamanagerConfig,
        device: torch.device | str = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        scene: GaussianScene | None = None,
        cameras: Cameras | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank)

    def pinhole_train_cameras(self) -> NerfstudioCameras:
        """The training cameras as pinhole cameras: those of the undistorted images (see the module docstring)."""
        if "cached_train" in vars(self):  # nerfstudio undistorted the images already and set the cameras to match
            return self.train_dataset.cameras
        return undistorted_cameras(self.train_dataset.cameras, self.get_datapath())


_UNDISTORTED_TYPES = (CameraType.PERSPECTIVE, CameraType.FISHEYE, CameraType.FISHEYE624)


def undistorted_cameras(cameras: NerfstudioCameras, data: Path) -> NerfstudioCameras:
    """`cameras` (a dataset's, `[N]`) with the intrinsics and size of their images once undistorted as nerfstudio's
    `FullImageDatamanager` undistorts them; cameras without distortion are kept as they are.

    Computed by nerfstudio's own undistortion on a blank image, once per distinct camera model.
    """
    types = cameras.camera_type.reshape(-1)
    known = [kind.value for kind in _UNDISTORTED_TYPES]
    if any(int(kind) not in known for kind in types):
        names = sorted({CameraType(int(kind)).name for kind in types if int(kind) not in known})
        raise InputError(
            f"{data}: cameras of type {', '.join(names)}, but sync-splat renders its views with pinhole cameras: use "
            "a capture of perspective or fisheye cameras, or leave out --data to restyle orbit views"
        )
    distortion = cameras.distortion_params
    if distortion is None or (not distortion.any() and (types == CameraType.PERSPECTIVE.value).all()):
        return cameras
    undistorted = cameras[torch.arange(len(cameras))]  # a copy: the dataset's cameras are left as they are
    models: dict[tuple, tuple[np.ndarray, int, int]] = {}
    for i in range(len(cameras)):
        camera = cameras[i : i + 1].reshape(())
        params = camera.distortion_params.numpy() if camera.distortion_params is not None else np.zeros(6)
        width, height = int(camera.width), int(camera.height)
        key = (int(camera.camera_type), *camera.get_intrinsics_matrices().reshape(-1).tolist(), width, height,
               *params.tolist())  # fmt: skip
        if key not in models:
            K = camera.get_intrinsics_matrices().numpy().astype(np.float64)
            blank = np.zeros((height, width, 3), np.uint8)
            try:
                K, image, _ = _undistort_image(camera, params, {}, blank, K)
            except AssertionError as error:  # e.g. an OPENCV k4, which nerfstudio does not undistort
                raise InputError(f"{data}: cannot undistort its cameras: {error}") from None
            models[key] = (K, image.shape[1], image.shape[0])
        K, width, height = models[key]
        undistorted.fx[i], undistorted.fy[i] = float(K[0, 0]), float(K[1, 1])
        undistorted.cx[i], undistorted.cy[i] = float(K[0, 2]), float(K[1, 2])
        undistorted.width[i], undistorted.height[i] = width, height
    undistorted.distortion_params = None
    undistorted.camera_type[:] = CameraType.PERSPECTIVE.value
    return undistorted


def to_nerfstudio_cameras(cameras: Cameras) -> NerfstudioCameras:
    """`sync_splat` pinhole cameras (OpenCV axes) as nerfstudio perspective cameras (OpenGL axes)."""
    c2w_opengl = cameras.c2w @ OPENGL_TO_OPENCV.to(cameras.c2w)
    n = len(cameras)
    return NerfstudioCameras(
        camera_to_worlds=c2w_opengl[:, :3, :4].float().cpu(),
        fx=cameras.Ks[:, 0, 0:1].float().cpu(),
        fy=cameras.Ks[:, 1, 1:2].float().cpu(),
        cx=cameras.Ks[:, 0, 2:3].float().cpu(),
        cy=cameras.Ks[:, 1, 2:3].float().cpu(),
        width=torch.full((n, 1), cameras.width, dtype=torch.long),
        height=torch.full((n, 1), cameras.height, dtype=torch.long),
        camera_type=CameraType.PERSPECTIVE,
    )


class RenderedViewsDataset(InputDataset):
    """A dataset whose images are renders of a scene from its cameras, made on first access (not files)."""

    def __init__(self, scene: GaussianScene, cameras: Cameras) -> None:  # no InputDataset.__init__: no files
        self.scale_factor = 1.0
        self.alpha_color = None
        self.mask_filenames = None
        self.mask_color = None
        self.metadata: dict[str, Any] = {}
        centre, radius = scene.bounding_sphere(trim=0.01)
        self.scene_box = SceneBox(aabb=torch.stack([centre - radius, centre + radius]).float().cpu())
        self.cameras = to_nerfstudio_cameras(cameras)
        self._scene = scene
        self._sync_cameras = cameras

    @cached_property
    def images(self) -> Float[Tensor, "N H W 3"]:
        """The renders over a white background, `rgb01`, channels last as nerfstudio's datasets."""
        return render_rgb(self._scene, self._sync_cameras.to(self._scene.means.device)).permute(0, 2, 3, 1).cpu()

    def __len__(self) -> int:
        return len(self._sync_cameras)

    def get_data(self, image_idx: int, image_type: Literal["uint8", "float32"] = "float32") -> dict[str, Any]:
        image = self.images[image_idx]
        if image_type == "uint8":
            image = (image * 255).round().to(torch.uint8)
        return {"image_idx": image_idx, "image": image}

    def __getitem__(self, image_idx: int) -> dict[str, Any]:
        return self.get_data(image_idx)


class OrbitDatamanager(DataManager):
    """Serves the pipeline's orbit cameras, with renders of the source scene as images (no dataset needed)."""

    config: SyncSplatDatamanagerConfig

    def __init__(
        self,
        config: SyncSplatDatamanagerConfig,
        scene: GaussianScene,
        cameras: Cameras,
        device: torch.device | str = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
    ) -> None:
        self.config = config
        self.device = device
        self.test_mode = test_mode
        self.source = scene.source
        size = config.orbit_image_size
        thumbnails = cameras.resized_for(size, multiple=1).to("cpu")
        self.train_dataset = RenderedViewsDataset(scene.to("cpu"), thumbnails)
        self.eval_dataset = self.train_dataset
        super().__init__()

    def setup_train(self) -> None:
        """Nothing to set up: the cameras are fixed and the images rendered on first use."""

    def setup_eval(self) -> None:
        """Nothing to set up."""

    def _view(self, index: int) -> tuple[NerfstudioCameras, dict[str, Any]]:
        index = index % len(self.train_dataset)
        camera = self.train_dataset.cameras[index : index + 1].to(self.device)
        batch = self.train_dataset[index]
        batch["image"] = batch["image"].to(self.device)
        return camera, batch

    def next_train(self, step: int) -> tuple[NerfstudioCameras, dict[str, Any]]:
        self.train_count += 1
        return self._view(step)

    def next_eval(self, step: int) -> tuple[NerfstudioCameras, dict[str, Any]]:
        self.eval_count += 1
        return self._view(step)

    def next_eval_image(self, step: int) -> tuple[NerfstudioCameras, dict[str, Any]]:
        return self._view(step)

    def get_train_rays_per_batch(self) -> int:
        camera = self.train_dataset.cameras
        return int(camera.width[0]) * int(camera.height[0])

    def get_eval_rays_per_batch(self) -> int:
        return self.get_train_rays_per_batch()

    def get_datapath(self) -> Path:
        return self.source.parent if self.source is not None else Path(".")

    def get_param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {}
