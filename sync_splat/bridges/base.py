"""The Bridge protocol: the geometry between the canonical variable z and the per-view instances x.

A bridge owns the projections `f_i: z -> x_i` (`project`) and the aggregation `g: {x_i} -> z` (`unproject`).
The sampler never looks inside either: crops of a wide image, inner rotations of an ambiguous image, renders of
Gaussian splats, mesh textures and panoramas all meet it through this protocol.

`unproject` is written as per-view sums (`unproject_sums` returns a numerator and a denominator accumulated over
views), so views can be split across processes and combined with all-reduces. Bridges whose `g` is an iterative fit
(Gaussian splats) accept the previous answer as a warm start; meshes and panoramas refine their average by
back-projection (`plumbing.back_project`), each step one more sum over views of what they still differ from z. A
bridge whose views are split across processes (the splat bridge; `sync_splat.distributed`) has a `shard` attribute
saying which it holds: its `num_views`, `project`, `coverage`, `conditions` and the `x_T` of `initial_noise` are of
those views, and `unproject` returns the whole z on every process.

Dimension letters (docs/conventions.md): N views, C channels, h w instance pixels; the canonical shape is the
bridge's own (`[C, H, W]` for images, `[G, C]` for splat colours, `[C, Ht, Wt]` for textures and panoramas).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.conditions import ViewConditions


@runtime_checkable
class Bridge(Protocol):
    """Projection and aggregation between one canonical variable and N instance variables.

    Attributes:
        num_views: N.
        canonical_shape: the shape of z.
        instance_shape: the shape of one view's x, `(C, h, w)`.
        linear: whether `project` is linear in z and `unproject` in x, so that noise and noise predictions may be
            aggregated (cases 1, 3 and 4). An RGB canonical space seen through a VAE is not: it supports only
            the x0_hat cases.
    """

    num_views: int
    canonical_shape: tuple[int, ...]
    instance_shape: tuple[int, int, int]
    linear: bool

    def project(self, z: Tensor, background: Float[Tensor, "N C h w"] | None = None) -> Float[Tensor, "N C h w"]:
        """f: render z into every view; pixels the canonical space does not cover come from `background`
        (zero when None), blended by coverage where coverage is fractional."""
        ...

    def unproject(self, x: Float[Tensor, "N C h w"], previous: Tensor | None = None) -> Tensor:
        """g: aggregate the views into z; `previous` warm-starts iterative fits and is ignored by closed forms.
        Canonical elements no view covers are zero (or the warm start's value)."""
        ...

    def coverage(self) -> Float[Tensor, "N 1 h w"]:
        """How much of each instance pixel the canonical space determines, in [0, 1]."""
        ...

    def initial_noise(self, generator: torch.Generator) -> tuple[Tensor, Float[Tensor, "N C h w"]]:
        """View-consistent initial noise (z_T, x_T): z_T ~ N(0, I) and x_T = f(z_T) completed to unit variance per
        element where f blends or leaves pixels uncovered, so overlapping views start equal."""
        ...

    def conditions(self) -> ViewConditions:
        """Per-view conditions for the denoiser (prompts with view suffixes, depth maps)."""
        ...

    def export(self, z: Tensor, path: Path) -> Path:
        """Write the bridge's product (PNG, PLY, OBJ, ...) for canonical z atomically; returns the written path."""
        ...
