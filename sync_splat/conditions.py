"""What each view is conditioned on besides its noisy sample: made by a bridge, read by a denoiser.

Both `sync_splat.bridges` and `sync_splat.denoisers` import this module, so neither imports the other.
Dimension letters (docs/conventions.md): N views, H W image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class ViewConditions:
    """Per-view conditions (`Bridge.conditions`). The prompt itself belongs to the denoiser (it owns the text
    encoder); a view adds its suffix to it.

    Attributes:
        prompt_suffixes: one suffix per view, such as ", front view" (empty strings for none).
        depth: per-view normalised inverse depth in [0, 1] (near is bright) for ControlNet depth, or None.
    """

    prompt_suffixes: tuple[str, ...]
    depth: Float[Tensor, "N 1 H W"] | None = None

    @classmethod
    def plain(cls, num_views: int) -> ViewConditions:
        """No suffixes and no depth."""
        return cls(prompt_suffixes=("",) * num_views)
