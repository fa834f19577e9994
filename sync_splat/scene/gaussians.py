"""Gaussian splat scenes: the tensors of G Gaussians, exactly as 3DGS PLY files and splatfacto store them.

A `GaussianScene` holds the raw, pre-activation parameters (docs/conventions.md): `means` [G, 3], `quats_wxyz`
[G, 4] (possibly unnormalised), `log_scales` [G, 3] (`scale = exp`), `opacity_logits` [G] (`alpha = sigmoid`) and
spherical harmonics `sh` [G, K, 3] with K = (degree + 1)^2 and the DC term at `sh[:, 0]`, so the DC colour is
`rgb01 = 0.5 + SH_C0 * sh[:, 0]`. `GaussianScene.load` reads 3DGS PLY files (`sync_splat.scene.ply`) and splatfacto
checkpoints and runs (`sync_splat.scene.splatfacto`); `save` writes the standard 3DGS PLY, atomically. Inputs are
never written to.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError
from sync_splat.functional.sh import SH_C0, SH_DEGREES, sh_bases

__all__ = ["SH_C0", "GaussianScene"]


@dataclass(frozen=True, eq=False, repr=False)
class GaussianScene:
    """G Gaussians with their raw (pre-activation) parameters; geometry is never changed by this class.

    Attributes:
        means: centres, world frame.
        quats_wxyz: rotations, possibly unnormalised (normalise on use).
        log_scales: per-axis log standard deviations.
        opacity_logits: `alpha = sigmoid(opacity_logits)`.
        sh: spherical-harmonic coefficients, K = (degree + 1)^2, DC at `sh[:, 0]`.
        source: the file the scene was read from (`save` refuses to overwrite it); None for generated scenes.
    """

    means: Float[Tensor, "G 3"]
    quats_wxyz: Float[Tensor, "G 4"]
    log_scales: Float[Tensor, "G 3"]
    opacity_logits: Float[Tensor, " G"]
    sh: Float[Tensor, "G K 3"]
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        g = self.means.shape[0]
        expected = {
            "means": (g, 3),
            "quats_wxyz": (g, 4),
            "log_scales": (g, 3),
            "opacity_logits": (g,),
            "sh": (g, self.sh.shape[1] if self.sh.ndim == 3 else -1, 3),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"GaussianScene.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        if self.sh.shape[1] not in SH_DEGREES:
            raise ValueError(f"GaussianScene.sh has K = {self.sh.shape[1]} coefficients; K must be 1, 4, 9 or 16")

    def __repr__(self) -> str:
        return f"GaussianScene(num_gaussians={self.num_gaussians}, sh_degree={self.sh_degree}, source={self.source})"

    # ---- views of the data ----------------------------------------------------------------------------------

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return SH_DEGREES[self.sh.shape[1]]

    @property
    def rgb01(self) -> Float[Tensor, "G 3"]:
        """The view-independent (DC) colour, clamped to [0, 1]."""
        return (0.5 + SH_C0 * self.sh[:, 0]).clamp(0.0, 1.0)

    def colors(self, camera_centre: Float[Tensor, "3"] | None = None) -> Float[Tensor, "G 3"]:
        """Colours in [0, 1]: the DC colour, or the full SH colour seen from `camera_centre` (gsplat's rule:
        direction = mean - camera centre, colour = clamp(SH(direction) + 0.5))."""
        if camera_centre is None or self.sh_degree == 0:
            return self.rgb01
        dirs = torch.nn.functional.normalize(self.means - camera_centre.to(self.means), dim=-1)
        bases = sh_bases(self.sh_degree, dirs)  # [G, K]
        return ((bases[:, :, None] * self.sh).sum(dim=1) + 0.5).clamp(0.0, 1.0)

    @property
    def bounds(self) -> tuple[Float[Tensor, "3"], Float[Tensor, "3"]]:
        """Axis-aligned bounds (min, max) of the Gaussian centres."""
        return self.means.amin(dim=0), self.means.amax(dim=0)

    @property
    def centre(self) -> Float[Tensor, "3"]:
        """The centre of the axis-aligned bounds: where an orbit rig looks."""
        low, high = self.bounds
        return (low + high) / 2

    @property
    def radius(self) -> float:
        """The radius of the sphere around `centre` that holds every Gaussian centre."""
        return float((self.means - self.centre).norm(dim=-1).max())

    def bounding_sphere(self, trim: float = 0.0) -> tuple[Float[Tensor, "3"], float]:
        """A sphere around the bulk of the scene, ignoring a `trim` fraction of outliers (floaters of real captures).

        The centre is the middle of the per-axis `[trim, 1 - trim]` quantiles of the means; the radius is the
        `1 - trim` quantile of the distances to it. `trim = 0` gives `(centre, radius)`.
        """
        low, high = _quantile(self.means, trim), _quantile(self.means, 1.0 - trim)
        centre = (low + high) / 2
        distances = (self.means - centre).norm(dim=-1, keepdim=True)
        return centre, float(_quantile(distances, 1.0 - trim)[0])

    # ---- new scenes -----------------------------------------------------------------------------------------

    def with_colors(self, rgb01: Float[Tensor, "G 3"]) -> GaussianScene:
        """The same geometry (the very same tensors) with view-independent colours: the DC term becomes
        `(rgb01 - 0.5) / SH_C0` and the higher-order SH coefficients are zero (K is kept)."""
        if tuple(rgb01.shape) != (self.num_gaussians, 3):
            raise ValueError(f"with_colors: rgb01 has shape {tuple(rgb01.shape)}, expected ({self.num_gaussians}, 3)")
        sh = torch.zeros_like(self.sh)
        sh[:, 0] = (rgb01.to(self.sh) - 0.5) / SH_C0
        return dataclasses.replace(self, sh=sh)

    def to(self, device: torch.device | str) -> GaussianScene:
        """The scene with every tensor on `device`."""
        tensors = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self) if f.name != "source"}
        return dataclasses.replace(self, **tensors)

    # ---- files ----------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GaussianScene:
        """Read a scene from a `.ply`, a splatfacto `.ckpt`, a run's `config.yml`, or a run folder."""
        from sync_splat.scene.ply import read_ply
        from sync_splat.scene.splatfacto import latest_checkpoint, read_splatfacto_checkpoint

        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file: pass a .ply, a splatfacto .ckpt or a run's config.yml")
        if path.is_dir():  # a run folder (config.yml inside) or its checkpoint folder
            config, models = path / "config.yml", path / "nerfstudio_models"
            run = config if config.is_file() else models if models.is_dir() else path
            return read_splatfacto_checkpoint(latest_checkpoint(run))
        suffix = path.suffix.lower()
        if suffix == ".ply":
            return read_ply(path)
        if suffix == ".ckpt":
            return read_splatfacto_checkpoint(path)
        if suffix in (".yml", ".yaml"):
            return read_splatfacto_checkpoint(latest_checkpoint(path))
        raise InputError(
            f"{path}: unknown extension {path.suffix!r}: pass a 3DGS .ply, a splatfacto .ckpt or a run's config.yml"
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the standard 3DGS PLY (`sync_splat.scene.ply.write_ply`); returns the path written."""
        from sync_splat.scene.ply import write_ply

        return write_ply(self, path)


def _quantile(values: Float[Tensor, "G D"], q: float) -> Float[Tensor, " D"]:
    """Per-column q-quantile (nearest rank), without torch.quantile's 16M-element limit."""
    k = min(max(int(round(q * (values.shape[0] - 1))), 0), values.shape[0] - 1)
    return values.kthvalue(k + 1, dim=0).values
