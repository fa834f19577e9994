"""The mesh-texture bridge (reference/synctweedies.md §4.4): a UV texture seen through rasterised views of a mesh.

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
     (clamped at 0, averaged over a texel's pixels) and `p` an explicit setting: `cos_power` (1) while sampling
     and `bake_cos_power` (6) for the final RGB bake. (The official code passes p = 0 while sampling, which its
     `bake_texture` silently turns into 1; pitfall 4.) Numerator `sum_i w_i m_i` and denominator `sum_i w_i`;
  4. divide, then fill the texels no view sees (outside the charts, or hidden from every camera) with the value of
     the nearest seen texel (`functional.fill`, jump flooding), so bilinear lookups at chart borders and the
     exported image have no holes. Which texels are seen is fixed, so the flood runs once, at construction.
- Initial noise: `z_T ~ N(0, I)` and `x_T = f(z_T)` completed to unit variance per pixel with independent noise
  (bilinear lookups average texels: a pixel's variance is the sum of its squared weights), and pure noise on the
  background.
- Conditions: view-dependent prompt suffixes (", front view." for |azimuth| <= 30 degrees, ", back view." for
  |azimuth| >= 120, ", side view." otherwise; ", top view." / ", bottom view." when |elevation| > 30, as the
  official code) and normalised inverse depth per view at the views' image resolution (`functional.depth`).
- Export: decode the views of z, bake an RGB texture from them with `bake_cos_power` and save the mesh, in its own
  coordinates, as OBJ + MTL + PNG (or GLB when the path ends in .glb).

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
from jaxtyping import Float, Int64
from torch import Tensor

from sync_splat.bridges.image_io import Decode, decode_pixels, divide_sums, expect_shape
from sync_splat.denoisers.base import Denoiser, ViewConditions
from sync_splat.errors import InputError
from sync_splat.functional.depth import depth_control_image
from sync_splat.functional.fill import nearest_valid_index
from sync_splat.render.mesh import Backend, MeshRaster, rasterize_mesh, rasterize_uv
from sync_splat.scene.cameras import Cameras
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
    cos_power: float = 1.0
    """Exponent p of the view weight cos^p while sampling (the official setting is 1 in effect, pitfall 4)."""
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

    def view_angles(self) -> list[tuple[float, float]]:
        """(elevation, azimuth) in degrees of every view: the ring first, then the upper views."""
        ring = [(self.elevation_deg, 360.0 * k / self.azimuths) for k in range(self.azimuths)]
        return ring + [(self.upper_elevation_deg, azimuth) for azimuth in self.upper_azimuths_deg]


def mesh_rig(config: MeshBridgeConfig, size: int) -> Cameras:
    """The bridge's cameras at `size x size` pixels around the unit sphere (world y up, azimuth 0 on +z)."""
    angles = config.view_angles()
    if not angles:
        raise InputError("MeshBridgeConfig: no views (azimuths is 0 and upper_azimuths_deg is empty)")
    half_fov = math.radians(config.fov_deg) / 2
    if config.camera_distance <= 1.0:
        raise InputError(
            f"MeshBridgeConfig.camera_distance must exceed 1 (the mesh's radius), got {config.camera_distance}"
        )
    # orbit_rig places a camera at radius / sin(fov / 2) from the centre.
    radius = config.camera_distance * math.sin(half_fov)
    c2w = []
    for elevation, azimuth in angles:
        base = Cameras.orbit_rig(
            (0.0, 0.0, 0.0), radius, num_azimuths=1, elevations_deg=(elevation,), top_views=0,
            fov_deg=config.fov_deg, size=(size, size),
        )  # fmt: skip
        c, s = math.cos(math.radians(azimuth)), math.sin(math.radians(azimuth))
        turn = torch.tensor([[c, 0.0, s, 0.0], [0.0, 1.0, 0.0, 0.0], [-s, 0.0, c, 0.0], [0.0, 0.0, 0.0, 1.0]])
        c2w.append(turn @ base.c2w[0])
        Ks = base.Ks[0]
    return Cameras(torch.stack(c2w), Ks.expand(len(c2w), 3, 3).clone(), size, size)


