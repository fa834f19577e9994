"""The texture presets of `GaussianTexturePrior`: spectral shapes, the fields and components built from them, and the
table of named presets a prompt chooses from.

A field is a stationary Gaussian random field with a power spectrum (a function of continuous frequency in cycles per
pixel, scaled to unit variance) painted in one colour direction; a component is a mean colour plus three fields; a
preset is a mixture of components. Colours are in rgb01 units; a field's colour is its standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError

RGB = tuple[float, float, float]

# Spectra are integrated with the midpoint rule on at least this many frequencies per axis.
_FINE_GRID = 512


# ---------------------------------------------------------------------------------------------------------------------
# Spectral shapes: even functions of frequency (cycles per pixel), unnormalised.


class Spectrum(Protocol):
    """An unnormalised power spectral density of a stationary field, even in f."""

    def density(self, fy: Tensor, fx: Tensor) -> Tensor:
        """The density at frequencies (fy, fx) in cycles per pixel, each in [-1/2, 1/2); broadcasts."""
        ...


@dataclass(frozen=True)
class PowerLaw:
    """`(|f|^2 + knee^2)^(-exponent / 2) * exp(-(|f| / cutoff)^2)`: 1/f^exponent above the knee, soft above cutoff."""

    exponent: float
    knee: float
    cutoff: float = math.inf

    def density(self, fy: Tensor, fx: Tensor) -> Tensor:
        radius2 = fy**2 + fx**2
        return (radius2 + self.knee**2) ** (-self.exponent / 2) * torch.exp(-radius2 / self.cutoff**2)


@dataclass(frozen=True)
class Ring:
    """An isotropic band around `radius` cycles per pixel with Gaussian profile `width`: speckle of that size."""

    radius: float
    width: float

    def density(self, fy: Tensor, fx: Tensor) -> Tensor:
        return torch.exp(-0.5 * ((torch.sqrt(fy**2 + fx**2) - self.radius) / self.width) ** 2)


def _along_across(fy: Tensor, fx: Tensor, angle_deg: float) -> tuple[Tensor, Tensor]:
    """Frequency components along the direction `angle_deg` (from +x towards +y, rows down) and across it."""
    uy, ux = math.sin(math.radians(angle_deg)), math.cos(math.radians(angle_deg))
    return fx * ux + fy * uy, fy * ux - fx * uy


@dataclass(frozen=True)
class Oriented:
    """Two Gaussian bumps of `width` at +-`frequency` along the wave direction `angle_deg`.

    The field is a wavy grating of period 1 / frequency pixels whose bars run perpendicular to the wave direction.
    """

    frequency: float
    angle_deg: float
    width: float

    def density(self, fy: Tensor, fx: Tensor) -> Tensor:
        f_along, f_across = _along_across(fy, fx, self.angle_deg)
        bumps = torch.exp(-0.5 * ((f_along - self.frequency) / self.width) ** 2) + torch.exp(
            -0.5 * ((f_along + self.frequency) / self.width) ** 2
        )
        return bumps * torch.exp(-0.5 * (f_across / self.width) ** 2)


@dataclass(frozen=True)
class Elongated:
    """An anisotropic Gaussian low-pass: the field varies slowly along `angle_deg` (fibres) and fast across it."""

    angle_deg: float
    along: float
    across: float

    def density(self, fy: Tensor, fx: Tensor) -> Tensor:
        f_along, f_across = _along_across(fy, fx, self.angle_deg)
        return torch.exp(-0.5 * ((f_along / self.along) ** 2 + (f_across / self.across) ** 2))


@cache
def unit_variance_scale(spectrum: Spectrum) -> float:
    """1 / (the integral of the density over [-1/2, 1/2)^2), so that the scaled field has unit variance."""
    freqs = (torch.arange(_FINE_GRID, dtype=torch.float64) + 0.5) / _FINE_GRID - 0.5
    return 1.0 / float(spectrum.density(freqs[:, None], freqs[None, :]).mean())


def cell_averaged_density(spectrum: Spectrum, h: int, w: int) -> Float[Tensor, "h w"]:
    """The density averaged over each frequency cell of the h x w FFT grid (`fftfreq` order), float64.

    Averaging over the cell (midpoint rule, at least `_FINE_GRID` points per axis in all) rather than sampling the
    density at the cell centre keeps a field's variance, the mean over the grid, the same at every image size:
    a small crop of a texture with large features gets their power at DC instead of losing it.
    """

    def points(n: int) -> Tensor:
        per_cell = math.ceil(_FINE_GRID / n)
        offsets = ((torch.arange(per_cell, dtype=torch.float64) + 0.5) / per_cell - 0.5) / n
        return torch.fft.fftfreq(n, dtype=torch.float64)[:, None] + offsets[None, :]  # [n, per_cell]

    density = spectrum.density(points(h)[:, :, None, None], points(w)[None, None, :, :])
    return density.mean(dim=(1, 3))


# ---------------------------------------------------------------------------------------------------------------------
# Texture components and presets (data).


@dataclass(frozen=True)
class TextureField:
    """One independent stationary field of unit variance and the colour it paints.

    Attributes:
        color_rgb01: the change in rgb01 per unit of the field (its standard deviation in rgb01): a column of A.
        spectrum: the field's spectral shape (normalised to unit variance by the prior).
        grain: the fraction of the field's variance that is white (per-pixel) grain; keeps every frequency's power
            positive.
    """

    color_rgb01: RGB
    spectrum: Spectrum
    grain: float = 0.02


@dataclass(frozen=True)
class TextureComponent:
    """One Gaussian texture: a mean colour and three independent fields (their colours must be independent).

    Attributes:
        mean_rgb01: the mean colour, rgb01.
        fields: the three fields; their colours are the columns of the mixing matrix A (rgb01 units).
        weight: the mixture weight pi_m (normalised over the components by the prior).
    """

    mean_rgb01: RGB
    fields: tuple[TextureField, TextureField, TextureField]
    weight: float = 1.0


def _component(mean_rgb01: RGB, *fields: tuple[RGB, Spectrum, float], weight: float = 1.0) -> TextureComponent:
    """A component from (colour, spectrum, grain) triples: the presets' compact notation."""
    return TextureComponent(mean_rgb01, tuple(TextureField(*field) for field in fields), weight)


