"""Benchmark the splat colour fit at scale: memory and seconds of the stored, compact and matrix-free fits, and how far
the leaner ones land from the stored fit.

Scenes: the Mip-Splatting donut tiled on a jittered grid on the ground plane (each copy shifted by up to a tenth of
its size and turned about the vertical at random), as many copies as reach `--gaussians`: a ray from the orbit meets
one or two copies, as it meets one or two surfaces of a capture (the table reports the weights per covered pixel
measured). All fits use the product's settings (`SplatBridgeConfig` defaults: solver cutoff 1e-3, min gain 0.05 dB),
antialiased rendering for the donut, and the pixel-space codec of the exact prior.

1. Quality (`--quality-scenes`, at `--quality-size`, 8 views): `--steps` fits of drifting views that disagree (random
   colours rendered over white plus pixel noise, the sampler's kind), the first cold and the others warm-started, with
   each storage. PSNR is that of the renders against the views' covered content, all rendered with the stored weights,
   averaged over the steps; delta = storage - stored.
2. Scale (`--gaussians` x `--views` x `--sizes`, each storage in a fresh process so that its peak resident memory is
   its own): seconds to set up the bridge (the memory plan's sampled views included), seconds of a warm fit step (the
   fastest of them: other work on shared cores only slows a step down; the compact fit's PSNR delta against the
   stored fit on the same views), the process's peak RSS less its RSS before the bridge, and the memory model's
   predicted peak. A matrix-free step on these CPUs would take minutes: one product with A (a composite of every
   view) is timed (the faster of two) and a step counted as the stored fit's CG iterations plus two such passes
   (marked ~).
3. Extrapolation to `--target` (1 M Gaussians, 50 views of 512 x 512): the memory model on the generated scene, its
   weights sampled on three views, as generated (the grid leaves much of each view empty) and for a capture that covers
   every pixel at the same weights per covered pixel; seconds per step scaled from part 2's largest scene by the
   number of weights (all marked ~): nothing of that size runs here.
4. Processes (`--split`: a scene, views and size): the views split across two gloo processes of one torch thread each
   (`sync_splat.distributed`, as `sync-splat restyle --nproc 2` runs them) against one process of one thread (each
   process has a core of its own) and of `--threads` threads (the same cores in all). Timed: setting up the bridge
   (compositing each process's views into its stored weights), the render-and-fit part of a warm step (the stored
   fit of part 1's drifting views, warm-started, then the render of its answer over them; the fastest of the warm
   steps, each timed from a common start to the end of the slowest process), and one product `A p` of the
   matrix-free fit (a composite of every view, summed over the processes). |dz|: the largest colour difference of
   the last fit from one process's.

The last line is `RESULT peak_gb_per_proc_1M_50v_512=<x> fit_s_per_step_1M=<x> two_proc_speedup=<x>
psnr_delta_db=<x>`: the predicted peak and the extrapolated step seconds of the storage "auto" picks under 8 GiB for
fully covered views, part 4's speedup of the render-and-fit step with two processes over one (one thread each), and
the largest |delta| of part 1.

    python scripts/bench_scale.py [--gaussians 100000 300000] [--views 8] [--sizes 128] [--threads 2]
        [--split 100000 8 256]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import resource
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from bench_unproject import orbit_views
from shared_fixtures import require_fixture
from torch import Tensor

from sync_splat import distributed
from sync_splat.bridges.splat import GaussianSplatBridge, SplatBridgeConfig
from sync_splat.bridges.splat_memory import STORAGES, plan_fit_memory, predict_fit_memory, sample_weights
from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.errors import InputError, one_line_errors
from sync_splat.render.gaussians import render_gaussians
from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.gaussians import GaussianScene

DONUT = "donut_mipsplatting.ply"
PLENTY_GB = 1e6  # every storage is built as asked, whatever the machine's memory
GOAL_GB = 8.0


def donut() -> GaussianScene:
    return GaussianScene.load(require_fixture(DONUT, "pass --quality-scenes demo and --gaussians as .ply paths"))


def tiled_donut(gaussians: int, seed: int = 0) -> GaussianScene:
    """The donut repeated `ceil(gaussians / 45,624)` times on a jittered square grid in the x-z plane (y up), each
    copy turned about y at random; `gaussians` rounded up to whole copies."""
    source = donut()
    copies = math.ceil(gaussians / source.num_gaussians)
    side = math.ceil(math.sqrt(copies))
    low, high = source.bounds
    spacing = 1.2 * float((high - low).max())
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for k in range(copies):
        angle = 2 * math.pi * float(torch.rand(1, generator=generator))
        jitter = 0.1 * spacing * (torch.rand(3, generator=generator) - 0.5)
        offset = torch.tensor([(k % side) * spacing, 0.0, (k // side) * spacing]) + jitter * torch.tensor([1, 0, 1])
        cos, sin = math.cos(angle), math.sin(angle)
        turn = torch.tensor([[cos, 0.0, sin], [0.0, 1.0, 0.0], [-sin, 0.0, cos]])
        half = torch.tensor([math.cos(angle / 2), 0.0, math.sin(angle / 2), 0.0])  # the same turn, wxyz
        parts.append((source.means @ turn.T + offset, _quat_product(half, source.quats_wxyz)))
    repeat = lambda tensor: tensor.repeat(copies, *([1] * (tensor.ndim - 1)))  # noqa: E731
    return GaussianScene(
        means=torch.cat([means for means, _ in parts]), quats_wxyz=torch.cat([quats for _, quats in parts]),
        log_scales=repeat(source.log_scales), opacity_logits=repeat(source.opacity_logits), sh=repeat(source.sh),
    )  # fmt: skip


def _quat_product(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product `a b` of a wxyz quaternion `[4]` with wxyz quaternions `[G, 4]`."""
    w1, x1, y1, z1 = a.tolist()
    w2, x2, y2, z2 = b.unbind(-1)
    return torch.stack([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ], dim=-1)  # fmt: skip


