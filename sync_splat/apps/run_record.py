"""The run record every front door writes beside its result: what `sync-splat eval` reads to measure a run.

A record is two files. The JSON (`<out>_run.json` beside a restyled PLY or a panorama, `run.json` in a demo, mesh
or `ns-train sync-splat` run folder) holds:
- `kind`: which front door made the run (`restyle`, `demo`, `mesh`, `panorama`, `ns-train`);
- `settings`: the prompt, the denoiser, steps, synchronisation case and window, reverse step, seed, instance views
  (and the guidance scale with Stable Diffusion);
- `source`: the input as an absolute path (null for the demo, whose scene is built by code: `builtin_source`);
- `cameras`: the instance views' cameras: `c2w` (OpenCV axes, `[N][4][4]`), `fx`, `fy`, `cx`, `cy` (pixels,
  one per view), `width`, `height`;
- `up`: the up direction the views stood on (splat runs); `frame`: for a plugin run whose source was moved into
  the dataset's frame, the `transform` `[R | t]` and `scale` that move it (`x' = scale (R x + t)`), else null;
  `dataset`: the plugin run's dataset folder, else null;
- `phases`: wall seconds, calls and peak memory per phase (`PhaseReport.to_dict`);
- `delivered`: the name of the views file beside it, or null.

The views file (`<out>_delivered.npz`, `delivered.npz`) holds `views`: the views the sampler's instance processes
ended with, decoded, as `uint16` `[N, 3, H, W]` (value / 65535 is the colour in [0, 1]): exact for 8-bit images and
fine enough for a fit residual of about 100 dB, far above what a real fit reaches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.apps.settings import SamplingSettings
from sync_splat.errors import InputError
from sync_splat.scene.cameras import Cameras

if TYPE_CHECKING:
    from sync_splat.apps.restyle import RestyleConfig, RestyleResult

LEVELS = 65535
"""The delivered views are stored as 16-bit integers: colour * LEVELS, rounded."""


def files_beside(out: str | Path) -> tuple[Path, Path]:
    """The record and views files of a run whose result is the file `out`: `<stem>_run.json`, `<stem>_delivered.npz`."""
    out = Path(out)
    return out.with_name(out.stem + "_run.json"), out.with_name(out.stem + "_delivered.npz")


def files_in(folder: str | Path) -> tuple[Path, Path]:
    """The record and views files of a run whose results fill `folder`: `run.json`, `delivered.npz`."""
    return Path(folder) / "run.json", Path(folder) / "delivered.npz"


def record_of(scene: str | Path) -> Path | None:
    """The run record of the run that wrote the restyled scene file `scene`: `<stem>_run.json` beside it, or the
    `run.json` of its folder when it is a run's `restyled.ply` (demo, ns-train); None when there is none."""
    scene = Path(scene)
    candidates = [files_beside(scene)[0]]
    if scene.name == "restyled.ply":
        candidates.append(files_in(scene.parent)[0])
    return next((record for record in candidates if record.is_file()), None)


