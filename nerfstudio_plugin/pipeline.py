"""The sync-splat pipeline: one synchronised denoising step per trainer iteration, shown live in the viewer.

What it owns and in which order it builds it (`__init__`):
1. the source scene, loaded here from `--pipeline.source` (a splatfacto config.yml or .ckpt, or a 3DGS PLY)
   rather than through `--load-dir`, which would leave the trainer's optimisers holding stale parameters;
2. the denoiser (`RestyleConfig.build_denoiser`: Stable Diffusion + ControlNet depth, or the exact prior);
3. the datamanager (the dataset, or orbit views rendered from the source), the source in the dataset's frame
   (`--pipeline.source-frame`, checked when not given: `frames.py`), the scene's up direction and an orbit rig
   standing on it, and the model (`SyncSplatModel`, frozen geometry = the source's);
4. the instance cameras (dataset cameras evenly spread, or the orbit rig), the splat bridge and the sampler.

Each `get_train_loss_dict` takes one `SyncSampler.step` and writes colours into the model (the canonical Tweedie
estimate `z0_hat`, or the current sample: a viewer checkbox picks which), so the viewer shows progress live. The
loss it returns is a constant zero that the trainer can backpropagate: nothing is optimised by the trainer.
When the last step is taken, the sampler's answer becomes the model's colours and `restyled.ply` (standard 3DGS
layout, geometry bit-identical to the source) is written into the run folder, with the run record (`run_records.py`).

Checkpoints: the sampler state, the final answer, the settings it was sampled with and the live settings are the
pipeline's extra state (`get_extra_state`), the colours are the model's parameters; so `--load-dir` resumes a
stopped run and ends with the same result as an uninterrupted one (other settings or another source are refused).
The denoiser, the bridge and the sampler are plain attributes with leading underscores: they are neither
registered as modules (their weights never enter `state_dict`) nor scanned by the viewer. Only training
(nerfstudio's "val" mode) builds them; ns-viewer, ns-render and ns-export load a run's model alone, without
diffusion weights.

The pipeline, not the trainer's iteration count, ends a run: nerfstudio sizes its loop once, when training
starts, so the loop is left open-ended (`get_training_callbacks`) and the pipeline stops the trainer when sampling
is complete (or after `--max-num-iterations` steps). A viewer restart therefore always runs on to a finished
restyle. Once the loop is over the sampling controls are disabled.
"""

from __future__ import annotations

import sys
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.distributed as dist
import tyro
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerCheckbox, ViewerNumber, ViewerText
from torch import Tensor

from nerfstudio_plugin.checkpoints import SamplerCheckpoints
from nerfstudio_plugin.datamanager import SyncSplatDatamanagerConfig
from nerfstudio_plugin.flags import ns_train_flags
from nerfstudio_plugin.frames import SourceFrame, check_frame, in_nerfstudio_frame, source_transform, suffix_frame
from nerfstudio_plugin.model import SyncSplatModelConfig
from nerfstudio_plugin.run_records import RunRecords
from nerfstudio_plugin.viewer import ViewerReadout, ViewerRefresh
from sync_splat.apps.restyle import RestyleConfig, check_splittable, orbit_cameras
from sync_splat.bridges.splat import GaussianSplatBridge
from sync_splat.distributed import process_shard, rank
from sync_splat.errors import InputError, one_line_errors
from sync_splat.sampler import SamplerState, SyncSampler
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.frames import transform_scene
from sync_splat.scene.gaussians import GaussianScene
from sync_splat.scene.up_axis import UpAxis, estimate_up, stand_on

if typing.TYPE_CHECKING:
    from nerfstudio.engine.trainer import Trainer

    from sync_splat.denoisers.base import Denoiser

RESTYLED_PLY = "restyled.ply"
"""The file name of the product in the run folder."""


