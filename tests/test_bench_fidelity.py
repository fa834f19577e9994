"""The fidelity oracle: its statistics, its benchmark at a tiny size (RESULT parsed), and a check that the oracle
itself is right: a sampler that is exact in the limit (many ancestral steps, a schedule that ends in pure noise)
reproduces the prior's statistics through it, within sampling error."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from sync_splat.bridges.mesh import MeshBridgeConfig
from sync_splat.bridges.panorama import PanoramaBridgeConfig
from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.functional.diffusion import NoiseSchedule
from sync_splat.sampler import SyncConfig, SyncSampler
from sync_splat.studies.fidelity import (
    band_powers,
    component_fractions,
    lag_correlation,
    masked_std,
    texel_shared_correlation,
)
from sync_splat.studies.wide_image import WideImageBridge

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_bench():
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("bench_fidelity", SCRIPTS / "bench_fidelity.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def test_statistics_see_what_they_measure() -> None:
    generator = torch.Generator().manual_seed(0)
    white = torch.randn(8, 3, 32, 32, generator=generator)
    mask = torch.ones(8, 1, 32, 32, dtype=torch.bool)
    assert masked_std(2 * white, mask) == pytest.approx(2.0, rel=0.02)
    assert lag_correlation(white, mask) < 0.03
    smooth = white + white.roll(1, dims=-1)  # neighbours share half their value: correlation 0.5
    assert lag_correlation(smooth, mask) == pytest.approx(0.5, abs=0.05)
    flat = band_powers(white, mask)
    blurred = band_powers(torch.nn.functional.avg_pool2d(white, 3, stride=1, padding=1), mask)
    assert (blurred / flat)[-1] < 0.2 * (blurred / flat)[0]  # blur removes the finest band first
    half = mask.clone()
    half[..., 16:] = False
    assert band_powers(white, half) / flat == pytest.approx(torch.ones(4, dtype=torch.float64), rel=0.15)


def test_texel_sharing_is_one_for_one_noise_seen_twice_and_zero_for_independent_views() -> None:
    bridge = WideImageBridge(2, 8, 24, stride=4)  # five windows, each overlapping the next by half
    generator = torch.Generator().manual_seed(0)
    consistent = torch.stack([bridge.initial_noise(generator)[1] for _ in range(4)])
    assert texel_shared_correlation(consistent, bridge) == pytest.approx(1.0)
    independent = torch.randn(consistent.shape, generator=generator)
    assert abs(texel_shared_correlation(independent, bridge)) < 0.1
    half = (consistent + independent) / 2**0.5  # half of each view's variance shared
    assert texel_shared_correlation(half, bridge) == pytest.approx(0.5, abs=0.1)
    apart = WideImageBridge(2, 8, 24, stride=8)
    assert texel_shared_correlation(apart.initial_noise(generator)[1][None], apart) is None  # no two views overlap


def test_an_exact_sampler_reproduces_the_prior_through_the_oracle() -> None:
    """250 ancestral steps on the linear schedule (which ends in nearly pure noise) sample the prior almost exactly:
    the oracle must then report ratios of 1 within sampling error, and the mixture's weights."""
    prior = GaussianTexturePrior.from_prompt("camouflage", schedule=NoiseSchedule.linear(), max_batch=64)
    size, views = 16, 48
    bridge = WideImageBridge(3, size, views * size, stride=size)  # 48 independent windows: a 1:1 control
    sampler = SyncSampler(prior, bridge, SyncConfig(num_steps=250, method="ddpm", aggregate="none"))
    x = sampler.sample(torch.Generator().manual_seed(0)).x
    reference = prior.sample(256, size, size, torch.Generator().manual_seed(1))
    mask = torch.ones(views, 1, size, size, dtype=torch.bool)
    reference_mask = torch.ones(256, 1, size, size, dtype=torch.bool)
    assert masked_std(x, mask) / masked_std(reference, reference_mask) == pytest.approx(1.0, abs=0.12)
    ratios = band_powers(x, mask) / band_powers(reference, reference_mask)
    assert ratios.tolist() == pytest.approx([1.0] * 4, abs=0.25)
    fractions = component_fractions(prior, x)
    error = 3 * (prior.weights.double() * (1 - prior.weights.double()) / views).sqrt()  # 3 binomial sigmas
    assert ((fractions - prior.weights.double()).abs() <= error).all()


