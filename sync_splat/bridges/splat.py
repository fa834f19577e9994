"""The Gaussian-splat bridge: per-Gaussian colours (or latent features) of a frozen scene, seen through N cameras.

- Canonical `z` (`SplatBridgeConfig.canonical`): "rgb", one view-independent colour in [0, 1] per Gaussian; f renders
  at the image size, composites and encodes, so it is not linear in the denoiser's space and only the x0_hat cases
  (2 and 5) may run. "latent", one denoiser-space feature per Gaussian rendered at the latent size: f and g are
  linear and every case runs.
- f (`project`) renders z over a background; g (`unproject`) is the damped least-squares colour fit of
  `sync_splat.bridges.splat_fit`, where its derivation and settings are explained. Each pixel counts in the fit by how
  finely its view sees the surface (`cos_power`): the view's pixels per unit of the surface of each Gaussian it shows
  (`fx fy cos / distance^2`, cos of the angle between the view ray and the Gaussian's shortest axis) relative to the
  Gaussian's best view, to the power p, so a Gaussian takes its colour from the views that face it from close by.
- Memory: before building anything the bridge predicts the fit's bytes from a few sampled views and chooses how the
  weights are held (`storage`, `memory_budget_gb`; `sync_splat.bridges.splat_memory`): `memory_plan.summary()` says
  it in one line.
- Initial noise (`noise`): white in every view with unit variance per pixel, and shared where views see the same
  part of a Gaussian (`sync_splat.bridges.splat_noise`); or the official construction, per-Gaussian N(0, 1) values
  rendered with square-root weights plus background noise times `sqrt(1 - alpha)` (consistent, but low-pass).
- Conditions: normalised inverse expected depth per view (ControlNet depth) and prompt suffixes from each camera's
  direction (`ViewSuffixes`).
- Export: a standard 3DGS PLY, geometry bit-identical, `f_dc = (c - 0.5) / SH_C0`, `f_rest` zero, written atomically.
- Processes: given a `shard` (`sync_splat.distributed`), the bridge holds, renders, conditions and fits only that
  share of the views; the fit adds its sums over the processes, so z is the same on every one.

Dimension letters (docs/conventions.md): N views, G Gaussians, C channels, H W image pixels, h w instance pixels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sync_splat.bridges.plumbing import ViewSuffixes, expect_shape
from sync_splat.bridges.splat_fit import NormalMatrix, SplatLeastSquares, SplatLinearSystem
from sync_splat.bridges.splat_matrix_free import MatrixFreeSplatSystem
from sync_splat.bridges.splat_memory import (
    COMPACT_DTYPE,
    STORAGES,
    MemoryPlan,
    WeightSample,
    plan_fit_memory,
    sample_weights,
)
from sync_splat.bridges.splat_noise import integral_noise
from sync_splat.codec import Codec
from sync_splat.conditions import ViewConditions
from sync_splat.distributed import ViewShard, shard_views
from sync_splat.errors import InputError
from sync_splat.functional.conjugate_gradient import LeastSquaresFit
from sync_splat.functional.depth import depth_control_image
from sync_splat.functional.rotation import quat_to_rotmat
from sync_splat.render.gaussians import gaussian_weights
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.gaussians import GaussianScene

SplatNoise = Literal["integral", "sqrt_weights"]

MIN_EVIDENCE = 1e-3
"""The least weight of a Gaussian's evidence in the fit (`SplatBridgeConfig.cos_power`): views that see a Gaussian at
a slant or from afar still count a little, so one whose best camera does not see it (it is hidden there) still takes its
colour from the views that do."""

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplatBridgeConfig:
    """How splat colours are represented, rendered and fitted (`GaussianSplatBridge`)."""

    canonical: Literal["rgb", "latent"] = "rgb"
    """'rgb': one colour per Gaussian, rendered at the image size and encoded (cases 2 and 5 only); 'latent': one
    denoiser-space feature per Gaussian, rendered at the latent size (linear; every case)."""
    unproject_background: Literal["own", "default"] = "own"
    """What the uncovered part of a view shows when fitting: 'own', the view itself, as the sampler composites
    f(z, background=x) (consistent views are fixed points); 'default', `background_rgb01` (zero for latents), as the
    official force_clean_composition fit."""
    background_rgb01: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour behind the Gaussians when `project` gets no background (RGB canonical) and in exports; white as the
    official force_clean_composition."""
    unseen_rgb01: float = 0.5
    """Colour of Gaussians no view sees, when there is no previous answer (latent features default to 0)."""
    damping: float = 0.01
    """Pull towards the closed-form colour, in fully opaque pixels' worth of evidence per Gaussian (0: plain least
    squares); keeps barely seen Gaussians from taking extreme colours."""
    tolerance: float = 1e-3
    """Conjugate gradient stops at this relative residual of the normal equations: what ends the fit of views that
    agree."""
    max_iterations: int = 50
    """At most this many conjugate-gradient iterations per fit (0: the closed form, or the warm start, alone)."""
    cos_power: float = 24.0
    """Exponent p of a pixel's weight in the fit: the alpha-weighted mean over the Gaussians it shows of (footprint /
    the Gaussian's best footprint)^p, at least `MIN_EVIDENCE`; a footprint is the view's pixels per unit of the
    Gaussian's surface, fx fy cos / distance^2, cos of the angle between the view ray and the Gaussian's shortest axis.
    0: every pixel counts the same (the official fit); 24 keeps more of the views' contrast (docs/fidelity.md)."""
    min_gain_db: float = 0.05
    """Conjugate gradient also stops after an iteration that improved the fit (its squared error over all views) by
    less than this many decibels (0: never): what ends the fit of views that disagree, as the sampler's do."""
    export_tolerance: float = 1e-5
    """The export's RGB fit of a latent canonical (`restyled_scene`) runs once, cold, and gives the colours the
    user keeps, so it is solved nearly to the end: conjugate gradient stops at this relative residual..."""
    export_max_iterations: int = 500
    """...or after this many iterations."""
    normal_matrix: NormalMatrix = "auto"
    """How CG applies A = sum_v W_v^T W_v: 'assembled' (a sparse G x G matrix, built on the first fit), 'implicit'
    (W^T (W p), two passes over the weights), or 'auto' (assembled when it is predicted sparser than W)."""
    solver_cutoff: float = 1e-3
    """The fit solves its normal equations with the compositing weights below this left out (fewer weights to read;
    their pruned copy replaces the full W^T); rendering keeps every weight. 0: the exact fit, bit for bit."""
    views_per_shard: int | None = None
    """Views whose weights are built, stored (or, matrix-free, applied) and summed together (None: as many as keep a
    shard's weights under a fixed count): bounds the memory of building them. (Views split across processes are a
    separate, coarser split: each process cuts its own views into these shards.)"""
    storage: Literal["auto", "stored", "compact", "matrix_free"] = "auto"
    """How the fit holds the compositing weights: 'stored' (CSR, the fastest), 'compact' (the same with float16
    values), 'matrix_free' (recomputed chunk by chunk of views on every product: the least memory, the slowest), or
    'auto' (the first of these whose predicted peak fits `memory_budget_gb`)."""
    memory_budget_gb: float | None = None
    """Memory the fit may take, in GiB, checked against a prediction before any work (None: the device's free memory
    less a reserve for the denoiser)."""
    noise: SplatNoise = "integral"
    """How the starting noise x_T is made: 'integral', each Gaussian's own fine white noise summed over what each pixel
    sees of it (white and view-consistent, as every denoiser assumes); 'sqrt_weights', one value per Gaussian spread
    over its pixels with square-root weights (the official construction: consistent but low-pass wherever a Gaussian
    spans pixels, which the denoiser reads as coarse signal: 2 to 5 times the prior's coarse-band power,
    docs/fidelity.md)."""
    antialiased: bool = False
    """gsplat's antialiased rasterisation (for scenes trained with it, e.g. Mip-Splatting); off for Inria scenes."""
    view_suffixes: bool = True
    """Append ', front view' / ', side view' / ', back view' / ', top view' to each view's prompt."""
    suffixes: ViewSuffixes = ViewSuffixes()
    """The angles that make a view a front, side, back or top view."""
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    """The scene's up direction (world frame), for view suffixes."""
    front: tuple[float, float, float] = (0.0, 0.0, 1.0)
    """Direction from the scene centre towards front-view cameras, for view suffixes."""

    def __post_init__(self) -> None:
        if self.canonical not in ("rgb", "latent"):
            raise InputError(f"SplatBridgeConfig.canonical must be 'rgb' or 'latent', got {self.canonical!r}")
        if self.unproject_background not in ("own", "default"):
            raise InputError(
                f"SplatBridgeConfig.unproject_background must be 'own' or 'default', got {self.unproject_background!r}"
            )
        settings = {
            "damping": self.damping, "tolerance": self.tolerance, "max_iterations": self.max_iterations,
            "min_gain_db": self.min_gain_db, "cos_power": self.cos_power, "export_tolerance": self.export_tolerance,
            "export_max_iterations": self.export_max_iterations, "solver_cutoff": self.solver_cutoff,
        }  # fmt: skip
        bad = {name: value for name, value in settings.items() if not (math.isfinite(value) and value >= 0)}
        if bad:
            listing = ", ".join(f"{name}={value}" for name, value in bad.items())
            raise InputError(f"SplatBridgeConfig: {listing}: these settings must be finite and non-negative")
        if self.views_per_shard is not None and self.views_per_shard < 1:
            raise InputError(f"SplatBridgeConfig.views_per_shard must be at least 1 or None: {self.views_per_shard}")
        if self.storage not in ("auto", *STORAGES):
            raise InputError(
                f"SplatBridgeConfig.storage must be 'auto', 'stored', 'compact' or 'matrix_free', got {self.storage!r}"
            )
        budget = self.memory_budget_gb
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise InputError(f"SplatBridgeConfig.memory_budget_gb must be positive (GiB) or None, got {budget}")

    def setup(
        self, codec: Codec, scene: GaussianScene, cameras: Cameras, shard: ViewShard | None = None
    ) -> GaussianSplatBridge:
        """The bridge this config describes, for `codec`'s space (a denoiser is a codec), over `shard`'s share of the
        views where they are split across processes. Its memory plan (`GaussianSplatBridge.memory_plan`, one line from
        `.summary()`) is decided first; see `storage`."""
        return GaussianSplatBridge(codec, scene, cameras, self, shard)