@dataclass
class SyncSplatPipelineConfig(VanillaPipelineConfig):
    """What to restyle, into what, and how (the restyle settings are shared with `sync-splat restyle`)."""

    _target: type = field(default_factory=lambda: SyncSplatPipeline)
    datamanager: SyncSplatDatamanagerConfig = field(default_factory=SyncSplatDatamanagerConfig)
    """Cameras and images: the dataset given with --data, or orbit views rendered from the source."""
    model: SyncSplatModelConfig = field(default_factory=SyncSplatModelConfig)
    """The splatfacto model that holds the frozen geometry and the colours being restyled."""
    source: Path | None = None
    """The scene to restyle, never modified: a splatfacto run's config.yml or .ckpt (on --data if given), or a .ply."""
    cameras: Literal["dataset", "orbit"] = "dataset"
    """Views to restyle: 'dataset' spreads --pipeline.views cameras over the --data capture, 'orbit' rings the scene."""
    resolution: int | None = None
    """Long side of the views in pixels (rounded to a multiple of 64); None uses the denoiser's native size."""
    source_frame: SourceFrame | None = None
    """Where the source's coordinates come from, with --data: 'nerfstudio' (a splatfacto run or ns-export: the
    dataset's frame), 'colmap' or 'inria' (a 3DGS PLY trained on the COLMAP model), 'transforms' (a PLY trained on
    the dataset's transforms.json). The scene is moved into the dataset's frame; restyled.ply stays in the source's.
    None: used as it is, and refused if the dataset's cameras barely see it."""
    restyle: Annotated[RestyleConfig, tyro.conf.arg(name="")] = field(
        default_factory=lambda: RestyleConfig(denoiser="sd")
    )

    def settle(self) -> None:
        """Make these settings independent of where they are read from: the source and the dataset become absolute
        paths, and nerfstudio's --prompt (set on the model) becomes the pipeline's prompt, the one prompt kept."""
        if self.source is not None:
            self.source = self.source.expanduser().absolute()
        if self.datamanager.data is not None:
            self.datamanager.data = self.datamanager.data.expanduser().absolute()
        if Path(self.datamanager.dataparser.data) != Path():
            self.datamanager.dataparser.data = self.datamanager.dataparser.data.expanduser().absolute()
        if self.model.prompt:
            self.restyle = replace(self.restyle, prompt=self.model.prompt)
            self.model.prompt = None


