"""GaussianScene: PLY round trips and layouts, splatfacto checkpoints and runs, and one clear error per bad input.

Every file is generated here (tmp_path); the only file read from outside is the shared Mip-Splatting fixture.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch

from sync_splat.errors import InputError
from sync_splat.scene.gaussians import SH_C0, GaussianScene
from sync_splat.scene.ply import ply_property_names, read_ply

FIELDS = ("means", "quats_wxyz", "log_scales", "opacity_logits", "sh")
DONUT_COUNT = 45624


def random_scene(num_gaussians: int = 50, sh_degree: int = 0, seed: int = 0) -> GaussianScene:
    generator = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return GaussianScene(
        means=torch.randn(num_gaussians, 3, generator=generator),
        quats_wxyz=torch.randn(num_gaussians, 4, generator=generator),
        log_scales=torch.randn(num_gaussians, 3, generator=generator) - 4,
        opacity_logits=torch.randn(num_gaussians, generator=generator),
        sh=torch.randn(num_gaussians, k, 3, generator=generator),
    )


def assert_same(a: GaussianScene, b: GaussianScene) -> None:
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def scene_columns(scene: GaussianScene, normals: bool = True, dtype: str = "<f4") -> dict[str, np.ndarray]:
    """The standard columns of a scene, by hand (not through write_ply), in the standard order."""
    g = scene.num_gaussians
    rest = scene.sh[:, 1:].permute(0, 2, 1).reshape(g, -1)  # channel-major
    values = [scene.means, torch.zeros(g, 3), scene.sh[:, 0], rest, scene.opacity_logits[:, None]]
    values += [scene.log_scales, scene.quats_wxyz]
    table = torch.cat(values, dim=1).numpy()
    columns = {name: table[:, i].astype(dtype) for i, name in enumerate(ply_property_names(scene.sh_degree))}
    if not normals:
        for name in ("nx", "ny", "nz"):
            del columns[name]
    return columns


def write_columns(path: Path, columns: dict[str, np.ndarray], text: bool = False, byte_order: str = "<") -> Path:
    count = len(next(iter(columns.values())))
    rows = np.empty(count, dtype=[(name, np.asarray(values).dtype.str) for name, values in columns.items()])
    for name, values in columns.items():
        rows[name] = values
    plyfile.PlyData([plyfile.PlyElement.describe(rows, "vertex")], text=text, byte_order=byte_order).write(str(path))
    return path


def write_raw(path: Path, header_lines: list[str], data: bytes) -> Path:
    """A PLY with a hand-written header, for headers plyfile would refuse to write."""
    header = "\n".join(["ply", *header_lines, "end_header"]) + "\n"
    path.write_bytes(header.encode("ascii") + data)
    return path


def expect_error(path: Path, *needles: str) -> str:
    with pytest.raises(InputError) as info:
        GaussianScene.load(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert path.name in message, message
    for needle in needles:
        assert needle in message, message
    return message


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- PLY round trips and layouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_save_then_load_is_bit_exact(tmp_path: Path, sh_degree: int) -> None:
    scene = random_scene(sh_degree=sh_degree)
    path = scene.save(tmp_path / "scene.ply")
    loaded = GaussianScene.load(path)
    assert_same(scene, loaded)
    assert loaded.sh_degree == sh_degree
    assert loaded.source == path


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_saved_file_has_the_standard_layout(tmp_path: Path, sh_degree: int) -> None:
    scene = random_scene(sh_degree=sh_degree)
    ply = plyfile.PlyData.read(str(scene.save(tmp_path / "scene.ply")))
    assert ply.byte_order == "<" and not ply.text
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    num_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(num_rest)]
    expected += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in names)
    assert all(np.all(vertex.data[n] == 0) for n in ("nx", "ny", "nz"))
    for name, values in scene_columns(scene).items():  # raw values, in the channel-major order
        assert np.array_equal(vertex.data[name], values), name


@pytest.mark.parametrize("sh_degree", [0, 3])
@pytest.mark.parametrize("normals", [True, False])
@pytest.mark.parametrize("text", [False, True], ids=["binary", "ascii"])
def test_loads_files_written_by_others(tmp_path: Path, sh_degree: int, normals: bool, text: bool) -> None:
    scene = random_scene(sh_degree=sh_degree)
    path = write_columns(tmp_path / "other.ply", scene_columns(scene, normals=normals), text=text)
    assert_same(scene, GaussianScene.load(path))


def test_loads_big_endian_and_double_properties_as_float32(tmp_path: Path) -> None:
    scene = random_scene(sh_degree=1)
    assert_same(scene, GaussianScene.load(write_columns(tmp_path / "be.ply", scene_columns(scene), byte_order=">")))
    loaded = GaussianScene.load(write_columns(tmp_path / "f8.ply", scene_columns(scene, dtype="<f8")))
    assert all(getattr(loaded, name).dtype == torch.float32 for name in FIELDS)
    assert_same(scene, loaded)  # float32 values survive a trip through float64 exactly


def test_f_rest_is_read_and_written_channel_major(tmp_path: Path) -> None:
    # A hand-built degree-1 file: f_rest_j = j, so the red coefficients are 0, 1, 2, green 3, 4, 5, blue 6, 7, 8.
    columns = scene_columns(random_scene(num_gaussians=2, sh_degree=0))
    columns = {**columns, **{f"f_rest_{j}": np.full(2, float(j), dtype="<f4") for j in range(9)}}
    scene = GaussianScene.load(write_columns(tmp_path / "hand.ply", columns))
    assert scene.sh_degree == 1
    expected = torch.tensor([[0.0, 3.0, 6.0], [1.0, 4.0, 7.0], [2.0, 5.0, 8.0]])  # [K - 1, RGB]
    assert torch.equal(scene.sh[0, 1:], expected) and torch.equal(scene.sh[1, 1:], expected)
    ply = plyfile.PlyData.read(str(scene.save(tmp_path / "out.ply")))
    assert [float(ply["vertex"].data[f"f_rest_{j}"][0]) for j in range(9)] == [float(j) for j in range(9)]


def test_uint8_rgb_variant_sets_the_dc_from_the_colours(tmp_path: Path) -> None:
    columns = scene_columns(random_scene(num_gaussians=4))
    for name in ("f_dc_0", "f_dc_1", "f_dc_2"):
        del columns[name]
    rgb = np.array([[0, 128, 255], [10, 20, 30], [255, 255, 255], [0, 0, 0]], dtype=np.uint8)
    for i, name in enumerate(("red", "green", "blue")):
        columns[name] = rgb[:, i]
    scene = GaussianScene.load(write_columns(tmp_path / "rgb.ply", columns))
    assert scene.sh_degree == 0
    assert torch.allclose(scene.rgb01, torch.from_numpy(rgb).float() / 255, atol=1e-6)


def test_extra_properties_are_ignored(tmp_path: Path) -> None:
    scene = random_scene(sh_degree=1)
    columns = scene_columns(scene)
    columns["filter_3D"] = np.full(scene.num_gaussians, 123.0, dtype="<f4")  # Mip-Splatting's 3D filter
    columns["label"] = np.arange(scene.num_gaussians, dtype="<i4")
    path = write_columns(tmp_path / "extra.ply", columns)
    assert_same(scene, GaussianScene.load(path))


def test_loads_the_mip_splatting_donut_without_touching_it(tmp_path: Path, shared_fixture) -> None:
    path = shared_fixture("donut_mipsplatting.ply")
    before, mtime = digest(path), path.stat().st_mtime_ns
    scene = GaussianScene.load(path)
    assert digest(path) == before and path.stat().st_mtime_ns == mtime
    assert scene.num_gaussians == DONUT_COUNT == plyfile.PlyData.read(str(path))["vertex"].count
    assert scene.sh_degree == 0
    assert all(torch.isfinite(getattr(scene, name)).all() for name in FIELDS)
    assert 0.0 < float(torch.sigmoid(scene.opacity_logits).mean()) < 1.0
    with pytest.raises(InputError, match="never overwritten"):
        scene.save(path)
    assert digest(path) == before
    assert_same(scene, GaussianScene.load(scene.save(tmp_path / "donut.ply")))


# ---- the scene's own helpers --------------------------------------------------------------------------------


def test_with_colors_keeps_the_geometry_and_sets_the_dc(tmp_path: Path) -> None:
    scene = random_scene(sh_degree=3)
    rgb01 = torch.rand(scene.num_gaussians, 3, generator=torch.Generator().manual_seed(1))
    recoloured = scene.with_colors(rgb01)
    for name in ("means", "quats_wxyz", "log_scales", "opacity_logits"):
        assert getattr(recoloured, name) is getattr(scene, name)
    assert torch.equal(recoloured.sh[:, 0], (rgb01 - 0.5) / SH_C0)
    assert torch.all(recoloured.sh[:, 1:] == 0) and recoloured.sh_degree == 3
    assert torch.allclose(recoloured.rgb01, rgb01, atol=1e-6)
    assert torch.allclose(recoloured.colors(torch.tensor([5.0, 0.0, 0.0])), rgb01, atol=1e-6)
    assert not torch.equal(scene.sh[:, 0], recoloured.sh[:, 0])  # the original is untouched
    ply = plyfile.PlyData.read(str(recoloured.save(tmp_path / "recoloured.ply")))["vertex"].data
    assert np.array_equal(ply["f_dc_1"], ((rgb01[:, 1] - 0.5) / SH_C0).numpy())
    assert all(np.all(ply[f"f_rest_{i}"] == 0) for i in range(45))
    with pytest.raises(ValueError, match="shape"):
        scene.with_colors(rgb01[:-1])


def test_dc_colour_is_clamped() -> None:
    scene = random_scene().with_colors(torch.tensor([[-0.5, 0.25, 1.5]]).expand(50, 3))
    assert torch.allclose(scene.rgb01, torch.tensor([0.0, 0.25, 1.0]).expand(50, 3), atol=1e-6)
    assert torch.equal(scene.colors(), scene.rgb01)


def test_view_dependent_colours_match_gsplat() -> None:
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")  # gsplat's pure-torch reference
    scene = random_scene(num_gaussians=200, sh_degree=3)
    camera = torch.tensor([0.3, -2.0, 1.5])
    for degree in range(4):
        k = (degree + 1) ** 2
        truncated = GaussianScene(
            scene.means, scene.quats_wxyz, scene.log_scales, scene.opacity_logits, scene.sh[:, :k]
        )
        expected = torch_impl._spherical_harmonics(degree, scene.means - camera, scene.sh[:, :k])
        assert torch.allclose(truncated.colors(camera), (expected + 0.5).clamp(0, 1), atol=1e-5), degree


def test_bounds_centre_and_radius() -> None:
    means = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, -2.0]])
    scene = random_scene(num_gaussians=4)
    scene = GaussianScene(means, scene.quats_wxyz, scene.log_scales, scene.opacity_logits, scene.sh)
    low, high = scene.bounds
    assert torch.equal(low, torch.tensor([0.0, 0.0, -2.0])) and torch.equal(high, torch.tensor([2.0, 4.0, 0.0]))
    assert torch.equal(scene.centre, torch.tensor([1.0, 2.0, -1.0]))
    assert scene.radius == pytest.approx(float(torch.tensor([1.0, 2.0, 1.0]).norm()))
    assert torch.all((means - scene.centre).norm(dim=1) <= scene.radius + 1e-6)


def test_bounding_sphere_can_ignore_floaters() -> None:
    cloud = torch.rand(1000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    means = torch.cat([cloud, torch.tensor([[100.0, 100.0, 100.0]])])
    scene = random_scene(num_gaussians=1001)
    scene = GaussianScene(means, scene.quats_wxyz, scene.log_scales, scene.opacity_logits, scene.sh)
    assert scene.radius > 50  # the floater drags the untrimmed sphere far out
    centre, radius = scene.bounding_sphere(trim=0.01)
    assert centre.abs().max() < 0.1 and 1.0 < radius < 1.8
    centre0, radius0 = scene.bounding_sphere()
    assert torch.equal(centre0, scene.centre) and radius0 == pytest.approx(scene.radius)


@pytest.mark.parametrize(
    "change",
    [dict(quats_wxyz=torch.zeros(3, 3)), dict(opacity_logits=torch.zeros(3, 1)), dict(sh=torch.zeros(3, 2, 3))],
    ids=["quats", "opacity", "sh"],
)
def test_scene_rejects_inconsistent_shapes(change: dict) -> None:
    fields = {name: getattr(random_scene(num_gaussians=3), name) for name in FIELDS}
    with pytest.raises(ValueError):
        GaussianScene(**{**fields, **change})


def test_save_refuses_a_non_ply_path_and_the_input_file(tmp_path: Path) -> None:
    path = random_scene().save(tmp_path / "in.ply")
    scene = GaussianScene.load(path)
    before = digest(path)
    with pytest.raises(InputError, match=r"\.ply"):
        scene.save(tmp_path / "out.obj")
    with pytest.raises(InputError, match="never overwritten"):
        scene.with_colors(torch.zeros(50, 3)).save(path)
    assert digest(path) == before and not (tmp_path / "out.obj").exists()


# ---- splatfacto checkpoints and runs ------------------------------------------------------------------------


def splatfacto_checkpoint(scene: GaussianScene, step: int = 29999, prefix: str = "_model.gauss_params.") -> dict:
    """What nerfstudio's Trainer.save_checkpoint writes for a splatfacto model of degree > 0."""
    params = {
        "means": scene.means,
        "scales": scene.log_scales,
        "quats": scene.quats_wxyz,
        "opacities": scene.opacity_logits[:, None],
        "features_dc": scene.sh[:, 0],
        "features_rest": scene.sh[:, 1:],
    }
    pipeline = {f"{prefix}{name}": value.clone() for name, value in params.items()}
    pipeline["_model.camera_optimizer.pose_adjustment"] = torch.zeros(10, 6)
    optimizers = {"means": {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3)}}, "param_groups": []}}
    return {"step": step, "pipeline": pipeline, "optimizers": optimizers, "schedulers": {}, "scalers": {}}


