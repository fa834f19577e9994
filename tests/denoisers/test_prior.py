"""GaussianTexturePrior: its Tweedie estimate is the exact posterior mean, its samples have its power spectrum, DDIM
driven by it reproduces that spectrum, and it is a `Denoiser` with the codec and chunking the protocol asks for."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from sync_splat.bridges.mesh import MeshBridgeConfig
from sync_splat.bridges.panorama import PanoramaBridgeConfig
from sync_splat.conditions import ViewConditions
from sync_splat.denoisers.base import Denoiser
from sync_splat.denoisers.prior import GaussianTexturePrior, GaussianTexturePriorConfig
from sync_splat.denoisers.texture_presets import PRESETS, preset_for_prompt
from sync_splat.errors import InputError
from sync_splat.functional.diffusion import NoiseSchedule, add_noise, ddim_step, tweedie
from sync_splat.scene.mesh import MeshAsset

MIXTURES = [name for name, components in PRESETS.items() if len(components) > 1]


def dense_covariances(prior: GaussianTexturePrior, h: int, w: int) -> torch.Tensor:
    """x0's covariance per component as dense `[M, 3hw, 3hw]` matrices (channel-major), float64.

    Built without torch.fft: the spectral covariance is applied through an explicit unitary DFT matrix,
    `C = F^H blockdiag(Sigma(k)) F`, so the test checks the prior's FFT normalisation and frequency order.
    """

    def dft(n: int) -> torch.Tensor:
        k = torch.arange(n, dtype=torch.float64)
        return torch.exp(-2j * math.pi * torch.outer(k, k) / n) / math.sqrt(n)

    fourier = torch.kron(dft(h), dft(w))  # rows: frequencies (ky, kx); columns: pixels (y, x); both row-major
    sigma = prior.spectral_covariance(h, w).reshape(prior.num_components, h * w, 3, 3).to(torch.complex128)
    dense = torch.einsum("kp,mkcd,kq->mcpdq", fourier.conj(), sigma, fourier)
    assert dense.imag.abs().max() < 1e-10
    return dense.real.reshape(prior.num_components, 3 * h * w, 3 * h * w)


def radial_bands(h: int, w: int, num_bands: int) -> list[torch.Tensor]:
    """Flat frequency indices of the h x w FFT grid in `num_bands` radial bands of equal size, DC excluded."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    radius = (fy**2 + fx**2).sqrt().flatten()
    return list(radius.argsort()[1:].chunk(num_bands))


def band_ratios(measured: torch.Tensor, expected: torch.Tensor, num_bands: int) -> torch.Tensor:
    """Per channel and radial band, the mean over the band of measured / expected power: `[num_bands, 3]`."""
    _, h, w = expected.shape
    ratio = (measured / expected).reshape(3, h * w)
    return torch.stack([ratio[:, band].mean(dim=1) for band in radial_bands(h, w, num_bands)])


def measured_power(x0: torch.Tensor) -> torch.Tensor:
    """`E |fft2(x0, norm="ortho")|^2` over the samples, `[3, h, w]`: how `power_spectrum` says it is measured."""
    return torch.fft.fft2(x0.to(torch.float64), norm="ortho").abs().square().mean(dim=0)


