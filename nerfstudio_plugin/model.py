"""The sync-splat model: a `SplatfactoModel` whose geometry is frozen and whose colours the pipeline writes.

It subclasses `SplatfactoModel` so that everything built for splatfacto accepts it (`ns-export gaussian-splat`,
`ns-viewer`, the live viewer of `ns-train`), and changes what sync-splat needs changed:

- the Gaussians come from a `GaussianScene` (the pipeline's source), not from seed points or a random
  initialisation, and no parameter requires a gradient: nothing is optimised, there is no densification (the
  gsplat strategy's callbacks are not registered) and `get_param_groups` is empty;
- rendering goes through `sync_splat.render.gaussians.render_gaussians`: gsplat on CUDA, the pure-torch compositor
  on the CPU (stock splatfacto calls `.cuda()` and gsplat's CUDA kernels unconditionally). Colours are the SH colours
  seen from the camera centre, so the source looks as it did in splatfacto until the first colours are written;
- LPIPS is a stub that needs no download (splatfacto builds AlexNet-LPIPS, which fails offline);
- `set_colors` writes view-independent colours: the DC coefficient `(rgb01 - 0.5) / SH_C0` (a degree-0 model
  stores `logit(rgb01)`, as splatfacto does) and zero higher-order coefficients.

Conventions: docs/conventions.md. Nerfstudio cameras are OpenGL; they are converted once, by
`sync_splat.scene.cameras.Cameras.from_nerfstudio`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import tyro
from jaxtyping import Float
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras as NerfstudioCameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig
from torch import Tensor, nn

from sync_splat.errors import InputError
from sync_splat.render.gaussians import render_gaussians
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.gaussians import SH_C0, GaussianScene

# Degree-0 splatfacto models store logit colours; keep them finite.
_LOGIT_EPS = 1e-6


_SPLATFACTO = SplatfactoModelConfig()
_IGNORED = "sync_splat_ignored"
"""Field metadata key: why `SyncSplatModel` ignores (or overwrites) a setting it inherits from splatfacto."""

_FROZEN = "the geometry is frozen: nothing is densified, split, culled or reset"
_FROM_SOURCE = "the Gaussians, their count and SH degree come from --pipeline.source"
_NOT_TRAINED = "nothing is optimised: the colours come from the sampler, not from a loss"
_NO_RAYS = "Gaussians are rendered per camera, no rays are cast"


def _ignored(name: str, why: str) -> Any:
    """A re-declared splatfacto field that `SyncSplatModel` ignores: splatfacto's default, marked with the reason.

    The default is read from splatfacto so that a run's config.yml, which holds the defaults, still loads."""
    return field(default_factory=lambda: copy.deepcopy(getattr(_SPLATFACTO, name)), metadata={_IGNORED: why})