def scene_named(name: str) -> tuple[GaussianScene, bool]:
    """A scene and whether it renders antialiased: 'demo', 'donut', a Gaussian count (tiled donut) or a .ply path."""
    if name == "demo":
        return make_demo_scene(), False
    if name == "donut":
        return donut(), True
    if name.isdigit():
        return tiled_donut(int(name)), True
    return GaussianScene.load(Path(name)), False


def drifting_targets(scene: GaussianScene, cameras, antialiased: bool, steps: int, seed: int) -> Tensor:  # noqa: ANN001
    """`steps` stacks of views `rgb01 [steps, N, 3, H, W]`: random colours drifting by 0.05 per step, rendered over
    white, plus pixel noise of 0.05, clamped."""
    generator = torch.Generator().manual_seed(seed)
    colours = [torch.rand(scene.num_gaussians, 3, generator=generator)]
    for _ in range(steps - 1):
        colours.append((colours[-1] + 0.05 * torch.randn(colours[-1].shape, generator=generator)).clamp(0, 1))
    out = render_gaussians(
        scene.means, scene.quats_wxyz, scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits),
        torch.cat(colours, dim=1), cameras.viewmats, cameras.Ks, cameras.width, cameras.height,
        backend="torch", antialiased=antialiased,
    )  # fmt: skip
    views = (out.image + 1 - out.alpha).unflatten(1, (steps, 3)).transpose(0, 1)
    return (views + 0.05 * torch.randn(views.shape, generator=generator)).clamp(0, 1)


def covered_psnr(bridge: GaussianSplatBridge, z: Tensor, rgb01: Tensor) -> float:
    """PSNR of `W z` against the covered content `alpha x` of the views (what the fit matches), with `bridge`'s
    weights."""
    system = bridge.linear_system("image")
    content = system.alpha * rgb01
    return -10 * math.log10(float((system.render(z) - content).square().mean()))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ScaleRun:
    """One storage on one scene, in its own process (its outcome: `ScaleOutcome`)."""

    scene: str
    views: int
    size: int
    storage: str
    steps: int
    threads: int
    targets: Path
    folder: Path


@dataclass(frozen=True)
class ScaleOutcome:
    run: ScaleRun
    gaussians: int
    weights: int
    weights_per_covered_pixel: float
    setup_s: float
    step_s: float
    pass_s: float
    iterations: int
    peak_bytes: int
    predicted_bytes: int
    compact_delta_db: float


