"""Rasterising triangle meshes: nvdiffrast on CUDA, a pure-torch z-buffer rasteriser everywhere.

A rasterisation says, for every pixel of every view, which triangle it sees and where on it: the face id (-1 for
background), perspective-correct barycentrics, and from them the interpolated UV, the camera depth and the world
normal. Texture lookups, bakes and depth maps for ControlNet are all built from this (`bridges/mesh.py`). There is
no shading, no antialiasing and no blur: one face per pixel, as the official mesh renderer (flat ambient shader).

Conventions (docs/conventions.md): `viewmats` are world-to-camera `[N, 4, 4]` in OpenCV axes (x right, y down,
z forward), `Ks` pinhole intrinsics in pixels with the centre of pixel (row i, column j) at `(j + 0.5, i + 0.5)`.
UVs are passed through as given (origin bottom-left, v up). Meshes are rendered double-sided: a triangle seen from
behind is drawn too (Objaverse meshes often have inconsistent winding), and the returned normal is the triangle's
geometric normal flipped to face the camera, so `cos = <normal, direction to camera>` is never negative.

Backends:
- "nvdiffrast" (`diffrp-nvdiffrast`, CUDA only, the `cuda` extra): `RasterizeCudaContext`, one instanced call for
  all views. Triangles crossing the near plane are clipped.
- "torch": a z-buffer in plain tensor operations that runs on any device. Triangles are grouped by the size of
  their pixel bounding box (rounded up to powers of two per axis), every pixel centre of a group's padded box is
  tested against the three edge functions in one vectorised pass (in chunks of at most `max_elements` pairs), and
  the nearest one wins through `scatter_reduce(amin)` on 64-bit keys that pack the float32 depth's bit pattern
  (monotonic for positive floats) above the face id, so ties go to the lower face id. Barycentrics are then
  computed once per pixel for the winning face. Triangles with a vertex nearer than `near` are dropped, not
  clipped: cameras outside the mesh's bounding sphere (every rig here) never need clipping. Pixel centres exactly
  on a shared edge may be assigned to either triangle (no top-left rule); that is where the two backends can
  differ.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int64
from torch import Tensor

from sync_splat.errors import InputError

Backend = Literal["auto", "torch", "nvdiffrast"]

_NO_HIT = torch.iinfo(torch.int64).max
_FACE_BITS = 31
"""Face ids occupy the low 31 bits of a z-buffer key; the float32 depth bits (a positive int32) sit above them."""
MAX_ELEMENTS = 2**22
"""Default bound on (triangle, pixel) pairs held at once by the torch rasteriser (~20 temporaries of this size)."""


@dataclass(frozen=True)
class MeshRaster:
    """What `rasterize_mesh` returns for N views of H x W pixels; background pixels hold zeros (face id -1).

    Attributes:
        face_id: the triangle seen at each pixel, -1 for background, `[N, H, W]`.
        barycentrics: perspective-correct barycentric weights of the face's three corners, `[N, H, W, 3]`.
        uv: the interpolated texture coordinate (origin bottom-left, v up), `[N, H, W, 2]`.
        depth: camera depth z (along the optical axis, not the ray length), `[N, H, W]`.
        normal: the face's world-space geometric normal, oriented towards the camera, `[N, H, W, 3]`.
        position: the world-space surface point, `[N, H, W, 3]`.
    """

    face_id: Int64[Tensor, "N H W"]
    barycentrics: Float[Tensor, "N H W 3"]
    uv: Float[Tensor, "N H W 2"]
    depth: Float[Tensor, "N H W"]
    normal: Float[Tensor, "N H W 3"]
    position: Float[Tensor, "N H W 3"]

    @property
    def mask(self) -> Bool[Tensor, "N H W"]:
        """Pixels that see the mesh."""
        return self.face_id >= 0


def rasterize_mesh(
    vertices: Float[Tensor, "V 3"],
    faces: Int64[Tensor, "F 3"],
    face_uvs: Float[Tensor, "F 3 2"],
    viewmats: Float[Tensor, "N 4 4"],
    Ks: Float[Tensor, "N 3 3"],
    width: int,
    height: int,
    backend: Backend = "auto",
    near: float = 1e-3,
    max_elements: int = MAX_ELEMENTS,
) -> MeshRaster:
    """Rasterise a triangle mesh into N pinhole views.

    Args:
        vertices: world-space positions.
        faces: vertex indices per triangle.
        face_uvs: texture coordinates per face corner.
        viewmats: world-to-camera transforms, OpenCV axes.
        Ks: pinhole intrinsics in pixels.
        width: W.
        height: H.
        backend: "nvdiffrast" (CUDA), "torch" (any device), or "auto": nvdiffrast for CUDA tensors when it is
            installed, else torch.
        near: the torch backend drops triangles with a vertex at camera depth <= near; the nvdiffrast near plane.
        max_elements: the torch backend's bound on (triangle, pixel) pairs evaluated at once (memory).

    Returns:
        The per-pixel face ids, barycentrics, UVs, depths, normals and positions, on `vertices`' device, float32.
    """
    if faces.ndim != 2 or faces.shape[1] != 3 or face_uvs.shape != (faces.shape[0], 3, 2):
        raise ValueError(
            f"faces must be [F, 3] and face_uvs [F, 3, 2], got {tuple(faces.shape)}, {tuple(face_uvs.shape)}"
        )
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4) or Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"viewmats must be [N, 4, 4] and Ks [N, 3, 3], got {tuple(viewmats.shape)}, {tuple(Ks.shape)}")
    device = vertices.device
    vertices = vertices.float()
    faces = faces.to(device=device, dtype=torch.long)
    viewmats = viewmats.to(device=device, dtype=torch.float32)
    Ks = Ks.to(device=device, dtype=torch.float32)
    camera = vertices[None] @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3]  # [N, V, 3]

    if _choose_backend(backend, device) == "nvdiffrast":
        face_id, barycentrics = _rasterize_nvdiffrast(camera, faces, Ks, width, height, near)
    else:
        face_id, barycentrics = _rasterize_torch(camera, faces, Ks, width, height, near, max_elements)
    return _attributes(vertices, faces, face_uvs.to(device).float(), viewmats, camera, face_id, barycentrics)


def rasterize_uv(
    face_uvs: Float[Tensor, "F 3 2"], height: int, width: int, max_elements: int = MAX_ELEMENTS
) -> tuple[Int64[Tensor, "Ht Wt"], Float[Tensor, "Ht Wt 3"]]:
    """Rasterise the UV layout: which face covers each texel centre, and where (barycentrics, linear in UV).

    Texel (row r, column c) has its centre at `u = (c + 0.5) / Wt`, `v = 1 - (r + 0.5) / Ht` (docs/conventions.md).
    Where UV triangles overlap, the lowest face id wins. Runs the torch rasteriser on `face_uvs`' device.

    Returns:
        Face ids (-1 outside every chart) and barycentrics (zero there).
    """
    face_uvs = face_uvs.float()
    xy = torch.stack([face_uvs[..., 0] * width, (1.0 - face_uvs[..., 1]) * height], dim=-1)
    face_id = _zbuffer(xy, None, height, width, max_elements)
    return face_id, _screen_barycentrics(xy, face_id)


def face_area_vectors(vertices: Float[Tensor, "V 3"], faces: Int64[Tensor, "F 3"]) -> Float[Tensor, "F 3"]:
    """Each triangle's normal (by its winding) times twice its area: the cross product of its edges from corner 0."""
    triangle = vertices[faces]
    return torch.linalg.cross(triangle[:, 1] - triangle[:, 0], triangle[:, 2] - triangle[:, 0])


