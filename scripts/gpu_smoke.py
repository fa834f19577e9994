"""Smoke-run the real thing on a CUDA machine: SD 1.5 + ControlNet depth restyling the demo scene and a real scene.

Loads the denoiser once, restyles each scene with SyncTweedies (case 2) and prints, per scene, the wall time of each
phase of the run (UNet + ControlNet, VAE encode/decode, splat render, colour fit, the rest) and the peak VRAM; writes
`<name>.ply` and `<name>_views.png` (the views before and after) into `--out`. Exits with one line and status 2 when
there is no CUDA device or the weights can be neither found locally nor downloaded.

    python scripts/gpu_smoke.py --out outputs/gpu-smoke
    python scripts/gpu_smoke.py --out outputs/gpu-smoke --sd.model /models/sd15 --sd.controlnet /models/cn-depth
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import tyro
from shared_fixtures import find_fixture

from sync_splat.apps.restyle import RestyleConfig, restyle
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


class PhaseTimer:
    """Exclusive wall time per phase: a phase called inside another one (the VAE inside the colour fit) is charged
    to itself only. On CUDA the device is synchronised at every boundary, so kernels are charged to the phase that
    queued them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._mark = 0.0

    def _switch(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._mark
        self._mark = now

    def wrap(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._switch()
            self._stack.append(phase)
            try:
                return function(*args, **kwargs)
            finally:
                self._switch()
                self._stack.pop()

        return timed


class Timed:
    """A proxy of `target` whose methods named in `phases` are charged to their phase of `timer`."""

    def __init__(self, target: Any, timer: PhaseTimer, phases: dict[str, str]) -> None:
        self._target, self._timer, self._phases = target, timer, phases

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        return self._timer.wrap(self._phases[name], value) if name in self._phases else value


def load_scene(name: str, device: torch.device) -> GaussianScene:
    if name == "demo":
        return make_demo_scene().to(device)
    path = Path(name) if Path(name).exists() else find_fixture(name) or Path(name)
    return GaussianScene.load(path).to(device)


def smoke(settings: GpuSmoke, device: torch.device) -> None:
    """The smoke run on `device` (the command line always passes CUDA; the tests run it on the CPU)."""
    refuse_existing(settings.out)
    config = replace(settings.restyle, denoiser="sd", sd=replace(settings.restyle.sd, device=str(device)))
    started = time.perf_counter()
    denoiser = config.build_denoiser()
    print(f"loaded {config.sd.model} + {config.sd.controlnet} in {time.perf_counter() - started:.1f} s")
    scenes = [(Path(name).stem if name != "demo" else "demo", load_scene(name, device)) for name in settings.scenes]
    settings.out.mkdir(parents=True)
    rows = []
    for name, scene in scenes:
        timer = PhaseTimer(device)
        timed_denoiser = Timed(denoiser, timer, {"predict_eps": "unet", "encode": "vae", "decode": "vae"})
        on_cuda = device.type == "cuda"
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        result = restyle(
            scene, config, denoiser=timed_denoiser,
            instrument=partial(Timed, timer=timer, phases={"project": "render", "unproject": "fit"}),
        )  # fmt: skip
        if on_cuda:
            torch.cuda.synchronize(device)
        total = time.perf_counter() - started
        result.scene.save(settings.out / f"{name}.ply")
        write_image_rows((result.before, result.after), settings.out / f"{name}_views.png")
        phases = {phase: timer.seconds.get(phase, 0.0) for phase in ("unet", "vae", "render", "fit")}
        phases["other"] = total - sum(phases.values())
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if on_cuda else "-"
        rows.append((name, scene.num_gaussians, total, phases, peak))
    print(f"\n{config.steps} steps, {config.views + 1} views, case {config.case}, prompt {config.prompt!r}\n")
    print("| scene | Gaussians | total s | UNet s | VAE s | render s | fit s | other s | peak VRAM GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, count, total, phases, peak in rows:
        times = " | ".join(f"{phases[p]:.3g}" for p in ("unet", "vae", "render", "fit", "other"))
        print(f"| {name} | {count} | {total:.3g} | {times} | {peak} |")
    print(f"\nwrote {settings.out}/")


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
