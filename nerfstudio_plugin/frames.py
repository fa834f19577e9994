"""World frames in a sync-splat run: the dataset's frame, the source scene's, and the view suffixes' up and front.

With `--data`, nerfstudio's dataparser moves the capture's cameras into its own frame (oriented, centred, scaled;
the move is a run's `dataparser_transforms.json`). Splatfacto scenes live in that frame, so they line up with the
dataset. Scenes from other trainers do not: a 3DGS PLY trained on COLMAP stays in COLMAP's frame, one trained on a
`transforms.json` in that file's frame. Used as they are, most of their Gaussians sit outside every dataset view
and are never restyled. So:

- `source_transform` is the move into the dataparser's frame from where the user says the scene comes from
  (`--pipeline.source-frame`): `colmap` / `inria` (COLMAP's frame, the dataparser's own transform) or `transforms`
  (the frame of the dataset's `transforms.json`, before the `applied_transform` that ns-process-data recorded);
- `check_frame` refuses, in one line naming the likely fix, a scene that the dataset cameras barely see, or see
  much better once moved from another frame (skipped for scenes known to be in nerfstudio's frame).

`suffix_frame` gives the view suffixes ("front view", "top view") the scene's up direction.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.bridges.splat import SplatBridgeConfig
from sync_splat.errors import InputError
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.frames import transform_scene
from sync_splat.scene.gaussians import GaussianScene
from sync_splat.scene.up_axis import UpAxis

SourceFrame = Literal["nerfstudio", "colmap", "inria", "transforms"]
VISIBLE_ENOUGH = 0.5
"""The least fraction of Gaussians in view of some dataset camera for a scene and a dataset to belong together
(a splatfacto scene is grown from its cameras' views: nearly all of it is in view)."""
_CLEARLY_IN_VIEW = 0.95
_CLEARLY_BETTER = 0.2
"""A scene that is in view of the dataset's cameras well enough is still refused if, moved from another frame, it
would be clearly in view (this fraction or more) and clearly better (by this much)."""
_MAX_CHECKED = 20_000
"""Gaussians checked against the cameras (evenly strided): enough for a fraction to a percent."""
# What ns-process-data applied to COLMAP's frame before `applied_transform` was recorded in transforms.json.
_LEGACY_COLMAP_APPLIED = [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]]


def source_transform(datamanager: Any, frame: SourceFrame) -> tuple[Float[Tensor, "3 4"], float]:
    """`([R | t], s)` taking a scene in `frame` into the dataparser's frame, `x' = s (R x + t)`."""
    if frame == "nerfstudio":
        return torch.eye(4, dtype=torch.float64)[:3], 1.0
    outputs = getattr(datamanager, "train_dataparser_outputs", None)
    if outputs is None:
        raise InputError("--pipeline.source-frame needs --data: the dataset whose frame the scene is moved into")
    transform = _homogeneous(outputs.dataparser_transform)
    if frame == "transforms":  # COLMAP -> transforms.json was `applied`; undo it first
        applied = _applied_transform(Path(datamanager.config.dataparser.data))
        transform = transform @ torch.linalg.inv(_homogeneous(applied))
    return transform[:3], float(outputs.dataparser_scale)


def _homogeneous(matrix: Tensor | list) -> Float[Tensor, "4 4"]:
    top = torch.as_tensor(matrix, dtype=torch.float64).reshape(-1, 4)[:3]
    return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])


def _applied_transform(data: Path) -> Tensor | list:
    """The `applied_transform` of a nerfstudio dataset, as nerfstudio's dataparser reads it (identity if none)."""
    transforms = data if data.suffix == ".json" else data / "transforms.json"
    try:
        meta = json.loads(transforms.read_text("utf8"))
    except (OSError, ValueError):
        meta = {}
    if "applied_transform" in meta:
        return meta["applied_transform"]
    if (transforms.parent / "colmap" / "sparse" / "0").exists():
        return _LEGACY_COLMAP_APPLIED
    return torch.eye(4, dtype=torch.float64)[:3]


