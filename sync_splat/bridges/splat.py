"""The Gaussian-splat bridge: per-Gaussian colours (or latent features) seen through rendered views (DESIGN.md §5).

Geometry (means, rotations, scales, opacities) is frozen, so a rendered pixel is linear in the per-Gaussian features:
with `W_v` the compositing weights of view v (`gaussian_weights`, sparse `[h w, G]`, computed ONCE per bridge),

    x_v = W_v z + (1 - alpha_v) background_v,        alpha_v = W_v 1.

Canonical spaces (`SplatBridgeConfig.canonical`):
- "rgb": `z` `[G, 3]` view-independent colours in [0, 1] (the paper's splat setting). f renders at the image size,
  composites over the decoded background, and encodes with the denoiser's codec, so f is not linear in the
  denoiser's space: only the x0_hat cases (2, 5) may run.
- "latent": `z` `[G, C]` features rendered directly at the instance (latent) size; f and g are linear; all cases.

g (`unproject`) is the least-squares fit derived in `layered_image.py`. The sampler calls `f(z, background=x)`, so a
view agrees with z exactly when its covered content `alpha x` equals `W z`; g fits that content,

    min_c  sum_v ||W_v c - y_v||^2 + lambda ||c - c_ref||^2,     y_v = alpha_v x_v   ("own" background),

normal equations `(A + lambda I) c = b + lambda c_ref` with `A = sum_v W_v^T W_v` and `b = sum_v W_v^T y_v`, both
sums over views (`SplatLeastSquares.sums`; views are grouped into shards whose sums add, so shards could live on
different processes). With `unproject_background="default"` the views are instead taken as composited over the
bridge's default background (white RGB, zero latents: the official `force_clean_composition` fit),
`y_v = x_v - (1 - alpha_v) background`.

- `c_ref = b / (A 1)` is the closed form: one back-projection, the splat colour average re-weighted by coverage. It
  is exact where a pixel's Gaussians share one colour and NOT the least-squares answer where different colours
  overlap; it starts the solver when there is no warm start.
- Conjugate gradient, preconditioned with the row sums `A 1 + lambda` (the closed form's denominator), then runs from
  `previous` (the sampler's warm start) or from `c_ref`, one independent CG per channel, until the relative residual
  `||rhs - (A + lambda I) c|| / ||rhs||` falls to `tolerance` (checked before the first step, so a converged warm
  start costs no iteration), or an iteration improves the fit by less than `min_gain_db` decibels (each CG step
  lowers the squared error by exactly `step * rho`), or `max_iterations`. Views that agree end on the residual;
  views that disagree, as the sampler's do, end on the gain, whose PSNR converges long before the residual.
- `damping` (lambda, in fully opaque pixels' worth of evidence) keeps weakly seen Gaussians near `c_ref`: without it,
  a Gaussian seen through a few faint pixels may take any colour at all (values of +-1e4 at 128^2 on real scenes),
  which other, held-out views would show. Gaussians no view sees keep `previous` (or the unseen default).
- `solver_cutoff` leaves the weights below it out of A and b (the fit of the pruned weights `W~`, its products
  reading fewer weights); rendering, alpha and the conditions keep every weight. `A 1` (the preconditioner and the
  closed form's denominator) and "seen" are then those of `W~`.
- A step costs one back-projection for `b` plus a few CG iterations (a warm start's `A previous` shares the
  back-projection's pass: `W^T [y | W previous]`). No state is kept between fits, so a resumed run ends bit for bit
  as an uninterrupted one. Each iteration applies `A`: either the assembled
  sparse `G x G` matrix (one multiply) or `W^T (W p)` (two passes over the weights). `normal_matrix="auto"` assembles
  `A` (once, on the first fit) when a 1/64 row sample predicts `nnz(A) <= nnz(W)`; at low resolutions with many
  overlapping Gaussians `A` is denser than `W` and the implicit product is cheaper.

Initial noise (the official "consistent noise", reference/synctweedies.md §4.5): per-Gaussian N(0, 1) features
rendered at the instance size with square-root weights, `sum_g sqrt(w_g) e_g`, plus independent background noise
times `sqrt(1 - alpha)`: the variance is `sum_g w_g + 1 - alpha = 1`, and views seeing the same Gaussian share its
noise. `z_T ~ N(0, I)` in the canonical shape (for "latent" it is also the per-Gaussian noise).

Conditions: expected depth from the same weights (`sum_g w_g d_g / alpha`, d the Gaussian centre's camera depth),
as normalised inverse depth (`depth_control_image`: near bright, background 0, global over views, blurred as the
official pipeline), and view suffixes from each camera's direction seen from the scene centre: with `up` (default
+y, the demo scene's and the orbit rigs' frame) and `front` (default +z, where the orbit rig's azimuth 0 sits),
elevation above 60 degrees is ", top view", otherwise the azimuth from `front` decides: within 45 degrees
", front view" (a camera on the +z side, looking along -z), beyond 135 degrees ", back view", else ", side view".

Export: a standard 3DGS PLY with the geometry bit-identical, `f_dc = (c - 0.5) / SH_C0` and `f_rest` zero
(`GaussianScene.with_colors`), written atomically. A latent canonical is first rendered, decoded and re-fitted in
RGB (over the default background) at the image size, solved to `export_tolerance`.

The weights, their products and the fit live in `splat_system.SplatLeastSquares`; the solver in
`sync_splat.functional.conjugate_gradient`.

Dimension letters (docs/conventions.md): N views, G Gaussians, C channels, H W image pixels, h w instance pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sync_splat.bridges.plumbing import ViewSuffixes, expect_shape
from sync_splat.bridges.splat_fit import NormalMatrix, SplatLeastSquares
from sync_splat.codec import Codec
from sync_splat.conditions import ViewConditions
from sync_splat.errors import InputError
from sync_splat.functional.conjugate_gradient import LeastSquaresFit
from sync_splat.functional.depth import depth_control_image
from sync_splat.render.gaussians import gaussian_weights
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.gaussians import GaussianScene


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
    agree (they come back to ~50 dB with the default damping)."""
    max_iterations: int = 50
    """At most this many conjugate-gradient iterations per fit (0: the closed form, or the warm start, alone)."""
    min_gain_db: float = 0.05
    """Conjugate gradient also stops after an iteration that improved the fit (its squared error over all views) by
    less than this many decibels (0: never): what ends the fit of views that disagree, as the sampler's do, whose
    PSNR converges long before the residual. Scenes whose fit converges slowly get more iterations, where a fixed
    residual would stop them early (0.05, on the benchmark's scenes: 0.06 to 0.16 dB below the fully converged fit,
    within 0.03 dB of the official 1000-iteration fit)."""
    export_tolerance: float = 1e-5
    """The export's RGB fit of a latent canonical (`restyled_scene`) runs once, cold, and gives the colours the
    user keeps, so it is solved nearly to the end: conjugate gradient stops at this relative residual..."""
    export_max_iterations: int = 500
    """...or after this many iterations."""
    normal_matrix: NormalMatrix = "auto"
    """How CG applies A = sum_v W_v^T W_v: 'assembled' (a sparse G x G matrix, built on the first fit), 'implicit'
    (W^T (W p), two passes over the weights), or 'auto' (assembled when it is predicted sparser than W)."""
    solver_cutoff: float = 1e-3
    """The fit (g) solves its normal equations, A and b, with the compositing weights below this left out; f, alpha,
    coverage and the conditions keep every weight. The sparse products of a fit are memory-bound, so its time falls
    with the weights it reads: 1e-3 keeps 57 % of them on the donut and the demo at 50 views of 128 x 128 (a fit
    step 1.5x faster on the donut, implicit A; 2x on the demo, whose assembled A also thins). The cost is the light
    each pixel loses to the pruned entries, which the fit makes up from the Gaussians it keeps: each entry carries at
    most 1e-3 of its pixel (a quarter of an 8-bit level), together 0.7 % of a covered pixel's alpha on average (at
    most 3.8 %; donut, 8 views), and the benchmark's fits lose 0.02 dB (donut) and 0.001 dB (demo) against the
    exact weights. Consistent views are then fixed points only up to that loss (the default fit brings them back
    at 49.4 dB instead of 49.9 on the tests' small scene). It is paid for with a pruned copy of W and W^T (about
    0.57x their memory again; 281 MB on the donut at 50 views). 0: the exact fit, bit for bit, and no copy."""
    views_per_shard: int | None = None
    """Views whose weights are stored and summed together (None: all in one); the per-shard sums add up, so shards
    could be split across processes."""
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
            "min_gain_db": self.min_gain_db, "export_tolerance": self.export_tolerance,
            "export_max_iterations": self.export_max_iterations, "solver_cutoff": self.solver_cutoff,
        }  # fmt: skip
        bad = {name: value for name, value in settings.items() if not (math.isfinite(value) and value >= 0)}
        if bad:
            listing = ", ".join(f"{name}={value}" for name, value in bad.items())
            raise InputError(f"SplatBridgeConfig: {listing}: these settings must be finite and non-negative")
        if self.views_per_shard is not None and self.views_per_shard < 1:
            raise InputError(f"SplatBridgeConfig.views_per_shard must be at least 1 or None: {self.views_per_shard}")

    def setup(self, codec: Codec, scene: GaussianScene, cameras: Cameras) -> GaussianSplatBridge:
        """The bridge this config describes, for `codec`'s space (a denoiser is a codec)."""
        return GaussianSplatBridge(codec, scene, cameras, self)