_BLOBS = PowerLaw(exponent=4.0, knee=0.03, cutoff=0.2)
_CHIPS = Ring(radius=0.07, width=0.035)
_SOFT = PowerLaw(exponent=2.0, knee=0.05)

# Preset name -> components (colours in rgb01; a field's colour is its standard deviation). Each comment names what
# a field paints. Matching takes the preset named earliest in the prompt; the order here only breaks ties.
PRESETS: dict[str, tuple[TextureComponent, ...]] = {
    "marble": (
        _component(
            (0.74, 0.73, 0.71),
            ((-0.23, -0.23, -0.22), Elongated(angle_deg=35.0, along=0.015, across=0.12), 0.02),  # streaked veins
            ((-0.14, -0.12, -0.09), PowerLaw(exponent=3.0, knee=0.03), 0.02),  # warm grey clouding
            ((-0.03, 0.00, 0.04), _SOFT, 0.02),  # cool tint
        ),
    ),
    "wood": (
        _component(
            (0.56, 0.37, 0.21),
            ((-0.27, -0.19, -0.11), Elongated(angle_deg=0.0, along=0.008, across=0.10), 0.02),  # growth rings
            ((0.14, 0.07, 0.01), PowerLaw(exponent=3.0, knee=0.03), 0.02),  # heartwood and sapwood
            ((-0.07, -0.07, -0.05), Elongated(angle_deg=0.0, along=0.02, across=0.40), 0.02),  # fibres
        ),
    ),
    "stripes": (
        _component(
            (0.86, 0.50, 0.48),
            ((0.08, 0.40, 0.40), Oriented(frequency=0.125, angle_deg=30.0, width=0.012), 0.02),  # red and white
            ((0.04, 0.03, 0.02), _SOFT, 0.02),  # fading
            ((0.00, 0.03, -0.04), PowerLaw(exponent=1.0, knee=0.1), 0.02),  # dye noise
        ),
    ),
    "clouds": (
        _component(
            (0.50, 0.66, 0.92),
            ((0.31, 0.23, 0.06), PowerLaw(exponent=2.0, knee=0.02, cutoff=0.1), 0.02),  # white clouds, 1/f^2
            ((-0.07, -0.07, -0.07), PowerLaw(exponent=2.5, knee=0.03, cutoff=0.15), 0.02),  # grey undersides
            ((-0.04, -0.02, 0.04), PowerLaw(exponent=3.0, knee=0.03), 0.02),  # deeper blue patches
        ),
    ),
    "camouflage": (
        _component(  # woodland: dark green, brown, black and khaki blobs
            (0.30, 0.31, 0.20),
            ((0.21, 0.20, 0.14), _BLOBS, 0.02),
            ((0.11, -0.04, 0.00), _BLOBS, 0.02),
            ((0.03, 0.04, -0.04), _BLOBS, 0.02),
            weight=0.4,
        ),
        _component(  # desert: sand, tan and brown blobs
            (0.72, 0.61, 0.45),
            ((-0.22, -0.21, -0.17), _BLOBS, 0.02),
            ((0.08, 0.00, -0.06), _BLOBS, 0.02),
            ((0.00, 0.03, 0.04), _BLOBS, 0.02),
            weight=0.35,
        ),
        _component(  # urban: greys with a blue cast
            (0.52, 0.54, 0.57),
            ((-0.30, -0.30, -0.29), _BLOBS, 0.02),
            ((-0.03, 0.00, 0.08), _BLOBS, 0.02),
            ((0.04, -0.03, 0.00), _BLOBS, 0.02),
            weight=0.25,
        ),
    ),
    "terrazzo": (
        _component(  # white cement with red, green and dark chips
            (0.78, 0.76, 0.72),
            ((0.14, -0.13, -0.13), _CHIPS, 0.05),
            ((-0.11, 0.10, -0.07), _CHIPS, 0.05),
            ((-0.18, -0.18, -0.15), _CHIPS, 0.05),
            weight=0.5,
        ),
        _component(  # charcoal cement with white and ochre chips
            (0.26, 0.26, 0.28),
            ((0.28, 0.28, 0.27), _CHIPS, 0.05),
            ((0.13, 0.06, -0.07), _CHIPS, 0.05),
            ((0.00, 0.03, 0.07), _SOFT, 0.02),
            weight=0.3,
        ),
        _component(  # pink cement with grey chips
            (0.80, 0.60, 0.58),
            ((-0.21, -0.17, -0.15), _CHIPS, 0.05),
            ((0.08, -0.06, -0.03), _CHIPS, 0.05),
            ((0.00, 0.06, 0.07), _SOFT, 0.02),
            weight=0.2,
        ),
    ),
    "granite": (
        _component(
            (0.60, 0.55, 0.54),
            ((-0.25, -0.25, -0.24), Ring(radius=0.12, width=0.1), 0.3),  # black mica speckle
            ((0.14, 0.03, 0.04), Ring(radius=0.06, width=0.06), 0.3),  # pink feldspar
            ((0.07, 0.09, 0.10), PowerLaw(exponent=1.0, knee=0.1), 0.3),  # white quartz
        ),
    ),
}


def preset_for_prompt(prompt: str) -> str:
    """The preset a prompt names: case-insensitive, the preset name that occurs earliest in the prompt.

    Raises:
        InputError: no preset name occurs in the prompt (the message lists them).
    """
    text = prompt.lower()
    found = [(text.find(name), order, name) for order, name in enumerate(PRESETS) if name in text]
    if not found:
        names = ", ".join(PRESETS)
        raise InputError(f"prompt {prompt!r} names no GaussianTexturePrior preset: put one of {names} in the prompt")
    return min(found)[2]
