"""UV layouts: whether a mesh's own UVs can hold one texture, and a fresh atlas from xatlas when they cannot.

UVs follow docs/conventions.md (origin at the bottom-left of the texture, per face corner `[F, 3, 2]`). A layout is
unusable (`uv_problem`) when some part has no UVs, when they are not finite, when they leave [0, 1] (tiling UVs would
need a repeating texture), when every UV triangle has zero area, or when charts overlap (mirrored or stacked islands,
or several parts each with its own texture): one texel would then have to hold two surfaces' colours. Overlap is
measured by rasterising the layout at 256 x 256 texels: the UV triangles' summed area may exceed the covered area by
at most `MAX_UV_OVERLAP` (10%).

xatlas (`xatlas_uvs`) sees the mesh at unit size, in single precision, where very small or very large meshes would
underflow or hang. It is not given slivers, triangles thinner than 1e-6 of the mesh's size: their shape is rounding
noise there, and xatlas answers them with NaN UVs (and can loop packing them, out of reach of any timeout). They cover
no pixel; each of their corners takes a UV its vertex has in the atlas.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int64
from torch import Tensor

from sync_splat.errors import InputError
from sync_splat.render.mesh import face_area_vectors, rasterize_uv

MAX_UV_OVERLAP = 0.10
"""UV triangles may cover at most this fraction more area than their union (seams, slivers) before they count as
overlapping."""
_UV_TOLERANCE = 1e-3
_OVERLAP_RESOLUTION = 256
_SLIVER_HEIGHT = 1e-6
"""Smallest triangle height (twice its area over its longest edge) xatlas is given, at unit size: single-precision
coordinates there are spaced up to 1.2e-7 apart, so a thinner triangle's shape is rounding noise."""


def uv_problem(face_uvs: Float[Tensor, "F 3 2"] | None) -> str | None:
    """Why a UV layout cannot hold one texture, or None when it can (the module docstring's rules)."""
    if face_uvs is None:
        return "no UVs"
    if face_uvs.isnan().any(dim=(1, 2)).all():
        return "no UVs"
    if not torch.isfinite(face_uvs).all():
        return "some parts have no UVs, or some UVs are NaN or infinite"
    if face_uvs.min() < -_UV_TOLERANCE or face_uvs.max() > 1 + _UV_TOLERANCE:
        return f"UVs span [{face_uvs.min():.3g}, {face_uvs.max():.3g}], outside [0, 1] (tiling or unnormalised UVs)"
    face_uvs = face_uvs.clamp(0.0, 1.0)
    area = uv_areas(face_uvs)
    total = float(area.sum())
    if total <= 1e-12:
        return "every UV triangle has zero area"
    face_id, _ = rasterize_uv(face_uvs, _OVERLAP_RESOLUTION, _OVERLAP_RESOLUTION)
    covered = float((face_id >= 0).float().mean())
    if total > (1 + MAX_UV_OVERLAP) * covered + 4.0 / _OVERLAP_RESOLUTION:
        return f"UV charts overlap: the triangles cover {total / max(covered, 1e-12):.2f}x the area of their union"
    return None


def uv_areas(face_uvs: Float[Tensor, "F 3 2"]) -> Float[Tensor, " F"]:
    """Unsigned area of each UV triangle (the whole texture has area 1)."""
    a, b, c = face_uvs.unbind(1)
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])).abs()


def xatlas_uvs(unit: Float[Tensor, "V 3"], corners: Int64[Tensor, "F 3"], where: str) -> Float[Tensor, "F 3 2"]:
    """A fresh UV atlas from xatlas, per face corner in the faces' order.

    Args:
        unit: the vertices at unit size (centred, the farthest at distance 1), in single precision: what xatlas sees.
        corners: the triangles' vertex indices.
        where: the file, for errors.
    """
    import xatlas

    sound = _triangle_heights(unit.double(), corners) >= _SLIVER_HEIGHT
    if not bool(sound.any()):
        raise InputError(
            f"{where}: every triangle is a sliver thinner than {_SLIVER_HEIGHT:.0e} of the mesh's size (are some "
            "vertices far from the rest?): xatlas cannot unwrap it; repair the mesh or give it UVs"
        )
    try:
        _, indices, uvs = xatlas.parametrize(unit.numpy(), corners[sound].numpy().astype(np.uint32))
    except Exception as error:  # xatlas raises plain RuntimeErrors on degenerate input
        raise InputError(
            f"{where}: xatlas could not build a UV atlas ({error}): repair the mesh or give it UVs"
        ) from error
    face_uvs = unit.new_zeros(corners.shape[0], 3, 2)
    face_uvs[sound] = torch.as_tensor(uvs, dtype=torch.float32)[torch.as_tensor(indices.astype(np.int64))]
    # Slivers cover no pixel; each corner takes a UV its vertex has in the atlas (the texture's corner if none).
    vertex_uvs = unit.new_zeros(unit.shape[0], 2)
    vertex_uvs[corners[sound].reshape(-1)] = face_uvs[sound].reshape(-1, 2)
    face_uvs[~sound] = vertex_uvs[corners[~sound]]
    if not bool(torch.isfinite(face_uvs).all()):
        raise InputError(
            f"{where}: xatlas could not build a UV atlas (it returned non-finite UVs; the triangles are nearly "
            "degenerate): repair the mesh (e.g. Blender's Mesh > Clean Up) or give it UVs"
        )
    return face_uvs


def _triangle_heights(vertices: Float[Tensor, "V 3"], faces: Int64[Tensor, "F 3"]) -> Float[Tensor, " F"]:
    """Each triangle's smallest height: twice its area over its longest edge (0 for a triangle at one point)."""
    triangle = vertices[faces]
    longest = (triangle - triangle.roll(1, dims=1)).norm(dim=-1).amax(dim=1)
    twice_area = face_area_vectors(vertices, faces).norm(dim=-1)
    return torch.where(longest > 0, twice_area / longest, longest)
