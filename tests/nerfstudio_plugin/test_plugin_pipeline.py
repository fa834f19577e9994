"""`SyncSplatPipeline` without the trainer: one step per iteration, the preview toggle, restart, live settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sync_splat.apps.restyle import RestyleConfig
from sync_splat.scene.gaussians import GaussianScene


def build_pipeline(source: Path, device: str = "cpu", **restyle: object):
    from nerfstudio_plugin.pipeline import SyncSplatPipelineConfig

    settings = {"denoiser": "prior", "prompt": "wood", "steps": 3, "views": 3, **restyle}
    return SyncSplatPipelineConfig(source=source, restyle=RestyleConfig(**settings)).setup(device=device)


@pytest.fixture
def pipeline(scene_files: dict[str, Path]):
    return build_pipeline(scene_files["ply"])


def shown_colors(pipeline) -> torch.Tensor:
    return pipeline.model.to_scene().rgb01


@pytest.mark.parametrize("kind", ["ply", "ckpt", "config"])
def test_pipeline_loads_the_source_itself(scene_files: dict[str, Path], kind: str) -> None:
    """--pipeline.source is read by the pipeline (not --load-dir): the model holds its Gaussians, unchanged."""
    pipeline = build_pipeline(scene_files[kind])
    source = GaussianScene.load(scene_files["ply"])
    shown = pipeline.model.to_scene()
    for name in ("means", "quats_wxyz", "log_scales", "opacity_logits"):
        assert torch.equal(getattr(shown, name), getattr(source, name)), name
    torch.testing.assert_close(shown.rgb01, source.rgb01, atol=1e-4, rtol=0)  # before the first step
    assert pipeline.get_param_groups() == {}  # the trainer's optimisers hold nothing that could go stale


def test_cuda_without_cuda_is_one_line(
    scene_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        build_pipeline(scene_files["ply"], device="cuda")
    assert exit_info.value.code == 2
    assert "sync-splat: error: --machine.device-type cuda, but torch finds no CUDA device" in capsys.readouterr().err


def test_each_iteration_takes_one_step_and_returns_a_harmless_loss(pipeline) -> None:
    _, losses, metrics = pipeline.get_train_loss_dict(step=0)
    (loss,) = losses.values()
    assert loss.requires_grad and float(loss) == 0.0
    loss.backward()  # what the trainer does with it
    assert pipeline.steps_taken == 1 and metrics["denoising_step"] == 1.0
    assert pipeline.step_counter.value == "1 / 3"
    # The viewer shows the canonical Tweedie estimate of this step.
    preview = pipeline._bridge.restyled_scene(pipeline._state.z0_hat).rgb01
    torch.testing.assert_close(shown_colors(pipeline), preview, atol=1e-5, rtol=0)
    for step in (1, 2, 3):  # the last step completes; further iterations change nothing
        pipeline.get_train_loss_dict(step=step)
    assert pipeline.complete and pipeline.steps_taken == 3
    assert pipeline.step_counter.value == "3 / 3 (complete)"


def test_preview_toggle_shows_the_current_sample(pipeline) -> None:
    pipeline.get_train_loss_dict(step=0)
    preview = shown_colors(pipeline)
    pipeline.show_preview.value = False
    pipeline.show_preview.cb_hook(pipeline.show_preview)
    current = shown_colors(pipeline)
    assert (current - preview).abs().mean() > 1e-3  # the noisy sample, not its Tweedie estimate
    pipeline.show_preview.value = True
    pipeline.show_preview.cb_hook(pipeline.show_preview)
    torch.testing.assert_close(shown_colors(pipeline), preview)


def test_restart_starts_over_from_the_source(pipeline, scene_files: dict[str, Path]) -> None:
    first = [pipeline.get_train_loss_dict(step=s) and shown_colors(pipeline) for s in (0, 1)]
    pipeline.restart.cb_hook(pipeline.restart)
    assert pipeline.steps_taken == 0 and pipeline.step_counter.value == "0 / 3"
    torch.testing.assert_close(shown_colors(pipeline), GaussianScene.load(scene_files["ply"]).rgb01, atol=1e-5, rtol=0)
    again = [pipeline.get_train_loss_dict(step=s) and shown_colors(pipeline) for s in (0, 1)]
    for ours, theirs in zip(again, first, strict=True):  # the same seed gives the same steps
        assert torch.equal(ours, theirs)


def test_controls_are_disabled_once_the_trainer_stops(pipeline, tmp_path: Path) -> None:
    """After the trainer's loop nothing takes steps, so restart and new settings would silently do nothing."""
    from types import SimpleNamespace

    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

    trainer = SimpleNamespace(base_dir=tmp_path, config=SimpleNamespace(max_num_iterations=None), stop_training=False)
    attributes = TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=pipeline, trainer=trainer)
    callbacks = pipeline.get_training_callbacks(attributes)
    for step in range(3):
        assert not trainer.stop_training  # the pipeline, not the loop's size, ends the run
        pipeline.get_train_loss_dict(step)
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    assert trainer.stop_training and (tmp_path / "restyled.ply").is_file()
    controls = (pipeline.prompt, pipeline.apply, pipeline.restart, pipeline.show_preview)
    assert not any(control.disabled for control in controls)
    for callback in callbacks:
        callback.run_callback_at_location(2, TrainingCallbackLocation.AFTER_TRAIN)
    assert all(control.disabled for control in (*controls, pipeline.guidance_scale))


