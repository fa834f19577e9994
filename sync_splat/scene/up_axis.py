"""Which way is up in a scene, and orbit rigs that stand on it.

Orbit rigs (`Cameras.orbit_rig`) and view suffixes ("top view", "front view") assume **y up**, the demo scene's frame.
Scenes from other trainers are not: nerfstudio turns its captures **z up** (its dataparsers' default orientation,
and `ns-export` writes "Vertical Axis: z" into its PLYs), and COLMAP-based 3DGS scenes keep COLMAP's frame, whose up
is wherever the first camera's was. `estimate_up` weighs the evidence, strongest first:

1. the user's choice (`--up`);
2. the cameras of a capture in the scene's frame: the mean of their image-up directions (nerfstudio's "up"
   orientation turns exactly this mean to +z);
3. a splatfacto run's own settings: its dataparser's orientation (any but "none" makes the frame z up);
4. the PLY's header comment `Vertical Axis: <axis>` (written by `ns-export`);
5. the scene's principal axes: a captured scene is much flatter along up than across (its ground), and its
   Gaussians crowd the bottom of that axis (the ground is dense, what stands on it is sparse);
6. otherwise y up.

An estimate near a coordinate axis (within 10 degrees) snaps to it. `stand_on` turns a y-up rig (built around a
centre) so that its up is the scene's; `UpAxis.front` is where the rig's first view then looks from.

Conventions: `c2w` is camera-to-world in OpenCV axes (image up is `-y` of the camera).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.gaussians import GaussianScene

Y_UP = (0.0, 1.0, 0.0)
_AXES = {"x": 0, "y": 1, "z": 2}
_SNAP_DEGREES = 10.0
_FLATNESS = 0.35
"""Principal axes: the least spread must be under this fraction of the middle one to count as a ground's normal."""
_MIN_SKEW = 0.3
"""Principal axes: the distribution along that normal must be skewed at least this much (a dense bottom)."""


@dataclass(frozen=True)
class UpAxis:
    """A unit up direction of a scene (world frame) and the evidence it was taken from."""

    up: tuple[float, float, float]
    reason: str

    @property
    def rotation(self) -> Float[Tensor, "3 3"]:
        """The smallest rotation taking +y to `up` (a half turn about x when `up` is -y)."""
        return rotation_from_y(torch.tensor(self.up, dtype=torch.float64))

    @property
    def front(self) -> tuple[float, float, float]:
        """Where the first view of a rig turned by `stand_on` looks from: the image of +z (orbit rigs' azimuth 0)."""
        return tuple((self.rotation @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).tolist())  # type: ignore[return-value]

    def describe(self) -> str:
        """E.g. '+z (the splatfacto run's dataparser orientation)'."""
        axis = _axis_name(torch.tensor(self.up, dtype=torch.float64))
        return f"{axis} ({self.reason})"


def parse_up(text: str) -> Float[Tensor, "3"]:
    """A user's up direction: an axis (`z`, `+z`, `-y`) or three numbers (`0,0.2,1`), normalised."""
    value = text.strip().lower()
    if (axis := value.lstrip("+-")) in _AXES and len(value) - len(axis) <= 1:
        up = torch.zeros(3, dtype=torch.float64)
        up[_AXES[axis]] = -1.0 if value.startswith("-") else 1.0
        return up
    parts = [p for p in re.split(r"[,\s]+", value) if p]
    try:
        up = torch.tensor([float(p) for p in parts], dtype=torch.float64)
    except ValueError:
        up = torch.zeros(0)
    if up.shape != (3,) or not torch.isfinite(up).all() or up.norm() < 1e-9:
        raise InputError(f"up {text!r}: give an axis (x, y, z, -x, -y, -z; write --up=-z for a minus) or 'x,y,z'")
    return up / up.norm()


def rotation_from_y(up: Float[Tensor, "3"]) -> Float[Tensor, "3 3"]:
    """The smallest rotation R with `R @ (0, 1, 0) = up / |up|` (Rodrigues); a half turn about x for -y."""
    up = up.to(torch.float64) / up.norm()
    y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    cos = float(y @ up)
    if cos < -1 + 1e-12:
        return torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    v = torch.linalg.cross(y, up)
    skew = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + skew + skew @ skew / (1 + cos)


def stand_on(cameras: Cameras, centre: Float[Tensor, "3"], up: UpAxis) -> Cameras:
    """A y-up rig around `centre`, turned about `centre` so that its up is `up.up` (the same rig when y is up)."""
    rotation = up.rotation
    if torch.equal(rotation, torch.eye(3, dtype=torch.float64)):
        return cameras
    centre = centre.detach().to(torch.float64).cpu().reshape(3)
    turn = torch.eye(4, dtype=torch.float64)
    turn[:3, :3] = rotation
    turn[:3, 3] = centre - rotation @ centre
    c2w = (turn.to(cameras.c2w) @ cameras.c2w).to(cameras.c2w.dtype)
    return Cameras(c2w, cameras.Ks, cameras.width, cameras.height)


