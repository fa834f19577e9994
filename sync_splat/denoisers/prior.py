"""`GaussianTexturePrior`: an exact diffusion prior over stationary Gaussian textures, for the CPU, tests and demos.

The prior lives in the denoiser space of pixel-space priors (docs/conventions.md): 3 channels, `x = rgb01 * 2 - 1`,
no downsampling. A texture is a (mixture of) Gaussian random field(s) on the periodic h x w domain:

    x0 = mu_m + A_m s,    s_j independent stationary fields with power spectra P_mj(f),    m ~ Categorical(pi)

so per frequency k the 3 x 3 colour covariance of component m is `Sigma_m(k) = A_m diag(P_m(k)) A_m^T`, and the mean
colour `mu_m` lives at DC only. Spectra are functions of continuous frequency `f = (fy, fx)` in cycles per pixel,
so views of any size share one prior: on an h x w grid each frequency gets the spectrum's average over its cell, and
each spectrum is scaled to unit integral, so every field has unit variance at every size. The presets' colours make
x0's variance per element 0.2 to 0.45 (mean over channels) and its mean square 0.3 to 0.6: order one, like SD
latents, while most pixels still decode inside [0, 1].

Fourier convention: everything uses the unitary FFT, `torch.fft.fft2(x, norm="ortho")`. Under it white noise stays
white (identity covariance per frequency) and `E[X(k) X(k)^H] = Sigma(k)`: `spectral_covariance` and
`power_spectrum` are stated in these units. The full complex FFT is used throughout (not `rfft2`), so the sums of the
log-likelihood over frequencies are exactly the pixel-domain ones.

Because the prior is Gaussian (per component), Tweedie's posterior mean is exact: with
`x_t = sqrt(a) x0 + sqrt(1 - a) eps` (a = alpha_bar_t) it is a Wiener filter per frequency,

    E_m[x0 | x_t](k) = mu_m(k) + sqrt(a) Sigma_m(k) (a Sigma_m(k) + (1 - a) I)^-1 (X_t(k) - sqrt(a) mu_m(k)),

and for a mixture `E[x0 | x_t] = sum_m p(m | x_t) E_m[x0 | x_t]`, the responsibilities coming from the exact
likelihoods `x_t ~ N(sqrt(a) mu_m, a Sigma_m + (1 - a) I)`. Early in sampling the responsibilities are uncertain and
the posterior mean blends the components' colours: mode averaging made visible.

Dimension letters (docs/conventions.md): N views, h w pixels, M mixture components.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from sync_splat.codec import decode_pixels
from sync_splat.conditions import ViewConditions
from sync_splat.denoisers.texture_presets import (
    PRESETS,
    TextureComponent,
    cell_averaged_density,
    preset_for_prompt,
    unit_variance_scale,
)
from sync_splat.functional.diffusion import NoiseSchedule, eps_from_x0

# ---------------------------------------------------------------------------------------------------------------------
# The prior.


@dataclass(frozen=True)
class _SpectralFactors:
    """Per-frequency eigendecompositions `Sigma_m(k) = U diag(lam) U^T` on one grid and device.

    Attributes:
        eigvals: lam, float64.
        eigvecs: U (column j is eigenvector j), real values stored as complex128 to multiply spectra.
    """

    eigvals: Float[Tensor, "M 3 h w"]
    eigvecs: Complex[Tensor, "M h w 3 3"]


class GaussianTexturePrior:
    """An exact `Denoiser` over stationary Gaussian textures (a mixture of M components), in pixel space.

    Attributes:
        schedule: the noise schedule (SD 1.5's scaled-linear by default).
        latent_channels: 3 (RGB).
        downsample: 1 (pixel space).
        native_size: the image size (long side) demos render at; the prior itself works at any size.
        max_batch: the most views one posterior-mean evaluation takes.
        name: the preset's name, or "custom".
        means: mu_m in the denoiser space, `[M, 3]`, float64.
        mixing: A_m in the denoiser space, `[M, 3, 3]` (columns are field colours), float64.
        weights: pi_m, `[M]`, float64, summing to 1.
    """

    latent_channels = 3
    downsample = 1

    def __init__(
        self,
        components: Sequence[TextureComponent],
        schedule: NoiseSchedule | None = None,
        native_size: int = 64,
        max_batch: int = 16,
        name: str = "custom",
    ) -> None:
        if not components:
            raise ValueError("GaussianTexturePrior needs at least one component")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.schedule = schedule if schedule is not None else NoiseSchedule.scaled_linear()
        self.native_size = native_size
        self.max_batch = max_batch
        self.name = name
        self.components = tuple(components)
        # The affine codec x = 2 rgb01 - 1 maps a mean colour affinely and a colour direction linearly.
        self.means = 2.0 * torch.tensor([c.mean_rgb01 for c in self.components], dtype=torch.float64) - 1.0
        columns = [[f.color_rgb01 for f in c.fields] for c in self.components]
        self.mixing = 2.0 * torch.tensor(columns, dtype=torch.float64).transpose(1, 2)
        if torch.linalg.matrix_rank(self.mixing).min() < 3:
            raise ValueError("each component's three field colours must be linearly independent")
        weights = torch.tensor([c.weight for c in self.components], dtype=torch.float64)
        self.weights = weights / weights.sum()
        self._factors: dict[tuple[int, int, str], _SpectralFactors] = {}

    @classmethod
    def from_prompt(
        cls, prompt: str, schedule: NoiseSchedule | None = None, native_size: int = 64, max_batch: int = 16
    ) -> GaussianTexturePrior:
        """The preset the prompt names (see `preset_for_prompt`).

        Raises:
            InputError: the prompt names no preset.
        """
        name = preset_for_prompt(prompt)
        return cls(PRESETS[name], schedule=schedule, native_size=native_size, max_batch=max_batch, name=name)

    @property
    def num_components(self) -> int:
        """M, the number of mixture components (1 for a single Gaussian texture)."""
        return len(self.components)

    # -- codec ---------------------------------------------------------------------------------------------------------

    def encode(self, rgb01: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N 3 h w"]:
        """rgb01 to the denoiser space: `2 * rgb01 - 1` (exact, no downsampling)."""
        return rgb01 * 2.0 - 1.0

    def decode(self, x: Float[Tensor, "N 3 h w"]) -> Float[Tensor, "N 3 H W"]:
        """The denoiser space back to rgb01: `(x + 1) / 2`, clamped to [0, 1]."""
        return decode_pixels(x)

    # -- the spectrum --------------------------------------------------------------------------------------------------

    def spectral_covariance(self, h: int, w: int) -> Float[Tensor, "M h w 3 3"]:
        """Sigma_m(k) = A_m diag(P_m(k)) A_m^T on the h x w FFT grid (`torch.fft.fftfreq` order), float64, CPU.

        Units: the covariance of the unitary FFT, `E[X(k) X(k)^H]` for `X = fft2(x0 - mu_m, norm="ortho")`; a
        pixel's colour covariance is the mean of Sigma_m(k) over the grid. The field spectra are symmetrised,
        `P(k) = (P(k) + P(-k)) / 2` on the grid (this only changes the Nyquist row and column of anisotropic
        spectra), so that samples and posterior means are real.
        """
        covariances = []
        for component, mixing in zip(self.components, self.mixing, strict=True):
            powers = []
            for field in component.fields:
                shape = cell_averaged_density(field.spectrum, h, w) * unit_variance_scale(field.spectrum)
                power = (1.0 - field.grain) * shape + field.grain
                # The power at -k: index (-i mod h, -j mod w) is a flip followed by a roll by one.
                mirrored = torch.roll(torch.flip(power, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
                powers.append(0.5 * (power + mirrored))
            power = torch.stack(powers, dim=-1)  # [h, w, 3 fields]
            covariances.append(torch.einsum("cj,hwj,dj->hwcd", mixing, power, mixing))
        return torch.stack(covariances)

    def power_spectrum(self, h: int, w: int) -> Float[Tensor, "3 h w"]:
        """The expected power of samples per channel and frequency, `E |fft2(x0, norm="ortho")|^2`, float64, CPU.

        The mean colour is included: it adds `h * w * mu_c^2` at DC (frequency index (0, 0)). For a mixture the
        expectation is over the components too. A test measures it as `fft2(x0, norm="ortho").abs().square()`
        averaged over samples.
        """
        diagonals = torch.diagonal(self.spectral_covariance(h, w), dim1=-2, dim2=-1)  # [M, h, w, 3]
        spectrum = torch.einsum("m,mhwc->chw", self.weights, diagonals)
        spectrum[:, 0, 0] += h * w * torch.einsum("m,mc->c", self.weights, self.means**2)
        return spectrum

    def _spectral_factors(self, h: int, w: int, device: torch.device) -> _SpectralFactors:
        key = (h, w, str(device))
        if key not in self._factors:
            eigvals, eigvecs = torch.linalg.eigh(self.spectral_covariance(h, w))
            eigvals = eigvals.clamp_min(0.0).permute(0, 3, 1, 2).to(device)
            self._factors[key] = _SpectralFactors(eigvals, eigvecs.to(device, torch.complex128))
        return self._factors[key]

    # -- sampling and likelihoods --------------------------------------------------------------------------------------

    def sample(
        self,
        num: int,
        h: int,
        w: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        weights: Float[Tensor, " M"] | None = None,
    ) -> Float[Tensor, "N 3 h w"]:
        """Exact samples of x0 (denoiser space): a component per image from pi, then its Gaussian field.

        Args:
            num: how many images.
            h, w: their size in pixels.
            generator: the random source; samples are drawn on its device (the CPU without one).
            dtype: the returned dtype (computed in float64).
            weights: how often to draw each component instead of pi (non-negative, not all zero): samples of the
                prior conditioned on a given mix of components.

        Returns:
            x0, `[num, 3, h, w]`.
        """
        device = generator.device if generator is not None else torch.device("cpu")
        factors = self._spectral_factors(h, w, device)
        chosen = self._choose_components(num, weights, generator, device)
        white = torch.randn(num, 3, h, w, generator=generator, dtype=torch.float64, device=device)
        # The symmetric square root U diag(sqrt(lam)) U^T of Sigma(k) keeps the spectrum Hermitian: the field is real.
        field = self._filter(white, factors.eigvecs[chosen], factors.eigvals[chosen].sqrt())
        return (field + self.means.to(device)[chosen][:, :, None, None]).to(dtype)

    def sample_ddim(
        self,
        num: int,
        h: int,
        w: int,
        alpha_bars: Sequence[float],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        weights: Float[Tensor, " M"] | None = None,
    ) -> Float[Tensor, "N 3 h w"]:
        """Exact samples of what deterministic DDIM delivers from x_T ~ N(0, I) on these timesteps with this prior's
        posterior mean: `ddim` of fresh noise, each image's component drawn with `weights` (the prior's by default).

        Args:
            num, h, w, generator, dtype, weights: as `sample`.
            alpha_bars: as `ddim`.

        Returns:
            x0, `[num, 3, h, w]`.
        """
        device = generator.device if generator is not None else torch.device("cpu")
        chosen = self._choose_components(num, weights, generator, device)
        start = torch.randn(num, 3, h, w, generator=generator, dtype=torch.float64, device=device)
        return self.ddim(start, alpha_bars, chosen).to(dtype)

    def ddim(
        self, x_T: Float[Tensor, "N 3 h w"], alpha_bars: Sequence[float], components: Int[Tensor, " N"] | None = None
    ) -> Float[Tensor, "N 3 h w"]:
        """What deterministic DDIM (eta = 0) with this prior's posterior mean makes of the starting noise `x_T` on
        these timesteps, in closed form: the sampler's own limit, with nothing synchronised.

        With one component the posterior mean is linear, so each DDIM step multiplies the state's deviation
        `d_t = x_t - sqrt(a_t) mu` in the eigenbasis by `(sqrt(a_s a_t) lam + sqrt((1 - a_s)(1 - a_t))) / (a_t lam +
        1 - a_t)`, at most `sqrt(a_s lam + 1 - a_s) / sqrt(a_t lam + 1 - a_t)` (the exact flow's) and less the larger
        the step, and DDIM from white noise delivers a Gaussian field with a known spectrum. Two things keep it from
        the prior: a schedule whose first alpha_bar is not 0 (Stable Diffusion's is 0.0047 at t = 999) leaves out the
        share of x_T that strong components still hold there, and coarse steps shrink the components whose
        signal-to-noise ratio crosses 1 within a step. For a mixture each image follows its entry of `components`
        as if that component alone were the prior: an approximation, since the real sampler must first tell the
        components apart.

        Args:
            x_T: the starting noise, `[N, 3, h, w]`.
            alpha_bars: alpha_bar at each step's timestep, from the first (x_T) to where the last step lands.
            components: the component each image follows; None for a one-component prior.

        Returns:
            x0 in x_T's dtype, `[N, 3, h, w]`.
        """
        if len(alpha_bars) < 2 or not all(0.0 < a <= 1.0 for a in alpha_bars):
            raise ValueError(f"alpha_bars must be at least two values in (0, 1], got {list(alpha_bars)}")
        if components is None:
            if self.num_components > 1:
                raise ValueError(f"this prior mixes {self.num_components} components: say which each image follows")
            components = torch.zeros(x_T.shape[0], dtype=torch.long)
        if components.shape != (x_T.shape[0],):
            raise ValueError(
                f"components must hold one index per image ({x_T.shape[0]}), got shape {tuple(components.shape)}"
            )
        device = x_T.device
        components = components.to(device)
        factors = self._spectral_factors(*x_T.shape[2:], device)
        eigvals = factors.eigvals[components]
        gain = torch.ones_like(eigvals)
        for a_t, a_s in zip(alpha_bars[:-1], alpha_bars[1:], strict=True):
            gain = (
                gain * (math.sqrt(a_s * a_t) * eigvals + math.sqrt((1 - a_s) * (1 - a_t))) / (a_t * eigvals + 1 - a_t)
            )
        means = self.means.to(device)[components][:, :, None, None]
        start = x_T.to(torch.float64)
        deviation = self._filter(start - math.sqrt(alpha_bars[0]) * means, factors.eigvecs[components], gain)
        return (deviation + math.sqrt(alpha_bars[-1]) * means).to(x_T.dtype)

    def _choose_components(
        self, num: int, weights: Tensor | None, generator: torch.Generator | None, device: torch.device
    ) -> Int[Tensor, " N"]:
        weights = self.weights if weights is None else weights
        if weights.shape != self.weights.shape or bool((weights < 0).any()) or not bool(weights.sum() > 0):
            raise ValueError(f"weights must be {self.num_components} non-negative numbers, not all zero, got {weights}")
        return torch.multinomial(weights.to(device), num, replacement=True, generator=generator)

    @staticmethod
    def _filter(
        x: Float[Tensor, "N 3 h w"], eigvecs: Complex[Tensor, "N h w 3 3"], gains: Float[Tensor, "N 3 h w"]
    ) -> Float[Tensor, "N 3 h w"]:
        """`U diag(gains) U^T x` per frequency: a symmetric filter, so a real x stays real."""
        rotated = torch.einsum("nhwcj,nchw->njhw", eigvecs, torch.fft.fft2(x, norm="ortho")) * gains
        return torch.fft.ifft2(torch.einsum("nhwcj,njhw->nchw", eigvecs, rotated), norm="ortho").real

    def _eigen_spectra(self, x: Tensor, alpha_bar: float) -> tuple[list[Tensor], Float[Tensor, "M 3 h w"]]:
        """x's spectra in each component's eigenbasis, where x_t's covariance is diagonal, and that diagonal.

        Returns:
            Per component m, the unitary spectrum of `x - sqrt(a) mu_m` rotated by `U_m(k)^T`, `[N, 3, h, w]`; and
            the eigenvalues `a lam + 1 - a` of `a Sigma_m(k) + (1 - a) I`.
        """
        _, _, h, w = x.shape
        factors = self._spectral_factors(h, w, x.device)
        spectra = []
        for m in range(self.num_components):
            residual = x - math.sqrt(alpha_bar) * self.means[m].to(x.device)[:, None, None]
            spectra.append(torch.einsum("hwcj,nchw->njhw", factors.eigvecs[m], torch.fft.fft2(residual, norm="ortho")))
        return spectra, alpha_bar * factors.eigvals + (1.0 - alpha_bar)

    @staticmethod
    def _log_likelihoods(spectra: list[Tensor], variances: Tensor) -> Float[Tensor, "N M"]:
        """log N(x; sqrt(a) mu_m, a Sigma_m + (1 - a) I) for each image and component, from `_eigen_spectra`."""
        # The unitary FFT and the rotations keep the quadratic form, and the log-determinant is the sum of the
        # per-frequency ones: both are sums over the full complex spectrum.
        log_likelihoods = []
        for spectrum, variance in zip(spectra, variances, strict=True):
            quadratic = (spectrum.abs().square() / variance).sum(dim=(1, 2, 3))
            log_likelihoods.append(-0.5 * (quadratic + variance.log().sum() + variance.numel() * math.log(2 * math.pi)))
        return torch.stack(log_likelihoods, dim=1)

    def _responsibilities(self, spectra: list[Tensor], variances: Tensor) -> Float[Tensor, "N M"]:
        log_likelihoods = self._log_likelihoods(spectra, variances)
        return torch.softmax(log_likelihoods + self.weights.to(log_likelihoods.device).log(), dim=1)

    def component_log_likelihood(self, x0: Float[Tensor, "N 3 h w"]) -> Float[Tensor, "N M"]:
        """log p(x0 | m) of clean images under each component (add `weights.log()` for the joint), float64.

        The argmax over m is the component an image most looks like, which is how a caller reports it.
        """
        return self._log_likelihoods(*self._eigen_spectra(x0.to(torch.float64), alpha_bar=1.0))

    def responsibilities(self, x_t: Float[Tensor, "N 3 h w"], t: int) -> Float[Tensor, "N M"]:
        """p(m | x_t) for each image at train timestep t, float64: softmax over m of log pi_m + log p(x_t | m)."""
        return self._responsibilities(*self._eigen_spectra(x_t.to(torch.float64), self._alpha_bar(t)))

    def _alpha_bar(self, t: int) -> float:
        if not 0 <= t < self.schedule.num_train_timesteps:
            raise ValueError(f"t must be a train timestep in 0..{self.schedule.num_train_timesteps - 1}, got {t}")
        return self.schedule.alpha_bar(t)

    # -- the denoiser --------------------------------------------------------------------------------------------------

    def posterior_mean(self, x_t: Float[Tensor, "N 3 h w"], t: int) -> Float[Tensor, "N 3 h w"]:
        """The exact Tweedie estimate x0_hat = E[x0 | x_t] at train timestep t, float64, in one batch.

        Per component a Wiener filter per frequency (module docstring); for a mixture, their average weighted by
        `responsibilities`.
        """
        x_t = x_t.to(torch.float64)
        alpha_bar = self._alpha_bar(t)
        factors = self._spectral_factors(*x_t.shape[2:], x_t.device)
        spectra, variances = self._eigen_spectra(x_t, alpha_bar)
        # In the eigenbasis the Wiener filter sqrt(a) Sigma (a Sigma + (1 - a) I)^-1 is diagonal.
        gains = math.sqrt(alpha_bar) * factors.eigvals / variances
        weights = self._responsibilities(spectra, variances) if self.num_components > 1 else None
        x0_hat = torch.zeros_like(x_t)
        for m, spectrum in enumerate(spectra):
            filtered = torch.einsum("hwcj,njhw->nchw", factors.eigvecs[m], spectrum * gains[m])
            x0_hat_m = self.means[m].to(x_t.device)[:, None, None] + torch.fft.ifft2(filtered, norm="ortho").real
            x0_hat = x0_hat + (x0_hat_m if weights is None else weights[:, m, None, None, None] * x0_hat_m)
        return x0_hat

    def predict_eps(self, x_t: Float[Tensor, "N 3 h w"], t: int, cond: ViewConditions) -> Float[Tensor, "N 3 h w"]:
        """The exact noise prediction: `(x_t - sqrt(a) x0_hat) / sqrt(1 - a)` with the exact posterior mean.

        `cond` is ignored: the prior is unconditional (its prompt picked the preset when it was built). Views are
        processed in chunks of `max_batch`, each view independently, in float64; the result has x_t's dtype and
        device.
        """
        if x_t.ndim != 4 or x_t.shape[1] != 3:
            raise ValueError(f"x_t must be [N, 3, h, w], got {tuple(x_t.shape)}")
        alpha_bar = self._alpha_bar(t)
        chunks = []
        for start in range(0, x_t.shape[0], self.max_batch):
            chunk = x_t[start : start + self.max_batch].to(torch.float64)
            chunks.append(eps_from_x0(chunk, self.posterior_mean(chunk, t), alpha_bar))
        return torch.cat(chunks).to(x_t.dtype)


@dataclass(frozen=True)
class GaussianTexturePriorConfig:
    """Builds a `GaussianTexturePrior` from a prompt."""

    prompt: str = "marble"
    """Text naming a texture preset (marble, wood, stripes, clouds, camouflage, terrazzo, granite)."""
    schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    """Noise schedule: Stable Diffusion 1.5's scaled-linear betas, or the DDPM paper's linear betas."""
    native_size: int = 64
    """Image size (long side, pixels) that views are rendered at."""
    max_batch: int = 16
    """The most views one posterior-mean evaluation takes."""

    def setup(self) -> GaussianTexturePrior:
        """The prior this config describes; raises InputError if the prompt names no preset."""
        schedule = NoiseSchedule.scaled_linear() if self.schedule == "scaled_linear" else NoiseSchedule.linear()
        return GaussianTexturePrior.from_prompt(
            self.prompt, schedule=schedule, native_size=self.native_size, max_batch=self.max_batch
        )
