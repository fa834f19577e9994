"""Nerfstudio camera paths (`camera_paths/*.json`, what its viewer's render panel saves and `ns-render camera-path`
reads) as `Cameras`.

A path holds `render_width`, `render_height`, an optional `camera_type` and `camera_path`: one entry per frame with
`camera_to_world` (16 numbers, a row-major 4 x 4 in OpenGL axes, in the frame of the scene nerfstudio shows) and
`fov`, the vertical field of view in degrees. Pixels are square and the principal point is the image centre, as
nerfstudio renders them. Only perspective paths are read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from sync_splat.errors import InputError
from sync_splat.scene.cameras import Cameras


def read_camera_path(path: str | Path) -> Cameras:
    """The frames of a nerfstudio camera path, in OpenCV axes (`Cameras.from_nerfstudio`).

    Raises:
        InputError: the file is missing, not JSON, not a camera path, empty, or not a perspective path.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise InputError(f"{path}: cannot read the camera path ({error.strerror or error})") from None
    except ValueError as error:
        raise InputError(f"{path}: not a JSON camera path ({error})") from None
    kind = data.get("camera_type", "perspective") if isinstance(data, dict) else None
    if kind != "perspective":
        raise InputError(
            f"{path}: a {kind!r} camera path cannot be rendered here: pass a perspective nerfstudio camera path"
        )
    try:
        width, height = int(data["render_width"]), int(data["render_height"])
        frames = data["camera_path"]
        c2w = torch.tensor([frame["camera_to_world"] for frame in frames], dtype=torch.float64).reshape(-1, 4, 4)
        fov = torch.tensor([float(frame["fov"]) for frame in frames], dtype=torch.float64)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(
            f"{path}: not a nerfstudio camera path ({type(error).__name__}: {error}): it needs render_width, "
            "render_height and camera_path entries with camera_to_world (16 numbers) and fov"
        ) from None
    if len(c2w) == 0 or width < 1 or height < 1:
        raise InputError(f"{path}: the camera path has no frames or no image size")
    if not (torch.isfinite(c2w).all() and ((fov > 0) & (fov < 180)).all()):
        raise InputError(f"{path}: the camera path has non-finite poses or a field of view outside (0, 180) degrees")
    focal = 0.5 * height / torch.tan(fov * math.pi / 360)
    return Cameras.from_nerfstudio(c2w[:, :3].float(), focal, focal, width / 2, height / 2, width, height)