def scale_run(run: ScaleRun) -> ScaleOutcome:
    """Build the bridge, fit the targets (stored, compact) or time one product (matrix-free); in a fresh process."""
    torch.set_num_threads(run.threads)
    warnings.simplefilter("ignore")
    scene, antialiased = scene_named(run.scene)
    cameras = orbit_views(scene, run.views, run.size)
    codec = GaussianTexturePrior.from_prompt("marble", native_size=run.size)
    targets = torch.load(run.targets)
    before = _rss_bytes()
    begin = time.perf_counter()
    config = SplatBridgeConfig(storage=run.storage, antialiased=antialiased, memory_budget_gb=PLENTY_GB)
    bridge = config.setup(codec, scene, cameras)
    system = bridge.linear_system("image")
    setup_s = time.perf_counter() - begin
    sample = bridge.memory_plan.samples[0]
    step_s = pass_s = math.nan
    iterations = 0
    delta = math.nan
    if run.storage == "matrix_free":
        z = torch.full((scene.num_gaussians, 3), 0.5)
        passes = []
        for _ in range(2):
            begin = time.perf_counter()
            system.apply(z)
            passes.append(time.perf_counter() - begin)
        pass_s = min(passes)
        nnz = round(sample.weights)
    else:
        z, zs, warm_s, iterations = None, [], [], 0
        for step in range(run.steps):
            begin = time.perf_counter()
            fit = bridge.fit(codec.encode(targets[step]), previous=z)
            (warm_s if step else []).append(time.perf_counter() - begin)
            z, iterations = fit.z, iterations + (fit.iterations if step else 0)
            zs.append(z)
        step_s = min(warm_s) if warm_s else math.nan  # the fastest: other work on shared cores only slows steps
        iterations = round(iterations / max(len(warm_s), 1))
        torch.save(torch.stack(zs), run.folder / f"{run.storage}.pt")
        compact = run.folder / "compact.pt"
        if run.storage == "stored" and compact.is_file():
            deltas = [
                covered_psnr(bridge, theirs, target) - covered_psnr(bridge, ours, target)
                for ours, theirs, target in zip(zs, torch.load(compact), targets, strict=False)
            ]
            delta = sum(deltas) / len(deltas)
        nnz = system.nnz
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return ScaleOutcome(
        run, scene.num_gaussians, nnz, sample.weights_per_covered_pixel, setup_s, step_s, pass_s, iterations, peak,
        bridge.memory_plan.chosen.peak, delta,
    )  # fmt: skip


def in_fresh_process(run: ScaleRun) -> ScaleOutcome:
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(scale_run, run).result()


@dataclass(frozen=True)
class SplitRun:
    """Part 4's configuration: the scene, its views and size, the steps, the views to fit, and where results go."""

    scene: str
    views: int
    size: int
    steps: int
    targets: Path
    folder: Path


def split_run(run: SplitRun, threads: int) -> None:
    """In every process of the group (or alone): time the setup, the warm steps and a matrix-free product over this
    process's views; process 0 saves the seconds and the last fit's colours as `<processes>x<threads>.pt`."""
    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    with distributed.process_group():
        scene, antialiased = scene_named(run.scene)
        cameras = orbit_views(scene, run.views, run.size)
        shard = distributed.process_shard(len(cameras))
        codec = GaussianTexturePrior.from_prompt("marble", native_size=run.size)
        targets = torch.load(run.targets)
        seconds: dict[str, float] = {}
        for storage in ("stored", "matrix_free"):
            config = SplatBridgeConfig(storage=storage, antialiased=antialiased, memory_budget_gb=PLENTY_GB)
            distributed.all_succeeded()  # a common start
            begin = time.perf_counter()
            bridge = config.setup(codec, scene, cameras, shard)
            distributed.all_succeeded()  # the slowest process ends it
            seconds[f"{storage}_setup_s"] = time.perf_counter() - begin
            z, steps = torch.full((scene.num_gaussians, 3), 0.5), []
            for step in range(run.steps if storage == "stored" else 1):
                x = codec.encode(shard.local(targets[step]))
                distributed.all_succeeded()
                begin = time.perf_counter()
                if storage == "stored":
                    z = bridge.fit(x, previous=z if step else None).z
                    bridge.project(z, background=x)
                else:
                    shard.sum(bridge.linear_system("image").apply(z))
                distributed.all_succeeded()
                steps.append(time.perf_counter() - begin)
            seconds[f"{storage}_s"] = min(steps[1:] or steps)  # the fastest warm step
            if storage == "stored":
                answer = z
            del bridge
        if distributed.rank() == 0:
            torch.save({"seconds": seconds, "z": answer}, run.folder / f"{shard.world}x{threads}.pt")


