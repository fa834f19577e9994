"""`texture_mesh`, the pipeline behind `sync-splat mesh`: prior on CPU, every output written once, never overwritten,
the input left alone; the clutch-bag fixture textures in seconds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from sync_splat.apps.run_record import RunRecord
from sync_splat.apps.texture_mesh import OUTPUT_NAMES, PRIOR_VIEW_SIZE, MeshTextureConfig, texture_mesh
from sync_splat.bridges.mesh import MeshBridgeConfig
from sync_splat.errors import InputError

SMALL = MeshBridgeConfig(view_size=32, texture_size=64, rgb_texture_size=64, device="cpu")


@pytest.fixture
def box_obj(tmp_path: Path) -> Path:
    """A box without UVs (xatlas makes them), as an OBJ."""
    path = tmp_path / "input" / "box.obj"
    path.parent.mkdir()
    trimesh.creation.box(extents=(1.5, 1.0, 0.6)).export(path)
    return path


def test_texture_mesh_writes_every_output_and_they_agree(box_obj: Path, tmp_path: Path) -> None:
    before = hashlib.sha256(box_obj.read_bytes()).hexdigest()
    config = MeshTextureConfig(prompt="terrazzo", steps=4, bridge=SMALL)
    result = texture_mesh(config, box_obj, tmp_path / "out", show_progress=False)

    names = [*OUTPUT_NAMES, "run.json", "delivered.npz"]
    assert [p.name for p in result.paths] == names
    assert all(p.is_file() for p in result.paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    record = RunRecord.load(result.paths[-2])
    assert (record.kind, record.source, record.settings["prompt"]) == ("mesh", str(box_obj), "terrazzo")
    assert len(record.cameras) == 10 and record.cameras.size == (32, 32) and record.phases["calls"]["denoise"] == 4
    torch.testing.assert_close(record.delivered_views(), result.views.clamp(0, 1), atol=1 / 65535, rtol=0)
    assert hashlib.sha256(box_obj.read_bytes()).hexdigest() == before
    assert result.texture.shape == (3, 64, 64) and result.views.shape == result.renders.shape == (10, 3, 32, 32)

    loaded = trimesh.load(result.paths[0], process=False)
    image = np.asarray(loaded.visual.material.image.convert("RGB"))
    expected = (result.texture.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(image, expected)
    (glb_geometry,) = trimesh.load(result.paths[3]).geometry.values()
    assert glb_geometry.visual.material.baseColorTexture.size == (64, 64)
    # The exported texture, rendered from the sampling cameras, shows what the views showed on the mesh.
    mesh_pixels = (result.renders < 1).any(1, keepdim=True).expand_as(result.views)
    assert (result.renders - result.views).abs()[mesh_pixels].mean() < 0.05


def test_texture_mesh_never_overwrites_and_rejects_bad_meshes(box_obj: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "views.png").write_bytes(b"keep me")
    config = MeshTextureConfig(steps=1, bridge=SMALL)
    with pytest.raises(InputError, match="already exist"):
        texture_mesh(config, box_obj, out, show_progress=False)
    assert (out / "views.png").read_bytes() == b"keep me"
    with pytest.raises(InputError, match="no such mesh file"):
        texture_mesh(config, tmp_path / "absent.obj", tmp_path / "other", show_progress=False)
    with pytest.raises(InputError, match="preset"):
        texture_mesh(
            MeshTextureConfig(prompt="a dragon", bridge=SMALL), box_obj, tmp_path / "other", show_progress=False
        )
    assert not (tmp_path / "other").exists()


def test_the_clutch_bag_textures_on_cpu_with_the_prior(tmp_path: Path, shared_fixture) -> None:
    path = shared_fixture("clutch_bag.obj")
    config = MeshTextureConfig(prompt="marble", steps=30, bridge=MeshBridgeConfig(
        view_size=32, texture_size=128, rgb_texture_size=128, device="cpu"))  # fmt: skip
    result = texture_mesh(config, path, tmp_path / "bag", show_progress=False)
    assert all(p.is_file() for p in result.paths)
    mesh_pixels = (result.renders < 1).any(1, keepdim=True).expand_as(result.views)
    assert mesh_pixels.float().mean() > 0.1
    assert (result.renders - result.views).abs()[mesh_pixels].mean() < 0.05
    # A marble texture is not flat: the texture's colours vary.
    assert result.texture.std(dim=(1, 2)).mean() > 0.02


@pytest.mark.slow
def test_texture_mesh_runs_stable_diffusion_with_controlnet_depth(box_obj: Path, tmp_path: Path, tiny_sd) -> None:
    """The latent path: 4-channel latent texture, views 8x smaller than their images, depth for the ControlNet and
    view suffixes for the prompts, on tiny random SD + ControlNet folders (tests/tiny_sd.py)."""
    from sync_splat.denoisers.stable_diffusion import StableDiffusionDenoiser, StableDiffusionDenoiserConfig

    models = tiny_sd
    sd = StableDiffusionDenoiserConfig(
        model=str(models.model), controlnet=str(models.controlnet), dtype="fp32", device="cpu", guidance_scale=15.5
    )
    config = MeshTextureConfig(
        prompt="a wooden box", denoiser="sd", steps=2, sd=sd,
        bridge=MeshBridgeConfig(view_size=64, texture_size=32, rgb_texture_size=64, device="cpu"),
    )  # fmt: skip
    prompts: list[str] = []
    original = StableDiffusionDenoiser.prompt_embeddings

    def record(self: StableDiffusionDenoiser, batch: list[str]) -> torch.Tensor:
        prompts.extend(batch)
        return original(self, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StableDiffusionDenoiser, "prompt_embeddings", record)
        result = texture_mesh(config, box_obj, tmp_path / "out", show_progress=False)
    assert result.texture.shape == (3, 64, 64) and result.views.shape == (10, 3, 64, 64)
    assert all(p.is_file() for p in result.paths)
    assert {"a wooden box, front view", "a wooden box, side view", "a wooden box, back view"} <= set(prompts)


def test_prior_views_default_to_twice_its_native_size() -> None:
    """With the prior and no view size given, views are 128 pixels (a 256-pixel texture); SD keeps its native size,
    and a size the user gives is kept."""
    assert MeshTextureConfig().bridge_config().view_size == PRIOR_VIEW_SIZE == 128
    assert MeshTextureConfig(denoiser="sd").bridge_config().view_size is None
    given = MeshTextureConfig(bridge=MeshBridgeConfig(view_size=32))
    assert given.bridge_config().view_size == 32
