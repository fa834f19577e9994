"""`sync-splat view`: what the page sends, one-line errors, Ctrl-C, and what a real browser draws.

The browser tests load the page in headless Chromium (Debian's `chromium`, which `make test` installs where it
can) and look at the screenshot: every scene here is painted in colours that an empty page never shows, so the
colour of the pixels says what drew. They skip, saying why, where no Chromium is installed.
"""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from browser import CHROMIUM, MIN_PIXELS, WINDOW, empty_viser_page, free_port, needs_browser, pure, screenshot, wait_for
from interrupts import ctrl_c_reaches_the_child

from sync_splat.apps.view import InstanceViews, ViewConfig, kind_of, open_page
from sync_splat.apps.view_content import load_splats, panorama_sphere_glb, splat_covariances
from sync_splat.errors import InputError
from sync_splat.functional.equirect import direction_to_lonlat
from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.gaussians import GaussianScene
from sync_splat.scene.splat_file import write_splat

RED, GREEN = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)


def coloured(scene: GaussianScene, rgb: tuple[float, float, float]) -> GaussianScene:
    return scene.with_colors(torch.tensor([rgb]).expand(scene.num_gaussians, 3))


@pytest.fixture
def page_of() -> Iterator[Callable[..., object]]:
    """`page_of(path, **config)`: an open page on a free port, closed after the test."""
    pages = []

    def open_one(path: Path, instances: InstanceViews | None = None, **config: object):
        page = open_page(path, ViewConfig(port=free_port(), **config), instances=instances)
        pages.append(page)
        return page

    yield open_one
    for page in pages:
        page.close()


# ---- what the page sends ----------------------------------------------------------------------------------------


def test_kind_of_tells_splats_meshes_and_panoramas_apart(tmp_path: Path) -> None:
    import trimesh

    splats = make_demo_scene().save(tmp_path / "scene.ply")
    trimesh.creation.box().export(tmp_path / "box.ply")
    (tmp_path / "pano.png").write_bytes(b"")
    write_splat(make_demo_scene(), tmp_path / "web.splat")
    assert kind_of(splats) == "splats" and kind_of(tmp_path / "web.splat") == "splats"
    assert kind_of(tmp_path / "box.ply") == "mesh"
    assert kind_of(tmp_path / "pano.png") == "panorama"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="does not show .txt"):
        kind_of(tmp_path / "notes.txt")


def test_big_scenes_send_one_random_subset_for_both_colour_sets(tmp_path: Path) -> None:
    scene = make_demo_scene()
    # Each Gaussian's colour encodes its index, differently in the two files.
    index = torch.arange(scene.num_gaussians, dtype=torch.float32) / scene.num_gaussians
    restyled = scene.with_colors(torch.stack([index, torch.zeros_like(index), torch.zeros_like(index)], dim=1))
    source = scene.with_colors(torch.stack([torch.zeros_like(index), index, torch.zeros_like(index)], dim=1))
    content = load_splats(
        restyled.save(tmp_path / "restyled.ply"),
        ViewConfig(before=source.save(tmp_path / "source.ply"), max_gaussians=1000),
    )
    assert len(content.centres) == 1000 and content.total == scene.num_gaussians
    assert f"of {scene.num_gaussians:,}" in content.left_out and "--max-gaussians" in content.left_out
    np.testing.assert_allclose(content.colours["restyled"][:, 0], content.colours["source"][:, 1], atol=1e-6)
    sent = np.round(content.colours["restyled"][:, 0] * scene.num_gaussians).astype(int)
    assert len(set(sent.tolist())) == 1000
    np.testing.assert_allclose(content.centres, scene.means[sent].numpy(), atol=1e-6)
    assert not np.array_equal(sent, np.arange(1000))  # a spread-out subset, not the file's first Gaussians


