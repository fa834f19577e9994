"""`SyncSplatModel`: a splatfacto model with frozen source geometry and no densification, a CPU renderer with the
viewer's outputs, and colour writing."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import dataset_cameras, tiny_scene

from sync_splat.apps.restyle import render_rgb
from sync_splat.scene.gaussians import SH_C0, GaussianScene


def build_model(scene: GaussianScene):
    from nerfstudio.data.scene_box import SceneBox

    from nerfstudio_plugin.model import SyncSplatModelConfig

    box = SceneBox(aabb=torch.tensor([[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]]))
    return SyncSplatModelConfig().setup(scene_box=box, num_train_data=1, scene=scene)


def with_sh_degree_1(scene: GaussianScene) -> GaussianScene:
    sh = torch.zeros(scene.num_gaussians, 4, 3)
    sh[:, 0] = scene.sh[:, 0]
    sh[:, 1:] = 0.1 * torch.randn(scene.num_gaussians, 3, 3, generator=torch.Generator().manual_seed(0))
    return GaussianScene(scene.means, scene.quats_wxyz, scene.log_scales, scene.opacity_logits, sh)


@pytest.fixture(scope="module")
def scene() -> GaussianScene:
    return tiny_scene()


@pytest.mark.parametrize("degree", [0, 1])
def test_model_holds_the_source_frozen(scene: GaussianScene, degree: int) -> None:
    from nerfstudio.models.splatfacto import SplatfactoModel

    source = scene if degree == 0 else with_sh_degree_1(scene)
    model = build_model(source)
    assert isinstance(model, SplatfactoModel)  # what ns-export gaussian-splat and the viewer require
    assert model.config.sh_degree == degree
    assert model.get_param_groups() == {}
    assert not any(p.requires_grad for p in model.gauss_params.values())
    back = model.to_scene()
    for name in ("means", "quats_wxyz", "log_scales", "opacity_logits"):
        assert torch.equal(getattr(back, name), getattr(source, name)), name
    tolerance = 0 if degree > 0 else 1e-5  # degree 0 stores logit colours, as splatfacto does
    torch.testing.assert_close(back.sh, source.sh, atol=tolerance, rtol=0)


@pytest.mark.parametrize("degree", [0, 1])
def test_set_colours_writes_the_dc_term_and_zeroes_the_rest(scene: GaussianScene, degree: int) -> None:
    model = build_model(scene if degree == 0 else with_sh_degree_1(scene))
    rgb01 = torch.rand(scene.num_gaussians, 3, generator=torch.Generator().manual_seed(1))
    model.set_colors(rgb01)
    assert torch.count_nonzero(model.features_rest) == 0
    if degree > 0:
        torch.testing.assert_close(model.features_dc, (rgb01 - 0.5) / SH_C0)
    torch.testing.assert_close(model.colors, rgb01, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.to_scene().rgb01, rgb01, atol=1e-5, rtol=0)


def test_training_callbacks_never_densify(scene: GaussianScene) -> None:
    """Splatfacto's refinement (split, duplicate, cull, opacity reset) is not registered: the Gaussians stay the
    source's through steps where splatfacto would refine."""
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

    model = build_model(scene)
    attributes = TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=None, trainer=None)
    callbacks = model.get_training_callbacks(attributes)
    before = model.to_scene()
    refine_steps = (model.config.warmup_length + model.config.refine_every, model.config.reset_alpha_every * 100)
    for step in (0, *refine_steps):
        for location in TrainingCallbackLocation:
            for callback in callbacks:
                callback.run_callback_at_location(step, location)
    assert model.step == refine_steps[-1]
    after = model.to_scene()
    for name in ("means", "quats_wxyz", "log_scales", "opacity_logits", "sh"):
        assert torch.equal(getattr(after, name), getattr(before, name)), name


def test_get_outputs_renders_on_the_cpu_with_depth_for_the_viewer(scene: GaussianScene) -> None:
    from nerfstudio_plugin.datamanager import to_nerfstudio_cameras

    model = build_model(scene).eval()
    cameras = dataset_cameras(scene)
    model.set_background(torch.ones(3))
    outputs = model.get_outputs_for_camera(to_nerfstudio_cameras(cameras)[1:2])
    h, w = cameras.height, cameras.width
    assert outputs["rgb"].shape == (h, w, 3)
    assert outputs["depth"].shape == (h, w, 1)  # the viewer's depth compositing needs [H, W, 1]
    assert outputs["accumulation"].shape == (h, w, 1)
    # The same picture as sync_splat's renderer over white: the camera conversion is right.
    expected = render_rgb(scene, cameras.subset([1]))[0].permute(1, 2, 0)
    torch.testing.assert_close(outputs["rgb"], expected, atol=1e-4, rtol=0)
    covered = outputs["accumulation"][..., 0] > 0.5
    assert covered.any() and (outputs["depth"][covered] > 0).all()


def test_lpips_is_stubbed_offline(scene: GaussianScene) -> None:
    model = build_model(scene)
    image = torch.rand(1, 3, 8, 8)
    assert math.isnan(float(model.lpips(image, image)))
