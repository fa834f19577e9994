"""Full-size timing of a Stable Diffusion restyle, with or without the weights: SD 1.5 + ControlNet depth restyling
splat scenes at the paper's setting (50 views, 30 steps, 512 x 512, guidance on), by phase.

With `--random-weights` the models are built at their real sizes from the configs in
`sync_splat/denoisers/configs/sd15_depth/` (`--configs`) with random weights, and nothing is downloaded: their
images are noise, but every call does the real work on tensors of the real shapes, so the time and memory are real.
Without it, the weights of `--restyle.sd.model` and `--restyle.sd.controlnet` are loaded.

The full setting is `--restyle`'s: 49 ring views plus the top view (50 views), 30 steps of SyncTweedies, guidance 35
(the official splat setting), each view 512 x 512 (64 x 64 latents). On CUDA it runs as it is and every number is
measured. On the CPU, where one view's UNet, ControlNet and VAE passes of a step take minutes, a reduction runs instead
(`--reduced-views` ring views plus the top one, `--reduced-steps` steps, the same image size and guidance) and each
phase is extrapolated to the full setting per view pass:

    full seconds of a phase = measured seconds / measured view passes x full view passes,

where a phase's view passes are its calls times the views each call takes (every call takes all the views). The calls
of a run depend on the steps and the synchronisation window, not on the model or the number of views: they are counted
by running the same sampler settings with the exact prior at a toy size, and the bench checks that this count matches
the reduced run's calls. The rest of the run ("other": the bridge's compositing weights, the final render, sampling
arithmetic) is extrapolated per view. Peak memory is measured, never extrapolated: on the CPU it is the process's
resident peak of the reduced run.

The last line is `RESULT seconds=<x> peak_gib=<x> unet_share=<x>`: the slowest scene's full-setting seconds
(extrapolated on the CPU), the largest measured peak (GiB) and the slowest scene's fraction of its time in the
denoise phase (UNet + ControlNet).

    python scripts/bench_sd.py --random-weights
    python scripts/bench_sd.py --random-weights --scenes demo --reduced-steps 1 --threads 2
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import tyro
from gpu_smoke import load_scene
from shared_fixtures import find_fixture

from sync_splat.apps.phases import PHASES, PhaseReport
from sync_splat.apps.restyle import RestyleConfig, restyle
from sync_splat.denoisers.model_loading import resolve_device_and_dtype
from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.denoisers.random_weights import SD15_DEPTH, build_random_models, parameter_counts
from sync_splat.denoisers.stable_diffusion import StableDiffusionDenoiser
from sync_splat.errors import InputError, one_line_errors
from sync_splat.functional.diffusion import NoiseSchedule
from sync_splat.scene.demo import make_demo_scene

ROWS = ("render", "denoise", "codec", "fit", "other")
LABELS = {"render": "render", "denoise": "denoise (UNet + ControlNet)", "codec": "codec (VAE)", "fit": "fit",
          "other": "other"}  # fmt: skip


@dataclass(frozen=True)
class BenchSD:
    """Time a restyle with SD 1.5 + ControlNet depth at the paper's setting, by phase (extrapolated on the CPU)."""

    random_weights: bool = False
    """Build the models from --configs with random weights (no download); without it, load --restyle.sd.model and
    --restyle.sd.controlnet."""
    configs: Path = SD15_DEPTH
    """With --random-weights: a folder of unet, vae, text_encoder, controlnet and scheduler .json (SD 1.5 + ControlNet
    depth v1.1 by default)."""
    scenes: tuple[str, ...] = ("demo", "donut_mipsplatting.ply")
    """'demo' (the bundled teapot), paths of splat scenes, or names of shared fixtures (scripts/shared_fixtures.py);
    a fixture that is not here is skipped with a note."""
    restyle: RestyleConfig = field(
        default_factory=lambda: RestyleConfig(prompt="a marble statue", denoiser="sd", steps=30, views=49)
    )
    """The full setting (`sync-splat restyle --help`): 49 ring views and the top view, 30 steps, guidance 35."""
    reduce: bool | None = None
    """Run the reduction below and extrapolate to the full setting; None: on the CPU only."""
    reduced_views: int = 1
    """Ring views of the reduction (plus the top view)."""
    reduced_steps: int = 2
    """Steps of the reduction (2: on the default Karras timesteps t = 999 and 427, both synchronised)."""
    threads: int | None = None
    """torch CPU threads; None keeps torch's default."""

    def main(self) -> list[SceneTiming]:
        """Load or build the models, time every scene, print the tables and the RESULT line."""
        if self.reduced_views < 1 or self.reduced_steps < 1:
            raise InputError("bench_sd: --reduced-views and --reduced-steps must be at least 1")
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        device, _ = resolve_device_and_dtype(self.restyle.sd.device, self.restyle.sd.dtype)
        names = [name for name in self.scenes if name == "demo" or Path(name).exists() or find_fixture(name)]
        for name in self.scenes:
            if name not in names:
                print(f"note: skipping {name}: neither a file nor a shared fixture here (set $SYNC_SPLAT_FIXTURES)")
        if not names:
            raise InputError("bench_sd: none of --scenes is here: pass --scenes demo")
        denoiser = self.denoiser(device)
        reduce = device.type != "cuda" if self.reduce is None else self.reduce
        full = replace(self.restyle, denoiser="sd")
        run = replace(full, views=self.reduced_views, steps=self.reduced_steps) if reduce else full
        full_calls = count_calls(full, denoiser.schedule)
        run_calls = count_calls(run, denoiser.schedule)
        size, guidance = denoiser.native_size, denoiser.config.guidance_scale
        what = "reduction" if reduce else "full setting"
        print(
            f"torch threads: {torch.get_num_threads()}, device {device}, {denoiser.dtype}; {what}: "
            f"{run.views + 1} views x {run.steps} steps, {size} x {size}, guidance {guidance:g}",
            flush=True,
        )
        rows = []
        for name in names:
            scene = load_scene(name, device)
            result = restyle(scene, run, denoiser=denoiser)
            if result.phases.calls != run_calls:
                raise RuntimeError(
                    f"the run's calls per phase {result.phases.calls} differ from those counted on the prior "
                    f"{run_calls}: the extrapolation's model no longer holds"
                )
            views = len(result.cameras)
            finite = bool(torch.isfinite(result.delivered).all())
            rows.append(SceneTiming(Path(name).stem, scene.num_gaussians, result.phases, views, full.views + 1,
                                    full_calls, denoiser.config.guidance_scale != 1.0, finite))  # fmt: skip
        for row in rows:
            print(row.table(reduce, run.steps, full.steps))
        slowest = max(rows, key=lambda row: row.full_seconds()["total"])
        peaks = [row.phases.total_peak_gib for row in rows if row.phases.total_peak_gib is not None]
        peak = max(peaks) if peaks else float("nan")
        seconds = slowest.full_seconds()
        print(f"RESULT seconds={seconds['total']:.4f} peak_gib={peak:.4f} "
              f"unet_share={seconds['denoise'] / seconds['total']:.4f}")  # fmt: skip
        return rows

    def denoiser(self, device: torch.device) -> StableDiffusionDenoiser:
        """SD + ControlNet depth: built from --configs with random weights, or loaded."""
        config = replace(self.restyle.sd, prompt=self.restyle.prompt, device=str(device))
        started = time.perf_counter()
        if not self.random_weights:
            denoiser = config.setup()
            print(f"loaded {config.model} + {config.controlnet} in {time.perf_counter() - started:.1f} s")
            return denoiser
        parts = build_random_models(self.configs)
        counts = parameter_counts(parts)
        denoiser = config.setup(parts)
        sizes = ", ".join(f"{name} {count / 1e6:.1f} M" for name, count in counts.items())
        print(f"built {self.configs.name} with random weights ({sizes}) in {time.perf_counter() - started:.1f} s")
        return denoiser


