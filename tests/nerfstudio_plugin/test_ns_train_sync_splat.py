"""`ns-train sync-splat` end to end on the CPU: a splatfacto run over its dataset with tiny Stable Diffusion, a
bare PLY with the prior, a stopped run resumed with --load-dir, and `ns-export gaussian-splat` on a run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import FRAME_AS_IS, NUM_IMAGES, assert_restyled, dataset_args, tiny_sd_args, train_in_process

from sync_splat.scene.gaussians import GaussianScene

STEPS = 3
VIEWS = 3


def checkpoint(run: Path) -> dict:
    (path,) = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))
    return torch.load(path, map_location="cpu", weights_only=True)  # nothing but tensors and plain values


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory: pytest.TempPathFactory, scene_files: dict[str, Path], tiny_sd) -> Path:
    """A splatfacto run (its config.yml) restyled over its dataset with tiny SD + ControlNet (the console script
    itself runs in test_plugin_viewer.py)."""
    return train_in_process(
        tmp_path_factory.mktemp("sd_run"), *tiny_sd_args(tiny_sd),
        "--pipeline.steps", str(STEPS), "--pipeline.views", str(VIEWS), *dataset_args(scene_files, "config"),
    )  # fmt: skip


@pytest.mark.slow
def test_ns_train_writes_the_restyled_ply(sd_run: Path, scene_files: dict[str, Path]) -> None:
    assert_restyled(sd_run / "restyled.ply", scene_files["ply"])


@pytest.mark.slow
def test_checkpoint_holds_sampler_state_and_colours_but_no_weights(sd_run: Path) -> None:
    state = checkpoint(sd_run)
    keys = set(state["pipeline"])
    assert all(key.startswith("_model.") or key == "_extra_state" for key in keys), keys
    assert not any(part in key for key in keys for part in ("unet", "vae", "text_encoder", "controlnet"))
    extra = state["pipeline"]["_extra_state"]
    assert extra["sampler_state"]["step_index"] == STEPS
    assert extra["prompt"] == "a red teapot"
    # The model's colours (what ns-export and the viewer see) are the restyled PLY's.
    restyled = GaussianScene.load(sd_run / "restyled.ply")
    colours = torch.sigmoid(state["pipeline"]["_model.gauss_params.features_dc"])  # a degree-0 model: logits
    torch.testing.assert_close(colours, restyled.rgb01, atol=1e-5, rtol=0)


def orbit_prior_args(files: dict[str, Path]) -> list[str]:
    """A bare PLY (no --data: orbit views) with the exact prior; the prompt through nerfstudio's --prompt. DDPM
    draws new noise every step, so a resumed run only matches if the checkpoint restores the random generator."""
    return [
        "--pipeline.source", str(files["ply"]), "--pipeline.denoiser", "prior", "--prompt", "wood",
        "--pipeline.steps", "4", "--pipeline.views", "3", "--pipeline.seed", "7", "--pipeline.method", "ddpm",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def full_prior_run(tmp_path_factory: pytest.TempPathFactory, scene_files: dict[str, Path]) -> Path:
    return train_in_process(tmp_path_factory.mktemp("prior"), *orbit_prior_args(scene_files), timestamp="full")


def test_ply_without_dataset_is_restyled_on_an_orbit(full_prior_run: Path, scene_files: dict[str, Path]) -> None:
    assert_restyled(full_prior_run / "restyled.ply", scene_files["ply"])
    extra = checkpoint(full_prior_run)["pipeline"]["_extra_state"]
    assert extra["prompt"] == "wood"  # nerfstudio's --prompt reached the pipeline
    assert extra["sampler_state"]["step_index"] == 4


def test_resumed_run_ends_as_an_uninterrupted_one(
    tmp_path: Path, full_prior_run: Path, scene_files: dict[str, Path]
) -> None:
    args = orbit_prior_args(scene_files)
    stopped = train_in_process(tmp_path, *args, "--max-num-iterations", "2", timestamp="stopped")
    assert not (stopped / "restyled.ply").exists()
    assert checkpoint(stopped)["pipeline"]["_extra_state"]["sampler_state"]["step_index"] == 2
    resumed = train_in_process(tmp_path, *args, "--load-dir", str(stopped / "nerfstudio_models"), timestamp="resumed")
    ours, theirs = GaussianScene.load(resumed / "restyled.ply"), GaussianScene.load(full_prior_run / "restyled.ply")
    assert torch.equal(ours.sh, theirs.sh)
    assert (resumed / "restyled.ply").read_bytes() == (full_prior_run / "restyled.ply").read_bytes()


def test_the_run_record_lets_eval_measure_the_run(
    full_prior_run: Path, scene_files: dict[str, Path], tiny_clip: Path, tmp_path: Path
) -> None:
    """The run folder holds run.json and delivered.npz; `sync-splat eval` measures the run from its config.yml."""
    import json
    import math

    from sync_splat.apps.run_record import RunRecord
    from sync_splat.cli import entrypoint

    record = RunRecord.load(full_prior_run / "run.json")
    assert (record.kind, record.source) == ("ns-train", str(scene_files["ply"]))
    assert record.dataset is None and record.frame is None
    assert (record.settings["prompt"], record.settings["steps"], record.settings["method"]) == ("wood", 4, "ddpm")
    assert len(record.cameras) == 4 and record.phases["calls"]["denoise"] == 4
    assert record.delivered_views().shape == (4, 3, 64, 64)
    out = tmp_path / "eval"
    config = full_prior_run / "config.yml"
    entrypoint(["eval", str(config), "--clip", str(tiny_clip), "--frames", "3", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == 3 and metrics["target_prompt"] == "wood"
    assert all(math.isfinite(metrics[key]) for key in ("clip_direction_similarity", "heldout_sharpness", "seconds"))
    assert metrics["fit_psnr_db"] > 15


@pytest.mark.parametrize("restart_after", [3, 4], ids=["near-the-end", "after-completing"])
def test_a_restart_still_ends_with_the_restyled_ply(
    tmp_path: Path, full_prior_run: Path, scene_files: dict[str, Path], restart_after: int
) -> None:
    """Restart pressed after 3 of 4 steps, or just as the last step completes: the run goes on until sampling is
    complete again, and ends as an uninterrupted run (same seed, same settings)."""
    restarts = []

    def press_restart(pipeline, step: int) -> None:
        if not restarts and pipeline.steps_taken == restart_after:
            restarts.append(step)
            pipeline.restart.cb_hook(pipeline.restart)  # what the viewer's button calls

    run = train_in_process(tmp_path, *orbit_prior_args(scene_files), timestamp="restarted", during=press_restart)
    assert restarts, "the restart was never pressed"
    assert (run / "restyled.ply").read_bytes() == (full_prior_run / "restyled.ply").read_bytes()
    assert checkpoint(run)["step"] >= restart_after + 4 - 1  # the loop ran past its first 4 iterations


def test_max_num_iterations_still_stops_after_a_restart(tmp_path: Path, scene_files: dict[str, Path]) -> None:
    """--max-num-iterations 3 stops at denoising step 3, restart or not (a checkpoint to resume from, no PLY)."""

    def press_restart(pipeline, step: int) -> None:
        if step == 1:
            pipeline.restart.cb_hook(pipeline.restart)

    args = [*orbit_prior_args(scene_files), "--max-num-iterations", "3"]
    run = train_in_process(tmp_path, *args, during=press_restart)
    assert not (run / "restyled.ply").exists()
    assert checkpoint(run)["pipeline"]["_extra_state"]["sampler_state"]["step_index"] == 3


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        (["--pipeline.steps", "5"], "sampled with --pipeline.steps 4"),
        (["--pipeline.views", "4"], "sampled with --pipeline.views 3"),
        (["--pipeline.seed", "8", "--pipeline.method", "ddim"], "with --pipeline.method ddpm, --pipeline.seed 7"),
        (["--pipeline.case", "0"], "sampled with --pipeline.case 2"),
        (["--pipeline.timestep-spacing", "model"], "sampled with --pipeline.timestep-spacing karras"),
        (["--pipeline.source", "moved"], "another scene"),  # the same Gaussian count, moved
        (["--pipeline.source", "fewer"], "the same --pipeline.source"),
    ],
    ids=["steps", "views", "method-and-seed", "case", "spacing", "moved-source", "smaller-source"],
)
def test_resume_with_other_settings_is_one_line(
    tmp_path: Path, full_prior_run: Path, scene_files: dict[str, Path], capsys: pytest.CaptureFixture[str],
    changed: list[str], message: str,
) -> None:  # fmt: skip
    source = GaussianScene.load(scene_files["ply"])
    others = {
        "moved": GaussianScene(source.means + 0.01, source.quats_wxyz, source.log_scales, source.opacity_logits,
                               source.sh),
        "fewer": GaussianScene(source.means[1:], source.quats_wxyz[1:], source.log_scales[1:],
                               source.opacity_logits[1:], source.sh[1:]),
    }  # fmt: skip
    if changed[-1] in others:
        changed = [changed[0], str(others[changed[-1]].save(tmp_path / f"{changed[-1]}.ply"))]
    with pytest.raises(SystemExit) as exit_info:
        train_in_process(
            tmp_path, *orbit_prior_args(scene_files), *changed, "--load-dir", str(full_prior_run / "nerfstudio_models")
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sync-splat: error: " in err and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pipeline.source", "missing.ply"], "missing.ply: no such file"),
        ([], "--pipeline.source is missing"),
        (["--pipeline.source", "SOURCE", "--pipeline.prompt", "a cat"], "a cat"),  # the prior knows no such preset
        # Stable Diffusion that is not there: the hint names this front door's flag.
        (
            ["--pipeline.source", "SOURCE", "--pipeline.denoiser", "sd", "--pipeline.sd.model", "./no-model"],
            "./no-model does not exist: pass an existing diffusers folder or a hub model id, or run with "
            "--pipeline.denoiser prior",
        ),
    ],
    ids=["missing-file", "no-source", "unknown-preset", "no-sd-weights"],
)
def test_input_errors_are_one_line(
    tmp_path: Path, scene_files: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    args = [str(scene_files["ply"]) if arg == "SOURCE" else arg for arg in args]
    with pytest.raises(SystemExit) as exit_info:
        train_in_process(tmp_path, "--pipeline.denoiser", "prior", *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sync-splat: error: " in err and message in err and "Traceback" not in err


def test_ns_export_writes_the_same_scene(full_prior_run: Path, tmp_path: Path) -> None:
    """`ns-export gaussian-splat` accepts the run (its model is a SplatfactoModel) and exports the restyled scene.

    ns-export imports open3d, which needs the system library libusb-1.0 (`make setup` installs it)."""
    import tyro
    from nerfstudio.scripts.exporter import Commands

    argv = ["gaussian-splat", "--load-config", str(full_prior_run / "config.yml"), "--output-dir", str(tmp_path)]
    tyro.cli(Commands, args=argv).main()  # what the ns-export console script runs
    exported, restyled = GaussianScene.load(tmp_path / "splat.ply"), GaussianScene.load(full_prior_run / "restyled.ply")
    for name in ("means", "quats_wxyz", "log_scales", "opacity_logits"):
        assert torch.equal(getattr(exported, name), getattr(restyled, name)), name
    torch.testing.assert_close(exported.rgb01, restyled.rgb01, atol=1e-5, rtol=0)  # degree 0: logit colours


@pytest.mark.parametrize("mode", ["test", "inference"])  # ns-viewer / ns-render / ns-eval, and ns-export
def test_a_finished_run_loads_for_viewing_without_the_denoiser(full_prior_run: Path, mode: str) -> None:
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(full_prior_run / "config.yml", test_mode=mode)
    assert pipeline._denoiser is None and pipeline.complete
    # Nothing samples here: the sampling controls are disabled, the step counter shows where the run ended.
    controls = (pipeline.prompt, pipeline.guidance_scale, pipeline.apply, pipeline.restart, pipeline.show_preview)
    assert all(control.disabled for control in controls)
    assert pipeline.step_counter.value == "4 / 4 (complete)"
    restyled = GaussianScene.load(full_prior_run / "restyled.ply")
    torch.testing.assert_close(pipeline.model.to_scene().rgb01, restyled.rgb01, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def dataset_prior_run(tmp_path_factory: pytest.TempPathFactory, scene_files: dict[str, Path]) -> Path:
    """A run over the dataset with the prior, started as a user would: in the folder holding the dataset and the
    scene, with relative paths, and nerfstudio's --prompt."""
    import shutil

    start = tmp_path_factory.mktemp("project")
    shutil.copytree(scene_files["data"], start / "data")
    shutil.copy(scene_files["ply"], start / "scene.ply")
    cwd = Path.cwd()
    os.chdir(start)
    try:
        run = train_in_process(
            Path("outputs"), "--pipeline.denoiser", "prior", "--prompt", "wood", "--pipeline.steps", "2",
            "--pipeline.views", "2", "--data", "data", "--pipeline.source", "scene.ply", *FRAME_AS_IS,
        )  # fmt: skip
    finally:
        os.chdir(cwd)
    return start / run


