"""`sync-splat eval` and the run record it reads: the CLIP scores by hand, a tiny restyle measured end to end with a
tiny random CLIP, the fit residual, the held-out path, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from sync_splat.apps.clip_scores import ClipEmbedder, clip_score, direction_consistency, direction_similarity
from sync_splat.apps.evaluate import fit_psnr, heldout_orbit
from sync_splat.apps.restyle import orbit_cameras, render_rgba
from sync_splat.apps.run_record import RunRecord
from sync_splat.cli import entrypoint
from sync_splat.scene.camera_paths import read_camera_path
from sync_splat.scene.cameras import OPENGL_TO_OPENCV, Cameras
from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.gaussians import GaussianScene
from sync_splat.scene.up_axis import UpAxis, stand_on

E = torch.eye(4, dtype=torch.float64)
METRICS = (
    "clip_direction_similarity", "clip_direction_consistency", "clip_score", "clip_score_source", "fit_psnr_db",
    "heldout_sharpness", "seconds", "peak_gib",
)  # fmt: skip


# ---- the scores, by hand ---------------------------------------------------------------------------------------------


def test_direction_similarity_is_one_when_each_frame_moves_as_the_captions_do() -> None:
    source_caption, target_caption = E[0], (E[1] + E[2]) / math.sqrt(2)
    source_frames, restyled_frames = torch.stack([E[0], E[0]]), torch.stack([target_caption, target_caption])
    assert direction_similarity(source_frames, restyled_frames, source_caption, target_caption) == pytest.approx(1.0)
    # Embeddings are made unit length first: their scale does not matter.
    scaled = direction_similarity(3 * source_frames, 0.5 * restyled_frames, 7 * source_caption, target_caption)
    assert scaled == pytest.approx(1.0)
    # Frames that move the other way score -1.
    assert direction_similarity(restyled_frames, source_frames, source_caption, target_caption) == pytest.approx(-1.0)


def test_direction_similarity_by_hand() -> None:
    """Image shift e1 - e0, text shift (e0 + e2) / sqrt(2) - e0: cos = (1 - 1/sqrt2) / (sqrt2 * sqrt(2 - sqrt2))."""
    text_shift_norm = math.sqrt(2 - math.sqrt(2))
    expected = (1 - 1 / math.sqrt(2)) / (math.sqrt(2) * text_shift_norm)
    score = direction_similarity(E[0:1], E[1:2], E[0], (E[0] + E[2]) / math.sqrt(2))
    assert score == pytest.approx(expected) and expected == pytest.approx(0.2706, abs=1e-4)


def test_direction_consistency_by_hand() -> None:
    frames = torch.stack([E[0], E[1], (E[1] + E[2]) / math.sqrt(2)])
    assert direction_consistency(frames, frames) == pytest.approx(1.0)  # identical steps
    assert direction_consistency(frames, 5 * frames) == pytest.approx(1.0)  # scale does not matter
    # Steps e1 - e0 (source) and e3 - e0 (restyled): cos = 1 / (sqrt2 sqrt2) = 0.5; one pair of frames.
    assert direction_consistency(torch.stack([E[0], E[1]]), torch.stack([E[0], E[3]])) == pytest.approx(0.5)
    # Mean over pairs: one identical step (1) and one orthogonal one (0).
    source, restyled = torch.stack([E[0], E[1], E[2]]), torch.stack([E[0], E[1], E[3]])
    assert direction_consistency(source, restyled) == pytest.approx((1.0 + 0.5) / 2)


def test_clip_score_by_hand() -> None:
    images = torch.stack([E[0], E[0] + E[1], -E[2]])
    assert clip_score(images, 2 * E[0]) == pytest.approx((1 + 1 / math.sqrt(2) + 0) / 3)


def test_tiny_clip_embeds_frames_and_captions(tiny_clip: Path) -> None:
    clip = ClipEmbedder(str(tiny_clip), torch.device("cpu"))
    frames = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    images, texts = clip.images(frames), clip.texts(["a photo of a scene", "marble"])
    assert images.shape == (3, 16) and texts.shape == (2, 16)
    assert torch.equal(clip.images(frames), images)  # deterministic
    assert not torch.allclose(images[0], images[1]) and not torch.allclose(texts[0], texts[1])


# ---- a tiny restyle, measured ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def restyled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`sync-splat restyle` of a thinned demo scene with the prior: 2 ring views and a top view, 2 steps."""
    root = tmp_path_factory.mktemp("restyle")
    scene = make_demo_scene()
    every = slice(None, None, 10)
    fields = ("means", "quats_wxyz", "log_scales", "opacity_logits", "sh")
    small = dataclasses.replace(scene, **{name: getattr(scene, name)[every] for name in fields})
    small = dataclasses.replace(small, log_scales=small.log_scales + 0.8)
    source = small.save(root / "scene.ply")
    entrypoint(["restyle", str(source), "--out", str(root / "r.ply"), "--steps", "2", "--views", "2"])
    return root / "r.ply"