def test_non_finite_gaussians_are_not_sent(tmp_path: Path) -> None:
    # PLY files with non-finite values are refused when read; a .splat file (or a checkpoint) may still hold one.
    path = tmp_path / "scene.splat"
    count = write_splat(make_demo_scene(), path)
    records = np.fromfile(path, dtype=np.float32).reshape(count, 8)
    records[3, 1] = np.inf
    records.tofile(path)
    content = load_splats(path, ViewConfig())
    assert len(content.centres) == count - 1 and "1 with non-finite values left out" in content.left_out
    assert np.isfinite(content.centres).all() and np.isfinite(content.covariances).all()


def test_covariances_rotate_the_scales() -> None:
    quarter_turn_about_z = torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]])
    log_scales = torch.tensor([[1.0, 2.0, 3.0]]).log()
    covariance = splat_covariances(quarter_turn_about_z, log_scales, extent=1.0)[0]
    # The x axis (scale 1) turns onto y and the y axis (scale 2) onto x.
    np.testing.assert_allclose(covariance, np.diag([4.0, 1.0, 9.0]), atol=1e-9)
    flat = splat_covariances(torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[0.0, 0.0, -math.inf]]), extent=1.0)[0]
    assert np.linalg.eigvalsh(flat).min() > 0  # factorable: viser stores a Cholesky factor


