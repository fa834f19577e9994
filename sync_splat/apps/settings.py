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
from sync_splat.sampler import SyncConfig


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
    seed: int = 0
    """Seed of the one random generator of the run."""
    sd: StableDiffusionDenoiserConfig = field(default_factory=StableDiffusionDenoiserConfig)
    """Stable Diffusion settings (used with --denoiser sd; the prompt above replaces sd.prompt)."""

    def build_denoiser(self) -> Denoiser:
        """The denoiser these settings name (raises InputError for unknown prompts or missing weights)."""
        if self.denoiser == "prior":
            return GaussianTexturePriorConfig(prompt=self.prompt).setup()
        if self.denoiser == "sd":
            return replace(self.sd, prompt=self.prompt).setup()
        raise InputError(f"denoiser must be 'prior' or 'sd', got {self.denoiser!r}")

    def sync_config(self) -> SyncConfig:
        """The sampler's configuration: the case's preset with these steps, window and update."""
        return replace(SyncConfig.case(self.case), num_steps=self.steps, sync_until=self.sync_until, method=self.method)