def type_into(box, text: str) -> None:
    """What the viewer does while a user types: the box's value changes and its callback runs, keystroke by
    keystroke."""
    for end in range(1, len(text) + 1):
        box.value = text[:end]
        box.cb_hook(box)


def test_prompt_applies_to_the_coming_steps_when_applied(pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    type_into(pipeline.prompt, "marble")
    assert pipeline.get_extra_state()["prompt"] == "wood"  # typing alone changes nothing ('m' names no preset)
    assert "error" not in capsys.readouterr().out
    pipeline.apply.cb_hook(pipeline.apply)
    assert pipeline.get_extra_state()["prompt"] == "marble"
    marble = build_pipeline(pipeline.config.source, prompt="marble")
    for step in (0, 1):
        pipeline.get_train_loss_dict(step=step)
        marble.get_train_loss_dict(step=step)
    assert torch.equal(shown_colors(pipeline), shown_colors(marble))


def test_an_invalid_prompt_is_reported_and_sampling_goes_on(pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline.get_train_loss_dict(step=0)
    type_into(pipeline.prompt, "no such texture")  # the prior names presets: refused in one line, settings kept
    pipeline.apply.cb_hook(pipeline.apply)
    assert pipeline.get_extra_state()["prompt"] == "wood"
    assert "no such texture" in pipeline.status.value and "not applied" in pipeline.status.value
    assert "sync-splat: error:" in capsys.readouterr().out
    wood = build_pipeline(pipeline.config.source)
    for step in (0, 1, 2):
        wood.get_train_loss_dict(step=step)
    for step in (1, 2):
        pipeline.get_train_loss_dict(step=step)
    assert pipeline.complete and torch.equal(shown_colors(pipeline), shown_colors(wood))


def test_a_checkpoint_resumes_with_the_viewer_settings(pipeline, scene_files: dict[str, Path]) -> None:
    """What the viewer changed (here the prompt) is saved with the sampler state, and a resumed pipeline built
    from the original flags continues exactly as the saved one does."""
    pipeline.get_train_loss_dict(step=0)
    type_into(pipeline.prompt, "marble")
    pipeline.apply.cb_hook(pipeline.apply)
    resumed = build_pipeline(scene_files["ply"])  # --pipeline.prompt wood, as the run was started
    resumed.load_pipeline(pipeline.state_dict(), step=0)
    assert resumed.prompt.value == "marble" and resumed.step_counter.value == "1 / 3"
    for step in (1, 2):
        pipeline.get_train_loss_dict(step=step)
        resumed.get_train_loss_dict(step=step)
    assert resumed.complete and torch.equal(shown_colors(resumed), shown_colors(pipeline))


@pytest.mark.slow
def test_guidance_scale_reaches_stable_diffusion(scene_files: dict[str, Path], tiny_sd) -> None:
    sd = replace(RestyleConfig().sd, model=str(tiny_sd.model), controlnet=str(tiny_sd.controlnet), dtype="fp32")
    pipeline = build_pipeline(scene_files["ply"], denoiser="sd", prompt="a red teapot", sd=sd, steps=2, views=2)
    assert not pipeline.guidance_scale.disabled
    pipeline.guidance_scale.value = 2.5
    pipeline.apply.cb_hook(pipeline.apply)
    assert pipeline._denoiser.config.guidance_scale == 2.5
    assert pipeline.get_extra_state()["guidance_scale"] == 2.5
    names = set(pipeline.state_dict())  # no diffusion weights in what checkpoints save
    assert all(name.startswith("_model.") or name == "_extra_state" for name in names), names


def test_view_suffixes_follow_the_capture_up_direction() -> None:
    """Dataset views name 'top'/'front'/'side' views in the capture's frame (nerfstudio's is z up), not the
    orbit rigs' y-up frame."""
    from conftest import dataset_cameras, tiny_scene

    from nerfstudio_plugin.frames import suffix_frame
    from sync_splat.bridges.splat import SplatBridgeConfig
    from sync_splat.scene.cameras import Cameras
    from sync_splat.scene.up_axis import estimate_up

    y_to_z = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])  # +y becomes +z
    scene = tiny_scene()
    scene = GaussianScene(scene.means @ y_to_z[:3, :3].T, scene.quats_wxyz, scene.log_scales, scene.opacity_logits,
                          scene.sh)  # fmt: skip
    y_up = dataset_cameras(tiny_scene())
    cameras = Cameras(y_to_z @ y_up.c2w, y_up.Ks, y_up.width, y_up.height)
    up = estimate_up(scene, c2w=cameras.c2w)
    fit = suffix_frame(cameras, scene, SplatBridgeConfig(), up, orbit=False)
    torch.testing.assert_close(torch.tensor(fit.up), torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    assert abs(torch.tensor(fit.front) @ torch.tensor(fit.up)) < 1e-6
    chosen = SplatBridgeConfig(up=(0.0, 1.0, 0.0), front=(1.0, 0.0, 0.0))
    assert suffix_frame(cameras, scene, chosen, up, orbit=False) == chosen  # what a user set is kept


@pytest.mark.parametrize(("case", "canonical"), [(5, "latent"), (4, "latent")])
def test_canonical_cases_run_and_preview(scene_files: dict[str, Path], case: int, canonical: str) -> None:
    """The canonical-state cases on latent features (SyncMVD's 5, and 4): steps, both previews, completion. (On RGB
    colours they are refused: the sampler's tests check that.)"""
    from sync_splat.bridges.splat import SplatBridgeConfig

    pipeline = build_pipeline(scene_files["ply"], case=case, fit=SplatBridgeConfig(canonical=canonical))
    pipeline.get_train_loss_dict(step=0)
    assert pipeline._state.z_t is not None  # the state lives in the canonical space
    preview = shown_colors(pipeline)
    pipeline.show_preview.value = False
    pipeline.show_preview.cb_hook(pipeline.show_preview)
    assert not torch.equal(shown_colors(pipeline), preview)
    for step in (1, 2):
        pipeline.get_train_loss_dict(step=step)
    assert pipeline.complete


@pytest.mark.parametrize(
    ("train_util", "step_seconds", "render_seconds", "every"),
    [
        (0.85, 2.0, 0.1, 1),  # rendering is cheap next to a step: after every step
        (0.85, 1.0, 1.0, 6),  # 6 steps (6 s) per 1 s render: 6 / 7 >= 0.85 > 5 / 6
        (0.5, 1.0, 3.0, 3),
        (0.85, None, 1.0, 1),  # not measured yet
        (1.0, 1.0, 1.0, None),  # "Train Util" 1: no renders while sampling
    ],
)
def test_the_viewer_renders_every_so_many_denoising_steps(
    train_util: float, step_seconds: float | None, render_seconds: float, every: int | None
) -> None:
    from nerfstudio_plugin.viewer import renders_every

    assert renders_every(train_util, step_seconds, render_seconds) == every
    if every is not None and step_seconds is not None:  # the share of time sampling gets is train_util or more
        share = every * step_seconds / (every * step_seconds + render_seconds)
        fewer = (every - 1) * step_seconds / ((every - 1) * step_seconds + render_seconds)
        assert share >= train_util and (every == 1 or fewer < train_util)