def test_restyle_writes_its_run_record(restyled: Path) -> None:
    record = RunRecord.load(restyled.with_name("r_run.json"))
    assert record.kind == "restyle" and record.source == str(restyled.with_name("scene.ply"))
    assert record.settings == {
        "prompt": "marble", "denoiser": "prior", "steps": 2, "case": 2, "sync_until": 0.8, "method": "ddim",
        "seed": 0, "views": 2,
    }  # fmt: skip
    assert len(record.cameras) == 3 and record.cameras.size == (64, 64)
    assert record.phases["calls"]["denoise"] == 2 and record.phases["total_s"] > 0
    views = record.delivered_views()
    assert views.shape == (3, 3, 64, 64) and views.min() >= 0 and views.max() <= 1 and views.std() > 0.01


def test_eval_measures_a_restyle_end_to_end(
    restyled: Path, tiny_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    entrypoint(["eval", str(restyled), "--clip", str(tiny_clip), "--frames", "6", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(math.isfinite(metrics[key]) for key in METRICS), {key: metrics[key] for key in METRICS}
    assert metrics["source"] == str(restyled.with_name("scene.ply")) and metrics["target_prompt"] == "marble"
    assert metrics["frames"] == 6 and metrics["path"] == "orbit between the 2 instance views"
    assert -1 <= metrics["clip_direction_similarity"] <= 1 and 10 < metrics["fit_psnr_db"] < 120
    assert metrics["phases"]["calls"]["denoise"] == 2
    strip = iio.imread(out / "strip.png")
    assert strip.shape == (2 * 64, 6 * 64, 3)
    assert np.abs(strip[:64].astype(int) - strip[64:].astype(int)).mean() > 5  # source above, restyled below
    printed = capsys.readouterr().out
    assert "CLIP direction similarity" in printed and "fit residual PSNR" in printed


def test_fit_residual_is_high_for_views_the_scene_renders_and_drops_for_others(restyled: Path, tmp_path: Path) -> None:
    record = RunRecord.load(restyled.with_name("r_run.json"))
    scene, cameras = GaussianScene.load(restyled), record.cameras
    image, alpha = render_rgba(scene, cameras, background=0.0)
    rendered = torch.where(alpha > 0, image / alpha.clamp_min(1e-12), 0.5).clamp(0, 1)  # the colours behind alpha
    # Stored as the record stores views (16 bits), then read back.
    again = dataclasses.replace(record, delivered="views.npz", path=tmp_path / "run.json")
    again.save(tmp_path / "run.json", tmp_path / "views.npz", rendered)
    exact = fit_psnr(scene, cameras, RunRecord.load(tmp_path / "run.json").delivered_views())
    noisy = rendered + 0.05 * torch.randn(rendered.shape, generator=torch.Generator().manual_seed(0))
    perturbed = fit_psnr(scene, cameras, noisy.clamp(0, 1))
    actual = fit_psnr(scene, cameras, record.delivered_views())
    assert exact > 90 and perturbed < 30 and actual < exact


def test_heldout_orbit_lies_between_the_instance_views(restyled: Path) -> None:
    record = RunRecord.load(restyled.with_name("r_run.json"))
    source = GaussianScene.load(record.source)
    centre = source.bounding_sphere(trim=0.01)[0]
    up = UpAxis(record.up, "record")
    fov = math.degrees(2 * math.atan(32 / float(record.cameras.Ks[0, 0, 0])))
    # Without the offset, the same construction gives the instance ring: the held-out orbit is the run's rig.
    ring = stand_on(orbit_cameras(source, 2, 64, fov), centre, up)
    torch.testing.assert_close(ring.c2w, record.cameras.c2w, atol=1e-4, rtol=0)
    heldout = heldout_orbit(source, 2, 64, fov, up, frames=5)  # rounds up to 6 frames, 60 degrees apart
    assert len(heldout) == 6

    def azimuths(cameras: Cameras) -> torch.Tensor:
        """Unit directions from the centre to the cameras, in the plane across the up direction."""
        offsets = cameras.c2w[:, :3, 3] - centre
        vertical = torch.tensor(record.up, dtype=offsets.dtype)
        return torch.nn.functional.normalize(offsets - (offsets @ vertical)[:, None] * vertical, dim=-1)

    ring_views = record.cameras.subset([0, 1])
    angles = torch.rad2deg(torch.acos((azimuths(heldout) @ azimuths(ring_views).T).clamp(-1, 1)))
    assert float(angles.min()) == pytest.approx(30.0, abs=0.01)  # half a step from the nearest ring view
    # Frames at 30, 90, ..., 330 degrees from the first ring view; the ring views at 0 and 180.
    nearest = angles.min(dim=1).values.sort().values
    torch.testing.assert_close(nearest, torch.tensor([30.0, 30, 30, 30, 90, 90]), atol=0.01, rtol=0)
    # The same elevation and distance as the ring: only the azimuths differ.
    offsets = heldout.c2w[:, :3, 3] - centre
    ring_offset = ring_views.c2w[0, :3, 3] - centre
    torch.testing.assert_close(offsets.norm(dim=-1), ring_offset.norm().expand(6))
    vertical = torch.tensor(record.up, dtype=offsets.dtype)
    torch.testing.assert_close(offsets @ vertical, (ring_offset @ vertical).expand(6), atol=1e-5, rtol=0)


@pytest.mark.gpu
def test_eval_on_cuda_agrees_with_the_cpu(restyled: Path, tiny_clip: Path, tmp_path: Path) -> None:
    """gsplat and CUDA CLIP against the pure-torch renderer and CPU CLIP: the same numbers, up to rasteriser detail."""
    metrics = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        args = ["--clip", str(tiny_clip), "--frames", "4", "--device", device, "--out", str(out)]
        entrypoint(["eval", str(restyled), *args])
        metrics[device] = json.loads((out / "metrics.json").read_text())
    cpu, cuda = metrics["cpu"], metrics["cuda"]
    for key in ("clip_direction_similarity", "clip_direction_consistency", "clip_score", "clip_score_source"):
        assert cuda[key] == pytest.approx(cpu[key], abs=0.05), key
    assert cuda["fit_psnr_db"] == pytest.approx(cpu["fit_psnr_db"], abs=1.0)
    assert cuda["heldout_sharpness"] == pytest.approx(cpu["heldout_sharpness"], rel=0.1)


def write_camera_path(cameras: Cameras, path: Path, fov_deg: float) -> Path:
    """`cameras` as a nerfstudio camera path (OpenGL camera_to_world, vertical fov)."""
    c2w = cameras.c2w.double() @ OPENGL_TO_OPENCV.double()
    frames = [{"camera_to_world": m.flatten().tolist(), "fov": fov_deg, "aspect": 1.5} for m in c2w]
    data = {"camera_type": "perspective", "render_width": 96, "render_height": 64, "camera_path": frames}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_a_camera_path_reads_back_as_its_cameras(tmp_path: Path) -> None:
    cameras = Cameras.orbit_rig((0.0, 0.5, 0.0), 1.0, num_azimuths=4, elevations_deg=(10.0,), top_views=0)
    read = read_camera_path(write_camera_path(cameras, tmp_path / "path.json", fov_deg=60.0))
    torch.testing.assert_close(read.c2w, cameras.c2w, atol=1e-6, rtol=0)
    assert read.size == (96, 64)
    focal = 32 / math.tan(math.radians(30))
    torch.testing.assert_close(read.Ks[0], torch.tensor([[focal, 0, 48], [0, focal, 32], [0, 0, 1.0]]))


def test_the_datasets_camera_path_is_the_held_out_path(restyled: Path, tiny_clip: Path, tmp_path: Path) -> None:
    """A run whose record names a dataset with camera_paths/*.json is measured along that path, its frames spread
    evenly and sized to the instance views' long side."""
    for name in ("r.ply", "r_delivered.npz", "scene.ply"):
        shutil.copy(restyled.with_name(name), tmp_path / name)
    record = json.loads(restyled.with_name("r_run.json").read_text())
    source = GaussianScene.load(restyled.with_name("scene.ply"))
    centre, radius = source.bounding_sphere(trim=0.01)
    path_cameras = Cameras.orbit_rig(centre, radius, num_azimuths=10, elevations_deg=(25.0,), top_views=0)
    path = write_camera_path(path_cameras, tmp_path / "data" / "camera_paths" / "turn.json", fov_deg=50.0)
    (tmp_path / "r_run.json").write_text(json.dumps({**record, "dataset": str(tmp_path / "data")}))
    entrypoint(["eval", str(tmp_path / "r.ply"), "--clip", str(tiny_clip), "--frames", "4"])
    metrics = json.loads((tmp_path / "r_eval" / "metrics.json").read_text())
    assert metrics["path"] == f"camera path {path}"
    assert (metrics["frames"], metrics["width"], metrics["height"]) == (4, 64, 43)
    assert all(math.isfinite(metrics[key]) for key in METRICS)


def test_a_scene_without_a_run_record_is_measured_on_an_orbit(restyled: Path, tiny_clip: Path, tmp_path: Path) -> None:
    """Given --source and --prompt, eval measures any PLY on the default rig's orbit; the record's measures are null."""
    source, out = restyled.with_name("scene.ply"), tmp_path / "e"
    args = ["--source", str(source), "--prompt", "wood", "--clip", str(tiny_clip), "--resolution", "32"]
    entrypoint(["eval", str(restyled.with_name("scene.ply")), *args, "--frames", "3", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["frames"], metrics["width"], metrics["path"]) == (8, 32, "orbit between the 8 instance views")
    assert metrics["clip_direction_similarity"] == 0.0  # the scene against itself moved nowhere
    assert metrics["clip_direction_consistency"] == pytest.approx(1.0)
    assert all(metrics[key] is None for key in ("fit_psnr_db", "heldout_sharpness", "seconds", "phases"))


# ---- one-line errors ------------------------------------------------------------------------------------------------


def one_error_line(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_input_is_one_line(
    restyled: Path, tiny_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = ["--clip", str(tiny_clip)]
    line = one_error_line(capsys, ["eval", str(tmp_path / "missing.ply"), *clip])
    assert "missing.ply: no such file" in line
    line = one_error_line(capsys, ["eval", str(restyled.with_name("scene.ply")), *clip])
    assert "no run record beside it (scene_run.json)" in line and "--source and --prompt" in line
    line = one_error_line(capsys, ["eval", str(restyled), "--clip", "sync-splat-tests/no-such-clip"])
    assert "--clip sync-splat-tests/no-such-clip: cannot load the CLIP model" in line and "local folder" in line
    broken = tmp_path / "b.ply"
    shutil.copy(restyled, broken)
    (tmp_path / "b_run.json").write_text('{"kind": "restyle"')
    line = one_error_line(capsys, ["eval", str(broken), *clip])
    assert "b_run.json: not a sync-splat run record" in line
    (tmp_path / "taken").mkdir()
    line = one_error_line(capsys, ["eval", str(restyled), *clip, "--out", str(tmp_path / "taken")])
    assert "taken already exists" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.ply", "b_run.json", "taken"]  # nothing written