def test_the_oracle_judges_what_a_viewer_shows_unless_asked_for_raw_values() -> None:
    """A Gaussian texture exceeds the valid colours (15 % of marble's pixels); a result held to them, as a scene of
    RGB colours is, shows a viewer everything the prior's samples show, so in image space (the default) the oracle
    finds nothing missing, while the raw values miss the excess."""
    bench = load_bench()
    prior = GaussianTexturePrior.from_prompt("marble")
    samples = prior.sample(64, 16, 16, torch.Generator().manual_seed(0))
    held_to_colours = prior.encode(prior.decode(samples))
    reference = prior.sample(256, 16, 16, torch.Generator().manual_seed(1))
    masks = torch.ones(64, 1, 16, 16, dtype=torch.bool)
    image_std, image_bands = bench.FidelityBench().ratios(held_to_colours, masks, reference)
    raw_std, raw_bands = bench.FidelityBench(seen_as="denoiser").ratios(held_to_colours, masks, reference)
    assert image_std == pytest.approx(1.0, abs=0.05) and image_bands == pytest.approx([1.0] * 4, abs=0.15)
    assert raw_std < 0.92 and min(raw_bands) < 0.85


@pytest.mark.parametrize("preset", ["marble", "stripes"])
def test_the_product_sampler_on_the_control_is_exact_ddim(preset: str) -> None:
    """Nothing is averaged in the control, so SyncTweedies with the product's settings (30 steps on its timesteps) is
    DDIM with the prior's posterior mean: every window ends where the closed form says DDIM takes its own starting
    noise, so the control's gap to the prior is DDIM's on this schedule."""
    prior = GaussianTexturePrior.from_prompt(preset)
    size, views = 16, 6
    sampler = SyncSampler(prior, WideImageBridge(3, size, views * size, stride=size), SyncConfig())
    state = sampler.init(torch.Generator().manual_seed(0))
    start = state.x_t.clone()
    while state.step_index < sampler.num_steps:
        state = sampler.step(state)
    delivered = sampler.finish(state).x
    exact = prior.ddim(start.double(), sampler.schedule.alpha_bars(sampler.num_steps))
    torch.testing.assert_close(delivered.double(), exact, atol=1e-4, rtol=0)
    assert float(exact.std()) > 0.2  # a texture, not the mean colour


def test_the_benchmark_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_bench()
    one_view_runs = []
    measure_one_view = bench.FidelityBench.one_view_ratios
    monkeypatch.setattr(
        bench.FidelityBench, "one_view_ratios", lambda *args: one_view_runs.append(1) or measure_one_view(*args)
    )
    settings = bench.FidelityBench(
        bridges=("splat-demo", "wide-control"), presets=("marble",), seeds=1, steps=2, size=16, splat_views=6,
        splat_noise=("integral", "sqrt_weights"), prior_samples=4,
    )  # fmt: skip
    settings.main()
    out = capsys.readouterr().out
    first, exact_ddim = out.split(bench.FidelityBench.EXACT_DDIM_HEADER)
    rows = [line for line in first.splitlines() if line.startswith("| splat-demo") or line.startswith("| wide")]
    assert len(rows) == 2 * 3  # printed as they come, then in the table
    result = re.fullmatch(r"RESULT (.*)", out.strip().splitlines()[-1]).group(1)
    values = {key: float(value) for key, value in (item.split("=") for item in result.split())}
    keys = {
        "worst_std_ratio", "worst_band_ratio", "heldout_worst_std_ratio", "noise_lag1", "noise_shared",
        "control_worst_ratio", "worst_vs_exact_ddim", "control_vs_exact_ddim",
    }  # fmt: skip
    assert keys <= set(values)
    assert all(math.isfinite(values[key]) and values[key] >= 0 for key in keys)
    header = [cell.strip() for cell in bench.FidelityBench.HEADER.splitlines()[0].split("|")]
    cells = {line.split("|")[3].strip(): [cell.strip() for cell in line.split("|")] for line in rows[:2]}
    assert float(cells["sqrt_weights"][header.index("lag1")]) > 0.3  # the official noise is visibly correlated
    assert float(cells["integral"][header.index("lag1")]) < 0.1
    assert float(cells["sqrt_weights"][header.index("shared")]) > 0.5  # one value per Gaussian, in every view
    assert float(cells["integral"][header.index("shared")]) > 0.0  # weaker: tests/bridges/test_splat_noise.py
    one_view = header.index("one-view b3")
    assert cells["integral"][one_view : one_view + 2] == cells["sqrt_weights"][one_view : one_view + 2]
    assert len(one_view_runs) == 1  # once for the splat bridge and preset, whatever the noise
    g_keeps = header.index("g keeps")
    control = next(line for line in rows if line.startswith("| wide")).split("|")
    assert float(control[g_keeps]) == pytest.approx(1.0, abs=1e-6)  # windows side by side: nothing averaged
    assert float(cells["integral"][g_keeps]) < 0.95  # splat views overlap: g averages what they disagree on
    exact_ddim = [line.split("|") for line in exact_ddim.splitlines() if line.startswith("| ")]
    assert [cells[1].strip() for cells in exact_ddim] == ["splat-demo", "splat-demo", "wide-control"]
    assert all(len(cells) == 15 for cells in exact_ddim)  # bridge, preset, noise, 5 exact DDIM ratios, 5 over them


