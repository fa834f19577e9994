"""Mesh assets: loading OBJ/GLB/PLY (MTL missing, several parts), the UV rules (file or xatlas), normalisation, the
textured export (OBJ + MTL + PNG and GLB, read back by trimesh) and one-line errors for bad meshes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from sync_splat.errors import InputError
from sync_splat.scene.mesh import MeshAsset
from sync_splat.scene.uv_layout import uv_problem

QUAD_OBJ = """mtllib missing.mtl
usemtl material_0
v -1 -1 0
v 1 -1 0
v 1 1 0.5
v -1 1 0.5
vt 0.1 0.2
vt 0.9 0.2
vt 0.9 0.8
vt 0.1 0.8
f 1/1 2/2 3/3
f 1/1 3/3 4/4
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def quad_obj(tmp_path: Path) -> Path:
    path = tmp_path / "quad.obj"
    path.write_text(QUAD_OBJ)
    return path


def box_without_uvs() -> trimesh.Trimesh:
    return trimesh.creation.box(extents=(2.0, 1.0, 0.5))


def test_obj_with_uvs_and_a_missing_mtl_keeps_the_files_uvs(quad_obj: Path) -> None:
    before = digest(quad_obj)
    mesh = MeshAsset.load(quad_obj)
    assert mesh.uv_origin == "file" and mesh.num_faces == 2 and mesh.source == quad_obj
    corner_uvs = {tuple(round(float(c), 4) for c in uv) for uv in mesh.face_uvs.reshape(-1, 2)}
    assert corner_uvs == {(0.1, 0.2), (0.9, 0.2), (0.9, 0.8), (0.1, 0.8)}
    # The vertex at (1, 1, 0.5) carries UV (0.9, 0.8): UVs stay attached to their corners.
    corner_xyz = mesh.vertices[mesh.faces].reshape(-1, 3)
    at = (corner_xyz - torch.tensor([1.0, 1.0, 0.5])).norm(dim=1) < 1e-6
    assert torch.allclose(mesh.face_uvs.reshape(-1, 2)[at], torch.tensor([0.9, 0.8]))
    assert torch.allclose(mesh.normals.norm(dim=1), torch.ones(mesh.num_vertices))
    assert digest(quad_obj) == before


def test_the_clutch_bag_fixture_loads_without_its_mtl(shared_fixture) -> None:
    path = shared_fixture("clutch_bag.obj")
    assert not path.with_name("textured.mtl").exists()
    mesh = MeshAsset.load(path)
    assert mesh.num_faces == 4484 and mesh.uv_origin == "file"
    assert uv_problem(mesh.face_uvs) is None
    normalized = mesh.normalized()
    centre, radius = normalized.bounding_sphere()
    assert torch.allclose(centre, torch.zeros(3), atol=1e-5) and radius == pytest.approx(1.0, abs=1e-5)


def test_vertices_split_along_a_uv_seam_share_one_smooth_normal() -> None:
    """A roof of two slopes, two triangles each, whose ridge vertices are split (as a UV seam splits them): both
    copies of a ridge vertex get the area-weighted normal of every face around the position, and a vertex of one
    slope alone that slope's normal."""
    vertices = [[0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 2, 0], [1, 2, 0]]  # 2, 3: the ridge
    vertices += [[0, 1, 1], [1, 1, 1]]  # 6, 7: the ridge again, for the second face
    faces = [[0, 1, 3], [0, 3, 2], [6, 7, 5], [6, 5, 4]]
    uvs = [[0, 0], [1, 0], [0, 0.5], [1, 0.5], [0, 1], [1, 1], [0, 0.5], [1, 0.5]]
    mesh = MeshAsset.from_arrays(np.array(vertices, float), np.array(faces), np.array(uvs, float), uv_mode="file")
    # The ridge's left end touches one face of the near slope and both of the far one; its right end the reverse.
    left, right = torch.tensor([0.0, 1.0, 3.0]) / 10**0.5, torch.tensor([0.0, -1.0, 3.0]) / 10**0.5
    for i, normal in ((2, left), (6, left), (3, right), (7, right)):
        torch.testing.assert_close(mesh.normals[i], normal)
    torch.testing.assert_close(mesh.normals[0], torch.tensor([0.0, -1.0, 1.0]) / 2**0.5)
    torch.testing.assert_close(mesh.normals[5], torch.tensor([0.0, 1.0, 1.0]) / 2**0.5)