@dataclass(frozen=True)
class RunRecord:
    """One run, as the module docstring lays it out; `path` is where it was read from (None before it is saved)."""

    kind: str
    settings: dict[str, Any]
    source: str | None
    cameras: Cameras | None
    phases: dict[str, Any] | None
    delivered: str | None = None
    up: tuple[float, float, float] | None = None
    frame: dict[str, Any] | None = None
    dataset: str | None = None
    builtin_source: str | None = None
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        record = {item.name: getattr(self, item.name) for item in fields(self) if item.name not in ("cameras", "path")}
        record["cameras"] = None if self.cameras is None else cameras_to_dict(self.cameras)
        return record

    def save(self, json_path: Path, views_path: Path, delivered: Float[Tensor, "N 3 H W"] | None) -> None:
        """Write the record to `json_path` and the delivered views (if any) to `views_path`, in place: pass staged
        paths (`staged_files`), the final names being what the record names."""
        if delivered is not None:
            levels = (delivered.detach().float().clamp(0, 1) * LEVELS).round().to(torch.int32).cpu().numpy()
            np.savez_compressed(views_path, views=levels.astype(np.uint16))
        json_path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        """Read a record.

        Raises:
            InputError: the file is missing, not JSON, or not a run record.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            cameras = None if data["cameras"] is None else cameras_from_dict(data["cameras"])
            values = {item.name: data.get(item.name) for item in fields(cls) if item.name not in ("cameras", "path")}
            values["kind"], values["settings"] = str(data["kind"]), dict(data["settings"])
            if values["up"] is not None:
                values["up"] = tuple(float(value) for value in values["up"])
        except OSError as error:
            raise InputError(f"{path}: cannot read the run record ({error.strerror or error})") from None
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError, InputError) as error:
            raise InputError(
                f"{path}: not a sync-splat run record ({type(error).__name__}: {error}); pass the record a "
                "sync-splat command or ns-train sync-splat wrote"
            ) from None
        return cls(**values, cameras=cameras, path=path)

    def delivered_views(self) -> Float[Tensor, "N 3 H W"] | None:
        """The delivered views, `rgb01`, or None when the run saved none.

        Raises:
            InputError: the views file is missing or unreadable, or does not match the cameras.
        """
        if self.delivered is None or self.path is None:
            return None
        path = self.path.parent / self.delivered
        try:
            with np.load(path) as archive:
                views = torch.from_numpy(archive["views"].astype(np.float32)) / LEVELS
        except (OSError, KeyError, ValueError) as error:
            reason = f"{type(error).__name__}: {error}"
            raise InputError(f"{path}: cannot read the delivered views ({reason}) named by {self.path}") from None
        cameras = self.cameras
        if cameras is None or views.shape != (len(cameras), 3, cameras.height, cameras.width):
            raise InputError(f"{path}: views of shape {tuple(views.shape)} do not match {self.path}'s cameras")
        return views


def splat_record(
    kind: str, result: RestyleResult, config: RestyleConfig, source: Path | None, views_file: Path
) -> RunRecord:
    """The record of a `restyle()` run; `views_file` is where its delivered views go (the record names it)."""
    return RunRecord(
        kind=kind, settings=sampling_settings(config, config.views), cameras=result.cameras,
        source=None if source is None else str(Path(source).expanduser().absolute()),
        builtin_source="demo" if kind == "demo" else None, phases=result.phases.to_dict(),
        delivered=views_file.name, up=result.up.up,
    )  # fmt: skip


def sampling_settings(config: SamplingSettings, views: int) -> dict[str, Any]:
    """What a record keeps of a front door's settings; `views` is the number of instance views."""
    settings: dict[str, Any] = {
        "prompt": config.prompt, "denoiser": config.denoiser, "steps": config.steps, "case": config.case,
        "sync_until": config.sync_until, "method": config.method, "seed": config.seed, "views": views,
    }  # fmt: skip
    if config.denoiser == "sd":
        settings["guidance_scale"] = config.sd.guidance_scale
    return settings


def cameras_to_dict(cameras: Cameras) -> dict[str, Any]:
    cameras = cameras.to("cpu", torch.float64)
    Ks = cameras.Ks
    return {
        "c2w": cameras.c2w.tolist(), "fx": Ks[:, 0, 0].tolist(), "fy": Ks[:, 1, 1].tolist(),
        "cx": Ks[:, 0, 2].tolist(), "cy": Ks[:, 1, 2].tolist(), "width": cameras.width, "height": cameras.height,
    }  # fmt: skip


def cameras_from_dict(data: dict[str, Any]) -> Cameras:
    c2w = torch.tensor(data["c2w"], dtype=torch.float32).reshape(-1, 4, 4)
    Ks = torch.zeros(len(c2w), 3, 3)
    for (row, column), name in zip(((0, 0), (1, 1), (0, 2), (1, 2)), ("fx", "fy", "cx", "cy"), strict=True):
        Ks[:, row, column] = torch.tensor(data[name], dtype=torch.float32)
    Ks[:, 2, 2] = 1.0
    return Cameras(c2w, Ks, int(data["width"]), int(data["height"]))
