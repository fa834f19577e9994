"""The fixed geometry of the mesh-texture bridge: its camera rig, the surface point behind every texel, and the
linear map g from views to texture (`TextureBake`), built once per set of views because the mesh never moves.

Conventions (docs/conventions.md): UV origin bottom-left, texture row 0 on top; flat texel index `row * Wt + col`;
flat view-pixel index `view * h * w + row * w + col`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int64
from torch import Tensor

from sync_splat.bridges.plumbing import divide_sums
from sync_splat.functional.fill import nearest_valid_index, take_nearest
from sync_splat.render.mesh import MeshRaster, rasterize_uv
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.mesh import MeshAsset


def mesh_rig(angles: list[tuple[float, float]], fov_deg: float, camera_distance: float, size: int) -> Cameras:
    """Cameras at `size x size` pixels looking at the centre of the unit sphere from `camera_distance`, one per
    (elevation, azimuth) in degrees (world y up, azimuth 0 on +z, azimuth 90 on +x)."""
    # orbit_rig places a camera at radius / sin(fov / 2) from the centre.
    radius = camera_distance * math.sin(math.radians(fov_deg) / 2)
    c2w = []
    for elevation, azimuth in angles:
        base = Cameras.orbit_rig(
            (0.0, 0.0, 0.0), radius, num_azimuths=1, elevations_deg=(elevation,), top_views=0, fov_deg=fov_deg,
            size=(size, size),
        )  # fmt: skip
        c, s = math.cos(math.radians(azimuth)), math.sin(math.radians(azimuth))
        turn = torch.tensor([[c, 0.0, s, 0.0], [0.0, 1.0, 0.0, 0.0], [-s, 0.0, c, 0.0], [0.0, 0.0, 0.0, 1.0]])
        c2w.append(turn @ base.c2w[0])
        Ks = base.Ks[0]
    return Cameras(torch.stack(c2w), Ks.expand(len(c2w), 3, 3).clone(), size, size)


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
        return take_nearest(divide_sums(num, den), self.nearest)

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
                x, y, z, inside = cameras.project(texels.position[candidate], view, near=1e-6)
                col, row = x.floor(), y.floor()
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
