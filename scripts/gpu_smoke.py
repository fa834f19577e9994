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
    """Exclusive wall time and calls per phase: a phase called inside another one (the VAE inside the colour fit) is
    charged to itself only. On CUDA the device is synchronised at every boundary, so kernels are charged to the phase
    that queued them.

    Args:
        device: where the timed work runs.
        clock: seconds since any fixed point (the tests pass a fake one).
    """

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = device
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[str] = []
        self._mark = 0.0

    def _switch(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = self.clock()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._mark
        self._mark = now

    def wrap(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._switch()
            self.calls[phase] += 1
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


PHASES = ("unet", "vae", "render", "fit")


@dataclass(frozen=True)
class SceneTiming:
    """One scene's row of the table: wall seconds of the whole restyle and of each phase, calls per phase."""

    name: str
    gaussians: int
    total_s: float
    seconds: dict[str, float]
    calls: dict[str, int]
    peak_vram_gib: float | None

    @property
    def other_s(self) -> float:
        """What no phase was charged: sampling arithmetic, conditions, export."""
        return self.total_s - sum(self.seconds.values())

    def cells(self) -> list[str]:
        times = [f"{self.seconds[phase]:.3g}" for phase in PHASES] + [f"{self.other_s:.3g}"]
        peak = "-" if self.peak_vram_gib is None else f"{self.peak_vram_gib:.2f}"
        return [self.name, str(self.gaussians), f"{self.total_s:.3g}", *times, peak]


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
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else None
        seconds = {phase: timer.seconds.get(phase, 0.0) for phase in PHASES}
        calls = {phase: timer.calls.get(phase, 0) for phase in PHASES}
        rows.append(SceneTiming(name, scene.num_gaussians, total, seconds, calls, peak))
    print(f"\n{config.steps} steps, {config.views + 1} views, case {config.case}, prompt {config.prompt!r}\n")
    print("| scene | Gaussians | total s | UNet s | VAE s | render s | fit s | other s | peak VRAM GiB |")
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