def test_config_stores_absolute_paths_and_one_prompt(dataset_prior_run: Path) -> None:
    import yaml

    config = yaml.load((dataset_prior_run / "config.yml").read_text(), Loader=yaml.Loader)
    project = dataset_prior_run.parents[3]
    assert config.pipeline.source == project / "scene.ply"
    assert config.pipeline.datamanager.data == project / "data" and config.data == project / "data"
    assert config.output_dir == project / "outputs"
    assert config.pipeline.restyle.prompt == "wood"
    assert config.prompt is None and config.pipeline.model.prompt is None  # the one prompt is the pipeline's


def test_a_run_is_exported_and_rendered_from_another_folder(
    dataset_prior_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ns-export and `ns-render dataset` (whose datamanager target must be a class) run from elsewhere."""
    import tyro
    from nerfstudio.scripts.exporter import Commands as Export
    from nerfstudio.scripts.render import Commands as Render

    monkeypatch.chdir(tmp_path)
    config = str(dataset_prior_run / "config.yml")
    tyro.cli(Export, args=["gaussian-splat", "--load-config", config, "--output-dir", "export"]).main()
    exported, restyled = GaussianScene.load("export/splat.ply"), GaussianScene.load(dataset_prior_run / "restyled.ply")
    torch.testing.assert_close(exported.rgb01, restyled.rgb01, atol=1e-5, rtol=0)

    render = ["dataset", "--load-config", config, "--output-path", "renders", "--split", "train"]
    tyro.cli(Render, args=[*render, "--rendered-output-names", "rgb", "gt-rgb"]).main()
    for output in ("rgb", "gt-rgb"):  # every dataset image (this dataset holds none back for evaluation)
        assert len(list((tmp_path / "renders" / "train" / output).glob("frame_*"))) == NUM_IMAGES, output


def test_ns_render_dataset_without_a_dataset_is_one_line(
    full_prior_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tyro
    from nerfstudio.scripts.render import Commands as Render

    argv = ["dataset", "--load-config", str(full_prior_run / "config.yml"), "--output-path", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(Render, args=argv).main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sync-splat: error: " in err and "ns-render camera-path" in err and "Traceback" not in err


Y_TO_Z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # +y becomes +z


def orbit_views(run_args: list[str], tmp_path: Path, name: str) -> dict:
    """Run `ns-train sync-splat` (no --data: orbit views) and keep what its pipeline saw: the orbit rig, the
    views' prompt suffixes, the source scene and the restyled PLY."""
    seen: dict = {}

    def look(pipeline, step: int) -> None:
        if not seen:
            seen.update(orbit=pipeline._orbit, suffixes=pipeline._bridge.conditions().prompt_suffixes,
                        scene=pipeline._source, up=pipeline._up)  # fmt: skip

    run = train_in_process(tmp_path, *run_args, timestamp=name, during=look)
    return {**seen, "restyled": GaussianScene.load(run / "restyled.ply")}


def test_a_z_up_splatfacto_run_is_orbited_upright(tmp_path: Path, scene_files: dict[str, Path]) -> None:
    """A splatfacto run is z up (its dataparser's orientation): without --data, ns-train orbits it as it orbits the
    same scene y up: the same views, the same view suffixes, the same restyle."""
    from conftest import write_splatfacto_run

    from sync_splat.apps.restyle import render_rgb
    from sync_splat.scene.frames import transform_scene

    upright = GaussianScene.load(scene_files["ckpt"])
    z_up = transform_scene(upright, torch.cat([Y_TO_Z, torch.zeros(3, 1)], dim=1))
    z_run = write_splatfacto_run(z_up, tmp_path / "splatfacto")
    common = ["--pipeline.denoiser", "prior", "--prompt", "wood", "--pipeline.steps", "2", "--pipeline.views", "3"]
    ours = orbit_views(["--pipeline.source", str(z_run), *common], tmp_path, "z-up")
    theirs = orbit_views(["--pipeline.source", str(scene_files["ply"]), *common, "--pipeline.up", "y"], tmp_path, "y")
    assert ours["up"].up == (0.0, 0.0, 1.0) and "orientation" in ours["up"].reason
    assert ours["suffixes"] == theirs["suffixes"] and ", top view" in ours["suffixes"]
    torch.testing.assert_close(
        render_rgb(ours["scene"], ours["orbit"]), render_rgb(theirs["scene"], theirs["orbit"]), atol=2e-3, rtol=0
    )
    torch.testing.assert_close(ours["restyled"].rgb01, theirs["restyled"].rgb01, atol=2e-3, rtol=0)


def test_up_can_be_set(tmp_path: Path, scene_files: dict[str, Path]) -> None:
    """--pipeline.up stands the orbit on the axis given (here the y-up teapot on its side, on x)."""
    args = ["--pipeline.source", str(scene_files["ply"]), "--pipeline.denoiser", "prior", "--pipeline.steps", "1",
            "--pipeline.views", "3", "--pipeline.up", "x"]  # fmt: skip
    seen = orbit_views(args, tmp_path, "x")
    image_up = -seen["orbit"].c2w[:3, :3, 1]  # the ring views' image-up directions
    assert seen["up"].reason == "--up" and (image_up @ torch.tensor([1.0, 0.0, 0.0]) > 0.9).all()


def raw_frame_args(files: dict[str, Path]) -> list[str]:
    """The PLY in its own frame (the frame of the dataset's transforms.json) with --data parsed by nerfstudio's
    default dataparser, which orients, centres and scales the cameras: the two frames differ, as when a PLY from
    another trainer meets a nerfstudio dataset."""
    return [
        "--pipeline.source", str(files["ply"]), "--pipeline.denoiser", "prior", "--prompt", "wood",
        "--pipeline.steps", "2", "--pipeline.views", "3", "--data", str(files["data"]),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("offset", "fix"),
    [(0.0, "pass --pipeline.source-frame colmap"), (50.0, "check that --pipeline.source and --data belong together")],
    ids=["raw-frame", "elsewhere"],
)
def test_a_scene_in_another_frame_is_refused_in_one_line(
    tmp_path: Path, scene_files: dict[str, Path], capsys: pytest.CaptureFixture[str], offset: float, fix: str
) -> None:
    """In the raw frame the fix is named; a scene that no frame puts in view is another scene."""
    files = dict(scene_files)
    if offset:
        source = GaussianScene.load(scene_files["ply"])
        moved = GaussianScene(source.means + offset, source.quats_wxyz, source.log_scales, source.opacity_logits,
                              source.sh)  # fmt: skip
        files["ply"] = moved.save(tmp_path / "elsewhere.ply")
    with pytest.raises(SystemExit) as exit_info:
        train_in_process(tmp_path, *raw_frame_args(files))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "sync-splat: error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "of its Gaussians are in view of the --data cameras" in lines[0] and fix in lines[0]


def test_scenes_known_to_be_in_nerfstudio_frame_are_not_checked(tmp_path: Path, scene_files: dict[str, Path]) -> None:
    from nerfstudio_plugin.frames import in_nerfstudio_frame

    assert all(in_nerfstudio_frame(scene_files[kind]) for kind in ("config", "ckpt"))
    assert in_nerfstudio_frame(scene_files["config"].parent)  # a run folder
    assert not in_nerfstudio_frame(scene_files["ply"])
    data = scene_files["ply"].read_bytes()
    first, rest = data.split(b"\n", 1)
    exported = tmp_path / "splat.ply"  # as ns-export writes it (nerfstudio's spelling)
    exported.write_bytes(first + b"\ncomment Generated by Nerstudio 1.1.5\n" + rest)
    assert in_nerfstudio_frame(exported)


@pytest.mark.parametrize("frame", ["colmap", "transforms"])
def test_source_frame_moves_the_scene_into_the_dataset_frame(
    tmp_path: Path, scene_files: dict[str, Path], frame: str
) -> None:
    """The moved scene renders from the dataset's cameras as the dataset's images show it; restyled.ply stays in
    the source's frame (its geometry is the source file's, bit for bit)."""
    from sync_splat.apps.restyle import render_rgb

    seen: dict = {}

    def look(pipeline, step: int) -> None:
        if not seen:
            dataset = pipeline.datamanager.train_dataset
            images = torch.stack([dataset[i]["image"] for i in range(len(dataset))]).permute(0, 3, 1, 2)
            seen.update(moved=pipeline._source, cameras=pipeline._dataset_cameras(), images=images)

    run = train_in_process(tmp_path, *raw_frame_args(scene_files), "--pipeline.source-frame", frame, during=look)
    moved = render_rgb(seen["moved"], seen["cameras"])
    as_is = render_rgb(GaussianScene.load(scene_files["ply"]), seen["cameras"])
    assert (moved - seen["images"]).abs().mean() < 0.01 < (as_is - seen["images"]).abs().mean()
    restyled = assert_restyled(run / "restyled.ply", scene_files["ply"])
    # The run record says how the source was moved: restyled.ply moved so explains the views the sampler delivered.
    from sync_splat.apps.evaluate import fit_psnr
    from sync_splat.apps.run_record import RunRecord
    from sync_splat.scene.frames import transform_scene

    record = RunRecord.load(run / "run.json")
    restyled_there = transform_scene(restyled, record.frame["transform"], record.frame["scale"])
    torch.testing.assert_close(restyled_there.means, seen["moved"].means)
    delivered = record.delivered_views()
    assert fit_psnr(restyled_there, record.cameras, delivered) > fit_psnr(restyled, record.cameras, delivered) + 5


def test_compact_ply_drops_the_zero_sh_columns(tmp_path: Path, scene_files: dict[str, Path]) -> None:
    """A degree-3 source: restyled.ply keeps its 45 f_rest columns (all zero), or with --pipeline.compact-ply True
    has none and is several times smaller, with the same geometry and colours."""
    from plyfile import PlyData

    source = GaussianScene.load(scene_files["ply"])
    rest = 0.1 * torch.randn(source.num_gaussians, 15, 3, generator=torch.Generator().manual_seed(0))
    degree_3 = GaussianScene(source.means, source.quats_wxyz, source.log_scales, source.opacity_logits,
                             torch.cat([source.sh, rest], dim=1)).save(tmp_path / "degree3.ply")  # fmt: skip
    args = ["--pipeline.source", str(degree_3), "--pipeline.denoiser", "prior", "--prompt", "wood",
            "--pipeline.steps", "2", "--pipeline.views", "3", "--pipeline.up", "y"]  # fmt: skip
    full = train_in_process(tmp_path, *args, timestamp="full") / "restyled.ply"
    compact = train_in_process(tmp_path, *args, "--pipeline.compact-ply", "True", timestamp="compact") / "restyled.ply"
    names = [p.name for p in PlyData.read(str(compact))["vertex"].properties]
    assert not any(name.startswith("f_rest") for name in names) and GaussianScene.load(compact).sh_degree == 0
    assert GaussianScene.load(full).sh_degree == 3 and full.stat().st_size > 3 * compact.stat().st_size
    ours, theirs = GaussianScene.load(compact), GaussianScene.load(full)
    for name in ("means", "quats_wxyz", "log_scales", "opacity_logits"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert torch.equal(ours.sh[:, 0], theirs.sh[:, 0])
