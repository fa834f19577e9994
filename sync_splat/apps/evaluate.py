"""Measuring a restyle: the pipeline behind `sync-splat eval` (docs/evaluation.md defines every number).

It finds the run (a restyled PLY with its run record beside it, a demo folder, or an `ns-train sync-splat` run folder
or its config.yml), the source scene and the target caption; renders both scenes along a held-out path (a nerfstudio
camera path when one is given or found in the run's dataset, else an orbit whose frames lie between the instance
views); and measures
- CLIP's text-image direction similarity, direction consistency and CLIP-S on those frames (`clip_scores`);
- the fit residual: PSNR of the final scene's renders against the views the sampler delivered (from the record);
- held-out sharpness: the high-band power of the held-out frames over that of the instance views' renders;
- the run's wall time and peak memory per phase (from the record).
It writes `metrics.json` and `strip.png` (source frames above restyled frames) into a new folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sync_splat.apps.clip_scores import (
    DEFAULT_CLIP,
    ClipEmbedder,
    clip_score,
    direction_consistency,
    direction_similarity,
)
from sync_splat.apps.restyle import TRIM, orbit_cameras, render_rgba
from sync_splat.apps.run_record import RunRecord, files_beside, files_in, record_of
from sync_splat.errors import InputError
from sync_splat.scene.camera_paths import read_camera_path
from sync_splat.scene.cameras import Cameras, evenly_spread_indices
from sync_splat.scene.files import check_outputs, staged_folder
from sync_splat.scene.frames import transform_scene
from sync_splat.scene.gaussians import GaussianScene
from sync_splat.scene.images import write_image_rows
from sync_splat.scene.up_axis import UpAxis, estimate_up, stand_on
from sync_splat.studies.fidelity import BANDS, band_powers

HIGH_BAND = BANDS[-2:]
"""The band of the sharpness measure, in cycles per pixel: the fidelity bench's highest."""
MIN_MSE = 1e-12
"""The fit residual's floor (120 dB): views the renders match exactly."""
STRIP_FRAMES = 12
STRIP_HEIGHT = 160
"""strip.png shows at most this many frames of the path, at most this many pixels high."""
ORBIT_VIEWS, ORBIT_FOV_DEG, ORBIT_SIZE = 8, 50.0, 512
"""Without a run record, the held-out orbit is laid out as `sync-splat restyle`'s default rig would be."""


@dataclass(frozen=True)
class EvalConfig:
    """What to compare the restyled scene with, and how."""

    source: Path | None = None
    """The scene that was restyled (.ply, splatfacto config.yml or .ckpt). Default: the run record's."""
    prompt: str | None = None
    """The target caption CLIP compares the restyled frames with. Default: the run's prompt."""
    source_prompt: str = "a photo of a scene"
    """The caption of the source, the start of the text direction."""
    clip: str = DEFAULT_CLIP
    """The CLIP model: a hub id or a local folder (model in safetensors, tokenizer, image processor)."""
    camera_path: Path | None = None
    """A nerfstudio camera path (camera_paths/*.json) to render. Default: the run's dataset's, else an orbit between
    the instance views."""
    out: Path | None = None
    """Folder for metrics.json and strip.png; must not exist yet. Default: <restyled stem>_eval beside the PLY (eval
    in a run folder)."""
    frames: int = 24
    """Frames of the held-out path (a camera path's are spread evenly; an orbit's round up to a multiple of views)."""
    resolution: int | None = None
    """Long side of the frames in pixels. Default: that of the instance views (512 without a run record)."""
    device: str = "auto"
    """Where rendering and CLIP run: 'auto' (CUDA when available), 'cpu', 'cuda'."""

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise InputError(
                f"--frames must be at least 2 (consistency compares consecutive frames), got {self.frames}"
            )
        if self.resolution is not None and self.resolution < 16:
            raise InputError(f"--resolution must be at least 16 pixels, got {self.resolution}")


@dataclass(frozen=True)
class EvalResult:
    """The numbers (as written to metrics.json), the held-out cameras and frames `rgb01` `[F, 3, H, W]`."""

    metrics: dict[str, Any]
    cameras: Cameras
    source_frames: Tensor
    restyled_frames: Tensor
    out: Path


