"""Depth conditioning for ControlNet depth: depth maps to normalised inverse depth images, in pure torch.

ControlNet depth (`control_v11f1p_sd15_depth`) was trained on MiDaS-style relative inverse depth: near is bright,
far is dark, values in [0, 1], an RGB image with the same value in every channel. A renderer gives metric (or
expected) depth and a coverage mask instead, so `depth_control_image` converts:

1. inverse depth `1 / d` on valid pixels (mask above a threshold, finite positive depth);
2. min-max normalised over all views together (the official SyncTweedies splat setting, so one object keeps one
   brightness scale across views) or per view, mapped to `[far_value, 1]`: the nearest pixel is 1, the farthest
   valid pixel `far_value`, and the background 0. A positive `far_value` keeps the far silhouette of an object
   apart from the background (with 0 the farthest points of a convex object, its outline, would merge with it);
3. resized to the ControlNet's image size (bilinear, antialiased when shrinking);
4. blurred with a Gaussian (kernel 5, sigma 2, as the official splat pipeline), which softens rasterisation
   aliasing and the hard background edge;
5. repeated to 3 channels when the ControlNet expects RGB.

Shapes: `[N, 1, H, W]` in, `[N, C, H', W']` out (docs/conventions.md letters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor


def valid_depth_mask(
    depth: Float[Tensor, "N 1 H W"],
    mask: Float[Tensor, "N 1 H W"] | Bool[Tensor, "N 1 H W"] | None = None,
    alpha_threshold: float = 0.01,
) -> Bool[Tensor, "N 1 H W"]:
    """Pixels with a usable depth: finite and positive, and covered (mask true, or alpha above the threshold).

    Args:
        depth: per-pixel depth along the camera axis (metric, or a renderer's expected depth).
        mask: a boolean validity mask or a float alpha (coverage) in [0, 1]; None: every pixel may be valid.
        alpha_threshold: float masks count a pixel as covered when alpha > this (official splat setting 0.01).

    Returns:
        The valid pixels.
    """
    valid = torch.isfinite(depth) & (depth > 0)
    if mask is not None:
        valid = valid & (mask if mask.dtype == torch.bool else mask > alpha_threshold)
    return valid


def normalized_inverse_depth(
    depth: Float[Tensor, "N 1 H W"],
    valid: Bool[Tensor, "N 1 H W"],
    per_view: bool = False,
    far_value: float = 0.1,
) -> Float[Tensor, "N 1 H W"]:
    """Inverse depth min-max normalised to [far_value, 1] on valid pixels (near is 1), 0 elsewhere.

    Args:
        depth: per-pixel depth; only valid pixels are read.
        valid: which pixels have a depth (`valid_depth_mask`).
        per_view: normalise each view by its own range instead of the range over all views.
        far_value: the value of the farthest valid pixel, in [0, 1).

    Returns:
        Float32 normalised inverse depth. A range of zero width (one depth everywhere) maps to 1; views (or, when
        global, all views) without a valid pixel are all 0.
    """
    if not 0.0 <= far_value < 1.0:
        raise ValueError(f"far_value must be in [0, 1), got {far_value}")
    depth = depth.float()
    inverse = torch.where(valid, 1.0 / torch.where(valid, depth, torch.ones_like(depth)), torch.zeros_like(depth))
    dims = (1, 2, 3) if per_view else (0, 1, 2, 3)
    near = torch.where(valid, inverse, torch.full_like(inverse, -torch.inf)).amax(dim=dims, keepdim=True)
    far = torch.where(valid, inverse, torch.full_like(inverse, torch.inf)).amin(dim=dims, keepdim=True)
    span = near - far
    # Where the range is empty (no valid pixel: near = -inf) or of zero width, every valid pixel is "nearest".
    unit = torch.where(span > 0, (inverse - far) / torch.where(span > 0, span, torch.ones_like(span)), 1.0)
    return torch.where(valid, far_value + (1.0 - far_value) * unit, torch.zeros_like(inverse))


def gaussian_blur(
    image: Float[Tensor, "N C H W"], kernel_size: int = 5, sigma: float = 2.0
) -> Float[Tensor, "N C H W"]:
    """Separable Gaussian blur with reflected borders (the same as torchvision's `gaussian_blur`).

    Args:
        image: images to blur, channel by channel.
        kernel_size: odd kernel width; 1 (or sigma <= 0) returns the image unchanged.
        sigma: standard deviation in pixels.

    Returns:
        The blurred images.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    if kernel_size == 1 or sigma <= 0:
        return image
    half = kernel_size // 2
    x = torch.arange(kernel_size, dtype=torch.float32, device=image.device) - half
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    weights = (weights / weights.sum()).to(image.dtype)
    n, c, h, w = image.shape
    flat = image.reshape(n * c, 1, h, w)
    mode = "reflect" if min(h, w) > half else "replicate"  # reflection needs more pixels than the padding
    flat = F.pad(flat, (half, half, half, half), mode=mode)
    flat = F.conv2d(flat, weights.view(1, 1, 1, kernel_size))
    flat = F.conv2d(flat, weights.view(1, 1, kernel_size, 1))
    return flat.reshape(n, c, h, w)


def depth_control_image(
    depth: Float[Tensor, "N 1 H W"],
    mask: Float[Tensor, "N 1 H W"] | Bool[Tensor, "N 1 H W"] | None = None,
    *,
    alpha_threshold: float = 0.01,
    per_view: bool = False,
    far_value: float = 0.1,
    size: tuple[int, int] | None = None,
    blur_kernel: int = 5,
    blur_sigma: float = 2.0,
    channels: int = 1,
) -> Float[Tensor, "N C Hc Wc"]:
    """A ControlNet depth image from rendered depth: normalised inverse depth, resized and blurred.

    Args:
        depth: per-pixel depth along the camera axis, `[N, 1, H, W]` (metric or expected depth).
        mask: a boolean validity mask or a float alpha; uncovered pixels become background (0).
        alpha_threshold: float masks count a pixel as covered when alpha > this.
        per_view: normalise each view by its own depth range instead of the range over all views.
        far_value: the value of the farthest valid pixel (background is 0, the nearest pixel 1).
        size: the output size `(Hc, Wc)` (the ControlNet takes the image size, 8 x the latent); None keeps H, W.
        blur_kernel: Gaussian kernel width (odd); 1 disables the blur.
        blur_sigma: Gaussian standard deviation in output pixels.
        channels: 1, or 3 for ControlNets that take an RGB image (the value repeated).

    Returns:
        Float32 images in [0, 1], `[N, channels, Hc, Wc]`.
    """
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must be [N, 1, H, W], got {tuple(depth.shape)}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = normalized_inverse_depth(depth, valid_depth_mask(depth, mask, alpha_threshold), per_view, far_value)
    if size is not None and tuple(size) != tuple(image.shape[-2:]):
        shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
        image = F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrinking)
    image = gaussian_blur(image, blur_kernel, blur_sigma).clamp(0.0, 1.0)
    return image.expand(-1, channels, -1, -1).contiguous()