def view_suffix(elevation_deg: float, azimuth_deg: float) -> str:
    """The official view-dependent prompt suffix of a camera (SyncMVD style)."""
    if abs(elevation_deg) > 30:
        return ", top view." if elevation_deg > 0 else ", bottom view."
    azimuth = (azimuth_deg + 180.0) % 360.0 - 180.0
    if abs(azimuth) <= 30:
        return ", front view."
    if abs(azimuth) >= 120:
        return ", back view."
    return ", side view."


@dataclass(frozen=True)
class TexelGeometry:
    """The surface point behind every texel that lies inside a UV chart (rasterised UV layout, once per size).

    Attributes:
        size: (Ht, Wt).
        index: flat indices `row * Wt + col` of the chart texels, `[K]`.
        face: the face each covers, `[K]`.
        position: its 3D point on the (normalised) mesh, `[K, 3]`.
    """

    size: tuple[int, int]
    index: Int64[Tensor, " K"]
    face: Int64[Tensor, " K"]
    position: Float[Tensor, "K 3"]

    @classmethod
    def build(cls, mesh: MeshAsset, height: int, width: int) -> TexelGeometry:
        face_id, barycentrics = rasterize_uv(mesh.face_uvs.to(mesh.vertices.device), height, width)
        index = (face_id.reshape(-1) >= 0).nonzero()[:, 0]
        face = face_id.reshape(-1)[index]
        corners = mesh.vertices[mesh.faces[face]]  # [K, 3, 3]
        position = (barycentrics.reshape(-1, 3)[index, :, None] * corners).sum(1)
        return cls((height, width), index, face, position)