@pytest.mark.parametrize("prefix", ["_model.gauss_params.", "_model."], ids=["current", "legacy"])
def test_loads_a_splatfacto_checkpoint(tmp_path: Path, prefix: str) -> None:
    scene = random_scene(sh_degree=3)
    path = tmp_path / "step-000029999.ckpt"
    torch.save(splatfacto_checkpoint(scene, prefix=prefix), path)
    before = digest(path)
    loaded = GaussianScene.load(path)
    assert_same(scene, loaded)
    assert loaded.source == path and digest(path) == before


def test_degree_zero_splatfacto_stores_logit_colours(tmp_path: Path) -> None:
    # splatfacto with sh_degree=0 renders sigmoid(features_dc); nerfstudio's exporter writes RGB2SH of that.
    scene = random_scene(sh_degree=0)
    torch.save(splatfacto_checkpoint(scene), tmp_path / "model.ckpt")
    loaded = GaussianScene.load(tmp_path / "model.ckpt")
    assert torch.allclose(loaded.sh[:, 0], (torch.sigmoid(scene.sh[:, 0]) - 0.5) / SH_C0)
    assert torch.equal(loaded.means, scene.means)


CONFIG_YML = """\
!!python/object:nerfstudio.engine.trainer.TrainerConfig
_target: !!python/name:nerfstudio.engine.trainer.Trainer ''
experiment_name: poster
load_dir: null
method_name: splatfacto
output_dir: !!python/object/apply:pathlib.PosixPath
- outputs
pipeline: !!python/object:nerfstudio.pipelines.base_pipeline.VanillaPipelineConfig
  model: !!python/object:nerfstudio.models.splatfacto.SplatfactoModelConfig
    sh_degree: 3
    stats_to_track: !!python/tuple
    - !!python/object/apply:nerfstudio.utils.writer.EventName
      - Train Iter (time)
{relative}timestamp: 2024-01-01_000000
hook: !!python/object/apply:os.system
- "touch {sentinel}"
"""


