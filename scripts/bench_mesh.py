"""Benchmark the mesh-texture bridge at the paper's sizes: seconds per sampling step of f and g.

One synchronised step of SyncTweedies (case 2) costs, beside the denoiser, one aggregation g (`unproject`: the
per-view sums, `unproject_sums`, then the division and the fill of unseen texels, and as many times again plus one f
per back-projection step, `--back-projection-steps`) and one projection f (`project`).
This times them on random latents, without a denoiser: a 4 x 1536 x 1536 latent texture and 10 views of 96 x 96
latents (768-pixel images, SD's factor 8), on the clutch-bag fixture (or a generated sphere when it is absent).
The per-view sums are also timed on their own, so "of which" rows split g. The one-off geometry precomputation
(rasterising views and UV layout, building the bake, the jump flood of unseen texels) is timed separately. Prints a
Markdown table; the last line is `RESULT seconds_per_step=<float> setup_s=<float>` (per step: f + g).

    python scripts/bench_mesh.py [--mesh PATH] [--repeats 5] [--threads 2]
    python scripts/bench_mesh.py --texture-size 64 --view-size 64 --repeats 1   # a quick check
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from shared_fixtures import find_fixture

from sync_splat.bridges.mesh import MeshBridgeConfig
from sync_splat.codec import PixelCodec
from sync_splat.errors import InputError, one_line_errors
from sync_splat.render.mesh import Backend
from sync_splat.scene.mesh import MeshAsset


def sphere_mesh(subdivisions: int = 5) -> MeshAsset:
    """An icosphere (20 480 faces at 5 subdivisions) with xatlas UVs."""
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    return MeshAsset.from_arrays(sphere.vertices, sphere.faces, None)


@dataclass(frozen=True)
class BenchMesh:
    """Time one sampling step of the mesh bridge (f and g, the per-view sums of g apart) at the paper's sizes."""

    mesh: Path | None = None
    """Mesh to texture; None: the clutch_bag.obj fixture, or a generated sphere when it is absent."""
    texture_size: int = 1536
    """Side of the latent texture (the paper: 1536)."""
    view_size: int = 768
    """Side of the views in image pixels (the paper: 768, i.e. 96 x 96 latents)."""
    downsample: int = 8
    """Image-to-latent factor (SD's VAE: 8)."""
    channels: int = 4
    """Latent channels (SD: 4)."""
    repeats: int = 5
    """Timed steps (after one warm-up); the median is reported."""
    threads: int | None = None
    """torch CPU threads; None keeps torch's default."""
    back_projection_steps: int = MeshBridgeConfig.back_projection_steps
    """Back-projection steps of g (the bridge's default; 0: the plain weighted average)."""
    backend: Backend = "auto"
    """Mesh rasteriser."""
    device: str = "auto"
    """Device of the bridge and the latents ("auto": CUDA when available)."""
    sphere_subdivisions: int = 5
    """Subdivisions of the generated sphere used when there is no mesh (5: 20 480 faces)."""

    def main(self) -> dict[str, float]:
        """Time the bridge, print the table and the RESULT line; returns the medians per phase and the setup."""
        if min(self.texture_size, self.view_size, self.downsample, self.channels, self.repeats) < 1:
            raise InputError("bench_mesh: the sizes, --channels and --repeats must be positive")
        if self.back_projection_steps < 0:
            raise InputError(
                f"bench_mesh: --back-projection-steps must be non-negative, got {self.back_projection_steps}"
            )
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        path = self.mesh or find_fixture("clutch_bag.obj")
        start = time.perf_counter()
        mesh = MeshAsset.load(path) if path is not None else sphere_mesh(self.sphere_subdivisions)
        load_s = time.perf_counter() - start
        config = MeshBridgeConfig(
            view_size=self.view_size, texture_size=self.texture_size, backend=self.backend, device=self.device,
            back_projection_steps=self.back_projection_steps,
        )  # fmt: skip
        start = time.perf_counter()
        # f and g read only the codec's shape: channels, downsampling and the view size.
        codec = PixelCodec(native_size=self.view_size, latent_channels=self.channels, downsample=self.downsample)
        bridge = config.setup(codec, mesh)
        setup_s = time.perf_counter() - start
        device = bridge.device
        generator = torch.Generator(device=device).manual_seed(0)
        x = torch.randn((bridge.num_views, *bridge.instance_shape), generator=generator, device=device)
        z = torch.randn(bridge.canonical_shape, generator=generator, device=device)

        def timed(function, *args):  # noqa: ANN001, ANN202
            if device.type == "cuda":
                torch.cuda.synchronize()
            begin = time.perf_counter()
            out = function(*args)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out, time.perf_counter() - begin

        times: dict[str, list[float]] = {"f: project": [], "g: unproject": [], "of which g's per-view sums": []}
        for repeat in range(self.repeats + 1):
            _, sums_s = timed(bridge.unproject_sums, x)
            z, unproject_s = timed(bridge.unproject, x)
            _, project_s = timed(bridge.project, z, x)
            if repeat > 0:  # the first step warms caches up
                for key, value in zip(times, (project_s, unproject_s, sums_s), strict=True):
                    times[key].append(value)
        medians = {key: statistics.median(values) for key, values in times.items()}
        per_step = medians["f: project"] + medians["g: unproject"]

        name = path.name if path is not None else "icosphere (generated)"
        print(f"mesh: {name}, {mesh.num_faces} faces; device: {device}, torch threads: {torch.get_num_threads()}")
        print(f"texture {bridge.canonical_shape}, views {bridge.num_views} x {bridge.instance_shape}, "
              f"{self.back_projection_steps} back-projection steps; medians of {self.repeats} steps after one "
              "warm-up")  # fmt: skip
        print()
        print("| phase | seconds |")
        print("|---|---|")
        print(f"| load mesh (once) | {load_s:.3f} |")
        print(f"| bridge setup: rasterise, bake, flood (once) | {setup_s:.3f} |")
        for key, value in medians.items():
            print(f"| {key}, per step | {value:.4f} |")
        print(f"| **f + g per step** | **{per_step:.4f}** |")
        print(f"RESULT seconds_per_step={per_step:.6f} setup_s={setup_s:.6f}")
        return {**medians, "per step": per_step, "setup": setup_s}


def main() -> None:
    settings = tyro.cli(BenchMesh)
    with one_line_errors("bench_mesh"):
        settings.main()


if __name__ == "__main__":
    main()