@dataclass(frozen=True)
class TextureBake:
    """A fixed linear map from N views `[N, C, h, w]` to a texture `[C, Ht, Wt]`: g for one set of views.

    Pairs (texel, pixel, coefficient) are stored view after view (`view_offsets`), so the numerator is one
    `index_add` over all views, or a sum over any split of the views. `weight_texel`/`weight` hold each view's
    weight per texel (the denominator's terms), split by `weight_offsets`.

    Attributes:
        size: (Ht, Wt).
        texel: flat texel index of each pair, `[P]`.
        pixel: flat index into the views' `N * h * w` pixels of each pair, `[P]`.
        coefficient: `w_i(texel) / (pixels the texel received in view i)`, `[P]`.
        weight_texel: texel of each denominator term, `[Q]`.
        weight: the view weight `w_i(texel)`, `[Q]`.
        view_offsets: where each view's pairs start, `[N + 1]`.
        weight_offsets: where each view's denominator terms start, `[N + 1]`.
        nearest: for every texel, the nearest texel some view sees (itself when seen; -1 when none is), `[Ht * Wt]`.
    """

    size: tuple[int, int]
    texel: Int64[Tensor, " P"]
    pixel: Int64[Tensor, " P"]
    coefficient: Float[Tensor, " P"]
    weight_texel: Int64[Tensor, " Q"]
    weight: Float[Tensor, " Q"]
    view_offsets: tuple[int, ...]
    weight_offsets: tuple[int, ...]
    nearest: Int64[Tensor, " T"]

    def to(self, device: torch.device) -> TextureBake:
        return TextureBake(
            self.size, self.texel.to(device), self.pixel.to(device), self.coefficient.to(device),
            self.weight_texel.to(device), self.weight.to(device), self.view_offsets, self.weight_offsets,
            self.nearest.to(device),
        )  # fmt: skip

    def sums(self, x: Float[Tensor, "N C h w"]) -> tuple[Float[Tensor, "C Ht Wt"], Float[Tensor, "1 Ht Wt"]]:
        """Numerator `sum_i w_i m_i` and denominator `sum_i w_i` over all views (steps 1 to 3 of g)."""
        channels = x.shape[1]
        height, width = self.size
        flat = x.transpose(0, 1).reshape(channels, -1)
        num = x.new_zeros(channels, height * width).index_add_(
            1, self.texel, flat[:, self.pixel] * self.coefficient.to(x.dtype)
        )
        den = x.new_zeros(height * width).index_add_(0, self.weight_texel, self.weight.to(x.dtype))
        return num.reshape(channels, height, width), den.reshape(1, height, width)

    def fill(self, num: Float[Tensor, "C Ht Wt"], den: Float[Tensor, "1 Ht Wt"]) -> Float[Tensor, "C Ht Wt"]:
        """Divide, then give texels no view sees the value of the nearest seen texel (step 4 of g)."""
        if int(self.nearest[0]) < 0:  # no texel is seen at all (the flood leaves -1 only then)
            return divide_sums(num, den)
        # Unseen texels (den = 0, num = 0) are replaced by the gather, so their quotient is never used.
        mean = num / den.clamp_min(torch.finfo(num.dtype).tiny)
        return mean.reshape(num.shape[0], -1)[:, self.nearest].reshape(num.shape)

    @classmethod
    def build(
        cls,
        raster: MeshRaster,
        cameras: Cameras,
        texels: TexelGeometry,
        cos_power: float,
        per_view_fill: bool,
        visibility_tolerance: float,
    ) -> TextureBake:
        """Precompute the pairs and weights of g for views rasterised as `raster` by `cameras`."""
        num_views, h, w = raster.face_id.shape
        height, width = texels.size
        device = raster.face_id.device
        centres = cameras.c2w[:, :3, 3].to(device)
        viewmats = cameras.viewmats.to(device)
        Ks = cameras.Ks.to(device)
        to_camera = F.normalize(centres[:, None, None] - raster.position, dim=-1)
        cosine = (to_camera * raster.normal).sum(-1).clamp(0, 1)
        texel_parts, pixel_parts, coefficient_parts, weight_texel_parts, weight_parts = [], [], [], [], []
        view_offsets, weight_offsets = [0], [0]

        for view in range(num_views):
            face_id = raster.face_id[view].reshape(-1)
            pixels = (face_id >= 0).nonzero()[:, 0]
            uv = raster.uv[view].reshape(-1, 2)[pixels]
            cols = (uv[:, 0] * width).floor().long().clamp(0, width - 1)
            rows = ((1 - uv[:, 1]) * height).floor().long().clamp(0, height - 1)
            weight = cosine[view].reshape(-1)[pixels] ** cos_power
            seeds, inverse, counts = torch.unique(rows * width + cols, return_inverse=True, return_counts=True)
            seed_weight = torch.zeros(seeds.shape, device=device).index_add_(0, inverse, weight) / counts
            texel_list, pixel_list = [seeds[inverse]], [pixels + view * h * w]
            coefficient_list = [seed_weight[inverse] / counts[inverse]]
            weight_texel_list, weight_list = [seeds], [seed_weight]

            if per_view_fill and texels.index.numel():
                # Every chart texel the splat missed, including texels of faces smaller than a pixel (which own
                # no pixel of their own but are seen through their neighbours' pixels).
                is_seed = torch.zeros(height * width, dtype=torch.bool, device=device)
                is_seed[seeds] = True
                candidate = (~is_seed[texels.index]).nonzero()[:, 0]
                point = texels.position[candidate] @ viewmats[view, :3, :3].T + viewmats[view, :3, 3]
                z = point[:, 2]
                safe_z = z.clamp_min(1e-6)
                col = (Ks[view, 0, 0] * point[:, 0] / safe_z + Ks[view, 0, 2]).floor()
                row = (Ks[view, 1, 1] * point[:, 1] / safe_z + Ks[view, 1, 2]).floor()
                inside = (z > 1e-6) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
                source = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1)).long()
                source_face = face_id[source]
                # The pixel sees the texel's surface when it shows the same face, or a surface point within
                # `visibility_tolerance` pixel footprints (z / focal) of the texel's point: a neighbouring face of
                # the same surface, not a layer in front of it.
                distance = (raster.position[view].reshape(-1, 3)[source] - texels.position[candidate]).norm(dim=-1)
                footprint = z / Ks[view, 0, 0]
                same_surface = (source_face == texels.face[candidate]) | (distance <= visibility_tolerance * footprint)
                keep = inside & (source_face >= 0) & same_surface
                gap_texel = texels.index[candidate[keep]]
                gap_weight = cosine[view].reshape(-1)[source[keep]] ** cos_power
                texel_list.append(gap_texel)
                pixel_list.append(source[keep] + view * h * w)
                coefficient_list.append(gap_weight)
                weight_texel_list.append(gap_texel)
                weight_list.append(gap_weight)

            coefficient = torch.cat(coefficient_list)
            useful = coefficient > 0  # grazing pixels carry no weight: drop them
            texel_parts.append(torch.cat(texel_list)[useful])
            pixel_parts.append(torch.cat(pixel_list)[useful])
            coefficient_parts.append(coefficient[useful])
            weights = torch.cat(weight_list)
            useful_weight = weights > 0
            weight_texel_parts.append(torch.cat(weight_texel_list)[useful_weight])
            weight_parts.append(weights[useful_weight])
            view_offsets.append(view_offsets[-1] + int(useful.sum()))
            weight_offsets.append(weight_offsets[-1] + int(useful_weight.sum()))

        weight_texel = torch.cat(weight_texel_parts)
        seen = torch.zeros(height * width, dtype=torch.bool, device=device)
        seen[weight_texel] = True
        nearest = nearest_valid_index(seen.reshape(height, width)).reshape(-1)
        return cls(
            (height, width), torch.cat(texel_parts), torch.cat(pixel_parts), torch.cat(coefficient_parts).float(),
            weight_texel, torch.cat(weight_parts).float(), tuple(view_offsets), tuple(weight_offsets), nearest,
        )  # fmt: skip


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
    """A mesh's UV texture seen from N cameras (reference/synctweedies.md §4.4; module docstring for f and g).

    Args:
        mesh: the mesh with its UV layout, in its own coordinates (exported as is; rendered normalised).
        config: views, sizes and weights.
        channels: C, the denoiser's channels (4 for SD latents, 3 for pixel priors).
        downsample: the denoiser's image-to-latent factor (8 for SD, 1 for pixel priors).
        native_size: the denoiser's image size, used when `config.view_size` is None.
        decode: the denoiser space to `rgb01` `[N, 3, H, W]`; used by `export`.
    """

    linear = True

    def __init__(
        self,
        mesh: MeshAsset,
        config: MeshBridgeConfig | None = None,
        *,
        channels: int = 3,
        downsample: int = 1,
        native_size: int = 64,
        decode: Decode = decode_pixels,
    ) -> None:
        config = MeshBridgeConfig() if config is None else config
        image_size = config.view_size or native_size
        if image_size % downsample:
            raise InputError(
                f"MeshBridgeConfig.view_size {image_size} must be a multiple of the denoiser's downsampling "
                f"factor {downsample}"
            )
        texture_size = config.texture_size or 2 * image_size
        rgb_texture_size = config.rgb_texture_size or 2 ** int(math.log2(2 * image_size))
        if min(channels, image_size, texture_size, rgb_texture_size) < 1:
            raise InputError(f"MeshBridgeConfig: sizes must be positive, got view {image_size}, texture "
                             f"{texture_size}, RGB texture {rgb_texture_size}")  # fmt: skip
        self.config = config
        self.decode = decode
        self.mesh = mesh
        self.image_size = image_size
        self.rgb_texture_size = rgb_texture_size
        self.device = _resolve_device(config.device)
        self.render_mesh = mesh.normalized().to(self.device)
        size = image_size // downsample
        self.angles = config.view_angles()
        self.cameras = mesh_rig(config, size)
        self.num_views = len(self.cameras)
        self.canonical_shape = (channels, texture_size, texture_size)
        self.instance_shape = (channels, size, size)
        self._views = {self.device: self._render(self.cameras, texture_size, config.cos_power)}
        self._image_views: _Views | None = None
        self._image_cameras = self.cameras.resized(image_size, image_size)

    @classmethod
    def from_denoiser(
        cls, mesh: MeshAsset, denoiser: Denoiser, config: MeshBridgeConfig | None = None
    ) -> MeshTextureBridge:
        """The bridge in `denoiser`'s space: its channels, downsampling, native size and decoder."""
        return cls(
            mesh, config, channels=denoiser.latent_channels, downsample=denoiser.downsample,
            native_size=denoiser.native_size, decode=denoiser.decode,
        )  # fmt: skip

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

    def _on(self, device: torch.device) -> _Views:
        if device not in self._views:
            self._views[device] = self._views[self.device].to(device)
        return self._views[device]

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
        return self._lookup(z, self._on(z.device), background)

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
        return self._on(x.device).bake.sums(x)

    def unproject(self, x: Float[Tensor, "N C h w"], previous: Tensor | None = None) -> Float[Tensor, "C Ht Wt"]:
        """g: the weighted average of the views per texel; texels no view sees take the nearest seen texel's value
        (so `previous` is never needed)."""
        num, den = self.unproject_sums(x)
        return self._on(x.device).bake.fill(num, den)

    def coverage(self) -> Float[Tensor, "N 1 h w"]:
        """1 on mesh pixels, 0 on background."""
        return self._views[self.device].coverage.cpu().clone()

    def initial_noise(self, generator: torch.Generator) -> tuple[Float[Tensor, "C Ht Wt"], Float[Tensor, "N C h w"]]:
        """`z_T ~ N(0, I)`; `x_T = f(z_T) + sqrt(1 - s) e` on mesh pixels, with `s` the sum of the lookup's squared
        weights, and `x_T = e` on the background (`e ~ N(0, I)` per view): unit variance everywhere."""
        device = generator.device
        z_T = torch.randn(self.canonical_shape, generator=generator, device=device)
        independent = torch.randn((self.num_views, *self.instance_shape), generator=generator, device=device)
        views = self._on(z_T.device)
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
        suffixes = tuple(view_suffix(elevation, azimuth) for elevation, azimuth in self.angles)
        return ViewConditions(prompt_suffixes=suffixes, depth=depth.cpu())

    def export(self, z: Float[Tensor, "C Ht Wt"], path: Path) -> Path:
        """Decode the views of z, bake the RGB texture with `bake_cos_power` and write the mesh (.obj + .mtl +
        .png, or .glb); returns `path`."""
        expect_shape("z", z, self.canonical_shape)
        rgb01 = self.decode(self.project(z))
        self.write(self.bake_rgb(rgb01), path)
        return Path(path)

    # ---- RGB products -----------------------------------------------------------------------------------------

    def bake_rgb(self, rgb01: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "3 Hr Wr"]:
        """An RGB texture `rgb_texture_size` square from decoded views at image resolution, weights cos^bake_p."""
        views = self._image()
        expect_shape("rgb01", rgb01, (self.num_views, 3, self.image_size, self.image_size))
        bake = views.bake.to(rgb01.device)
        return bake.fill(*bake.sums(rgb01.float())).clamp(0, 1)

    def render_rgb(self, texture_rgb01: Float[Tensor, "3 Hr Wr"], background: float = 1.0) -> Float[Tensor, "N 3 H W"]:
        """The views at image resolution of an RGB texture over a grey level (previews of the exported mesh)."""
        views = self._image().to(texture_rgb01.device)
        x = self._lookup(texture_rgb01.float(), views, None)
        return x + (1 - views.coverage) * background

    def write(self, texture_rgb01: Float[Tensor, "3 Hr Wr"], path: str | Path) -> tuple[Path, ...]:
        """Save the mesh (its own coordinates) with this texture: .obj (+ .mtl + .png) or .glb, atomically."""
        return self.mesh.save(path, texture_rgb01)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
