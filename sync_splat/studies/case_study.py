"""The paper's case analysis, made measurable on the CPU with the exact Gaussian-texture prior.

SyncTweedies claims that only case 2 (averaging Tweedie estimates) works for all three projection types: 1-to-1,
1-to-n and n-to-1. With a linear f, consistent initial noise and f(g(f(z))) = f(z), every case follows the same
trajectory (tests/test_sampler.py), so this study varies what really separates them:

- initial noise: consistent (x_T = f(z_T)) or independent per view (canonical cases always start from z_T);
- projections: 1-to-1 flips and turns, 1-to-n crops, a 1-to-n nearest-neighbour inner rotation, an n-to-1 averaged
  canonical, and n-to-1 blended layers over a background (like a splat render), the latter with g as a closed form
  and as a few warm-started iterative steps;
- priors: one Gaussian texture, and a mixture whose modes can be averaged into blur.

Metrics, over many seeds per setting:
- fidelity: the power of the delivered views f(g(x_0)) over the prior's expected power, in a low and a high
  frequency band, divided by that of case 0's own views (independent DDIM samples: discretisation alone loses a
  little power, so they are the reference, not the prior);
- inconsistency: mean |x_i - f_i(g(x))| of the views' final states on covered pixels, before the last aggregation;
- for the mixture, each delivered view's most likely component, as a histogram (mode collapse shows there); the
  classifier accounts for the noise DDIM's last step leaves (`delivered_components`);
- divergence: non-finite values, or a band power off by more than 10x.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from jaxtyping import Float, Int64
from torch import Tensor

from sync_splat.bridges.base import Bridge
from sync_splat.conditions import ViewConditions
from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.errors import InputError
from sync_splat.functional.diffusion import NoiseSchedule
from sync_splat.sampler import PAPER_CASES, StepSpacing, SyncConfig, SyncSampler
from sync_splat.scene.files import atomic_output
from sync_splat.scene.images import write_png
from sync_splat.studies.ambiguous_image import AmbiguousImageBridge
from sync_splat.studies.layered_image import LayeredImageBridge
from sync_splat.studies.wide_image import WideImageBridge

CHANNELS = 3
LOW_BAND = 0.125
"""Radial frequencies (cycles per pixel) up to this, DC excluded, form the low band; the rest the high band."""
MIN_SIZE = round(1 / LOW_BAND)
"""Smallest view side: the lowest nonzero frequency of a view of side s is 1 / s cycles per pixel."""
CONSISTENT_SETTINGS = "consistent"


@dataclass(frozen=True)
class Projection:
    """One projection setting of the study: a name, its type, and how to build its bridge at a given view size."""

    name: str
    kind: str
    build: Callable[[int], Bridge]


PROJECTIONS = (
    Projection(
        "flips and turns", "1-to-1", lambda s: AmbiguousImageBridge(CHANNELS, s, ("identity", "flip_h", "rot90"))
    ),
    Projection("overlapping crops", "1-to-n", lambda s: WideImageBridge(CHANNELS, s, 2 * s, stride=s // 2)),
    Projection("inner rotation", "1-to-n", lambda s: AmbiguousImageBridge(CHANNELS, s, ("identity", "inner_rotate"))),
    Projection(
        "mean of 4 images", "n-to-1", lambda s: AmbiguousImageBridge(CHANNELS, s, ("identity", "rot90"), num_images=4)
    ),
    Projection("layers, closed-form g", "n-to-1", lambda s: LayeredImageBridge(CHANNELS, s, s, fit="closed_form")),
    Projection("layers, iterative g", "n-to-1", lambda s: LayeredImageBridge(CHANNELS, s, s, iterations=3)),
)
PRIORS = ("clouds", "camouflage")
"""A single Gaussian texture and a mixture of colour modes (named presets of GaussianTexturePrior)."""


class SeedBatch:
    """S independent copies of one bridge, run as one bridge so the denoiser sees every seed's views in one batch.

    The canonical variable is `[S, *canonical_shape]` and the views are the copies' views one after another.
    """

    def __init__(self, bridge: Bridge, copies: int) -> None:
        self.bridge = bridge
        self.copies = copies
        self.linear = bridge.linear
        self.num_views = copies * bridge.num_views
        self.canonical_shape = (copies, *bridge.canonical_shape)
        self.instance_shape = bridge.instance_shape

    def _views(self, x: Tensor | None, copy: int) -> Tensor | None:
        n = self.bridge.num_views
        return None if x is None else x[copy * n : (copy + 1) * n]

    def project(self, z: Tensor, background: Tensor | None = None) -> Tensor:
        return torch.cat([self.bridge.project(z[s], self._views(background, s)) for s in range(self.copies)])

    def unproject(self, x: Tensor, previous: Tensor | None = None) -> Tensor:
        return torch.stack(
            [
                self.bridge.unproject(self._views(x, s), None if previous is None else previous[s])
                for s in range(self.copies)
            ]
        )

    def coverage(self) -> Tensor:
        return self.bridge.coverage().repeat(self.copies, 1, 1, 1)

    def initial_noise(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        noises = [self.bridge.initial_noise(generator) for _ in range(self.copies)]
        return torch.stack([z for z, _ in noises]), torch.cat([x for _, x in noises])

    def conditions(self) -> ViewConditions:
        return ViewConditions.plain(self.num_views)

    def export(self, z: Tensor, path: Path) -> Path:
        return self.bridge.export(z[0], path)


@dataclass(frozen=True)
class Measurement:
    """What one (projection, prior, noise, case) run over all seeds measured."""

    fidelity_low: float
    fidelity_high: float
    own_low: float
    own_high: float
    inconsistency: float
    diverged: bool
    components: tuple[int, ...]
    views: Tensor


def delivered_components(prior: GaussianTexturePrior, views: Float[Tensor, "N 3 h w"]) -> Int64[Tensor, " N"]:
    """The mixture component each delivered view most likely came from: the argmax over m of p(m | view) at t = 0.

    A DDIM run does not end on a clean image. Its last step lands on the schedule's final alpha_bar, which on Stable
    Diffusion's schedule (`set_alpha_to_one=False`) is alpha_bar(0) = 1 - 8.5e-4, so a view carries the noise of
    x_0 = sqrt(a) x0 + sqrt(1 - a) eps. That residual noise variance is larger than the smallest variances of some
    components (camouflage's desert has a colour direction with 1e-6), so the clean-image likelihood
    `component_log_likelihood` rules such a component out for every view. The exact posterior of a draw of x_0 is
    `responsibilities(views, t=0)`: the likelihood N(sqrt(a) mu_m, a Sigma_m + (1 - a) I) with the same a.

    Raises:
        ValueError: the prior's schedule ends DDIM anywhere but alpha_bar(0), where t = 0 would not be exact.
    """
    schedule = prior.schedule
    if schedule.alpha_bar(-1) != schedule.alpha_bar(0):
        raise ValueError(
            f"the component histogram assumes DDIM ends on alpha_bar(0) = {schedule.alpha_bar(0):.6f}, "
            f"but this schedule ends on {schedule.alpha_bar(-1):.6f}"
        )
    return prior.responsibilities(views, t=0).argmax(dim=1)


def band_powers(x: Tensor, expected: Tensor) -> tuple[float, float]:
    """Measured over expected power of images `x` `[B, 3, h, w]` in the low and high bands (DC excluded)."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    radius = (fy**2 + fx**2).sqrt()
    measured = torch.fft.fft2(x.double(), norm="ortho").abs().square().mean(dim=(0, 1))
    expected = expected.mean(dim=0)
    low = (radius > 0) & (radius <= LOW_BAND)
    high = radius > LOW_BAND
    return float(measured[low].sum() / expected[low].sum()), float(measured[high].sum() / expected[high].sum())


@dataclass(frozen=True)
class CaseStudy:
    """Runs every case over every projection, prior and initial-noise setting and reports the metrics."""

    seeds: int = 16
    num_steps: int = 50
    size: int = 16
    sync_until: float = SyncConfig.sync_until
    """The synchronised fraction of the schedule, for every case (see `SyncConfig.sync_until`)."""
    timestep_spacing: StepSpacing = "model"
    """Which train timesteps the steps visit (see `SyncConfig.timestep_spacing`); "model", the schedule's own
    ("leading"), is what the paper's code runs."""
    projections: tuple[Projection, ...] = PROJECTIONS
    priors: tuple[str, ...] = PRIORS

    def __post_init__(self) -> None:
        """Refuse settings that cannot run before any work (the options of `sync-splat case-study`)."""
        if self.seeds < 1:
            raise InputError(f"--seeds must be at least 1, got {self.seeds}")
        most = NoiseSchedule.scaled_linear().num_train_timesteps  # the priors' schedule
        if not 1 <= self.num_steps <= most:
            raise InputError(f"--num-steps must be in 1..{most} (the schedule's train timesteps), got {self.num_steps}")
        if self.size < MIN_SIZE:
            raise InputError(
                f"--size must be at least {MIN_SIZE} pixels, got {self.size}: the low frequency band (up to "
                f"{LOW_BAND} cycles per pixel) is empty in smaller views"
            )

    def measure(self, prior: GaussianTexturePrior, projection: Projection, config: SyncConfig) -> Measurement:
        """Run one setting for all seeds at once and measure it."""
        bridge = SeedBatch(projection.build(self.size), self.seeds)
        sampler = SyncSampler(prior, bridge, replace(config, final_aggregation=False))
        state = sampler.init(torch.Generator().manual_seed(0))
        while state.step_index < sampler.num_steps:
            state = sampler.step(state)
        result = sampler.finish(state)
        # The delivered product is the aggregate's rendering; consistency is judged before that last aggregation.
        delivered = bridge.project(result.z, background=result.x)
        coverage = bridge.coverage()
        reprojected = bridge.project(bridge.unproject(result.x), background=result.x)
        inconsistency = float(((result.x - reprojected).abs() * coverage).sum() / (coverage.sum() * CHANNELS))
        expected = prior.power_spectrum(self.size, self.size)
        low, high = band_powers(delivered, expected)
        own_low, own_high = band_powers(result.x, expected)
        components = torch.bincount(delivered_components(prior, delivered), minlength=prior.num_components)
        diverged = not bool(torch.isfinite(delivered).all()) or not all(0.1 < p < 10 for p in (low, high))
        return Measurement(low, high, own_low, own_high, inconsistency, diverged, tuple(components.tolist()), delivered)

    def run(self, out: Path) -> dict[str, float]:
        """Run the whole study, write `case_study.md` and one PNG grid per setting into `out`, print the tables and
        the machine-readable RESULT line; returns the RESULT values."""
        start = time.perf_counter()
        out.mkdir(parents=True, exist_ok=False)
        results: dict[tuple[str, str, str, int], Measurement] = {}
        for prior_name in self.priors:
            prior = GaussianTexturePrior.from_prompt(prior_name, max_batch=1024)
            for projection in self.projections:
                for noise in (CONSISTENT_SETTINGS, "independent"):
                    for case, (aggregate, state_space) in PAPER_CASES.items():
                        key = (prior_name, projection.name, noise, case)
                        if state_space == "canonical" and noise != CONSISTENT_SETTINGS:
                            # Canonical cases always start from z_T: the noise axis does not apply.
                            results[key] = results[(prior_name, projection.name, CONSISTENT_SETTINGS, case)]
                            continue
                        config = SyncConfig(
                            aggregate=aggregate,
                            state_space=state_space,
                            num_steps=self.num_steps,
                            sync_until=self.sync_until,
                            timestep_spacing=self.timestep_spacing,
                            consistent_noise=noise == CONSISTENT_SETTINGS,
                        )
                        results[key] = self.measure(prior, projection, config)
                    self._write_grid(out, prior, projection, noise, results)
        seconds = time.perf_counter() - start
        summary = self._summary(results, seconds)
        report = self._report(results, summary)
        with atomic_output(out / "case_study.md") as tmp:
            tmp.write_text(report)
        print(report)
        print(
            f"RESULT case2_worst_rel_fidelity={summary['case2_worst_rel_fidelity']:.4f} "
            f"case2_max_inconsistency={summary['case2_max_inconsistency']:.4f} seconds={seconds:.1f}"
        )
        return summary

    def _relative(self, results, prior: str, projection: str, noise: str, case: int) -> tuple[float, float]:
        measured, reference = results[(prior, projection, noise, case)], results[(prior, projection, noise, 0)]
        return measured.fidelity_low / reference.own_low, measured.fidelity_high / reference.own_high

    def _summary(self, results, seconds: float) -> dict[str, float]:
        consistent = [(prior, projection.name) for prior in self.priors for projection in self.projections]
        worst = min(min(self._relative(results, p, name, CONSISTENT_SETTINGS, 2)) for p, name in consistent)
        inconsistency = max(results[(p, name, CONSISTENT_SETTINGS, 2)].inconsistency for p, name in consistent)
        return {"case2_worst_rel_fidelity": worst, "case2_max_inconsistency": inconsistency, "seconds": seconds}

    def _report(self, results, summary: dict[str, float]) -> str:
        num_train_timesteps = GaussianTexturePrior.from_prompt(self.priors[0]).schedule.num_train_timesteps
        window = f"t > {(1.0 - self.sync_until) * num_train_timesteps:g} of {num_train_timesteps}"
        lines = [
            "# Case study: the paper's synchronisation cases on the exact Gaussian-texture prior",
            "",
            f"{self.seeds} seeds per setting, {self.num_steps} DDIM steps (eta 0, synchronised while {window}), "
            f"{self.size}x{self.size} views, generated by `sync-splat case-study`.",
            "",
            "Each cell: the delivered views' fidelity (power over the prior's) relative to case 0's own views "
            "(independent DDIM samples) in the low / high frequency band: 1.00 is as good as unsynchronised "
            "sampling, blur lowers the high band. Then the inconsistency |x_i - f_i(g(x))| on covered pixels. "
            "**!** marks divergence (non-finite values or a band power off by 10x). The case-0 column shows the "
            "absolute fidelity of its own views (DDIM discretisation alone) and the inconsistency of independent "
            "views.",
            "",
        ]
        cases = sorted(PAPER_CASES)
        for prior in self.priors:
            for noise in (CONSISTENT_SETTINGS, "independent"):
                lines += [
                    f"## Prior '{prior}', {noise} initial noise",
                    "",
                    "| projection | type | " + " | ".join(f"case {c}" for c in cases) + " |",
                    "|---|---|" + "---|" * len(cases),
                ]
                for projection in self.projections:
                    cells = []
                    for case in cases:
                        measured = results[(prior, projection.name, noise, case)]
                        if case == 0:
                            low, high = measured.own_low, measured.own_high
                        else:
                            low, high = self._relative(results, prior, projection.name, noise, case)
                        flag = " **!**" if measured.diverged else ""
                        cells.append(f"{low:.2f} / {high:.2f} · {measured.inconsistency:.3f}{flag}")
                    lines.append(f"| {projection.name} | {projection.kind} | " + " | ".join(cells) + " |")
                lines.append("")
            prior_model = GaussianTexturePrior.from_prompt(prior)
            if prior_model.num_components > 1:
                weights = ", ".join(f"{w:.2f}" for w in prior_model.weights.tolist())
                lines += [
                    f"### Prior '{prior}': most likely component of each delivered view (consistent noise)",
                    "",
                    f"The prior's component weights are {weights}. Each view is classified by p(m | view) at t = 0, "
                    "which accounts for the noise DDIM's last step leaves. All settings start from one generator "
                    "seed, so a row's cases share their initial noise.",
                    "",
                    "| projection | " + " | ".join(f"case {c}" for c in cases) + " |",
                    "|---|" + "---|" * len(cases),
                ]
                for projection in self.projections:
                    cells = [
                        "-".join(str(n) for n in results[(prior, projection.name, CONSISTENT_SETTINGS, c)].components)
                        for c in cases
                    ]
                    lines.append(f"| {projection.name} | " + " | ".join(cells) + " |")
                lines.append("")
        lines += [
            "## Summary",
            "",
            f"- Case 2's worst fidelity relative to case 0, over every consistent-noise setting and both bands: "
            f"{summary['case2_worst_rel_fidelity']:.3f}.",
            f"- Case 2's largest inconsistency over those settings: {summary['case2_max_inconsistency']:.4f}.",
            f"- Wall time: {summary['seconds']:.1f} s.",
            "",
        ]
        return "\n".join(lines)

    def _write_grid(self, out: Path, prior: GaussianTexturePrior, projection: Projection, noise: str, results) -> None:
        """One PNG per setting: a row per case, the first seed's views side by side."""
        views_per_seed = projection.build(self.size).num_views
        rows = []
        for case in sorted(PAPER_CASES):
            views = results[(prior.name, projection.name, noise, case)].views[:views_per_seed]
            rows.append(torch.cat(list(prior.decode(views)), dim=-1))
        name = f"{prior.name}_{projection.name}_{noise}".replace(" ", "-").replace(",", "")
        write_png(torch.cat(rows, dim=-2), out / f"{name}.png")