def make_run(tmp_path: Path, relative: str | None = "nerfstudio_models", steps: tuple[int, ...] = (100, 29999)):
    run = tmp_path / "outputs" / "poster" / "splatfacto" / "2024-01-01_000000"
    folder = run / (relative or "nerfstudio_models")
    folder.mkdir(parents=True)
    line = f"relative_model_dir: !!python/object/apply:pathlib.PosixPath\n- {relative}\n" if relative else ""
    (run / "config.yml").write_text(CONFIG_YML.format(relative=line, sentinel=tmp_path / "pwned"))
    scenes = {}
    for step in steps:
        scenes[step] = random_scene(sh_degree=1, seed=step)
        torch.save(splatfacto_checkpoint(scenes[step], step=step), folder / f"step-{step:09d}.ckpt")
    return run, scenes


@pytest.mark.parametrize("relative", ["nerfstudio_models", "my_models", None])
def test_loads_the_latest_checkpoint_of_a_run(tmp_path: Path, relative: str | None) -> None:
    run, scenes = make_run(tmp_path, relative)
    (run / (relative or "nerfstudio_models") / "notes.txt").write_text("not a checkpoint")
    loaded = GaussianScene.load(run / "config.yml")
    assert_same(scenes[29999], loaded)
    assert loaded.source is not None and loaded.source.name == "step-000029999.ckpt"
    assert not (tmp_path / "pwned").exists()  # the config's Python tags are never constructed
    if relative != "my_models":  # a run folder works too
        assert_same(scenes[29999], GaussianScene.load(run))


