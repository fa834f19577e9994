"""Equirectangular panorama geometry in pure torch: directions and longitude/latitude, the panorama's pixel grid,
perspective views of the sphere, and sampling in both directions (panorama at view rays, view at texel directions).

Panorama conventions (docs/conventions.md, "Equirectangular panoramas"): world frame y up, longitude 0 along +z,
`lon = atan2(d_x, d_z)` in [-pi, pi), `lat = asin(d_y)`. An `Ht x Wt` panorama (`Wt = 2 Ht`) has column j centred
at `lon = -pi + 2 pi (j + 0.5) / Wt` (longitude grows to the right) and row i at `lat = pi/2 - pi (i + 0.5) / Ht`
(row 0 is north). The seam is at `lon = +-pi`, between the last and the first column.

Texel coordinates: `lonlat_to_texel` gives continuous (column, row) *index* coordinates, texel (i, j) centred at
(j, i); so `col = (lon + pi) Wt / (2 pi) - 0.5` and `row = (pi/2 - lat) Ht / pi - 0.5`.

Sampling a panorama (`sample_equirect`) wraps in longitude, so there is no seam at +-180 degrees, and continues
across the poles: the row above row 0 is row 0 on the opposite meridian (longitude + pi), and likewise below the last
row. A bilinear sample near a pole therefore blends texels on both sides of it, as on the sphere, instead of
clamping (which would make the pole a line of different values). Nearest sampling picks the texel containing the
direction.

Perspective views. A view is a pinhole camera at the sphere's centre with **OpenCV axes** inside (x right, y down,
z forward), the principal point at the image centre, pixel (row i, column j) centred at `(j + 0.5, i + 0.5)`
(docs/conventions.md, "Cameras"), square pixels and a horizontal field of view `fov_deg` (focal
`0.5 W / tan(fov / 2)`). A view is oriented by its yaw (the longitude of its optical axis) and pitch (its latitude,
up positive). `view_axes` gives the world directions of its x, y, z axes:

    right   = (cos yaw, 0, -sin yaw)                                   the direction of increasing longitude
    down    = -(-sin pitch sin yaw, cos pitch, -sin pitch cos yaw)      minus the direction of increasing latitude
    forward = (cos pitch sin yaw, sin pitch, cos pitch cos yaw)

so a view shows the panorama unmirrored: to the right is larger longitude (larger column), upwards larger latitude
(smaller row), as in every 360-degree viewer, which turns right as the column index grows. With
`lon = atan2(d_x, d_z)` that makes +x the viewer's right when facing +z with +y up: the panorama's world frame is
(x right, y up, z forward), so `view_axes` has determinant -1 (OpenCV's y points down, the world's y up). Only
directions are involved, so this is a fixed relabelling, not a reflection of any scene geometry.

Dimension letters (docs/conventions.md): N views, C channels, h w view pixels, Ht Wt panorama pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int64
from torch import Tensor

Sampling = Literal["bilinear", "nearest"]

CUBE_FACES: tuple[tuple[str, float, float], ...] = (
    ("front", 0.0, 0.0),
    ("right", 90.0, 0.0),
    ("back", 180.0, 0.0),
    ("left", -90.0, 0.0),
    ("up", 0.0, 90.0),
    ("down", 0.0, -90.0),
)
"""The six cube-map faces as (name, yaw_deg, pitch_deg): 90-degree views whose edges meet. The up face's bottom edge
and the down face's top edge adjoin the front face (the usual skybox layout)."""


def direction_to_lonlat(directions: Float[Tensor, "... 3"]) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """Longitude in [-pi, pi) and latitude in [-pi/2, pi/2] of (not necessarily unit) directions.

    Args:
        directions: world directions, `(x, y, z)` last.

    Returns:
        `(lon, lat)` in radians; `lon = atan2(d_x, d_z)` with +pi mapped to -pi.
    """
    x, y, z = directions.unbind(-1)
    lon = torch.atan2(x, z)
    lon = torch.where(lon >= math.pi, lon - 2 * math.pi, lon)
    lat = torch.asin((y / directions.norm(dim=-1).clamp_min(1e-12)).clamp(-1.0, 1.0))
    return lon, lat


