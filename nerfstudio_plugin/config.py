"""`ns-train sync-splat`: the method's configuration, registered with nerfstudio through an entry point.

pyproject.toml declares `[project.entry-points."nerfstudio.method_configs"] sync-splat =
"nerfstudio_plugin.config:sync_splat"`; nerfstudio registers the method under `sync_splat.config.method_name`.
The config is built from scratch: importing `nerfstudio.configs.method_configs` here (to copy splatfacto's)
would be a circular import when this module is imported first: that module loads every plugin's entry point,
this one included, while it is being built.

    ns-train sync-splat --data DATA --pipeline.source outputs/.../config.yml --pipeline.prompt "a marble statue"
    ns-train sync-splat --pipeline.source scene.ply --pipeline.denoiser prior --pipeline.prompt wood

One trainer iteration is one denoising step; the run ends when sampling is complete and leaves `restyled.ply`
in the run folder, also after a restart from the viewer. `--max-num-iterations K` stops after K steps;
`--load-dir <run>/nerfstudio_models` resumes. `--machine.num-devices N` splits the views across N processes, one per
CUDA device (nerfstudio's launcher needs CUDA; `sync_splat.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from nerfstudio_plugin.pipeline import SyncSplatPipelineConfig
from sync_splat.errors import InputError, one_line_errors


@dataclass
class SyncSplatTrainerConfig(TrainerConfig):
    """Nerfstudio's trainer settings for sync-splat: one iteration per denoising step, nothing optimised."""

    max_num_iterations: int | None = None  # type: ignore[assignment]
    """Denoising steps to take before stopping (resume with --load-dir); None: until sampling is complete. The run
    stops at the same step after a viewer restart."""

    def __setattr__(self, name: str, value: object) -> None:
        """Keep the run's viewer address when a command swaps in nerfstudio's default viewer settings.

        `ns-viewer --load-config` replaces the saved viewer config with its own defaults, which listen on every
        interface (0.0.0.0). A replacement that asks for nothing but that default keeps the saved host (127.0.0.1 unless
        the run was trained with another `--viewer.websocket-host`); any other host the user passes wins."""
        saved = self.__dict__.get("viewer") if name == "viewer" else None
        default_host = ViewerConfig.websocket_host
        if isinstance(saved, ViewerConfig) and isinstance(value, ViewerConfig) and value.websocket_host == default_host:
            value.websocket_host = saved.websocket_host
        super().__setattr__(name, value)

    def set_experiment_name(self) -> None:
        """Name the experiment after the dataset, as nerfstudio does, or else after the source scene."""
        if self.experiment_name is None and not self.pipeline.datamanager.has_dataset and self.pipeline.source:
            self.experiment_name = experiment_name_of(self.pipeline.source)
        super().set_experiment_name()

    def save_config(self) -> None:
        """Write config.yml so that the run stands on its own: paths are stored absolute (ns-export, ns-viewer and
        ns-render work from any folder) and nerfstudio's --prompt is stored once, as the pipeline's prompt.

        ns-train calls this before it starts its processes, so a run that nerfstudio's launcher cannot start is refused
        here, in one line: the launcher starts one process per CUDA device (and asserts that CUDA is there)."""
        devices = self.machine.num_devices
        if devices > 1 and torch.cuda.device_count() < devices:
            with one_line_errors("sync-splat"):
                raise InputError(
                    f"--machine.num-devices {devices}: nerfstudio starts one process per CUDA device and torch "
                    f"finds {torch.cuda.device_count()}; on the CPU, split the views with `sync-splat restyle --nproc "
                    f"{devices}`"
                )
        self.output_dir = self.output_dir.expanduser().absolute()
        if self.data is not None:
            self.data = self.data.expanduser().absolute()
        if self.prompt:
            self.pipeline.model.prompt = self.prompt
            self.prompt = None
        self.pipeline.settle()
        super().save_config()


def experiment_name_of(source: Path) -> str:
    """A name for runs of `source`: a splatfacto run's experiment (`<outputs>/<experiment>/<method>/<timestamp>/
    config.yml`, or a checkpoint in its model folder), else the PLY's name, or its scene folder's for the 3DGS
    layout `<scene>/point_cloud/iteration_<k>/point_cloud.ply`."""
    source = Path(source).expanduser().absolute()
    if source.suffix == ".yml":
        run = source.parent
    elif source.suffix == ".ckpt":
        run = source.parent.parent
    elif source.stem == "point_cloud" and source.parent.name.startswith("iteration_"):
        return source.parent.parent.parent.name or source.stem
    else:
        return source.stem
    return run.parent.parent.name or source.stem


sync_splat = MethodSpecification(
    config=SyncSplatTrainerConfig(
        method_name="sync-splat",
        steps_per_save=10,
        steps_per_eval_batch=0,
        steps_per_eval_image=0,
        steps_per_eval_all_images=0,
        max_num_iterations=None,
        mixed_precision=False,
        # nerfstudio's default is CUDA; sync-splat also renders and samples on the CPU, so it takes what is here.
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
        pipeline=SyncSplatPipelineConfig(),
        optimizers={},
        viewer=ViewerConfig(websocket_host="127.0.0.1", num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="Restyle a Gaussian-splat scene from a text prompt with SyncTweedies (synchronised diffusion).",
)
"""The `sync-splat` method: `ns-train sync-splat --help` lists its settings."""