# ---- one clear error per bad input --------------------------------------------------------------------------


def good_columns() -> dict[str, np.ndarray]:
    return scene_columns(random_scene(num_gaussians=20, sh_degree=1))


@pytest.mark.parametrize("text", [False, True], ids=["binary", "ascii"])
def test_comment_and_obj_info_lines_may_hold_any_bytes(tmp_path: Path, text: bool) -> None:
    """Exporters write names and paths into comments in UTF-8 (or a local code page); the data reads the same."""
    scene = random_scene(sh_degree=1)
    path = write_columns(tmp_path / "plain.ply", scene_columns(scene), text=text)
    free_text = "comment Scène exportée – 日本語\n".encode() + b"obj_info caf\xe9 \xff\xfe\n"
    path.write_bytes(path.read_bytes().replace(b"\nelement vertex", b"\n" + free_text + b"element vertex", 1))
    before = digest(path)
    assert_same(scene, GaussianScene.load(path))
    assert digest(path) == before


@pytest.mark.parametrize(
    ("line", "number"),
    [(b"element vertex\xc2\xa020", 3), (b"property float \xff\xfe", 4), (bytes(range(128, 160)), 3)],
    ids=["nbsp", "property", "binary"],
)
def test_other_header_lines_must_be_ascii(tmp_path: Path, line: bytes, number: int) -> None:
    path = write_columns(tmp_path / "bad.ply", good_columns())
    lines = path.read_bytes().split(b"\n")
    lines.insert(number - 1, line)
    path.write_bytes(b"\n".join(lines))
    expect_error(path, f"line {number} of the PLY header is not ASCII text")


