"""Restyling a splat scene end to end, without nerfstudio's trainer: the pipeline behind `sync-splat restyle|demo`.

It builds the denoiser (the exact prior on CPU, or Stable Diffusion + ControlNet depth), an orbit rig around the
scene's bounding sphere sized for the model (refusing a scene that none of its views sees), the splat bridge and the
sampler; runs every step with a progress bar; and returns the restyled scene, its cameras, the views the sampler
delivered and the run's phases, which `sync_splat.apps.commands` writes as a PLY, a PNG grid of the views before and
after (`preview_views`) and the run record (and a turntable GIF for the demo).

In a process group (`torchrun`, `sync-splat restyle --nproc`; `sync_splat.distributed`) every process runs `restyle`:
each renders, denoises and fits its own share of the views, the fit's sums are added over the processes, and each
returns the same result (only process 0 shows progress; the caller writes on process 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.apps.phases import BRIDGE_PHASES, DENOISER_PHASES, PhaseReport, PhaseTimer, Timed
from sync_splat.apps.progress import sample_with_progress
from sync_splat.apps.settings import SamplingSettings
from sync_splat.bridges.splat import SplatBridgeConfig
from sync_splat.denoisers.base import Denoiser
from sync_splat.denoisers.stable_diffusion import StableDiffusionDenoiserConfig
from sync_splat.distributed import ViewShard, process_shard
from sync_splat.errors import InputError
from sync_splat.render.gaussians import render_gaussians
from sync_splat.sampler import SyncSampler
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.files import atomic_output
from sync_splat.scene.gaussians import GaussianScene
from sync_splat.scene.up_axis import UpAxis, estimate_up, stand_on

TRIM = 0.01
"""The fraction of outlying Gaussians (floaters) the orbit rig's bounding sphere leaves out."""
MIN_ALPHA = 1.0 / 255.0
"""A scene counts as seen when some pixel of some view is at least this opaque (one 8-bit level)."""
PREVIEW_SIZE = 256
"""Side, in pixels, of each view in a restyle's PNG grid unless the user says otherwise."""
MAX_VIEWS = 360
"""Most ring views a run takes: one per degree of azimuth. Every step renders and denoises each view, so time and
memory grow in proportion to the count, and closer views show nearly the same picture."""


