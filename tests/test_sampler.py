"""SyncSampler: exact identities between the paper's cases, checked with small dense linear bridges.

The identities hold for ANY denoiser, so a cheap nonlinear fake one makes them strict tests:
- one view and an identity bridge: every case is plain DDIM (compared with diffusers' own loop);
- consistent initial noise and a linear f: case 1 equals case 4 and case 2 equals case 5 in instance space;
- moreover f(g(f(z))) = f(z): every case follows the same trajectory.
"""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler

from sync_splat.bridges.base import Bridge
from sync_splat.conditions import ViewConditions
from sync_splat.denoisers.base import Denoiser
from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.errors import InputError
from sync_splat.functional.diffusion import NoiseSchedule
from sync_splat.sampler import PAPER_CASES, SamplerState, SyncConfig, SyncSampler
from sync_splat.studies.fidelity import band_powers

C, H, W = 2, 4, 4
PIXELS = C * H * W


class NonlinearDenoiser:
    """A deterministic, nonlinear, spatially mixing stand-in for a network (no view coupling)."""

    latent_channels, downsample, native_size, max_batch = C, 1, H, 8

    def __init__(self) -> None:
        self.schedule = NoiseSchedule.scaled_linear()

    def encode(self, rgb01):
        return rgb01 * 2 - 1

    def decode(self, x):
        return (x + 1) / 2

    def predict_eps(self, x_t, t, cond):
        assert len(cond.prompt_suffixes) == x_t.shape[0]
        mixed = 0.7 * x_t + 0.3 * torch.roll(x_t, 1, dims=-1) - 0.2 * torch.roll(x_t, 1, dims=-2).flip(1)
        return torch.tanh(mixed) * (0.5 + t / 1000)


class DenseLinearBridge:
    """f_i(z) = P_i z with dense matrices; g is least squares or the normalised adjoint (a per-element average).

    The normalised adjoint is what crops, nearest rotations and texture baking use; it is not a left inverse of f
    when f duplicates elements unevenly, which breaks f(g(f(z))) = f(z).
    """

    linear = True

    def __init__(self, projections: torch.Tensor, g: str = "least_squares") -> None:
        self.P = projections.double()  # [N, PIXELS, D]
        self.num_views = projections.shape[0]
        self.canonical_shape = (projections.shape[2],)
        self.instance_shape = (C, H, W)
        self.g = g

    def project(self, z, background=None):
        x = torch.einsum("npd,d->np", self.P, z.double()).float()
        return x.reshape(self.num_views, C, H, W)

    def unproject(self, x, previous=None):
        flat = x.reshape(self.num_views, PIXELS).double()
        if self.g == "least_squares":
            stacked = self.P.reshape(-1, self.P.shape[2])
            return torch.linalg.lstsq(stacked, flat.reshape(-1, 1)).solution[:, 0].float()
        numerator = torch.einsum("npd,np->d", self.P, flat)
        denominator = self.P.sum(dim=(0, 1))
        return (numerator / denominator).float()

    def coverage(self):
        return torch.ones(self.num_views, 1, H, W)

    def initial_noise(self, generator):
        z = torch.randn(self.canonical_shape, generator=generator)
        return z, self.project(z)

    def conditions(self):
        return ViewConditions.plain(self.num_views)

    def export(self, z, path):
        raise NotImplementedError


def identity_bridge() -> DenseLinearBridge:
    return DenseLinearBridge(torch.eye(PIXELS)[None])


def permutation_bridge(num_views: int = 3) -> DenseLinearBridge:
    generator = torch.Generator().manual_seed(5)
    eye = torch.eye(PIXELS)
    return DenseLinearBridge(torch.stack([eye[torch.randperm(PIXELS, generator=generator)] for _ in range(num_views)]))


