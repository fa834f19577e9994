"""The fidelity oracle: do synchronised samples look like exact samples of the prior, in the views the sampler
denoised and in views it never saw?

`GaussianTexturePrior` knows the true distribution of every view. For each product bridge (splats: the demo teapot
and the Mip-Splatting donut; a mesh: the clutch bag; panoramas: from text and from a depth map) and the wide-image
bridge as a control (its crops copy canonical pixels, so nothing is averaged: it measures the sampler alone), for
texture presets of different structure (marble: isotropic; stripes: oriented; camouflage: a mixture) and a few
seeds, it runs the sampler with the product's settings (SyncTweedies, 30 DDIM steps) and compares, through the
same masks and as a viewer shows them (rgb01, clamped to the valid colours; `--seen-as denoiser` for raw values):

- std: the standard deviation of the delivered views' covered pixels over that of exact prior samples (contrast);
- b1..b4: the power in four radial frequency bands over the prior's (detail; b4 is the finest);
- held-out std and worst band: the same on views the sampler never used, rendered from the final canonical answer
  (cameras between the instance cameras);
- mix: for mixtures, the largest gap between how often each component wins under the noise-aware posterior and the
  prior's weight. A few seeds are a few draws of the mix (one seed's views show one texture), and the components
  differ in contrast, so for mixtures every other statistic compares with prior samples drawn with the delivered
  views' component fractions: each component's texture against the prior's texture of that component;
- fit dB: PSNR between the last instance views and the final answer's renders on covered pixels (low: the views
  disagreed and the canonical answer averaged them);
- lag1: the largest lag-1 correlation of the starting noise x_T over covered neighbouring pixels (white: ~0);
- shared: the correlation of x_T at the same surface point seen by two views (consistency: 0 for independent noise
  per view, 1 for one noise seen twice): for splats at the same part of one Gaussian in neighbouring views, for
  meshes, panoramas and the control at the texels both views see ("-": no two views overlap);
- one-view b3, b4: for the product bridges, the two finest band ratios of exact prior samples fitted through one view
  at a time and rendered back (nothing averaged): how much detail the Gaussians, the texture or the panorama can
  hold at all at this view size;
- g keeps: the contrast g keeps of views that disagree completely (exact prior samples drawn independently for
  every view, carried through g and rendered back; 1 where nothing is averaged): what averaging costs where views
  start apart.

A second table sets every row beside exact DDIM: closed-form samples of what deterministic DDIM delivers with the
prior's exact posterior mean on the run's timesteps from x_T ~ N(0, I) (`GaussianTexturePrior.sample_ddim`), the
sampler's own limit, over the prior, and the row's ratios over exact DDIM's: what the bridge loses beyond the sampler
itself. The control's windows each run alone, so each is set beside what DDIM makes of its own starting noise
(`GaussianTexturePrior.ddim`): its ratios are 1 (the sampler's arithmetic is exact; within 0.01 for the mixture, whose
closed form follows one component per view), and what is left of its gap to the prior is DDIM's on this schedule.

Each ratio r counts as max(r, 1/r). The last line is
`RESULT worst_std_ratio=<x> worst_band_ratio=<x> heldout_worst_std_ratio=<x> noise_lag1=<x> noise_shared=<x>` over
the product bridges with the product's default starting noise (`noise_shared` the least of their rows; the control
is reported in `control_worst_ratio`); `worst_vs_exact_ddim` and `control_vs_exact_ddim` are the worst ratios over
exact DDIM's of the same rows and of the control.

    python scripts/bench_fidelity.py [--presets marble stripes camouflage] [--seeds 3] [--steps 30]
    python scripts/bench_fidelity.py --splat-noise integral   # the product's default starting noise only
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
import tyro
from shared_fixtures import require_fixture
from torch import Tensor

from sync_splat.apps.paint_panorama import PanoramaConfig
from sync_splat.apps.restyle import orbit_cameras
from sync_splat.bridges.base import Bridge
from sync_splat.bridges.mesh import MeshBridgeConfig
from sync_splat.bridges.splat import SplatBridgeConfig
from sync_splat.codec import decode_pixels
from sync_splat.denoisers.prior import GaussianTexturePrior, GaussianTexturePriorConfig
from sync_splat.errors import InputError, one_line_errors
from sync_splat.sampler import StepSpacing, SyncConfig, SyncSampler
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.gaussians import GaussianScene
from sync_splat.scene.mesh import MeshAsset
from sync_splat.studies.fidelity import (
    band_powers,
    component_fractions,
    lag_correlation,
    masked_std,
    most_probable_components,
    shared_correlation,
    texel_shared_correlation,
)
from sync_splat.studies.wide_image import WideImageBridge

StartingNoise = Literal["integral", "sqrt_weights", "independent"]
"""The splat bridge's constructions, and i.i.d. noise per view (the sampler's `consistent_noise=False`)."""
PRODUCT_BRIDGES = ("splat-demo", "splat-donut", "mesh-clutch", "panorama-text", "panorama-depth")
CONTROL = "wide-control"
CONTROL_WINDOWS = 64
"""Views side by side in the control's wide image: it runs in seconds, so it can afford enough windows for its
ratios over the prior to resolve a few percent (3 windows and 2 seeds scattered them by 0.1)."""


@dataclass(frozen=True)
class Setting:
    """One bridge to measure: the instance bridge, a held-out bridge on the same canonical space, and (product
    bridges) the bridge of each instance view alone."""

    name: str
    instance: Bridge
    held_out: Bridge
    one_view: Callable[[int], Bridge] | None = None


@dataclass(frozen=True)
class Row:
    """The statistics of one bridge, preset and starting noise, over all seeds."""

    bridge: str
    preset: str
    noise: str
    std: float
    bands: tuple[float, ...]
    held_out_std: float
    held_out_bands: tuple[float, ...]
    mix: float | None
    fit_db: float
    lag1: float
    shared: float | None
    one_view: tuple[float, ...] | None = None
    g_keeps: float = math.nan
    exact_ddim: tuple[float, ...] = ()
    """Std and band ratios of exact DDIM samples over the prior's, through the same masks."""

    def over_exact_ddim(self) -> tuple[float, ...]:
        """The row's std and band ratios over exact DDIM's (both over the prior's)."""
        return tuple(r / e for r, e in zip((self.std, *self.bands), self.exact_ddim, strict=True))

    def worst_band(self, held_out: bool = False) -> float:
        return max(symmetric(r) for r in (self.held_out_bands if held_out else self.bands))