@dataclass(frozen=True)
class BenchScale:
    """Memory and time of the stored, compact and matrix-free splat fits, and their PSNR against the stored fit."""

    quality_scenes: tuple[str, ...] = ("demo", "donut")
    """Scenes of part 1: 'demo' (the teapot), 'donut' (the fixture), a Gaussian count (tiled donut) or a .ply path."""
    quality_size: int = 32
    """Side of part 1's views in pixels."""
    gaussians: tuple[str, ...] = ("100000", "300000")
    """Scenes of part 2: Gaussian counts of the tiled donut (or any name `quality_scenes` takes)."""
    views: tuple[int, ...] = (8,)
    """View counts of part 2 (the rig of scripts/bench_unproject.py)."""
    sizes: tuple[int, ...] = (128,)
    """Sides of part 2's views in pixels."""
    steps: int = 3
    """Fits per configuration, the first cold, the others warm-started (part 2 times the warm ones)."""
    target: tuple[int, int, int] = (1_000_000, 50, 512)
    """Part 3: Gaussians, views and side of the extrapolated configuration."""
    threads: int = 2
    """torch CPU threads, here and in every process of part 2."""
    storages: tuple[str, ...] = field(default_factory=lambda: tuple(STORAGES))
    """Storages to compare (stored is the reference)."""
    split: tuple[str, int, int] = ("100000", 8, 256)
    """Part 4: the scene (as `gaussians` names them), the views and their side, split across two processes."""
    parts: tuple[int, ...] = (1, 2, 3, 4)
    """The parts to run (the RESULT keys of the others are nan)."""

    def main(self) -> None:
        torch.set_num_threads(self.threads)
        print(
            f"torch threads: {self.threads}; fits at the product's defaults; ~ marks extrapolated numbers", flush=True
        )
        deltas = self.quality() if 1 in self.parts else []
        outcomes = self.scale() if 2 in self.parts else []
        peak_gb, step_s = self.extrapolate(outcomes) if 3 in self.parts else (math.nan, math.nan)
        speedup = self.processes() if 4 in self.parts else math.nan
        worst = max((abs(delta) for delta in deltas), default=math.nan)
        print(f"RESULT peak_gb_per_proc_1M_50v_512={peak_gb:.3f} fit_s_per_step_1M={step_s:.1f} "
              f"two_proc_speedup={speedup:.3f} psnr_delta_db={worst:.4f}")  # fmt: skip

    def quality(self) -> list[float]:
        """Part 1: PSNR of each storage's fits against the stored fit's; returns the deltas."""
        rows, deltas = [], []
        codec = GaussianTexturePrior.from_prompt("marble", native_size=self.quality_size)
        for name in self.quality_scenes:
            scene, antialiased = scene_named(name)
            cameras = orbit_views(scene, 8, self.quality_size)
            targets = drifting_targets(scene, cameras, antialiased, self.steps, seed=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bridges = {
                    storage: SplatBridgeConfig(storage=storage, antialiased=antialiased, memory_budget_gb=PLENTY_GB)
                    .setup(codec, scene, cameras)
                    for storage in self.storages
                }  # fmt: skip
            judge = bridges["stored"]
            for storage, bridge in bridges.items():
                z, psnr, seconds = None, 0.0, 0.0
                for target in targets:
                    begin = time.perf_counter()
                    z = bridge.fit(codec.encode(target), previous=z).z
                    seconds += time.perf_counter() - begin
                    psnr += covered_psnr(judge, z, target) / self.steps
                rows.append([name, storage, psnr, seconds])
            reference = next(row[2] for row in rows if row[0] == name and row[1] == "stored")
            for row in rows:
                if row[0] == name:
                    row.append(row[2] - reference)
                    deltas += [row[4]] if row[1] != "stored" else []
            print(f"  quality: {name} done", flush=True)
        print(f"\nPart 1, quality: 8 views of {self.quality_size} x {self.quality_size}, {self.steps} fits")
        print("| scene | storage | PSNR dB | delta dB | fit s |")
        print("|---|---|---|---|---|")
        for name, storage, psnr, seconds, delta in rows:
            print(f"| {name} | {storage} | {psnr:.3f} | {delta:+.5f} | {seconds:.1f} |")
        return deltas

    def scale(self) -> list[ScaleOutcome]:
        """Part 2: each storage on each generated scene in its own process."""
        outcomes = []
        order = sorted(self.storages, key=["compact", "matrix_free", "stored"].index)  # stored last: it judges
        for name in self.gaussians:
            scene, antialiased = scene_named(name)
            for views in self.views:
                for size in self.sizes:
                    with tempfile.TemporaryDirectory() as folder:
                        targets = Path(folder) / "targets.pt"
                        cameras = orbit_views(scene, views, size)
                        torch.save(drifting_targets(scene, cameras, antialiased, self.steps, seed=0), targets)
                        for storage in order:
                            run = ScaleRun(name, views, size, storage, self.steps, self.threads, targets, Path(folder))
                            outcomes.append(in_fresh_process(run))
                            print(f"  scale: {name} Gaussians, {views} views of {size}, {storage} done", flush=True)
            del scene
        stored_iterations = {(o.run.scene, o.run.views, o.run.size): o.iterations for o in outcomes
                             if o.run.storage == "stored"}  # fmt: skip
        print("\nPart 2, scale: one process per row; peak = the process's peak RSS less its RSS before the bridge")
        print("| Gaussians | views | size | storage | weights | weights / covered px | setup s | step s | "
              "peak GiB | predicted GiB | PSNR delta dB |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for o in outcomes:
            step = f"{o.step_s:.2f}"
            if o.run.storage == "matrix_free":
                passes = stored_iterations.get((o.run.scene, o.run.views, o.run.size), 0) + 2
                step = f"~{o.pass_s * passes:.1f} ({o.pass_s:.1f} per pass)"
            delta = (
                f"{o.compact_delta_db:+.5f}" if o.run.storage == "stored" and math.isfinite(o.compact_delta_db) else ""
            )
            weights = f"~{o.weights:,}" if o.run.storage == "matrix_free" else f"{o.weights:,}"
            print(f"| {o.gaussians:,} | {o.run.views} | {o.run.size} | {o.run.storage} | {weights} | "
                  f"{o.weights_per_covered_pixel:.1f} | {o.setup_s:.1f} | {step} | {o.peak_bytes / 2**30:.3f} | "
                  f"{o.predicted_bytes / 2**30:.3f} | {delta} |")  # fmt: skip
        return outcomes

    def extrapolate(self, outcomes: list[ScaleOutcome]) -> tuple[float, float]:
        """Part 3: the memory model at the target size, for the generated scene as it covers the views and for a
        capture that covers every pixel at the same weights per covered pixel; step seconds scaled by weights from the
        largest measured scene. Returns the peak GiB and step seconds of the storage "auto" picks under `GOAL_GB` for
        the fully covered views."""
        gaussians, views, size = self.target
        scene = tiled_donut(gaussians)
        cameras = orbit_views(scene, views, size)
        generated = sample_weights(scene, cameras, 3, SplatBridgeConfig().solver_cutoff, antialiased=True)
        cover = 1 / max(generated.covered_fraction, 1e-9)
        covered = dataclasses.replace(
            generated, weights=generated.weights * cover, solver_weights=generated.solver_weights * cover,
            normal_weights=min(generated.normal_weights * cover, float(scene.num_gaussians) ** 2), covered_fraction=1.0,
        )  # fmt: skip
        print(f"\nPart 3, extrapolated: {scene.num_gaussians:,} Gaussians, {views} views of {size} x {size}, "
              f"{generated.weights_per_covered_pixel:.1f} weights per covered pixel "
              f"({generated.sampled_views} views sampled)")  # fmt: skip
        print("| views | ~weights | storage | ~weights GiB | ~A GiB | ~solver GiB | ~transient GiB | ~peak GiB | "
              "~step s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        answer = (math.nan, math.nan)
        for label, sample in [(f"as generated ({generated.covered_fraction:.0%} covered)", generated),
                              ("every pixel covered", covered)]:  # fmt: skip
            predicted = {storage: predict_fit_memory((sample,), storage, scene.means.dtype) for storage in STORAGES}
            seconds = {storage: self._step_seconds(outcomes, storage, sample.weights) for storage in STORAGES}
            for storage, memory in predicted.items():
                gib = [memory.weights, memory.normal_matrix, memory.solver, memory.transient, memory.peak]
                cells = " | ".join(f"{value / 2**30:.2f}" for value in gib)
                print(f"| {label} | {sample.weights / 1e6:,.0f} M | {storage} | {cells} | {seconds[storage]:.0f} |")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    plan = plan_fit_memory((sample,), scene.means.dtype, torch.device("cpu"), "auto", GOAL_GB)
                    chosen = plan.storage
                    answer = (predicted[chosen].peak / 2**30, seconds[chosen])
                except InputError:
                    chosen, answer = None, (math.nan, math.nan)
            print(f"| {label} | | auto under {GOAL_GB:g} GiB: {chosen or 'nothing fits'} | | | | | | |")
        return answer

    def processes(self) -> float:
        """Part 4: one process (one thread, then `threads`) against two of one thread each; returns the speedup of the
        render-and-fit step with two processes over one, one thread each."""
        name, views, size = self.split
        scene, antialiased = scene_named(name)
        cameras = orbit_views(scene, views, size)
        with tempfile.TemporaryDirectory() as folder:
            run = SplitRun(name, views, size, self.steps, Path(folder) / "targets.pt", Path(folder))
            torch.save(drifting_targets(scene, cameras, antialiased, self.steps, seed=0), run.targets)
            runs = [(1, 1), (1, self.threads), (2, 1)]
            for processes, threads in runs:
                if distributed.launch(processes, split_run, run, threads):
                    raise InputError(f"part 4: the run of {processes} processes failed (its message is above)")
                print(f"  processes: {processes} x {threads} threads done", flush=True)
            results = {run_: torch.load(Path(folder) / f"{run_[0]}x{run_[1]}.pt") for run_ in runs}
        base = results[(1, 1)]
        print(f"\nPart 4, processes: {scene.num_gaussians:,} Gaussians, {views} views of {size} x {size}, the views "
              "split across processes (gloo); speedups against one process of one thread")  # fmt: skip
        print("| processes x threads | stored setup s | render-and-fit step s | speedup | matrix-free setup s | "
              "A p s | speedup | max abs dz |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for (processes, threads), result in results.items():
            s, b = result["seconds"], base["seconds"]
            dz = float((result["z"] - base["z"]).abs().max())
            print(f"| {processes} x {threads} | {s['stored_setup_s']:.1f} | {s['stored_s']:.3f} | "
                  f"{b['stored_s'] / s['stored_s']:.2f}x | {s['matrix_free_setup_s']:.1f} | {s['matrix_free_s']:.2f} | "
                  f"{b['matrix_free_s'] / s['matrix_free_s']:.2f}x | {dz:.1e} |")  # fmt: skip
        return base["seconds"]["stored_s"] / results[(2, 1)]["seconds"]["stored_s"]

    @staticmethod
    def _step_seconds(outcomes: list[ScaleOutcome], storage: str, weights: float) -> float:
        """Seconds of a warm fit step at `weights` weights, scaled from the largest measured scene of `storage`
        (matrix-free: its timed pass, times the stored fit's iterations there plus two)."""
        measured = [o for o in outcomes if o.run.storage == storage]
        if not measured:
            return math.nan
        best = max(measured, key=lambda o: o.weights)
        if storage != "matrix_free":
            return best.step_s / best.weights * weights
        iterations = next((o.iterations for o in outcomes if o.run.storage == "stored" and o.run.scene == best.run.scene
                           and o.run.size == best.run.size and o.run.views == best.run.views), 0)  # fmt: skip
        return best.pass_s * (iterations + 2) / best.weights * weights


def main() -> None:
    settings = tyro.cli(BenchScale)
    with one_line_errors("bench_scale.py"):
        settings.main()


if __name__ == "__main__":
    main()
