"""Texturing a mesh end to end: the pipeline behind `sync-splat mesh` (the paper's mesh-texturing application).

It loads the mesh (UVs from the file, or xatlas), builds the denoiser (the exact prior on CPU, or Stable Diffusion +
ControlNet depth), the mesh-texture bridge with the paper's 10 views and the sampler; runs every step with a
progress bar; decodes the final views, bakes the RGB texture from them (cos^6 weights) and writes, into one
folder, `textured.obj` + `textured.mtl` + `textured.png`, `textured.glb`, and `views.png`: the decoded views (top
row) above renders of the exported texture (bottom row), which shows at a glance how consistent the views were; and
the run record (`run.json`, `delivered.npz`: `sync_splat.apps.run_record`), with the time and memory of each phase.
Existing files are never overwritten, and the input mesh is never written to.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import Tensor

from sync_splat.apps.phases import BRIDGE_PHASES, DENOISER_PHASES, PhaseTimer, Timed
from sync_splat.apps.progress import sample_with_progress
from sync_splat.apps.run_record import RunRecord, files_in, sampling_settings
from sync_splat.apps.settings import SamplingSettings
from sync_splat.bridges.mesh import MeshBridgeConfig
from sync_splat.bridges.plumbing import resolve_device
from sync_splat.denoisers.stable_diffusion import StableDiffusionDenoiserConfig
from sync_splat.sampler import SyncSampler
from sync_splat.scene.files import check_outputs, staged_files
from sync_splat.scene.images import write_image_rows
from sync_splat.scene.mesh import MeshAsset, UVMode

OUTPUT_NAMES = ("textured.obj", "textured.mtl", "textured.png", "textured.glb", "views.png")
"""The files `texture_mesh` writes into its output folder."""
PRIOR_VIEW_SIZE = 128
"""View side with the prior when `bridge.view_size` is None: twice its native 64 pixels, for a 256-pixel texture
and legible previews at about a second more on a CPU."""


@dataclass(frozen=True)
class MeshTextureConfig(SamplingSettings):
    """What to paint on a mesh, and how."""

    prompt: str = "marble"
    """The text prompt. With the prior it names a texture preset (marble, wood, stripes, clouds, camouflage,
    terrazzo, granite); with SD each view adds ", front view", ", side view" or ", back view"."""
    sd: StableDiffusionDenoiserConfig = field(
        default_factory=lambda: StableDiffusionDenoiserConfig(guidance_scale=15.5)
    )
    """Stable Diffusion settings (used with --denoiser sd; the prompt above replaces sd.prompt). The official mesh
    settings: guidance 15.5, ControlNet depth scale 0.7."""
    uvs: UVMode = "auto"
    """UV layout: the file's when usable, else xatlas ('auto'); the file's or an error ('file'); always xatlas."""
    bridge: MeshBridgeConfig = field(default_factory=MeshBridgeConfig)
    """Views, texture sizes and aggregation weights (defaults: the paper's 10 views; view size 128 pixels with the
    prior, and with SD its native size, 512 for SD 1.5; the paper used 768 with SD)."""

    def bridge_config(self) -> MeshBridgeConfig:
        """The bridge settings, with the prior's default view size filled in."""
        if self.bridge.view_size is None and self.denoiser == "prior":
            return replace(self.bridge, view_size=PRIOR_VIEW_SIZE)
        return self.bridge


@dataclass(frozen=True)
class MeshTextureResult:
    """What `texture_mesh` produced.

    Attributes:
        paths: every written file, in `OUTPUT_NAMES` order, then the run record's two files.
        texture: the exported RGB texture `rgb01` `[3, Ht, Wt]`, row 0 on top.
        views: the sampler's final views, decoded, `rgb01` `[N, 3, H, W]`.
        renders: the exported mesh rendered from the same cameras over white, `[N, 3, H, W]`.
    """

    paths: tuple[Path, ...]
    texture: Tensor
    views: Tensor
    renders: Tensor


def texture_mesh(
    config: MeshTextureConfig, mesh_path: str | Path, out_dir: str | Path, show_progress: bool = True
) -> MeshTextureResult:
    """Paint `mesh_path` from `config.prompt` and write the textured mesh and a PNG grid of the views to `out_dir`.

    The five files appear together when all are written, or not at all.

    Raises:
        InputError: an output file exists already or cannot be written, the mesh cannot be used, or the denoiser
            cannot be built.
    """
    out_dir = Path(out_dir)
    paths = tuple(out_dir / name for name in OUTPUT_NAMES)
    check_outputs(*paths, *files_in(out_dir))
    mesh = MeshAsset.load(mesh_path, uvs=config.uvs)
    timer = PhaseTimer(resolve_device(config.bridge.device))
    denoiser = Timed(config.build_denoiser(), timer, DENOISER_PHASES)
    bridge = config.bridge_config().setup(denoiser, mesh)
    sampler = SyncSampler(denoiser, Timed(bridge, timer, BRIDGE_PHASES), config.sync_config())
    label = f"texturing {Path(mesh_path).name} '{config.prompt}'"
    result = sample_with_progress(sampler, config.seed, label, show_progress)

    views = denoiser.decode(result.x).float().cpu()
    texture = timer.wrap("fit", bridge.bake_rgb)(views)
    renders = timer.wrap("render", bridge.render_rgb)(texture, background=1.0)
    record = RunRecord(
        kind="mesh", settings=sampling_settings(config, bridge.num_views), source=str(Path(mesh_path).absolute()),
        cameras=bridge.cameras.resized(bridge.image_size, bridge.image_size), phases=timer.report().to_dict(),
        delivered=files_in(out_dir)[1].name,
    )  # fmt: skip
    with staged_files(*paths, *files_in(out_dir)) as (obj, mtl, png, glb, grid, record_json, record_views):
        bridge.write(texture, obj)  # also writes the .mtl and .png beside it
        bridge.write(texture, glb)
        write_image_rows((views, renders), grid)
        record.save(record_json, record_views, views)
    return MeshTextureResult(paths=(*paths, *files_in(out_dir)), texture=texture, views=views, renders=renders)