def test_the_panorama_sphere_puts_each_pixel_in_its_direction() -> None:
    import trimesh

    glb = panorama_sphere_glb(np.zeros((8, 16, 3), np.uint8), radius=2.0, rows=8)
    mesh = next(iter(trimesh.load(trimesh.util.wrap_as_stream(glb), file_type="glb").geometry.values()))
    vertices = torch.from_numpy(np.asarray(mesh.vertices)).double()
    uv = torch.from_numpy(np.asarray(mesh.visual.uv)).double()
    assert torch.allclose(vertices.norm(dim=-1), torch.full((len(vertices),), 2.0, dtype=torch.float64), atol=1e-5)
    # The viewer's frame is the panorama frame with x mirrored: undo that, then read the panorama's longitude and
    # latitude off each vertex and compare them with where its UV samples the image (v up from the bottom row).
    lon, lat = direction_to_lonlat(vertices * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    inner = (lat.abs() < math.pi / 2 - 1e-6) & (lon.abs() < math.pi - 1e-6)  # the poles and the seam are ambiguous
    assert inner.sum() > len(vertices) // 2
    torch.testing.assert_close(uv[inner, 0], (lon[inner] + math.pi) / (2 * math.pi), rtol=0, atol=1e-5)
    torch.testing.assert_close(uv[inner, 1], lat[inner] / math.pi + 0.5, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("make", "config", "message"),
    [
        ("wide.png", {}, "twice as wide"),
        ("scene.ply", {"before": "other.ply"}, "same places"),
        ("scene.ply", {"host": "no-such-host.invalid"}, "cannot listen"),
        ("box.glb", {"before": "scene.ply"}, "splat scenes only"),
        ("missing.ply", {}, "no such file"),
    ],
)
def test_bad_input_is_refused_before_the_server_starts(
    tmp_path: Path, make: str, config: dict[str, str], message: str
) -> None:
    import trimesh

    make_demo_scene().save(tmp_path / "scene.ply")
    make_demo_scene(seed=1).save(tmp_path / "other.ply")
    iio.imwrite(tmp_path / "wide.png", np.zeros((10, 30, 3), np.uint8))
    trimesh.creation.box().export(tmp_path / "box.glb")
    config = {k: (tmp_path / v if k == "before" else v) for k, v in config.items()}
    with pytest.raises(InputError, match=message):
        open_page(tmp_path / make, ViewConfig(port=free_port(), **config))


def test_the_command_line_refuses_in_one_line_and_stops_on_ctrl_c_in_one_line(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "sync_splat.cli", "view", str(tmp_path / "missing.ply")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no such file" in bad.stderr

    path = make_demo_scene().save(tmp_path / "scene.ply")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_splat.cli", "view", str(path), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches_the_child,
    )  # fmt: skip
    try:
        line = process.stdout.readline()  # printed once the page is served
        assert f"http://127.0.0.1:{port}" in line and f"{make_demo_scene().num_gaussians:,} Gaussians" in line
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr.strip().splitlines() == ["sync-splat: interrupted; nothing was written"]
    assert stdout.strip() == ""


def test_a_restyled_scene_shows_its_run_records_cameras_and_views(tmp_path: Path, page_of) -> None:
    """The run record beside a restyled PLY gives the page its instance frustums with the delivered views; without a
    record, or with one in another frame, the page shows the scene alone."""
    import json

    from sync_splat.cli import entrypoint

    source = make_demo_scene().save(tmp_path / "scene.ply")
    out = tmp_path / "restyled.ply"
    entrypoint(["restyle", str(source), "--out", str(out), "--steps", "2", "--views", "3"])
    recorded = InstanceViews.recorded_for(out)
    assert recorded is not None and recorded.images.shape == (4, 3, 64, 64)  # 3 ring views and the top one
    record = json.loads((tmp_path / "restyled_run.json").read_text())
    torch.testing.assert_close(recorded.c2w, torch.tensor(record["cameras"]["c2w"]))
    assert page_of(out).summary.endswith(", 4 instance views")
    record["frame"] = {"transform": torch.eye(4)[:3].tolist(), "scale": 2.0}  # a plugin run moved into a dataset
    (tmp_path / "restyled_run.json").write_text(json.dumps(record))
    assert InstanceViews.recorded_for(out) is None
    (tmp_path / "restyled_run.json").unlink()
    assert InstanceViews.recorded_for(out) is None
    assert "instance views" not in page_of(out).summary


@pytest.mark.slow
def test_restyle_view_serves_the_result_after_writing_it(tmp_path: Path) -> None:
    source = make_demo_scene().save(tmp_path / "scene.ply")
    out = tmp_path / "restyled.ply"
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_splat.cli", "restyle", str(source), "--out", str(out), "--view",
         "--steps", "3", "--views", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches_the_child,
    )  # fmt: skip
    try:
        lines = [process.stdout.readline()]  # a progress bar, the files written, then the page's address
        while lines[-1] and "http://" not in lines[-1]:
            lines.append(process.stdout.readline())
        assert any(line.startswith(f"wrote {out}") for line in lines), lines
        assert "restyled and source colours" in lines[-1] and "http://127.0.0.1:" in lines[-1], lines
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith(f"sync-splat: interrupted after writing {out}")
    assert GaussianScene.load(out).num_gaussians == make_demo_scene().num_gaussians


# ---- what a browser draws ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_page() -> np.ndarray:
    """A screenshot of a viser page with nothing in its scene: what no content looks like."""
    if CHROMIUM is None:
        pytest.skip("no Chromium installed")
    return empty_viser_page()


@needs_browser
@pytest.mark.slow
def test_browser_draws_the_splats_and_the_toggle_switches_their_colours(
    tmp_path: Path, page_of, empty_page: np.ndarray
) -> None:
    scene = make_demo_scene()
    restyled = coloured(scene, RED).save(tmp_path / "restyled.ply")
    source = coloured(scene, GREEN).save(tmp_path / "source.ply")
    page = page_of(restyled, before=source)

    def shows(on: str, off: str) -> Callable[[np.ndarray], bool]:
        """The scene drew in colour `on`, and nothing in colour `off` beyond what an empty page has."""
        return lambda image: (
            pure(image, on).sum() > MIN_PIXELS + pure(empty_page, on).sum()
            and pure(image, off).sum() <= pure(empty_page, off).sum()
        )

    assert shows("r", off="g")(screenshot(page.url, until=shows("r", off="g")))  # the source colours: sent, hidden
    page.controls["Colours"].value = "source"  # as the Colours control does when the user picks it
    wait_for(lambda: page.showing["Colours"] == "source", "the Colours control to take effect")
    assert shows("g", off="r")(screenshot(page.url, until=shows("g", off="r")))