@pytest.mark.parametrize(
    ("preset", "h", "w"), [("marble", 8, 8), ("stripes", 6, 10), ("camouflage", 8, 8), ("terrazzo", 6, 10)]
)
def test_tweedie_equals_dense_posterior_mean(preset: str, h: int, w: int) -> None:
    torch.manual_seed(0)
    prior = GaussianTexturePrior.from_prompt(preset)
    covariances = dense_covariances(prior, h, w)
    means = prior.means[:, :, None].expand(-1, -1, h * w).reshape(prior.num_components, 3 * h * w)
    identity = torch.eye(3 * h * w, dtype=torch.float64)
    x0 = prior.sample(6, h, w, torch.Generator().manual_seed(1), dtype=torch.float64)

    # Clean images: the mixture's per-component log-likelihoods are the dense Gaussian ones.
    dense_clean = torch.stack(
        [
            torch.distributions.MultivariateNormal(mu, cov).log_prob(x0.flatten(1))
            for mu, cov in zip(means, covariances, strict=True)
        ],
        dim=1,
    )
    torch.testing.assert_close(prior.component_log_likelihood(x0), dense_clean, rtol=1e-9, atol=1e-6)

    mixed_somewhere = False
    for t in (1, 100, 500, 999):
        a = prior.schedule.alpha_bar(t)
        x_t = add_noise(x0, torch.randn_like(x0), a)
        y = x_t.flatten(1)
        # Per component: mu + sqrt(a) C (a C + (1 - a) I)^-1 (y - sqrt(a) mu), the Gaussian conditional mean.
        posterior_means, log_likelihoods = [], []
        for mu, cov in zip(means, covariances, strict=True):
            marginal = a * cov + (1 - a) * identity
            gain = math.sqrt(a) * cov @ torch.linalg.inv(marginal)
            posterior_means.append(mu + (y - math.sqrt(a) * mu) @ gain.T)
            log_likelihoods.append(torch.distributions.MultivariateNormal(math.sqrt(a) * mu, marginal).log_prob(y))
        dense_weights = torch.softmax(torch.stack(log_likelihoods, dim=1) + prior.weights.log(), dim=1)
        dense_x0_hat = torch.einsum("nm,mnp->np", dense_weights, torch.stack(posterior_means)).reshape(x0.shape)

        x0_hat = tweedie(x_t, prior.predict_eps(x_t, t, ViewConditions.plain(6)), a)
        torch.testing.assert_close(x0_hat, dense_x0_hat, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(prior.responsibilities(x_t, t), dense_weights, rtol=1e-6, atol=1e-9)
        mixed_somewhere |= bool(((dense_weights > 0.05) & (dense_weights < 0.95)).any())
    # A mixture's test is only a test of the responsibilities if some image is undecided at some t.
    assert mixed_somewhere or prior.num_components == 1


@pytest.mark.slow
def test_ddim_sampling_reproduces_power_spectrum() -> None:
    """Deterministic DDIM (200 steps) driven by the exact eps reproduces the prior's spectrum within 5% per band.

    DDIM itself is accurate only for per-frequency powers of roughly 0.05 to 5 under SD's schedule: below, the last
    step leaves noise of variance 1 - alpha_bar_final = 8.5e-4 in the sample; above, starting from x_T ~ N(0, I)
    misses the alpha_bar_T Sigma part of x_T's variance. Granite's speckle stays inside that range (its predicted
    DDIM bias is under 2% everywhere), so any larger error would come from the prior's eps.
    """
    torch.manual_seed(0)
    prior = GaussianTexturePrior.from_prompt("granite")
    schedule, num_steps, h, w = prior.schedule, 200, 32, 32
    x = torch.randn(128, 3, h, w, dtype=torch.float64)
    cond = ViewConditions.plain(x.shape[0])
    for t in schedule.timesteps(num_steps).tolist():
        a, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(schedule.previous_timestep(t, num_steps))
        x = ddim_step(x, tweedie(x, prior.predict_eps(x, t, cond), a), a, a_prev)

    ratios = band_ratios(measured_power(x), prior.power_spectrum(h, w), num_bands=5)
    assert (ratios - 1).abs().max() < 0.05, ratios


@pytest.mark.parametrize("preset", ["marble", "stripes"])
def test_closed_form_ddim_samples_are_what_ddim_delivers(preset: str) -> None:
    """`sample_ddim` against 30 DDIM steps driven by the exact posterior mean: the same spectrum and mean colour,
    both short of the prior's where SD's schedule says (x_T ~ N(0, I) lacks the strong components' share)."""
    prior = GaussianTexturePrior.from_prompt(preset, max_batch=512)
    schedule = NoiseSchedule.scaled_linear(timestep_spacing="karras", steps_offset=0)
    x = torch.randn(512, 3, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in schedule.timesteps(30).tolist():
        a, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(schedule.previous_timestep(t, 30))
        x = ddim_step(x, prior.posterior_mean(x, t), a, a_prev)
    alpha_bars = schedule.alpha_bars(30)
    closed = prior.sample_ddim(512, 12, 12, alpha_bars, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert closed.shape == x.shape
    ratios = band_ratios(measured_power(closed), measured_power(x), num_bands=4)
    assert (ratios - 1).abs().max() < 0.06, ratios
    torch.testing.assert_close(closed.mean(dim=(0, 2, 3)), x.mean(dim=(0, 2, 3)), atol=0.01, rtol=0)
    short = band_ratios(measured_power(closed), prior.power_spectrum(12, 12), num_bands=4)
    assert short.min() < 0.92


def test_closed_form_ddim_on_fine_steps_from_pure_noise_is_the_prior() -> None:
    prior = GaussianTexturePrior.from_prompt("marble", schedule=NoiseSchedule.linear())
    alpha_bars = [*prior.schedule.alphas_cumprod.double().flip(0).tolist(), 1.0]  # t = 999 (4e-5), ..., 0, then 1
    closed = prior.sample_ddim(2048, 8, 8, alpha_bars, torch.Generator().manual_seed(0), dtype=torch.float64)
    ratios = band_ratios(measured_power(closed), prior.power_spectrum(8, 8), num_bands=4)
    assert (ratios - 1).abs().max() < 0.06, ratios
    with pytest.raises(ValueError, match="alpha_bars must be at least two values"):
        prior.sample_ddim(1, 8, 8, [0.5])


def test_closed_form_ddim_of_a_mixture_follows_the_named_components() -> None:
    """Each image of a mixture follows the component it names: the same noise through one component of camouflage
    is what a prior of that component alone makes of it."""
    prior = GaussianTexturePrior.from_prompt("camouflage")
    alpha_bars = prior.schedule.alpha_bars(10)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for index, component in enumerate(prior.components):
        alone = GaussianTexturePrior([component], schedule=prior.schedule)
        named = prior.ddim(x_T, alpha_bars, torch.tensor([index, index]))
        torch.testing.assert_close(named, alone.ddim(x_T, alpha_bars))
    first, second = prior.ddim(x_T, alpha_bars, torch.tensor([0, 1])), prior.ddim(x_T, alpha_bars, torch.tensor([1, 1]))
    torch.testing.assert_close(first[1], second[1])
    assert not torch.allclose(first[0], second[0])
    with pytest.raises(ValueError, match="say which each image follows"):
        prior.ddim(x_T, alpha_bars)
    with pytest.raises(ValueError, match="one index per image"):
        prior.ddim(x_T, alpha_bars, torch.tensor([0]))


@pytest.mark.parametrize("preset", ["marble", "stripes", "terrazzo"])
def test_samples_match_power_spectrum(preset: str) -> None:
    prior = GaussianTexturePrior.from_prompt(preset)
    h, w = 16, 24
    x0 = prior.sample(1024, h, w, torch.Generator().manual_seed(0))
    assert x0.shape == (1024, 3, h, w) and x0.dtype == torch.float32
    measured, expected = measured_power(x0), prior.power_spectrum(h, w)

    ratios = band_ratios(measured, expected, num_bands=4)
    assert (ratios - 1).abs().max() < 0.05, ratios
    if prior.num_components == 1:
        # DC holds the mean colour, h * w * mu^2, plus the fields' power s there. X(0) is real, N(sqrt(hw) mu, s), so
        # |X(0)|^2 has variance 4 hw mu^2 s + 2 s^2: allow five standard errors of the sample mean.
        mean_power = h * w * prior.means[0] ** 2
        field_power = expected[:, 0, 0] - mean_power
        standard_error = ((4 * mean_power * field_power + 2 * field_power**2) / x0.shape[0]).sqrt()
        assert ((measured[:, 0, 0] - expected[:, 0, 0]).abs() < 5 * standard_error).all()
        # The colour mixing: the pixel colour covariance is the mean of Sigma(k) over the grid.
        pixels = x0.to(torch.float64).permute(1, 0, 2, 3).reshape(3, -1)
        covariance = torch.cov(pixels)
        expected_covariance = prior.spectral_covariance(h, w)[0].mean(dim=(0, 1))
        assert torch.linalg.matrix_norm(covariance - expected_covariance) < 0.05 * torch.linalg.matrix_norm(
            expected_covariance
        )


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_and_gives_finite_outputs(preset: str) -> None:
    prior = GaussianTexturePrior.from_prompt(f"A {preset.upper()} teapot")
    assert prior.name == preset
    assert prior.num_components == len(PRESETS[preset])
    generator = torch.Generator().manual_seed(0)
    x0 = prior.sample(3, 12, 20, generator)
    assert x0.isfinite().all()
    for t in (0, 500, 999):
        x_t = add_noise(x0, torch.randn(x0.shape, generator=generator), prior.schedule.alpha_bar(t))
        eps_hat = prior.predict_eps(x_t, t, ViewConditions.plain(3))
        assert eps_hat.shape == x_t.shape and eps_hat.isfinite().all()
    assert prior.component_log_likelihood(x0).isfinite().all()
    # x0 is O(1) per element, like SD latents: its variance about the mean colour, averaged over channels.
    sigma_pixel = prior.spectral_covariance(64, 64).mean(dim=(1, 2))  # [M, 3, 3]
    variance = torch.einsum("m,mcc->", prior.weights, sigma_pixel) / 3
    assert 0.15 < variance < 1.0
    assert (prior.power_spectrum(64, 64) > 0).all()


def test_spectra_follow_the_frequency_and_angle_conventions() -> None:
    # Stripes: the power peaks at +-1/8 cycle per pixel along 30 degrees from +x towards +y (rows down).
    stripes = GaussianTexturePrior.from_prompt("stripes")
    h, w = 64, 48
    power = stripes.power_spectrum(h, w)[1]
    power[0, 0] = 0.0
    row, column = divmod(int(power.argmax()), w)
    peak = torch.stack([torch.fft.fftfreq(h)[row], torch.fft.fftfreq(w)[column]])
    wave = 0.125 * torch.tensor([math.sin(math.radians(30)), math.cos(math.radians(30))])
    assert min((peak - wave).norm(), (peak + wave).norm()) < 1 / w
    # Wood: the grain runs along x, so neighbours along a row are closer than neighbours down a column.
    x0 = GaussianTexturePrior.from_prompt("wood").sample(16, 32, 32, torch.Generator().manual_seed(0))
    along_rows = (x0[..., :, 1:] - x0[..., :, :-1]).square().mean()
    down_columns = (x0[..., 1:, :] - x0[..., :-1, :]).square().mean()
    assert along_rows < 0.5 * down_columns


def test_mixture_posterior_mean_blends_components_when_undecided() -> None:
    """Mode averaging: at high noise x0_hat is the responsibility-weighted blend of the components' estimates."""
    prior = GaussianTexturePrior.from_prompt("camouflage")
    x_t = torch.zeros(1, 3, 16, 16, dtype=torch.float64)
    t = 999
    weights = prior.responsibilities(x_t, t)[0]
    assert (weights > 0.05).sum() >= 2
    x0_hat = prior.posterior_mean(x_t, t)
    blended = sum(
        weights[m] * GaussianTexturePrior([component]).posterior_mean(x_t, t)
        for m, component in enumerate(PRESETS["camouflage"])
    )
    torch.testing.assert_close(x0_hat, blended)
    assert not any(
        torch.allclose(x0_hat, GaussianTexturePrior([component]).posterior_mean(x_t, t), atol=1e-3)
        for component in PRESETS["camouflage"]
    )


def test_mixture_log_likelihood_names_the_component_a_sample_came_from() -> None:
    for preset in MIXTURES:
        prior = GaussianTexturePrior.from_prompt(preset)
        for m, component in enumerate(PRESETS[preset]):
            x0 = GaussianTexturePrior([component]).sample(4, 16, 16, torch.Generator().manual_seed(m))
            assert (prior.component_log_likelihood(x0).argmax(dim=1) == m).all(), (preset, m)


def test_samples_follow_given_component_weights() -> None:
    prior = GaussianTexturePrior.from_prompt("camouflage")
    for m in range(prior.num_components):
        weights = torch.zeros(prior.num_components)
        weights[m] = 1.0
        x0 = prior.sample(6, 16, 16, torch.Generator().manual_seed(m), weights=weights)
        assert (prior.component_log_likelihood(x0).argmax(dim=1) == m).all(), m
    for bad in (torch.zeros(3), torch.tensor([1.0, -0.5, 0.5]), torch.ones(2)):
        with pytest.raises(ValueError, match="weights"):
            prior.sample(2, 8, 8, weights=bad)


@pytest.mark.parametrize(
    ("prompt", "preset"),
    [
        ("a marble statue", "marble"),
        ("WOODEN TABLE", "wood"),
        ("clouds with stripes", "clouds"),
        ("stripes with clouds", "stripes"),
        ("Terrazzo floor", "terrazzo"),
        ("urban camouflage jacket", "camouflage"),
        ("polished granite", "granite"),
    ],
)
def test_prompt_picks_the_preset_named_first(prompt: str, preset: str) -> None:
    assert preset_for_prompt(prompt) == preset
    assert GaussianTexturePrior.from_prompt(prompt).name == preset


def test_unknown_prompt_raises_input_error_listing_presets() -> None:
    with pytest.raises(InputError) as raised:
        GaussianTexturePrior.from_prompt("a lego castle")
    message = str(raised.value)
    assert "\n" not in message
    assert "a lego castle" in message
    assert all(name in message for name in PRESETS)


def test_encode_decode_round_trip() -> None:
    prior = GaussianTexturePrior.from_prompt("marble")
    rgb01 = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    x = prior.encode(rgb01)
    torch.testing.assert_close(x, rgb01 * 2 - 1)
    torch.testing.assert_close(prior.decode(x), rgb01)
    assert prior.decode(torch.tensor([-3.0, 3.0]).reshape(1, 1, 1, 2)).flatten().tolist() == [0.0, 1.0]


def test_chunked_predict_eps_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    chunked = GaussianTexturePrior(PRESETS["camouflage"], max_batch=2)
    whole = GaussianTexturePrior(PRESETS["camouflage"], max_batch=16)
    x_t = torch.randn(5, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    cond = ViewConditions.plain(5)

    chunk_sizes: list[int] = []
    posterior_mean = chunked.posterior_mean

    def recording_posterior_mean(x: torch.Tensor, t: int) -> torch.Tensor:
        chunk_sizes.append(x.shape[0])
        return posterior_mean(x, t)

    monkeypatch.setattr(chunked, "posterior_mean", recording_posterior_mean)
    for t in (10, 900):
        chunk_sizes.clear()
        eps_chunked = chunked.predict_eps(x_t, t, cond)
        assert chunk_sizes == [2, 2, 1]
        assert eps_chunked.dtype == x_t.dtype and eps_chunked.device == x_t.device
        torch.testing.assert_close(eps_chunked, whole.predict_eps(x_t, t, cond), rtol=0, atol=1e-6)


def test_is_a_denoiser_whose_native_size_sizes_the_bridges_views() -> None:
    prior = GaussianTexturePriorConfig(prompt="wood", native_size=48).setup()
    assert isinstance(prior, Denoiser)
    rgb01 = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    down = prior.downsample
    assert prior.encode(rgb01).shape == (2, prior.latent_channels, 20 // down, 28 // down)
    # The bridges read the view size off the denoiser when their configs leave it open.
    triangle = MeshAsset.from_arrays(
        torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([[0, 1, 2]]),
        torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]]), uv_mode="file",
    )  # fmt: skip
    for bridge in (
        PanoramaBridgeConfig(device="cpu").setup(prior),
        MeshBridgeConfig(device="cpu", azimuths=1, upper_azimuths_deg=()).setup(prior, triangle),
    ):
        assert bridge.instance_shape == (prior.latent_channels, 48 // down, 48 // down)


def test_config_sets_up_the_prior() -> None:
    prior = GaussianTexturePriorConfig(prompt="a wood floor", max_batch=3, native_size=32).setup()
    assert (prior.name, prior.max_batch, prior.native_size) == ("wood", 3, 32)


# Stable Diffusion 1.5's published scheduler configuration, and the DDPM paper's schedule (diffusers' defaults; x0
# clipping is a sampler option, not part of the schedule).
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    set_alpha_to_one=False, steps_offset=1, clip_sample=False,
)  # fmt: skip
DDPM_PAPER_SCHEDULER = dict(beta_schedule="linear", clip_sample=False)


@pytest.mark.parametrize(
    ("config", "reference"),
    [
        (GaussianTexturePriorConfig(), SD15_SCHEDULER),
        (GaussianTexturePriorConfig(schedule="scaled_linear"), SD15_SCHEDULER),
        (GaussianTexturePriorConfig(schedule="linear"), DDPM_PAPER_SCHEDULER),
    ],
    ids=["default", "scaled_linear", "linear"],
)
def test_the_configs_schedules_step_as_diffusers_does(config: GaussianTexturePriorConfig, reference: dict) -> None:
    """DDIM driven by the prior's eps over the prior's schedule takes the steps `diffusers.DDIMScheduler` takes with
    the schedule the config names: the same timesteps, the same alpha_bar at each and at the end."""
    prior = config.setup()
    scheduler = DDIMScheduler(**reference)
    num_steps = 10
    scheduler.set_timesteps(num_steps)
    assert prior.schedule.timesteps(num_steps).tolist() == scheduler.timesteps.tolist()
    x_t = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    cond = ViewConditions.plain(2)
    for t in scheduler.timesteps.tolist():
        eps_hat = prior.predict_eps(x_t, t, cond)
        expected = scheduler.step(eps_hat, t, x_t)
        schedule = prior.schedule
        a, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(schedule.previous_timestep(t, num_steps))
        x0_hat = tweedie(x_t, eps_hat, a)
        torch.testing.assert_close(x0_hat, expected.pred_original_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ddim_step(x_t, x0_hat, a, a_prev), expected.prev_sample, atol=1e-5, rtol=1e-5)
        x_t = expected.prev_sample