def count_calls(config: RestyleConfig, schedule: NoiseSchedule) -> dict[str, int]:
    """The calls per phase of a restyle with `config`'s sampler settings (steps, case, window, method), counted on
    the exact prior with the same schedule at a toy size: they depend on neither the model nor the views."""
    prior = GaussianTexturePrior.from_prompt("marble", schedule=schedule, native_size=16)
    toy = replace(config, denoiser="prior", views=1)
    return restyle(make_demo_scene(), toy, show_progress=False, denoiser=prior).phases.calls


def extrapolate(phases: PhaseReport, views: int, full_calls: dict[str, int], full_views: int) -> dict[str, float]:
    """The seconds of each phase ("render", "denoise", "codec", "fit", "other") and "total" at the full setting.

    Args:
        phases: the measured run.
        views: the views of the measured run (every phase call takes all of them).
        full_calls: the calls per phase of the full setting.
        full_views: the views of the full setting.

    A phase's seconds scale with its view passes (calls x views), "other" with the views; a phase the measured run
    never called cannot be extrapolated and raises ValueError.
    """
    seconds: dict[str, float] = {}
    for phase in PHASES:
        if full_calls[phase] and not phases.calls[phase]:
            raise ValueError(f"the measured run never called {phase}, so its full-setting time is unknown")
        per_pass = phases.seconds[phase] / (phases.calls[phase] * views) if phases.calls[phase] else 0.0
        seconds[phase] = per_pass * full_calls[phase] * full_views
    seconds["other"] = phases.other_s / views * full_views
    seconds["total"] = sum(seconds[row] for row in ROWS)
    return seconds