@dataclass
class SyncSplatModelConfig(SplatfactoModelConfig):
    """Settings of the sync-splat model. Geometry and SH degree come from the pipeline's source scene.

    Splatfacto's settings of training (densification, losses, schedules, random initialisation, camera and
    colour optimisation) do nothing here. They are re-declared as `tyro.conf.Suppress`, so `ns-train sync-splat
    --help` does not list them and its command line refuses them; `check_settings`, run when training starts,
    refuses in one line a config file (--load-config) that changes one. What is left does something:
    `background_color`, `rasterize_mode`, `color_corrected_metrics` (ns-eval) and `prompt` (nerfstudio's --prompt).
    """

    _target: type = field(default_factory=lambda: SyncSplatModel)

    enable_collider: tyro.conf.Suppress[bool] = _ignored("enable_collider", _NO_RAYS)
    collider_params: tyro.conf.Suppress[dict[str, float] | None] = _ignored("collider_params", _NO_RAYS)
    loss_coefficients: tyro.conf.Suppress[dict[str, float]] = _ignored("loss_coefficients", _NOT_TRAINED)
    eval_num_rays_per_chunk: tyro.conf.Suppress[int] = _ignored("eval_num_rays_per_chunk", _NO_RAYS)

    warmup_length: tyro.conf.Suppress[int] = _ignored("warmup_length", _FROZEN)
    refine_every: tyro.conf.Suppress[int] = _ignored("refine_every", _FROZEN)
    reset_alpha_every: tyro.conf.Suppress[int] = _ignored("reset_alpha_every", _FROZEN)
    cull_alpha_thresh: tyro.conf.Suppress[float] = _ignored("cull_alpha_thresh", _FROZEN)
    cull_scale_thresh: tyro.conf.Suppress[float] = _ignored("cull_scale_thresh", _FROZEN)
    cull_screen_size: tyro.conf.Suppress[float] = _ignored("cull_screen_size", _FROZEN)
    densify_grad_thresh: tyro.conf.Suppress[float] = _ignored("densify_grad_thresh", _FROZEN)
    use_absgrad: tyro.conf.Suppress[bool] = _ignored("use_absgrad", _FROZEN)
    densify_size_thresh: tyro.conf.Suppress[float] = _ignored("densify_size_thresh", _FROZEN)
    n_split_samples: tyro.conf.Suppress[int] = _ignored("n_split_samples", _FROZEN)
    split_screen_size: tyro.conf.Suppress[float] = _ignored("split_screen_size", _FROZEN)
    stop_screen_size_at: tyro.conf.Suppress[int] = _ignored("stop_screen_size_at", _FROZEN)
    stop_split_at: tyro.conf.Suppress[int] = _ignored("stop_split_at", _FROZEN)

    random_init: tyro.conf.Suppress[bool] = _ignored("random_init", _FROM_SOURCE)
    num_random: tyro.conf.Suppress[int] = _ignored("num_random", _FROM_SOURCE)
    random_scale: tyro.conf.Suppress[float] = _ignored("random_scale", _FROM_SOURCE)
    sh_degree: tyro.conf.Suppress[int] = _ignored("sh_degree", _FROM_SOURCE)

    num_downscales: tyro.conf.Suppress[int] = field(
        default=0, metadata={_IGNORED: "views are rendered and compared at full resolution"}
    )
    resolution_schedule: tyro.conf.Suppress[int] = _ignored(
        "resolution_schedule", "views are rendered and compared at full resolution"
    )
    sh_degree_interval: tyro.conf.Suppress[int] = _ignored(
        "sh_degree_interval", "every SH degree of the source is rendered from the start"
    )
    output_depth_during_training: tyro.conf.Suppress[bool] = _ignored(
        "output_depth_during_training", "depth is always rendered"
    )
    ssim_lambda: tyro.conf.Suppress[float] = _ignored("ssim_lambda", _NOT_TRAINED)
    use_scale_regularization: tyro.conf.Suppress[bool] = _ignored("use_scale_regularization", _NOT_TRAINED)
    max_gauss_ratio: tyro.conf.Suppress[float] = _ignored("max_gauss_ratio", _NOT_TRAINED)
    camera_optimizer: tyro.conf.Suppress[CameraOptimizerConfig] = _ignored(
        "camera_optimizer", "the cameras are not optimised"
    )
    use_bilateral_grid: tyro.conf.Suppress[bool] = _ignored("use_bilateral_grid", "no colour correction is learned")
    grid_shape: tyro.conf.Suppress[tuple[int, int, int]] = _ignored("grid_shape", "no colour correction is learned")

    def check_settings(self) -> None:
        """Refuse a setting that would be ignored (set from a config file or in Python: the command line does not
        offer them), rather than run as if it applied."""
        defaults = SyncSplatModelConfig()
        for setting in dataclasses.fields(self):
            why = setting.metadata.get(_IGNORED)
            if why is None or getattr(self, setting.name) == getattr(defaults, setting.name):
                continue
            name, value, default = _first_difference(
                f"pipeline.model.{setting.name}", getattr(self, setting.name), getattr(defaults, setting.name)
            )
            raise InputError(
                f"{name} is {value!r}, but sync-splat ignores it ({why}): remove it from the config or set it back "
                f"to {default!r}"
            )


def _first_difference(name: str, value: Any, default: Any) -> tuple[str, Any, Any]:
    """The first field, by dotted name, where two different values of a (nested) config differ."""
    if dataclasses.is_dataclass(value) and type(value) is type(default):
        for inner in dataclasses.fields(value):
            if getattr(value, inner.name) != getattr(default, inner.name):
                return _first_difference(
                    f"{name}.{inner.name}", getattr(value, inner.name), getattr(default, inner.name)
                )
    return name, value, default


