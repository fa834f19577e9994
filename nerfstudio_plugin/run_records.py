"""The run record of `ns-train sync-splat`: the phases timed as `sync-splat restyle` times them, and `run.json` with
`delivered.npz` (`sync_splat.apps.run_record`) written into the run folder beside `restyled.ply`.

`RunRecords` is mixed into `SyncSplatPipeline`, whose denoiser, bridge, settings and run folder it reads. The
sampler charges each call of the denoiser and of the bridge to its phase, as `sync-splat restyle` does; the total
is the time from building the sampler to the export, so it also holds the trainer's own work, the viewer and any
pause. A resumed run records the steps taken since it was resumed.
"""

from __future__ import annotations

from typing import Any

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from sync_splat.apps.phases import BRIDGE_PHASES, DENOISER_PHASES, PhaseTimer, Timed
from sync_splat.apps.restyle import RestyleConfig
from sync_splat.apps.run_record import RunRecord, files_in, sampling_settings
from sync_splat.sampler import SyncSampler
from sync_splat.scene.files import check_outputs, staged_files


class RunRecords:
    """Phase timing and the run record of the sync-splat pipeline."""

    def _start_timing(self, device: str | torch.device) -> Timed:
        """A new phase timer, and the denoiser charging it (what the bridge is set up with, as its codec)."""
        self._timer = PhaseTimer(torch.device(device))
        return Timed(self._denoiser, self._timer, DENOISER_PHASES)

    def _timed_sampler(self, denoiser: Any, restyle: RestyleConfig) -> SyncSampler:
        """The sampler over `denoiser` and the bridge, each call charged to its phase."""
        timed = Timed(denoiser, self._timer, DENOISER_PHASES)
        return SyncSampler(timed, Timed(self._bridge, self._timer, BRIDGE_PHASES), restyle.sync_config())

    def _check_run_record(self) -> None:
        """Before any step: the record's files can be written into the run folder (a finished run replaces its own)."""
        check_outputs(*(path for path in files_in(self._run_dir) if not path.exists()), flag="--output-dir")

    def _delivered_views(self) -> Tensor | None:
        """The decoded views the instance processes ended with, every view's (gathered from every process where the
        views are split: each process calls this), or None when this run did not sample them (a resumed finished
        run)."""
        if self._instances is None or self._denoiser is None:
            return None
        decoded = self._bridge.decode_views(self._instances).float().clamp(0, 1)  # charged to the codec phase
        return self._bridge.shard.gather(decoded)

    def _write_run_record(self, delivered: Tensor | None) -> None:
        """Write `run.json` (and `delivered.npz` with `delivered`, every view's) into the run folder, together,
        replacing those of an earlier export of this run (a restart after completion)."""
        record_path, views_path = files_in(self._run_dir)
        data = self.config.datamanager.data
        record = RunRecord(
            kind="ns-train", settings=sampling_settings(self._restyle, self._restyle.views),
            source=str(self.config.source), cameras=self._instance_cameras(), phases=self._timer.report().to_dict(),
            delivered=None if delivered is None else views_path.name, up=self._up.up, frame=self._frame,
            dataset=None if data is None else str(data),
        )  # fmt: skip
        paths = (record_path,) if delivered is None else (record_path, views_path)
        for path in (record_path, views_path):
            path.unlink(missing_ok=True)
        with staged_files(*paths) as staged:
            record.save(staged[0], staged[-1], delivered)
        CONSOLE.print(f"sync-splat: wrote the run record {record_path}")
