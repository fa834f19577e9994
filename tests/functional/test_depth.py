"""Depth conditioning: normalised inverse depth (near bright, background 0), resizing, blur and channels."""

from __future__ import annotations

import pytest
import torch

from sync_splat.functional.depth import (
    depth_control_image,
    gaussian_blur,
    normalized_inverse_depth,
    valid_depth_mask,
)


def image(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


@pytest.mark.parametrize(
    ("depth", "mask", "expected"),
    [
        # inverse depths 1, 0.5, 0.25 -> min-max to [0.1, 1]: near is bright, the farthest pixel is 0.1
        ([[1.0, 2.0, 4.0]], None, [[1.0, 0.1 + 0.9 * (0.25 / 0.75), 0.1]]),
        # masked pixels are background, whatever their depth (boolean mask)
        ([[1.0, 2.0, 0.5]], [[True, True, False]], [[1.0, 0.1, 0.0]]),
        # float alpha: covered when alpha > 0.01
        ([[1.0, 2.0, 3.0]], [[1.0, 0.02, 0.01]], [[1.0, 0.1, 0.0]]),
        # non-finite and non-positive depths are background
        ([[1.0, float("inf"), 0.0, -1.0, float("nan"), 2.0]], None, [[1.0, 0.0, 0.0, 0.0, 0.0, 0.1]]),
        # one depth everywhere: every valid pixel is the nearest
        ([[3.0, 3.0]], None, [[1.0, 1.0]]),
        # no valid pixel: all background
        ([[1.0, 2.0]], [[False, False]], [[0.0, 0.0]]),
    ],
)
def test_normalized_inverse_depth_cases(depth, mask, expected):
    depth = image(depth)
    mask = None if mask is None else image(mask) if isinstance(mask[0][0], float) else torch.tensor(mask)[None, None]
    got = normalized_inverse_depth(depth, valid_depth_mask(depth, mask), far_value=0.1)
    assert torch.allclose(got, image(expected), atol=1e-6)


def test_normalisation_is_global_over_views_unless_per_view():
    depth = torch.cat([image([[1.0, 2.0]]), image([[2.0, 4.0]])])  # the second view is twice as far
    valid = valid_depth_mask(depth)
    shared = normalized_inverse_depth(depth, valid, far_value=0.0)
    # inverse depths 1, 0.5 | 0.5, 0.25 over the range [0.25, 1]
    assert torch.allclose(shared.flatten(), torch.tensor([1.0, 1 / 3, 1 / 3, 0.0]), atol=1e-6)
    own = normalized_inverse_depth(depth, valid, per_view=True, far_value=0.0)
    assert torch.allclose(own.flatten(), torch.tensor([1.0, 0.0, 1.0, 0.0]), atol=1e-6)


def test_far_value_out_of_range_is_refused():
    with pytest.raises(ValueError, match="far_value"):
        normalized_inverse_depth(image([[1.0]]), torch.ones(1, 1, 1, 1, dtype=torch.bool), far_value=1.0)


def test_blur_matches_torchvision():
    from torchvision.transforms.functional import gaussian_blur as reference

    x = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(gaussian_blur(x, 5, 2.0), reference(x, [5, 5], [2.0, 2.0]), atol=1e-6)
    assert torch.allclose(gaussian_blur(torch.full((1, 1, 7, 7), 0.3)), torch.full((1, 1, 7, 7), 0.3), atol=1e-6)
    assert torch.equal(gaussian_blur(x, 1, 2.0), x)


@pytest.mark.parametrize(
    ("size", "channels", "expected_shape"),
    [(None, 1, (2, 1, 16, 24)), ((64, 96), 3, (2, 3, 64, 96)), ((8, 12), 1, (2, 1, 8, 12))],
)
def test_control_image_size_channels_and_range(size, channels, expected_shape):
    g = torch.Generator().manual_seed(0)
    depth = 1.0 + 3.0 * torch.rand(2, 1, 16, 24, generator=g)
    alpha = (torch.rand(2, 1, 16, 24, generator=g) > 0.3).float()
    out = depth_control_image(depth, alpha, size=size, channels=channels)
    assert out.shape == expected_shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(out, out[:, :1].expand_as(out)), "every channel holds the same value"


def test_control_image_is_blurred_normalised_depth():
    depth = torch.linspace(1.0, 4.0, 20 * 20).reshape(1, 1, 20, 20)
    unblurred = depth_control_image(depth, blur_kernel=1)
    assert torch.allclose(unblurred, normalized_inverse_depth(depth, valid_depth_mask(depth)))
    assert torch.allclose(depth_control_image(depth), gaussian_blur(unblurred, 5, 2.0), atol=1e-6)
    # near is bright: depth grows along the rows, so brightness falls
    assert unblurred[0, 0, 0, 0] == 1.0 and unblurred[0, 0, -1, -1] == pytest.approx(0.1)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        depth_control_image(torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        depth_control_image(torch.ones(1, 1, 4, 4), channels=2)