def test_error_for_a_missing_path(tmp_path: Path) -> None:
    expect_error(tmp_path / "nowhere.ply", "no such file")


def test_error_for_an_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "mesh.obj"
    path.write_text("v 0 0 0\n")
    expect_error(path, "unknown extension", ".ply")


def test_error_for_a_file_that_is_not_a_ply(tmp_path: Path) -> None:
    path = tmp_path / "fake.ply"
    path.write_bytes(b"\x89PNG\r\n" + bytes(100))
    expect_error(path, "not a PLY")


@pytest.mark.parametrize("cut", [1, 500])
def test_error_for_a_truncated_binary_file(tmp_path: Path, cut: int) -> None:
    path = write_columns(tmp_path / "cut.ply", good_columns())
    path.write_bytes(path.read_bytes()[:-cut])
    expect_error(path, "truncated", "20 vertex")


def test_error_for_a_truncated_ascii_file(tmp_path: Path) -> None:
    path = write_columns(tmp_path / "cut.ply", good_columns(), text=True)
    path.write_bytes(path.read_bytes()[:-200])
    expect_error(path, "truncated")


def test_error_for_a_truncated_header(tmp_path: Path) -> None:
    path = write_columns(tmp_path / "cut.ply", good_columns())
    path.write_bytes(path.read_bytes()[:100])
    expect_error(path, "end_header")


def test_huge_vertex_count_is_rejected_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_columns(tmp_path / "small.ply", good_columns())
    path.write_bytes(path.read_bytes().replace(b"element vertex 20\n", b"element vertex 1000000000000\n", 1))

    def must_not_read(*args, **kwargs):
        raise AssertionError("the data was read before the header was checked against the file size")

    monkeypatch.setattr(plyfile.PlyData, "read", must_not_read)
    expect_error(path, "truncated", "1000000000000 vertex")


@pytest.mark.parametrize(
    ("dropped", "named"),
    [
        (("opacity", "rot_2"), ["opacity", "rot_2"]),
        (("x",), ["x"]),
        (("f_dc_0", "f_dc_1", "f_dc_2"), ["f_dc_0", "f_dc_1", "f_dc_2 (or uchar red green blue)"]),
        (("f_dc_1",), ["f_dc_1 (or uchar red green blue)"]),
    ],
)
def test_error_names_the_missing_properties(tmp_path: Path, dropped: tuple[str, ...], named: list[str]) -> None:
    columns = {name: values for name, values in good_columns().items() if name not in dropped}
    message = expect_error(write_columns(tmp_path / "partial.ply", columns), "3D Gaussian splatting PLY")
    listed = message.split("missing vertex properties ")[1].split(":")[0]
    assert listed.split(", ") == named


