"""The toy image bridges (wide crops, ambiguous transforms, blended layers) against the Bridge protocol's promises.

What is checked, per projection type (1-to-1, 1-to-n, n-to-1):
- g inverts f on the canonical elements that views see: exactly for selections (crops, permutations, nearest inner
  rotation, the mean of K equal images); for blended layers the iterative fit reaches the dense least-squares answer
  and the one-pass closed form does not;
- aggregation through the canonical space is a projection for selections (f(g(f(z))) = f(z), and f(g(.)) twice is
  f(g(.)) once) but not for blends;
- the initial noise has unit variance per element, and overlapping views start equal;
- coverage, backgrounds, transform conventions, and atomic PNG export.
"""

from __future__ import annotations

import math

import imageio.v3 as iio
import pytest
import torch

from sync_splat.bridges.base import Bridge
from sync_splat.bridges.plumbing import divide_sums
from sync_splat.errors import InputError
from sync_splat.studies.ambiguous_image import AmbiguousImageBridge
from sync_splat.studies.layered_image import LayeredImageBridge
from sync_splat.studies.wide_image import WideImageBridge, window_offsets

PERMUTATIONS = ("identity", "flip_h", "flip_v", "rot90", "rot180", "rot270")

# Selections: every view pixel copies one canonical element (the same one in every channel).
SELECTIONS = {
    "wide_crops": lambda: WideImageBridge(3, 8, 21, stride=2),
    "permutations": lambda: AmbiguousImageBridge(3, 8, views=PERMUTATIONS),
    "inner_rotate": lambda: AmbiguousImageBridge(3, 16, views=("identity", "inner_rotate")),
    "mean_of_4": lambda: AmbiguousImageBridge(3, 8, views=("identity", "rot90", "inner_rotate"), num_images=4),
}
BLENDS = {"layers": lambda: LayeredImageBridge(3, 8, 8, num_views=4, num_layers=3, iterations=100)}
BRIDGES = {**SELECTIONS, **BLENDS}


