"""Smoke-run the real thing on a CUDA machine: SD 1.5 + ControlNet depth restyling the demo scene and a real scene.

Loads the denoiser once, restyles each scene with SyncTweedies (case 2) and prints, per scene, the wall time of each
phase of the run (splat render, UNet + ControlNet, VAE encode/decode, colour fit, the rest) and the peak VRAM; writes
`<name>.ply` and `<name>_views.png` (the views before and after) into `--out`. Exits with one line and status 2 when
there is no CUDA device or the weights can be neither found locally nor downloaded.

    python scripts/gpu_smoke.py --out outputs/gpu-smoke
    python scripts/gpu_smoke.py --out outputs/gpu-smoke --sd.model /models/sd15 --sd.controlnet /models/cn-depth
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import tyro
from shared_fixtures import find_fixture

from sync_splat.apps.phases import PHASES, PhaseReport
from sync_splat.apps.restyle import RestyleConfig, preview_views, restyle
from sync_splat.errors import InputError, one_line_errors
from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.files import refuse_existing
from sync_splat.scene.gaussians import GaussianScene
from sync_splat.scene.images import write_image_rows


@dataclass(frozen=True)
class GpuSmoke:
    """Restyle the demo scene and real scenes with Stable Diffusion + ControlNet depth on CUDA, timing each phase."""

    out: Path = Path("outputs/gpu-smoke")
    """Folder for the restyled PLYs and the view grids; must not exist yet."""
    scenes: tuple[str, ...] = ("demo", "donut_mipsplatting.ply")
    """'demo' (the bundled teapot), paths of splat scenes (.ply, splatfacto config.yml or .ckpt), or names of shared
    fixtures (scripts/shared_fixtures.py)."""
    restyle: RestyleConfig = field(
        default_factory=lambda: RestyleConfig(prompt="a marble statue", denoiser="sd", steps=30, views=8)
    )
    """The run's settings (`sync-splat restyle --help` documents them); the denoiser is always 'sd'."""


def load_scene(name: str, device: torch.device) -> GaussianScene:
    if name == "demo":
        return make_demo_scene().to(device)
    path = Path(name) if Path(name).exists() else find_fixture(name) or Path(name)
    return GaussianScene.load(path).to(device)


@dataclass(frozen=True)
class SceneTiming:
    """One scene's row of the table: wall seconds of the whole restyle and of each phase, calls per phase."""

    name: str
    gaussians: int
    phases: PhaseReport

    def cells(self) -> list[str]:
        phases = self.phases
        times = [f"{phases.seconds[phase]:.3g}" for phase in PHASES] + [f"{phases.other_s:.3g}"]
        peak = "-" if phases.total_peak_gib is None else f"{phases.total_peak_gib:.2f}"
        return [self.name, str(self.gaussians), f"{phases.total_s:.3g}", *times, peak]


def smoke(settings: GpuSmoke, device: torch.device) -> list[SceneTiming]:
    """The smoke run on `device` (the command line always passes CUDA; the tests run it on the CPU); returns the
    table's rows."""
    refuse_existing(settings.out)
    config = replace(settings.restyle, denoiser="sd", sd=replace(settings.restyle.sd, device=str(device)))
    started = time.perf_counter()
    denoiser = config.build_denoiser()
    print(f"loaded {config.sd.model} + {config.sd.controlnet} in {time.perf_counter() - started:.1f} s")
    scenes = [(Path(name).stem if name != "demo" else "demo", load_scene(name, device)) for name in settings.scenes]
    settings.out.mkdir(parents=True)
    rows = []
    for name, scene in scenes:
        result = restyle(scene, config, denoiser=denoiser)
        result.scene.save(settings.out / f"{name}.ply")
        grid = preview_views(scene, result.scene, result.cameras, max(result.cameras.size))  # at the views' size
        write_image_rows(grid, settings.out / f"{name}_views.png")
        rows.append(SceneTiming(name, scene.num_gaussians, result.phases))
    print(f"\n{config.steps} steps, {config.views + 1} views, case {config.case}, prompt {config.prompt!r}\n")
    memory = "peak VRAM GiB" if device.type == "cuda" else "peak RSS GiB"
    print(f"| scene | Gaussians | total s | render s | UNet s | VAE s | fit s | other s | {memory} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")
    print(f"\nwrote {settings.out}/")
    return rows


def main() -> None:
    settings = tyro.cli(GpuSmoke)
    with one_line_errors("gpu_smoke"):
        if not torch.cuda.is_available():
            raise InputError(
                "no CUDA device found, and this smoke run needs one; on the CPU run `sync-splat demo` or the tests"
            )
        smoke(settings, torch.device("cuda"))


if __name__ == "__main__":
    main()
