"""Running a sampler to the end with a rich progress bar (elapsed time and ETA): shared by every front door."""

from __future__ import annotations

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sync_splat.sampler import SamplerResult, SamplerState, SyncSampler


def sample_with_progress(sampler: SyncSampler, seed: int, label: str, show: bool = True) -> SamplerResult:
    """`sampler.sample` from `torch.Generator().manual_seed(seed)`, advancing a progress bar titled `label` per step.

    Args:
        sampler: the configured sampler.
        seed: the seed of the run's one random generator.
        label: what the bar says it is doing, e.g. "restyling 'marble'".
        show: False runs without a bar (tests, library use).
    """
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not show,
    ) as progress:  # fmt: skip
        task = progress.add_task(label, total=sampler.num_steps)

        def advance(state: SamplerState) -> None:
            progress.update(task, completed=state.step_index)

        return sampler.sample(torch.Generator().manual_seed(seed), callback=advance)