@dataclass(frozen=True)
class RestyleConfig(SamplingSettings):
    """What to restyle a scene into, and how."""

    sd: StableDiffusionDenoiserConfig = field(
        default_factory=lambda: StableDiffusionDenoiserConfig(guidance_scale=35.0)
    )
    """Stable Diffusion settings (used with --denoiser sd; the prompt above replaces sd.prompt). The official splat
    setting: guidance 35."""
    views: int = 8
    """Views around the scene: one ring of this many azimuths at 15 degrees elevation, plus one top view."""
    fov_deg: float = 50.0
    """Field of view of the orbit cameras."""
    compact_ply: bool = False
    """Write the restyled PLY with SH degree 0: the restyled colours are the same from every side, so the
    higher-order SH columns of the source's degree (45 for degree 3) would all be zero; the file is about 3.5x
    smaller."""
    fit: SplatBridgeConfig = field(default_factory=SplatBridgeConfig)
    """How the splat colours are fitted to the views (canonical space, tolerance, iterations)."""
    up: str | None = None
    """The scene's up direction, for the orbit views and their prompt suffixes: an axis (z, x; write --up=-y for a
    minus) or 'x,y,z'. None estimates it: from a splatfacto run's dataparser, an ns-export PLY's header, or the
    scene's shape (splatfacto and ns-export scenes are z-up)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.views < 1:
            raise InputError(f"--views must be at least 1, got {self.views}")
        if self.views > MAX_VIEWS:
            passes = (self.views + 1) * self.steps
            raise InputError(
                f"--views {self.views} is more than {MAX_VIEWS}: each of the {self.steps} steps renders and denoises "
                f"every view plus the top one ({passes:,} view passes in all; time and memory grow with the count), "
                "and beyond one view per degree of the orbit ring neighbours show nearly the same picture: use at most "
                f"{MAX_VIEWS} (the default is 8)"
            )
        if not 0.0 < self.fov_deg < 180.0:
            raise InputError(f"--fov-deg must be in (0, 180) degrees, got {self.fov_deg}")


@dataclass(frozen=True)
class RestyleResult:
    """The restyled scene and what the run went through."""

    scene: GaussianScene
    cameras: Cameras
    """The orbit views the scene was restyled through."""
    delivered: Tensor
    """The views the sampler's instance processes ended with, decoded, `rgb01` `[N, 3, H, W]`: what the restyled
    colours were fitted to (`after` is the restyled scene's render of the same cameras)."""
    phases: PhaseReport
    """Wall time and peak memory per phase of the run."""
    up: UpAxis
    """The up direction the orbit views stood on."""


def orbit_cameras(
    scene: GaussianScene, views: int, native_size: int, fov_deg: float, azimuth_offset_deg: float = 0.0
) -> Cameras:
    """An orbit rig around the scene's (floater-trimmed) bounding sphere at the model's native size (its ring turned
    by `azimuth_offset_deg`: `sync-splat eval` holds out frames between the restyled views).

    Raises:
        InputError: the scene has no extent to orbit (its Gaussians sit at one point).
    """
    centre, radius = scene.bounding_sphere(trim=TRIM)
    where = f"{scene.source}: " if scene.source is not None else ""
    if radius <= 0:
        count = "it has one Gaussian" if scene.num_gaussians == 1 else f"{1 - TRIM:.0%} of its {scene.num_gaussians}"
        raise InputError(
            f"{where}the scene's Gaussians all sit at one point (radius 0; {count}): there is nothing for orbit views "
            "to frame; check that the file holds the whole scene"
        )
    rig = Cameras.orbit_rig(
        centre, radius, num_azimuths=views, elevations_deg=(15.0,), top_views=1, fov_deg=fov_deg,
        size=(native_size, native_size), azimuth_offset_deg=azimuth_offset_deg,
    )  # fmt: skip
    return rig.resized_for(native_size, multiple=64 if native_size >= 64 else native_size)


def render_rgb(scene: GaussianScene, cameras: Cameras, background: float = 1.0) -> Tensor:
    """The scene's DC colours rendered over a grey level, `rgb01` `[N, 3, H, W]`."""
    return render_rgba(scene, cameras, background)[0]


def render_rgba(scene: GaussianScene, cameras: Cameras, background: float) -> tuple[Tensor, Tensor]:
    """`rgb01` `[N, 3, H, W]` over a grey level, and the views' alpha `[N, 1, H, W]`."""
    out = render_gaussians(
        scene.means, scene.quats_wxyz, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits), scene.rgb01,
        cameras.viewmats.to(scene.means), cameras.Ks.to(scene.means), cameras.width, cameras.height,
    )  # fmt: skip
    return (out.image + (1 - out.alpha) * background).clamp(0, 1), out.alpha


def check_seen(scene: GaussianScene, alpha: Float[Tensor, "N 1 H W"]) -> None:
    """Refuse a scene that no view sees: restyling it would fit nothing and write a scene of grey Gaussians.

    Args:
        scene: the scene, for the message.
        alpha: its rendered alpha in every view of the rig.
    """
    if bool((alpha > MIN_ALPHA).any()):
        return
    where = f"{scene.source}: " if scene.source is not None else ""
    opacity = torch.sigmoid(scene.opacity_logits)
    raise InputError(
        f"{where}no view sees the scene: {alpha.shape[0]} orbit views around its bounding sphere render nothing "
        f"(log-scales {float(scene.log_scales.min()):.3g} to {float(scene.log_scales.max()):.3g}, positions up to "
        f"{float(scene.means.abs().max()):.3g} from the origin, opacities {float(opacity.min()):.3g} to "
        f"{float(opacity.max()):.3g}): check that the file's scale_* are log standard deviations, its opacity "
        "logits, and its x y z a sane size"
    )


