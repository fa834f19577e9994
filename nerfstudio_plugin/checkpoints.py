"""What a `ns-train sync-splat` checkpoint holds besides the model's colours: the sampler state, the final answer and
the live settings, and the check that a resumed run keeps the settings its state was sampled with.

Checkpoints hold tensors and plain values only (they load with `torch.load(weights_only=True)`) and never the
diffusion weights. `SamplerCheckpoints` is mixed into `SyncSplatPipeline`, whose sampler, settings and viewer
controls it reads.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from sync_splat.errors import InputError, one_line_errors
from sync_splat.sampler import SamplerState


class SamplerCheckpoints:
    """Checkpoint hooks of the sync-splat pipeline (nerfstudio's `get_extra_state`, `set_extra_state`,
    `load_pipeline`).

    Where the views are split across processes (`sync_splat.distributed`), the state each process samples holds its own
    views; the checkpointed state holds every view, gathered after each step (process 0 alone saves, so it cannot ask
    the others then), and a resumed process keeps its views of it. So checkpoints are the same whatever the number of
    processes, and a run may resume on another number.
    """

    _saved_state: SamplerState | None = None

    def _set_state(self, state: SamplerState) -> None:
        """Take `state` as the sampler's, and keep it with every view for checkpoints (a collective where the views
        are split)."""
        self._state = state
        self._saved_state = state.gathered(self._bridge.shard)

    def get_extra_state(self) -> dict[str, Any]:
        """The sampler state, the final answer and the live settings (tensors and plain values only, so the
        checkpoint loads with `torch.load(weights_only=True)`)."""
        return {
            "settings": self._sampling_settings(),
            "sampler_state": None if self._saved_state is None else self._saved_state.to_dict(),
            "result": self._result,
            "prompt": self._restyle.prompt,
            "guidance_scale": self._restyle.sd.guidance_scale,
        }

    def _sampling_settings(self) -> dict[str, Any]:
        """The settings, by flag, that a checkpoint's sampler state was made with (a resumed run must keep them;
        the prompt and guidance scale are live settings, restored from the checkpoint)."""
        restyle = self._restyle
        return {
            "--pipeline.denoiser": restyle.denoiser,
            "--pipeline.steps": self.num_steps,
            "--pipeline.case": restyle.case,
            "--pipeline.sync-until": restyle.sync_until,
            "--pipeline.method": restyle.method,
            "--pipeline.timestep-spacing": restyle.timestep_spacing,
            "--pipeline.seed": restyle.seed,
            "--pipeline.views": restyle.views,
            "--pipeline.cameras": "orbit" if self._views_from_orbit else "dataset",
            "--pipeline.resolution": self.config.resolution,
            "--pipeline.fit.canonical": restyle.fit.canonical,
            "--pipeline.up": ",".join(f"{v:g}" for v in self._up.up),
            "--pipeline.source-frame": self.config.source_frame or "nerfstudio",
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        saved, current = state["settings"], self._sampling_settings()
        current = {name: value for name, value in current.items() if name in saved}  # older checkpoints hold fewer
        if saved != current:
            changed = ", ".join(f"{name} {saved.get(name)}" for name in current if saved.get(name) != current[name])
            raise InputError(f"this checkpoint was sampled with {changed}: resume with the same settings")
        restyle = replace(
            self._restyle, prompt=state["prompt"],
            sd=replace(self._restyle.sd, guidance_scale=state["guidance_scale"]),
        )  # fmt: skip
        if restyle != self._restyle:
            if self._denoiser is not None:
                CONSOLE.print(
                    f"sync-splat: resuming with the checkpoint's prompt {restyle.prompt!r} and guidance scale "
                    f"{restyle.sd.guidance_scale} (the viewer's settings when it was saved)"
                )
            self._use_settings(restyle)
        self.prompt.value = restyle.prompt
        self.guidance_scale.value = restyle.sd.guidance_scale
        if state["sampler_state"] is not None:
            values = dict(state["sampler_state"])
            device = self.device
            for name, value in values.items():
                if isinstance(value, Tensor) and name != "rng_state":
                    values[name] = value.to(device)
            self._saved_state = SamplerState.from_dict(values)  # every view
            self._state = self._saved_state.held(None if self._bridge is None else self._bridge.shard)
        result = state["result"]
        self._result = None if result is None else result.to(self.device)
        self.step_counter.value = self._progress()

    def load_pipeline(self, loaded_state: dict[str, Any], step: int) -> None:
        """Load a checkpoint: the model's colours and this pipeline's extra state (nothing else is saved)."""
        with one_line_errors("sync-splat"):
            super().load_pipeline(loaded_state, step)
            if not torch.equal(self.model.means, self._source.means.to(self.model.means)):
                raise InputError(
                    f"this checkpoint restyles another scene than {self.config.source}: resume with the "
                    "--pipeline.source it was sampled from"
                )
        self.model.step = step
