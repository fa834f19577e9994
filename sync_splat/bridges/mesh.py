"""The mesh-texture bridge: a UV texture seen through rasterised views of a mesh (the paper's mesh texturing).

The canonical variable `z` is a texture `[C, Ht, Wt]` in the denoiser's space (a 4-channel latent texture for SD,
the paper's 1536 x 1536; an RGB texture in [-1, 1] for the pixel-space prior). The instances are N views
`[N, C, h, w]` of the mesh, normalised to the unit sphere, from cameras looking at its centre: by default the
paper's 8 azimuths at elevation 0 plus 2 views at 30 degrees (azimuths 0 and 180), field of view 60 degrees,
distance 2, rendered at the denoiser's native size (`h = size / downsample`). Geometry is frozen, so every view's
rasterisation, and with it both f and g, is a fixed linear map built once (`TextureBake`).

- f (`project`): look the texture up at each mesh pixel's interpolated UV (bilinear, or nearest as the official
  code; UV origin bottom-left per docs/conventions.md) and composite over the background (the given tensor, or
  zero) with coverage = 1 on mesh pixels, 0 elsewhere. One face per pixel, no blur.
- g (`unproject`), as per-view sums (`unproject_sums`):
  1. splat: every mesh pixel of view i goes into the texel holding its UV; a texel's value in view i is the mean
     of the pixels it received;
  2. per-view fill: texels the views' pixels do not reach get a value too when the texture is denser than the
     views (the paper's 1536 texels for 96 latent pixels leave most texels without a pixel). Every other chart
     texel takes the view pixel its 3D point projects to, if that pixel sees the same surface: the same face, or
     a surface point within `visibility_tolerance` pixel footprints of the texel's point (a neighbouring face,
     also for faces smaller than a pixel; an occluder in front is farther). Without this step, two views would fill
     disjoint texels and never be averaged: f(g(x)) would hand every view its own pixels back, i.e. no
     synchronisation. The official code gets the same effect from a Voronoi fill of each view's map in UV space
     (a jump flood per view and per step); projecting texels is exact for the view and needs no flood;
  3. weight: `w_i = cos_i^p`, with `cos_i` the cosine between the face normal and the direction to camera i
     (clamped at 0, averaged over a texel's pixels) and `p` an explicit setting: `cos_power` (24)
     while sampling and `bake_cos_power` (6) for the final RGB bake (the official code's effective values are 1
     and 6; the exact prior measures less contrast lost to averaging with 24: docs/official_differences.md).
     Numerator `sum_i w_i m_i` and denominator `sum_i w_i`;
  4. divide, then fill the texels no view sees (outside the charts, or hidden from every camera) with the value of
     the nearest seen texel (`functional.fill`, jump flooding), so bilinear lookups at chart borders and the
     exported image have no holes. Which texels are seen is fixed, so the flood runs once, at construction;
  5. back-projection (`back_projection_steps`, 1): the average of step 4, `z`, plus the average of what the views
     still differ from its renders, `g(x - f(z))`. Splatting pixels into texels and looking them up bilinearly
     blurs a view a little on every round trip, and the sampler makes one per synchronised step; the correction
     undoes most of it (the official code has no such step).
- Initial noise: `z_T ~ N(0, I)` and `x_T = f(z_T)` completed to unit variance per pixel with independent noise
  (bilinear lookups average texels: a pixel's variance is the sum of its squared weights), and pure noise on the
  background.
- Conditions: view-dependent prompt suffixes (", front view." for |azimuth| <= 30 degrees, ", back view." for
  |azimuth| >= 120, ", side view." otherwise; ", top view." / ", bottom view." when |elevation| > 30, as the
  official code) and normalised inverse depth per view at the views' image resolution (`functional.depth`).
- Export: decode the views of z, bake an RGB texture from them (g at the views' image resolution, with
  `bake_cos_power` and the same back-projection) and save the mesh, in its own coordinates, as OBJ + MTL + PNG (or
  GLB when the path ends in .glb).

Meshes are rendered double-sided (render/mesh.py), unlike the official renderer's backface culling, so meshes with
inconsistent winding show no holes; the cosine uses the face normal turned towards the camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sync_splat.bridges.mesh_views import TexelGeometry, TextureBake, mesh_rig
from sync_splat.bridges.plumbing import (
    MESH_VIEW_SUFFIXES,
    DeviceCache,
    ViewSuffixes,
    back_project,
    expect_shape,
    resolve_device,
)
from sync_splat.codec import Codec
from sync_splat.conditions import ViewConditions
from sync_splat.errors import InputError
from sync_splat.functional.depth import depth_control_image
from sync_splat.render.mesh import Backend, MeshRaster, rasterize_mesh
from sync_splat.scene.mesh import MeshAsset


@dataclass(frozen=True)
class MeshBridgeConfig:
    """Views, texture sizes and aggregation settings of `MeshTextureBridge`; the defaults are the paper's."""

    view_size: int | None = None
    """Side of the square views in image pixels; None: the denoiser's native size. The paper renders meshes at 768
    (96 x 96 SD latents)."""
    texture_size: int | None = None
    """Side of the canonical texture in the denoiser's space; None: twice the view side in image pixels (the paper:
    1536 latent texels for 768-pixel views)."""
    rgb_texture_size: int | None = None
    """Side of the exported RGB texture; None: the largest power of two not above twice the view side (the paper:
    1024 for 768-pixel views)."""
    azimuths: int = 8
    """Views on the ring at `elevation_deg`, evenly spaced from azimuth 0 (the front, seen from +z)."""
    elevation_deg: float = 0.0
    """Elevation of the ring, in degrees above the horizontal plane."""
    upper_azimuths_deg: tuple[float, ...] = (0.0, 180.0)
    """Azimuths of extra views at `upper_elevation_deg` (the paper's two "top" cameras); empty for none."""
    upper_elevation_deg: float = 30.0
    """Elevation of the extra views, in degrees."""
    fov_deg: float = 60.0
    """Field of view of every camera, in degrees."""
    camera_distance: float = 2.0
    """Distance of the cameras from the centre of the mesh, normalised to the unit sphere."""
    cos_power: float = 24.0
    """Exponent p of the view weight cos^p while sampling. The official code's effective value is 1; 24 lets a texel
    follow the views that face it, which keeps more of the views' contrast (docs/official_differences.md)."""
    back_projection_steps: int = 1
    """Refinements of g's weighted average: each adds g of what the views still differ from the texture's renders
    (`z += g(x - f(z))`), so the round trip f(g(x)) that the sampler makes at every synchronised step does not blur
    the views' detail away (one step: the exact prior's finest band 0.63 -> 0.91 of its power, docs/fidelity.md).
    More steps overshoot where views disagree; 0 is the weighted average (the paper)."""
    bake_cos_power: float = 6.0
    """Exponent p of the view weight cos^p for the final RGB bake (the official setting)."""
    texture_filter: Literal["bilinear", "nearest"] = "bilinear"
    """Texture lookup in f: bilinear, or nearest as the official renderer."""
    per_view_fill: bool = True
    """Give texels between a view's splatted pixels that view's pixel at their projection (see the module
    docstring); False splats pixels only, which leaves views unsynchronised when the texture is denser."""
    visibility_tolerance: float = 1.0
    """Per-view fill: a texel takes the pixel it projects to when that pixel shows the texel's face, or a surface
    point within this many pixel footprints of the texel's point (a neighbouring face, not an occluder)."""
    backend: Backend = "auto"
    """Rasteriser: nvdiffrast on CUDA when installed ("auto"), or the pure-torch one ("torch")."""
    device: str = "auto"
    """Device of the geometry precomputation; "auto" takes CUDA when available. Tensors move to the inputs' device."""
    suffixes: ViewSuffixes = MESH_VIEW_SUFFIXES
    """The angles that make a view a front, side, back, top or bottom view (the official mesh thresholds)."""

    def __post_init__(self) -> None:
        name = "MeshBridgeConfig"
        sizes = {"view_size": self.view_size, "texture_size": self.texture_size,
                 "rgb_texture_size": self.rgb_texture_size}  # fmt: skip
        for field_name, value in sizes.items():
            if value is not None and value < 1:
                raise InputError(f"{name}.{field_name} must be at least 1 (or None for the default), got {value}")
        if self.azimuths < 0:
            raise InputError(f"{name}.azimuths must be non-negative, got {self.azimuths}")
        if not self.view_angles():
            raise InputError(f"{name}: no views (azimuths is 0 and upper_azimuths_deg is empty)")
        if not 0.0 < self.fov_deg < 180.0:
            raise InputError(f"{name}.fov_deg must be in (0, 180), got {self.fov_deg}")
        if not self.camera_distance > 1.0:
            raise InputError(f"{name}.camera_distance must exceed 1 (the mesh's radius), got {self.camera_distance}")
        if not (math.isfinite(self.cos_power) and math.isfinite(self.bake_cos_power)):
            raise InputError(f"{name}: cos_power and bake_cos_power must be finite")
        if self.texture_filter not in ("bilinear", "nearest"):
            raise InputError(f"{name}.texture_filter must be 'bilinear' or 'nearest', got {self.texture_filter!r}")
        if self.back_projection_steps < 0:
            raise InputError(f"{name}.back_projection_steps must be non-negative, got {self.back_projection_steps}")
        if not self.visibility_tolerance >= 0.0:
            raise InputError(f"{name}.visibility_tolerance must be non-negative, got {self.visibility_tolerance}")

    def setup(self, codec: Codec, mesh: MeshAsset) -> MeshTextureBridge:
        """The bridge for `mesh` in `codec`'s space (a denoiser is a codec)."""
        return MeshTextureBridge(codec, mesh, self)

    def view_angles(self) -> list[tuple[float, float]]:
        """(elevation, azimuth) in degrees of every view: the ring first, then the upper views."""
        ring = [(self.elevation_deg, 360.0 * k / self.azimuths) for k in range(self.azimuths)]
        return ring + [(self.upper_elevation_deg, azimuth) for azimuth in self.upper_azimuths_deg]


