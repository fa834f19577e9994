"""Painting a 360-degree panorama end to end: the pipeline behind `sync-splat panorama`.

It builds the denoiser (the exact prior on CPU, or Stable Diffusion + ControlNet depth), reads the optional
360-degree depth map, builds the panorama bridge and the sampler, runs every step with a progress bar, and writes the
equirectangular PNG (and optionally six cube-map faces) and the run record (`<stem>_run.json`, `<stem>_delivered.npz`:
`sync_splat.apps.run_record`) atomically, never over an existing file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from sync_splat.apps.phases import BRIDGE_PHASES, DENOISER_PHASES, PhaseTimer, Timed
from sync_splat.apps.progress import sample_with_progress
from sync_splat.apps.run_record import RunRecord, files_beside, sampling_settings
from sync_splat.apps.settings import SamplingSettings
from sync_splat.bridges.panorama import PanoramaBridge, PanoramaBridgeConfig, cube_face_paths, export_cube_faces
from sync_splat.bridges.plumbing import resolve_device
from sync_splat.denoisers.attention import MultiViewAttentionConfig
from sync_splat.denoisers.stable_diffusion import StableDiffusionDenoiserConfig
from sync_splat.errors import InputError
from sync_splat.functional.equirect import focal_length
from sync_splat.sampler import SyncSampler
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.depth_maps import read_depth_map
from sync_splat.scene.files import check_outputs, staged_files
from sync_splat.scene.images import write_png


@dataclass(frozen=True)
class PanoramaConfig(SamplingSettings):
    """What panorama to paint, and how."""

    prompt: str = "clouds"
    """The text prompt. With the prior it names a texture preset (marble, wood, stripes, clouds, camouflage,
    terrazzo, granite)."""
    height: int | None = None
    """Panorama rows in the denoiser's space; None: `texel_oversample` texels per view pixel (640 rows for 64-pixel
    or 64-latent views). The PNG has the panorama's rows with the prior, and the decoded views' angular resolution
    with SD (a 1280 x 2560 PNG for 512-pixel views)."""
    view_size: int | None = None
    """Side of each view in the denoiser's space; None: the model's native size (64), or matched to height when only
    height is given."""
    texel_oversample: int = 4
    """Panorama texels per view pixel along each axis (1: matched, which loses fine detail to resampling)."""
    elevations_deg: tuple[float, ...] = (0.0, 45.0, -45.0)
    """Pitch of each ring of 8 views (the paper uses only 0, which leaves latitudes beyond about 40 degrees unseen)."""
    pole_views: bool = True
    """Add views straight up and down, so that with the +-45 degree rings the whole sphere is seen."""
    fov_deg: float = 72.0
    """Field of view of every view (the paper: 72 degrees)."""
    sd: StableDiffusionDenoiserConfig = field(
        default_factory=lambda: StableDiffusionDenoiserConfig(
            guidance_scale=25.0, multiview_attention=MultiViewAttentionConfig(reference_view=4)
        )
    )
    """Stable Diffusion settings (used with --denoiser sd; the prompt above replaces sd.prompt). The defaults are the
    paper's panorama settings: guidance 25, ControlNet depth at 0.7, ring attention with view 4 (yaw 180) as the
    reference."""
    sampling: Literal["bilinear", "nearest"] = "bilinear"
    """How views sample the panorama and the panorama samples the views (the official code: nearest)."""
    weight_power: float = 24.0
    """Views are averaged with weights cos(angle to the view's axis) ** weight_power (0: uniform, the paper; 24 keeps
    more of the views' contrast, docs/fidelity.md)."""
    border_feather: float = 0.5
    """The weights also ramp from 0 at a view's edge over this fraction of its half-width (0: a hard edge)."""
    back_projection_steps: int = 1
    """Corrections of the views' average by what the views still differ from the panorama's renders, so that the
    round trip the sampler makes at every step does not blur the views' detail away (0: the plain average)."""
    noise_oversample: int | None = None
    """Initial noise is drawn this many times finer than the panorama, so no view repeats a noise value (None: at
    least twice as fine as the views' pixels)."""
    export_decode: Literal["auto", "panorama", "views"] = "auto"
    """How the PNG is decoded: the whole panorama at once, or per view and averaged in RGB (auto: the panorama for
    the prior, the views for SD, whose VAE decodes the stretched polar rows of a latent panorama poorly)."""

    def bridge_config(self) -> PanoramaBridgeConfig:
        """The bridge settings with this config's resolution and views."""
        return PanoramaBridgeConfig(
            height=self.height,
            view_size=self.view_size,
            texel_oversample=self.texel_oversample,
            fov_deg=self.fov_deg,
            elevations_deg=tuple(self.elevations_deg),
            pole_views=self.pole_views,
            sampling=self.sampling,
            weight_power=self.weight_power,
            border_feather=self.border_feather,
            back_projection_steps=self.back_projection_steps,
            noise_oversample=self.noise_oversample,
            export_decode=self.export_decode,
        )


@dataclass(frozen=True)
class PanoramaResult:
    """A painted panorama: the RGB image, `rgb01` `[3, H, 2H]`, and the files written."""

    rgb01: Tensor
    paths: tuple[Path, ...]


def paint_panorama(
    config: PanoramaConfig,
    depth: str | Path | None,
    out: str | Path,
    cube_faces: bool = False,
    show_progress: bool = True,
) -> PanoramaResult:
    """Paint a 360-degree panorama from `config.prompt` (and a depth map) and write it as an equirectangular PNG.

    Args:
        config: prompt, denoiser, views and sampling settings.
        depth: a 360-degree depth map (`.npy`, 16-bit `.png`, `.exr`, `.dpt`; see `sync_splat.scene.depth_maps`) for
            ControlNet depth, or None (required by SD with a ControlNet; the prior ignores it).
        out: the PNG to write; it must not exist yet.
        cube_faces: also write six cube-map faces, `<stem>_{front,right,back,left,up,down}.png`, beside `out`.
        show_progress: show a progress bar.

    Returns:
        The RGB panorama and the written paths (the panorama first, the run record's two files last).

    Raises:
        InputError: an output exists or cannot be written, `out` is not a .png, the depth map is bad, or the
            denoiser cannot be built.
    """
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out}: the panorama is written as a .png file")
    outputs = (out, *cube_face_paths(out)) if cube_faces else (out,)
    outputs = (*outputs, *files_beside(out))
    check_outputs(*outputs)
    if config.denoiser == "sd" and config.sd.controlnet is not None and depth is None:
        raise InputError(
            "the SD denoiser's ControlNet depth needs a 360-degree depth map: pass --depth, or run without ControlNet "
            "(--sd.controlnet None)"
        )
    depth_map = None if depth is None else read_depth_map(depth)
    timer = PhaseTimer(resolve_device(config.bridge_config().device))
    denoiser = Timed(config.build_denoiser(), timer, DENOISER_PHASES)
    bridge = config.bridge_config().setup(denoiser, depth_map)
    sampler = SyncSampler(denoiser, Timed(bridge, timer, BRIDGE_PHASES), config.sync_config())
    result = sample_with_progress(sampler, config.seed, f"painting '{config.prompt}'", show_progress)
    rgb01 = bridge.rgb_panorama(result.z)
    delivered = denoiser.decode(result.instances).float().clamp(0, 1)
    record = RunRecord(
        kind="panorama", settings=sampling_settings(config, bridge.num_views), cameras=view_cameras(bridge),
        source=None if depth is None else str(Path(depth).absolute()), phases=timer.report().to_dict(),
        delivered=outputs[-1].name,
    )  # fmt: skip
    with staged_files(*outputs) as staged:
        write_png(rgb01, staged[0])
        if cube_faces:
            export_cube_faces(rgb01, staged[0])
        record.save(staged[-2], staged[-1], delivered)
    return PanoramaResult(rgb01=rgb01.cpu(), paths=outputs)


def view_cameras(bridge: PanoramaBridge) -> Cameras:
    """The bridge's views as cameras at the origin, at the decoded size. Their axes are the panorama's view axes
    (`view_axes`), whose frame is mirrored (determinant -1), so `c2w` is not a rotation here."""
    size = bridge.instance_shape[-1] * bridge.downsample
    focal = focal_length(bridge.config.fov_deg, size)
    c2w = torch.eye(4).repeat(bridge.num_views, 1, 1)
    c2w[:, :3, :3] = bridge.axes.float()
    K = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
    return Cameras(c2w, K.expand(bridge.num_views, 3, 3).clone(), size, size)
