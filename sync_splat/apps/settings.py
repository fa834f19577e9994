"""What every front door shares: the prompt, the denoiser it names, and how the sampler runs.

`RestyleConfig` (splats), `MeshTextureConfig` (meshes) and `PanoramaConfig` (panoramas) extend `SamplingSettings`
with their own scene settings, and override its defaults where the paper's settings differ (the panorama prompt,
each application's guidance scale). Their fields are command-line options (tyro), so each keeps a docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from sync_splat.denoisers.base import Denoiser
from sync_splat.denoisers.prior import GaussianTexturePriorConfig
from sync_splat.denoisers.stable_diffusion import StableDiffusionDenoiserConfig
from sync_splat.errors import InputError
from sync_splat.sampler import PAPER_CASES, StepSpacing, SyncConfig

MAX_SEED = 2**64 - 1
"""The largest seed torch's generator takes (it seeds from 64 bits; a negative seed would alias a large one)."""


@dataclass(frozen=True)
class SamplingSettings:
    """The prompt, the denoiser and the synchronised sampler's settings."""

    prompt: str = "marble"
    """The text prompt. With the prior it names a texture preset (marble, wood, stripes, clouds, camouflage,
    terrazzo, granite)."""
    denoiser: Literal["prior", "sd"] = "prior"
    """'prior': the exact Gaussian-texture prior (CPU, no weights); 'sd': Stable Diffusion + ControlNet depth."""
    steps: int = 30
    """Denoising steps."""
    case: int = 2
    """The paper's synchronisation case (2 = SyncTweedies; 5 = canonical x0 averaging, as SyncMVD; 0 = none)."""
    sync_until: float = 0.8
    """Fraction of the schedule that is synchronised (the paper's mvd_end)."""
    method: Literal["ddim", "ddpm"] = "ddim"
    """The reverse step: DDIM (the paper's README and tests) or ancestral DDPM (the official mesh code's default)."""
    timestep_spacing: StepSpacing = SyncConfig.timestep_spacing
    """Which train timesteps the steps visit: 'karras' starts on the noisiest (t = 999) and crowds the steps at low
    noise; 'trailing' spreads them evenly from t = 999; 'model' follows the denoiser's own configuration (Stable
    Diffusion 1.5's 'leading' starts at t = 958 for 30 steps)."""
    seed: int = 0
    """Seed of the one random generator of the run (0 to 2**64 - 1)."""
    sd: StableDiffusionDenoiserConfig = field(default_factory=StableDiffusionDenoiserConfig)
    """Stable Diffusion settings (used with --denoiser sd; the prompt above replaces sd.prompt)."""

    def __post_init__(self) -> None:
        """Refuse settings that cannot run, as the user typed them, before any work (tyro builds this dataclass)."""
        if self.steps < 1:
            raise InputError(f"--steps must be at least 1, got {self.steps}")
        if self.denoiser not in ("prior", "sd"):
            raise InputError(f"--denoiser must be 'prior' or 'sd', got {self.denoiser!r}")
        if self.case not in PAPER_CASES:
            raise InputError(f"--case {self.case} does not exist: the paper's cases are 0 to 5 (2 is SyncTweedies)")
        if not 0.0 <= self.sync_until <= 1.0:
            raise InputError(f"--sync-until must be in [0, 1] (a fraction of the schedule), got {self.sync_until}")
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(
                f"--seed must be an integer from 0 to {MAX_SEED} (2**64 - 1, what torch's random generator takes), "
                f"got {self.seed}"
            )
        self.sync_config().check()

    def build_denoiser(self) -> Denoiser:
        """The denoiser these settings name (raises InputError for unknown prompts, missing weights, or more steps
        than its schedule has)."""
        if self.denoiser == "prior":
            denoiser = GaussianTexturePriorConfig(prompt=self.prompt).setup()
        else:
            denoiser = replace(self.sd, prompt=self.prompt).setup()
        self.check_steps(denoiser)
        return denoiser

    def check_steps(self, denoiser: Denoiser) -> None:
        """Refuse more denoising steps than `denoiser`'s schedule has train timesteps (each step needs its own)."""
        schedule = self.sync_config().schedule(denoiser)
        most, total = schedule.max_steps, schedule.num_train_timesteps
        if self.steps > most:
            raise InputError(
                f"--steps {self.steps} is more than the denoiser's schedule allows: at most {most} (its {total} train "
                "timesteps); 20-50 steps are usual"
            )

    def sync_config(self) -> SyncConfig:
        """The sampler's configuration: the case's preset with these steps, window and update."""
        return replace(
            SyncConfig.case(self.case), num_steps=self.steps, sync_until=self.sync_until, method=self.method,
            timestep_spacing=self.timestep_spacing,
        )  # fmt: skip