def crop_bridge(g: str) -> DenseLinearBridge:
    """Two views, each a window of a wider canonical vector; the windows overlap by half."""
    width = PIXELS + PIXELS // 2
    eye = torch.eye(width)
    return DenseLinearBridge(torch.stack([eye[:PIXELS], eye[PIXELS // 2 :]]), g=g)


def duplicating_bridge() -> DenseLinearBridge:
    """A 1-to-n view that repeats some canonical elements (like a nearest-neighbour inner rotation) beside an
    identity view. A selection with the normalised adjoint still satisfies f(g(f(z))) = f(z)."""
    generator = torch.Generator().manual_seed(6)
    eye = torch.eye(PIXELS)
    source = torch.randint(0, PIXELS, (PIXELS,), generator=generator)
    return DenseLinearBridge(torch.stack([eye, eye[source]]), g="adjoint")


def blending_bridge() -> DenseLinearBridge:
    """n-to-1 views: every pixel blends a few canonical elements (like alpha-composited splats). The normalised
    adjoint is then no left inverse: g(f(z)) != z, so f(g(f(z))) != f(z)."""
    generator = torch.Generator().manual_seed(7)
    weights = torch.rand(3, PIXELS, PIXELS, generator=generator) * (
        torch.rand(3, PIXELS, PIXELS, generator=generator) < 0.1
    )
    weights = weights + torch.eye(PIXELS)
    return DenseLinearBridge(weights / weights.sum(-1, keepdim=True), g="adjoint")


def run(bridge, config: SyncConfig, seed: int = 0) -> list[SamplerState]:
    sampler = SyncSampler(NonlinearDenoiser(), bridge, config)
    states = [sampler.init(torch.Generator().manual_seed(seed))]
    while states[-1].step_index < sampler.num_steps:
        states.append(sampler.step(states[-1]))
    return states


def instance_trajectory(bridge, states: list[SamplerState]) -> list[torch.Tensor]:
    """x_t in instance space at every step: f(z_t) while a canonical state lives."""
    return [s.x_t if s.z_t is None else bridge.project(s.z_t) for s in states]


def test_fakes_follow_the_protocols() -> None:
    assert isinstance(NonlinearDenoiser(), Denoiser)
    assert isinstance(identity_bridge(), Bridge)


@pytest.mark.parametrize("spacing", ["trailing", "model"])
@pytest.mark.parametrize("case", sorted(PAPER_CASES))
def test_every_case_with_one_view_is_plain_ddim(case: int, spacing: str) -> None:
    """diffusers' DDIM with SD 1.5's configuration ("leading", offset 1), or the same with "trailing" spacing."""
    num_steps = 10
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False, steps_offset=1,
        clip_sample=False, timestep_spacing="leading" if spacing == "model" else spacing,
    )  # fmt: skip
    scheduler.set_timesteps(num_steps)
    denoiser, bridge = NonlinearDenoiser(), identity_bridge()
    x = bridge.initial_noise(torch.Generator().manual_seed(0))[1]
    for t in scheduler.timesteps.tolist():
        x = scheduler.step(denoiser.predict_eps(x, t, ViewConditions.plain(1)), t, x).prev_sample

    config = replace(SyncConfig.case(case), num_steps=num_steps, sync_until=1.0, timestep_spacing=spacing)
    sampler = SyncSampler(denoiser, bridge, config)
    assert sampler.timesteps == scheduler.timesteps.tolist()
    result = sampler.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.x, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "bridge_factory", [permutation_bridge, lambda: crop_bridge("adjoint"), duplicating_bridge, blending_bridge], ids=str
)
@pytest.mark.parametrize(("instance_case", "canonical_case"), [(1, 4), (2, 5)])
def test_linear_f_with_consistent_noise_makes_instance_and_canonical_cases_equal(
    bridge_factory, instance_case: int, canonical_case: int
) -> None:
    bridge = bridge_factory()
    settings = dict(num_steps=12, sync_until=1.0)
    instance = run(bridge, replace(SyncConfig.case(instance_case), **settings))
    canonical = run(bridge, replace(SyncConfig.case(canonical_case), **settings))
    for a, b in zip(instance_trajectory(bridge, instance), instance_trajectory(bridge, canonical), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "bridge_factory", [permutation_bridge, lambda: crop_bridge("least_squares"), duplicating_bridge], ids=str
)
def test_idempotent_projections_make_every_case_coincide(bridge_factory) -> None:
    bridge = bridge_factory()
    trajectories = {
        case: instance_trajectory(bridge, run(bridge, replace(SyncConfig.case(case), num_steps=12, sync_until=1.0)))
        for case in (1, 2, 3, 4, 5)
    }
    for case, trajectory in trajectories.items():
        for a, b in zip(trajectories[2], trajectory, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"case {case} left case 2's trajectory")


def test_non_idempotent_projection_separates_the_cases() -> None:
    """The identities above are not vacuous: with f(g(f(z))) != f(z), cases 2 and 3 differ."""
    bridge = blending_bridge()
    finals = [run(bridge, replace(SyncConfig.case(c), num_steps=12, sync_until=1.0))[-1].x_t for c in (2, 3)]
    assert (finals[0] - finals[1]).abs().max() > 1e-3


def test_synchronised_views_agree_and_case_0_does_not() -> None:
    bridge = crop_bridge("adjoint")
    half = PIXELS // 2
    gaps = {}
    for case in (2, 0):
        config = replace(
            SyncConfig.case(case), num_steps=10, sync_until=1.0, final_aggregation=False, consistent_noise=False
        )
        flat = SyncSampler(NonlinearDenoiser(), bridge, config).sample(torch.Generator().manual_seed(1)).x
        flat = flat.reshape(2, PIXELS)
        gaps[case] = (flat[0, half:] - flat[1, :half]).abs().max()
    # What is left after case 2 is the last step's own noise, sqrt(1 - final alpha_bar) ~ 0.03 times eps.
    assert gaps[2] < 0.15, gaps
    assert gaps[0] > 10 * gaps[2], gaps


def test_sync_window_limits_synchronisation() -> None:
    bridge = crop_bridge("adjoint")
    settings = dict(num_steps=10, final_aggregation=False, consistent_noise=False)
    sampler = SyncSampler(NonlinearDenoiser(), bridge, SyncConfig(sync_until=0.8, num_steps=10))
    assert [sampler.is_synchronised(t) for t in sampler.timesteps] == [t > 200 for t in sampler.timesteps]
    never = run(bridge, SyncConfig(sync_until=0.0, **settings))
    independent = run(bridge, replace(SyncConfig.case(0), **settings))
    torch.testing.assert_close(never[-1].x_t, independent[-1].x_t)


@pytest.mark.parametrize("config", [SyncConfig(num_steps=8, eta=0.5), SyncConfig(num_steps=8, method="ddpm")])
def test_resuming_from_a_saved_state_matches_an_uninterrupted_run(config: SyncConfig, tmp_path) -> None:
    bridge = crop_bridge("adjoint")
    sampler = SyncSampler(NonlinearDenoiser(), bridge, config)
    uninterrupted = sampler.sample(torch.Generator().manual_seed(3))

    state = sampler.init(torch.Generator().manual_seed(3))
    for _ in range(3):
        state = sampler.step(state)
    torch.save(state.to_dict(), tmp_path / "state.pt")
    state = SamplerState.from_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    resumed_sampler = SyncSampler(NonlinearDenoiser(), bridge, config)
    while state.step_index < resumed_sampler.num_steps:
        state = resumed_sampler.step(state)
    assert torch.equal(resumed_sampler.finish(state).x, uninterrupted.x)


def test_same_seed_same_result_and_other_seed_differs() -> None:
    bridge = crop_bridge("adjoint")
    sampler = SyncSampler(NonlinearDenoiser(), bridge, SyncConfig(num_steps=6))
    first, again, other = (sampler.sample(torch.Generator().manual_seed(s)).x for s in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_callback_sees_every_step_with_a_preview() -> None:
    seen = []
    sampler = SyncSampler(NonlinearDenoiser(), crop_bridge("adjoint"), SyncConfig(num_steps=5))
    sampler.sample(torch.Generator().manual_seed(0), callback=seen.append)
    assert [s.step_index for s in seen] == [1, 2, 3, 4, 5]
    assert all(s.z0_hat is not None and s.z0_hat.shape == (PIXELS + PIXELS // 2,) for s in seen)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (SyncConfig(aggregate="x_prev", state_space="canonical"), "not one of the paper's cases"),
        (SyncConfig(sync_until=1.5), "sync_until"),
        (SyncConfig(num_steps=0), "num_steps"),
        (SyncConfig(eta=-1.0), "eta"),
    ],
)
def test_bad_settings_are_refused(config: SyncConfig, message: str) -> None:
    with pytest.raises(InputError, match=message):
        SyncSampler(NonlinearDenoiser(), identity_bridge(), config)


@pytest.mark.parametrize("case", [1, 3, 4, 5])
def test_nonlinear_bridges_only_take_instance_x0_cases(case: int) -> None:
    """A canonical space outside the denoiser's (RGB splat colours behind a codec) holds no noise: canonical states
    and noise or noisy-sample averages cannot live there (case 5 on RGB gave near-black colours)."""
    bridge = identity_bridge()
    bridge.linear = False
    with pytest.raises(InputError, match=f"case {case} cannot run.*--fit.canonical latent"):
        SyncSampler(NonlinearDenoiser(), bridge, SyncConfig.case(case))
    SyncSampler(NonlinearDenoiser(), bridge, SyncConfig.case(2))  # SyncTweedies runs


class CountingBridge(DenseLinearBridge):
    """Counts the calls of g."""

    def __init__(self, projections: torch.Tensor) -> None:
        super().__init__(projections)
        self.unprojections = 0

    def unproject(self, x, previous=None):
        self.unprojections += 1
        return super().unproject(x, previous)


@pytest.mark.parametrize(
    ("case", "sync_until", "preview", "expected"),
    [
        (0, 0.8, False, [0] * 10),  # nothing to synchronise: no g
        (2, 0.5, False, [1] * 5 + [0] * 5),  # one g per synchronised step, none after the window
        (1, 1.0, False, [1] * 10),  # the averaged eps only
        (3, 1.0, False, [1] * 10),  # the averaged x_prev only
        (5, 0.5, False, [1] * 5 + [0] * 5),
        (0, 0.8, True, [1] * 10),  # a viewer's preview costs one g per step
        (2, 0.5, True, [1] * 10),
    ],
)
def test_g_runs_only_where_it_is_needed(case: int, sync_until: float, preview: bool, expected: list[int]) -> None:
    bridge = CountingBridge(permutation_bridge().P.float())
    config = replace(SyncConfig.case(case), num_steps=10, sync_until=sync_until)
    sampler = SyncSampler(NonlinearDenoiser(), bridge, config)
    state = sampler.init(torch.Generator().manual_seed(0))
    counts = []
    while state.step_index < sampler.num_steps:
        before = bridge.unprojections
        state = sampler.step(state, preview=preview)
        counts.append(bridge.unprojections - before)
    assert counts == expected
    assert (state.z0_hat is not None) == (preview or case in (2, 5))


def test_a_generator_off_the_cpu_is_refused_in_one_line() -> None:
    sampler = SyncSampler(NonlinearDenoiser(), identity_bridge(), SyncConfig(num_steps=2))
    on_cuda = SimpleNamespace(device=torch.device("cuda"))  # all init reads first; no CUDA needed to check it
    with pytest.raises(InputError, match="pass a CPU torch.Generator"):
        sampler.init(on_cuda)


def test_unknown_case_number() -> None:
    with pytest.raises(InputError, match="0 to 5"):
        SyncConfig.case(7)


def test_the_timestep_spacing_is_the_configs_and_a_wrong_one_is_refused() -> None:
    denoiser = NonlinearDenoiser()  # SD 1.5's schedule: "leading", offset 1
    model = SyncConfig(timestep_spacing="model").schedule(denoiser)
    assert model is denoiser.schedule and model.timesteps(30)[0] == 958
    leading = SyncConfig(timestep_spacing="leading").schedule(denoiser)
    assert leading.timesteps(30).tolist() == model.timesteps(30).tolist()
    trailing = SyncConfig(timestep_spacing="trailing").schedule(denoiser)
    assert trailing.timesteps(30)[[0, -1]].tolist() == [999, 32] and trailing.max_steps == 1000
    karras = SyncConfig().schedule(denoiser)  # the default
    assert karras.timesteps(30)[[0, -1]].tolist() == [999, 1] and karras.max_steps == 1000
    for schedule in (trailing, karras):
        assert torch.equal(schedule.alphas_cumprod, model.alphas_cumprod)
        assert schedule.final_alpha_cumprod == model.final_alpha_cumprod
    assert SyncConfig(timestep_spacing="linspace").schedule(denoiser).timesteps(30)[[0, -1]].tolist() == [999, 0]
    with pytest.raises(InputError, match="timestep_spacing must be one of .* got 'spaced'"):
        SyncConfig(timestep_spacing="spaced").check()  # type: ignore[arg-type]


def test_the_default_timesteps_keep_the_finest_band_that_even_steps_lose() -> None:
    """Exact DDIM (`sample_ddim`) on 30 even steps keeps about 0.8 of marble's finest band: its last step jumps from
    t = 32 to the end, where the weakest components' signal-to-noise ratio crosses 1. The default's steps, crowded at
    low noise, keep over 0.9 of it."""
    prior = GaussianTexturePrior.from_prompt("marble")
    reference = prior.sample(256, 32, 32, torch.Generator().manual_seed(0))
    mask = torch.ones(256, 1, 32, 32, dtype=torch.bool)

    def finest_band(config: SyncConfig) -> float:
        alpha_bars = config.schedule(prior).alpha_bars(config.num_steps)
        x = prior.sample_ddim(256, 32, 32, alpha_bars, torch.Generator().manual_seed(1))
        return float(band_powers(x, mask)[-1] / band_powers(reference, mask)[-1])

    assert finest_band(SyncConfig(timestep_spacing="trailing")) < 0.85
    assert finest_band(SyncConfig()) > 0.9
