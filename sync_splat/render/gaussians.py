"""Rendering 3D Gaussians: gsplat on CUDA, a pure-torch tiled compositor everywhere, and the compositing weights.

Both backends follow gsplat 1.4.0's "classic" rasterisation (`gsplat.rasterization`), so they agree:

- Projection (EWA splatting): a Gaussian with mean `mu` and covariance `Sigma = R S S^T R^T` (`R` from the
  normalised wxyz quaternion) goes to camera space (`mu_c = R_v mu + t_v`, `Sigma_c = R_v Sigma R_v^T`), then to
  the image through the Jacobian of the pinhole projection, `J = [[fx/z, 0, -fx x/z^2], [0, fy/z, -fy y/z^2]]`
  (x, y clamped to 1.3 times the field of view, as gsplat does, so Gaussians far outside stay well-conditioned):
  `Sigma_2d = J Sigma_c J^T + eps2d I` with `eps2d = 0.3` pixels^2. The conic is `Sigma_2d^-1`.
- Extent: 3 sigma, `radius = ceil(3 sqrt(lambda_max))` with `lambda_max = b + sqrt(max(0.01, b^2 - det))`,
  `b = trace / 2`. A Gaussian reaches the 16x16 tiles that its square `[x - r, x + r] x [y - r, y + r]` touches.
- Culled: centres nearer than `near_plane` (0.01, so everything behind the camera) or beyond `far_plane`, and
  Gaussians whose square lies outside the image.
- Per pixel (centre at `(j + 0.5, i + 0.5)`), front to back by camera depth z:
  `alpha_i = min(0.999, o_i exp(-sigma_i))`, `sigma_i = d^T Sigma_2d^-1 d / 2` the half squared Mahalanobis
  distance; contributions with `alpha_i < 1/255` are skipped; compositing stops before the Gaussian that would
  bring the transmittance to 1e-4 or below. The weight of Gaussian i is `w_i = T_i alpha_i` with
  `T_i = prod_{j before i} (1 - alpha_j)`.
- Outputs (no background): `image = sum_i w_i f_i`, `alpha = sum_i w_i`, and the expected depth
  `depth = sum_i w_i z_i / alpha` where `alpha > 0`, else 0 (gsplat's "ED" render mode). Composite a background
  with `image + (1 - alpha) * background`.
- `antialiased=True` is gsplat's "antialiased" mode: opacities are multiplied by `sqrt(det(Sigma) / det(Sigma +
  eps2d I))`, which keeps a Gaussian's total contribution when the blur widens it.

The torch backend computes the weights once (`gaussian_weights`) and renders `image = W @ features`: it is
differentiable with respect to `features` only. The geometry (means, quaternions, scales, opacities) is treated
as constant there, which is what the colour fit needs (frozen geometry: precompute W once, fit many times). The
gsplat backend is differentiable with respect to everything.

The torch compositor's working memory is bounded: it evaluates (Gaussian, pixel block) intersections in chunks
of at most `_CHUNK_ELEMENTS` (intersection, pixel) pairs, carrying the transmittance across chunks; what it keeps
is the non-zero weights (about 24 bytes each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError
from sync_splat.functional.rotation import quat_to_rotmat
from sync_splat.render.gsplat_check import gsplat_works

Backend = Literal["auto", "torch", "gsplat"]

# gsplat 1.4.0's constants (rasterize_to_pixels_fwd.cu, fully_fused_projection_fwd.cu, utils.cuh).
MAX_ALPHA = 0.999
MIN_ALPHA = 1.0 / 255.0
MIN_TRANSMITTANCE = 1e-4
_FOV_CLAMP = 1.3

# Pixels are composited in blocks of _BLOCK x _BLOCK (a divisor of the tile size), so that a small Gaussian costs
# its few blocks rather than whole 16 x 16 tiles.
_BLOCK = 8
# At most this many (intersection, pixel) pairs are held at once by the torch compositor (~10 float64 temporaries
# of this size, so ~0.3 GB at 2**22).
_CHUNK_ELEMENTS = 2**22
COMPOSITOR_WORKING_BYTES = 10 * 8 * _CHUNK_ELEMENTS
"""What the torch compositor holds while it works, besides the weights it returns (its chunk's temporaries)."""


@dataclass(frozen=True)
class RenderOutput:
    """What `render_gaussians` returns; no background is composited.

    Attributes:
        image: `sum_i w_i f_i` per pixel, `[N, C, H, W]`.
        alpha: accumulated opacity `sum_i w_i` in [0, 1], `[N, 1, H, W]`.
        depth: expected camera depth `sum_i w_i z_i / alpha` where `alpha > 0`, else 0, `[N, 1, H, W]`.
    """

    image: Float[Tensor, "N C H W"]
    alpha: Float[Tensor, "N 1 H W"]
    depth: Float[Tensor, "N 1 H W"]


def render_gaussians(
    means: Float[Tensor, "G 3"],
    quats_wxyz: Float[Tensor, "G 4"],
    scales: Float[Tensor, "G 3"],
    opacities: Float[Tensor, " G"],
    features: Float[Tensor, "G C"],
    viewmats: Float[Tensor, "N 4 4"],
    Ks: Float[Tensor, "N 3 3"],
    width: int,
    height: int,
    backend: Backend = "auto",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
    tile_size: int = 16,
) -> RenderOutput:
    """Render Gaussians with per-Gaussian features (RGB colours, latent features: any C) into N views.

    Args:
        means: centres in world space, `[G, 3]`.
        quats_wxyz: rotations as wxyz quaternions (normalised here), `[G, 4]`.
        scales: activated standard deviations along the rotated axes, `[G, 3]`.
        opacities: activated opacities in [0, 1], `[G]`.
        features: what is composited, `[G, C]`.
        viewmats: world-to-camera transforms, OpenCV axes (`Cameras.viewmats`), `[N, 4, 4]`.
        Ks: pinhole intrinsics in pixels, `[N, 3, 3]`.
        width, height: the image size W x H.
        backend: "gsplat" (`gsplat.rasterization`; CUDA tensors only), "torch" (the pure-torch compositor, any
            device, differentiable w.r.t. `features` only) or "auto" (gsplat for CUDA tensors when it works,
            otherwise torch, with one RuntimeWarning per process if gsplat is installed but broken).
        near_plane, far_plane: Gaussians whose centre's camera depth lies outside are culled.
        eps2d: the blur added to every 2D covariance, in pixels^2.
        antialiased: gsplat's "antialiased" mode (opacity compensation for the blur).
        tile_size: tile side in pixels; it decides which tiles a Gaussian reaches, as in gsplat.

    Returns:
        `RenderOutput` with `image [N, C, H, W]`, `alpha [N, 1, H, W]`, `depth [N, 1, H, W]`.
    """
    _check_inputs(means, quats_wxyz, scales, opacities, viewmats, Ks, width, height, features)
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and gsplat_works() else "torch"
    if backend == "gsplat":
        if not means.is_cuda:
            raise InputError("render_gaussians: backend='gsplat' needs CUDA tensors; use backend='torch' on the CPU")
        return _render_gsplat(
            means, quats_wxyz, scales, opacities, features, viewmats, Ks, width, height,
            near_plane, far_plane, eps2d, antialiased, tile_size,
        )  # fmt: skip
    if backend != "torch":
        raise InputError(f"render_gaussians: backend must be 'auto', 'torch' or 'gsplat', got {backend!r}")

    entries = _composite(
        means, quats_wxyz, scales, opacities, viewmats, Ks, width, height,
        near_plane, far_plane, eps2d, antialiased, tile_size,
    )  # fmt: skip
    n, c, num_pixels = viewmats.shape[0], features.shape[1], width * height
    weights = entries.weights.to(features.dtype)
    image = torch.zeros(n * num_pixels, c, dtype=features.dtype, device=features.device)
    image = image.index_add(0, entries.pixels, weights[:, None] * features[entries.gaussians])
    zeros = weights.new_zeros(n * num_pixels)
    alpha = zeros.index_add(0, entries.pixels, weights)
    depth_sum = zeros.index_add(0, entries.pixels, weights * entries.depths.to(weights.dtype))
    depth = torch.where(alpha > 0, depth_sum / alpha.clamp(min=torch.finfo(alpha.dtype).tiny), 0.0)
    return RenderOutput(
        image=image.reshape(n, height, width, c).permute(0, 3, 1, 2),
        alpha=alpha.reshape(n, 1, height, width),
        depth=depth.reshape(n, 1, height, width),
    )


def gaussian_weights(
    means: Float[Tensor, "G 3"],
    quats_wxyz: Float[Tensor, "G 4"],
    scales: Float[Tensor, "G 3"],
    opacities: Float[Tensor, " G"],
    viewmats: Float[Tensor, "N 4 4"],
    Ks: Float[Tensor, "N 3 3"],
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
    tile_size: int = 16,
) -> Float[Tensor, "NHW G"]:
    """The compositing weights of every Gaussian at every pixel of every view, as one sparse matrix.

    `W[n * H * W + i * W + j, g] = w_g` at pixel (row i, column j) of view n, so with features `[G, C]`:
    `(W @ features).reshape(N, H, W, C)` is the rendered image (channels last) and `W @ ones(G)` the alpha, exactly
    as `render_gaussians(..., backend="torch")` computes them. Zero weights are not stored. The geometry is treated
    as constant (no autograd through the weights).

    Args:
        As `render_gaussians`.

    Returns:
        A coalesced sparse COO tensor `[N * H * W, G]` in the dtype of `means` (`.to_sparse_csr()` converts it).
    """
    entries = gaussian_weight_entries(
        means, quats_wxyz, scales, opacities, viewmats, Ks, width, height,
        near_plane, far_plane, eps2d, antialiased, tile_size,
    )  # fmt: skip
    shape = (viewmats.shape[0] * width * height, means.shape[0])
    indices = torch.stack([entries.pixels, entries.gaussians])
    # (pixel, Gaussian) pairs are unique (a pixel lies in one block, a Gaussian meets a block once): coalescing
    # only sorts them.
    return torch.sparse_coo_tensor(indices, entries.weights, shape, check_invariants=False).coalesce()


class WeightEntries(NamedTuple):
    """Non-zero compositing weights in no particular order: Gaussian `gaussians[e]` has weight `weights[e]` at pixel
    `pixels[e]` (`view * H * W + row * W + col`, views counted from the first one given); all `[E]`."""

    pixels: Tensor
    gaussians: Tensor
    weights: Tensor


def gaussian_weight_entries(
    means: Float[Tensor, "G 3"],
    quats_wxyz: Float[Tensor, "G 4"],
    scales: Float[Tensor, "G 3"],
    opacities: Float[Tensor, " G"],
    viewmats: Float[Tensor, "N 4 4"],
    Ks: Float[Tensor, "N 3 3"],
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
    tile_size: int = 16,
) -> WeightEntries:
    """The weights of `gaussian_weights`, unsorted: what a product that applies them and forgets them needs (no sort,
    no sparse tensor). Indices are int64, weights in the dtype of `means`.

    Args:
        As `render_gaussians`.
    """
    _check_inputs(means, quats_wxyz, scales, opacities, viewmats, Ks, width, height)
    entries = _composite(
        means, quats_wxyz, scales, opacities, viewmats, Ks, width, height,
        near_plane, far_plane, eps2d, antialiased, tile_size,
    )  # fmt: skip
    return WeightEntries(entries.pixels, entries.gaussians, entries.weights)


class _Projection(NamedTuple):
    """Per-Gaussian 2D footprints in one view, `[G, ...]`; `radii` is 0 for culled Gaussians."""

    means2d: Tensor  # [G, 2]
    conics: Tensor  # [G, 3]: (a, b, c) of the inverse 2D covariance [[a, b], [b, c]]
    depths: Tensor  # [G]
    radii: Tensor  # [G], int64
    cov2d_diag: Tensor  # [G, 2]: the variances in x and y of the blurred 2D covariance
    opacities: Tensor  # [G]


class _Entries(NamedTuple):
    """The non-zero weights: entry e is Gaussian `gaussians[e]` at pixel `pixels[e]` (index into N * H * W)."""

    pixels: Tensor  # [E] int64
    gaussians: Tensor  # [E] int64
    weights: Tensor  # [E]
    depths: Tensor  # [E]: the Gaussian's camera depth in that view


def _project(
    means: Tensor,
    covars: Tensor,
    opacities: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    antialiased: bool,
) -> _Projection:
    """EWA projection of every Gaussian into one view (gsplat's `fully_fused_projection`, pinhole)."""
    means_c = means @ viewmat[:3, :3].T + viewmat[:3, 3]  # [G, 3]
    covars_c = viewmat[:3, :3] @ covars @ viewmat[:3, :3].T  # [G, 3, 3]
    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keep culled Gaussians finite

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lim_x_pos = (width - cx) / fx + (_FOV_CLAMP - 1) * 0.5 * width / fx
    lim_x_neg = cx / fx + (_FOV_CLAMP - 1) * 0.5 * width / fx
    lim_y_pos = (height - cy) / fy + (_FOV_CLAMP - 1) * 0.5 * height / fy
    lim_y_neg = cy / fy + (_FOV_CLAMP - 1) * 0.5 * height / fy
    tx = z * torch.minimum(torch.maximum(x / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / z**2, zero, fy / z, -fy * ty / z**2], dim=-1).unflatten(-1, (2, 3))
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [G, 2, 2]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    a, b, c = cov2d[:, 0, 0], 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]), cov2d[:, 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)

    half_trace = 0.5 * (a + c)
    lambda_max = half_trace + torch.sqrt((half_trace**2 - det).clamp(min=0.01))
    radii = torch.ceil(3.0 * torch.sqrt(lambda_max))
    valid &= (
        (means2d[:, 0] + radii > 0)
        & (means2d[:, 0] - radii < width)
        & (means2d[:, 1] + radii > 0)
        & (means2d[:, 1] - radii < height)
    )
    radii = torch.where(valid, radii, 0.0).long()
    if antialiased:
        opacities = opacities * torch.sqrt((det_orig / det).clamp(min=0.0))
    return _Projection(means2d, conics, means_c[:, 2], radii, torch.stack([a, c], dim=-1), opacities)


