"""Benchmark the splat colour fit g: the official per-step Adam fit against our least squares.

Each configuration (a scene and an orbit rig of 8 or 50 views at `size` x `size`) is one simulated run of `steps`
sampling steps. The targets stand in for a run's decoded Tweedie estimates: renders of random per-Gaussian colours
over white plus per-pixel noise (so views disagree), clamped to [0, 1]; the colours drift between steps.

- BASELINE, the official fit: per-Gaussian colour logits (colour = sigmoid), a fresh Adam (lr 0.025, betas 0.9 /
  0.999, eps 1e-15) at every step, `baseline_iterations` (1000) iterations of one view each, the view order
  reshuffled every 50, L1 loss of the view composited over white, warm-started from the previous step's logits.
- OURS: `GaussianSplatBridge.fit` (canonical "rgb", views composited over white, the default settings): the closed
  form, then preconditioned conjugate gradient, warm-started from the previous answer.

Table 1, both fits on precomputed compositing weights W (the rasteriser's `gaussian_weights`, read by both):
- "shared s": computing W, in neither method's seconds.
- "baseline setup s": what only the baseline builds from W: per-view CSR `W_v` and `W_v^T` (its forward and
  backward passes) and alpha. "baseline fit s": its Adam iterations over all steps.
- "ours setup s": everything the bridge builds from W: CSR in both orientations, alpha, the pruned copies of
  `solver_cutoff`, the row sums. "ours fit s": its fits over all steps, including decoding the targets and
  assembling A (on the first fit, when `normal_matrix` picks it).
- "speedup": (baseline setup + fit) / (ours setup + fit). PSNR: the views rendered from the colours clamped to
  [0, 1] (as the export clamps them) over white, against the targets, averaged over the steps.

Table 2, end to end, each method on its natural renderer:
- The baseline rasterises its view at every iteration (`render_gaussians`, pure torch, autograd w.r.t. the colours),
  as the official code does with gsplat. Only `e2e_iterations` of its iterations per step are run and timed; an
  iteration's cost does not depend on the step, so its seconds are scaled linearly by
  `baseline_iterations / e2e_iterations`. "renderer check" is the largest colour difference between that truncated
  fit and the same truncated fit on W (same targets, same view order): it shows table 1's baseline is this one.
- Ours: shared + ours setup + ours fit of table 1 (its weights, their construction and its fits).

Each table ends with a RESULT line: `RESULT min_speedup=<float> min_psnr_delta_db=<float>` (delta = ours -
baseline), then `RESULT e2e_min_speedup=<float> e2e_iterations_timed=<int>`; minima over the configurations.

    python scripts/bench_unproject.py [--scenes donut demo] [--views 8 50] [--size 128] [--steps 24] [--threads 2]
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import tyro
from shared_fixtures import require_fixture
from torch import Tensor

import sync_splat.bridges.splat as splat_bridge
from sync_splat.bridges.splat import GaussianSplatBridge, SplatBridgeConfig
from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.errors import InputError, one_line_errors
from sync_splat.render.gaussians import render_gaussians
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.gaussians import GaussianScene

DONUT = "donut_mipsplatting.ply"

# A view composited over white, `[h w, 3]`, from colours `[G, 3]` and a view index.
RenderView = Callable[[Tensor, int], Tensor]


def orbit_views(scene: GaussianScene, num_views: int, size: int) -> Cameras:
    """50 views: 16 azimuths at elevations 0, 25 and 50 degrees plus 2 from above; 8 views: every other azimuth of
    the 25-degree ring (a subset of the 50's directions); other counts: evenly spread over the 50."""
    centre, radius = scene.bounding_sphere(trim=0.01)
    rig = Cameras.orbit_rig(centre, radius, num_azimuths=16, elevations_deg=(0.0, 25.0, 50.0), top_views=2,
                            size=(size, size))  # fmt: skip
    if num_views == 50:
        return rig
    if num_views == 8:
        return rig.subset(list(range(16, 32, 2)))
    return rig.subset(torch.linspace(0, len(rig) - 1, num_views).round().long())


class _Render(torch.autograd.Function):
    """`W c` with the backward `W^T g` from a precomputed transpose (sparse CSR autograd would transpose each call)."""

    @staticmethod
    def forward(ctx, colours: Tensor, weights: Tensor, transposed: Tensor) -> Tensor:  # noqa: ANN001
        ctx.transposed = transposed
        return weights @ colours

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        return ctx.transposed @ grad, None, None


def _csr(crow: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from indices made here (no invariant checks, no notice that CSR support is in beta)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def _offsets(rows: Tensor, count: int) -> Tensor:
    """CSR row offsets `[count + 1]` of sorted row indices."""
    offsets = torch.zeros(count + 1, dtype=torch.long)
    offsets[1:] = torch.bincount(rows, minlength=count).cumsum(0)
    return offsets


def per_view_matrices(weights: Tensor, num_views: int, pixels: int) -> tuple[list[Tensor], list[Tensor]]:
    """The baseline's own layout of the coalesced COO weights `[N h w, G]`: per view, `W_v` `[h w, G]` and
    `W_v^T` `[G, h w]`, both CSR with 32-bit indices (as the bridge's, which makes sparse products faster)."""
    rows, cols = weights.indices()
    values = weights.values()
    num_gaussians = weights.shape[1]
    bounds = torch.searchsorted(rows, torch.arange(num_views + 1) * pixels).tolist()
    forward, backward = [], []
    for view in range(num_views):
        begin, end = bounds[view], bounds[view + 1]
        local, columns, entries = rows[begin:end] - view * pixels, cols[begin:end], values[begin:end]
        forward.append(_csr(_offsets(local, pixels).int(), columns.int(), entries, (pixels, num_gaussians)))
        order = torch.sort(columns, stable=True).indices
        crow_t = _offsets(columns, num_gaussians).int()
        backward.append(_csr(crow_t, local[order].int(), entries[order], (num_gaussians, pixels)))
    return forward, backward


def adam_fit(
    render_view: RenderView,
    targets: Tensor,
    logits: Tensor,
    iterations: int,
    generator: torch.Generator,
) -> Tensor:
    """The official per-step fit: a fresh Adam on the colour logits `[G, 3]`, one view per iteration (the order
    reshuffled every 50), L1 between the view over white and its target (`targets` `[N, h w, 3]`)."""
    num_views = targets.shape[0]
    logits = logits.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=0.025, betas=(0.9, 0.999), eps=1e-15)
    order = torch.arange(num_views)
    for iteration in range(iterations):
        if iteration % 50 == 0:
            order = torch.randperm(num_views, generator=generator)
        view = int(order[(iteration % 50) % num_views])
        loss = (render_view(torch.sigmoid(logits), view) - targets[view]).abs().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return logits.detach()


def rasterising_view(scene: GaussianScene, cameras: Cameras) -> RenderView:
    """The baseline's natural renderer: rasterise the view from scratch at each call (`render_gaussians`, torch
    backend, differentiable w.r.t. the colours) and composite it over white."""
    scales, opacities = scene.log_scales.exp(), torch.sigmoid(scene.opacity_logits)

    def render_view(colours: Tensor, view: int) -> Tensor:
        out = render_gaussians(
            scene.means, scene.quats_wxyz, scales, opacities, colours, cameras.viewmats[view : view + 1],
            cameras.Ks[view : view + 1], cameras.width, cameras.height, backend="torch",
        )  # fmt: skip
        return (out.image + 1 - out.alpha)[0].permute(1, 2, 0).reshape(-1, colours.shape[1])

    return render_view


@dataclass(frozen=True)
class Comparison:
    """One configuration's outcome: PSNR averaged over the steps, seconds summed over them."""

    scene: str
    views: int
    gaussians: int
    shared_s: float
    baseline_setup_s: float
    baseline_fit_s: float
    ours_setup_s: float
    ours_fit_s: float
    baseline_psnr: float
    ours_psnr: float
    iterations: int
    normal_matrix: str
    steps: int
    e2e_iterations: int
    e2e_measured_s: float
    e2e_scale: float
    renderer_check: float

    @property
    def speedup(self) -> float:
        return (self.baseline_setup_s + self.baseline_fit_s) / (self.ours_setup_s + self.ours_fit_s)

    @property
    def psnr_delta(self) -> float:
        return self.ours_psnr - self.baseline_psnr

    @property
    def e2e_baseline_s(self) -> float:
        return self.e2e_measured_s * self.e2e_scale

    @property
    def e2e_ours_s(self) -> float:
        return self.shared_s + self.ours_setup_s + self.ours_fit_s

    @property
    def e2e_speedup(self) -> float:
        return self.e2e_baseline_s / self.e2e_ours_s

    def fit_cells(self) -> list[str]:
        """Table 1's row."""
        return [
            self.scene, str(self.views), str(self.gaussians), f"{self.shared_s:.2f}", f"{self.baseline_setup_s:.2f}",
            f"{self.baseline_fit_s:.2f}", f"{self.ours_setup_s:.2f}", f"{self.ours_fit_s:.2f}", f"{self.speedup:.1f}x",
            f"{self.baseline_psnr:.2f}", f"{self.ours_psnr:.2f}", f"{self.psnr_delta:+.2f}", str(self.iterations),
            self.normal_matrix,
        ]  # fmt: skip

    def e2e_cells(self) -> list[str]:
        """Table 2's row."""
        per_iteration = self.e2e_measured_s / (self.e2e_iterations * self.steps)
        return [
            self.scene, str(self.views), f"{per_iteration:.3f}", f"{self.e2e_baseline_s:.0f}", f"{self.e2e_ours_s:.1f}",
            f"{self.e2e_speedup:.0f}x", f"{self.renderer_check:.1e}",
        ]  # fmt: skip


@dataclass(frozen=True)
class BenchUnproject:
    """Time and score the official Adam colour fit against our least squares on the same targets."""

    scenes: tuple[str, ...] = ("donut", "demo")
    """Scenes: 'donut' (the Mip-Splatting fixture), 'demo' (the generated teapot) or a path to a .ply."""
    views: tuple[int, ...] = (8, 50)
    """View counts; 8 and 50 use the rigs described above."""
    size: int = 128
    """Side of the square views in pixels."""
    steps: int = 24
    """Simulated sampling steps per configuration (the first cold, the others warm-started); 24 as in a real run."""
    baseline_iterations: int = 1000
    """Adam iterations per step of the baseline (official: 1000)."""
    e2e_iterations: int = 2
    """Baseline iterations per step run and timed on the rasteriser (table 2), scaled to `baseline_iterations`."""
    noise: float = 0.05
    """Standard deviation of the per-pixel target noise (the views' disagreement)."""
    drift: float = 0.05
    """Standard deviation of the per-Gaussian colour change between steps."""
    seed: int = 0
    """Seed of the colours, the noise and the baseline's view order."""
    threads: int | None = None
    """torch CPU threads; None keeps torch's default."""

    def main(self) -> list[Comparison]:
        """Run every configuration and print both tables with their RESULT lines."""
        if min(self.size, self.steps, self.baseline_iterations, self.e2e_iterations, *self.views) < 1:
            raise InputError("bench_unproject: --size, --steps, --views and the iteration counts must be positive")
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        e2e_iterations = min(self.e2e_iterations, self.baseline_iterations)
        print(f"torch threads: {torch.get_num_threads()}, views {self.size} x {self.size}, {self.steps} steps, "
              f"baseline {self.baseline_iterations} Adam iterations per step")  # fmt: skip
        codec = GaussianTexturePrior.from_prompt("marble")  # a pixel-space codec: x = 2 rgb01 - 1
        # torch imports its compiler on the first Adam built (seconds): a one-off of the process, not of the fit.
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        comparisons = []
        for name in self.scenes:
            scene = self._scene(name)
            for num_views in self.views:
                comparison = self._run(name, scene, orbit_views(scene, num_views, self.size), codec, e2e_iterations)
                print(f"  {name}, {num_views} views: {comparison.speedup:.1f}x, {comparison.psnr_delta:+.3f} dB; "
                      f"end to end {comparison.e2e_speedup:.0f}x", flush=True)  # fmt: skip
                comparisons.append(comparison)

        print("\nTable 1: the fits on precomputed weights (seconds summed over the steps)\n")
        print("| scene | views | Gaussians | shared s | baseline setup s | baseline fit s | ours setup s | ours fit s "
              "| speedup | baseline PSNR | ours PSNR | delta dB | ours CG iterations | ours A |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for comparison in comparisons:
            print("| " + " | ".join(comparison.fit_cells()) + " |")
        min_speedup = min(comparison.speedup for comparison in comparisons)
        min_delta = min(comparison.psnr_delta for comparison in comparisons)
        print(f"RESULT min_speedup={min_speedup:.4f} min_psnr_delta_db={min_delta:.4f}")

        scaled = "" if e2e_iterations == self.baseline_iterations else (
            f"; {e2e_iterations} of its {self.baseline_iterations} iterations per step timed, seconds scaled by "
            f"{self.baseline_iterations / e2e_iterations:g}"
        )  # fmt: skip
        print(f"\nTable 2: end to end, {self.steps} steps; the baseline rasterising every iteration{scaled}; ours "
              "computing its weights, building its system and fitting\n")  # fmt: skip
        print("| scene | views | baseline s per iteration | baseline s | ours s | speedup | renderer check |")
        print("|---|---|---|---|---|---|---|")
        for comparison in comparisons:
            print("| " + " | ".join(comparison.e2e_cells()) + " |")
        e2e_min = min(comparison.e2e_speedup for comparison in comparisons)
        print(f"RESULT e2e_min_speedup={e2e_min:.4f} e2e_iterations_timed={e2e_iterations}")
        return comparisons

    def _scene(self, name: str) -> GaussianScene:
        if name == "demo":
            return make_demo_scene()
        if name != "donut":
            return GaussianScene.load(Path(name))
        return GaussianScene.load(require_fixture(DONUT, "pass --scenes demo"))

    def _targets(self, bridge: GaussianSplatBridge) -> Iterator[Tensor]:
        """The targets `[N, 3, h w]` of every step, the same sequence at every call."""
        generator = torch.Generator().manual_seed(self.seed)
        system = bridge.linear_system("image")
        g, n = bridge.scene.num_gaussians, bridge.num_views
        colours = torch.rand(g, 3, generator=generator)
        for step in range(self.steps):
            if step > 0:
                colours = (colours + self.drift * torch.randn(g, 3, generator=generator)).clamp(0, 1)
            noise = self.noise * torch.randn(n, 3, self.size, self.size, generator=generator)
            yield (system.render(colours) + 1 - system.alpha + noise).clamp(0, 1)

    def _run(
        self, name: str, scene: GaussianScene, cameras: Cameras, codec: GaussianTexturePrior, e2e_iterations: int
    ) -> Comparison:
        # The bridge computes W with `gaussian_weights` and builds its system from it: time the two apart, and keep
        # W for the baseline's own layout.
        computed: list[tuple[float, Tensor]] = []
        compute_weights = splat_bridge.gaussian_weights

        def timed_weights(*args, **kwargs) -> Tensor:  # noqa: ANN002, ANN003
            begin = time.perf_counter()
            weights = compute_weights(*args, **kwargs)
            computed.append((time.perf_counter() - begin, weights))
            return weights

        begin = time.perf_counter()
        with mock.patch.object(splat_bridge, "gaussian_weights", timed_weights):
            # Every pixel counted alike (cos_power 0): the official objective, so both methods solve one problem.
            bridge = SplatBridgeConfig(unproject_background="default", cos_power=0.0).setup(codec, scene, cameras)
        bridge_s = time.perf_counter() - begin
        if len(computed) != 1:
            raise RuntimeError("bench_unproject: the splat bridge no longer computes its weights once through "
                               "sync_splat.bridges.splat.gaussian_weights; update the benchmark's timing")  # fmt: skip
        (shared_s, weights), computed[:] = computed[0], []
        ours_setup_s = bridge_s - shared_s

        system = bridge.linear_system("image")
        n, pixels = bridge.num_views, self.size * self.size
        begin = time.perf_counter()
        forward, backward = per_view_matrices(weights, n, pixels)
        behind = torch.stack([1 - w @ torch.ones(w.shape[1], 1) for w in forward])  # [N, h w, 1]: 1 - alpha
        baseline_setup_s = time.perf_counter() - begin
        del weights

        def on_weights(colours: Tensor, view: int) -> Tensor:
            return _Render.apply(colours, forward[view], backward[view]) + behind[view]

        def psnr(colours: Tensor, target: Tensor) -> float:
            image = system.render(colours.clamp(0, 1)) + 1 - system.alpha
            return -10 * math.log10(float(((image - target) ** 2).mean()))

        order = torch.Generator().manual_seed(self.seed)
        ours_z, logits = None, torch.zeros(scene.num_gaussians, 3)
        baseline_fit_s = ours_fit_s = baseline_psnr = ours_psnr = 0.0
        iterations = 0
        for target in self._targets(bridge):
            per_view = target.permute(0, 2, 3, 1).reshape(n, pixels, 3)
            begin = time.perf_counter()
            logits = adam_fit(on_weights, per_view, logits, self.baseline_iterations, order)
            baseline_fit_s += time.perf_counter() - begin
            baseline_psnr += psnr(torch.sigmoid(logits), target) / self.steps

            x = codec.encode(target)
            begin = time.perf_counter()
            fit = bridge.fit(x, previous=ours_z)
            ours_fit_s += time.perf_counter() - begin
            ours_z, iterations = fit.z, iterations + fit.iterations
            ours_psnr += psnr(ours_z, target) / self.steps

        e2e_measured_s, renderer_check = self._end_to_end(bridge, cameras, on_weights, e2e_iterations)
        return Comparison(
            scene=name, views=n, gaussians=scene.num_gaussians, shared_s=shared_s, baseline_setup_s=baseline_setup_s,
            baseline_fit_s=baseline_fit_s, ours_setup_s=ours_setup_s, ours_fit_s=ours_fit_s,
            baseline_psnr=baseline_psnr, ours_psnr=ours_psnr, iterations=iterations,
            normal_matrix=system.normal_matrix_mode, steps=self.steps, e2e_iterations=e2e_iterations,
            e2e_measured_s=e2e_measured_s, e2e_scale=self.baseline_iterations / e2e_iterations,
            renderer_check=renderer_check,
        )  # fmt: skip

    def _end_to_end(
        self, bridge: GaussianSplatBridge, cameras: Cameras, on_weights: RenderView, iterations: int
    ) -> tuple[float, float]:
        """The baseline's seconds for `iterations` per step on the rasteriser, and the largest colour difference
        from the same truncated fit on the weights."""
        rasterised, n = rasterising_view(bridge.scene, cameras), bridge.num_views
        fits = {}
        seconds = 0.0
        for render_view, timed in ((on_weights, False), (rasterised, True)):
            order = torch.Generator().manual_seed(self.seed)
            logits = torch.zeros(bridge.scene.num_gaussians, 3)
            for target in self._targets(bridge):
                per_view = target.permute(0, 2, 3, 1).reshape(n, -1, 3)
                begin = time.perf_counter()
                logits = adam_fit(render_view, per_view, logits, iterations, order)
                seconds += (time.perf_counter() - begin) if timed else 0.0
            fits[timed] = torch.sigmoid(logits)
        return seconds, float((fits[True] - fits[False]).abs().max())


def main() -> None:
    settings = tyro.cli(BenchUnproject)
    with one_line_errors("bench_unproject"):
        settings.main()


if __name__ == "__main__":
    main()
