"""Diffusion maths as pure functions: the noise schedule, Tweedie's formula, and DDIM / DDPM reverse steps.

Notation (the paper's, and diffusers' `DDIMScheduler.step`): `alpha_bar_t` is the cumulative product of the
alphas at train timestep t, `x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`. Tweedie's formula gives the
posterior mean of x0 from an epsilon prediction: `x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)`.
A reverse step `(x_t, x0_hat) -> x_prev` re-derives its epsilon from `x0_hat` (which the sampler may have
synchronised across views), never from the network's raw output.

Every function here is checked against diffusers' `DDIMScheduler.step` and `DDPMScheduler.step` in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

TimestepSpacing = Literal["leading", "trailing", "linspace", "karras"]


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete training schedule and the rule that picks inference timesteps from it.

    Attributes:
        alphas_cumprod: alpha_bar for each train timestep 0..T-1, float32 on the CPU.
        final_alpha_cumprod: alpha_bar a DDIM step lands on after the last timestep (diffusers'
            `set_alpha_to_one`: 1.0, or alpha_bar at t = 0 as SD configures it). DDPM always ends on 1.0.
        timestep_spacing: how inference timesteps are spread over the train timesteps: diffusers' "leading",
            "trailing" and "linspace", or Karras et al.'s "karras" (see `timesteps`).
        steps_offset: added to "leading" timesteps (SD 1.5 uses 1: 981, 961, ..., 1 for 50 steps).
    """

    alphas_cumprod: Tensor
    final_alpha_cumprod: float = 1.0
    timestep_spacing: TimestepSpacing = "leading"
    steps_offset: int = 0

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @classmethod
    def scaled_linear(
        cls,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        set_alpha_to_one: bool = False,
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: int = 1,
    ) -> NoiseSchedule:
        """The Stable Diffusion schedule (betas linear in sqrt space); the defaults are SD 1.5's."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        return cls._from_betas(betas, set_alpha_to_one, timestep_spacing, steps_offset)

    @classmethod
    def linear(
        cls,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        set_alpha_to_one: bool = True,
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: int = 0,
    ) -> NoiseSchedule:
        """The DDPM paper's linear-beta schedule."""
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        return cls._from_betas(betas, set_alpha_to_one, timestep_spacing, steps_offset)

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """The schedule a diffusers scheduler config describes (DDIM, DDPM, PNDM, ... share these keys)."""
        beta_schedule = config.get("beta_schedule", "linear")
        factory = {"scaled_linear": cls.scaled_linear, "linear": cls.linear}.get(beta_schedule)
        if factory is None:
            raise ValueError(f"beta_schedule {beta_schedule!r} is not supported: use 'scaled_linear' or 'linear'")
        return factory(
            num_train_timesteps=config.get("num_train_timesteps", 1000),
            beta_start=config.get("beta_start", 0.0001),
            beta_end=config.get("beta_end", 0.02),
            set_alpha_to_one=config.get("set_alpha_to_one", True),
            timestep_spacing=config.get("timestep_spacing", "leading"),
            steps_offset=config.get("steps_offset", 0),
        )

    @classmethod
    def _from_betas(
        cls, betas: Tensor, set_alpha_to_one: bool, spacing: TimestepSpacing, steps_offset: int
    ) -> NoiseSchedule:
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        final = 1.0 if set_alpha_to_one else float(alphas_cumprod[0])
        return cls(alphas_cumprod, final, spacing, steps_offset)

    @property
    def max_steps(self) -> int:
        """The most inference steps whose timesteps all exist: "leading" spacing with an offset (SD 1.5's 1) would
        reach timestep T with T steps, so it stops one short."""
        total = self.num_train_timesteps
        if self.timestep_spacing == "leading":
            return next(n for n in range(total, 0, -1) if (n - 1) * (total // n) + self.steps_offset < total)
        return total

    def timesteps(self, num_steps: int) -> Tensor:
        """Inference timesteps, descending, int64 (the even spacings are the same as diffusers' `set_timesteps`)."""
        total = self.num_train_timesteps
        if not 1 <= num_steps <= self.max_steps:
            raise ValueError(f"num_steps must be in 1..{self.max_steps}, got {num_steps}")
        if self.timestep_spacing == "leading":
            ratio = total // num_steps
            steps = (torch.arange(num_steps, dtype=torch.float64) * ratio).round().flip(0) + self.steps_offset
        elif self.timestep_spacing == "trailing":
            steps = torch.arange(total, 0, -total / num_steps, dtype=torch.float64).round() - 1
        elif self.timestep_spacing == "karras":
            return self._karras_timesteps(num_steps)
        else:
            steps = torch.linspace(0, total - 1, num_steps, dtype=torch.float64).round().flip(0)
        return steps.to(torch.int64)

    def _karras_timesteps(self, num_steps: int) -> Tensor:
        """Karras et al. (2022)'s spacing, rho = 7: noise levels sigma = sqrt((1 - a) / a) evenly spaced in
        sigma^(1 / rho) from t = T - 1 down to t = 0, each rounded to the train timestep nearest in log sigma, the last
        point (t = 0) left to the final step. Steps crowd at low noise, where each step changes the image's finest
        detail most; rounding never repeats a timestep."""
        rho = 7.0
        log_sigmas = 0.5 * (torch.log1p(-self.alphas_cumprod.double()) - torch.log(self.alphas_cumprod.double()))
        ramp = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)[:-1]
        top, bottom = (log_sigmas[-1] / rho).exp(), (log_sigmas[0] / rho).exp()
        targets = rho * torch.log(top + ramp * (bottom - top))
        nearest = (log_sigmas[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()
        steps, above = [], self.num_train_timesteps
        for i, t in enumerate(nearest):
            above = min(max(t, num_steps - 1 - i), above - 1)
            steps.append(above)
        return torch.tensor(steps, dtype=torch.int64)

    def alpha_bars(self, num_steps: int) -> list[float]:
        """alpha_bar at each inference timestep, then the final one a DDIM run lands on: the values a run of DDIM
        steps goes through. Exact for "leading" and "karras" spacing; with the other even spacings DDIM steps back
        by T // num_steps (`previous_timestep`), which can land one timestep beside the next listed one."""
        return [self.alpha_bar(t) for t in self.timesteps(num_steps).tolist()] + [self.final_alpha_cumprod]

    def previous_timestep(self, t: int, num_steps: int, method: Literal["ddim", "ddpm"] = "ddim") -> int:
        """The timestep a reverse step from t lands on; negative after the last step.

        diffusers' two schedulers differ here and we follow each: DDIM always steps back by T // num_steps, DDPM
        lands on the next timestep of the inference list. They agree for "leading" spacing. Karras spacing is not
        even, so both land on the next timestep of the list.
        """
        if method == "ddim" and self.timestep_spacing != "karras":
            return int(t) - self.num_train_timesteps // num_steps
        timesteps = self.timesteps(num_steps).tolist()
        index = timesteps.index(int(t))
        return timesteps[index + 1] if index + 1 < len(timesteps) else -1

    def alpha_bar(self, t: int, final: float | None = None) -> float:
        """alpha_bar at train timestep t; for t < 0 (after the last step) `final`, by default the DDIM final value."""
        if t < 0:
            return self.final_alpha_cumprod if final is None else final
        return float(self.alphas_cumprod[t])


def tweedie(x_t: Tensor, eps_hat: Tensor, alpha_bar_t: float) -> Tensor:
    """Tweedie's formula: the posterior mean x0_hat from x_t and the predicted noise."""
    return (x_t - math.sqrt(1.0 - alpha_bar_t) * eps_hat) / math.sqrt(alpha_bar_t)


def eps_from_x0(x_t: Tensor, x0_hat: Tensor, alpha_bar_t: float) -> Tensor:
    """The noise implied by (x_t, x0_hat): Tweedie's formula solved for eps."""
    return (x_t - math.sqrt(alpha_bar_t) * x0_hat) / math.sqrt(1.0 - alpha_bar_t)


def eps_from_v(x_t: Tensor, v: Tensor, alpha_bar_t: float) -> Tensor:
    """Convert a v-prediction (v = sqrt(a) eps - sqrt(1 - a) x0) to an epsilon prediction."""
    return math.sqrt(alpha_bar_t) * v + math.sqrt(1.0 - alpha_bar_t) * x_t


def add_noise(x0: Tensor, eps: Tensor, alpha_bar_t: float) -> Tensor:
    """The forward process q(x_t | x0): sqrt(a) x0 + sqrt(1 - a) eps (square-root weights, not linear ones)."""
    return math.sqrt(alpha_bar_t) * x0 + math.sqrt(1.0 - alpha_bar_t) * eps


def ddim_step(
    x_t: Tensor,
    x0_hat: Tensor,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """One DDIM step (Song et al. 2021, eq. 12) from x_t towards the given clean estimate.

    The epsilon is re-derived from (x_t, x0_hat), so a synchronised x0_hat also changes the direction term.
    With eta > 0 the added noise is scaled by sigma_t (the official SyncTweedies code adds it unscaled).

    Args:
        x_t: the current sample.
        x0_hat: the clean estimate to step towards (possibly synchronised across views).
        alpha_bar_t: alpha_bar at the current timestep.
        alpha_bar_prev: alpha_bar at the previous timestep (the schedule's final value after the last step).
        eta: 0 for deterministic DDIM, 1 for DDPM-like stochasticity.
        noise: standard normal noise shaped like x_t; required when eta > 0.

    Returns:
        x_prev, shaped like x_t.
    """
    eps = eps_from_x0(x_t, x0_hat, alpha_bar_t)
    variance = (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev)
    sigma = eta * math.sqrt(max(variance, 0.0))
    x_prev = math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(max(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps
    if sigma > 0.0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs standard normal `noise` shaped like x_t")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddpm_step(
    x_t: Tensor,
    x0_hat: Tensor,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    noise: Tensor | None = None,
) -> Tensor:
    """One ancestral DDPM step: the posterior q(x_prev | x_t, x0_hat) with the "fixed_small" variance.

    Args:
        x_t: the current sample.
        x0_hat: the clean estimate (possibly synchronised).
        alpha_bar_t: alpha_bar at the current timestep.
        alpha_bar_prev: alpha_bar at the previous timestep; 1.0 after the last step, where no noise is added.
        noise: standard normal noise shaped like x_t; required unless this is the last step.

    Returns:
        x_prev, shaped like x_t.
    """
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1.0 - alpha_t
    mean = (math.sqrt(alpha_bar_prev) * beta_t / (1.0 - alpha_bar_t)) * x0_hat + (
        math.sqrt(alpha_t) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
    ) * x_t
    if alpha_bar_prev >= 1.0:
        return mean
    if noise is None:
        raise ValueError("ddpm_step needs standard normal `noise` shaped like x_t before the last step")
    variance = max((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * beta_t, 1e-20)
    return mean + math.sqrt(variance) * noise
