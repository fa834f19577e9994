"""`SyncSplatPipeline` with its views split across two processes, as nerfstudio's launcher runs it with
`--machine.num-devices 2` (here a gloo group on the CPU, set up as torchrun would): the same restyled.ply as one
process, written by process 0 alone, checkpoints that hold every view, and a resume from one process's checkpoint.
On the CPU, ns-train itself refuses several devices in one line: its launcher needs CUDA.

The fit forms its sums in the two processes' blocks of views (`views_per_shard`, A implicit) in both runs, so the
answers are equal bit for bit (tests/test_distributed.py says why).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sync_splat import distributed
from sync_splat.apps.restyle import RestyleConfig
from sync_splat.bridges.splat import SplatBridgeConfig

FIT = SplatBridgeConfig(views_per_shard=2, normal_matrix="implicit")  # 3 orbit views and a top view: 2 per process


def build(source: Path, **setup: object):
    from nerfstudio_plugin.pipeline import SyncSplatPipelineConfig

    restyle = RestyleConfig(denoiser="prior", prompt="wood", steps=3, views=3, fit=FIT)
    return SyncSplatPipelineConfig(source=source, restyle=restyle).setup(device="cpu", **setup)


def sample_and_export(pipeline, run_dir: Path, checkpoint: Path | None = None) -> Path:
    """Take the remaining steps (saving a checkpoint after the first where asked) and export into `run_dir`."""
    while not pipeline.complete:
        pipeline.get_train_loss_dict(step=pipeline.steps_taken)
        if checkpoint is not None and pipeline.steps_taken == 1:
            torch.save(pipeline.state_dict(), checkpoint)
    pipeline._run_dir = run_dir
    return pipeline.export_restyled()


def _sample_in_two_processes(source: Path, folder: Path) -> None:
    """Each process: a whole run with a checkpoint after one step (process 0 keeps it), and a resume of one process's
    checkpoint (`folder / "one.ckpt"`), each exported into a folder of its own."""
    with distributed.process_group():
        rank = distributed.rank()
        setup = {"world_size": 2, "local_rank": rank}
        (folder / f"whole{rank}").mkdir()
        sample_and_export(build(source, **setup), folder / f"whole{rank}", folder / f"two{rank}.ckpt")
        resumed = build(source, **setup)
        resumed.load_pipeline(torch.load(folder / "one.ckpt", weights_only=True), step=0)
        (folder / f"resumed{rank}").mkdir()
        sample_and_export(resumed, folder / f"resumed{rank}")


@pytest.mark.slow
def test_two_processes_sample_export_and_resume_as_one(scene_files: dict[str, Path], tmp_path: Path) -> None:
    expected = sample_and_export(build(scene_files["ply"]), tmp_path, tmp_path / "one.ckpt").read_bytes()

    assert distributed.launch(2, _sample_in_two_processes, scene_files["ply"], tmp_path) == 0
    for run in ("whole", "resumed"):
        assert (tmp_path / f"{run}0" / "restyled.ply").read_bytes() == expected, run
        assert not any((tmp_path / f"{run}1").iterdir()), "process 1 writes nothing"
    # The run record holds every view's delivered image, gathered from both processes, as one process's does.
    delivered, ours = (np.load(folder / "delivered.npz")["views"] for folder in (tmp_path, tmp_path / "whole0"))
    assert delivered.shape[0] == 4 and np.array_equal(ours, delivered)
    # A checkpoint of two processes holds every view: that of one process, bit for bit (on either process).
    theirs = torch.load(tmp_path / "one.ckpt", weights_only=True)["_extra_state"]["sampler_state"]
    for rank in (0, 1):
        ours = torch.load(tmp_path / f"two{rank}.ckpt", weights_only=True)["_extra_state"]["sampler_state"]
        assert ours.keys() == theirs.keys()
        for name, value in theirs.items():
            same = torch.equal(ours[name], value) if isinstance(value, torch.Tensor) else ours[name] == value
            assert same, (rank, name)


def test_several_devices_without_cuda_are_refused_in_one_line(
    scene_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import ns_train_args, train_in_process  # here: the processes above import this module by name

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the CUDA devices nerfstudio's launcher needs")
    args = ["--pipeline.source", str(scene_files["ply"]), "--pipeline.denoiser", "prior", "--machine.num-devices", "2"]
    assert "--machine.num-devices" in ns_train_args(tmp_path, *args)
    with pytest.raises(SystemExit) as exit_info:
        train_in_process(tmp_path, *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"sync-splat: error: --machine.num-devices 2: nerfstudio starts one process per CUDA device and torch finds "
        f"{torch.cuda.device_count()}; on the CPU, split the views with `sync-splat restyle --nproc 2`"
    )
    assert not any(tmp_path.iterdir())  # refused before the run folder is made