def check_splittable(denoiser: Denoiser, shard: ViewShard) -> ViewShard:
    """`shard`, once it is clear that `denoiser` treats each view on its own, as splitting the views across
    processes needs (Stable Diffusion's multi-view attention couples them)."""
    if shard.sharded and getattr(denoiser, "attention", None) is not None:
        raise InputError(
            "--sd.multiview-attention couples every view in one forward pass, so the views cannot be split across "
            f"{shard.world} processes: run one process, or drop the multi-view attention"
        )
    return shard


def restyle(
    scene: GaussianScene,
    config: RestyleConfig,
    show_progress: bool = True,
    denoiser: Denoiser | None = None,
) -> RestyleResult:
    """Restyle `scene`'s colours from `config.prompt`; geometry is never changed.

    Args:
        scene: the scene to restyle (not modified).
        config: the settings.
        show_progress: draw a progress bar with an ETA.
        denoiser: an already loaded denoiser to reuse across scenes; None builds `config`'s (its loading is not
            part of the run's phases).

    Raises:
        InputError: the settings cannot run with this denoiser, or no view of the rig sees the scene (checked before
            the bridge and the sampler are built), or the views cannot be split across the processes of the group.
    """
    if denoiser is None:
        denoiser = config.build_denoiser()
    else:
        config.check_steps(denoiser)
    timer = PhaseTimer(scene.means.device)
    denoiser = Timed(denoiser, timer, DENOISER_PHASES)
    up = estimate_up(scene, scene.source, override=config.up)
    rig = orbit_cameras(scene, config.views, denoiser.native_size, config.fov_deg)
    cameras = stand_on(rig, scene.bounding_sphere(trim=TRIM)[0], up)
    shard = check_splittable(denoiser, process_shard(len(cameras)))
    show_progress = show_progress and shard.rank == 0
    _, alpha = render_rgba(scene, cameras, background=1.0)
    check_seen(scene, alpha)
    fit = config.fit
    if (fit.up, fit.front) == (SplatBridgeConfig.up, SplatBridgeConfig.front):  # name the views on the same up
        fit = replace(fit, up=up.up, front=up.front)
    bridge = fit.setup(denoiser, scene, cameras, shard)
    if show_progress:
        print(bridge.memory_plan.summary(), flush=True)
    sampler = SyncSampler(denoiser, Timed(bridge, timer, BRIDGE_PHASES), config.sync_config())
    result = sample_with_progress(sampler, config.seed, f"restyling '{config.prompt}'", show_progress)
    restyled = bridge.restyled_scene(result.z)
    if config.compact_ply:
        restyled = replace(restyled, sh=restyled.sh[:, :1])
    delivered = bridge.shard.gather(bridge.decode_views(result.instances).float().clamp(0, 1))  # every process's
    return RestyleResult(scene=restyled, cameras=cameras, delivered=delivered, phases=timer.report(), up=up)


def preview_views(
    source: GaussianScene, restyled: GaussianScene, cameras: Cameras, size: int
) -> tuple[Float[Tensor, "N 3 S S"], Float[Tensor, "N 3 S S"]]:
    """The source and the restyled scene rendered from `cameras` at `size` pixels (the long side), over white.

    Raises:
        InputError: `size` is not from 16 to 4096 pixels.
    """
    if not 16 <= size <= 4096:
        raise InputError(f"--preview-size must be from 16 to 4096 pixels, got {size}")
    resized = cameras.resized_for(size, multiple=1)
    return render_rgb(source, resized), render_rgb(restyled, resized)


def write_turntable(scene: GaussianScene, path: Path, frames: int = 36, size: int = 160, fov_deg: float = 50.0) -> Path:
    """A looping GIF of the scene turning once, seen from 20 degrees above; written atomically."""
    centre, radius = scene.bounding_sphere(trim=TRIM)
    cameras = Cameras.orbit_rig(
        centre, radius, num_azimuths=frames, elevations_deg=(20.0,), top_views=0, fov_deg=fov_deg, size=(size, size)
    )
    images = render_rgb(scene, cameras)
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    with atomic_output(path) as tmp:
        iio.imwrite(tmp, np.ascontiguousarray(pixels), extension=".gif", duration=80, loop=0)
    return path
