"""The splat fit's memory (`sync_splat.bridges.splat_memory`) and its leaner fits, on the demo teapot (5,000 Gaussians)
at 40 x 40 pixels.

What is checked:
- the prediction made from a few sampled views against the bytes the built system's weights take (within 25 %), and
  its weights per covered pixel against the built system's;
- the storage "auto" picks against a budget (stored, then compact, then matrix-free, saying so), and the one-line
  refusals when nothing fits or the storage asked for does not;
- the compact (float16) and matrix-free fits against the stored one: within 0.05 dB of its PSNR, the matrix-free one
  also the same colours up to rounding; the matrix-free bridge's coverage, depth conditions and starting noise are the
  stored bridge's, and the sampler runs through it;
- on CUDA only: the gsplat matrix-free products against the stored fit.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch

from sync_splat.apps.restyle import orbit_cameras
from sync_splat.bridges import splat_memory
from sync_splat.bridges.splat import GaussianSplatBridge, SplatBridgeConfig
from sync_splat.bridges.splat_memory import COMPACT_DTYPE, free_memory
from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.errors import InputError
from sync_splat.sampler import SyncConfig, SyncSampler
from sync_splat.scene.demo import make_demo_scene

SIZE = 40
VIEWS = 6
PLENTY_GB = 1e6  # a budget every storage fits


@functools.cache
def prior() -> GaussianTexturePrior:
    return GaussianTexturePrior.from_prompt("marble", native_size=SIZE)


@functools.cache
def bridge(**config) -> GaussianSplatBridge:  # noqa: ANN003
    scene = make_demo_scene()
    return SplatBridgeConfig(**config).setup(prior(), scene, orbit_cameras(scene, VIEWS - 1, SIZE, 50.0))


def disagreeing_views(seed: int = 0) -> torch.Tensor:
    """The sampler's kind of views: random colours rendered over white plus pixel noise (no colouring explains them)."""
    stored = bridge(storage="stored")
    generator = torch.Generator().manual_seed(seed)
    colours = 0.1 + 0.8 * torch.rand(stored.canonical_shape, generator=generator)
    rgb01 = prior().decode(stored.project(colours))
    noisy = rgb01 + 0.05 * torch.randn(rgb01.shape, generator=generator)
    return prior().encode(noisy.clamp(0, 1))