def find_run(restyled: Path) -> tuple[Path, Path | None, Path]:
    """The restyled PLY, its run record (None when there is none) and the default output folder.

    Raises:
        InputError: `restyled` does not exist or is neither a PLY nor a run folder or config.yml.
    """
    if not restyled.exists():
        raise InputError(f"{restyled}: no such file: pass a restyled .ply or an ns-train sync-splat run folder")
    if restyled.is_dir() or restyled.suffix.lower() in (".yml", ".yaml"):
        folder = restyled if restyled.is_dir() else restyled.parent
        ply, (record, _) = folder / "restyled.ply", files_in(folder)
        if not ply.is_file():
            raise InputError(f"{restyled}: no restyled.ply in {folder}: pass a finished ns-train sync-splat run")
        return ply, record if record.is_file() else None, folder / "eval"
    if restyled.suffix.lower() != ".ply":
        raise InputError(f"{restyled}: pass a restyled .ply, or an ns-train sync-splat run folder or its config.yml")
    return restyled, record_of(restyled), restyled.with_name(restyled.stem + "_eval")


def heldout_orbit(scene: GaussianScene, views: int, size: int, fov_deg: float, up: UpAxis, frames: int) -> Cameras:
    """An orbit at the restyle rig's elevation whose frames lie between its `views` ring views: `views * ceil(frames
    / views)` azimuths turned by half their step, so no frame is an instance view (the nearest is half a step off)."""
    count = views * math.ceil(frames / views)
    rig = orbit_cameras(scene, count, size, fov_deg, azimuth_offset_deg=180.0 / count).subset(range(count))
    return stand_on(rig, scene.bounding_sphere(trim=TRIM)[0], up)


def fit_psnr(scene: GaussianScene, cameras: Cameras, delivered: Float[Tensor, "N 3 H W"]) -> float:
    """PSNR (dB) of the scene's renders against the delivered views, over the pixels the scene covers: the residual
    `render - alpha * view` (premultiplied, as the colour fit weighs it), its energy over the covered amount."""
    image, alpha = render_rgba(scene, cameras, background=0.0)
    residual = image - alpha * delivered.to(image)
    mse = residual.double().square().sum() / (3 * alpha.double().sum()).clamp_min(1e-12)
    return float(-10 * torch.log10(mse.clamp_min(MIN_MSE)))


def high_band_power(frames: Float[Tensor, "N 3 H W"], alpha: Float[Tensor, "N 1 H W"]) -> float:
    """Mean power of the frames' covered pixels in `HIGH_BAND` (`band_powers`)."""
    return float(band_powers(frames.cpu(), alpha.cpu() > 0.5, HIGH_BAND)[0])


def evaluate(restyled: Path, config: EvalConfig) -> EvalResult:
    """Measure the restyle `restyled` and write metrics.json and strip.png (module docstring).

    Raises:
        InputError: a path, the run record, the source, the caption or the CLIP model cannot be had, or the output
            folder cannot be written.
    """
    ply, record_path, default_out = find_run(Path(restyled))
    record = None if record_path is None else RunRecord.load(record_path)
    out = config.out or default_out
    check_outputs(out)
    prompt = config.prompt or (record.settings.get("prompt") if record else None)
    if record is None and (config.source is None or prompt is None):
        raise InputError(
            f"{ply}: no run record beside it ({files_beside(ply)[0].name}): pass --source and --prompt to measure it "
            "on an orbit, or restyle with sync-splat restyle / ns-train sync-splat, which write one"
        )
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    )
    clip = ClipEmbedder(config.clip, device)
    source = _source(config.source, record, ply)
    scene = GaussianScene.load(ply)
    if record is not None and record.frame is not None:  # into the frame the run's cameras live in
        source, scene = (transform_scene(s, record.frame["transform"], record.frame["scale"]) for s in (source, scene))
    cameras, path_note = _heldout_cameras(config, record, source)  # built on the CPU, as restyle's rig
    source, scene, cameras = source.to(device), scene.to(device), cameras.to(device)
    source_frames, _ = render_rgba(source, cameras, background=1.0)
    restyled_frames, alpha = render_rgba(scene, cameras, background=1.0)

    text = clip.texts([config.source_prompt, prompt])
    source_embeddings, restyled_embeddings = clip.images(source_frames), clip.images(restyled_frames)
    metrics: dict[str, Any] = {
        "restyled": str(ply.absolute()), "run_record": None if record_path is None else str(record_path.absolute()),
        "source": str(Path(source.source).absolute()) if source.source else record and record.builtin_source,
        "target_prompt": prompt,
        "source_prompt": config.source_prompt, "clip_model": config.clip, "path": path_note,
        "frames": len(cameras), "width": cameras.width, "height": cameras.height,
        "clip_direction_similarity": direction_similarity(source_embeddings, restyled_embeddings, text[0], text[1]),
        "clip_direction_consistency": direction_consistency(source_embeddings, restyled_embeddings),
        "clip_score": clip_score(restyled_embeddings, text[1]),
        "clip_score_source": clip_score(source_embeddings, text[1]),
    }  # fmt: skip
    metrics.update(_record_metrics(record, scene, restyled_frames, alpha))
    with staged_folder(out) as folder:
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        write_image_rows(_strip(source_frames, restyled_frames), folder / "strip.png")
    return EvalResult(metrics, cameras.to("cpu"), source_frames.cpu(), restyled_frames.cpu(), out)


