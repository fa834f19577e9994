"""Views split across processes (`sync_splat.distributed`): two gloo processes on the CPU restyle a scene into one
process's result, through the library, `sync-splat restyle --nproc 2` and torchrun; a process that fails makes
process 0 say so in one line and nothing is written.

A run split in two adds two partial sums where one process sums all its views at once, so the colours differ by
rounding (within 2e-5). One process that forms its fit's sums in the same two blocks of views (`views_per_shard`
= the views of a process, A applied implicitly) gives the same PLY bytes: that is how the tests below check every
storage and every random draw exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_scene import tiny_scene

from sync_splat import distributed
from sync_splat.apps.restyle import RestyleConfig, check_splittable, restyle
from sync_splat.bridges.splat import SplatBridgeConfig
from sync_splat.bridges.splat_memory import plan_fit_memory, sample_weights
from sync_splat.cli import entrypoint
from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.distributed import ViewShard, shard_views
from sync_splat.errors import InputError
from sync_splat.scene.cameras import Cameras

SIZE = 32
ALIGNED = {"views_per_shard": 2, "normal_matrix": "implicit"}  # 3 ring views and a top view: 2 per process
BASE = RestyleConfig(prompt="wood", steps=3, views=3)
CASES = {
    "stored": replace(BASE, fit=SplatBridgeConfig(storage="stored", **ALIGNED)),
    "compact": replace(BASE, fit=SplatBridgeConfig(storage="compact", **ALIGNED)),
    "matrix_free": replace(BASE, fit=SplatBridgeConfig(storage="matrix_free", views_per_shard=2)),
    # noise drawn per weight and per view (integral starting noise, DDPM steps)
    "integral_ddpm": replace(BASE, method="ddpm", fit=SplatBridgeConfig(noise="integral", **ALIGNED)),
    # a canonical state (case 5): canonical and per-view DDPM noise, and the export's fit of a latent canonical
    "latent_case5": replace(BASE, case=5, method="ddpm", fit=SplatBridgeConfig(canonical="latent", **ALIGNED)),
    "default": BASE,
}
CLI_ARGS = ["--steps", "3", "--views", "3", "--prompt", "wood", "--fit.views-per-shard", "2",
            "--fit.normal-matrix", "implicit"]  # fmt: skip


def prior() -> GaussianTexturePrior:
    return GaussianTexturePrior.from_prompt("wood", native_size=SIZE)


def _restyle_every_case(folder: Path) -> None:
    """In each of two processes: restyle the tiny scene with every case and save that process's answer."""
    with distributed.process_group():
        for name, config in CASES.items():
            result = restyle(tiny_scene(), config, show_progress=False, denoiser=prior())
            result.scene.save(folder / f"{name}.{distributed.rank()}.ply")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("two_processes")
    assert distributed.launch(2, _restyle_every_case, folder) == 0
    return folder


@pytest.mark.parametrize("name", [name for name in CASES if name != "default"])
def test_two_processes_give_one_process_result_bit_for_bit(two_processes: Path, tmp_path: Path, name: str) -> None:
    one = restyle(tiny_scene(), CASES[name], show_progress=False, denoiser=prior()).scene.save(tmp_path / "one.ply")
    for rank in (0, 1):
        assert (two_processes / f"{name}.{rank}.ply").read_bytes() == one.read_bytes(), f"process {rank}"


def test_two_processes_with_default_settings_agree_within_2e_5(two_processes: Path) -> None:
    from sync_splat.scene.gaussians import GaussianScene

    one = restyle(tiny_scene(), CASES["default"], show_progress=False, denoiser=prior()).scene
    for rank in (0, 1):
        two = GaussianScene.load(two_processes / f"default.{rank}.ply")
        torch.testing.assert_close(two.rgb01, one.rgb01, atol=2e-5, rtol=0)  # float32 sums in another order
        assert torch.equal(two.means, one.means)