def fit_psnr(z: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR of the fit's renders against the views' covered content, both with the stored (exact) weights."""
    system = bridge(storage="stored").linear_system("image")
    content = system.alpha * prior().decode(x)
    return -10 * math.log10(float((system.render(z) - content).square().mean()))


# ---- the prediction ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["stored", "compact"])
@pytest.mark.parametrize("solver_cutoff", [0.0, 1e-3])
def test_the_memory_model_predicts_the_bytes_of_the_stored_weights(storage: str, solver_cutoff: float) -> None:
    """Sampled on 3 of 6 views, the predicted weights (W, W^T or the pruned copies, CSR) come within 25 % of the
    bytes the built system holds (3 % here), the weights per covered pixel too, and the assembled A stays under its
    predicted bound."""
    splat = bridge(storage=storage, solver_cutoff=solver_cutoff, normal_matrix="assembled", memory_budget_gb=PLENTY_GB)
    system = splat.linear_system("image")
    predicted = splat.memory_plan.chosen
    assert predicted.storage == storage == system.storage
    assert abs(predicted.weights / system.weight_bytes - 1) <= 0.25
    sample = splat.memory_plan.samples[0]
    assert sample.sampled_views == 3
    measured_per_pixel = system.nnz / float((system.alpha > 0).sum())
    assert abs(sample.weights_per_covered_pixel / measured_per_pixel - 1) <= 0.25
    system.normal_matrix()
    assert 0 < system.normal_matrix_bytes <= predicted.normal_matrix


def test_compact_weights_take_float16_values_and_matrix_free_ones_nothing() -> None:
    stored = bridge(storage="stored").linear_system("image")
    compact = bridge(storage="compact").linear_system("image")
    matrix_free = bridge(storage="matrix_free").linear_system("image")
    assert all(shard.weights.values().dtype == COMPACT_DTYPE for shard in compact.shards)
    assert compact.nnz == stored.nnz and compact.weight_bytes < 0.85 * stored.weight_bytes
    assert matrix_free.weight_bytes == 0 and bridge(storage="matrix_free").memory_plan.chosen.weights == 0


# ---- choosing against a budget -----------------------------------------------------------------------------------


def peaks() -> dict[str, int]:
    plan = bridge(views_per_shard=1, memory_budget_gb=PLENTY_GB).memory_plan
    return {option.storage: option.peak for option in plan.options}


def between(low: int, high: int) -> float:
    return (low + high) / 2 / 2**30


def test_auto_storage_takes_the_first_that_fits_the_budget_and_says_so() -> None:
    peak = peaks()
    assert peak["stored"] > peak["compact"] > peak["matrix_free"]  # one view per shard: the leaner, the smaller
    plenty = bridge(views_per_shard=1, memory_budget_gb=PLENTY_GB)
    assert plenty.memory_plan.storage == "stored" and plenty.linear_system("image").storage == "stored"
    summary = plenty.memory_plan.summary()
    assert "\n" not in summary and f"{VIEWS} views of {SIZE} x {SIZE}" in summary and summary.endswith(": stored")

    scene, cameras = make_demo_scene(), orbit_cameras(make_demo_scene(), VIEWS - 1, SIZE, 50.0)
    for budget, expected in [(between(peak["compact"], peak["stored"]), "compact"),
                             (between(peak["matrix_free"], peak["compact"]), "matrix_free")]:  # fmt: skip
        config = SplatBridgeConfig(views_per_shard=1, memory_budget_gb=budget)
        with pytest.warns(UserWarning, match=f"over the budget .*: using {expected.replace('_', '-')} weights"):
            splat = config.setup(prior(), scene, cameras)
        assert splat.memory_plan.storage == expected == splat.linear_system("image").storage


def test_nothing_that_fits_is_refused_in_one_line_with_the_numbers() -> None:
    peak = peaks()
    scene, cameras = make_demo_scene(), orbit_cameras(make_demo_scene(), VIEWS - 1, SIZE, 50.0)
    too_little = 0.5 * peak["matrix_free"] / 2**30
    with pytest.raises(InputError) as refused:
        SplatBridgeConfig(views_per_shard=1, memory_budget_gb=too_little).setup(prior(), scene, cameras)
    message = str(refused.value)
    assert "\n" not in message and "fewer views" in message and "smaller image size" in message
    assert f"{peak['matrix_free'] / 2**30:.2f} GiB" in message and f"{too_little:.2f} GiB" in message
    # A storage asked for by name is refused as well when it does not fit, pointing at "auto".
    below_stored = between(peak["compact"], peak["stored"])
    with pytest.raises(InputError, match="storage='stored'.*storage='auto'"):
        SplatBridgeConfig(views_per_shard=1, storage="stored", memory_budget_gb=below_stored).setup(
            prior(), scene, cameras
        )


def test_without_a_budget_the_fit_takes_the_free_memory_less_the_denoisers_reserve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    free, what = free_memory(torch.device("cpu"))
    assert free is not None and free > 0 and what == "available memory"
    # The plan reads the free memory again; other programs change it, so it sees a fixed amount here.
    monkeypatch.setattr(splat_memory, "free_memory", lambda device: (12 * 2**30, "available memory"))
    plan = bridge().memory_plan
    assert "available memory less" in plan.budget_source
    assert plan.budget == 12 * 2**30 - splat_memory.DENOISER_RESERVE_BYTES and plan.storage == "stored"


@pytest.mark.parametrize("settings", [{"memory_budget_gb": 0.0}, {"memory_budget_gb": -1.0},
                                      {"memory_budget_gb": float("nan")}, {"storage": "disk"}])  # fmt: skip
def test_bad_memory_settings_are_refused(settings: dict) -> None:
    with pytest.raises(InputError, match="SplatBridgeConfig"):
        SplatBridgeConfig(**settings)


# ---- leaner fits, same answer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["compact", "matrix_free"])
def test_leaner_fits_are_within_0_05_db_of_the_stored_fit(storage: str) -> None:
    """Cold and warm fits of views that disagree (the sampler's kind): the compact fit's PSNR is within 0.05 dB of the
    stored fit's (0.0001 dB here), the matrix-free fit's too and with the same colours up to rounding."""
    x, nudged = disagreeing_views(0), disagreeing_views(1)
    stored, lean = bridge(storage="stored"), bridge(storage=storage)
    cold, lean_cold = stored.unproject(x), lean.unproject(x)
    warm, lean_warm = stored.unproject(nudged, previous=cold), lean.unproject(nudged, previous=lean_cold)
    for exact, ours, views in [(cold, lean_cold, x), (warm, lean_warm, nudged)]:
        assert abs(fit_psnr(ours, views) - fit_psnr(exact, views)) <= 0.05
        if storage == "matrix_free":
            torch.testing.assert_close(ours, exact, rtol=0, atol=1e-3)


def test_the_matrix_free_bridge_sees_what_the_stored_one_sees() -> None:
    """Coverage, depth conditions and both starting noises (square-root weights and integral) agree with the stored
    bridge's, and the sampler runs through it to the stored bridge's answer."""
    for noise in ("sqrt_weights", "integral"):
        stored, matrix_free = bridge(storage="stored", noise=noise), bridge(storage="matrix_free", noise=noise)
        torch.testing.assert_close(matrix_free.coverage(), stored.coverage(), rtol=0, atol=1e-5)
        torch.testing.assert_close(matrix_free.conditions().depth, stored.conditions().depth, rtol=0, atol=1e-4)
        ours = matrix_free.initial_noise(torch.Generator().manual_seed(0))
        theirs = stored.initial_noise(torch.Generator().manual_seed(0))
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    config = dataclasses.replace(SyncConfig.case(2), num_steps=3)
    results = [
        SyncSampler(prior(), bridge(storage=storage), config).sample(torch.Generator().manual_seed(0))
        for storage in ("stored", "matrix_free")
    ]
    torch.testing.assert_close(results[1].z, results[0].z, rtol=0, atol=1e-3)


@pytest.mark.gpu
def test_the_gsplat_matrix_free_fit_matches_the_stored_one_on_cuda() -> None:
    """gsplat's forward and backward passes as W and W^T (every weight: gsplat cannot prune) against the stored fit
    without a cutoff: within 0.05 dB."""
    scene = make_demo_scene().to("cuda")
    cameras = orbit_cameras(scene, VIEWS - 1, SIZE, 50.0).to("cuda")
    x = disagreeing_views(0).to("cuda")
    fits = {}
    for storage in ("stored", "matrix_free"):
        splat = SplatBridgeConfig(storage=storage, solver_cutoff=0.0).setup(prior(), scene, cameras)
        if storage == "matrix_free":
            assert splat.linear_system("image").backend == "gsplat"
        fits[storage] = splat.unproject(x).cpu()
    x = x.cpu()
    assert abs(fit_psnr(fits["matrix_free"], x) - fit_psnr(fits["stored"], x)) <= 0.05