@dataclass(frozen=True)
class SceneTiming:
    """One scene's measured run and its extrapolation to the full setting."""

    name: str
    gaussians: int
    phases: PhaseReport
    views: int
    """Views of the measured run."""
    full_views: int
    full_calls: dict[str, int]
    """Calls per phase of the full setting."""
    guided: bool
    """Whether each view has a conditional and an unconditional UNet row."""
    finite: bool
    """Whether the delivered views were finite (random weights can overflow)."""

    def full_seconds(self) -> dict[str, float]:
        return extrapolate(self.phases, self.views, self.full_calls, self.full_views)

    def table(self, reduced: bool, steps: int, full_steps: int) -> str:
        """The scene's table by phase, headed by what was measured and what was extrapolated."""
        full = self.full_seconds()
        phases = self.phases
        how = "extrapolated per view pass" if reduced else "measured (the full setting ran)"
        memory = phases.memory
        lines = [
            f"\n{self.name} ({self.gaussians} Gaussians): measured at {self.views} views x {steps} steps; full setting "
            f"{self.full_views} views x {full_steps} steps, {how}; peak memory measured ({memory})"
            + ("" if self.finite else "; the delivered views were not finite"),
            "",
            "| phase | calls | view passes | measured s | measured peak GiB | full view passes | full s | share |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in ROWS:
            if row == "other":
                calls, passes, full_passes, measured, peak = "-", "-", "-", phases.other_s, None
            else:
                calls, measured, peak = str(phases.calls[row]), phases.seconds[row], phases.peak_gib[row]
                passes, full_passes = str(phases.calls[row] * self.views), str(self.full_calls[row] * self.full_views)
            peak_cell = "-" if peak is None else f"{peak:.2f}"
            lines.append(f"| {LABELS[row]} | {calls} | {passes} | {measured:.2f} | {peak_cell} | {full_passes} | "
                         f"{full[row]:.1f} | {full[row] / full['total']:.1%} |")  # fmt: skip
        total_peak = "-" if phases.total_peak_gib is None else f"{phases.total_peak_gib:.2f}"
        lines.append(f"| **total** | | | {phases.total_s:.2f} | {total_peak} | | {full['total']:.1f} | 100% |")
        rows = 2 if self.guided else 1
        lines.append(f"\nUNet + ControlNet rows: {phases.calls['denoise'] * self.views * rows} measured, "
                     f"{self.full_calls['denoise'] * self.full_views * rows} at the full setting")  # fmt: skip
        return "\n".join(lines)


def main() -> None:
    settings = tyro.cli(BenchSD)
    with one_line_errors("bench_sd"):
        settings.main()


if __name__ == "__main__":
    main()
