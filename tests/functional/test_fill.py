"""Jump-flood filling against a brute-force nearest-valid-pixel search."""

import pytest
import torch

from sync_splat.functional.fill import fill_nearest, nearest_valid_index


def brute_force_distance(valid: torch.Tensor, wrap_x: bool) -> torch.Tensor:
    height, width = valid.shape
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    seed_rows, seed_cols = rows[valid], cols[valid]
    dx = (cols.reshape(-1, 1) - seed_cols.reshape(1, -1)).abs()
    if wrap_x:
        dx = torch.minimum(dx, width - dx)
    d = (rows.reshape(-1, 1) - seed_rows.reshape(1, -1)) ** 2 + dx**2
    return d.min(dim=1).values.reshape(height, width)


@pytest.mark.parametrize("wrap_x", [False, True])
@pytest.mark.parametrize(("height", "width", "density"), [(17, 23, 0.02), (32, 64, 0.005), (8, 8, 0.3)])
def test_filled_pixels_take_a_nearest_valid_value(height: int, width: int, density: float, wrap_x: bool) -> None:
    generator = torch.Generator().manual_seed(height * width)
    valid = torch.rand(height, width, generator=generator) < density
    valid[0, 0] = True
    index = nearest_valid_index(valid, wrap_x)
    rows, cols = index // width, index % width
    assert bool(valid[rows, cols].all())
    grid_rows, grid_cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    dx = (cols - grid_cols).abs()
    if wrap_x:
        dx = torch.minimum(dx, width - dx)
    found = (rows - grid_rows) ** 2 + dx**2
    exact = brute_force_distance(valid, wrap_x)
    # Jump flooding is approximate in theory; with the extra unit pass it is exact on these maps.
    assert torch.equal(found, exact)


def test_valid_pixels_keep_their_values_and_holes_are_filled() -> None:
    values = torch.zeros(2, 6, 6)
    values[:, 1, 1] = torch.tensor([1.0, 2.0])
    values[:, 4, 5] = torch.tensor([3.0, 4.0])
    valid = values[0] != 0
    filled = fill_nearest(values, valid)
    assert torch.equal(filled[:, valid], values[:, valid])
    assert torch.equal(filled[:, 0, 0], torch.tensor([1.0, 2.0]))
    assert torch.equal(filled[:, 5, 5], torch.tensor([3.0, 4.0]))


def test_wrapping_reaches_across_the_seam() -> None:
    values = torch.zeros(1, 3, 10)
    values[0, 1, 9] = 5.0
    values[0, 1, 4] = 1.0
    filled = fill_nearest(values, values[0] != 0, wrap_x=True)
    assert filled[0, 1, 0] == 5.0
    assert fill_nearest(values, values[0] != 0, wrap_x=False)[0, 1, 0] == 1.0


def test_an_empty_map_stays_empty() -> None:
    values = torch.zeros(3, 4, 4)
    assert torch.equal(fill_nearest(values, torch.zeros(4, 4, dtype=torch.bool)), values)
