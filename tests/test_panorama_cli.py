"""The panorama pipeline behind `sync-splat panorama`, run end to end with the exact prior on the CPU: it writes an
equirectangular PNG of the right size (and cube faces), uses a depth map, and never overwrites an output."""

from __future__ import annotations

from dataclasses import replace

import imageio.v3 as iio
import numpy as np
import pytest

from sync_splat.apps.paint_panorama import PanoramaConfig, paint_panorama
from sync_splat.apps.run_record import RunRecord
from sync_splat.errors import InputError

QUICK = PanoramaConfig(prompt="clouds", steps=8, height=16, texel_oversample=1)  # 16 x 32, 6-pixel views


def test_paints_a_png_of_the_right_size(tmp_path) -> None:
    out = tmp_path / "pano.png"
    result = paint_panorama(QUICK, None, out, show_progress=False)
    assert result.paths == (out, tmp_path / "pano_run.json", tmp_path / "pano_delivered.npz")
    record = RunRecord.load(result.paths[1])
    assert (record.kind, record.source, record.settings["views"], len(record.cameras)) == ("panorama", None, 26, 26)
    calls = record.phases["calls"]
    assert calls["denoise"] == 8 and calls["render"] > 0 and calls["fit"] > 0
    views = record.delivered_views()
    assert views.shape == (26, 3, record.cameras.height, record.cameras.width) and views.std() > 0.01
    image = iio.imread(out)
    assert image.shape == (16, 32, 3) and image.dtype == np.uint8
    assert image.std() > 1.0  # a texture, not a flat colour
    assert result.rgb01.shape == (3, 16, 32)


def test_default_panorama_has_four_texels_per_view_pixel() -> None:
    """Native views (64 pixels or latents) and 640 rows: 4 texels per view pixel at 72 degrees, with either model."""
    for denoiser in ("prior", "sd"):
        config = PanoramaConfig(denoiser=denoiser).bridge_config()
        assert config.resolution(native_view_size=64) == (640, 64)
    assert PanoramaConfig(texel_oversample=1).bridge_config().resolution(native_view_size=64) == (160, 64)


def test_refuses_to_overwrite_and_leaves_the_file_alone(tmp_path) -> None:
    out = tmp_path / "pano.png"
    out.write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists"):
        paint_panorama(QUICK, None, out, show_progress=False)
    assert out.read_bytes() == b"precious"

    fresh = tmp_path / "fresh.png"
    (tmp_path / "fresh_up.png").write_bytes(b"face")
    with pytest.raises(InputError, match="fresh_up.png already exists"):
        paint_panorama(QUICK, None, fresh, cube_faces=True, show_progress=False)
    assert not fresh.exists()


def test_depth_map_and_cube_faces(tmp_path) -> None:
    depth = tmp_path / "depth.npy"
    np.save(depth, np.linspace(1.0, 5.0, 16 * 32, dtype=np.float32).reshape(16, 32))
    before = depth.read_bytes()
    out = tmp_path / "room.png"
    result = paint_panorama(QUICK, depth, out, cube_faces=True, show_progress=False)
    assert len(result.paths) == 9 and all(path.exists() for path in result.paths)
    assert RunRecord.load(result.paths[-2]).source == str(depth)
    assert iio.imread(result.paths[1]).shape == (8, 8, 3)  # faces keep the panorama's resolution: width / 4
    assert depth.read_bytes() == before


@pytest.mark.parametrize(
    ("config", "depth", "out", "message"),
    [
        (QUICK, None, "pano.jpg", r"\.png"),
        (QUICK, "missing.npy", "pano.png", "not found"),
        (PanoramaConfig(denoiser="sd"), None, "pano.png", "--depth"),  # fails before looking for weights
        (PanoramaConfig(prompt="a castle", steps=2), None, "pano.png", "preset"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, config, depth, out, message) -> None:
    with pytest.raises(InputError, match=message):
        paint_panorama(config, None if depth is None else tmp_path / depth, tmp_path / out, show_progress=False)
    assert not (tmp_path / out).exists()


@pytest.mark.slow
def test_stable_diffusion_path_with_controlnet_depth(tmp_path, tiny_sd) -> None:
    """Latent canonical space, depth conditions for the ControlNet, ring attention over 26 views, and the RGB
    panorama averaged from decoded views at 8x the latent resolution."""
    config = PanoramaConfig(prompt="a quiet room", denoiser="sd", steps=2)
    sd = replace(config.sd, model=str(tiny_sd.model), controlnet=str(tiny_sd.controlnet), dtype="fp32")
    config = replace(config, sd=replace(sd, device="cpu"))
    depth = tmp_path / "depth.npy"
    np.save(depth, np.linspace(1.0, 5.0, 16 * 32, dtype=np.float32).reshape(16, 32))
    result = paint_panorama(config, depth, tmp_path / "room.png", show_progress=False)
    assert iio.imread(result.paths[0]).shape == (160, 320, 3)  # 20 x 40 latents: matched to 8-latent views at 72
