"""The splat colour fit's memory, predicted before any work, and the way of holding the weights that fits a budget.

The stored fit keeps every view's compositing weights, whose number grows as views x pixels x Gaussians per pixel:
real captures at 50 views of 512 x 512 reach hundreds of millions. `sample_weights` composites a few views spread
over the rig at the fit's resolution, counts their weights and those the solver keeps (`solver_cutoff`), and
extrapolates to every view. `predict_fit_memory` turns those counts into bytes for each way of holding them:

- "stored": CSR with int32 indices and values in the scene's dtype: W (every weight, what renders read) and the
  solver's W~ and W~^T (the full W^T itself when the cutoff prunes nothing), in shards of views;
- "compact": the same arrays with float16 values (`COMPACT_DTYPE`);
- "matrix_free": no weights (`sync_splat.bridges.splat_matrix_free`), one chunk of views' weights while a product runs.

Each adds the normal matrix A where it may be assembled (an upper bound: the sampled views' rows of A, extrapolated as
if no two views shared a pair of Gaussians, and with `normal_matrix="auto"` at most the solver's weights), alpha, the
row sums, the conjugate gradient's vectors and a step's image stacks, and the largest short-lived allocation: building
one shard of weights (or applying one chunk), with the compositor's working memory, or the entries the "integral"
starting noise holds while it is drawn. Per-entry byte counts are read off the implementation; docs/splat_fit.md
compares the prediction with measured peaks.

`plan_fit_memory` compares the peaks with the budget (`SplatBridgeConfig.memory_budget_gb`, or the device's free
memory less `DENOISER_RESERVE_BYTES` for the denoiser's working memory) and picks the first storage that fits, in the
order stored, compact, matrix-free; when not even the matrix-free fit fits, it refuses in one line with the numbers.

Views split across processes (`sync_splat.distributed`): each process predicts the bytes of its own views and checks
them against its own budget; processes on one machine's CPU share its free memory, so each takes its part of it.

Dimension letters (docs/conventions.md): N views, G Gaussians, C channels, h w pixels of the fit's resolution.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from sync_splat.bridges.splat_fit import SplatLeastSquares
from sync_splat.distributed import ViewShard, processes_per_machine
from sync_splat.errors import InputError
from sync_splat.render.gaussians import COMPOSITOR_WORKING_BYTES, gaussian_weights
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.gaussians import GaussianScene

Storage = Literal["stored", "compact", "matrix_free"]
STORAGES: tuple[Storage, ...] = ("stored", "compact", "matrix_free")

COMPACT_DTYPE = torch.float16
"""The compact storage's weight values. Weights lie in [1/255 * 1e-4, 0.999]; float16 keeps 11 significant bits down
to 6e-5 (bfloat16 only 8), and its subnormals the rest to 6e-8."""
SHARD_WEIGHTS = 2**24
"""Weights per shard of views (stored) or chunk of views (matrix-free), at least one view: bounds what one shard's
construction or one chunk's product holds at once."""
DENOISER_RESERVE_BYTES = 2 * 2**30
"""Kept free for the denoiser's working memory when the budget is the device's free memory (its weights are already
loaded when the bridge is built, so they are not in it)."""
SAMPLED_VIEWS = 3
"""Views composited to measure the weights per view (half the views of smaller rigs, at least one)."""

_INDEX_BYTES = 4
# A CG solve holds about this many [G, C] vectors (start, b, reference, rhs, residual, direction, products, ...).
_CG_VECTORS = 12
# A step holds about this many [N, C, h, w] stacks at the fit's resolution (views, decoded views, content, renders,
# the [content | W z] rows of a warm start).
_IMAGE_STACKS = 8