class GaussianSplatBridge:
    """Per-Gaussian colours (or latent features) of a frozen splat scene, seen through N cameras.

    Args:
        codec: the denoiser's codec (`encode`, `decode`, `latent_channels`, `downsample`).
        scene: the Gaussians; its device is where everything runs.
        cameras: the views at the image size the codec decodes to (H x W, both divisible by `codec.downsample`).
        config: representation and fit settings.

    Attributes:
        num_views: N.
        canonical_shape: `(G, 3)` for "rgb", `(G, codec.latent_channels)` for "latent".
        instance_shape: `(codec.latent_channels, H / downsample, W / downsample)`.
        linear: True for the latent canonical space only.
    """

    def __init__(
        self, codec: Codec, scene: GaussianScene, cameras: Cameras, config: SplatBridgeConfig | None = None
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
        self.scene, self.codec, self.config = scene, codec, config
        self.device, self.dtype = scene.means.device, scene.means.dtype
        self.cameras = cameras.to(self.device, self.dtype)
        self.downsample = downsample
        self.num_views = len(cameras)
        self.image_size = (cameras.height, cameras.width)
        self.instance_size = (cameras.height // downsample, cameras.width // downsample)
        channels = codec.latent_channels
        self.canonical_shape = (scene.num_gaussians, 3 if config.canonical == "rgb" else channels)
        self.instance_shape = (channels, *self.instance_size)
        self.linear = config.canonical == "latent"
        self._systems: dict[tuple[int, int], SplatLeastSquares] = {}
        self.linear_system("image" if config.canonical == "rgb" else "instance")  # the weights the sampler needs, now

    # ---- the linear systems (weights computed once per resolution, on first use) -------------------------------

    def linear_system(self, resolution: Literal["image", "instance"]) -> SplatLeastSquares:
        """The weights, alpha and fit of every view at the image or the instance (latent) size, built on first use."""
        height, width = self.image_size if resolution == "image" else self.instance_size
        if (height, width) not in self._systems:
            cameras = self.cameras.resized(width, height)
            scene = self.scene
            weights = gaussian_weights(
                scene.means, scene.quats_wxyz, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits),
                cameras.viewmats, cameras.Ks, width, height, antialiased=self.config.antialiased,
            )  # fmt: skip
            self._systems[(height, width)] = SplatLeastSquares(
                weights,
                self.num_views,
                height,
                width,
                self.config.views_per_shard,
                self.config.normal_matrix,
                self.config.solver_cutoff,
            )
        return self._systems[(height, width)]

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
        behind = self._background_rgb01() if background is None else self.codec.decode(background).to(self.dtype)
        rgb01 = (system.render(z) + (1 - system.alpha) * behind).clamp(0.0, 1.0)
        x = self.codec.encode(rgb01)
        if background is None:
            return x
        return torch.where(self.coverage().to(x.device) > 0, x, background.to(x))

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
            rgb01 = self.codec.decode(x).to(self.dtype)
            content = system.alpha * rgb01 if own else rgb01 - (1 - system.alpha) * self._background_rgb01()
            unseen = self.config.unseen_rgb01
        config = self.config
        return system.fit(
            content, previous, unseen, config.damping, config.tolerance, config.max_iterations, config.min_gain_db
        )

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
        """`z_T ~ N(0, I)` and view-consistent, unit-variance `x_T` (module docstring), drawn on `generator`'s
        device and moved to the scene's."""
        channels, height, width = self.instance_shape
        z_T = torch.randn(self.canonical_shape, generator=generator, device=generator.device)
        if self.config.canonical == "latent":
            per_gaussian = z_T
        else:
            per_gaussian = torch.randn(
                (self.canonical_shape[0], channels), generator=generator, device=generator.device
            )
        independent = torch.randn((self.num_views, *self.instance_shape), generator=generator, device=generator.device)
        system = self.linear_system("instance")
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
            content = self.codec.decode(x).to(self.dtype) - (1 - system.alpha) * self._background_rgb01()
            tolerance, iterations = self.config.export_tolerance, self.config.export_max_iterations
            z = system.fit(content, None, self.config.unseen_rgb01, self.config.damping, tolerance, iterations).z
        return self.scene.with_colors(z.clamp(0.0, 1.0))

    def export(self, z: Float[Tensor, "G C"], path: Path) -> Path:
        """Write the restyled scene as a standard 3DGS PLY (module docstring), atomically; returns the path."""
        return self.restyled_scene(z).save(path)


__all__ = ["GaussianSplatBridge", "SplatBridgeConfig"]
