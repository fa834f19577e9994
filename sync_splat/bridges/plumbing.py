"""What every bridge shares: shape checks, the division that ends an aggregation, the back-projection that refines
it, a per-device cache of the precomputed geometry, and the rule that turns a camera's direction into a prompt suffix.

Every bridge writes g as per-view sums, a numerator and a denominator accumulated over views (so views can be split
across processes and combined with one all-reduce); `divide_sums` turns them into the canonical answer. Filling what
no view sees is `sync_splat.functional.fill`; writing PNGs is `sync_splat.scene.images`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError


def divide_sums(num: Tensor, den: Tensor, previous: Tensor | None = None) -> Tensor:
    """The aggregated canonical value `num / den` where `den > 0`, else the warm start `previous` (or zero).

    Args:
        num: the per-view sums of weighted instance values, in the canonical shape.
        den: the per-view sums of weights, broadcastable to `num`.
        previous: the previous canonical value, used where no view contributes.

    Returns:
        A tensor shaped like `num`.
    """
    den = den.expand_as(num)
    covered = den > 0
    fallback = torch.zeros_like(num) if previous is None else previous.to(num).expand_as(num)
    return torch.where(covered, num / torch.where(covered, den, torch.ones_like(den)), fallback)


def back_project(
    x: Tensor,
    aggregate: Callable[[Tensor], Tensor],
    project: Callable[[Tensor], Tensor],
    steps: int,
    start: Tensor | None = None,
) -> Tensor:
    """g refined by back-projection: `z = aggregate(x)`, then `steps` times `z += aggregate(x - project(z))`.

    A weighted average of resampled views is blurred once more by every round trip `f(g(x))`, and the sampler makes
    that round trip at every synchronised step. Each step puts back what the views still differ from the answer's
    renders, so the views' shared detail survives; where views agree exactly the answer is the same. Linear in `x`
    when `aggregate` and `project` are.

    Args:
        x: the views.
        aggregate: the plain g: the views' weighted average in the canonical space.
        project: f, rendering a canonical value into the views.
        steps: how many refinements (0: the weighted average).
        start: `aggregate(x)` when already computed, or computed otherwise (e.g. with a fallback for what no view
            sees, which the refinements then leave as it is).
    """
    z = aggregate(x) if start is None else start
    for _ in range(steps):
        z = z + aggregate(x - project(z))
    return z


def expect_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    """Raise a one-line ValueError when `tensor` is not shaped `shape` (a programming error, not a user one)."""
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")


T = TypeVar("T")


class DeviceCache(Generic[T]):
    """Geometry built once on one device, and copied to any other device the first time it is asked for there.

    Args:
        value: the geometry; anything with a `.to(device)` that returns a copy.
        device: where `value` lives.
    """

    def __init__(self, value: T, device: torch.device) -> None:
        self.device = torch.device(device)
        self._copies: dict[torch.device, T] = {self.device: value}

    def on(self, device: torch.device | None = None) -> T:
        """The geometry on `device` (the one it was built on when None)."""
        device = self.device if device is None else torch.device(device)
        if device not in self._copies:
            self._copies[device] = self._copies[self.device].to(device)  # type: ignore[attr-defined]
        return self._copies[device]


def resolve_device(device: str) -> torch.device:
    """`"auto"`: CUDA when available, else the CPU; any other string names the device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"device {device!r} is not a device name: use 'auto', 'cpu' or 'cuda'") from None


@dataclass(frozen=True)
class ViewSuffixes:
    """The prompt suffix of a view from the direction it looks at the object (SyncMVD and the paper's prompts).

    A camera higher than `top_deg` above the object is a top view (lower than `-top_deg`, a bottom view); otherwise its
    azimuth from the front decides: within `front_deg` a front view, beyond `back_deg` a back view, else a side view.
    """

    front_deg: float = 45.0
    """Cameras within this azimuth of the front are front views."""
    back_deg: float = 135.0
    """Cameras farther than this azimuth from the front are back views."""
    top_deg: float = 60.0
    """Cameras higher than this elevation are top views (lower than minus this, bottom views)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.front_deg <= self.back_deg <= 180.0 or not 0.0 <= self.top_deg <= 90.0:
            raise InputError(
                "view suffixes need 0 <= front_deg <= back_deg <= 180 and 0 <= top_deg <= 90, got "
                f"front_deg={self.front_deg}, back_deg={self.back_deg}, top_deg={self.top_deg}"
            )

    def label(self, elevation_deg: float, azimuth_deg: float) -> str:
        """', front view', ', side view', ', back view', ', top view' or ', bottom view'."""
        if elevation_deg > self.top_deg:
            return ", top view"
        if elevation_deg < -self.top_deg:
            return ", bottom view"
        azimuth = abs((azimuth_deg + 180.0) % 360.0 - 180.0)
        if azimuth <= self.front_deg:
            return ", front view"
        if azimuth >= self.back_deg:
            return ", back view"
        return ", side view"

    def for_cameras(
        self,
        c2w: Float[Tensor, "N 4 4"],
        centre: Float[Tensor, "3"],
        up: tuple[float, float, float] = (0.0, 1.0, 0.0),
        front: tuple[float, float, float] = (0.0, 0.0, 1.0),
    ) -> tuple[str, ...]:
        """The suffix of each camera from its direction seen from `centre`: elevation above the plane normal to `up`,
        azimuth from `front` (a camera on the `front` side looks back along it)."""
        up_axis = F.normalize(torch.tensor(up, dtype=torch.float64), dim=0)
        front_axis = torch.tensor(front, dtype=torch.float64)
        front_axis = F.normalize(front_axis - (front_axis @ up_axis) * up_axis, dim=0)
        side_axis = torch.linalg.cross(up_axis, front_axis)
        directions = F.normalize(c2w[:, :3, 3].double().cpu() - centre.double().cpu(), dim=-1)
        elevation = torch.rad2deg(torch.asin((directions @ up_axis).clamp(-1, 1)))
        azimuth = torch.rad2deg(torch.atan2(directions @ side_axis, directions @ front_axis))
        return tuple(self.label(e, a) for e, a in zip(elevation.tolist(), azimuth.tolist(), strict=True))


MESH_VIEW_SUFFIXES = ViewSuffixes(front_deg=30.0, back_deg=120.0, top_deg=30.0)
"""The official mesh-texturing thresholds: front within 30 degrees, back beyond 120, top above 30."""
