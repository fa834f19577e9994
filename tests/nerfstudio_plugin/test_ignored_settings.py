"""Splatfacto's settings that the sync-splat model ignores: absent from `ns-train sync-splat --help`, refused on the
command line, and refused in one line when a config file sets one."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ns_train_args, subprocess_env, train_in_process

REPO = Path(__file__).resolve().parents[2]
WORKING = {
    "--pipeline.model.prompt",
    "--pipeline.model.background-color",
    "--pipeline.model.rasterize-mode",
    "--pipeline.model.color-corrected-metrics",
}
"""The model's flags that change what sync-splat does (the viewer's background, the rasteriser, ns-eval's metrics,
nerfstudio's --prompt)."""


def ignored_fields() -> dict[str, str]:
    """Each ignored field of the model config -> its command-line flag."""
    from nerfstudio_plugin.model import SyncSplatModelConfig

    return {
        f.name: "--pipeline.model." + f.name.replace("_", "-")
        for f in dataclasses.fields(SyncSplatModelConfig)
        if f.metadata
    }


@pytest.mark.slow
def test_help_lists_only_the_model_settings_that_do_something() -> None:
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["COLUMNS"] = "200"  # one flag per line
    ns_train = Path(sys.executable).with_name("ns-train")
    result = subprocess.run(
        [str(ns_train), "sync-splat", "--help"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    words = result.stdout.replace("│", " ").split()
    model_flags = {word for word in words if word.startswith("--pipeline.model.")}
    assert model_flags == WORKING
    assert "--pipeline.source" in words and "--pipeline.sd.guidance-scale" in words  # ours are all still there
    hidden = set(ignored_fields().values())
    assert {"--pipeline.model.cull-alpha-thresh", "--pipeline.model.densify-grad-thresh"} <= hidden
    assert {"--pipeline.model.sh-degree", "--pipeline.model.camera-optimizer"} <= hidden
    assert len(hidden) >= 25


def test_command_line_refuses_an_ignored_setting(
    tmp_path: Path, scene_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    args = ["--pipeline.source", str(scene_files["ply"]), "--pipeline.model.cull-alpha-thresh", "0.005"]
    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(AnnotatedBaseConfigUnion, args=ns_train_args(tmp_path, *args))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "Unrecognized" in captured.err + captured.out and "--pipeline.model.cull-alpha-thresh" in captured.err


@pytest.mark.parametrize(
    ("name", "value"),
    [("cull_alpha_thresh", 0.005), ("sh_degree", 1), ("random_init", True), ("num_downscales", 2)],
)
def test_check_settings_refuses_a_changed_ignored_setting(name: str, value: object) -> None:
    from nerfstudio_plugin.model import SyncSplatModelConfig
    from sync_splat.errors import InputError

    with pytest.raises(InputError) as refused:
        SyncSplatModelConfig(**{name: value}).check_settings()
    message = str(refused.value)
    assert "\n" not in message and f"pipeline.model.{name} is {value!r}" in message and "ignores it" in message


def test_check_settings_refuses_a_camera_optimiser() -> None:
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

    from nerfstudio_plugin.model import SyncSplatModelConfig
    from sync_splat.errors import InputError

    with pytest.raises(InputError) as refused:
        SyncSplatModelConfig(camera_optimizer=CameraOptimizerConfig(mode="SO3xR3")).check_settings()
    message = str(refused.value)  # names the nested field that differs, not the whole nested config
    assert message.startswith("pipeline.model.camera_optimizer.mode is 'SO3xR3', but sync-splat ignores it")
    assert "the cameras are not optimised" in message and message.endswith("set it back to 'off'")


def test_check_settings_accepts_the_defaults_and_working_settings() -> None:
    from nerfstudio_plugin.model import SyncSplatModelConfig

    SyncSplatModelConfig().check_settings()
    SyncSplatModelConfig(background_color="white", rasterize_mode="antialiased", prompt="wood").check_settings()


def test_a_config_file_that_sets_an_ignored_setting_is_one_line(
    tmp_path: Path, scene_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`ns-train sync-splat --load-config` takes every setting from the file, past the command line's checks."""
    import tyro
    import yaml
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    args = ["--pipeline.denoiser", "prior", "--pipeline.prompt", "wood", "--pipeline.source", str(scene_files["ply"])]
    config = tyro.cli(AnnotatedBaseConfigUnion, args=ns_train_args(tmp_path, *args))
    config.pipeline.model.sh_degree = 1
    saved = tmp_path / "edited.yml"
    saved.write_text(yaml.dump(config), "utf8")
    with pytest.raises(SystemExit) as exit_info:
        train_in_process(tmp_path, "--load-config", str(saved))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert line.startswith("sync-splat: error: pipeline.model.sh_degree is 1, but sync-splat ignores it")
    assert "--pipeline.source" in line and "Traceback" not in err