def _source(given: Path | None, record: RunRecord | None, ply: Path) -> GaussianScene:
    if given is not None:
        return GaussianScene.load(given)
    if record is not None and record.source is not None:
        if not Path(record.source).exists():
            raise InputError(f"{record.path}: its source {record.source} is gone: pass the scene with --source")
        return GaussianScene.load(record.source)
    if record is not None and record.builtin_source == "demo":
        from sync_splat.scene.demo import make_demo_scene

        return make_demo_scene()
    raise InputError(f"{ply}: the run record names no source scene: pass it with --source")


def _heldout_cameras(config: EvalConfig, record: RunRecord | None, source: GaussianScene) -> tuple[Cameras, str]:
    """The held-out cameras and a note of where they come from."""
    instances = None if record is None else record.cameras
    size = config.resolution or (max(instances.size) if instances is not None else ORBIT_SIZE)
    path = config.camera_path
    if path is None and record is not None and record.dataset is not None:
        path = next(iter(sorted((Path(record.dataset) / "camera_paths").glob("*.json"))), None)
    if path is not None:
        cameras = read_camera_path(path)
        cameras = cameras.subset(evenly_spread_indices(len(cameras), config.frames))
        cameras = cameras.resized_for(size, multiple=1)
        return cameras, f"camera path {Path(path).absolute()}"
    views = int(record.settings.get("views", ORBIT_VIEWS)) if record is not None else ORBIT_VIEWS
    fov = ORBIT_FOV_DEG
    if instances is not None:  # the rig's field of view across its shorter side
        fov = math.degrees(2 * math.atan(min(instances.size) / (2 * float(instances.Ks[0, 0, 0]))))
    if record is not None and record.up is not None:
        up = UpAxis(record.up, "the run record")
    else:
        up = estimate_up(source, source.source)
    return heldout_orbit(source, views, size, fov, up, config.frames), f"orbit between the {views} instance views"


def _record_metrics(
    record: RunRecord | None, scene: GaussianScene, frames: Tensor, alpha: Tensor
) -> dict[str, float | dict | None]:
    """The fit residual, the held-out sharpness and the run's time and memory (None without a record)."""
    if record is None or record.cameras is None:
        return {"fit_psnr_db": None, "heldout_sharpness": None, "seconds": None, "peak_gib": None, "phases": None}
    instances = record.cameras.to(scene.means.device)
    delivered = record.delivered_views()
    views, views_alpha = render_rgba(scene, instances, background=1.0)
    phases = record.phases or {}
    return {
        "fit_psnr_db": None if delivered is None else fit_psnr(scene, instances, delivered),
        "heldout_sharpness": high_band_power(frames, alpha) / max(high_band_power(views, views_alpha), 1e-30),
        "seconds": phases.get("total_s"), "peak_gib": phases.get("total_peak_gib"), "phases": record.phases,
    }  # fmt: skip


def _strip(source: Tensor, restyled: Tensor) -> tuple[Tensor, Tensor]:
    """At most `STRIP_FRAMES` frames spread over the path, at most `STRIP_HEIGHT` pixels high."""
    keep = evenly_spread_indices(len(source), STRIP_FRAMES)
    scale = min(1.0, STRIP_HEIGHT / source.shape[-2])
    size = (max(1, round(source.shape[-2] * scale)), max(1, round(source.shape[-1] * scale)))
    return tuple(F.interpolate(x[keep].float().cpu(), size=size, mode="area") for x in (source, restyled))
