"""The diffusion maths against diffusers' own schedulers (CPU, float32, random model outputs)."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from sync_splat.functional.diffusion import (
    NoiseSchedule,
    add_noise,
    ddim_step,
    ddpm_step,
    eps_from_v,
    eps_from_x0,
    tweedie,
)

SD_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    steps_offset=1,
    clip_sample=False,
)
NUM_STEPS = 20
CASES = [
    (prediction, spacing)
    for prediction in ("epsilon", "v_prediction")
    for spacing in ("leading", "trailing", "linspace")
]


def _schedule(spacing: str) -> NoiseSchedule:
    return NoiseSchedule.from_scheduler_config({**SD_CONFIG, "timestep_spacing": spacing})


def _clean_estimate(model_output, x_t, alpha_bar, prediction):
    eps = model_output if prediction == "epsilon" else eps_from_v(x_t, model_output, alpha_bar)
    return tweedie(x_t, eps, alpha_bar)


@pytest.mark.parametrize(("prediction", "spacing"), CASES)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_matches_diffusers(prediction: str, spacing: str, eta: float) -> None:
    scheduler = DDIMScheduler(**SD_CONFIG, prediction_type=prediction, timestep_spacing=spacing)
    scheduler.set_timesteps(NUM_STEPS)
    schedule = _schedule(spacing)
    assert torch.equal(schedule.timesteps(NUM_STEPS), scheduler.timesteps)

    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 4, 8, 8, generator=generator)
    for t in scheduler.timesteps.tolist():
        model_output = torch.randn(x_t.shape, generator=generator)
        noise = torch.randn(x_t.shape, generator=generator)
        expected = scheduler.step(model_output, t, x_t, eta=eta, variance_noise=noise)

        alpha_bar = schedule.alpha_bar(t)
        alpha_bar_prev = schedule.alpha_bar(schedule.previous_timestep(t, NUM_STEPS))
        x0_hat = _clean_estimate(model_output, x_t, alpha_bar, prediction)
        x_prev = ddim_step(x_t, x0_hat, alpha_bar, alpha_bar_prev, eta=eta, noise=noise)

        torch.testing.assert_close(x0_hat, expected.pred_original_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x_prev, expected.prev_sample, atol=1e-5, rtol=1e-5)
        x_t = expected.prev_sample


@pytest.mark.parametrize(("prediction", "spacing"), CASES)
def test_ddpm_step_matches_diffusers(prediction: str, spacing: str) -> None:
    scheduler = DDPMScheduler(
        **{k: v for k, v in SD_CONFIG.items() if k != "set_alpha_to_one"},
        prediction_type=prediction,
        timestep_spacing=spacing,
    )
    scheduler.set_timesteps(NUM_STEPS)
    schedule = _schedule(spacing)
    assert torch.equal(schedule.timesteps(NUM_STEPS), scheduler.timesteps)

    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 4, 8, 8, generator=generator)
    for t in scheduler.timesteps.tolist():
        model_output = torch.randn(x_t.shape, generator=generator)
        noise_seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        expected = scheduler.step(model_output, t, x_t, generator=torch.Generator().manual_seed(noise_seed))
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(noise_seed))

        alpha_bar = schedule.alpha_bar(t)
        # DDPM ends on alpha_bar = 1 (a noise-free last step), unlike DDIM's final_alpha_cumprod.
        alpha_bar_prev = schedule.alpha_bar(schedule.previous_timestep(t, NUM_STEPS, "ddpm"), final=1.0)
        x0_hat = _clean_estimate(model_output, x_t, alpha_bar, prediction)
        x_prev = ddpm_step(x_t, x0_hat, alpha_bar, alpha_bar_prev, noise=noise)

        torch.testing.assert_close(x0_hat, expected.pred_original_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x_prev, expected.prev_sample, atol=1e-5, rtol=1e-5)
        x_t = expected.prev_sample


def test_final_alpha_follows_set_alpha_to_one() -> None:
    sd = NoiseSchedule.scaled_linear()
    assert sd.alpha_bar(-1) == pytest.approx(float(sd.alphas_cumprod[0]))
    assert NoiseSchedule.scaled_linear(set_alpha_to_one=True).alpha_bar(-1) == 1.0
    assert sd.alpha_bar(-5, final=1.0) == 1.0


def test_eps_and_x0_are_inverse() -> None:
    generator = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 3, 5, 5, generator=generator), torch.randn(2, 3, 5, 5, generator=generator)
    alpha_bar = 0.3
    x_t = add_noise(x0, eps, alpha_bar)
    torch.testing.assert_close(tweedie(x_t, eps, alpha_bar), x0)
    torch.testing.assert_close(eps_from_x0(x_t, x0, alpha_bar), eps)


def test_v_prediction_converts_to_eps() -> None:
    generator = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    alpha_bar = 0.6
    x_t = add_noise(x0, eps, alpha_bar)
    v = alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0
    torch.testing.assert_close(eps_from_v(x_t, v, alpha_bar), eps)


def test_ddim_with_eta_needs_noise() -> None:
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x, x, 0.5, 0.6, eta=1.0)


def test_timesteps_reject_bad_counts() -> None:
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule.scaled_linear().timesteps(0)


@pytest.mark.parametrize(
    "schedule",
    [
        NoiseSchedule.scaled_linear(),
        NoiseSchedule.linear(),
        NoiseSchedule.scaled_linear(timestep_spacing="trailing", steps_offset=0),
        NoiseSchedule.linear(timestep_spacing="karras"),
    ],
)
def test_the_most_steps_a_schedule_allows_all_exist(schedule: NoiseSchedule) -> None:
    most = schedule.max_steps
    timesteps = schedule.timesteps(most)
    assert timesteps.max() < schedule.num_train_timesteps and timesteps.min() >= 0
    assert len(set(timesteps.tolist())) == most
    with pytest.raises(ValueError, match=f"1..{most}"):
        schedule.timesteps(most + 1)


def test_karras_timesteps_start_at_the_noisiest_and_crowd_at_low_noise() -> None:
    schedule = NoiseSchedule.scaled_linear(timestep_spacing="karras", steps_offset=0)
    steps = schedule.timesteps(30).tolist()
    assert steps[0] == 999 and steps[-1] == 1  # t = 0, the ramp's last point, is the final step's to land near
    gaps = [above - below for above, below in zip(steps, steps[1:], strict=False)]
    assert min(gaps) >= 1 and gaps[-1] < gaps[0] < gaps[len(gaps) // 2]  # dense at both ends, densest at low noise
    # Evenly spaced in sigma^(1/7) (up to rounding to train timesteps, which matters only where steps are 1 apart).
    alpha_bars = schedule.alphas_cumprod.double()[steps[:20]]
    roots = ((1 - alpha_bars) / alpha_bars).pow(0.5 / 7)
    spacing = roots[:-1] - roots[1:]
    assert float(spacing.max() / spacing.min()) < 1.1
    # Uneven: every reverse step, DDIM's too, lands on the next listed timestep, and the last on the final alpha_bar.
    for method in ("ddim", "ddpm"):
        assert [schedule.previous_timestep(t, 30, method) for t in steps] == [*steps[1:], -1]
    assert schedule.alpha_bars(30) == [schedule.alpha_bar(t) for t in [*steps, -1]]  # what the 30 steps go through
    assert schedule.max_steps == 1000 and schedule.timesteps(1000).tolist() == list(range(999, -1, -1))
    assert schedule.timesteps(1).tolist() == [999]