def test_one_view_bridges_see_what_their_instance_view_sees(shared_fixture) -> None:  # noqa: ANN001
    """The one-view ceiling of the mesh and the panorama fits each instance view alone: the same camera (the panorama
    at yaw 0, its grid being the same at every yaw), the same pixels."""
    bench = load_bench()
    shared_fixture("clutch_bag.obj")
    settings = bench.FidelityBench(size=16)
    prior = settings.prior("marble")
    mesh = settings.setting(prior, "mesh-clutch", "default")
    for view in (0, mesh.instance.num_views - 1):  # a ring view and a top view
        alone = mesh.one_view(view)
        assert alone.num_views == 1
        torch.testing.assert_close(alone.cameras.c2w[0], mesh.instance.cameras.c2w[view])
        torch.testing.assert_close(alone.coverage()[0], mesh.instance.coverage()[view])
    panorama = settings.setting(prior, "panorama-text", "default")
    first_ring, pole = panorama.one_view(0), panorama.one_view(panorama.instance.num_views - 1)
    assert first_ring.num_views == pole.num_views == 1
    assert first_ring.canonical_shape == panorama.instance.canonical_shape
    torch.testing.assert_close(first_ring.axes[0], panorama.instance.axes[0])
    torch.testing.assert_close(pole.axes[0][:, 2], panorama.instance.axes[-1][:, 2])  # looking the same way


def test_the_control_schedule_and_spacing_options_reach_the_run() -> None:
    bench = load_bench()
    default = bench.FidelityBench(size=16)
    assert float(default.prior("marble").schedule.alphas_cumprod[-1]) > 4e-3  # Stable Diffusion's schedule
    prior = bench.FidelityBench(size=16, prior_schedule="linear").prior("marble")
    assert float(prior.schedule.alphas_cumprod[-1]) < 1e-4
    control = default.setting(prior, "wide-control", "default").instance
    assert control.num_views == bench.CONTROL_WINDOWS  # windows side by side: nothing averaged
    overlapping = bench.FidelityBench(size=16, control_stride=8).setting(prior, "wide-control", "default").instance
    assert overlapping.num_views == 2 * bench.CONTROL_WINDOWS - 1
    first = {
        spacing: SyncSampler(prior, control, bench.FidelityBench(timestep_spacing=spacing).sync_config("default"))
        for spacing in ("trailing", "model")
    }  # fmt: skip
    assert first["trailing"].timesteps[0] == 999
    assert first["model"].timesteps[0] == prior.schedule.timesteps(30)[0] < 999


def test_unknown_bridges_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    with pytest.raises(SystemExit) as stop:
        bench.entrypoint(["--bridges", "teapot"])
    assert stop.value.code == 2
    assert "unknown ['teapot']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        bench.entrypoint(["--bridges", "wide-control", "--control-stride", "0"])
    assert stop.value.code == 2
    assert "--control-stride must be in 1..--size (64), got 0" in capsys.readouterr().err


def test_mixtures_are_compared_with_prior_samples_of_the_delivered_components(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A few seeds are a few draws of a mixture's components: the reference statistics are drawn with the delivered
    views' component fractions (the held-out views' with theirs), and single-component presets with the prior's own."""
    bench = load_bench()
    settings = bench.FidelityBench(seeds=1, steps=2, size=16, prior_samples=4)
    drawn = []
    sample = GaussianTexturePrior.sample

    def recording(prior, num, h, w, generator=None, dtype=torch.float32, weights=None):  # noqa: ANN001, ANN202
        if num == settings.prior_samples:
            drawn.append(weights)
        return sample(prior, num, h, w, generator, dtype, weights)

    monkeypatch.setattr(GaussianTexturePrior, "sample", recording)
    mixture = settings.prior("camouflage")
    row = settings.measure(mixture, "camouflage", "wide-control", "default")
    assert len(drawn) == 2 and all(weights is not None for weights in drawn)
    assert all(float(weights.sum()) == pytest.approx(1.0) for weights in drawn)
    assert row.mix == pytest.approx(float((drawn[0] - mixture.weights.double()).abs().max()))
    drawn.clear()
    settings.measure(settings.prior("marble"), "marble", "wide-control", "default")
    assert drawn == [None, None]


def test_back_projection_steps_reach_the_mesh_and_the_panorama(shared_fixture) -> None:  # noqa: ANN001
    bench = load_bench()
    shared_fixture("clutch_bag.obj")
    for steps in (None, 0, 2):
        settings = bench.FidelityBench(size=16, back_projection_steps=steps)
        prior = settings.prior("marble")
        defaults = {"mesh-clutch": MeshBridgeConfig(), "panorama-text": PanoramaBridgeConfig()}
        for name, default in defaults.items():
            expected = default.back_projection_steps if steps is None else steps
            setting = settings.setting(prior, name, "default")
            assert setting.instance.config.back_projection_steps == expected
            assert setting.held_out.config.back_projection_steps == expected