@torch.no_grad()
def _composite(
    means: Tensor,
    quats_wxyz: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    antialiased: bool,
    tile_size: int,
) -> _Entries:
    """Front-to-back compositing of every view, one view at a time, returning the non-zero weights."""
    R = quat_to_rotmat(quats_wxyz)
    M = R * scales[:, None, :]
    covars = M @ M.transpose(-1, -2)  # [G, 3, 3]
    found = []
    for view, (viewmat, K) in enumerate(zip(viewmats, Ks, strict=True)):
        proj = _project(means, covars, opacities, viewmat, K, width, height, near_plane, far_plane, eps2d, antialiased)
        entries = _composite_view(proj, width, height, tile_size)
        found.append(entries._replace(pixels=entries.pixels + view * width * height))
    return _Entries(*(torch.cat(parts) for parts in zip(*found, strict=True)))


def _composite_view(proj: _Projection, width: int, height: int, tile_size: int) -> _Entries:
    """Front-to-back compositing of one view, block by block.

    1. Bin: a Gaussian reaches the pixels of the tiles its 3-sigma square touches (gsplat's `isect_tiles`), and
       among them can only matter where `alpha >= 1/255`, inside the ellipse `sigma <= log(255 o)`. Each visible
       Gaussian is repeated for every block of `_BLOCK x _BLOCK` pixels that meets both; blocks divide tiles, so
       every pixel of such a block lies in a reached tile. The intersections are ordered by block, then by depth.
    2. Composite: each intersection is evaluated at all pixels of its block. Within a block, the exclusive
       transmittance `T_i = prod_{j<i} (1 - alpha_j)` is a cumulative product along the depth-sorted
       intersections, taken as `exp(cumsum(log(1 - alpha)))` with the sum in float64, so a block can be split
       across chunks by carrying its running sum.
    """
    device = proj.means2d.device
    block = math.gcd(tile_size, _BLOCK)
    size = torch.tensor([width, height], device=device)
    tile_limit = torch.tensor([math.ceil(width / tile_size), math.ceil(height / tile_size)], device=device)
    blocks_x = math.ceil(width / block)

    # 1. Binning. Gaussians are put in depth order first; a stable sort by block later keeps it within each block.
    visible = torch.nonzero((proj.radii > 0) & (proj.opacities >= MIN_ALPHA)).squeeze(1)
    gauss_ids = visible[torch.argsort(proj.depths[visible], stable=True)]
    centre = proj.means2d[gauss_ids]  # [P, 2] pixels
    tile_radius = (proj.radii[gauss_ids] / tile_size)[:, None]
    tile_min = torch.minimum(torch.floor(centre / tile_size - tile_radius).long().clamp(min=0), tile_limit)
    tile_max = torch.minimum(torch.ceil(centre / tile_size + tile_radius).long().clamp(min=0), tile_limit)
    # Half-widths of the box around {sigma <= log(255 o)}, with a little slack for rounding.
    log_ratio = torch.log(proj.opacities[gauss_ids] / MIN_ALPHA).clamp(min=0)[:, None]
    extent = torch.sqrt(2 * log_ratio * proj.cov2d_diag[gauss_ids]) * (1 + 1e-4) + 1e-3
    # Inclusive pixel ranges (pixel j has its centre at j + 0.5), then the blocks they meet.
    first = torch.maximum(tile_min * tile_size, torch.ceil(centre - extent - 0.5).long())
    last = torch.minimum(torch.minimum(tile_max * tile_size, size) - 1, torch.floor(centre + extent - 0.5).long())
    block_min = torch.div(first, block, rounding_mode="floor")
    span = torch.where(last >= first, torch.div(last, block, rounding_mode="floor") - block_min + 1, 0)  # [P, 2]
    counts = span[:, 0] * span[:, 1]
    pair = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)  # [I]
    local = torch.arange(len(pair), device=device) - (torch.cumsum(counts, 0) - counts)[pair]
    block_xy = block_min[pair] + torch.stack([local % span[pair, 0], local // span[pair, 0]], dim=-1)
    block_ids = block_xy[:, 1] * blocks_x + block_xy[:, 0]
    block_order = torch.argsort(block_ids, stable=True)
    pair, block_ids, block_xy = pair[block_order], block_ids[block_order], block_xy[block_order]
    # First intersection of each block's run (where the cumulative product restarts).
    is_start = torch.ones_like(block_ids, dtype=torch.bool)
    is_start[1:] = block_ids[1:] != block_ids[:-1]
    starts = torch.cummax(torch.where(is_start, torch.arange(len(pair), device=device), 0), 0).values

    # 2. Compositing, chunk by chunk.
    offsets = torch.arange(block, device=device)
    pixel_dy, pixel_dx = torch.meshgrid(offsets, offsets, indexing="ij")
    pixel_dx, pixel_dy = pixel_dx.reshape(-1), pixel_dy.reshape(-1)  # block-local pixel offsets
    chunk = max(1, _CHUNK_ELEMENTS // block**2)
    carry = torch.zeros(block**2, dtype=torch.float64, device=device)  # log T of the block open across chunks
    empty = torch.zeros(0, dtype=torch.long, device=device)
    found = [_Entries(empty, empty, proj.depths[:0], proj.depths[:0])]
    for begin in range(0, len(pair), chunk):
        end = min(begin + chunk, len(pair))
        p = pair[begin:end]
        g = gauss_ids[p]
        col = block_xy[begin:end, 0:1] * block + pixel_dx  # [I, block^2]
        row = block_xy[begin:end, 1:2] * block + pixel_dy
        dx, dy = centre[p, 0:1] - (col + 0.5), centre[p, 1:2] - (row + 0.5)
        conic = proj.conics[g]
        sigma = 0.5 * (conic[:, 0:1] * dx * dx + conic[:, 2:3] * dy * dy) + conic[:, 1:2] * dx * dy
        alpha = (proj.opacities[g][:, None] * torch.exp(-sigma)).clamp(max=MAX_ALPHA)
        alpha = torch.where((sigma >= 0) & (alpha >= MIN_ALPHA), alpha, 0.0)

        log_keep = torch.log1p(-alpha)
        inclusive = torch.cumsum(log_keep, 0, dtype=torch.float64)
        before = torch.cat([torch.zeros_like(carry)[None], inclusive])  # before[k] = sum of rows < begin + k
        start = starts[begin:end] - begin
        log_t_incl = inclusive - before[start.clamp(min=0)] + torch.where(start[:, None] < 0, carry, 0.0)
        carry = log_t_incl[-1]
        # gsplat stops before the Gaussian whose contribution leaves T <= 1e-4; T only falls, so all later ones too.
        keep = (alpha > 0) & (log_t_incl > math.log(MIN_TRANSMITTANCE)) & (col < width) & (row < height)
        i, k = torch.nonzero(keep, as_tuple=True)
        weights = alpha[i, k] * torch.exp(log_t_incl[i, k] - log_keep[i, k]).to(alpha.dtype)
        found.append(_Entries(row[i, k] * width + col[i, k], g[i], weights, proj.depths[g[i]]))
    return _Entries(*(torch.cat(parts) for parts in zip(*found, strict=True)))


def _render_gsplat(
    means: Tensor,
    quats_wxyz: Tensor,
    scales: Tensor,
    opacities: Tensor,
    features: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    antialiased: bool,
    tile_size: int,
) -> RenderOutput:
    """`gsplat.rasterization` with our arguments; "RGB+ED" appends the expected depth as a last channel."""
    from gsplat import rasterization

    colors, alphas, _ = rasterization(
        means=means,
        quats=quats_wxyz,
        scales=scales,
        opacities=opacities,
        colors=features,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        packed=False,
        tile_size=tile_size,
        render_mode="RGB+ED",
        rasterize_mode="antialiased" if antialiased else "classic",
    )  # colors [N, H, W, C + 1], alphas [N, H, W, 1]
    return RenderOutput(
        image=colors[..., :-1].permute(0, 3, 1, 2),
        alpha=alphas.permute(0, 3, 1, 2),
        depth=colors[..., -1:].permute(0, 3, 1, 2),
    )


def _check_inputs(
    means: Tensor,
    quats_wxyz: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    features: Tensor | None = None,
) -> None:
    g, n = means.shape[0], viewmats.shape[0]
    expected = {
        "means": (means, (g, 3)),
        "quats_wxyz": (quats_wxyz, (g, 4)),
        "scales": (scales, (g, 3)),
        "opacities": (opacities, (g,)),
        "viewmats": (viewmats, (n, 4, 4)),
        "Ks": (Ks, (n, 3, 3)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise InputError(f"render_gaussians: {name} must have shape {list(shape)}, got {list(tensor.shape)}")
    if features is not None and (features.ndim != 2 or features.shape[0] != g):
        raise InputError(f"render_gaussians: features must have shape [G, C] = [{g}, C], got {list(features.shape)}")
    if n == 0:
        raise InputError("render_gaussians: viewmats and Ks hold no views; pass at least one camera")
    if width < 1 or height < 1:
        raise InputError(f"render_gaussians: the image size must be positive, got {width} x {height}")