# ---------------------------------------------------------------------------------------------------------------------
# Backends: each returns (face_id [N, H, W], perspective-correct barycentrics [N, H, W, 3]).


def _choose_backend(backend: Backend, device: torch.device) -> Literal["torch", "nvdiffrast"]:
    if backend == "torch":
        return "torch"
    if backend not in ("auto", "nvdiffrast"):
        raise InputError(f"mesh rasteriser backend must be 'auto', 'torch' or 'nvdiffrast', got {backend!r}")
    available = device.type == "cuda" and _nvdiffrast_available()
    if backend == "nvdiffrast" and not available:
        raise InputError(
            "the nvdiffrast mesh rasteriser needs CUDA tensors and the diffrp-nvdiffrast package: "
            "pip install 'sync-splat[cuda]', or use backend='torch'"
        )
    return "nvdiffrast" if available else "torch"


@functools.cache
def _nvdiffrast_available() -> bool:
    try:
        import nvdiffrast.torch  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _cuda_context(device: torch.device):  # noqa: ANN202 - nvdiffrast's type is only importable with CUDA
    """One nvdiffrast context per device (the resource owner; creating one is slow)."""
    import nvdiffrast.torch as dr

    return dr.RasterizeCudaContext(device=device)


def _rasterize_nvdiffrast(
    camera: Float[Tensor, "N V 3"], faces: Tensor, Ks: Tensor, width: int, height: int, near: float
) -> tuple[Tensor, Tensor]:
    """Clip-space positions from OpenCV pinhole cameras, then one instanced `nvdiffrast.torch.rasterize` call.

    nvdiffrast's image row 0 is clip-space y = -1, so `y_clip / w = 2 y_pixel / H - 1` keeps rows top-down as in
    OpenCV; its barycentrics (u, v) weigh corners 0 and 1, and `1 - u - v` corner 2.
    """
    import nvdiffrast.torch as dr

    x, y, z = camera.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    far = float(z.max().clamp_min(near)) * 2.0 + 1.0
    a, b = (far + near) / (far - near), -2.0 * far * near / (far - near)
    clip = torch.stack(
        [2 * fx / width * x + (2 * cx / width - 1) * z, 2 * fy / height * y + (2 * cy / height - 1) * z, a * z + b, z],
        dim=-1,
    )
    rast, _ = dr.rasterize(
        _cuda_context(camera.device), clip.contiguous(), faces.int().contiguous(), resolution=(height, width)
    )
    face_id = rast[..., 3].long() - 1
    u, v = rast[..., 0], rast[..., 1]
    barycentrics = torch.stack([u, v, 1.0 - u - v], dim=-1)
    return face_id, torch.where(face_id[..., None] >= 0, barycentrics, 0.0)


