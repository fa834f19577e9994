"""The panorama bridge: a 360-degree equirectangular image seen through perspective views (geometry and conventions
in `sync_splat.functional.equirect` and docs/conventions.md).

Canonical variable `z`: one equirectangular image `[C, Ht, 2 Ht]` **in the denoiser's space** (SD latents, or the
pixels of a pixel-space prior), so `f` and `g` are linear and every case of the paper runs on it. (The official
code's alternative, an RGB panorama that every aggregation decodes into and re-encodes out of, costs a VAE round trip
per view per step and supports only the x0 cases; it is not implemented.) Its default resolution is 4 texels per
view pixel along each axis (`Ht = texel_oversample * 180 * view_size / fov`: 640 latent rows for SD's 64-latent views
at 72 degrees), so f and g do not low-pass the views as resampling between grids of one spacing would; the official
2048 x 4096 latent is about 13x denser than its views (docs/official_differences.md).

Views: pinhole cameras at the centre (OpenCV axes inside), `view_size` pixels square, field of view `fov_deg`. The
paper's ring is 8 views at yaws 0, 45, ..., 315 degrees, pitch 0, FOV 72 degrees (view 4 looks at the seam); it
leaves latitudes beyond about +-40 degrees unseen. Rings at other pitches (`elevations_deg`, e.g. +-45) and two pole
views (`pole_views`) cover the whole sphere. Views are ordered ring by ring (the paper's ring first, so view 4 stays
the reference view of ring attention), then the top and bottom views.

- f (`project`): sample z along each view pixel's ray, bilinear (default) or nearest, wrapping at the seam and
  continuing across the poles. Every ray hits the sphere, so the panorama determines every view pixel: `coverage()`
  is all ones and backgrounds never show.
- g (`unproject`): each view is inverse-warped into the panorama (every texel the view sees samples the view at its
  projected pixel) and weighted by `cos(angle to the optical axis) ** weight_power` times a smooth ramp from 0 at the
  view's frame edge (`border_feather`), so views whose details differ blend without visible frame edges
  (`weight_power = border_feather = 0` is the paper's uniform average); the weighted views are summed (a numerator and
  a denominator per view, `unproject_sums`) and divided. Texels no view sees get the value of the nearest seen texel
  (a jump-flood Voronoi fill that wraps at the seam, `fill_uncovered`), so bilinear lookups near the edge of the
  coverage never blend in zeros. The fill copies values through an index fixed by the geometry, so g stays linear.
  Then `back_projection_steps` (1) corrections: the average z plus the average of what the views still differ from
  its renders, `g(x - f(z))`. Resampling bilinearly both ways blurs a view a little on every round trip f(g(x)), which
  the sampler makes at every synchronised step; the correction undoes most of it and keeps the panorama smooth
  (sampling the views nearest instead would make the round trip exact but the panorama blocky, 4 x 4 texels per view
  pixel).
- Initial noise: white noise drawn on a grid k times finer than the panorama (`noise_cells`; "cells"), and every
  view pixel's `x_T` the sum of the cells whose centres it sees, divided by the square root of their count (the
  integral noise of Chang et al., "How I Warped Your Noise", 2024, on a fixed grid). Each value has unit variance;
  the pixels of one view hold disjoint cells, so every view's noise is white; two views share their noise where
  their pixels see the same cells, in proportion to the cells they have in common. `z_T` is the cells summed over
  each texel's k x k block divided by k: exactly unit variance, the same white noise at the canonical resolution. At
  the default 4 texels per view pixel, k = 1 and a pixel sums at least 6 texels (22 on average, more near the
  poles, where the texels narrow); a pixel that sees no cell (possible only with cells coarser than the default)
  draws its own value. Sampling the fine noise at each pixel's centre instead (nearest) is white too, but two views'
  pixels rarely land on the same cell: the views start almost independent, and averaging views that start apart
  loses contrast (docs/fidelity.md).
- Conditions: with a 360-degree depth map (metric distance per direction, `sync_splat.scene.depth_maps`), each
  view's depth is sampled along its rays at the denoiser's image resolution, converted from distance along the ray
  to depth along the optical axis (times the cosine), and turned into normalised inverse depth over all views
  together (near is bright, the farthest point 0), blurred like the official splat conditioning
  (`sync_splat.functional.depth`). This replaces the official colour-map PNG with its 8-bit wrap-around
  (docs/official_differences.md).
- Export: the RGB equirect PNG, written atomically. `export_decode` chooses how z becomes RGB: "panorama" decodes z
  itself, with the seam padded by wrapped columns so the codec sees it continuous (exact for pixel priors); "views"
  decodes every view `f(z)` at the model's native size and averages the RGB views into the panorama with the same
  weights and back-projection as g (the paper's final output; better for SD, whose VAE decodes the equirect's
  stretched polar rows poorly and would attend over the whole latent panorama at once). `export_cube_faces` writes
  six cube-map PNGs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sync_splat.bridges.plumbing import DeviceCache, back_project, divide_sums, expect_shape, resolve_device
from sync_splat.codec import Codec
from sync_splat.conditions import ViewConditions
from sync_splat.errors import InputError
from sync_splat.functional.depth import depth_control_image
from sync_splat.functional.equirect import (
    CUBE_FACES,
    Sampling,
    ViewProjection,
    equirect_directions,
    equirect_taps,
    equirect_to_cube_faces,
    gather_taps,
    image_taps,
    perspective_rays,
    project_to_view,
    sample_equirect,
    sample_views,
    view_axes,
)
from sync_splat.functional.fill import fill_nearest, nearest_valid_index, take_nearest
from sync_splat.scene.images import write_png


@dataclass(frozen=True)
class PanoramaBridgeConfig:
    """Views, resolution and aggregation of a `PanoramaBridge`; `setup(denoiser, depth)` builds it."""

    height: int | None = None
    """Ht, the panorama's rows in the denoiser's space (its width is 2 Ht); None: `texel_oversample` times the views'
    angular resolution, texel_oversample * 180 * view_size / fov_deg."""
    view_size: int | None = None
    """Side of each square view in the denoiser's space; None: the model's native size (SD 1.5: 64 latents) when
    height is None too, else matched to height (height * fov_deg / (180 * texel_oversample))."""
    texel_oversample: int = 4
    """Panorama texels per view pixel along each axis, where one of height and view_size is derived from the other.
    At 1 (texels matched to pixels) f and g each resample bilinearly between grids of one spacing and the round trip
    loses most of the finest band; at 4 the exact prior's marble keeps about twice as much (docs/fidelity.md). The
    official latent panorama is about 13 times denser than its views."""
    fov_deg: float = 72.0
    """Field of view of every view (the paper: 72 degrees)."""
    views_per_ring: int = 8
    """Views per ring, at yaws 0, 360/n, ... degrees (the paper: 8)."""
    elevations_deg: tuple[float, ...] = (0.0,)
    """Pitch of each ring of views (the paper: only 0; add 45 and -45 to cover all but the poles)."""
    pole_views: bool = False
    """Add a view straight up and one straight down (with rings at +-45 degrees, every texel is seen)."""
    sampling: Sampling = "bilinear"
    """How f samples the panorama and g samples the views (the official code: nearest)."""
    weight_power: float = 24.0
    """g weights a view's texel by cos(angle to the view's optical axis) ** weight_power; 0 is a uniform average (the
    paper). 24 keeps more of the views' contrast than near-uniform averaging (docs/fidelity.md)."""
    border_feather: float = 0.5
    """g's weights also ramp from 0 at a view's frame edge up over this fraction of its half-width, so views whose
    details differ blend without visible frame edges; 0 keeps a hard edge (the paper)."""
    back_projection_steps: int = 1
    """Refinements of g's weighted average: each adds g of what the views still differ from the panorama's renders
    (`z += g(x - f(z))`), so the round trip f(g(x)) that the sampler makes at every synchronised step does not blur
    the views' detail away (one step: the exact prior's finest band 0.32 -> 0.45 of its power, one view alone 0.75 ->
    0.95; docs/fidelity.md). The export by views makes the same correction in RGB. 0 is the weighted average (the
    paper)."""
    fill_uncovered: bool = True
    """Give texels no view sees the nearest seen texel's value (wrapping at the seam); off: the warm start or 0."""
    noise_oversample: int | None = None
    """Initial noise is drawn this many times finer than the panorama along each axis, so every view pixel sums several
    cells; None: as many as make the cells at least twice as fine as the views' pixels (2 at `texel_oversample` 1,
    else 1)."""
    export_decode: Literal["auto", "panorama", "views"] = "auto"
    """How the PNG is decoded: the panorama at once, or per view and averaged in RGB; auto picks 'panorama' for
    pixel-space denoisers and 'views' for latent ones."""
    seam_padding: int = 8
    """Wrapped columns added at each side of the seam before decoding the whole panorama (then cropped)."""
    device: str = "auto"
    """Device of the geometry precomputation; "auto" takes CUDA when available. Tensors move to the inputs' device."""

    def __post_init__(self) -> None:
        name = "PanoramaBridgeConfig"
        if self.height is not None and self.height < 2:
            raise InputError(f"{name}.height must be at least 2, got {self.height}")
        if self.view_size is not None and self.view_size < 1:
            raise InputError(f"{name}.view_size must be at least 1, got {self.view_size}")
        if not 0.0 < self.fov_deg < 180.0:
            raise InputError(f"{name}.fov_deg must be in (0, 180), got {self.fov_deg}")
        if self.views_per_ring < 1 and self.elevations_deg:
            raise InputError(f"{name}.views_per_ring must be at least 1, got {self.views_per_ring}")
        if any(not -90.0 <= e <= 90.0 for e in self.elevations_deg):
            raise InputError(f"{name}.elevations_deg must be in [-90, 90], got {self.elevations_deg}")
        if not self.elevations_deg and not self.pole_views:
            raise InputError(f"{name}: no views: give elevations_deg or set pole_views")
        if self.sampling not in ("bilinear", "nearest"):
            raise InputError(f"{name}.sampling must be 'bilinear' or 'nearest', got {self.sampling!r}")
        if self.weight_power < 0:
            raise InputError(f"{name}.weight_power must be non-negative, got {self.weight_power}")
        if not 0.0 <= self.border_feather <= 1.0:
            raise InputError(f"{name}.border_feather must be in [0, 1], got {self.border_feather}")
        if self.back_projection_steps < 0:
            raise InputError(f"{name}.back_projection_steps must be non-negative, got {self.back_projection_steps}")
        if self.texel_oversample < 1:
            raise InputError(f"{name}.texel_oversample must be at least 1, got {self.texel_oversample}")
        if self.noise_oversample is not None and self.noise_oversample < 1:
            raise InputError(f"{name}.noise_oversample must be at least 1, got {self.noise_oversample}")
        if self.seam_padding < 0:
            raise InputError(f"{name}.seam_padding must be non-negative, got {self.seam_padding}")

    def view_orientations(self) -> tuple[tuple[float, float], ...]:
        """(yaw_deg, pitch_deg) of every view, ring by ring, then the top and bottom views."""
        views = [
            (360.0 * k / self.views_per_ring, elevation)
            for elevation in self.elevations_deg
            for k in range(self.views_per_ring)
        ]
        if self.pole_views:
            views += [(0.0, 90.0), (0.0, -90.0)]
        return tuple(views)

    def resolution(self, native_view_size: int) -> tuple[int, int]:
        """(Ht, view_size): the configured values, the missing one matched to the other's angular resolution."""
        view_size, height, oversample = self.view_size, self.height, self.texel_oversample
        if view_size is None:
            view_size = (
                native_view_size if height is None else max(1, round(height * self.fov_deg / 180.0 / oversample))
            )
        if height is None:  # a texel subtends 1 / oversample of the views' mean pixel angle
            height = max(2, round(oversample * 180.0 * view_size / self.fov_deg))
        return height, view_size

    def noise_cells(self) -> int:
        """k, how many times finer than the panorama the initial noise is drawn (`noise_oversample`)."""
        if self.noise_oversample is not None:
            return self.noise_oversample
        return max(1, math.ceil(2 / self.texel_oversample))

    def setup(self, codec: Codec, depth: Float[Tensor, "Hd Wd"] | None = None) -> PanoramaBridge:
        """The bridge in `codec`'s space (a denoiser is a codec), with an optional 360-degree depth map."""
        return PanoramaBridge(codec, self, depth)