def test_error_counts_nan_and_infinite_values(tmp_path: Path) -> None:
    columns = good_columns()
    columns["opacity"][[3, 7]] = np.nan
    columns["scale_1"][5] = np.inf
    columns["f_rest_7"][0] = -np.inf
    expect_error(
        write_columns(tmp_path / "nan.ply", columns), "NaN", "opacity: 2", "scale_1: 1", "f_rest_7: 1", "of 20"
    )


def test_error_for_zero_gaussians(tmp_path: Path) -> None:
    columns = {name: values[:0] for name, values in good_columns().items()}
    expect_error(write_columns(tmp_path / "empty.ply", columns), "zero Gaussians")


@pytest.mark.parametrize(
    ("declaration", "data", "named"),
    [
        ("property list uchar float x", b"\x01" + bytes(4), "'x'"),
        ("property string x", bytes(4), "'string'"),
        ("property int x", bytes(4), "'x'"),
    ],
    ids=["list", "non-numeric", "integer"],
)
def test_error_for_wrong_property_types(tmp_path: Path, declaration: str, data: bytes, named: str) -> None:
    others = ["y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2"]
    others += ["rot_0", "rot_1", "rot_2", "rot_3"]
    header = ["format binary_little_endian 1.0", "element vertex 1", declaration]
    header += [f"property float {name}" for name in others]
    path = write_raw(tmp_path / "types.ply", header, data + bytes(4 * len(others)))
    expect_error(path, named, "type")


def test_error_for_rgb_colours_that_are_not_uchar(tmp_path: Path) -> None:
    columns = {k: v for k, v in good_columns().items() if not k.startswith("f_")}
    columns.update(red=np.zeros(20, "<f4"), green=np.zeros(20, "<f4"), blue=np.zeros(20, "<f4"))
    expect_error(write_columns(tmp_path / "rgbf.ply", columns), "red green blue", "uchar")


@pytest.mark.parametrize(("keep", "needle"), [(5, "5 f_rest"), (9, "f_rest_4 is missing")], ids=["count", "gap"])
def test_error_for_f_rest_of_no_sh_degree(tmp_path: Path, keep: int, needle: str) -> None:
    columns = {k: v for k, v in good_columns().items() if not k.startswith("f_rest") or int(k[7:]) < keep}
    if keep == 9:
        columns["f_rest_9"] = columns.pop("f_rest_4")
    expect_error(write_columns(tmp_path / "rest.ply", columns), needle)


class NotAWeight:
    """Pickled into a checkpoint to check that loading refuses arbitrary objects."""


def test_errors_for_bad_checkpoints(tmp_path: Path) -> None:
    good = tmp_path / "good.ckpt"
    torch.save(splatfacto_checkpoint(random_scene(sh_degree=1)), good)

    nerfacto = tmp_path / "nerfacto.ckpt"
    torch.save({"step": 1, "pipeline": {"_model.field.mlp.weight": torch.zeros(2, 2)}}, nerfacto)
    expect_error(nerfacto, "no Gaussians", "_model.gauss_params.means", "_model.gauss_params.features_rest")

    checkpoint = splatfacto_checkpoint(random_scene(sh_degree=1))
    checkpoint["pipeline"]["_model.gauss_params.opacities"][4] = float("nan")
    torch.save(checkpoint, nan := tmp_path / "nan.ckpt")
    expect_error(nan, "NaN", "_model.gauss_params.opacities: 1")

    checkpoint = splatfacto_checkpoint(random_scene(num_gaussians=0, sh_degree=1))
    torch.save(checkpoint, empty := tmp_path / "empty.ckpt")
    expect_error(empty, "zero Gaussians")

    checkpoint = splatfacto_checkpoint(random_scene(sh_degree=1))
    checkpoint["pipeline"]["_model.gauss_params.quats"] = torch.zeros(50, 3)
    torch.save(checkpoint, wrong := tmp_path / "wrong.ckpt")
    expect_error(wrong, "_model.gauss_params.quats", "(50, 4)")