def cycled(masks: Tensor, count: int) -> Tensor:
    """`count` masks taken from `masks` in turn: the masks to see `count` prior samples through."""
    return masks[torch.arange(count) % masks.shape[0]]


def symmetric(ratio: float) -> float:
    """max(r, 1/r): how far a ratio is from 1, either way."""
    return max(ratio, 1.0 / ratio) if ratio > 0 else math.inf


def turned(cameras: Cameras, centre: Tensor, degrees: float) -> Cameras:
    """The cameras turned by `degrees` about the vertical (y) axis through `centre`."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rotation = torch.eye(4)
    rotation[:3, :3] = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    shift, back = torch.eye(4), torch.eye(4)
    shift[:3, 3], back[:3, 3] = -centre.float(), centre.float()
    return Cameras(back @ rotation @ shift @ cameras.c2w, cameras.Ks, cameras.width, cameras.height)


def depth_room(height: int = 64) -> Tensor:
    """A 360-degree depth map of a 4 x 3 x 5 m box room seen from 1.2 m above its floor, off-centre (distance per
    direction, equirectangular, `[height, 2 height]`)."""
    from sync_splat.functional.equirect import equirect_directions

    d = equirect_directions(height, dtype=torch.float64)  # [H, W, 3], y down (OpenCV-like)
    half = torch.tensor([2.0, 1.5, 2.5], dtype=torch.float64)
    offset = torch.tensor([0.5, 0.3, -0.7], dtype=torch.float64)
    walls = torch.where(d > 0, half - offset, -half - offset)  # signed distance to the wall along each axis
    with torch.no_grad():
        distances = (walls / torch.where(d.abs() > 1e-9, d, torch.full_like(d, 1e-9))).abs()
    return distances.min(dim=-1).values.float()


@dataclass(frozen=True)
class FidelityBench:
    """Compare synchronised samples with exact samples of the prior, for every product bridge and a control."""

    bridges: tuple[str, ...] = (*PRODUCT_BRIDGES, CONTROL)
    """Which settings to run: splat-demo, splat-donut, mesh-clutch, panorama-text, panorama-depth, wide-control."""
    presets: tuple[str, ...] = ("marble", "stripes", "camouflage")
    """Texture presets of the prior (isotropic, oriented, mixture)."""
    seeds: int = 3
    """Runs per bridge and preset."""
    steps: int = 30
    """DDIM steps per run (the product's default)."""
    size: int = 64
    """The prior's native view size in pixels."""
    splat_views: int = 8
    """Orbit views of the splat scenes (plus one from the top), as `sync-splat restyle`."""
    splat_noise: tuple[StartingNoise, ...] = ("integral", "sqrt_weights", "independent")
    """Starting-noise constructions of the splat bridge to compare; RESULT reports the product's default
    (`SplatBridgeConfig.noise`)."""
    splat_cos_power: float = SplatBridgeConfig().cos_power
    """Exponent of the splat fit's pixel weights (`SplatBridgeConfig.cos_power`; 0: every pixel counts the same)."""
    timestep_spacing: StepSpacing = SyncConfig.timestep_spacing
    """Which train timesteps the steps visit (`SyncConfig.timestep_spacing`; "model": the schedule's own, SD 1.5's
    "leading")."""
    back_projection_steps: int | None = None
    """Back-projection steps of the mesh's and the panorama's g (`back_projection_steps` of their configs; None:
    the product's default, 0: the plain weighted average)."""
    prior_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    """The prior's noise schedule: Stable Diffusion 1.5's, or the DDPM paper's linear one, whose last timestep is
    almost pure noise (alpha_bar 4e-5 against 0.0047): what the schedule alone costs the control."""
    control_stride: int | None = None
    """Columns between the control's windows (None: the view side, so no two windows overlap and nothing is
    averaged). A smaller stride overlaps windows that are translations of one image: what averaging costs when the
    views agree exactly on geometry and noise."""
    seen_as: Literal["image", "denoiser"] = "image"
    """Where the statistics are taken: "image", the colours a viewer shows (rgb01, clamped to [0, 1]), or
    "denoiser", the raw values, where a Gaussian texture exceeds the valid colours (15 % of marble's pixels) and
    a scene of RGB colours, as the splats' is, cannot follow it."""
    prior_samples: int = 256
    """Exact prior samples that set the reference statistics (and exact DDIM samples, drawn alike)."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""

    def main(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        unknown = set(self.bridges) - {*PRODUCT_BRIDGES, CONTROL}
        if unknown:
            raise InputError(f"--bridges: unknown {sorted(unknown)}; choose from {[*PRODUCT_BRIDGES, CONTROL]}")
        if self.seeds < 1 or self.steps < 1 or self.size < 8 or self.prior_samples < 2:
            raise InputError("--seeds, --steps must be at least 1, --size at least 8, --prior-samples at least 2")
        if self.back_projection_steps is not None and self.back_projection_steps < 0:
            raise InputError(f"--back-projection-steps must be non-negative, got {self.back_projection_steps}")
        if self.control_stride is not None and not 1 <= self.control_stride <= self.size:
            raise InputError(f"--control-stride must be in 1..--size ({self.size}), got {self.control_stride}")
        start = time.perf_counter()
        rows = []
        for preset in self.presets:
            prior = self.prior(preset)
            for name in self.bridges:
                noises = self.splat_noise if name.startswith("splat") else ("default",)
                one_view = None  # the same for every noise: measured once per bridge and preset
                for noise in noises:
                    rows.append(self.measure(prior, preset, name, noise, one_view))
                    one_view = rows[-1].one_view
                    print(self.format_row(rows[-1]), flush=True)
        print()
        print(self.table(rows))
        print(self.result(rows, time.perf_counter() - start))

    # ---- settings -----------------------------------------------------------------------------------------------

    def prior(self, preset: str) -> GaussianTexturePrior:
        config = GaussianTexturePriorConfig(
            prompt=preset, native_size=self.size, max_batch=64, schedule=self.prior_schedule
        )
        return config.setup()

    def sync_config(self, noise: str) -> SyncConfig:
        """The product's sampler with this run's steps and spacing; "independent" noise draws each view's own."""
        return SyncConfig(
            num_steps=self.steps, timestep_spacing=self.timestep_spacing, consistent_noise=noise != "independent"
        )

    def back_projection(self) -> dict[str, int]:
        """The mesh's and the panorama's `back_projection_steps` when this run sets them."""
        steps = self.back_projection_steps
        return {} if steps is None else {"back_projection_steps": steps}

    def setting(self, prior: GaussianTexturePrior, name: str, noise: str) -> Setting:
        if name.startswith("splat"):
            scene = make_demo_scene() if name == "splat-demo" else GaussianScene.load(fixture("donut_mipsplatting.ply"))
            cameras = orbit_cameras(scene, self.splat_views, prior.native_size, 50.0)
            config = SplatBridgeConfig(
                noise="sqrt_weights" if noise == "independent" else noise, cos_power=self.splat_cos_power
            )
            centre, _ = scene.bounding_sphere(trim=0.01)
            ring = Cameras.orbit_rig(
                centre, scene.bounding_sphere(trim=0.01)[1], num_azimuths=self.splat_views, elevations_deg=(35.0,),
                top_views=0, fov_deg=50.0, size=(cameras.width, cameras.height),
            )  # fmt: skip
            held_out = turned(ring, centre, 180.0 / self.splat_views)
            return Setting(
                name, config.setup(prior, scene, cameras), config.setup(prior, scene, held_out),
                lambda view: config.setup(prior, scene, cameras.subset([view])),
            )  # fmt: skip
        if name == "mesh-clutch":
            mesh = MeshAsset.load(fixture("clutch_bag.obj"))
            config = MeshBridgeConfig(device="cpu", **self.back_projection())
            held_out = replace(config, azimuths=7, elevation_deg=15.0, upper_azimuths_deg=(90.0,))
            angles = config.view_angles()

            def one_mesh_view(view: int) -> Bridge:
                elevation, azimuth = angles[view]
                alone = replace(config, azimuths=0, upper_azimuths_deg=(azimuth,), upper_elevation_deg=elevation)
                return alone.setup(prior, mesh)

            return Setting(name, config.setup(prior, mesh), held_out.setup(prior, mesh), one_mesh_view)
        if name.startswith("panorama"):
            # The product's default: views of the denoiser's native side, `texel_oversample` texels per view pixel.
            config = replace(PanoramaConfig(prompt=prior.name).bridge_config(), device="cpu", **self.back_projection())
            depth = depth_room() if name == "panorama-depth" else None
            held_out = replace(config, elevations_deg=(20.0, -25.0), views_per_ring=5, pole_views=False)
            orientations = config.view_orientations()

            @functools.cache
            def at_pitch(pitch: float) -> Bridge:  # at yaw 0: the grid is the same at every yaw
                return replace(config, elevations_deg=(pitch,), views_per_ring=1, pole_views=False).setup(prior, depth)

            return Setting(
                name,
                config.setup(prior, depth),
                held_out.setup(prior, depth),
                lambda view: at_pitch(orientations[view][1]),
            )
        size = prior.native_size
        stride = size if self.control_stride is None else self.control_stride
        width = CONTROL_WINDOWS * size
        return Setting(
            name, WideImageBridge(3, size, width, stride=stride), WideImageBridge(3, size, width, stride=size // 3)
        )

    # ---- one measurement ----------------------------------------------------------------------------------------

    def measure(
        self, prior: GaussianTexturePrior, preset: str, name: str, noise: str, one_view: tuple[float, ...] | None = None
    ) -> Row:
        """One row; `one_view` is reused where given (it depends on the bridge and the preset only)."""
        setting = self.setting(prior, name, noise)
        bridge, held_out = setting.instance, setting.held_out
        sampler = SyncSampler(prior, bridge, self.sync_config(noise))
        mask = bridge.coverage().cpu() > 0.99
        held_out_mask = held_out.coverage().cpu() > 0.99
        views, held_out_views, last_views, starts, finals = [], [], [], [], []
        for seed in range(self.seeds):
            state = sampler.init(torch.Generator().manual_seed(seed))
            starts.append(state.x_t.cpu())
            while state.step_index < sampler.num_steps:
                state = sampler.step(state)
            result = sampler.finish(state)
            last_views.append(state.x_t.cpu())
            views.append(result.x.cpu())
            finals.append(bridge.project(result.z).cpu())
            held_out_views.append(held_out.project(result.z).cpu())
        views_t, held_out_t = torch.cat(views), torch.cat(held_out_views)
        mix = fractions = held_out_fractions = None
        if prior.num_components > 1:
            # One seed's views show one texture, mostly of one component: a few seeds are a few draws of the mix,
            # and the components differ in contrast. `mix` compares the draws with the prior's weights; the other
            # statistics compare each component's texture with the prior's texture of that component.
            fractions, held_out_fractions = component_fractions(prior, views_t), component_fractions(prior, held_out_t)
            mix = float((fractions - prior.weights.double()).abs().max())
        reference = prior.sample(
            self.prior_samples, *bridge.instance_shape[1:], torch.Generator().manual_seed(1234), weights=fractions
        )
        held_out_reference = prior.sample(
            self.prior_samples, *held_out.instance_shape[1:], torch.Generator().manual_seed(4321),
            weights=held_out_fractions,
        )  # fmt: skip
        masks, held_out_masks = mask.repeat(self.seeds, 1, 1, 1), held_out_mask.repeat(self.seeds, 1, 1, 1)
        std, bands = self.ratios(views_t, masks, reference)
        held_out_std, held_out_bands = self.ratios(held_out_t, held_out_masks, held_out_reference)
        covered = masks.expand_as(views_t)
        error = (torch.cat(last_views) - torch.cat(finals))[covered].double().square().mean()
        fit_db = float(10 * torch.log10(4.0 / error)) if error > 0 else math.inf  # peak-to-peak 2 in [-1, 1]
        lag1 = lag_correlation(torch.cat(starts), masks)
        if name.startswith("splat"):
            ring = [(view, view + 1) for view in range(self.splat_views - 1)]  # neighbours on the orbit
            shared = shared_correlation(torch.stack(starts), bridge.linear_system("instance"), ring)
        else:
            shared = texel_shared_correlation(torch.stack(starts), bridge)
        if setting.one_view is not None and one_view is None:
            one_view = self.one_view_ratios(prior, setting.one_view, bridge.num_views)
        g_keeps = self.contrast_g_keeps(prior, bridge, mask)
        alone = name == CONTROL and self.control_stride is None  # windows side by side: each view runs alone
        paired = (torch.cat(starts), views_t) if alone else None
        exact_ddim = self.exact_ddim_ratios(prior, sampler, masks, reference, fractions, paired)
        return Row(
            name, preset, noise, std, bands, held_out_std, held_out_bands, mix, fit_db, lag1, shared, one_view,
            g_keeps, exact_ddim,
        )  # fmt: skip

    def exact_ddim_ratios(
        self,
        prior: GaussianTexturePrior,
        sampler: SyncSampler,
        masks: Tensor,
        reference: Tensor,
        fractions: Tensor | None,
        paired: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[float, ...]:
        """Std and band ratios, over the prior samples `reference`, of what exact DDIM delivers on the sampler's
        timesteps (closed form), through the same masks: `prior_samples` draws from x_T ~ N(0, I) with the
        reference's component fractions, or, given `paired` (the views' starting noise and their results, where
        every view runs alone), what DDIM makes of each view's own noise, the component its result shows: then a
        sampler that is exactly DDIM scores exactly 1, with no sampling error between two draws."""
        alpha_bars = sampler.schedule.alpha_bars(sampler.num_steps)
        if paired is not None:
            starts, delivered = paired
            components = most_probable_components(prior, delivered) if prior.num_components > 1 else None
            x = prior.ddim(starts, alpha_bars, components)
        else:
            generator = torch.Generator().manual_seed(5678)
            x = prior.sample_ddim(self.prior_samples, *reference.shape[2:], alpha_bars, generator, weights=fractions)
            masks = cycled(masks, x.shape[0])
        std, bands = self.ratios(x, masks, reference)
        return (std, *bands)

    def contrast_g_keeps(self, prior: GaussianTexturePrior, bridge: Bridge, mask: Tensor) -> float:
        """The contrast g keeps of views that disagree completely: exact prior samples drawn independently for every
        view, carried through g and rendered back, over the samples' own, through the same masks (1: nothing is
        averaged; a texel that follows one view keeps its contrast, an average of views does not)."""
        kept, samples = [], []
        for seed in range(self.seeds):
            x = prior.sample(bridge.num_views, *bridge.instance_shape[1:], torch.Generator().manual_seed(200 + seed))
            kept.append(bridge.project(bridge.unproject(x), background=x).cpu())
            samples.append(x)
        masks = mask.repeat(self.seeds, 1, 1, 1)
        kept_t, samples_t = self.seen(torch.cat(kept)), self.seen(torch.cat(samples))
        return masked_std(kept_t, masks) / masked_std(samples_t, masks)

    def one_view_ratios(
        self, prior: GaussianTexturePrior, one_view: Callable[[int], Bridge], num_views: int
    ) -> tuple[float, ...]:
        """What the canonical space can hold of an exact prior sample seen through one view: the std and band ratios
        of `f(g(y))` over `y`, each view fitted alone (nothing to average), through the same masks."""
        fitted, samples, masks = [], [], []
        for view in range(num_views):
            bridge = one_view(view)
            sample = prior.sample(1, *bridge.instance_shape[1:], torch.Generator().manual_seed(100 + view))
            fitted.append(bridge.project(bridge.unproject(sample), background=sample).cpu())
            samples.append(sample.cpu())
            masks.append(bridge.coverage().cpu() > 0.99)
        x, y, mask = self.seen(torch.cat(fitted)), self.seen(torch.cat(samples)), torch.cat(masks)
        return (masked_std(x, mask) / masked_std(y, mask), *(band_powers(x, mask) / band_powers(y, mask)).tolist())

    def seen(self, x: Tensor) -> Tensor:
        """Views in the space the statistics are taken in (`seen_as`)."""
        return decode_pixels(x) if self.seen_as == "image" else x

    def ratios(self, x: Tensor, masks: Tensor, reference: Tensor) -> tuple[float, tuple[float, ...]]:
        """Std and band-power ratios of `x` over the prior samples `reference`, the samples seen through the same
        masks (cycled), both as `seen`."""
        reference_masks = cycled(masks, reference.shape[0])
        x, reference = self.seen(x), self.seen(reference)
        std = masked_std(x, masks) / masked_std(reference, reference_masks)
        bands = band_powers(x, masks) / band_powers(reference, reference_masks)
        return std, tuple(float(b) for b in bands)

    # ---- output -------------------------------------------------------------------------------------------------

    HEADER = (
        "| bridge | preset | noise | std | b1 | b2 | b3 | b4 | held-out std | held-out worst band | mix | fit dB | "
        "lag1 | shared | one-view b3 | one-view b4 | g keeps |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )

    @staticmethod
    def format_row(row: Row) -> str:
        bands = " | ".join(f"{b:.2f}" for b in row.bands)
        mix = "-" if row.mix is None else f"{row.mix:.2f}"
        shared = "-" if row.shared is None else f"{row.shared:.2f}"
        one_view = "- | -" if row.one_view is None else f"{row.one_view[3]:.2f} | {row.one_view[4]:.2f}"
        return (
            f"| {row.bridge} | {row.preset} | {row.noise} | {row.std:.2f} | {bands} | {row.held_out_std:.2f} | "
            f"{row.worst_band(held_out=True):.2f} | {mix} | {row.fit_db:.1f} | {row.lag1:.3f} | {shared} | "
            f"{one_view} | {row.g_keeps:.2f} |"
        )

    EXACT_DDIM_HEADER = (
        "| bridge | preset | noise | exact DDIM std | b1 | b2 | b3 | b4 | over exact DDIM: std | b1 | b2 | b3 | b4 |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )

    def table(self, rows: list[Row]) -> str:
        lines = [self.HEADER, *(self.format_row(row) for row in rows), "", self.EXACT_DDIM_HEADER]
        for row in rows:
            exact, over = (" | ".join(f"{r:.2f}" for r in ratios) for ratios in (row.exact_ddim, row.over_exact_ddim()))
            lines.append(f"| {row.bridge} | {row.preset} | {row.noise} | {exact} | {over} |")
        return "\n".join(lines)

    def result(self, rows: list[Row], seconds: float) -> str:
        default = SplatBridgeConfig().noise
        product = [r for r in rows if r.bridge != CONTROL and r.noise in (default, "default")]
        control = [r for r in rows if r.bridge == CONTROL]

        def worst(values: list[float]) -> float:
            return max(values) if values else float("nan")

        def least(values: list[float]) -> float:
            return min(values) if values else float("nan")

        control_worst = worst([max(symmetric(r.std), r.worst_band()) for r in control])

        def worst_over_exact_ddim(chosen: list[Row]) -> float:
            return worst([max(map(symmetric, r.over_exact_ddim())) for r in chosen])

        return (
            f"RESULT worst_std_ratio={worst([symmetric(r.std) for r in product]):.4f} "
            f"worst_band_ratio={worst([r.worst_band() for r in product]):.4f} "
            f"heldout_worst_std_ratio={worst([symmetric(r.held_out_std) for r in product]):.4f} "
            f"noise_lag1={worst([r.lag1 for r in product]):.4f} "
            f"noise_shared={least([r.shared for r in product if r.shared is not None]):.4f} "
            f"control_worst_ratio={control_worst:.4f} worst_vs_exact_ddim={worst_over_exact_ddim(product):.4f} "
            f"control_vs_exact_ddim={worst_over_exact_ddim(control):.4f} seconds={seconds:.1f}"
        )


def fixture(name: str):  # noqa: ANN201
    return require_fixture(name, "leave that bridge out (--bridges)")


def entrypoint(args: list[str] | None = None, runner: Callable[[FidelityBench], None] = FidelityBench.main) -> None:
    settings = tyro.cli(FidelityBench, args=args)
    with one_line_errors("bench_fidelity"):
        runner(settings)


if __name__ == "__main__":
    entrypoint()