@dataclass(frozen=True)
class _Geometry:
    """Everything f and g need that depends only on the views, on one device. Both are sparse linear operators.

    Attributes:
        rays: unit world directions of every view pixel, `[N, h, w, 3]`.
        tap_index: f's texel indices for every view pixel (`equirect_taps`), `[K, N, h, w]`.
        tap_weight: their weights, `[K, N, h, w]`.
        source: g's terms: the flat view pixel (`view * h * w + row * w + col`) each term reads, `[M]`.
        target: the flat texel each term adds to, `[M]`.
        weight: each term's weight: the view's bilinear weight times the texel's weight in that view, `[M]`.
        weight_sum: the texels' total weight over views, g's denominator, `[1, Ht, Wt]`.
        fill_index: for every texel, the flat index of the nearest texel some view sees, `[Ht * Wt]`.
        noise_cell: the initial noise's cells (flat in the `[k Ht, 2 k Ht]` grid) that view pixels see, `[P]`.
        noise_pixel: the flat view pixel that sees each of them, `[P]`.
        noise_count: how many cells each view pixel sees, `[N * h * w]`.
    """

    rays: Tensor
    tap_index: Tensor
    tap_weight: Tensor
    source: Tensor
    target: Tensor
    weight: Tensor
    weight_sum: Tensor
    fill_index: Tensor
    noise_cell: Tensor
    noise_pixel: Tensor
    noise_count: Tensor

    def to(self, device: torch.device) -> _Geometry:
        return _Geometry(*(getattr(self, f.name).to(device) for f in fields(self)))


