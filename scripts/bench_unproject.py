"""Benchmark the splat colour fit g: the official 1000-iteration Adam fit against our least squares (DESIGN.md §5).

For each scene (the donut fixture, a Mip-Splatting capture, and the generated demo teapot) and each rig (8 and 50
views on an orbit around the scene's bounding sphere, the 8 a subset of the 50's directions), at 128 x 128:

- Targets simulate the decoded Tweedie estimates of a run: the render of random per-Gaussian colours over white
  plus i.i.d. pixel noise (so views disagree), clamped to [0, 1]. A run is `steps` sampling steps (24: the
  synchronised steps of the official 30-step run, which fits while t > 0.2 T); between steps the colours drift
  (`drift`, Gaussian, clamped) and the noise is drawn afresh. Each configuration is one run, so one-off costs (the
  first, cold fit; assembling A) weigh on it as they do on a real run.
- BASELINE (the official fit, reference/synctweedies.md §4.5): per-Gaussian colour logits (colour = sigmoid), a fresh
  Adam (lr 0.025, betas 0.9/0.999, eps 1e-15) at every step, `baseline_iterations` iterations of one view each,
  the view order reshuffled every 50 iterations, L1 loss of the render composited over white against the target,
  warm-started from the previous step's logits (the first step from grey, logit 0).
- OURS: `GaussianSplatBridge.fit` (canonical "rgb", views composited over white, the product's default damping
  and stopping rules): the closed form then preconditioned CG, warm-started from the previous answer.

Both render with the same precomputed sparse weights (a forward `W_v c` and a backward `W_v^T g` per view for the
baseline, as gsplat's forward and backward passes). The SHARED setup (the compositing weights, their CSR and
transposed CSR layouts, alpha) is timed once and reported in its own column, in NEITHER method's seconds; the
baseline's per-view transposes are built there too. Everything else is in the methods' own seconds: for ours that
includes assembling the normal matrix A when `normal_matrix` picks it (on the first fit) and decoding the targets.

Cost model: a baseline step is 1000 single-view passes whatever the number of views, i.e. 125 passes over 8 views but
only 20 over 50, while ours reads every view once for `b` and again in each CG iteration (twice when A is implicit,
as it is on the donut, whose A at 128 x 128 is denser than W). So 50 views at 128 x 128 is where the comparison is
tightest; ours gains with resolution, since A does not grow with the pixels. On 2 shared cores the seconds of one
configuration vary by up to a third between runs, the baseline's most.

PSNR is that of the views (render composited over white, clamped) against the targets, averaged over the steps;
seconds are totals over the steps. The last line is `RESULT min_speedup=<float> min_psnr_delta_db=<float>` over all
configurations (delta = ours - baseline).

    python scripts/bench_unproject.py [--scenes donut demo] [--views 8 50] [--steps 24] [--threads 2]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from shared_fixtures import find_fixture
from torch import Tensor

from sync_splat.bridges.splat import SplatBridgeConfig
from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.errors import InputError, one_line_errors
from sync_splat.scene.cameras import Cameras
from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.gaussians import GaussianScene

DONUT = "donut_mipsplatting.ply"


def orbit_views(scene: GaussianScene, num_views: int, size: int) -> Cameras:
    """50 views: 16 azimuths at elevations 0, 25 and 50 degrees plus 2 from above; 8 views: every other azimuth of
    the 25-degree ring (a subset of the 50's directions)."""
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


def _transpose(matrix: Tensor) -> Tensor:
    """The transpose of a CSR matrix, as CSR."""
    crow, cols, values = matrix.crow_indices().long(), matrix.col_indices().long(), matrix.values()
    rows = torch.repeat_interleave(torch.arange(matrix.shape[0]), crow.diff())
    order = torch.sort(cols, stable=True).indices
    offsets = torch.zeros(matrix.shape[1] + 1, dtype=torch.long)
    offsets[1:] = torch.bincount(cols, minlength=matrix.shape[1]).cumsum(0)
    index = matrix.crow_indices().dtype
    return torch.sparse_csr_tensor(
        offsets.to(index), rows[order].to(index), values[order], (matrix.shape[1], matrix.shape[0]),
        check_invariants=False,
    )  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """One configuration's outcome: PSNR averaged over the steps, seconds summed over them."""

    scene: str
    views: int
    gaussians: int
    setup_s: float
    baseline_psnr: float
    ours_psnr: float
    baseline_s: float
    ours_s: float
    iterations: int
    normal_matrix: str

    @property
    def speedup(self) -> float:
        return self.baseline_s / self.ours_s

    @property
    def psnr_delta(self) -> float:
        return self.ours_psnr - self.baseline_psnr

    def cells(self) -> list[str]:
        """The table row."""
        return [
            self.scene, str(self.views), str(self.gaussians), f"{self.baseline_psnr:.2f}", f"{self.ours_psnr:.2f}",
            f"{self.psnr_delta:+.2f}", f"{self.baseline_s:.2f}", f"{self.ours_s:.2f}", f"{self.speedup:.1f}x",
            f"{self.setup_s:.1f}", str(self.iterations), self.normal_matrix,
        ]  # fmt: skip


@dataclass(frozen=True)
class BenchUnproject:
    """Time and score the official Adam colour fit against our least squares on the same targets and renderer."""

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
    noise: float = 0.05
    """Standard deviation of the per-pixel target noise (the views' disagreement)."""
    drift: float = 0.05
    """Standard deviation of the per-Gaussian colour change between steps."""
    seed: int = 0
    """Seed of the colours, the noise and the baseline's view order."""
    threads: int | None = None
    """torch CPU threads; None keeps torch's default."""

    def main(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        print(f"torch threads: {torch.get_num_threads()}, views {self.size} x {self.size}, {self.steps} steps, "
              f"baseline {self.baseline_iterations} Adam iterations per step")  # fmt: skip
        codec = GaussianTexturePrior.from_prompt("marble")  # a pixel-space codec: x = 2 rgb01 - 1
        comparisons = []
        for name in self.scenes:
            scene = self._scene(name)
            for num_views in self.views:
                comparison = self._run(name, scene, orbit_views(scene, num_views, self.size), codec)
                print(f"  {name}, {num_views} views: {comparison.speedup:.1f}x, {comparison.psnr_delta:+.3f} dB",
                      flush=True)  # fmt: skip
                comparisons.append(comparison)
        print()
        print("| scene | views | Gaussians | baseline PSNR | ours PSNR | delta dB | baseline s | ours s | speedup "
              "| shared setup s | ours CG iterations | ours A |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for comparison in comparisons:
            print("| " + " | ".join(comparison.cells()) + " |")
        min_speedup = min(comparison.speedup for comparison in comparisons)
        min_delta = min(comparison.psnr_delta for comparison in comparisons)
        print(f"RESULT min_speedup={min_speedup:.4f} min_psnr_delta_db={min_delta:.4f}")

    def _scene(self, name: str) -> GaussianScene:
        if name == "demo":
            return make_demo_scene()
        if name != "donut":
            return GaussianScene.load(Path(name))
        path = find_fixture(DONUT)
        if path is None:
            raise InputError(
                f"the fixture {DONUT} is in none of $SYNC_SPLAT_FIXTURES, <repo>/shared/fixtures, <repo>/../shared/"
                "fixtures, /work/shared/fixtures: point $SYNC_SPLAT_FIXTURES at its folder or pass --scenes demo"
            )
        return GaussianScene.load(path)

    def _run(self, name: str, scene: GaussianScene, cameras: Cameras, codec: GaussianTexturePrior) -> Comparison:
        begin = time.perf_counter()
        bridge = SplatBridgeConfig(unproject_background="default").setup(codec, scene, cameras)
        system = bridge.linear_system("image")
        weights = [system.view_matrix(v) for v in range(bridge.num_views)]
        transposed = [_transpose(w) for w in weights]
        setup_s = time.perf_counter() - begin

        generator = torch.Generator().manual_seed(self.seed)
        g, n = scene.num_gaussians, bridge.num_views
        alpha = system.alpha  # [N, 1, H, W]

        def render(colours: Tensor) -> Tensor:
            return (system.render(colours) + 1 - alpha).clamp(0, 1)

        def psnr(colours: Tensor, target: Tensor) -> float:
            return -10 * math.log10(float(((render(colours) - target) ** 2).mean()))

        colours = torch.rand(g, 3, generator=generator)
        ours_z, logits = None, torch.zeros(g, 3)
        baseline_s = ours_s = baseline_psnr = ours_psnr = 0.0
        iterations = 0
        for step in range(self.steps):
            if step > 0:
                colours = (colours + self.drift * torch.randn(g, 3, generator=generator)).clamp(0, 1)
            noise = self.noise * torch.randn(n, 3, self.size, self.size, generator=generator)
            target = (render(colours) + noise).clamp(0, 1)

            begin = time.perf_counter()
            logits = self._baseline(weights, transposed, alpha, target, logits, generator)
            baseline_s += time.perf_counter() - begin
            baseline_psnr += psnr(torch.sigmoid(logits), target) / self.steps

            x = codec.encode(target)
            begin = time.perf_counter()
            fit = bridge.fit(x, previous=ours_z)
            ours_s += time.perf_counter() - begin
            ours_z, iterations = fit.z, iterations + fit.iterations
            ours_psnr += psnr(ours_z, target) / self.steps
        return Comparison(
            name, n, g, setup_s, baseline_psnr, ours_psnr, baseline_s, ours_s, iterations, system.normal_matrix_mode
        )

    def _baseline(
        self,
        weights: list[Tensor],
        transposed: list[Tensor],
        alpha: Tensor,
        target: Tensor,
        logits: Tensor,
        generator: torch.Generator,
    ) -> Tensor:
        """The official per-step fit: a fresh Adam on the colour logits, one view per iteration, L1 over white."""
        n = len(weights)
        logits = logits.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([logits], lr=0.025, betas=(0.9, 0.999), eps=1e-15)
        targets = target.permute(0, 2, 3, 1).reshape(n, -1, 3)
        behind = (1 - alpha).reshape(n, -1, 1)
        order = torch.arange(n)
        for iteration in range(self.baseline_iterations):
            if iteration % 50 == 0:
                order = torch.randperm(n, generator=generator)
            view = int(order[(iteration % 50) % n])
            image = _Render.apply(torch.sigmoid(logits), weights[view], transposed[view]) + behind[view]
            loss = (image - targets[view]).abs().mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        return logits.detach()


def main() -> None:
    settings = tyro.cli(BenchUnproject)
    with one_line_errors("bench_unproject"):
        settings.main()


if __name__ == "__main__":
    main()