@needs_browser
@pytest.mark.slow
def test_browser_draws_the_textured_mesh_and_the_instance_views(
    tmp_path: Path, page_of, empty_page: np.ndarray
) -> None:
    import trimesh
    from PIL import Image

    box = trimesh.creation.box((1.0, 1.0, 1.0))
    magenta = np.zeros((8, 8, 3), np.uint8)
    magenta[:, :, [0, 2]] = 255
    uv = np.random.default_rng(0).uniform(0.1, 0.9, (len(box.vertices), 2))
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(magenta))
    box.export(tmp_path / "box.obj")  # with box.mtl and the texture beside it
    # Two instance cameras looking at the box from the viewer's side, each showing a cyan view.
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[:, :3, 3] = torch.tensor([[-0.5, 0.5, 1.6], [0.5, 0.5, 1.6]])
    c2w[:, :3, :3] = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # OpenCV axes looking along -z
    cyan = torch.zeros(2, 3, 16, 16)
    cyan[:, 1:] = 1.0
    instances = InstanceViews(c2w=c2w, fov_y=torch.full((2,), 1.0), images=cyan)
    page = page_of(tmp_path / "box.obj", instances=instances)

    image = screenshot(page.url, until=lambda image: pure(image, "rb").sum() > MIN_PIXELS)
    assert pure(image, "rb").sum() > MIN_PIXELS + pure(empty_page, "rb").sum()
    assert pure(image, "gb").sum() > pure(empty_page, "gb").sum() + MIN_PIXELS // 4  # the views on the frustums


@needs_browser
@pytest.mark.slow
def test_browser_draws_the_panorama_and_its_cube_faces_the_right_way_round(
    tmp_path: Path, page_of, empty_page: np.ndarray
) -> None:
    from sync_splat.bridges.panorama import export_cube_faces

    # Quadrants of the panorama: north-west red, north-east blue, south-west green, south-east red+green.
    height = 64
    panorama = np.zeros((height, 2 * height, 3), np.uint8)
    panorama[: height // 2, :height, 0] = 255
    panorama[: height // 2, height:, 2] = 255
    panorama[height // 2 :, :height, 1] = 255
    panorama[height // 2 :, height:, :2] = 255
    iio.imwrite(tmp_path / "pano.png", panorama)
    export_cube_faces(torch.from_numpy(panorama).permute(2, 0, 1) / 255.0, tmp_path / "pano.png")
    page = page_of(tmp_path / "pano.png")

    # The camera looks at longitude 0 on the horizon: west (negative longitudes) on the left, north on top. The
    # control panels (this page's, and the empty page's blue buttons) cover the top right, so look left of them.
    h, w = WINDOW[1], WINDOW[0]
    regions = {
        "r": (slice(0, h // 2), slice(0, w // 2)),
        "b": (slice(h // 4, h // 2), slice(w // 2, w // 2 + w // 16)),
        "g": (slice(h // 2, h), slice(0, w // 2)),
        "rg": (slice(h // 2, h), slice(w // 2, w)),
    }

    def quadrants_drawn(image: np.ndarray) -> bool:
        return all(pure(image[region], channels).mean() > 0.5 for channels, region in regions.items())

    assert all(pure(empty_page[region], channels).mean() < 0.01 for channels, region in regions.items())
    assert quadrants_drawn(screenshot(page.url, until=quadrants_drawn))  # the sphere
    page.controls["Show"].value = "cube faces"
    wait_for(lambda: page.showing["Show"] == "cube faces", "the Show control to take effect")
    assert quadrants_drawn(screenshot(page.url, until=quadrants_drawn))  # the cube, the same way round