class PanoramaBridge:
    """An equirectangular panorama seen through perspective views; implements `Bridge`.

    Args:
        codec: the denoiser's codec: its channels, its native size over its downsampling (the view side when the
            config leaves both sizes open), its downsampling (depth conditions are made at the image size) and its
            decoder for the exports.
        config: views, resolution and aggregation settings.
        depth: an optional 360-degree depth map `[Hd, Wd]` (even width, metric distance per direction) for
            ControlNet depth conditioning.
    """

    linear = True

    def __init__(
        self, codec: Codec, config: PanoramaBridgeConfig | None = None, depth: Float[Tensor, "Hd Wd"] | None = None
    ) -> None:
        config = PanoramaBridgeConfig() if config is None else config
        if depth is not None and (depth.ndim != 2 or depth.shape[1] % 2):
            raise ValueError(f"depth must be a 2D equirectangular map with an even width, got {tuple(depth.shape)}")
        self.config = config
        self.codec = codec
        self.downsample = codec.downsample
        self.depth = None if depth is None else depth.detach().float().cpu()
        channels = codec.latent_channels
        height, view_size = config.resolution(max(1, codec.native_size // codec.downsample))
        self.view_orientations = config.view_orientations()
        self.num_views = len(self.view_orientations)
        self.canonical_shape = (channels, height, 2 * height)
        self.instance_shape = (channels, view_size, view_size)
        yaw_pitch = torch.tensor(self.view_orientations, dtype=torch.float64).deg2rad()
        self.axes: Float[Tensor, "N 3 3"] = view_axes(yaw_pitch[:, 0], yaw_pitch[:, 1])
        self.device = resolve_device(config.device)
        self._geometry = DeviceCache(self._build_geometry(), torch.device("cpu"))

    # ------------------------------------------------------------------ geometry

    def _weights(self, projection: ViewProjection, view_size: int) -> Tensor:
        """g's weight of directions in one view: `cos ** weight_power`, times a smoothstep from 0 at the frame's edge
        to 1 at `border_feather` of the half-width inside it; 0 where the view does not see."""
        weight = projection.cos_axis.clamp_min(0.0) ** self.config.weight_power
        if self.config.border_feather > 0:
            x, y = projection.pixels.unbind(-1)
            margin = torch.minimum(torch.minimum(x, view_size - x), torch.minimum(y, view_size - y))
            ramp = (margin / (self.config.border_feather * view_size / 2)).clamp(0.0, 1.0)
            weight = weight * ramp * ramp * (3 - 2 * ramp)
        return torch.where(projection.visible, weight, 0.0)

    def _build_geometry(self) -> _Geometry:
        _, height, width = self.canonical_shape
        size = self.instance_shape[-1]
        rays = perspective_rays(self.axes, self.config.fov_deg, size, size).float()
        tap_index, tap_weight = equirect_taps(rays, height, width, self.config.sampling)
        directions = equirect_directions(height, dtype=torch.float64).reshape(-1, 3)
        k = self.config.noise_cells()
        cell_directions = directions if k == 1 else equirect_directions(k * height, dtype=torch.float64).reshape(-1, 3)
        sources, targets, weights, cells, cell_pixels = [], [], [], [], []
        weight_sum = torch.zeros(height * width, dtype=torch.float64)
        for view, axes in enumerate(self.axes):
            projection = project_to_view(directions, axes, self.config.fov_deg, size, size)
            texel_weight = self._weights(projection, size)
            seen = torch.nonzero(texel_weight > 0).squeeze(1)  # a view sees a tenth of the sphere: keep only that
            pixel_index, pixel_weight = image_taps(projection.pixels[seen], size, size, self.config.sampling)
            sources.append((pixel_index + view * size * size).reshape(-1))
            targets.append(seen.expand_as(pixel_index).reshape(-1))
            weights.append((pixel_weight * texel_weight[seen]).reshape(-1))
            weight_sum += texel_weight
            cell_projection = (
                projection if k == 1 else project_to_view(cell_directions, axes, self.config.fov_deg, size, size)
            )
            cell = torch.nonzero(cell_projection.visible).squeeze(1)
            column, row = cell_projection.pixels[cell].floor().long().clamp(0, size - 1).unbind(-1)
            cells.append(cell)
            cell_pixels.append(view * size * size + row * size + column)
        noise_pixel = torch.cat(cell_pixels)
        noise_count = noise_pixel.bincount(minlength=self.num_views * size * size).float()
        fill_index = nearest_valid_index(weight_sum.reshape(height, width) > 0, wrap_x=True).reshape(-1)
        return _Geometry(
            rays=rays,
            tap_index=tap_index,
            tap_weight=tap_weight.float(),
            source=torch.cat(sources),
            target=torch.cat(targets),
            weight=torch.cat(weights).float(),
            weight_sum=weight_sum.float().reshape(1, height, width),
            fill_index=fill_index,
            noise_cell=torch.cat(cells),
            noise_pixel=noise_pixel,
            noise_count=noise_count,
        )

    def texel_coverage(self) -> Bool[Tensor, "Ht Wt"]:
        """Which texels some view sees (before any filling)."""
        return self._geometry.on().weight_sum[0] > 0

    def view_rays(self) -> Float[Tensor, "N h w 3"]:
        """Unit world directions through every view pixel (docs/conventions.md panorama frame)."""
        return self._geometry.on().rays.clone()

    # ------------------------------------------------------------------ f and g

    def project(self, z: Float[Tensor, "C Ht Wt"], background: Tensor | None = None) -> Float[Tensor, "N C h w"]:
        """Every view's samples of z along its rays; `background` is ignored because every view pixel is covered."""
        expect_shape("z", z, self.canonical_shape)
        geometry = self._geometry.on(z.device)
        return gather_taps(z, geometry.tap_index, geometry.tap_weight).transpose(0, 1).contiguous()

    def unproject_sums(self, x: Float[Tensor, "N C h w"]) -> tuple[Float[Tensor, "C Ht Wt"], Float[Tensor, "1 Ht Wt"]]:
        """Per-view sums: every view inverse-warped into the panorama times its weights (numerator), and the weights
        (denominator)."""
        expect_shape("x", x, (self.num_views, *self.instance_shape))
        geometry = self._geometry.on(x.device)
        channels, height, width = self.canonical_shape
        values = x.transpose(0, 1).reshape(channels, -1).index_select(1, geometry.source)
        num = x.new_zeros((channels, height * width)).index_add_(1, geometry.target, values * geometry.weight.to(x))
        return num.reshape(channels, height, width), geometry.weight_sum.to(x)

    def unproject(self, x: Float[Tensor, "N C h w"], previous: Tensor | None = None) -> Float[Tensor, "C Ht Wt"]:
        """The weighted average of the views seeing each texel, refined by `back_projection_steps`; unseen texels are
        filled from the nearest seen texel (or, without `fill_uncovered`, take `previous`, else 0). A closed form:
        `previous` is not a warm start."""
        fill_index = self._geometry.on(x.device).fill_index

        def average(views: Tensor, fallback: Tensor | None = None) -> Tensor:
            num, den = self.unproject_sums(views)
            if not self.config.fill_uncovered:
                return divide_sums(num, den, fallback)
            return take_nearest(divide_sums(num, den), fill_index)

        steps = self.config.back_projection_steps
        return back_project(x, average, self.project, steps, start=average(x, previous))

    def coverage(self) -> Float[Tensor, "N 1 h w"]:
        """All ones, on the bridge's device: every view ray hits the sphere, so the panorama determines every view
        pixel."""
        size = self.instance_shape[-1]
        return torch.ones(self.num_views, 1, size, size, device=self.device)

    def initial_noise(self, generator: torch.Generator) -> tuple[Float[Tensor, "C Ht Wt"], Float[Tensor, "N C h w"]]:
        """Unit-variance, white, view-consistent noise: fine white cells, summed over what each view pixel sees and
        divided by the square root of their count (`x_T`), and over each texel's k x k block divided by k (`z_T`);
        on the generator's device."""
        channels, height, width = self.canonical_shape
        k = self.config.noise_cells()
        geometry = self._geometry.on(generator.device)
        fine = torch.randn((channels, k * height, k * width), generator=generator, device=generator.device)
        own = torch.randn((channels, len(geometry.noise_count)), generator=generator, device=generator.device)
        z_T = fine.reshape(channels, height, k, width, k).sum(dim=(2, 4)) / k
        sums = torch.zeros_like(own).index_add_(
            1, geometry.noise_pixel, fine.reshape(channels, -1)[:, geometry.noise_cell]
        )
        count = geometry.noise_count.to(own)
        x_T = torch.where(count > 0, sums / count.clamp_min(1).sqrt(), own)
        return z_T, x_T.reshape(channels, self.num_views, *self.instance_shape[1:]).transpose(0, 1).contiguous()

    # ------------------------------------------------------------------ conditions

    def view_depth(self) -> Float[Tensor, "N 1 H W"] | None:
        """Each view's depth along its optical axis at the denoiser's image size (view_size x downsample), sampled
        from the depth map (bilinear); None without a depth map."""
        if self.depth is None:
            return None
        size = self.instance_shape[-1] * self.downsample
        depth = []
        for axes in self.axes[:, None]:  # one view at a time: SD's 512-pixel views need ~40 MB each, not ~1 GB
            rays = perspective_rays(axes, self.config.fov_deg, size, size)[0]
            distance = sample_equirect(self.depth.double()[None], rays, "bilinear")[0]
            depth.append(distance * (rays @ axes[0, :, 2]))  # times cos(angle to the optical axis)
        return torch.stack(depth).float()[:, None]

    def conditions(self) -> ViewConditions:
        """No prompt suffixes (one prompt for the whole panorama, as the paper); with a depth map, per-view normalised
        inverse depth in [0, 1] (near bright), normalised over all views together."""
        depth = self.view_depth()
        if depth is None:
            return ViewConditions.plain(self.num_views)
        image = depth_control_image(depth, per_view=False, far_value=0.0)
        return ViewConditions(prompt_suffixes=("",) * self.num_views, depth=image)

    # ------------------------------------------------------------------ export

    def rgb_panorama(self, z: Float[Tensor, "C Ht Wt"]) -> Float[Tensor, "3 H W"]:
        """z decoded to an `rgb01` equirectangular image (`export_decode` says how)."""
        expect_shape("z", z, self.canonical_shape)
        mode = self.config.export_decode
        if mode == "auto":
            mode = "panorama" if self.downsample == 1 else "views"
        if mode == "views":
            return self._rgb_from_views(z)
        width = z.shape[-1]
        pad = min(self.config.seam_padding, width)
        padded = torch.cat((z[..., width - pad :], z, z[..., :pad]), dim=-1) if pad else z
        rgb = self.codec.decode(padded[None])[0]
        scale = rgb.shape[-1] / padded.shape[-1]
        if scale != int(scale) or rgb.shape[-2] != z.shape[-2] * int(scale):
            raise ValueError(f"decode changed the shape {tuple(padded.shape)} to {tuple(rgb.shape)}, not by a factor")
        crop = pad * int(scale)
        return rgb[..., crop : rgb.shape[-1] - crop]

    def _rgb_from_views(self, z: Float[Tensor, "C Ht Wt"]) -> Float[Tensor, "3 H W"]:
        """Decode every view f(z) and average them into an RGB panorama with g's weights and back-projection, at the
        decoded views' angular resolution (rows 180 * size / fov_deg: what the views hold, however dense the latent
        panorama is). Each view's projection is recomputed per pass rather than kept (SD's 24 views of 512 pixels
        would hold about 2 GB of them)."""
        rgb_views = self.codec.decode(self.project(z))
        size = rgb_views.shape[-1]
        height = max(2, round(180.0 * size / self.config.fov_deg))
        directions = equirect_directions(height, dtype=torch.float64, device=z.device)
        axes = self.axes.to(z.device)
        sampling = self.config.sampling

        def average(views: Tensor) -> Tensor:
            num = views.new_zeros((views.shape[1], height, 2 * height))
            den = views.new_zeros((1, height, 2 * height))
            for view, frame in zip(views, axes, strict=True):
                projection = project_to_view(directions, frame, self.config.fov_deg, size, size)
                weight = self._weights(projection, size).to(num.dtype)[None]
                num += sample_views(view[None], projection.pixels[None], sampling)[0] * weight
                den += weight
            return fill_nearest(divide_sums(num, den), den[0] > 0, wrap_x=True)

        def render(panorama: Tensor) -> Tensor:
            rays = perspective_rays(axes, self.config.fov_deg, size, size)
            return sample_equirect(panorama, rays, sampling).transpose(0, 1)

        return back_project(rgb_views, average, render, self.config.back_projection_steps)

    def export(self, z: Float[Tensor, "C Ht Wt"], path: Path) -> Path:
        """Decode the panorama and write it as one equirectangular PNG, atomically."""
        return write_png(self.rgb_panorama(z), path)


def cube_face_paths(path: str | Path) -> tuple[Path, ...]:
    """The six PNGs `export_cube_faces` writes beside `path`: `<stem>_<face>.png` in `CUBE_FACES` order."""
    path = Path(path)
    return tuple(path.with_name(f"{path.stem}_{name}.png") for name, _, _ in CUBE_FACES)


def export_cube_faces(rgb01: Float[Tensor, "3 H W"], path: str | Path, size: int | None = None) -> tuple[Path, ...]:
    """Write the six cube-map faces of an RGB panorama as PNGs named after `path` (`cube_face_paths`), atomically.

    Args:
        rgb01: an equirectangular image in [0, 1] (e.g. `PanoramaBridge.rgb_panorama(z)`).
        path: the panorama's file name; the faces go beside it.
        size: each face's side; None keeps the panorama's resolution at the face centres (width / 4).

    Returns:
        The written paths, front, right, back, left, up, down.
    """
    size = max(1, rgb01.shape[-1] // 4) if size is None else size
    faces = equirect_to_cube_faces(rgb01, size)
    return tuple(write_png(face, face_path) for face, face_path in zip(faces, cube_face_paths(path), strict=True))