def test_a_mesh_without_uvs_gets_an_xatlas_layout_in_the_same_face_order(tmp_path: Path) -> None:
    box = box_without_uvs()
    path = tmp_path / "box.ply"
    box.export(path)
    mesh = MeshAsset.load(path)
    assert mesh.uv_origin == "xatlas" and mesh.num_faces == len(box.faces)
    assert uv_problem(mesh.face_uvs) is None
    assert mesh.face_uvs.min() >= 0 and mesh.face_uvs.max() <= 1
    torch.testing.assert_close(mesh.vertices[mesh.faces], torch.tensor(box.vertices[box.faces], dtype=torch.float32))


def test_slivers_are_left_out_of_the_xatlas_layout_and_take_their_vertices_uvs() -> None:
    """A triangle thinner than single precision can shape makes xatlas return NaN UVs (and can hang its packer): it
    is unwrapped without them, and each sliver corner takes a UV its vertex has in the layout."""
    box = box_without_uvs()
    sliver_vertex = len(box.vertices)  # on the box's first edge, 1e-9 of the box's size off it
    edge = box.vertices[box.faces[0, :2]]
    vertices = np.concatenate([box.vertices, [(edge[0] + edge[1]) / 2 + 1e-9]])
    faces = np.concatenate([box.faces, [[box.faces[0, 0], box.faces[0, 1], sliver_vertex]]])
    mesh = MeshAsset.from_arrays(torch.tensor(vertices), torch.tensor(faces), None)
    assert mesh.uv_origin == "xatlas" and bool(torch.isfinite(mesh.face_uvs).all())
    assert uv_problem(mesh.face_uvs) is None
    reference = MeshAsset.from_arrays(torch.tensor(box.vertices), torch.tensor(box.faces), None)
    torch.testing.assert_close(mesh.face_uvs[:-1], reference.face_uvs)  # the box's layout, as without the sliver
    for corner in range(2):  # the sliver's corners on the box take a UV of theirs
        candidates = mesh.face_uvs[:-1][torch.tensor(box.faces) == int(faces[-1, corner])]
        assert bool((candidates == mesh.face_uvs[-1, corner]).all(dim=-1).any())
    torch.testing.assert_close(mesh.face_uvs[-1, 2], torch.zeros(2))  # its own vertex is in no other triangle


def test_a_mesh_of_slivers_is_refused_before_xatlas() -> None:
    """A vertex far from the rest (a corrupt coordinate) leaves only slivers at unit size: one line, not NaN UVs."""
    vertices = torch.tensor([[-1.0, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [2.0**31, 0, 1.5]])
    faces = torch.tensor([[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
    with pytest.raises(InputError, match="every triangle is a sliver") as error:
        MeshAsset.from_arrays(vertices, faces, None, source=Path("pyramid.obj"))
    assert "pyramid.obj" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("uvs", "problem"),
    [
        (lambda uv: uv * 3.0, "outside"),
        (lambda uv: torch.where(torch.arange(len(uv))[:, None] == 0, torch.nan, uv), "NaN"),
        (lambda uv: torch.zeros_like(uv), "zero area"),
        (lambda uv: torch.tensor([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.1]]), "overlap"),
    ],
    ids=["tiling", "nan", "zero-area", "overlapping"],
)
def test_unusable_uvs_are_replaced_by_xatlas_or_refused(uvs, problem: str) -> None:  # noqa: ANN001
    vertices = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.2]])
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    vertex_uvs = uvs(vertices[:, :2].clone())
    assert problem in (uv_problem(vertex_uvs[faces]) or "")
    with pytest.raises(InputError, match=f"unusable.*{problem}.*xatlas"):
        MeshAsset.from_arrays(vertices, faces, vertex_uvs, uv_mode="file")
    mesh = MeshAsset.from_arrays(vertices, faces, vertex_uvs, uv_mode="auto")
    assert mesh.uv_origin == "xatlas" and uv_problem(mesh.face_uvs) is None
    assert torch.isfinite(mesh.face_uvs).all()