def consistent_canonical(bridge, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A canonical value g can recover: any z, except that for the mean of K images all K are equal."""
    z = torch.randn(bridge.canonical_shape, generator=generator, dtype=dtype)
    if isinstance(bridge, AmbiguousImageBridge) and bridge.num_images > 1:
        z = z[:1].expand_as(z).clone()
    return z


def consistent_views(bridge, z: torch.Tensor) -> torch.Tensor:
    """Views that agree with z under the sampler's compositing `f(z, background=x)`: f(z) where coverage is 1, the
    un-premultiplied render `W z / coverage` for blends."""
    return bridge.project(z) / bridge.coverage().to(z)


def sync(bridge, x: torch.Tensor) -> torch.Tensor:
    """One aggregation as the sampler does it: f(g(x)) over the views' own values."""
    return bridge.project(bridge.unproject(x), background=x)


def sampled(bridge, like: torch.Tensor) -> torch.Tensor:
    """Canonical elements that some view reads (the denominator of g is positive), broadcast like z."""
    den = bridge.unproject_sums(torch.zeros(bridge.num_views, *bridge.instance_shape, dtype=like.dtype))[1]
    return (den > 0).expand_as(like)


@pytest.mark.parametrize("name", BRIDGES)
def test_bridges_follow_the_protocol(name: str) -> None:
    bridge = BRIDGES[name]()
    assert isinstance(bridge, Bridge)
    assert bridge.linear is True
    n, (c, h, w) = bridge.num_views, bridge.instance_shape
    x = bridge.project(torch.zeros(bridge.canonical_shape))
    assert x.shape == (n, c, h, w)
    assert bridge.unproject(x).shape == bridge.canonical_shape
    assert bridge.coverage().shape == (n, 1, h, w)
    assert bridge.conditions().prompt_suffixes == ("",) * n
    num, den = bridge.unproject_sums(x)
    assert num.ndim == den.ndim and (den >= 0).all()


@pytest.mark.parametrize("name", SELECTIONS)
def test_g_inverts_f_on_sampled_elements_of_selections(name: str) -> None:
    bridge = SELECTIONS[name]()
    z = consistent_canonical(bridge, torch.Generator().manual_seed(0))
    recovered = bridge.unproject(bridge.project(z))
    seen = sampled(bridge, z)
    torch.testing.assert_close(recovered[seen], z[seen], rtol=1e-12, atol=1e-12)
    assert (recovered[~seen] == 0).all()


def test_inner_rotate_is_one_to_n() -> None:
    """Nearest sampling of a 45-degree turn reads some canonical elements twice and some never: the view duplicates
    values, and on its own it cannot give the unread elements back."""
    bridge = AmbiguousImageBridge(1, 16, views=("inner_rotate",))
    den = bridge.unproject_sums(torch.zeros(1, 1, 16, 16))[1]
    assert (den > 1).any() and (den == 0).any()
    z = torch.randn(bridge.canonical_shape, generator=torch.Generator().manual_seed(1))
    recovered = bridge.unproject(bridge.project(z))
    assert not torch.allclose(recovered, z)
    torch.testing.assert_close(recovered[den > 0], z[den > 0])


@pytest.mark.parametrize("name", SELECTIONS)
def test_aggregation_is_a_projection_for_selections(name: str) -> None:
    """f(g(f(z))) = f(z), and for views that disagree f(g(f(g(x)))) = f(g(x)). This holds for the 1-to-n inner
    rotation too: g is least squares (scatter-add over counts), so g(f(z)) = z on every element f reads."""
    bridge = SELECTIONS[name]()
    generator = torch.Generator().manual_seed(2)
    x = bridge.project(consistent_canonical(bridge, generator))
    torch.testing.assert_close(sync(bridge, x), x, rtol=1e-12, atol=1e-12)
    disagreeing = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    once = sync(bridge, disagreeing)
    assert not torch.allclose(once, disagreeing)
    torch.testing.assert_close(sync(bridge, once), once, rtol=1e-12, atol=1e-12)


def test_aggregation_is_not_a_projection_for_blends() -> None:
    bridge = BLENDS["layers"]()
    generator = torch.Generator().manual_seed(3)
    x = consistent_views(bridge, consistent_canonical(bridge, generator))
    torch.testing.assert_close(sync(bridge, x), x, rtol=1e-6, atol=1e-6)
    disagreeing = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    once = sync(bridge, disagreeing)
    assert (sync(bridge, once) - once).abs().max() > 1e-2


def dense_least_squares(bridge: LayeredImageBridge, x: torch.Tensor) -> torch.Tensor:
    """argmin_c sum_v ||W_v c - coverage_v x_v||^2 with W built column by column from `project`."""
    size = math.prod(bridge.canonical_shape)
    columns = [bridge.project(e.reshape(bridge.canonical_shape)).flatten() for e in torch.eye(size, dtype=x.dtype)]
    target = (bridge.coverage().to(x) * x).flatten()
    return torch.linalg.lstsq(torch.stack(columns, dim=1), target[:, None]).solution.reshape(bridge.canonical_shape)


def test_layered_iterative_fit_reaches_least_squares_and_closed_form_does_not() -> None:
    bridge = LayeredImageBridge(2, 5, 5, num_views=4, num_layers=3, fit="iterative", iterations=100)
    x = torch.randn(bridge.num_views, *bridge.instance_shape, generator=torch.Generator().manual_seed(4)).double()
    expected = dense_least_squares(bridge, x)
    torch.testing.assert_close(bridge.unproject(x), expected, rtol=1e-7, atol=1e-7)

    closed_form = LayeredImageBridge(2, 5, 5, num_views=4, num_layers=3, fit="closed_form").unproject(x)
    assert (closed_form - expected).abs().max() > 0.1
    few_steps = LayeredImageBridge(2, 5, 5, num_views=4, num_layers=3, iterations=3).unproject(x)
    assert (few_steps - expected).norm() < (closed_form - expected).norm()


def test_layered_closed_form_is_least_squares_for_one_layer() -> None:
    bridge = LayeredImageBridge(2, 5, 5, num_views=3, num_layers=1, fit="closed_form")
    x = torch.randn(bridge.num_views, *bridge.instance_shape, generator=torch.Generator().manual_seed(5)).double()
    torch.testing.assert_close(bridge.unproject(x), dense_least_squares(bridge, x), rtol=1e-9, atol=1e-9)


def test_layered_fit_recovers_the_layers_of_consistent_views_and_keeps_a_converged_warm_start() -> None:
    bridge = BLENDS["layers"]()
    z = consistent_canonical(bridge, torch.Generator().manual_seed(6))
    x = consistent_views(bridge, z)
    torch.testing.assert_close(bridge.project(z, background=x), x)
    torch.testing.assert_close(bridge.unproject(x), z, rtol=1e-6, atol=1e-6)
    warm = LayeredImageBridge(3, 8, 8, num_views=4, num_layers=3, iterations=3)
    torch.testing.assert_close(warm.unproject(x, previous=z), z, rtol=1e-9, atol=1e-9)


def test_divide_sums_falls_back_to_the_warm_start_where_no_view_contributes() -> None:
    num, den = torch.tensor([2.0, 5.0]), torch.tensor([2.0, 0.0])
    assert divide_sums(num, den).tolist() == [1.0, 0.0]
    assert divide_sums(num, den, previous=torch.tensor([9.0, 7.0])).tolist() == [1.0, 7.0]


def per_element_variance(bridge, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    samples = [bridge.initial_noise(generator) for _ in range(draws)]
    z = torch.stack([s[0] for s in samples])
    x = torch.stack([s[1] for s in samples])
    return z.var(dim=0), x.var(dim=0)


@pytest.mark.parametrize("name", BRIDGES)
def test_initial_noise_has_unit_variance_per_element(name: str) -> None:
    bridge = BRIDGES[name]()
    draws = 2000
    z_variance, x_variance = per_element_variance(bridge, draws)
    # The variance of 2000 draws has a standard error of sqrt(2 / 2000) ~ 0.03; the maximum runs over ~10^3 elements.
    for variance in (z_variance, x_variance):
        assert abs(variance.mean().item() - 1) < 0.02
        assert (variance - 1).abs().max() < 0.15


def test_mean_of_images_loses_variance_without_the_shared_completion() -> None:
    """What the canonical cases see in the n-to-1 setting: f(z_T) has variance 1/K; x_T restores 1."""
    bridge = AmbiguousImageBridge(1, 4, views=("identity",), num_images=4)
    generator = torch.Generator().manual_seed(8)
    draws = [bridge.initial_noise(generator) for _ in range(4000)]
    projected = torch.stack([bridge.project(z_T) for z_T, _ in draws])
    assert abs(projected.var().item() - 1 / 4) < 0.02
    assert abs(torch.stack([x_T for _, x_T in draws]).var().item() - 1) < 0.05


@pytest.mark.parametrize("name", SELECTIONS)
def test_initial_noise_views_are_views_of_one_canonical(name: str) -> None:
    bridge = SELECTIONS[name]()
    z_T, x_T = bridge.initial_noise(torch.Generator().manual_seed(9))
    torch.testing.assert_close(sync(bridge, x_T), x_T)
    if not (isinstance(bridge, AmbiguousImageBridge) and bridge.num_images > 1):
        torch.testing.assert_close(x_T, bridge.project(z_T))


def test_wide_initial_noise_overlaps_are_equal() -> None:
    bridge = WideImageBridge(4, 16, 40)
    _, x_T = bridge.initial_noise(torch.Generator().manual_seed(10))
    for view in range(bridge.num_views - 1):
        shift = bridge.offsets[view + 1] - bridge.offsets[view]
        assert torch.equal(x_T[view, ..., shift:], x_T[view + 1, ..., : 16 - shift])


def test_layered_initial_noise_is_the_projection_plus_independent_completion() -> None:
    bridge = LayeredImageBridge(1, 6, 6, num_views=3, num_layers=2)
    generator = torch.Generator().manual_seed(11)
    residuals = torch.stack([x - bridge.project(z) for z, x in (bridge.initial_noise(generator) for _ in range(3000))])
    expected = 1 - (bridge.weights**2).sum(dim=1)
    assert (residuals.var(dim=0) - expected).abs().max() < 0.12
    # Independent per view: two views' completions are uncorrelated.
    correlation = torch.corrcoef(residuals[:, :2].flatten(2)[..., 0].T)[0, 1]
    assert abs(correlation) < 0.1


def test_wide_windows_follow_the_paper() -> None:
    bridge = WideImageBridge(4, 64, 384)
    assert bridge.stride == 8 and bridge.num_views == 41
    assert window_offsets(21, 8, 2)[-2:] == (12, 13)  # the last window is aligned to the right edge
    torch.testing.assert_close(bridge.coverage(), torch.ones(41, 1, 64, 64))


def test_selections_cover_every_pixel_and_ignore_the_background() -> None:
    for factory in SELECTIONS.values():
        bridge = factory()
        assert torch.equal(bridge.coverage(), torch.ones(bridge.num_views, 1, *bridge.instance_shape[1:]))
        z = torch.randn(bridge.canonical_shape)
        background = torch.randn(bridge.num_views, *bridge.instance_shape)
        assert torch.equal(bridge.project(z, background=background), bridge.project(z))


def test_layered_background_fills_the_uncovered_part() -> None:
    bridge = LayeredImageBridge(3, 8, 8, num_views=4, num_layers=3)
    coverage = bridge.coverage()
    assert coverage.shape == (4, 1, 8, 8) and (coverage > 0).all() and (coverage < 1).all()
    torch.testing.assert_close(coverage, bridge.weights.sum(dim=1))
    generator = torch.Generator().manual_seed(12)
    z = torch.randn(bridge.canonical_shape, generator=generator)
    background = torch.randn(4, 3, 8, 8, generator=generator)
    torch.testing.assert_close(bridge.project(torch.zeros_like(z), background=background), (1 - coverage) * background)
    torch.testing.assert_close(
        bridge.project(z, background=background), bridge.project(z) + (1 - coverage) * background
    )


def test_transform_conventions() -> None:
    marker = torch.zeros(1, 4, 4)
    marker[0, 0, 0] = 1  # top-left
    views = AmbiguousImageBridge(1, 4, views=PERMUTATIONS).project(marker)
    where = {name: tuple(torch.nonzero(view[0])[0].tolist()) for name, view in zip(PERMUTATIONS, views, strict=True)}
    assert where == {
        "identity": (0, 0),
        "flip_h": (0, 3),
        "flip_v": (3, 0),
        "rot90": (0, 3),  # clockwise: top-left goes to top-right
        "rot180": (3, 3),
        "rot270": (3, 0),
    }


def test_inner_rotate_turns_only_the_disc() -> None:
    z = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(13))
    whole = AmbiguousImageBridge(2, 16, views=("inner_rotate", "rot90"), inner_rotate_degrees=90, inner_radius=0.75)
    turned, rot90 = whole.project(z)
    assert torch.equal(turned, rot90)

    bridge = AmbiguousImageBridge(2, 16, views=("inner_rotate",))
    view = bridge.project(z)[0]
    coords = torch.arange(16) + 0.5 - 8
    outside = (coords[:, None] ** 2 + coords[None, :] ** 2) >= (0.375 * 16) ** 2
    assert torch.equal(view[:, outside], z[:, outside])
    assert not torch.equal(view[:, ~outside], z[:, ~outside])


def first_three_channels(x: torch.Tensor) -> torch.Tensor:
    return ((x[:, :3] + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize(
    ("bridge", "shape"),
    [
        (WideImageBridge(3, 8, 21), (8, 21, 3)),
        (WideImageBridge(4, 8, 21, decode=first_three_channels), (8, 21, 3)),
        (AmbiguousImageBridge(3, 8), (8, 8, 3)),
        (AmbiguousImageBridge(1, 8, num_images=3), (8, 24)),
        (LayeredImageBridge(4, 6, 7, num_layers=2, decode=first_three_channels), (6, 14, 3)),
    ],
    ids=["wide", "wide_latent", "ambiguous", "ambiguous_mean_of_3_grey", "layered_latent"],
)
def test_export_writes_a_png_atomically(bridge, shape, tmp_path) -> None:
    z = torch.rand(bridge.canonical_shape) * 2 - 1
    path = bridge.export(z, tmp_path / "out" / "image.png")
    assert path == tmp_path / "out" / "image.png"
    image = iio.imread(path)
    assert image.shape == shape and image.dtype.name == "uint8"
    assert [p.name for p in path.parent.iterdir()] == ["image.png"]


def test_export_refuses_a_name_that_is_not_png(tmp_path) -> None:
    bridge = WideImageBridge(3, 8, 16)
    with pytest.raises(InputError, match=r"\.png"):
        bridge.export(torch.zeros(bridge.canonical_shape), tmp_path / "image.jpg")
    assert list(tmp_path.iterdir()) == []


def test_unknown_view_transform_is_refused() -> None:
    with pytest.raises(InputError, match="rot45"):
        AmbiguousImageBridge(3, 8, views=("identity", "rot45"))