class SyncSplatPipeline(SamplerCheckpoints, RunRecords, VanillaPipeline):
    """Runs the synchronised sampler over a frozen splat scene, one step per trainer iteration.

    Attributes:
        datamanager: nerfstudio's datamanager (cameras and images for the trainer and the viewer).
        model: the `SyncSplatModel` holding the scene whose colours are restyled.
        prompt, guidance_scale, apply, restart, show_preview: the viewer's controls (disabled where nothing samples).
        step_counter, status: read-only lines of the viewer's panel (the denoising step; what was last applied).
    """

    config: SyncSplatPipelineConfig

    def __init__(
        self,
        config: SyncSplatPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: torch.cuda.amp.GradScaler | None = None,
    ) -> None:
        Pipeline.__init__(self)  # not VanillaPipeline's: the model is built from the source, not seed points
        with one_line_errors("sync-splat"):
            self._setup(config, device, test_mode, world_size, local_rank, grad_scaler)

    def _setup(
        self,
        config: SyncSplatPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"],
        world_size: int,
        local_rank: int,
        grad_scaler: torch.cuda.amp.GradScaler | None,
    ) -> None:
        if world_size > 1 and not (dist.is_initialized() and dist.get_world_size() == world_size):
            raise InputError(f"{world_size} devices but no process group of {world_size}: start the run with ns-train")
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise InputError("--machine.device-type cuda, but torch finds no CUDA device: drop the flag to use the CPU")
        if torch.device(device).type == "cuda" and torch.device(device).index is not None:
            torch.cuda.set_device(device)  # nerfstudio's launcher does not: the denoiser's "cuda" means this GPU
        if test_mode == "val":  # training; ns-render and ns-eval read a trained run and set some settings themselves
            config.model.check_settings()
        if config.source is None:
            raise InputError(
                "--pipeline.source is missing: pass the scene to restyle (a splatfacto run's config.yml, its .ckpt, "
                "or a 3DGS .ply)"
            )
        self.config = config
        self.test_mode = test_mode
        self.world_size = world_size
        self._restyle = self._restyle_config(config)
        self._original = GaussianScene.load(config.source)  # as read: restyled.ply keeps its frame
        self._source = self._original  # in the dataset's frame (moved there with --pipeline.source-frame)
        self._frame: dict[str, Any] | None = None  # how it was moved there, for the run record
        # Only training samples ("val", the trainer's mode); ns-export, ns-viewer, ns-render and ns-eval ("inference",
        # "test") need the model alone, so no diffusion weights are loaded for them.
        self._denoiser: Denoiser | None = None
        if test_mode == "val":
            with ns_train_flags():
                self._denoiser = self._restyle.build_denoiser()
        # The orbit rig stands on the scene's up; a dataset's cameras are evidence of it, so they are read first.
        setup = {"device": device, "test_mode": test_mode, "world_size": world_size, "local_rank": local_rank}
        if config.datamanager.has_dataset:
            self.datamanager = config.datamanager.setup(**setup)
            self._source = self._in_dataset_frame(self._original)
            self._up = self._estimate_up(self._dataset_cameras().c2w)
            self._orbit = self._orbit_rig()
        else:
            self._up = self._estimate_up(None)
            self._orbit = self._orbit_rig()
            self.datamanager = config.datamanager.setup(**setup, scene=self._source, cameras=self._orbit)
        self.datamanager.to(device)
        if test_mode == "val" and rank() == 0:
            CONSOLE.print(f"sync-splat: up is {self._up.describe()}; set it with --pipeline.up")
        self._model = config.model.setup(
            scene_box=self.datamanager.train_dataset.scene_box,
            num_train_data=len(self.datamanager.train_dataset),
            metadata=self.datamanager.train_dataset.metadata,
            device=device,
            grad_scaler=grad_scaler,
            scene=self._source,
        )
        self.model.to(device)

        self._bridge: GaussianSplatBridge | None = None
        self._sampler: SyncSampler | None = None
        self._state: SamplerState | None = None
        self._result: Tensor | None = None  # the canonical answer z once sampling is complete
        self._instances: Tensor | None = None  # and the views the instances ended with (the run record keeps them)
        self._exported: Path | None = None
        self._run_dir: Path | None = None
        self._trainer: Trainer | None = None
        self._stop_at: int | None = None  # the denoising step at which this run stops (None: when complete)
        self._stopped_trainer = False  # whether this pipeline told the trainer to stop (a restart takes it back)
        if self._denoiser is not None:
            self._build_sampler(device)
            self._set_state(self._sampler.init(self._generator()))

        # The controls; a run that only shows a result (ns-viewer, ns-render) samples nothing, so they are disabled, and
        # so are they where the views are split across processes (the viewer talks to process 0 alone).
        sampling = self._sampler is not None and not self._bridge.shard.sharded
        only_here = "" if sampling else " (sampling runs in ns-train only, in one process)"
        self.prompt = ViewerText("Prompt", self._restyle.prompt, disabled=not sampling,
                                 hint="Text prompt; press Apply to use it from the next step" + only_here)  # fmt: skip
        self.guidance_scale = ViewerNumber(
            "Guidance scale", self._restyle.sd.guidance_scale, disabled=not sampling or self._restyle.denoiser != "sd",
            hint="Classifier-free guidance (Stable Diffusion only); press Apply to use it" + only_here,
        )  # fmt: skip
        # Typing updates the boxes on every keystroke: the settings change only when Apply is pressed.
        self.apply = ViewerButton(
            "Apply prompt and guidance", cb_hook=lambda _: self.apply_controls(), disabled=not sampling
        )
        self.restart = ViewerButton(
            "Restart sampling", cb_hook=lambda _: self.restart_sampling(), disabled=not sampling
        )
        self.show_preview = ViewerCheckbox(
            "Show x0_hat preview", True, cb_hook=lambda _: self._show(), disabled=not sampling,
            hint="On: the Tweedie estimate of the final colours; off: the current (noisy) sample" + only_here,
        )  # fmt: skip
        self.step_counter = ViewerReadout("Denoising step", self._progress())
        self.status = ViewerReadout("Status", "sampling" if self._sampler is not None else "showing the run's colours")
        self._refresh_viewer = ViewerRefresh()

    # ---- construction ---------------------------------------------------------------------------------------

    @staticmethod
    def _restyle_config(config: SyncSplatPipelineConfig) -> RestyleConfig:
        """The restyle settings; nerfstudio's own `--prompt` (set on the model config by ns-train) wins."""
        prompt = getattr(config.model, "prompt", None)
        return replace(config.restyle, prompt=prompt) if prompt else config.restyle

    def _view_size(self) -> int:
        if self.config.resolution is not None:
            return self.config.resolution
        return self._denoiser.native_size if self._denoiser is not None else 512

    def _in_dataset_frame(self, scene: GaussianScene) -> GaussianScene:
        """The source moved into the dataset's frame from the frame the user named; unnamed, it is checked."""
        frame = self.config.source_frame
        if frame is None:
            if self.test_mode == "val" and not in_nerfstudio_frame(self.config.source):
                check_frame(scene, self._dataset_cameras(), self.datamanager, self.config.source)
            return scene
        if frame == "nerfstudio":
            return scene
        transform, scale = source_transform(self.datamanager, frame)
        self._frame = {"transform": torch.as_tensor(transform).tolist(), "scale": float(scale)}
        return transform_scene(scene, transform, scale)

    def _estimate_up(self, dataset_c2w: Tensor | None) -> UpAxis:
        with ns_train_flags():
            return estimate_up(self._source, self.config.source, dataset_c2w, override=self._restyle.up)

    def _orbit_rig(self) -> Cameras:
        """The orbit rig around the source, standing on its up direction."""
        rig = orbit_cameras(self._source, self._restyle.views, self._view_size(), self._restyle.fov_deg)
        centre, _ = self._source.bounding_sphere(trim=0.01)
        return stand_on(rig, centre, self._up)

    @property
    def _views_from_orbit(self) -> bool:
        return self.config.cameras == "orbit" or not self.config.datamanager.has_dataset

    def _dataset_cameras(self, max_views: int | None = None) -> Cameras:
        """The dataset's training cameras as pinhole cameras (undistorted, as nerfstudio undistorts the images)."""
        dataset = self.datamanager.pinhole_train_cameras()
        return Cameras.from_nerfstudio(
            dataset.camera_to_worlds, dataset.fx, dataset.fy, dataset.cx, dataset.cy, dataset.width, dataset.height,
            max_views=max_views,
        )  # fmt: skip

    def _instance_cameras(self) -> Cameras:
        """The views to restyle, at the denoiser's resolution."""
        if self._views_from_orbit:
            return self._orbit
        cameras = self._dataset_cameras(max_views=self._restyle.views)
        size = self._view_size()
        return cameras.resized_for(size, multiple=64 if size >= 64 else size)

    def _build_sampler(self, device: str | torch.device) -> None:
        assert self._denoiser is not None
        cameras = self._instance_cameras()
        fit = suffix_frame(cameras, self._source, self._restyle.fit, self._up, orbit=cameras is self._orbit)
        shard = check_splittable(self._denoiser, process_shard(len(cameras)))
        self._bridge = fit.setup(self._start_timing(device), self._source.to(device), cameras.to(device), shard)
        if shard.rank == 0:
            CONSOLE.print(f"sync-splat: {self._bridge.memory_plan.summary()}", soft_wrap=True)
        self._sampler = self._timed_sampler(self._denoiser, self._restyle)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self._restyle.seed)

    # ---- one step per trainer iteration ---------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        """Denoising steps of a whole run."""
        return self._restyle.steps if self._sampler is None else self._sampler.num_steps

    @property
    def steps_taken(self) -> int:
        return 0 if self._state is None else self._state.step_index

    @property
    def complete(self) -> bool:
        """Whether sampling has finished (the answer is in the model and ready to export)."""
        return self._result is not None

    def get_train_loss_dict(self, step: int) -> tuple[dict, dict[str, Tensor], dict[str, Any]]:
        """Take the next denoising step (none once complete) and show its colours; the loss is a constant 0."""
        if self._sampler is None or self._state is None:
            raise RuntimeError("this pipeline was built to show a run (ns-viewer, ns-export), not to sample")
        if not self.complete and (self._stop_at is None or self.steps_taken < self._stop_at):
            # The viewer's x0_hat preview asks the sampler for g where the step would not otherwise run it.
            self._set_state(self._sampler.step(self._state, preview=bool(self.show_preview.value)))
            if self._state.step_index == self._sampler.num_steps:
                finished = self._sampler.finish(self._state)
                self._result, self._instances = finished.z, finished.instances
            self._show()
        loss = torch.zeros((), device=self.device, requires_grad=True)
        metrics = {"denoising_step": float(self.steps_taken)}
        return {}, {"sync_splat": loss}, metrics

    def _show(self) -> None:
        """Write the colours to display into the model: the answer once complete, else the preview the viewer
        asks for (x0_hat, or the current sample), else the source's own colours."""
        self.step_counter.value = self._progress()
        if self._bridge is None or self._state is None:
            return
        if self.complete:
            z = self._result
        elif self._state.z0_hat is None:
            self.model.load_scene(self._source)
            return
        elif self.show_preview.value:
            z = self._state.z0_hat
        elif self._state.z_t is not None:
            z = self._state.z_t
        else:
            z = self._bridge.unproject(self._state.x_t, previous=self._state.z0_hat)
        self.model.set_colors(self._bridge.restyled_scene(z).rgb01)

    def _progress(self) -> str:
        done = " (complete)" if self.complete else ""
        return f"{self.steps_taken} / {self.num_steps}{done}"

    # ---- viewer controls (callbacks run under the trainer's lock) -------------------------------------------

    def restart_sampling(self) -> None:
        """Start over from the initial noise of the seed, with the current prompt and guidance scale; the run goes
        on until sampling is complete again (or `--max-num-iterations` steps are taken)."""
        if self._sampler is None:
            return
        if self._trainer is not None and self._trainer.training_state == "completed":
            CONSOLE.print("sync-splat: this run has ended; start a new ns-train run to sample again")
            return
        self._set_state(self._sampler.init(self._generator()))
        self._result = None
        self._exported = None
        if self._stopped_trainer and self._trainer is not None:  # the run had just completed: it goes on
            self._trainer.stop_training = False
            self._stopped_trainer = False
        self.status.value = f"restarted with prompt {self._restyle.prompt!r}"
        self._show()

    def apply_controls(self) -> None:
        """Use the prompt and guidance scale in the viewer's boxes from the next step on (the Apply button)."""
        self._apply_settings(prompt=str(self.prompt.value), guidance_scale=float(self.guidance_scale.value))

    def _apply_settings(self, prompt: str | None = None, guidance_scale: float | None = None) -> None:
        """Change the prompt or guidance scale of the coming steps (already-taken steps are kept). A setting that
        is refused (e.g. a prompt that names no preset of the prior) is reported in the viewer's status and the
        log; sampling goes on with the settings it had."""
        restyle = self._restyle
        if prompt is not None:
            restyle = replace(restyle, prompt=prompt)
        if guidance_scale is not None:
            restyle = replace(restyle, sd=replace(restyle.sd, guidance_scale=guidance_scale))
        if restyle == self._restyle:
            return
        try:
            with ns_train_flags():
                self._use_settings(restyle)
        except InputError as error:
            self.status.value = f"not applied: {error}"
            CONSOLE.print(f"[bold red]sync-splat: error:[/bold red] {error}", soft_wrap=True)
            return
        applied = f"prompt {restyle.prompt!r}, guidance scale {restyle.sd.guidance_scale}"
        self.status.value = f"{applied} from step {self.steps_taken + 1}"

    def _use_settings(self, restyle: RestyleConfig) -> None:
        if self._denoiser is not None and self._sampler is not None and self._bridge is not None:
            if restyle.denoiser == "sd":
                # The text encoder runs per step, so the weights stay loaded: only the settings change.
                denoiser = self._denoiser
                denoiser.config = replace(  # type: ignore[attr-defined]
                    denoiser.config,
                    prompt=restyle.prompt,
                    guidance_scale=restyle.sd.guidance_scale,  # type: ignore[attr-defined]
                )
            else:  # the prior's prompt picks a texture preset: a new (cheap) prior with the same codec
                denoiser = restyle.build_denoiser()
            self._denoiser = denoiser
            self._sampler = self._timed_sampler(denoiser, restyle)
        self._restyle = restyle

    # ---- trainer hooks --------------------------------------------------------------------------------------

    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> list[TrainingCallback]:
        """Run until sampling is complete (or `--max-num-iterations` steps), export, then stop the trainer.

        Nerfstudio sizes its loop once, when training starts, and a restart from the viewer needs more iterations
        than were left; so the loop is made open-ended here and this pipeline ends it (`trainer.stop_training`).
        """
        trainer = attributes.trainer
        if trainer is not None:
            self._trainer = trainer
            self._run_dir = Path(trainer.base_dir)
            self._check_run_record()
            limit = trainer.config.max_num_iterations
            self._stop_at = self.num_steps if limit is None else min(self.num_steps, self.steps_taken + max(limit, 0))
            trainer.config.max_num_iterations = sys.maxsize

        def after_iteration(step: int) -> None:
            if self.complete and self._exported is None:
                self.export_restyled()
            if trainer is None or self._stop_at is None:
                return
            if self.complete or self.steps_taken >= self._stop_at:
                trainer.stop_training = True
                self._stopped_trainer = True
            # The console's ETA counts trainer iterations: the ones left are the denoising steps left.
            writer.GLOBAL_BUFFER["max_iter"] = max(1, step + self._stop_at - self.steps_taken)  # divides the step
            self._refresh_viewer(getattr(trainer, "viewer_state", None), step, self.steps_taken)

        def after_train(step: int) -> None:
            if self.complete and self._exported is None:
                self.export_restyled()
            elif not self.complete:
                CONSOLE.print(
                    f"sync-splat: stopped after {self.steps_taken} of {self.num_steps} denoising steps; resume with "
                    "--load-dir <this run>/nerfstudio_models"
                )
            # Nothing takes steps any more (the viewer may stay open): a restart or a new prompt would do nothing.
            for element in (self.prompt, self.guidance_scale, self.apply, self.restart, self.show_preview):
                element.disabled = True
                if element.gui_handle is not None:
                    element.set_disabled(True)
            self.status.value = "finished" if self.complete else "stopped"

        return [
            *super().get_training_callbacks(attributes),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after_iteration),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN], after_train),
        ]

    def export_restyled(self) -> Path:
        """Write `restyled.ply` into the run folder atomically (standard 3DGS PLY, the geometry bit for bit); every
        process takes part where the views are split, and process 0 writes."""
        if self._result is None or self._bridge is None or self._run_dir is None:
            raise RuntimeError("export_restyled needs a complete sampling and the trainer's run folder")
        # The restyled colours on the source's own geometry, in its own frame (moved into the dataset's or not).
        sh = self._bridge.restyled_scene(self._result).sh.to(self._original.sh)
        restyled = replace(self._original, sh=sh[:, :1] if self._restyle.compact_ply else sh)
        self._exported = self._run_dir / RESTYLED_PLY
        delivered = self._delivered_views()  # every process takes part: the views are gathered from all of them
        if self._bridge.shard.rank == 0:
            restyled.save(self._exported)
            CONSOLE.print(f"sync-splat: wrote {self._exported}")
            self._write_run_record(delivered)
        return self._exported