@dataclass(frozen=True)
class WeightSample:
    """The compositing weights of N views at one resolution, extrapolated from a few of them.

    Attributes:
        num_views, height, width, num_gaussians: N, h, w, G.
        channels: C, the features fitted at this resolution.
        sampled_views: how many views were composited.
        weights: the predicted number of non-zero weights over all views.
        solver_weights: those at or above the solver cutoff (all of them without one).
        normal_weights: an upper bound on the non-zeros of the solver's normal matrix A.
        covered_fraction: the fraction of the sampled views' pixels that some Gaussian reaches.
    """

    num_views: int
    height: int
    width: int
    num_gaussians: int
    channels: int
    sampled_views: int
    weights: float
    solver_weights: float
    normal_weights: float
    covered_fraction: float

    @property
    def weights_per_view(self) -> float:
        return self.weights / self.num_views

    @property
    def weights_per_covered_pixel(self) -> float:
        covered = self.num_views * self.height * self.width * self.covered_fraction
        return self.weights / covered if covered > 0 else 0.0

    def views_per_chunk(self, requested: int | None = None) -> int:
        """`requested`, or as many views as hold about `SHARD_WEIGHTS` weights (at least one)."""
        if requested is not None:
            return requested
        return max(1, min(self.num_views, int(SHARD_WEIGHTS // max(self.weights_per_view, 1.0))))


def sample_weights(
    scene: GaussianScene,
    cameras: Cameras,
    channels: int,
    solver_cutoff: float = 0.0,
    antialiased: bool = False,
    samples: int = SAMPLED_VIEWS,
) -> WeightSample:
    """Composite `samples` views spread evenly over `cameras` (one at a time) and extrapolate their weights.

    Args:
        scene: the Gaussians.
        cameras: the N views at the fit's resolution (on the scene's device and dtype).
        channels: the features fitted at this resolution.
        solver_cutoff: the fit's cutoff (`SplatBridgeConfig.solver_cutoff`).
        antialiased: gsplat's antialiased mode.
        samples: views to composite (at most half of them, at least one).
    """
    n = len(cameras)
    count = max(1, min(samples, n // 2))
    picks = sorted(set(torch.linspace(0, n - 1, count).round().long().tolist()))
    geometry = (scene.means, scene.quats_wxyz, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits))
    weights = solver_weights = normal_weights = covered = 0.0
    for view in picks:
        camera = cameras.subset([view])
        w = gaussian_weights(
            *geometry, camera.viewmats, camera.Ks, camera.width, camera.height, antialiased=antialiased
        )
        system = SplatLeastSquares(w, 1, camera.height, camera.width, None, "implicit", solver_cutoff)
        weights += system.nnz
        solver_weights += system.solver_nnz
        normal_weights += system.predicted_normal_nnz() if system.solver_nnz else 0.0
        covered += float((system.alpha > 0).sum())
    scale = n / len(picks)
    return WeightSample(
        num_views=n, height=cameras.height, width=cameras.width, num_gaussians=scene.num_gaussians, channels=channels,
        sampled_views=len(picks), weights=weights * scale, solver_weights=solver_weights * scale,
        normal_weights=min(normal_weights * scale, float(scene.num_gaussians) ** 2),
        covered_fraction=covered / (len(picks) * cameras.height * cameras.width),
    )  # fmt: skip


@dataclass(frozen=True)
class FitMemory:
    """Predicted bytes of the fit with its weights held one way, over every resolution the bridge builds.

    Attributes:
        storage: "stored", "compact" or "matrix_free".
        weights: the weights kept (CSR arrays; 0 matrix-free).
        normal_matrix: the assembled A, at most (0 where A is applied implicitly).
        solver: alpha, the row sums, the conjugate gradient's vectors and a step's image stacks.
        transient: the largest short-lived allocation on top (building a shard, applying a chunk, the noise).
    """

    storage: Storage
    weights: int
    normal_matrix: int
    solver: int
    transient: int

    @property
    def peak(self) -> int:
        return self.weights + self.normal_matrix + self.solver + self.transient


def predict_fit_memory(
    samples: tuple[WeightSample, ...],
    storage: Storage,
    dtype: torch.dtype,
    normal_matrix: str = "auto",
    views_per_shard: int | None = None,
    integral_noise: WeightSample | None = None,
    weighted: bool = False,
) -> FitMemory:
    """The bytes of the fit at every resolution in `samples`, with its weights held as `storage` (module docstring).

    Args:
        samples: one per resolution the bridge builds a linear system at.
        storage: how the weights are held.
        dtype: the scene's (and every product's) dtype.
        normal_matrix: `SplatBridgeConfig.normal_matrix` ("implicit": no A; matrix-free never assembles).
        views_per_shard: `SplatBridgeConfig.views_per_shard` (None: `WeightSample.views_per_chunk`).
        integral_noise: the resolution whose every weight the "integral" starting noise holds at once, if it is drawn.
        weighted: whether pixels count unequally in the fit (`SplatBridgeConfig.cos_power`): the solver's weights
            are then a scaled copy even where the cutoff prunes none, and building them reads each weight's view,
            Gaussian position, axis and ray.
    """
    d = torch.tensor([], dtype=dtype).element_size()
    v = torch.tensor([], dtype=COMPACT_DTYPE).element_size() if storage == "compact" else d
    weights = normal = solver = transient = 0.0
    for sample in samples:
        n, g, c = sample.num_views, sample.num_gaussians, sample.channels
        rows = n * sample.height * sample.width
        per_chunk = sample.views_per_chunk(views_per_shard)
        shards = math.ceil(n / per_chunk)
        chunk_weights = sample.weights_per_view * per_chunk
        solver += (rows + g) * d + _CG_VECTORS * g * c * d + _IMAGE_STACKS * rows * c * d
        if weighted:  # the pixels' weights
            solver += rows * d
        if storage == "matrix_free":
            # The chunk's entries (pixel, Gaussian, weight, depth) twice while the compositor joins its pieces, then
            # the gathered products [E, 2C] of a warm start.
            per_weight = 2 * (16 + 2 * d) + 2 * 2 * c * d + (8 + 12 * d if weighted else 0)
            transient = max(transient, chunk_weights * per_weight + COMPOSITOR_WORKING_BYTES)
            continue
        separate = weighted or sample.solver_weights < sample.weights
        weights += _INDEX_BYTES * (rows + shards) + sample.weights * (_INDEX_BYTES + v)  # W
        transposes = _INDEX_BYTES * shards * (g + 1)
        if separate:  # W~ and W~^T
            weights += _INDEX_BYTES * (rows + shards) + transposes + 2 * sample.solver_weights * (_INDEX_BYTES + v)
        else:  # W^T
            weights += transposes + sample.weights * (_INDEX_BYTES + v)
        nnz_a = 0.0
        if normal_matrix == "assembled":
            nnz_a = sample.normal_weights
        elif normal_matrix == "auto":  # assembled only where it is predicted sparser than W~
            nnz_a = min(sample.normal_weights, sample.solver_weights)
        normal += (_INDEX_BYTES * (g + 1) + nnz_a * (_INDEX_BYTES + d)) if nnz_a else 0.0
        # Building a shard: the compositor's entries and the sorted COO copy (indices int64) with its sort's scratch,
        # then its CSR arrays; assembling A: the int64-indexed product before its indices are narrowed.
        build = chunk_weights * (64 + 2 * d + (8 + 12 * d if weighted else 0)) + COMPOSITOR_WORKING_BYTES
        transient = max(transient, build, nnz_a / shards * (16 + d) if nnz_a else 0.0)
    if integral_noise is not None:
        # Every entry (Gaussian, pixel, value), its sort key and order, the sorted copies, and the noise's per-entry
        # sums, counts and shares in C channels.
        c = integral_noise.channels
        transient = max(transient, integral_noise.weights * (48 + 3 * d + 5 * c * d))
    return FitMemory(storage, round(weights), round(normal), round(solver), round(transient))


@dataclass(frozen=True)
class MemoryPlan:
    """What the fit is predicted to take each way, the budget, and the storage chosen.

    Attributes:
        samples: the weights counted per resolution (the first is the one the sampler fits at).
        options: the prediction for each storage, in the order stored, compact, matrix-free.
        budget: bytes the fit may take (None: unknown, no limit).
        budget_source: where the budget comes from, in words.
        storage: the storage chosen.
        shard: the rig's views that this process holds, where they are split across processes (None: all).
    """

    samples: tuple[WeightSample, ...]
    options: tuple[FitMemory, ...]
    budget: int | None
    budget_source: str
    storage: Storage
    shard: ViewShard | None = None

    @property
    def chosen(self) -> FitMemory:
        return next(option for option in self.options if option.storage == self.storage)

    def summary(self) -> str:
        """One line: the scene, the weights measured, each storage's predicted peak, the budget and the choice."""
        first = self.samples[0]
        costs = ", ".join(f"{option.storage.replace('_', '-')} {_gb(option.peak)}" for option in self.options)
        budget = "no budget" if self.budget is None else f"budget {_gb(self.budget)} ({self.budget_source})"
        sharded = self.shard is not None and self.shard.sharded
        where = f" per process ({self.shard.describe()})" if sharded else ""
        return (
            f"splat fit memory{where}: {first.num_views} views of {first.width} x {first.height}, "
            f"{first.num_gaussians:,} Gaussians, {first.weights_per_covered_pixel:.1f} weights per covered pixel "
            f"({first.sampled_views} views sampled); predicted peak {costs}; {budget}: {self.storage.replace('_', '-')}"
        )


def plan_fit_memory(
    samples: tuple[WeightSample, ...],
    dtype: torch.dtype,
    device: torch.device,
    storage: Literal["auto"] | Storage = "auto",
    budget_gb: float | None = None,
    normal_matrix: str = "auto",
    views_per_shard: int | None = None,
    integral_noise: WeightSample | None = None,
    shard: ViewShard | None = None,
    weighted: bool = False,
) -> MemoryPlan:
    """Predict every storage's bytes and choose one (module docstring); warn when "auto" had to leave "stored".

    `samples` are of this process's views; `shard` says which of the rig's they are when the views are split across
    processes (None: all of them).

    Raises:
        InputError: when the requested storage (with "auto": the matrix-free fit) does not fit the budget.
    """
    options = tuple(
        predict_fit_memory(samples, option, dtype, normal_matrix, views_per_shard, integral_noise, weighted)
        for option in STORAGES
    )
    if budget_gb is not None:
        budget, source = round(budget_gb * 2**30), "memory_budget_gb"
    else:
        free, what = free_memory(device)
        sharing = processes_per_machine() if device.type == "cpu" else 1
        if free is not None and sharing > 1:
            free, what = free // sharing, f"{what} / {sharing} processes"
        budget = None if free is None else max(free - DENOISER_RESERVE_BYTES, 0)
        source = f"{what} less {_gb(DENOISER_RESERVE_BYTES)} for the denoiser"
    fitting = [option for option in options if budget is None or option.peak <= budget]
    first = samples[0]
    scene = f"{first.num_views} views of {first.width} x {first.height}, {first.num_gaussians:,} Gaussians"
    if shard is not None and shard.sharded:
        scene += f" ({shard.describe()})"
    if storage == "auto":
        if not fitting:
            leanest = min(options, key=lambda option: option.peak)
            raise InputError(
                f"the splat fit needs {_gb(leanest.peak)} at least ({leanest.storage.replace('_', '-')}; {scene}) "
                f"but the budget is {_gb(budget)} ({source}): use fewer views, a smaller image size or more "
                "processes (--nproc), or raise memory_budget_gb (--fit.memory-budget-gb) if the memory is there"
            )
        chosen = fitting[0].storage
        if chosen != "stored":
            stored = options[0]
            warnings.warn(
                f"the splat fit would need {_gb(stored.peak)} with its weights stored ({scene}), over the budget of "
                f"{_gb(budget)} ({source}): using {chosen.replace('_', '-')} weights ({_gb(fitting[0].peak)})",
                UserWarning,
                stacklevel=3,
            )
    else:
        chosen = storage
        option = next(option for option in options if option.storage == storage)
        if budget is not None and option.peak > budget:
            raise InputError(
                f"storage={storage!r}: the splat fit needs {_gb(option.peak)} ({scene}) but the budget is "
                f"{_gb(budget)} ({source}): use storage='auto' to pick a leaner one, fewer views, a smaller image "
                "size or more processes (--nproc), or raise memory_budget_gb (--fit.memory-budget-gb) if the memory "
                "is there"
            )
    return MemoryPlan(samples, options, budget, source, chosen, shard)


def free_memory(device: torch.device) -> tuple[int | None, str]:
    """Bytes free for the fit on `device` and what they are: CUDA's free memory, or the machine's available memory
    (psutil, else /proc/meminfo); None where neither can be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), "free GPU memory"
    if device.type != "cpu":
        return None, f"unknown free memory on {device.type}"
    try:
        import psutil
    except ImportError:
        meminfo = Path("/proc/meminfo")
        if meminfo.is_file():
            for line in meminfo.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available memory"
        return None, "unknown available memory"
    return int(psutil.virtual_memory().available), "available memory"


def _gb(size: float | None) -> str:
    return "?" if size is None else f"{size / 2**30:.2f} GiB"


__all__ = [
    "COMPACT_DTYPE",
    "FitMemory",
    "MemoryPlan",
    "Storage",
    "WeightSample",
    "free_memory",
    "plan_fit_memory",
    "predict_fit_memory",
    "sample_weights",
]