def estimate_up(
    scene: GaussianScene,
    source: Path | None = None,
    c2w: Float[Tensor, "N 4 4"] | None = None,
    override: str | None = None,
) -> UpAxis:
    """The scene's up direction from the strongest evidence at hand (the module docstring lists it in order).

    Args:
        scene: the scene (its Gaussians, for the principal axes).
        source: the file it was read from (a splatfacto config.yml or .ckpt, a run folder, or a PLY), if any.
        c2w: cameras of a capture of the scene, in the scene's frame (OpenCV axes), if any.
        override: the user's choice (`parse_up`), if any.
    """
    if override is not None:
        return _snapped(parse_up(override), "--up")
    if c2w is not None and len(c2w) > 0:
        up = -c2w[:, :3, 1].to(torch.float64).mean(dim=0)
        if up.norm() > 1e-6:
            return _snapped(up, "the cameras' mean up direction")
    if source is not None:
        if (orientation := _run_orientation(Path(source))) is not None and orientation != "none":
            return UpAxis((0.0, 0.0, 1.0), f"the splatfacto run's dataparser orientation '{orientation}'")
        if (axis := _ply_vertical_axis(Path(source))) is not None:
            return _snapped(parse_up(axis), f"the PLY header's 'Vertical Axis: {axis}'")
    if (up := _principal_up(scene)) is not None:
        return _snapped(up, "the scene's principal axes")
    return UpAxis(Y_UP, "no evidence: the default")


def _snapped(up: Tensor, reason: str) -> UpAxis:
    up = up.to(torch.float64) / up.norm()
    axis = int(up.abs().argmax())
    if up.abs()[axis] >= math.cos(math.radians(_SNAP_DEGREES)):
        up = torch.zeros(3, dtype=torch.float64).index_fill_(0, torch.tensor(axis), float(up[axis].sign()))
    return UpAxis(tuple(float(v) for v in up), reason)  # type: ignore[arg-type]


def _axis_name(up: Tensor) -> str:
    axis = int(up.abs().argmax())
    if up.abs()[axis] > 1 - 1e-9:
        return ("-" if up[axis] < 0 else "+") + "xyz"[axis]
    return "(" + ", ".join(f"{v:.3f}" for v in up.tolist()) + ")"


def _run_config(source: Path) -> Path | None:
    """The config.yml of the splatfacto run `source` belongs to, if there is one."""
    if source.is_dir():
        candidates = [source / "config.yml", source.parent / "config.yml"]
    elif source.suffix.lower() in (".yml", ".yaml"):
        candidates = [source]
    elif source.suffix.lower() == ".ckpt":
        candidates = [source.parent.parent / "config.yml"]
    else:
        return None
    return next((c for c in candidates if c.is_file()), None)


def _run_orientation(source: Path) -> str | None:
    """The run's dataparser `orientation_method` (read as text: nothing in the config is constructed)."""
    config = _run_config(source)
    if config is None:
        return None
    try:
        text = config.read_text("utf8", errors="replace")
    except OSError:
        return None
    found = re.search(r"^\s*orientation_method:\s*['\"]?(\w+)", text, flags=re.MULTILINE)
    return found.group(1) if found else None


def _ply_vertical_axis(source: Path) -> str | None:
    """The axis of a `comment Vertical Axis: <axis>` line in a PLY header (`ns-export` writes one)."""
    if source.suffix.lower() != ".ply" or not source.is_file():
        return None
    try:
        with source.open("rb") as file:
            header = file.read(1 << 16).split(b"end_header", 1)[0].decode("ascii", errors="replace")
    except OSError:
        return None
    found = re.search(r"^comment\s+Vertical Axis:\s*([+-]?[xyz])\s*$", header, flags=re.MULTILINE | re.IGNORECASE)
    return found.group(1).lower() if found else None


def _principal_up(scene: GaussianScene) -> Tensor | None:
    """The normal of a flat scene's ground, pointing away from its dense side; None for scenes that are not flat."""
    means = scene.means.detach().to(torch.float64).cpu()
    if means.shape[0] < 16:
        return None
    weights = torch.sigmoid(scene.opacity_logits.detach().to(torch.float64).cpu())
    weights = weights / weights.sum()
    centred = means - weights @ means
    covariance = (centred * weights[:, None]).T @ centred
    variances, axes = torch.linalg.eigh(covariance)  # ascending
    spreads = variances.clamp_min(0).sqrt()
    if spreads[1] <= 0 or spreads[0] > _FLATNESS * spreads[1]:
        return None
    normal = axes[:, 0]
    along = centred @ normal
    skew = float(weights @ along**3) / float(spreads[0]) ** 3
    if abs(skew) < _MIN_SKEW:
        return None
    return normal if skew > 0 else -normal  # a dense bottom leaves a long tail upwards