@dataclass(frozen=True)
class _Views:
    """One set of rendered views and the bake that inverts them, on one device."""

    raster: MeshRaster
    grid: Float[Tensor, "1 Nh w 2"]
    coverage: Float[Tensor, "N 1 h w"]
    bake: TextureBake

    def to(self, device: torch.device) -> _Views:
        raster = MeshRaster(*(getattr(self.raster, f.name).to(device) for f in fields(MeshRaster)))
        return _Views(raster, self.grid.to(device), self.coverage.to(device), self.bake.to(device))


class MeshTextureBridge:
    """A mesh's UV texture seen from N cameras (the module docstring explains f and g).

    Args:
        codec: the denoiser's codec: its channels, downsampling and native size (the default view size), and its
            decoder for `export`.
        mesh: the mesh with its UV layout, in its own coordinates (exported as is; rendered normalised).
        config: views, sizes and weights.
    """

    linear = True

    def __init__(self, codec: Codec, mesh: MeshAsset, config: MeshBridgeConfig | None = None) -> None:
        config = MeshBridgeConfig() if config is None else config
        downsample = codec.downsample
        image_size = config.view_size or codec.native_size
        if image_size % downsample:
            raise InputError(
                f"MeshBridgeConfig.view_size {image_size} must be a multiple of the denoiser's downsampling "
                f"factor {downsample}"
            )
        texture_size = config.texture_size or 2 * image_size
        self.config = config
        self.codec = codec
        self.mesh = mesh
        self.image_size = image_size
        self.rgb_texture_size = config.rgb_texture_size or 2 ** int(math.log2(2 * image_size))
        self.device = resolve_device(config.device)
        self.render_mesh = mesh.normalized().to(self.device)
        size = image_size // downsample
        self.angles = config.view_angles()
        self.cameras = mesh_rig(self.angles, config.fov_deg, config.camera_distance, size)
        self.num_views = len(self.cameras)
        self.canonical_shape = (codec.latent_channels, texture_size, texture_size)
        self.instance_shape = (codec.latent_channels, size, size)
        self._views = DeviceCache(self._render(self.cameras, texture_size, config.cos_power), self.device)
        self._image_views: _Views | None = None
        self._image_cameras = self.cameras.resized(image_size, image_size)

    # ---- geometry, built once ---------------------------------------------------------------------------------

    def _render(self, cameras: Cameras, texture_size: int, cos_power: float) -> _Views:
        mesh = self.render_mesh
        raster = rasterize_mesh(
            mesh.vertices, mesh.faces, mesh.face_uvs, cameras.viewmats.to(self.device), cameras.Ks.to(self.device),
            cameras.width, cameras.height, backend=self.config.backend,
        )  # fmt: skip
        texels = TexelGeometry.build(mesh, texture_size, texture_size)
        bake = TextureBake.build(
            raster, cameras, texels, cos_power, self.config.per_view_fill, self.config.visibility_tolerance
        )
        # grid_sample coordinates (align_corners=False): x = 2u - 1, and row r holds v = 1 - (r + 0.5) / Ht, so
        # y = 2 (r + 0.5) / Ht - 1 = 1 - 2v.
        uv = raster.uv
        grid = torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], dim=-1).reshape(1, -1, cameras.width, 2)
        coverage = raster.mask[:, None].float()
        return _Views(raster, grid, coverage, bake)

    def _image(self) -> _Views:
        """The views at image resolution (depth for ControlNet, the RGB bake), built on first use."""
        if self._image_views is None:
            self._image_views = self._render(self._image_cameras, self.rgb_texture_size, self.config.bake_cos_power)
        return self._image_views

    # ---- the Bridge protocol ----------------------------------------------------------------------------------

    def project(
        self, z: Float[Tensor, "C Ht Wt"], background: Float[Tensor, "N C h w"] | None = None
    ) -> Float[Tensor, "N C h w"]:
        """f: the texture looked up at every mesh pixel's UV, composited over `background` (zero when None)."""
        expect_shape("z", z, self.canonical_shape)
        return self._lookup(z, self._views.on(z.device), background)

    def _lookup(self, z: Tensor, views: _Views, background: Tensor | None) -> Tensor:
        num_views, _, h, w = views.coverage.shape
        mode = "bilinear" if self.config.texture_filter == "bilinear" else "nearest"
        looked_up = F.grid_sample(
            z[None], views.grid.to(z.dtype), mode=mode, padding_mode="border", align_corners=False
        )
        x = looked_up.reshape(z.shape[0], num_views, h, w).transpose(0, 1)
        coverage = views.coverage.to(z.dtype)
        x = coverage * x
        if background is None:
            return x
        expect_shape("background", background, (num_views, z.shape[0], h, w))
        return x + (1 - coverage) * background

    def unproject_sums(self, x: Float[Tensor, "N C h w"]) -> tuple[Float[Tensor, "C Ht Wt"], Float[Tensor, "1 Ht Wt"]]:
        """Per-view sums of g: `sum_i w_i m_i` and `sum_i w_i` (splat, per-view fill, cos^p weights)."""
        expect_shape("x", x, (self.num_views, *self.instance_shape))
        return self._views.on(x.device).bake.sums(x)

    def unproject(self, x: Float[Tensor, "N C h w"], previous: Tensor | None = None) -> Float[Tensor, "C Ht Wt"]:
        """g: the weighted average of the views per texel, refined by `back_projection_steps`; texels no view sees
        take the nearest seen texel's value (so `previous` is never needed)."""
        expect_shape("x", x, (self.num_views, *self.instance_shape))
        return self._aggregate(x, self._views.on(x.device))

    def _aggregate(self, x: Float[Tensor, "N C h w"], views: _Views) -> Float[Tensor, "C Ht Wt"]:
        """g over one set of views: their bake (weighted average, then the fill), refined by back-projection."""
        bake = views.bake
        return back_project(
            x,
            lambda y: bake.fill(*bake.sums(y)),
            lambda z: self._lookup(z, views, None),
            self.config.back_projection_steps,
        )

    def coverage(self) -> Float[Tensor, "N 1 h w"]:
        """1 on mesh pixels, 0 on background, on the bridge's device."""
        return self._views.on().coverage.clone()

    def initial_noise(self, generator: torch.Generator) -> tuple[Float[Tensor, "C Ht Wt"], Float[Tensor, "N C h w"]]:
        """`z_T ~ N(0, I)`; `x_T = f(z_T) + sqrt(1 - s) e` on mesh pixels, with `s` the sum of the lookup's squared
        weights, and `x_T = e` on the background (`e ~ N(0, I)` per view): unit variance everywhere."""
        device = generator.device
        z_T = torch.randn(self.canonical_shape, generator=generator, device=device)
        independent = torch.randn((self.num_views, *self.instance_shape), generator=generator, device=device)
        views = self._views.on(z_T.device)
        completion = (1 - self._squared_weights(views)).clamp_min(0).sqrt()
        return z_T, self._lookup(z_T, views, None) + completion * independent

    def _squared_weights(self, views: _Views) -> Float[Tensor, "N 1 h w"]:
        """Sum of the squared interpolation weights of each pixel's lookup (1 for nearest; 0 on background)."""
        if self.config.texture_filter == "nearest":
            return views.coverage
        _, height, width = self.canonical_shape
        grid = views.grid.reshape(self.num_views, *self.instance_shape[1:], 2)

        def per_axis(coordinate: Tensor, size: int) -> Tensor:
            position = (coordinate + 1) * size / 2 - 0.5  # grid_sample's unnormalised texel coordinate
            clamped = position.clamp(0, size - 1)  # padding_mode="border" clamps before interpolating
            fraction = clamped - clamped.floor()
            return (1 - fraction) ** 2 + fraction**2

        squared = per_axis(grid[..., 0], width) * per_axis(grid[..., 1], height)
        return views.coverage * squared[:, None]

    def conditions(self) -> ViewConditions:
        """View-dependent prompt suffixes and normalised inverse depth at the views' image resolution."""
        raster = self._image().raster
        depth = depth_control_image(raster.depth[:, None], raster.mask[:, None], per_view=True)
        suffixes = tuple(self.config.suffixes.label(elevation, azimuth) for elevation, azimuth in self.angles)
        return ViewConditions(prompt_suffixes=suffixes, depth=depth)

    def export(self, z: Float[Tensor, "C Ht Wt"], path: Path) -> Path:
        """Decode the views of z, bake the RGB texture with `bake_cos_power` and write the mesh (.obj + .mtl +
        .png, or .glb); returns `path`."""
        expect_shape("z", z, self.canonical_shape)
        rgb01 = self.codec.decode(self.project(z))
        self.write(self.bake_rgb(rgb01), path)
        return Path(path)

    # ---- RGB products -----------------------------------------------------------------------------------------

    def bake_rgb(self, rgb01: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "3 Hr Wr"]:
        """An RGB texture `rgb_texture_size` square from decoded views at image resolution: g with weights
        cos^bake_p, refined by `back_projection_steps` like the sampler's, then clamped to [0, 1]."""
        expect_shape("rgb01", rgb01, (self.num_views, 3, self.image_size, self.image_size))
        return self._aggregate(rgb01.float(), self._image().to(rgb01.device)).clamp(0, 1)

    def render_rgb(self, texture_rgb01: Float[Tensor, "3 Hr Wr"], background: float = 1.0) -> Float[Tensor, "N 3 H W"]:
        """The views at image resolution of an RGB texture over a grey level (previews of the exported mesh)."""
        views = self._image().to(texture_rgb01.device)
        x = self._lookup(texture_rgb01.float(), views, None)
        return x + (1 - views.coverage) * background

    def write(self, texture_rgb01: Float[Tensor, "3 Hr Wr"], path: str | Path) -> tuple[Path, ...]:
        """Save the mesh (its own coordinates) with this texture: .obj (+ .mtl + .png) or .glb, atomically."""
        return self.mesh.save(path, texture_rgb01)