def lonlat_to_direction(lon: Float[Tensor, "..."], lat: Float[Tensor, "..."]) -> Float[Tensor, "... 3"]:
    """Unit directions `(cos lat sin lon, sin lat, cos lat cos lon)`."""
    return torch.stack((torch.cos(lat) * torch.sin(lon), torch.sin(lat), torch.cos(lat) * torch.cos(lon)), dim=-1)


def equirect_lonlat(
    height: int, width: int | None = None, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Float[Tensor, "Ht Wt"], Float[Tensor, "Ht Wt"]]:
    """Longitude and latitude of every texel centre of an `height x width` panorama (width `2 height` by default)."""
    width = 2 * height if width is None else width
    cols = torch.arange(width, device=device, dtype=torch.float64)
    rows = torch.arange(height, device=device, dtype=torch.float64)
    lon = -math.pi + 2 * math.pi * (cols + 0.5) / width
    lat = math.pi / 2 - math.pi * (rows + 0.5) / height
    lon, lat = torch.meshgrid(lon, lat, indexing="xy")
    return lon.to(dtype), lat.to(dtype)


def equirect_directions(
    height: int, width: int | None = None, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Float[Tensor, "Ht Wt 3"]:
    """Unit direction of every texel centre of an `height x width` panorama (width `2 height` by default)."""
    lon, lat = equirect_lonlat(height, width, device, torch.float64)
    return lonlat_to_direction(lon, lat).to(dtype)


def lonlat_to_texel(
    lon: Float[Tensor, "..."], lat: Float[Tensor, "..."], height: int, width: int
) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """Continuous (column, row) index coordinates in an `height x width` panorama; texel (i, j) is centred at (j, i).

    Returns:
        `col` in [-0.5, width - 0.5) for lon in [-pi, pi), `row` in [-0.5, height - 0.5].
    """
    col = (lon + math.pi) * (width / (2 * math.pi)) - 0.5
    row = (math.pi / 2 - lat) * (height / math.pi) - 0.5
    return col, row


def equirect_taps(
    directions: Float[Tensor, "... 3"], height: int, width: int, mode: Sampling = "bilinear"
) -> tuple[Int64[Tensor, "K ..."], Float[Tensor, "K ..."]]:
    """The texels an `height x width` panorama blends for each direction, and their weights (`sample_equirect`).

    Sampling is linear in the panorama, so a fixed set of directions can compute these once and reuse them.

    Args:
        directions: world directions (need not be unit length), any leading shape.
        height: Ht, panorama rows.
        width: Wt, panorama columns; must be even (the pole continuation shifts by width / 2).
        mode: "bilinear" between the four nearest texel centres (K = 4), or "nearest": the texel containing the
            direction (K = 1).

    Returns:
        Flat texel indices `row * width + col` and weights in float64 (summing to 1 over K).
    """
    if width % 2:
        raise ValueError(f"an equirectangular panorama needs an even width, got {width}")
    lon, lat = direction_to_lonlat(directions.double())
    col, row = lonlat_to_texel(lon, lat, height, width)
    if mode == "nearest":
        j = torch.floor(col + 0.5).long() % width
        i = torch.floor(row + 0.5).long().clamp(0, height - 1)
        return (i * width + j)[None], torch.ones_like(col)[None]
    if mode != "bilinear":
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")

    j0, i0 = torch.floor(col), torch.floor(row)
    fx, fy = col - j0, row - i0
    j0, i0 = j0.long(), i0.long()

    def texel(i: Tensor, j: Tensor) -> Tensor:
        # Beyond a pole the sphere continues on the opposite meridian: row -1 is row 0 at longitude + pi, row Ht is
        # row Ht - 1 at longitude + pi (row in [-0.5, Ht - 0.5] needs one row of continuation at most).
        north, south = i < 0, i >= height
        i = torch.where(north, -1 - i, torch.where(south, 2 * height - 1 - i, i))
        j = torch.where(north | south, j + width // 2, j) % width
        return i * width + j

    index = torch.stack((texel(i0, j0), texel(i0, j0 + 1), texel(i0 + 1, j0), texel(i0 + 1, j0 + 1)))
    weight = torch.stack(((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy))
    return index, weight


def gather_taps(
    panorama: Float[Tensor, "C Ht Wt"], index: Int64[Tensor, "K ..."], weight: Float[Tensor, "K ..."]
) -> Float[Tensor, "C ..."]:
    """Blend the panorama's texels with precomputed `equirect_taps`, in the panorama's dtype."""
    channels = panorama.shape[0]
    # index_select on a flat index is an order of magnitude faster than advanced indexing with a shaped one.
    values = panorama.reshape(channels, -1).index_select(1, index.reshape(-1)).reshape(channels, *index.shape)
    return (values * weight.to(panorama.dtype)).sum(dim=1)


def sample_equirect(
    panorama: Float[Tensor, "C Ht Wt"], directions: Float[Tensor, "... 3"], mode: Sampling = "bilinear"
) -> Float[Tensor, "C ..."]:
    """The panorama's values in the given directions, wrapping in longitude and continuing across the poles.

    Args:
        panorama: an equirectangular image; its width must be even.
        directions: world directions (need not be unit length), any leading shape.
        mode: "bilinear" between the four nearest texel centres, or "nearest": the texel containing the direction.

    Returns:
        The sampled values, channels first, in the panorama's dtype: `[C, *directions.shape[:-1]]`.
    """
    _, height, width = panorama.shape
    index, weight = equirect_taps(directions.to(panorama.device), height, width, mode)
    return gather_taps(panorama, index, weight)


def view_axes(yaw: Float[Tensor, "N"], pitch: Float[Tensor, "N"]) -> Float[Tensor, "N 3 3"]:
    """World directions of the OpenCV camera axes of views looking at longitude `yaw` and latitude `pitch` (radians).

    Column 0 is the camera's x (right: increasing longitude), column 1 its y (down: decreasing latitude), column 2
    its z (forward). The columns are orthonormal, so `axes.mT` maps world directions into the camera frame; the
    determinant is -1 (see the module docstring).
    """
    cy, sy, cp, sp = torch.cos(yaw), torch.sin(yaw), torch.cos(pitch), torch.sin(pitch)
    zero = torch.zeros_like(yaw)
    right = torch.stack((cy, zero, -sy), dim=-1)
    down = torch.stack((sp * sy, -cp, sp * cy), dim=-1)
    forward = torch.stack((cp * sy, sp, cp * cy), dim=-1)
    return torch.stack((right, down, forward), dim=-1)


def focal_length(fov_deg: float, width: int) -> float:
    """The pinhole focal length in pixels for a horizontal field of view `fov_deg` over `width` pixels."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    return 0.5 * width / math.tan(math.radians(fov_deg) / 2)


def perspective_rays(axes: Float[Tensor, "N 3 3"], fov_deg: float, height: int, width: int) -> Float[Tensor, "N h w 3"]:
    """Unit world directions through the pixel centres of N pinhole views (OpenCV axes, centred principal point).

    Args:
        axes: the views' camera axes in world coordinates (`view_axes`).
        fov_deg: horizontal field of view; pixels are square.
        height: h, view rows.
        width: w, view columns.

    Returns:
        Rays in `axes`' dtype and device.
    """
    focal = focal_length(fov_deg, width)
    cols = (torch.arange(width, dtype=torch.float64, device=axes.device) + 0.5 - width / 2) / focal
    rows = (torch.arange(height, dtype=torch.float64, device=axes.device) + 0.5 - height / 2) / focal
    x, y = torch.meshgrid(cols, rows, indexing="xy")
    camera = torch.stack((x, y, torch.ones_like(x)), dim=-1)
    camera = camera / camera.norm(dim=-1, keepdim=True)
    return torch.einsum("nik,hwk->nhwi", axes.double(), camera).to(axes.dtype)


@dataclass(frozen=True)
class ViewProjection:
    """Where directions land in one pinhole view.

    Attributes:
        pixels: `(x, y)` in pixel units, the image's top-left corner at (0, 0), pixel (i, j) centred at
            (j + 0.5, i + 0.5); finite everywhere (directions behind the camera get arbitrary values).
        visible: in front of the camera and inside the image frame `[0, w] x [0, h]`.
        cos_axis: the cosine of the angle between each direction and the optical axis (negative behind).
    """

    pixels: Float[Tensor, "... 2"]
    visible: Bool[Tensor, "..."]
    cos_axis: Float[Tensor, "..."]


def project_to_view(
    directions: Float[Tensor, "... 3"], axes: Float[Tensor, "3 3"], fov_deg: float, height: int, width: int
) -> ViewProjection:
    """Project world directions into one pinhole view (the inverse of `perspective_rays`).

    Args:
        directions: world directions (need not be unit length), e.g. a panorama's `equirect_directions`.
        axes: the view's camera axes in world coordinates (`view_axes`), `[3, 3]`.
        fov_deg: horizontal field of view.
        height: h, view rows.
        width: w, view columns.
    """
    focal = focal_length(fov_deg, width)
    unit = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    camera = (unit.reshape(-1, 3) @ axes.to(unit)).reshape(unit.shape)  # a 2D matmul: batched 3x3 ones are slow
    x, y, z = camera.unbind(-1)
    front = z > 1e-6
    safe_z = torch.where(front, z, torch.ones_like(z))
    px = (focal * x / safe_z + width / 2).clamp(-width, 2 * width)
    py = (focal * y / safe_z + height / 2).clamp(-height, 2 * height)
    visible = front & (px >= 0) & (px <= width) & (py >= 0) & (py <= height)
    return ViewProjection(pixels=torch.stack((px, py), dim=-1), visible=visible, cos_axis=z)


def sample_views(
    images: Float[Tensor, "N C h w"], pixels: Float[Tensor, "N Ht Wt 2"], mode: Sampling = "bilinear"
) -> Float[Tensor, "N C Ht Wt"]:
    """Sample each view at its own pixel coordinates (`ViewProjection.pixels`), clamping at the image border.

    Args:
        images: N views.
        pixels: per view, `(x, y)` in pixel units with the image's top-left corner at (0, 0).
        mode: "bilinear" between pixel centres, or "nearest".
    """
    height, width = images.shape[-2:]
    grid = torch.stack((2 * pixels[..., 0] / width - 1, 2 * pixels[..., 1] / height - 1), dim=-1)
    return F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode="border", align_corners=False)


def image_taps(
    pixels: Float[Tensor, "... 2"], height: int, width: int, mode: Sampling = "bilinear"
) -> tuple[Int64[Tensor, "K ..."], Float[Tensor, "K ..."]]:
    """The pixels of an `height x width` image that `sample_views` blends at each point, and their weights.

    The same lookup as `grid_sample(..., align_corners=False, padding_mode="border")`, as indices and weights, so a
    fixed set of points can reuse it (e.g. as a sparse operator).

    Args:
        pixels: `(x, y)` in pixel units, the image's top-left corner at (0, 0) (`ViewProjection.pixels`).
        height: h, image rows.
        width: w, image columns.
        mode: "bilinear" (K = 4) or "nearest" (K = 1).

    Returns:
        Flat pixel indices `row * width + col` and float64 weights (summing to 1 over K).
    """
    u = (pixels[..., 0].double() - 0.5).clamp(0, width - 1)
    v = (pixels[..., 1].double() - 0.5).clamp(0, height - 1)
    if mode == "nearest":
        # grid_sample's nearest rounds half to even; points exactly between two pixel centres are rare.
        return (torch.round(v).long() * width + torch.round(u).long())[None], torch.ones_like(u)[None]
    if mode != "bilinear":
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    j0, i0 = torch.floor(u), torch.floor(v)
    fx, fy = u - j0, v - i0
    j0, i0 = j0.long(), i0.long()
    j1, i1 = (j0 + 1).clamp(max=width - 1), (i0 + 1).clamp(max=height - 1)
    index = torch.stack((i0 * width + j0, i0 * width + j1, i1 * width + j0, i1 * width + j1))
    weight = torch.stack(((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy))
    return index, weight


def equirect_to_cube_faces(
    panorama: Float[Tensor, "C Ht Wt"], size: int, mode: Sampling = "bilinear"
) -> Float[Tensor, "6 C s s"]:
    """The six 90-degree cube-map faces of a panorama, in `CUBE_FACES` order.

    Args:
        panorama: an equirectangular image (even width).
        size: s, each face's side in pixels (`Wt / 4` keeps the panorama's resolution at the face centres).
        mode: how the panorama is sampled.
    """
    yaw = torch.tensor([math.radians(face[1]) for face in CUBE_FACES], dtype=torch.float64)
    pitch = torch.tensor([math.radians(face[2]) for face in CUBE_FACES], dtype=torch.float64)
    rays = perspective_rays(view_axes(yaw, pitch).to(panorama.device), 90.0, size, size)
    return sample_equirect(panorama, rays, mode).transpose(0, 1)