def _rasterize_torch(
    camera: Float[Tensor, "N V 3"], faces: Tensor, Ks: Tensor, width: int, height: int, near: float, max_elements: int
) -> tuple[Tensor, Tensor]:
    face_ids, barycentrics = [], []
    for view in range(camera.shape[0]):
        z = camera[view, :, 2]
        xy = camera[view, :, :2] / z.clamp_min(near)[:, None] * Ks[view, [0, 1], [0, 1]] + Ks[view, [0, 1], [2, 2]]
        depth = z[faces]
        face_id = _zbuffer(xy[faces], depth, height, width, max_elements, valid=(depth > near).all(dim=1))
        screen = _screen_barycentrics(xy[faces], face_id)
        # Perspective correction: weights proportional to b_k / z_k (1 / z is linear in screen space).
        corrected = screen / depth[face_id.clamp_min(0)].clamp_min(near)
        corrected = corrected / corrected.sum(-1, keepdim=True).clamp_min(1e-30)
        face_ids.append(face_id)
        barycentrics.append(torch.where(face_id[..., None] >= 0, corrected, 0.0))
    return torch.stack(face_ids), torch.stack(barycentrics)


def _edge(a: Tensor, b: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """The edge function of segment a -> b at points (px, py): twice the signed area of (a, b, p)."""
    return (b[..., 0] - a[..., 0]) * (py - a[..., 1]) - (b[..., 1] - a[..., 1]) * (px - a[..., 0])


def _zbuffer(
    xy: Float[Tensor, "F 3 2"],
    depth: Float[Tensor, "F 3"] | None,
    height: int,
    width: int,
    max_elements: int,
    valid: Bool[Tensor, " F"] | None = None,
) -> Int64[Tensor, "H W"]:
    """The face id nearest at each pixel centre (-1 where none); `depth=None` lets the lowest face id win."""
    device = xy.device
    xy = xy.float()
    x, y = xy[..., 0], xy[..., 1]
    # Pixel j's centre is j + 0.5: the columns whose centres can lie inside are ceil(min - 0.5) .. floor(max - 0.5).
    col0 = torch.ceil(x.amin(1) - 0.5).clamp_min(0)
    col1 = torch.floor(x.amax(1) - 0.5).clamp_max(width - 1)
    row0 = torch.ceil(y.amin(1) - 0.5).clamp_min(0)
    row1 = torch.floor(y.amax(1) - 0.5).clamp_max(height - 1)
    area = _edge(xy[:, 0], xy[:, 1], xy[:, 2, 0], xy[:, 2, 1])
    keep = (col1 >= col0) & (row1 >= row0) & (area.abs() > 1e-12) & torch.isfinite(xy).all(dim=(1, 2))
    if valid is not None:
        keep &= valid
    ids = keep.nonzero()[:, 0]
    keys = torch.full((height * width,), _NO_HIT, dtype=torch.long, device=device)
    if ids.numel() == 0:
        return torch.full((height, width), -1, dtype=torch.long, device=device)
    col0, row0 = col0.long(), row0.long()
    col1, row1 = col1.long(), row1.long()
    span_x = _next_pow2(col1[ids] - col0[ids] + 1)
    span_y = _next_pow2(row1[ids] - row0[ids] + 1)
    for bucket_x, bucket_y in torch.stack([span_x, span_y], 1).unique(dim=0).tolist():
        bucket = ids[(span_x == bucket_x) & (span_y == bucket_y)]
        chunk = max(1, max_elements // (bucket_x * bucket_y))
        offset_x = torch.arange(bucket_x, device=device)
        offset_y = torch.arange(bucket_y, device=device)
        for start in range(0, bucket.numel(), chunk):
            f = bucket[start : start + chunk]
            cols = col0[f, None, None] + offset_x[None, None, :]  # [k, 1, bx]
            rows = row0[f, None, None] + offset_y[None, :, None]  # [k, by, 1]
            px, py = cols.float() + 0.5, rows.float() + 0.5
            tri = xy[f][:, None, None]  # [k, 1, 1, 3, 2]
            sign = area[f].sign()[:, None, None]
            w0 = _edge(tri[..., 1, :], tri[..., 2, :], px, py) * sign
            w1 = _edge(tri[..., 2, :], tri[..., 0, :], px, py) * sign
            w2 = _edge(tri[..., 0, :], tri[..., 1, :], px, py) * sign
            inside = (cols <= col1[f, None, None]) & (rows <= row1[f, None, None]) & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
            pixel = (rows * width + cols).expand_as(inside)[inside]
            key = f[:, None, None].expand_as(inside)[inside]
            if depth is not None:
                inverse = depth[f].reciprocal()[:, None, None]  # [k, 1, 1, 3]
                denom = area[f].abs()[:, None, None]
                inv_z = (w0 * inverse[..., 0] + w1 * inverse[..., 1] + w2 * inverse[..., 2]) / denom
                z_bits = (1.0 / inv_z[inside]).float().view(torch.int32).long()
                key = (z_bits << _FACE_BITS) | key
            keys.scatter_reduce_(0, pixel, key, reduce="amin")
    face_id = torch.where(keys == _NO_HIT, -1, keys & ((1 << _FACE_BITS) - 1))
    return face_id.reshape(height, width)


def _next_pow2(n: Tensor) -> Tensor:
    return (2 ** torch.ceil(torch.log2(n.float().clamp_min(1)))).long()


def _screen_barycentrics(xy: Float[Tensor, "F 3 2"], face_id: Int64[Tensor, "*S H W"]) -> Float[Tensor, "*S H W 3"]:
    """Screen-space (linear) barycentrics of each pixel centre in its face; zero where face_id is -1."""
    height, width = face_id.shape[-2:]
    rows = torch.arange(height, device=xy.device, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(width, device=xy.device, dtype=torch.float32)[None, :] + 0.5
    tri = xy.float()[face_id.clamp_min(0)]  # [..., H, W, 3, 2]
    px, py = cols.expand(height, width), rows.expand(height, width)
    w = torch.stack(
        [
            _edge(tri[..., 1, :], tri[..., 2, :], px, py),
            _edge(tri[..., 2, :], tri[..., 0, :], px, py),
            _edge(tri[..., 0, :], tri[..., 1, :], px, py),
        ],
        dim=-1,
    )
    # Normalising by the sum (the doubled area) also fixes the sign; pixels on an edge may round to tiny negatives.
    w = w / torch.where(w.sum(-1, keepdim=True) == 0, 1.0, w.sum(-1, keepdim=True))
    w = w.clamp_min(0)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
    return torch.where(face_id[..., None] >= 0, w, 0.0)


def _attributes(
    vertices: Tensor, faces: Tensor, face_uvs: Tensor, viewmats: Tensor, camera: Tensor, face_id: Tensor, bary: Tensor
) -> MeshRaster:
    """Interpolate UV, depth and position with the barycentrics; the face normal oriented towards the camera."""
    hit = (face_id >= 0)[..., None]
    index = face_id.clamp_min(0)
    corners = faces[index]  # [N, H, W, 3]
    uv = (face_uvs[index] * bary[..., None]).sum(-2)
    position = (vertices[corners] * bary[..., None]).sum(-2)
    view = torch.arange(camera.shape[0], device=camera.device)[:, None, None, None]
    depth = (camera[view, corners, 2] * bary).sum(-1)
    face_normal = F.normalize(face_area_vectors(vertices, faces), dim=-1)
    normal = face_normal[index]
    centre = torch.linalg.inv(viewmats)[:, :3, 3][:, None, None, :]
    facing = ((centre - position) * normal).sum(-1, keepdim=True)
    normal = torch.where(facing < 0, -normal, normal)
    zero = torch.zeros((), device=vertices.device)
    return MeshRaster(
        face_id=face_id,
        barycentrics=bary,
        uv=torch.where(hit, uv, zero),
        depth=torch.where(hit[..., 0], depth, zero),
        normal=torch.where(hit, normal, zero),
        position=torch.where(hit, position, zero),
    )