@pytest.mark.parametrize("kept", [0.5, 0.1, 0.999])
def test_a_truncated_checkpoint_is_called_truncated(tmp_path: Path, kept: float) -> None:
    good = tmp_path / "good.ckpt"
    torch.save(splatfacto_checkpoint(random_scene(sh_degree=1)), good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: int(good.stat().st_size * kept)])
    message = expect_error(truncated, "cannot read the checkpoint", "truncated")
    assert "Python objects" not in message and "not a PyTorch checkpoint" not in message


@pytest.mark.parametrize(
    "content",
    [bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), b"step: 29999\n"],
    ids=["random-bytes", "text"],
)
def test_a_file_of_other_bytes_is_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    """torch reports these with the preamble it uses for pickled objects; the message must not say so."""
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    message = expect_error(path, "not a PyTorch checkpoint", repr(content[:4]))
    assert "Python objects" not in message and "truncated" not in message


def test_a_checkpoint_holding_a_python_object_names_it(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"step": 1, "pipeline": {"_model.gauss_params.means": NotAWeight()}}, pickled)
    message = expect_error(pickled, "holds Python objects", f"{__name__}.NotAWeight", "never unpickles")
    assert "truncated" not in message
    legacy_pickle = tmp_path / "legacy.ckpt"  # the format of torch.save before torch 1.6, a bare pickle stream
    legacy_pickle.write_bytes(pickle.dumps(NotAWeight(), protocol=2))
    expect_error(legacy_pickle, "holds Python objects", f"{__name__}.NotAWeight")


def test_other_unreadable_checkpoints(tmp_path: Path) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    expect_error(empty, "empty")
    archive = tmp_path / "archive.ckpt"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("notes.txt", "not a checkpoint")
    expect_error(archive, "zip archive without data.pkl")


def test_errors_for_bad_runs(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, steps=())
    expect_error(run / "config.yml", "no step-*.ckpt", "nerfstudio_models")
    broken = tmp_path / "config.yml"
    broken.write_text("method_name: [unclosed\n")
    expect_error(broken, "config.yml")
    scalar = tmp_path / "other.yaml"
    scalar.write_text("just text\n")
    expect_error(scalar, "config.yml")


def test_read_ply_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_ply(tmp_path / "missing.ply")


@pytest.mark.slow
@pytest.mark.parametrize("sh_degree", [3, 0])
def test_reads_what_nerfstudio_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sh_degree: int) -> None:
    """A real SplatfactoModel saved in a run laid out by nerfstudio's own TrainerConfig (imports nerfstudio: slow)."""
    import torchmetrics.image.lpip
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.models.splatfacto import SplatfactoModelConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

    # LPIPS would download its weights when the model is built; the metric plays no part here.
    monkeypatch.setattr(
        torchmetrics.image.lpip, "LearnedPerceptualImagePatchSimilarity", lambda **_: torch.nn.Identity()
    )
    model_config = SplatfactoModelConfig(sh_degree=sh_degree, num_random=200)
    torch.manual_seed(0)
    model = model_config.setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=2, metadata={})
    with torch.no_grad():
        model.gauss_params["features_rest"].normal_()
    pipeline = torch.nn.Module()
    pipeline._model = model  # VanillaPipeline keeps its model here, hence the "_model." prefix
    config = TrainerConfig(
        method_name="splatfacto",
        experiment_name="poster",
        output_dir=tmp_path / "outputs",
        timestamp="2024-01-01_000000",
        pipeline=VanillaPipelineConfig(model=model_config),
    )
    config.save_config()
    checkpoint_dir = config.get_checkpoint_dir()
    checkpoint_dir.mkdir(parents=True)
    state = {"step": 7, "pipeline": pipeline.state_dict(), "optimizers": {}, "schedulers": {}, "scalers": {}}
    torch.save(state, checkpoint_dir / "step-000000007.ckpt")  # Trainer.save_checkpoint's name and content

    scene = GaussianScene.load(config.get_base_dir() / "config.yml")
    assert scene.sh_degree == sh_degree and scene.num_gaussians == 200
    assert torch.equal(scene.means, model.means.detach()) and torch.equal(scene.quats_wxyz, model.quats.detach())
    assert torch.equal(scene.log_scales, model.scales.detach())
    assert torch.equal(scene.opacity_logits, model.opacities.detach()[:, 0])
    assert torch.allclose(scene.sh[:, 0], model.shs_0.detach(), atol=1e-6)
    assert torch.equal(scene.sh[:, 1:], model.shs_rest.detach())
    assert torch.allclose(scene.rgb01, model.colors.detach().clamp(0, 1), atol=1e-6)