def _focal_areas(cameras: Cameras) -> Float[Tensor, " N"]:
    """fx fy of every camera: its pixels per unit of solid angle on its optical axis."""
    return cameras.Ks[:, 0, 0] * cameras.Ks[:, 1, 1]


class GaussianSplatBridge:
    """Per-Gaussian colours (or latent features) of a frozen splat scene, seen through N cameras.

    Args:
        codec: the denoiser's codec (`encode`, `decode`, `latent_channels`, `downsample`).
        scene: the Gaussians; its device is where everything runs.
        cameras: every view at the image size the codec decodes to (H x W, both divisible by `codec.downsample`).
        config: representation and fit settings.
        shard: the views this process holds where they are split across processes (`sync_splat.distributed`); None:
            all of them. The bridge then renders, fits and conditions those views only, adds the fit's sums over the
            processes, and draws random values for every view, keeping its own.

    Attributes:
        memory_plan: the fit's predicted memory (this process's views) and the storage chosen for its weights
            (`splat_memory`).
        shard: the views held, `[shard.first, shard.first + shard.count)` of `shard.total`.
        cameras: the held views' cameras.
        num_views: N, the views held.
        canonical_shape: `(G, 3)` for "rgb", `(G, codec.latent_channels)` for "latent".
        instance_shape: `(codec.latent_channels, H / downsample, W / downsample)`.
        linear: True for the latent canonical space only.
    """

    def __init__(
        self,
        codec: Codec,
        scene: GaussianScene,
        cameras: Cameras,
        config: SplatBridgeConfig | None = None,
        shard: ViewShard | None = None,
    ) -> None:
        config = SplatBridgeConfig() if config is None else config
        downsample = codec.downsample
        if cameras.width % downsample or cameras.height % downsample:
            raise InputError(
                f"the views are {cameras.width} x {cameras.height} pixels, which the denoiser's codec (downsample "
                f"{downsample}) cannot encode: size the cameras for the model first (Cameras.resized_for)"
            )
        if len(cameras) < 1 or scene.num_gaussians < 1:
            raise InputError("the splat bridge needs at least one camera and one Gaussian")
        shard = shard_views(len(cameras)) if shard is None else shard
        if shard.total != len(cameras):
            raise ValueError(f"the shard splits {shard.total} views, but there are {len(cameras)} cameras")
        self.scene, self.codec, self.config, self.shard = scene, codec, config, shard
        self.device, self.dtype = scene.means.device, scene.means.dtype
        held = cameras if not shard.sharded else cameras.subset(list(shard.indices))
        self.cameras = held.to(self.device, self.dtype)
        self.downsample = downsample
        self.num_views = shard.count
        self.image_size = (cameras.height, cameras.width)
        self.instance_size = (cameras.height // downsample, cameras.width // downsample)
        channels = codec.latent_channels
        self.canonical_shape = (scene.num_gaussians, 3 if config.canonical == "rgb" else channels)
        self.instance_shape = (channels, *self.instance_size)
        self.linear = config.canonical == "latent"
        self._systems: dict[tuple[int, int], SplatLinearSystem] = {}
        self._last_decode: tuple[Tensor, int, Tensor] | None = None
        self._normals: Tensor | None = None
        self._best_footprints: Tensor | None = None
        self._rig = cameras.to(self.device, self.dtype)  # every process's views, for the fit's pixel weights
        self.memory_plan = self._plan_memory()
        _LOG.info(self.memory_plan.summary())
        self.linear_system("image" if config.canonical == "rgb" else "instance")  # the weights the sampler needs, now

    def _plan_memory(self) -> MemoryPlan:
        """Sample the weights at every resolution the bridge builds (the sampler's first) and choose their storage."""
        fitted, other = ("image", "instance") if self.config.canonical == "rgb" else ("instance", "image")
        channels = {"image": 3, "instance": self.codec.latent_channels}
        samples: dict[tuple[int, int], WeightSample] = {}
        for resolution in (fitted, other):
            size = self._size(resolution)
            if size not in samples:
                samples[size] = sample_weights(
                    self.scene, self.cameras.resized(size[1], size[0]), channels[resolution], self.config.solver_cutoff,
                    self.config.antialiased,
                )  # fmt: skip
        self._samples = samples
        config = self.config
        return plan_fit_memory(
            tuple(samples.values()), self.dtype, self.device, config.storage, config.memory_budget_gb,
            config.normal_matrix, config.views_per_shard,
            integral_noise=samples[self._size("instance")] if config.noise == "integral" else None, shard=self.shard,
            weighted=config.cos_power > 0,
        )  # fmt: skip

    def _size(self, resolution: Literal["image", "instance"]) -> tuple[int, int]:
        return self.image_size if resolution == "image" else self.instance_size

    # ---- the linear systems (weights computed once per resolution, on first use) -------------------------------

    def linear_system(self, resolution: Literal["image", "instance"]) -> SplatLinearSystem:
        """The weights, alpha and fit of every view at the image or the instance (latent) size, built on first use and
        held as `memory_plan.storage` says."""
        height, width = size = self._size(resolution)
        if size not in self._systems:
            cameras = self.cameras.resized(width, height)
            config, scene = self.config, self.scene
            per_shard = self._samples[size].views_per_chunk(config.views_per_shard)
            evidence = self._evidence if config.cos_power > 0 else None
            if self.memory_plan.storage == "matrix_free":
                system = MatrixFreeSplatSystem(
                    scene, cameras, per_shard, config.solver_cutoff, config.antialiased, evidence=evidence
                )
            else:
                geometry = (scene.means, scene.quats_wxyz, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits))

                def shard_weights(first: int, count: int) -> Tensor:
                    viewmats, Ks = cameras.viewmats[first : first + count], cameras.Ks[first : first + count]
                    return gaussian_weights(*geometry, viewmats, Ks, width, height, antialiased=config.antialiased)

                system = SplatLeastSquares(
                    shard_weights, self.num_views, height, width, per_shard, config.normal_matrix,
                    config.solver_cutoff, COMPACT_DTYPE if self.memory_plan.storage == "compact" else None, evidence,
                )  # fmt: skip
            self._systems[size] = system
        return self._systems[size]

    def _evidence(self, view: Tensor, gaussian: Tensor) -> Tensor:
        """How well held view `view` sees Gaussian `gaussian`'s surface, elementwise (`splat_weights.Evidence`):
        `(footprint / best)^p`, footprint the view's pixels per unit of the surface (`_footprints`), best the largest
        over the rig's cameras whose frame holds the Gaussian's centre (so every Gaussian's best view counts fully,
        and the damping keeps its meaning), at least `MIN_EVIDENCE`."""
        if self._best_footprints is None:
            self._best_footprints = self._best_views()
        cameras = self.cameras
        footprint = self._footprints(cameras.c2w[view, :3, 3], _focal_areas(cameras)[view], gaussian)
        relative = (footprint / self._best_footprints[gaussian]).clamp(max=1.0)
        return relative.pow(self.config.cos_power).clamp_min(MIN_EVIDENCE)

    def _footprints(self, centres: Float[Tensor, "E 3"], focal_areas: Float[Tensor, " E"], gaussian: Tensor) -> Tensor:
        """Pixels per unit of each Gaussian's surface in each camera: `fx fy |cos| / distance^2` (`focal_areas` is
        fx fy), with cos of the angle between the ray from the Gaussian to the camera centre and the Gaussian's
        shortest axis (the surface normal of a flat Gaussian). A view that sees the surface squarely, from close by,
        or at a finer resolution sees its detail best."""
        if self._normals is None:
            axes = quat_to_rotmat(self.scene.quats_wxyz)  # columns: the Gaussian's axes
            shortest = self.scene.log_scales.argmin(dim=1)
            self._normals = axes[torch.arange(len(shortest), device=self.device), :, shortest]
        rays = centres - self.scene.means[gaussian]
        squared = rays.square().sum(dim=-1).clamp_min(1e-24)
        cosine = (rays * self._normals[gaussian]).sum(dim=-1).abs() / squared.sqrt()
        return focal_areas * cosine / squared

    def _best_views(self) -> Float[Tensor, " G"]:
        """Each Gaussian's largest `_footprints` over the rig's cameras (every process's, so all agree) whose frame
        holds its centre; over every camera for a Gaussian that no frame holds."""
        rig, means = self._rig, self.scene.means
        every = torch.arange(self.scene.num_gaussians, device=self.device)
        framed = torch.zeros(len(every), dtype=self.dtype, device=self.device)
        anywhere = torch.zeros_like(framed)
        focal_areas = _focal_areas(rig)
        for view in range(len(rig)):
            centre, focal_area = rig.c2w[view, :3, 3].expand(len(every), 3), focal_areas[view].expand(len(every))
            footprint = self._footprints(centre, focal_area, every)
            _, _, _, inside = rig.project(means, view)
            framed = torch.maximum(framed, torch.where(inside, footprint, 0.0))
            anywhere = torch.maximum(anywhere, footprint)
        return torch.where(framed > 0, framed, anywhere).clamp_min(torch.finfo(self.dtype).tiny)

    def _background_rgb01(self) -> Float[Tensor, "1 3 1 1"]:
        return torch.tensor(self.config.background_rgb01, dtype=self.dtype, device=self.device).view(1, 3, 1, 1)

    # ---- the Bridge protocol -----------------------------------------------------------------------------------

    def project(
        self, z: Float[Tensor, "G C"], background: Float[Tensor, "N C h w"] | None = None
    ) -> Float[Tensor, "N C h w"]:
        """f: render z into every view over `background` (rgb: the decoded background, or `background_rgb01` when
        None, composited at the image size and encoded; latent: `W z + (1 - alpha) background`, 0 when None).
        Instance pixels no Gaussian reaches keep `background` exactly (no codec round trip)."""
        expect_shape("z", z, self.canonical_shape)
        if background is not None:
            expect_shape("background", background, (self.num_views, *self.instance_shape))
        if self.config.canonical == "latent":
            system = self.linear_system("instance")
            x = system.render(z)
            return x if background is None else x + (1 - system.alpha) * background.to(x)
        system = self.linear_system("image")
        behind = self._background_rgb01() if background is None else self.decode_views(background)
        rgb01 = (system.render(z) + (1 - system.alpha) * behind).clamp(0.0, 1.0)
        x = self.codec.encode(rgb01)
        if background is None:
            return x
        return torch.where(self.coverage().to(x.device) > 0, x, background.to(x))

    def decode_views(self, x: Float[Tensor, "N C h w"]) -> Float[Tensor, "N 3 H W"]:
        """`codec.decode(x)` in the bridge's dtype. The last answer is kept for the same, unchanged tensor: a
        synchronised step decodes x0_hat twice (g reads it, then f composites over it), and so does a run's end, and
        with Stable Diffusion each decode is a VAE pass per view. The answer must not be modified in place."""
        last = self._last_decode
        if last is not None and last[0] is x and last[1] == x._version:
            return last[2]
        rgb01 = self.codec.decode(x).to(self.dtype)
        self._last_decode = (x, x._version, rgb01)
        return rgb01

    def fit(self, x: Float[Tensor, "N C h w"], previous: Float[Tensor, "G C"] | None = None) -> LeastSquaresFit:
        """g with diagnostics: the least-squares features of the views (module docstring) and the solver's work."""
        expect_shape("x", x, (self.num_views, *self.instance_shape))
        if previous is not None:
            expect_shape("previous", previous, self.canonical_shape)
        own = self.config.unproject_background == "own"
        if self.config.canonical == "latent":
            system = self.linear_system("instance")
            content = system.alpha * x.to(system.dtype) if own else x.to(system.dtype)
            unseen = 0.0
        else:
            system = self.linear_system("image")
            rgb01 = self.decode_views(x)
            content = system.alpha * rgb01 if own else rgb01 - (1 - system.alpha) * self._background_rgb01()
            unseen = self.config.unseen_rgb01
        config = self.config
        return system.fit(
            content, previous, unseen=unseen, damping=config.damping, tolerance=config.tolerance,
            max_iterations=config.max_iterations, min_gain_db=config.min_gain_db, shard=self.shard,
        )  # fmt: skip

    def unproject(self, x: Float[Tensor, "N C h w"], previous: Tensor | None = None) -> Float[Tensor, "G C"]:
        """g: the features whose renders best explain the views' covered content, warm-started from `previous`;
        Gaussians no view sees keep `previous` (or grey 0.5 / zero)."""
        return self.fit(x, previous).z

    def coverage(self) -> Float[Tensor, "N 1 h w"]:
        """Alpha at the instance size: rendered there for latents, average-pooled from the image for RGB."""
        if self.config.canonical == "latent":
            return self.linear_system("instance").alpha.clone()
        alpha = self.linear_system("image").alpha
        return F.avg_pool2d(alpha, self.downsample) if self.downsample > 1 else alpha.clone()

    def initial_noise(self, generator: torch.Generator) -> tuple[Float[Tensor, "G C"], Float[Tensor, "N C h w"]]:
        """`z_T ~ N(0, I)` and unit-variance `x_T` that views seeing the same Gaussians share, made as
        `SplatBridgeConfig.noise` says; drawn on `generator`'s device and moved to the scene's. Values per view are
        drawn for every view of the rig (`shard.total`), so a process holding some of them gets their share of the
        noise of one process holding all."""
        system = self.linear_system("instance")
        channels = self.instance_shape[0]
        if self.config.noise == "integral":
            cameras = self.cameras.resized(self.instance_size[1], self.instance_size[0])
            per_gaussian, x_T = integral_noise(self.scene, cameras, system, channels, generator, self.shard)
            if self.config.canonical == "latent":
                return per_gaussian, x_T
            z_T = torch.randn(self.canonical_shape, generator=generator, device=generator.device)
            return z_T.to(self.device, self.dtype), x_T
        z_T = torch.randn(self.canonical_shape, generator=generator, device=generator.device)
        if self.config.canonical == "latent":
            per_gaussian = z_T
        else:
            gaussians = self.canonical_shape[0]
            per_gaussian = torch.randn((gaussians, channels), generator=generator, device=generator.device)
        every_view = (self.shard.total, *self.instance_shape)
        independent = self.shard.local(torch.randn(every_view, generator=generator, device=generator.device))
        shared = system.render_sqrt(per_gaussian.to(self.device, self.dtype))
        x_T = shared + (1 - system.alpha).clamp_min(0).sqrt() * independent.to(self.device, self.dtype)
        return z_T.to(self.device, self.dtype), x_T

    def conditions(self) -> ViewConditions:
        """Normalised inverse expected depth at the image size (near bright, background 0) and view suffixes."""
        system = self.linear_system("image")
        viewmats = self.cameras.viewmats
        depths = torch.einsum("nj,gj->ng", viewmats[:, 2, :3], self.scene.means) + viewmats[:, 2, 3:]  # [N, G]
        height, width = self.image_size
        weighted = torch.stack([system.view_matrix(v) @ depths[v, :, None] for v in range(self.num_views)])
        weighted = weighted.reshape(self.num_views, 1, height, width)
        alpha = system.alpha
        depth = torch.where(alpha > 0, weighted / alpha.clamp_min(torch.finfo(alpha.dtype).tiny), 0.0)
        if self.config.view_suffixes:
            suffixes = self.config.suffixes.for_cameras(
                self.cameras.c2w, self._scene_centre(), self.config.up, self.config.front
            )
        else:
            suffixes = ("",) * self.num_views
        return ViewConditions(prompt_suffixes=suffixes, depth=depth_control_image(depth, alpha))

    def _scene_centre(self) -> Float[Tensor, "3"]:
        centre, _ = self.scene.bounding_sphere(trim=0.01)
        return centre

    def restyled_scene(self, z: Float[Tensor, "G C"]) -> GaussianScene:
        """The scene with the colours z stands for (clamped to [0, 1]); geometry tensors are the source's own."""
        expect_shape("z", z, self.canonical_shape)
        if self.config.canonical == "latent":
            behind = self._background_rgb01().expand(self.num_views, 3, *self.image_size)
            x = self.project(z, background=self.codec.encode(behind))
            system = self.linear_system("image")
            content = self.decode_views(x) - (1 - system.alpha) * self._background_rgb01()
            z = system.fit(
                content, unseen=self.config.unseen_rgb01, damping=self.config.damping,
                tolerance=self.config.export_tolerance, max_iterations=self.config.export_max_iterations,
                shard=self.shard,
            ).z  # fmt: skip
        return self.scene.with_colors(z.clamp(0.0, 1.0))

    def export(self, z: Float[Tensor, "G C"], path: Path) -> Path:
        """Write the restyled scene as a standard 3DGS PLY (module docstring), atomically; returns the path."""
        return self.restyled_scene(z).save(path)


__all__ = ["GaussianSplatBridge", "SplatBridgeConfig"]
