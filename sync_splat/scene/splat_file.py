"""The `.splat` file of the web Gaussian-splat viewers: 32 bytes per Gaussian, no header, no spherical harmonics.

The layout, little-endian, one record per Gaussian, back to back (the file's size is 32 x G bytes):

| bytes  | field    | type          | value                                                                      |
|--------|----------|---------------|----------------------------------------------------------------------------|
| 0-11   | position | 3 x float32   | the centre `x y z`                                                         |
| 12-23  | scale    | 3 x float32   | the standard deviations along the Gaussian's axes, `exp(log_scales)`       |
| 24-27  | colour   | 4 x uint8     | red, green, blue: the DC colour `rgb01 * 255`; alpha: `sigmoid(opacity) * 255` |
| 28-31  | rotation | 4 x uint8     | the normalised quaternion `w x y z`, each component `q * 128 + 128`        |

Readers decode a rotation byte `b` as `(b - 128) / 128`, so a component of +1 is stored as 255 (clipped from 256) and
every component is known to within 1/256; colours and opacity to within half of 1/255. Only the view-independent DC
colour is stored: a scene with higher spherical-harmonic degrees loses its view-dependent shading.

Records are written largest and most opaque first (`prod(scale) * alpha`, descending): viewers that draw a file while
it downloads then show the bulk of the scene first. Gaussians with a non-finite position, scale, rotation, colour or
opacity are left out (a viewer would draw them as garbage); `write_splat` reports how many it kept.

`read_splat` reads such a file back into a `GaussianScene` (degree 0), and `load_scene` reads any scene file the
project takes, `.splat` included (for `sync-splat view` and `export`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sync_splat.errors import InputError
from sync_splat.functional.sh import SH_C0
from sync_splat.scene.files import atomic_output
from sync_splat.scene.gaussians import GaussianScene

SPLAT_RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
"""One Gaussian's record; `SPLAT_RECORD.itemsize` is 32."""


def splat_records(scene: GaussianScene) -> np.ndarray:
    """The scene's Gaussians as `.splat` records, importance-sorted, non-finite ones left out.

    Returns:
        A structured array of `SPLAT_RECORD`, `[G']` with G' <= G.
    """
    means = scene.means.detach().double().cpu()
    scales = scene.log_scales.detach().double().cpu().exp()
    quats = scene.quats_wxyz.detach().double().cpu()
    alpha = torch.sigmoid(scene.opacity_logits.detach().double().cpu())
    rgb01 = (0.5 + SH_C0 * scene.sh[:, 0].detach().double().cpu()).clamp(0.0, 1.0)
    norms = quats.norm(dim=-1, keepdim=True)
    finite = torch.cat([means, scales, quats, alpha[:, None], rgb01], dim=-1).isfinite().all(dim=-1)
    keep = finite & (norms[:, 0] > 0) & torch.isfinite(scales.prod(dim=-1))
    importance = (scales.prod(dim=-1) * alpha)[keep]
    order = np.argsort(-importance.numpy(), kind="stable")
    index = keep.nonzero()[:, 0].numpy()[order]

    records = np.empty(len(index), dtype=SPLAT_RECORD)
    records["position"] = means[index].numpy()
    records["scale"] = scales[index].numpy()
    colour = torch.cat([rgb01, alpha[:, None]], dim=-1)[index]
    records["rgba"] = (colour * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    unit = (quats / norms)[index]
    records["rotation"] = (unit * 128 + 128).round().clamp(0, 255).to(torch.uint8).numpy()
    return records


def write_splat(scene: GaussianScene, path: str | os.PathLike[str]) -> int:
    """Write `scene` as a `.splat` file, atomically; returns the number of Gaussians written.

    Raises:
        InputError: `path` does not end in `.splat`, or it is the file the scene was read from.
    """
    path = Path(path)
    if path.suffix.lower() != ".splat":
        raise InputError(f"{path}: a web-viewer splat file must end in .splat")
    if scene.source is not None and Path(os.path.abspath(path)) == Path(os.path.abspath(scene.source)):
        raise InputError(f"{path} is the scene's own input file: choose another output (inputs are never modified)")
    records = splat_records(scene)
    with atomic_output(path) as tmp:
        records.tofile(tmp)
    return len(records)


def read_splat(path: str | os.PathLike[str]) -> GaussianScene:
    """Read a `.splat` file as a scene of degree 0 (to within the file's quantisation).

    Opacities of 0 or 255 are read as half a level inside (0, 1), so their logits stay finite.

    Raises:
        InputError: the file is missing, empty, or not a whole number of 32-byte records.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file: pass a .splat file")
    size = path.stat().st_size
    if size == 0 or size % SPLAT_RECORD.itemsize:
        raise InputError(
            f"{path}: {size} bytes is not a whole number of {SPLAT_RECORD.itemsize}-byte Gaussians: the file is "
            "truncated or not a .splat file"
        )
    records = np.fromfile(path, dtype=SPLAT_RECORD)
    rgba = torch.from_numpy(records["rgba"].astype(np.float32)) / 255
    alpha = rgba[:, 3].clamp(0.5 / 255, 1 - 0.5 / 255)
    scales = torch.from_numpy(records["scale"].copy())
    if not bool(torch.isfinite(scales).all() and (scales > 0).all()):
        raise InputError(f"{path}: some scales are not positive finite numbers: the file is not a valid .splat file")
    return GaussianScene(
        means=torch.from_numpy(records["position"].copy()),
        quats_wxyz=(torch.from_numpy(records["rotation"].astype(np.float32)) - 128) / 128,
        log_scales=scales.log(),
        opacity_logits=torch.logit(alpha),
        sh=((rgba[:, :3] - 0.5) / SH_C0)[:, None, :],
        source=path,
    )


def load_scene(path: str | os.PathLike[str]) -> GaussianScene:
    """Read a scene from any file the project takes: `GaussianScene.load`'s (`.ply`, `.ckpt`, `config.yml`, a run
    folder) and `.splat`."""
    path = Path(path)
    return read_splat(path) if path.suffix.lower() == ".splat" else GaussianScene.load(path)