def visible_fraction(scene: GaussianScene, cameras: Cameras) -> float:
    """The fraction of the Gaussians whose centre is in front of, and inside the image of, at least one camera."""
    means = scene.means.detach().to(torch.float64).cpu()
    means = means[:: max(1, means.shape[0] // _MAX_CHECKED)]
    seen = torch.zeros(means.shape[0], dtype=torch.bool)
    viewmats, Ks = cameras.viewmats.to(torch.float64).cpu(), cameras.Ks.to(torch.float64).cpu()
    for viewmat, K in zip(viewmats, Ks, strict=True):
        local = means @ viewmat[:3, :3].T + viewmat[:3, 3]
        depth = local[:, 2]
        pixels = local @ K.T
        u, v = pixels[:, 0] / depth.clamp_min(1e-9), pixels[:, 1] / depth.clamp_min(1e-9)
        seen |= (depth > 1e-6) & (u >= 0) & (u <= cameras.width) & (v >= 0) & (v <= cameras.height)
    return float(seen.double().mean()) if seen.numel() else 0.0


def in_nerfstudio_frame(source: Path) -> bool:
    """Whether a source is known to be in a dataparser's frame: a splatfacto run (config.yml, .ckpt or its
    folder) or a PLY that nerfstudio wrote (`ns-export` puts its name in the header)."""
    if source.is_dir() or source.suffix.lower() in (".yml", ".yaml", ".ckpt"):
        return True
    try:
        with source.open("rb") as file:
            header = file.read(1 << 16).split(b"end_header", 1)[0]
    except OSError:
        return False
    return b"comment Generated by Nerstudio" in header or b"comment Generated by Nerfstudio" in header  # its spelling


def check_frame(scene: GaussianScene, cameras: Cameras, datamanager: Any, source: Path) -> None:
    """Refuse a scene that the dataset's cameras barely see, or see much better once moved from another frame,
    naming the `--pipeline.source-frame` that fits."""
    seen = visible_fraction(scene, cameras)
    fits = {}
    for frame in ("colmap", "transforms"):
        try:
            transform, scale = source_transform(datamanager, frame)
        except InputError:
            continue
        fits[frame] = visible_fraction(transform_scene(scene, transform, scale), cameras)
    best = max(fits, key=fits.__getitem__, default=None)
    better = best is not None and fits[best] >= _CLEARLY_IN_VIEW and seen <= fits[best] - _CLEARLY_BETTER
    if seen >= VISIBLE_ENOUGH and not better:
        return
    problem = (
        f"{source}: only {seen:.0%} of its Gaussians are in view of the --data cameras, so it is likely in another "
        "frame than the dataset's nerfstudio frame"
    )
    if best is not None and fits[best] >= VISIBLE_ENOUGH:
        named = "colmap (or inria: COLMAP's frame)" if best == "colmap" else "transforms (transforms.json's frame)"
        raise InputError(
            f"{problem} ({fits[best]:.0%} once moved from the frame of a PLY from another trainer): pass "
            f"--pipeline.source-frame {named}, or nerfstudio to use it as it is"
        )
    raise InputError(
        f"{problem}: check that --pipeline.source and --data belong together, or pass --pipeline.source-frame "
        "nerfstudio to use the scene as it is"
    )


def suffix_frame(
    cameras: Cameras, scene: GaussianScene, fit: SplatBridgeConfig, up: UpAxis, orbit: bool
) -> SplatBridgeConfig:
    """The fit settings with the view-suffix frame of the views: `up` is the scene's; `front` is where an orbit
    rig's first view looks from, or the side of the scene the first dataset view looks from. The defaults (y up,
    z front) are replaced; settings a user changed are kept."""
    defaults = SplatBridgeConfig()
    if (fit.up, fit.front) != (defaults.up, defaults.front):
        return fit
    if orbit:
        return replace(fit, up=up.up, front=up.front)
    up_t = torch.tensor(up.up, dtype=torch.float64)
    centre, _ = scene.bounding_sphere(trim=0.01)
    front = cameras.c2w[0, :3, 3].double().cpu() - centre.double().cpu()
    front = front - (front @ up_t) * up_t
    if front.norm() < 1e-6:
        return replace(fit, up=up.up, front=up.front)
    front = front / front.norm()
    return replace(fit, up=up.up, front=tuple(front.tolist()))