def test_several_geometries_are_concatenated_with_their_transforms(tmp_path: Path) -> None:
    scene = trimesh.Scene()
    scene.add_geometry(box_without_uvs(), node_name="a")
    moved = np.eye(4)
    moved[:3, 3] = [5.0, 0.0, 0.0]
    scene.add_geometry(trimesh.creation.icosphere(subdivisions=1), node_name="b", transform=moved)
    path = tmp_path / "two.glb"
    scene.export(path)
    mesh = MeshAsset.load(path)
    assert mesh.num_faces == 12 + 80
    assert mesh.vertices[:, 0].max() == pytest.approx(6.0, abs=1e-5)  # the sphere was moved to x = 5
    assert uv_problem(mesh.face_uvs) is None


def test_normalized_centres_and_scales_without_touching_the_original(quad_obj: Path) -> None:
    mesh = MeshAsset.load(quad_obj)
    original = mesh.vertices.clone()
    normalized = mesh.normalized(radius=2.0)
    assert torch.equal(mesh.vertices, original)
    lo, hi = normalized.vertices.amin(0), normalized.vertices.amax(0)
    torch.testing.assert_close((lo + hi) / 2, torch.zeros(3))
    assert normalized.vertices.norm(dim=1).max() == pytest.approx(2.0)
    assert torch.equal(normalized.face_uvs, mesh.face_uvs)