@pytest.fixture(scope="module")
def one_process_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    tiny_scene().save(folder / "source.ply")
    entrypoint(["restyle", str(folder / "source.ply"), "--out", str(folder / "one.ply"), *CLI_ARGS])
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("how", ["nproc", "torchrun"])
def test_the_command_line_splits_views_across_processes(one_process_cli: Path, how: str) -> None:
    out = one_process_cli / f"{how}.ply"
    args = ["restyle", str(one_process_cli / "source.ply"), "--out", str(out), *CLI_ARGS]
    if how == "nproc":
        entrypoint([*args, "--nproc", "2"])
    else:
        run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "sync_splat.cli", *args]
        result = subprocess.run(run, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("wrote ") == 1  # process 0 writes
    assert out.read_bytes() == (one_process_cli / "one.ply").read_bytes()
    grid = one_process_cli / f"{how}_views.png"
    assert grid.read_bytes() == (one_process_cli / "one_views.png").read_bytes()
    # The run record holds every process's delivered views, as one process's does.
    with (
        np.load(one_process_cli / f"{how}_delivered.npz") as split,
        np.load(one_process_cli / "one_delivered.npz") as one,
    ):
        assert np.array_equal(split["views"], one["views"])


def _restyle_with_a_failing_process(args: list[str], how: str) -> None:
    """Run `sync-splat ARGS` in this process; process 1's denoiser fails on its second step (`how`)."""
    if os.environ["RANK"] == "1":
        original, calls = GaussianTexturePrior.predict_eps, []

        def failing(self: GaussianTexturePrior, *args: object) -> torch.Tensor:
            calls.append(1)
            if len(calls) == 2:
                if how == "raises":
                    raise InputError("the denoiser gave up on these views")
                os._exit(9)  # killed: no message
            return original(self, *args)

        GaussianTexturePrior.predict_eps = failing
    entrypoint(args)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("raises", "process 1 of 2 failed: the denoiser gave up on these views; nothing was written"),
        ("dies", "another of the 2 processes stopped without a message (killed, or out of memory?); nothing was "
                 "written"),
    ],
    ids=["raises", "dies"],
)  # fmt: skip
def test_a_failing_process_is_one_line_from_process_0_and_nothing_is_written(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], how: str, message: str
) -> None:
    source = tiny_scene().save(tmp_path / "source.ply")
    out = tmp_path / "out" / "restyled.ply"
    args = ["restyle", str(source), "--out", str(out), *CLI_ARGS]
    status = distributed.launch(2, _restyle_with_a_failing_process, args, how)
    err = capfd.readouterr().err
    assert status == 2
    assert err.strip().splitlines() == [f"sync-splat: error: {message}"], err
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["source.ply"]


def test_views_are_split_in_contiguous_shards_that_differ_by_at_most_one() -> None:
    shards = [shard_views(9, rank, 4) for rank in range(4)]
    assert [(shard.first, shard.count) for shard in shards] == [(0, 3), (3, 2), (5, 2), (7, 2)]
    assert shard_views(5) == ViewShard(first=0, count=5, total=5)
    with pytest.raises(InputError, match="3 views cannot be split over 4 processes: use at most 3 processes"):
        shard_views(3, 0, 4)
    stack = torch.arange(9)
    assert torch.cat([shard.local(stack) for shard in shards]).tolist() == stack.tolist()


def test_without_a_process_group_everything_is_here() -> None:
    assert distributed.process_shard(7) == ViewShard(first=0, count=7, total=7)
    values = torch.ones(3)
    assert distributed.all_reduce(values) is values
    distributed.all_succeeded()  # nothing to wait for


def test_the_memory_plan_counts_this_process_views_and_its_part_of_the_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    scene = tiny_scene()
    cameras = Cameras.orbit_rig(*scene.bounding_sphere(), num_azimuths=4, elevations_deg=(15.0,), top_views=0,
                                fov_deg=50.0, size=(SIZE, SIZE))  # fmt: skip
    shard = shard_views(len(cameras), 1, 2)
    sample = sample_weights(scene, cameras.subset(list(shard.indices)), 3)
    free = 64 * 2**30
    monkeypatch.setattr("sync_splat.bridges.splat_memory.free_memory", lambda device: (free, "available memory"))
    monkeypatch.setattr("sync_splat.bridges.splat_memory.processes_per_machine", lambda: 2)
    plan = plan_fit_memory((sample,), torch.float32, torch.device("cpu"), shard=shard)
    assert plan.budget == free // 2 - 2 * 2**30  # two processes share this machine's memory
    summary = plan.summary()
    assert summary.startswith("splat fit memory per process (views 2-3 of 4 in process 1 of 2): 2 views of 32 x 32")
    assert "available memory / 2 processes less 2.00 GiB for the denoiser" in summary


def test_multiview_attention_cannot_split_views() -> None:
    class Coupled:
        attention = object()

    shard = shard_views(4, 0, 2)
    with pytest.raises(InputError, match="multiview-attention couples every view .* run one process"):
        check_splittable(Coupled(), shard)
    assert check_splittable(Coupled(), shard_views(4)) == shard_views(4)
    assert check_splittable(prior(), shard) is shard


def test_other_commands_refuse_to_run_in_several_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["panorama", "--out", str(tmp_path / "room.png")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "sync-splat: error: only `sync-splat restyle` splits its views across processes: run this command once, not "
        "in 2 processes"
    )
    monkeypatch.setenv("RANK", "1")  # the other processes end silently
    with pytest.raises(SystemExit):
        entrypoint(["panorama", "--out", str(tmp_path / "room.png")])
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "room.png").exists()