class SyncSplatModel(SplatfactoModel):
    """Splatfacto with frozen geometry, a CPU renderer and colours written by the pipeline.

    Built by the pipeline with `scene=<GaussianScene>` (forwarded by `ModelConfig.setup`).
    """

    config: SyncSplatModelConfig

    def populate_modules(self) -> None:
        scene: GaussianScene | None = self.kwargs.get("scene")
        if scene is None:
            raise ValueError("SyncSplatModel needs the source scene: build it through SyncSplatPipeline")
        # splatfacto sizes its tensors from these settings; the values themselves are replaced below.
        self.config = dataclasses.replace(
            self.config, random_init=True, num_random=scene.num_gaussians, sh_degree=scene.sh_degree
        )
        with _lpips_stub():
            super().populate_modules()
        self.load_scene(scene)

    def k_nearest_sklearn(self, x: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Splatfacto's scale initialisation; unused here (the scene's scales replace it), so skip the kNN search."""
        n = x.shape[0]
        return np.ones((n, k), dtype=np.float32), np.zeros((n, k), dtype=np.float32)

    # ---- the Gaussians --------------------------------------------------------------------------------------

    @torch.no_grad()
    def load_scene(self, scene: GaussianScene) -> None:
        """Make the model's Gaussians those of `scene` (same count and SH degree); nothing requires a gradient."""
        if scene.num_gaussians != self.num_points or scene.sh_degree != self.config.sh_degree:
            raise ValueError(
                f"load_scene: the model holds {self.num_points} Gaussians of SH degree {self.config.sh_degree}, "
                f"the scene {scene.num_gaussians} of degree {scene.sh_degree}"
            )
        values = {
            "means": scene.means,
            "scales": scene.log_scales,
            "quats": scene.quats_wxyz,
            "opacities": scene.opacity_logits[:, None],
            "features_dc": scene.sh[:, 0],
            "features_rest": scene.sh[:, 1:],
        }
        if self.config.sh_degree == 0:  # splatfacto's degree-0 models hold logit colours (`colors = sigmoid`)
            values["features_dc"] = torch.logit((0.5 + SH_C0 * scene.sh[:, 0]).clamp(_LOGIT_EPS, 1 - _LOGIT_EPS))
        for name, value in values.items():
            param = self.gauss_params[name]
            param.data = value.detach().to(device=param.device, dtype=torch.float32).clone()
            param.requires_grad_(False)

    @torch.no_grad()
    def set_colors(self, rgb01: Float[Tensor, "G 3"]) -> None:
        """Write view-independent colours: SH DC `(rgb01 - 0.5) / SH_C0` (degree 0: `logit(rgb01)`), rest zero."""
        if tuple(rgb01.shape) != (self.num_points, 3):
            raise ValueError(f"set_colors: expected ({self.num_points}, 3) colours, got {tuple(rgb01.shape)}")
        rgb01 = rgb01.to(self.features_dc)
        if self.config.sh_degree > 0:
            self.features_dc.copy_((rgb01 - 0.5) / SH_C0)
        else:
            self.features_dc.copy_(torch.logit(rgb01.clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)))
        self.features_rest.zero_()

    def sh(self) -> Float[Tensor, "G K 3"]:
        """The SH coefficients, DC first, in the convention of `GaussianScene.sh`."""
        return torch.cat([self.shs_0[:, None], self.shs_rest], dim=1)

    def to_scene(self) -> GaussianScene:
        """The model's Gaussians as a `GaussianScene` (CPU copies)."""
        return GaussianScene(
            means=self.means.detach().cpu().clone(),
            quats_wxyz=self.quats.detach().cpu().clone(),
            log_scales=self.scales.detach().cpu().clone(),
            opacity_logits=self.opacities.detach().cpu().reshape(-1).clone(),
            sh=self.sh().detach().cpu().clone(),
        )

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        """Copy a checkpoint's tensors into the existing parameters (splatfacto replaces the Parameter objects,
        which would unfreeze them and detach them from anything holding them)."""
        for name, param in self.gauss_params.items():
            value = state_dict.get(f"gauss_params.{name}")
            if value is not None and value.shape != param.shape:
                raise InputError(
                    f"the checkpoint holds {name} of shape {tuple(value.shape)}, the source scene "
                    f"{tuple(param.shape)}: resume with the same --pipeline.source"
                )
        return nn.Module.load_state_dict(self, state_dict, strict=strict, **kwargs)

    # ---- training: nothing to optimise ----------------------------------------------------------------------

    def get_param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {}

    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> list[TrainingCallback]:
        """Only keep `self.step` current: no densification, no optimiser bookkeeping."""

        def set_step(step: int) -> None:
            self.step = step

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], set_step)]

    def get_metrics_dict(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: value.detach() if isinstance(value, Tensor) else value
                for name, value in super().get_metrics_dict(outputs, batch).items()}  # fmt: skip

    # ---- rendering ------------------------------------------------------------------------------------------

    def get_outputs(self, camera: NerfstudioCameras) -> dict[str, Tensor]:  # type: ignore[override]
        """Render one nerfstudio camera: `rgb` [H, W, 3] over the background, `depth` [H, W, 1] (expected depth;
        empty pixels take the farthest depth, as splatfacto), `accumulation` [H, W, 1] and `background`."""
        if not isinstance(camera, NerfstudioCameras):
            raise TypeError(f"SyncSplatModel renders nerfstudio Cameras, got {type(camera).__name__}")
        if camera.shape[0] != 1:
            raise ValueError(f"SyncSplatModel renders one camera at a time, got {camera.shape[0]}")
        view = Cameras.from_nerfstudio(
            camera.camera_to_worlds.reshape(1, 3, 4).to(self.device, torch.float32),
            camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height,
        )  # fmt: skip
        width, height = view.width, view.height
        self.last_size = (height, width)
        background = self._get_background_color()

        keep = None
        if self.crop_box is not None and not self.training:
            keep = self.crop_box.within(self.means).reshape(-1)
            if not keep.any():
                return self.get_empty_outputs(width, height, self.background_color.to(self.device))

        def crop(t: Tensor) -> Tensor:
            return t if keep is None else t[keep]

        camera_centre = view.c2w[0, :3, 3]
        scene = GaussianScene(
            means=crop(self.means), quats_wxyz=crop(self.quats), log_scales=crop(self.scales),
            opacity_logits=crop(self.opacities).reshape(-1), sh=crop(self.sh()),
        )  # fmt: skip
        out = render_gaussians(
            scene.means, scene.quats_wxyz, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits),
            scene.colors(camera_centre), view.viewmats, view.Ks, width, height,
            antialiased=self.config.rasterize_mode == "antialiased",
        )  # fmt: skip
        image = out.image[0].permute(1, 2, 0)  # [H, W, 3]
        alpha = out.alpha[0].permute(1, 2, 0)  # [H, W, 1]
        depth = out.depth[0].permute(1, 2, 0)
        rgb = (image + (1 - alpha) * background).clamp(0.0, 1.0)
        far = depth.max() if bool((alpha > 0).any()) else depth.new_tensor(10.0)
        depth = torch.where(alpha > 0, depth, far)
        if not self.training:
            background = background.expand(height, width, 3)
        return {"rgb": rgb, "depth": depth, "accumulation": alpha, "background": background}


class _NoLPIPS(nn.Module):
    """Stands in for torchmetrics' LPIPS, whose AlexNet weights are a download: LPIPS is reported as NaN."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, preds: Tensor, target: Tensor) -> Tensor:
        return torch.tensor(float("nan"))


@contextlib.contextmanager
def _lpips_stub() -> Iterator[None]:
    """Swap torchmetrics' LPIPS class for `_NoLPIPS` while splatfacto's `populate_modules` imports it."""
    import torchmetrics.image.lpip as lpip

    original = lpip.LearnedPerceptualImagePatchSimilarity
    lpip.LearnedPerceptualImagePatchSimilarity = _NoLPIPS  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        lpip.LearnedPerceptualImagePatchSimilarity = original  # type: ignore[misc]