def test_obj_export_writes_mtl_and_png_and_loads_back_with_its_texture(quad_obj: Path, tmp_path: Path) -> None:
    mesh = MeshAsset.load(quad_obj)
    texture = torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "out" / "painted.obj"
    written = mesh.save(out, texture)
    assert [p.name for p in written] == ["painted.png", "painted.mtl", "painted.obj"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["painted.mtl", "painted.obj", "painted.png"]
    text = out.read_text()
    assert "mtllib painted.mtl" in text and "map_Kd painted.png" in out.with_suffix(".mtl").read_text()

    loaded = trimesh.load(out, process=False)
    image = np.asarray(loaded.visual.material.image.convert("RGB"))
    expected = (texture.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(image, expected)
    # Same corners, same UVs, in the mesh's own coordinates.
    corner_xyz = np.asarray(loaded.vertices)[loaded.faces].reshape(-1, 3)
    corner_uv = np.asarray(loaded.visual.uv)[loaded.faces].reshape(-1, 2)
    ours = dict(zip(map(tuple, mesh.vertices[mesh.faces].reshape(-1, 3).numpy().round(5)),
                    map(tuple, mesh.face_uvs.reshape(-1, 2).numpy().round(5)), strict=False))  # fmt: skip
    for xyz, uv in zip(corner_xyz.round(5), corner_uv.round(5), strict=True):
        assert ours[tuple(xyz)] == pytest.approx(tuple(uv), abs=1e-5)


def test_glb_export_embeds_the_texture(quad_obj: Path, tmp_path: Path) -> None:
    mesh = MeshAsset.load(quad_obj)
    texture = torch.zeros(3, 8, 8)
    texture[0] = 1.0
    out = tmp_path / "painted.glb"
    assert mesh.save(out, texture) == (out,)
    loaded = trimesh.load(out)
    (geometry,) = loaded.geometry.values()
    image = np.asarray(geometry.visual.material.baseColorTexture.convert("RGB"))
    assert image.shape == (8, 8, 3) and (image[..., 0] == 255).all() and (image[..., 1:] == 0).all()
    assert len(geometry.faces) == 2
    # glTF stores v top-down; trimesh converts back on load, so the UVs match ours.
    loaded_uvs = {tuple(uv) for uv in np.asarray(geometry.visual.uv, dtype=np.float64).round(4).tolist()}
    assert loaded_uvs == {tuple(uv) for uv in mesh.face_uvs.reshape(-1, 2).double().numpy().round(4).tolist()}


def test_export_refuses_to_overwrite_the_input(quad_obj: Path) -> None:
    mesh = MeshAsset.load(quad_obj)
    before = digest(quad_obj)
    with pytest.raises(InputError, match="overwrite the input"):
        mesh.save(quad_obj, torch.zeros(3, 4, 4))
    assert digest(quad_obj) == before
    assert sorted(p.name for p in quad_obj.parent.iterdir()) == ["quad.obj"]


def test_bad_meshes_give_one_line_errors(tmp_path: Path) -> None:
    cloud = tmp_path / "cloud.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(cloud)
    nan_obj = tmp_path / "nan.obj"
    nan_obj.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    garbage = tmp_path / "broken.glb"
    garbage.write_bytes(b"not a gltf file at all")
    unknown = tmp_path / "mesh.fbx"
    unknown.write_text("")
    cases = [
        (cloud, "no faces"),
        (nan_obj, "not finite"),
        (garbage, "could not be read"),
        (unknown, "unknown mesh type"),
        (tmp_path / "absent.obj", "no such mesh file"),
    ]
    for path, message in cases:
        with pytest.raises(InputError, match=message) as error:
            MeshAsset.load(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


FAN_VERTICES = "".join(f"v {x} {y} 0\n" for x, y in [(0, 0), *((np.cos(a), np.sin(a)) for a in np.linspace(0, 3, 11))])
"""Twelve vertices, the first at the origin ("v 0 0 0"): a fan of eleven triangles needs indices 10, 11 and 12."""


@pytest.mark.parametrize(
    ("faces", "line"),
    [
        ("f 1 2 3\nf 1 11 0\n", 16),
        ("f 1/1 2/0 3/1\n", 15),
        ("f 1//1 2//1 3//0\n", 15),
        ("f 1 2 3\r\n  f\t-0 2 3\r\n", 16),
        ("f 1 2 3\nf 1 2 000 # a comment\n", 16),
    ],
    ids=["vertex", "texture", "normal", "crlf-tab-minus", "zeros-comment"],
)
def test_an_obj_face_index_of_zero_is_refused_naming_the_line(tmp_path: Path, faces: str, line: int) -> None:
    path = tmp_path / "zero.obj"
    path.write_text(FAN_VERTICES + "vt 0 0\nvn 0 0 1\n" + faces, newline="")
    with pytest.raises(InputError) as error:
        MeshAsset.load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: line {line} (") and "index 0" in message and "\n" not in message


def test_obj_indices_that_are_negative_or_contain_zeros_are_valid(tmp_path: Path) -> None:
    """Negative indices count back from the last vertex; 10 and 20 hold zeros but are not zero."""
    fan = "".join(f"f 1 {i} {i + 1}\n" for i in range(2, 12))
    relative = "".join(f"f -12 {i - 13} {i - 12}\n" for i in range(2, 12))
    (tmp_path / "absolute.obj").write_text(FAN_VERTICES + fan)
    (tmp_path / "relative.obj").write_text(FAN_VERTICES + relative + "# f 0 0 0 in a comment\n")
    absolute, negative = (MeshAsset.load(tmp_path / name, uvs="xatlas") for name in ("absolute.obj", "relative.obj"))
    assert absolute.num_faces == 10 and int(absolute.faces.max()) == 11
    assert torch.equal(absolute.faces, negative.faces)
