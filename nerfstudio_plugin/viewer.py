"""The live viewer of a sync-splat run: a read-only readout element, and a refresh after each denoising step.

Nerfstudio's viewer is tuned to splatfacto, whose iterations take milliseconds: it re-renders every so many trainer
iterations (30 until it has measured both speeds), shows the trainer's iteration in its header, and re-renders at a
low resolution whenever a control changes. A sync-splat iteration is one denoising step, which takes seconds, so:

- `ViewerReadout` shows text that the pipeline updates (the step counter) as markdown: it is no input, so updating
  it does not count as a change of the controls (which would re-render at the lowest resolution after each step);
- `refresh_viewer` sets the header's "Step" to the denoising step and asks each client for a full-resolution render
  of the new colours, every step or, when rendering is slow next to a step, every few steps as the viewer's
  "Train Util" setting (set by "Train Speed") allows.
"""

from __future__ import annotations

import math
from typing import Any

from nerfstudio.viewer.render_state_machine import RenderAction
from nerfstudio.viewer.viewer import Viewer
from nerfstudio.viewer.viewer_elements import ViewerElement
from viser import ViserServer


class ViewerReadout(ViewerElement[str]):
    """Text shown in the control panel as markdown (`**name**: value`), set by the pipeline, not by the user."""

    def __init__(self, name: str, default_value: str) -> None:
        super().__init__(name, disabled=True)
        self.default_value = default_value

    def _markdown(self, value: str) -> str:
        return f"**{self.name}**: {value}"

    def _create_gui_handle(self, viser_server: ViserServer) -> None:
        self.gui_handle = viser_server.gui.add_markdown(self._markdown(self.default_value), visible=self.visible)

    def install(self, viser_server: ViserServer) -> None:
        self._create_gui_handle(viser_server)

    @property
    def value(self) -> str:
        return self.default_value

    @value.setter
    def value(self, value: str) -> None:
        self.default_value = value
        if self.gui_handle is not None:
            self.gui_handle.content = self._markdown(value)  # type: ignore[union-attr]


def renders_every(train_util: float, step_seconds: float | None, render_seconds: float | None) -> int | None:
    """How many denoising steps to take between two renders so that sampling gets `train_util` of the time.

    Rendering holds the trainer's lock, so with one render every k steps sampling gets `k s / (k s + r)` of the time
    (s: a step, r: a render); the smallest k with `k s / (k s + r) >= train_util` is `ceil(u r / ((1 - u) s))`.

    Returns:
        k >= 1 (1 while a time is unknown), or None for `train_util >= 1` (no renders while sampling).
    """
    if train_util >= 1:
        return None
    if not step_seconds or not render_seconds or train_util <= 0:
        return 1
    return max(1, math.ceil(train_util * render_seconds / ((1 - train_util) * step_seconds)))


class ViewerRefresh:
    """Keeps nerfstudio's viewer in step with the denoising steps (see the module docstring)."""

    def __init__(self) -> None:
        self._last_render_step: int | None = None

    def __call__(self, viewer: Any, trainer_step: int, denoising_step: int) -> None:
        """After trainer iteration `trainer_step`, which took denoising step number `denoising_step` (1-based)."""
        if not isinstance(viewer, Viewer):  # the legacy viewer, or none
            return
        viewer.update_step(denoising_step)
        viewer.last_step = trainer_step  # keeps the viewer's own schedule (in trainer iterations) from firing
        every = renders_every(viewer.control_panel.train_util, _step_seconds(), _render_seconds(viewer))
        if every is None:
            return
        if self._last_render_step is not None and 0 <= denoising_step - self._last_render_step < every:
            return
        self._last_render_step = denoising_step
        for client_id, client in viewer.viser_server.get_clients().items():
            machine = viewer.render_statemachines.get(client_id)
            camera = viewer.get_camera_state(client)
            if machine is not None and camera is not None:
                machine.action(RenderAction("step", camera))  # a full-resolution render ("Max res")


def _timing(event: str) -> float | None:
    """The running average of one of the trainer's timing events (an `EventName`), None before it was measured."""
    from nerfstudio.utils.writer import GLOBAL_BUFFER  # here: imported first, this module is a circular import

    record = GLOBAL_BUFFER.get("events", {}).get(event)
    return record["avg"] if record and record["avg"] > 0 else None


def _step_seconds() -> float | None:
    from nerfstudio.utils.writer import EventName

    return _timing(EventName.ITER_TRAIN_TIME.value)


def _render_seconds(viewer: Viewer) -> float | None:
    from nerfstudio.utils.writer import EventName

    rays_per_second = _timing(EventName.VIS_RAYS_PER_SEC.value)
    return None if rays_per_second is None else viewer.control_panel.max_res**2 / rays_per_second
