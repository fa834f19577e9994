"""Mesh assets: loading triangle meshes (OBJ, GLB/glTF, PLY), their UV layout, normalisation and textured export.

A `MeshAsset` holds V vertices, F triangles, texture coordinates per face corner `face_uvs [F, 3, 2]` (a corner's
UV, so seams need no duplicated vertices) and area-weighted vertex normals. UVs follow docs/conventions.md: origin
at the bottom-left of the texture image, `u` right, `v` up (the OBJ convention; trimesh converts glTF's top-left
origin on load), so texel row r of an Ht-row texture holds `v = 1 - (r + 0.5) / Ht` and a texture tensor
`[3, Ht, Wt]` is written to PNG as is (row 0 on top).

Loading (`MeshAsset.load`) goes through trimesh with `process=False` (no vertex merging or reordering). A scene with
several geometries is flattened with its transforms and concatenated; an OBJ whose MTL file is missing loads
without materials (only geometry and UVs are used). UVs come from the file when they are usable, else from xatlas
(`uvs="auto"`); `uvs="file"` refuses unusable UVs and `uvs="xatlas"` always generates new ones. What makes UVs
unusable, and how xatlas is called, is `sync_splat.scene.uv_layout`.

Geometry is refused before any work when it cannot be rendered: non-finite vertices, coordinates beyond
`MAX_COORDINATE` (corrupt files; single-precision normals overflow there), all vertices at one point, or every
triangle of zero area. Normals, areas and xatlas's input are computed on the mesh moved to unit size in double
precision (`unit_size`), so a mesh's size and offset do not matter to them.

Export (`MeshAsset.save`) writes the mesh in its own coordinates (normalisation is for rendering only) with a
texture image: `name.obj` + `name.mtl` + `name.png`, or a binary glTF `name.glb` (trimesh `TextureVisuals` with a
PIL image). Every file is written to a temporary name beside its destination and renamed into place, the OBJ last,
so no reader ever sees an OBJ whose MTL or PNG is missing; the OBJ and MTL reference the others by final names.
Inputs are never written to. Every problem with an input is one `InputError` line naming the file and the fix.
"""

from __future__ import annotations

import io
import mmap
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int64
from torch import Tensor

from sync_splat.errors import InputError
from sync_splat.render.mesh import face_area_vectors
from sync_splat.scene.files import atomic_output
from sync_splat.scene.images import encode_png, to_uint8
from sync_splat.scene.uv_layout import uv_problem, xatlas_uvs

UVMode = Literal["auto", "file", "xatlas"]
MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply")
"""File types `MeshAsset.load` reads."""
MAX_COORDINATE = 1e18
"""Largest vertex coordinate magnitude accepted: beyond it, squared lengths and cross products of the single-precision
positions overflow (in renderers and viewers as well as here); such coordinates come from corrupt files."""
_ZERO_AREA = 1e-12  # of the unit-size mesh's squared extent
# An index of 0 in an OBJ file: a run of zeros after a space, tab or slash, ending the number. In a face line it names
# no vertex (indices count from 1; negative ones count back from the last vertex), yet trimesh reads it as the last.
_OBJ_ZERO_INDEX = re.compile(rb"[ \t/][+-]?0+(?=[ \t/\r\n#]|\Z)")
_OBJ_FACE = re.compile(rb"[ \t]*f[ \t][^#\r]*")


@dataclass(frozen=True, eq=False, repr=False)
class MeshAsset:
    """A triangle mesh with a UV layout.

    Attributes:
        vertices: positions in the file's own frame, float32 `[V, 3]`.
        faces: vertex indices per triangle, int64 `[F, 3]`.
        face_uvs: texture coordinates per face corner, origin bottom-left, v up, in [0, 1], `[F, 3, 2]`.
        normals: area-weighted vertex normals (vertices at the same position share one), unit length `[V, 3]`.
        uv_origin: "file" when the UVs were read from the input, "xatlas" when generated.
        source: the file it was read from (`save` refuses to overwrite it); None for generated meshes.
    """

    vertices: Float[Tensor, "V 3"]
    faces: Int64[Tensor, "F 3"]
    face_uvs: Float[Tensor, "F 3 2"]
    normals: Float[Tensor, "V 3"]
    uv_origin: Literal["file", "xatlas"] = "file"
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        v, f = self.vertices.shape[0], self.faces.shape[0]
        for name, shape in (("vertices", (v, 3)), ("faces", (f, 3)), ("face_uvs", (f, 3, 2)), ("normals", (v, 3))):
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"MeshAsset.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")

    def __repr__(self) -> str:
        return (
            f"MeshAsset(num_vertices={self.num_vertices}, num_faces={self.num_faces}, uv_origin={self.uv_origin!r}, "
            f"source={self.source})"
        )

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    # ---- construction ---------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, uvs: UVMode = "auto") -> MeshAsset:
        """Read a mesh file (.obj with or without its .mtl, .glb/.gltf, .ply).

        Args:
            path: the mesh file; never written to.
            uvs: "auto" keeps the file's UVs when usable and generates them with xatlas otherwise; "file" requires
                usable UVs in the file; "xatlas" always generates new ones.

        Raises:
            InputError: the file is missing, unreadable or of an unknown type; it has no faces or non-finite
                vertices; or `uvs="file"` and its UVs are unusable.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such mesh file")
        if path.suffix.lower() not in MESH_SUFFIXES:
            raise InputError(
                f"{path}: unknown mesh type {path.suffix!r}: convert it to one of {', '.join(MESH_SUFFIXES)}"
            )
        vertices, faces, vertex_uvs = _read_parts(path)
        return cls.from_arrays(vertices, faces, vertex_uvs, uv_mode=uvs, source=path)

    @classmethod
    def from_arrays(
        cls,
        vertices: np.ndarray | Tensor,
        faces: np.ndarray | Tensor,
        uvs: np.ndarray | Tensor | None = None,
        uv_mode: UVMode = "auto",
        source: Path | None = None,
    ) -> MeshAsset:
        """Build and validate an asset from arrays; see `load` for the UV rules.

        Args:
            vertices: positions `[V, 3]`.
            faces: triangles `[F, 3]`.
            uvs: per-vertex UVs `[V, 2]`, per-corner UVs `[F, 3, 2]`, or None (generate them with xatlas).
            uv_mode: "auto", "file" (the given UVs must be usable) or "xatlas" (ignore them).
            source: where the arrays came from, for messages and to protect the input from `save`.
        """
        where = str(source) if source is not None else "mesh"
        vertices_t, faces_t = _checked_geometry(vertices, faces, where)
        if uv_mode not in ("auto", "file", "xatlas"):
            raise InputError(f"uvs must be 'auto', 'file' or 'xatlas', got {uv_mode!r}")
        face_uvs = None
        if uvs is not None:
            uvs_t = torch.as_tensor(np.asarray(uvs, dtype=np.float64)).float()
            face_uvs = uvs_t[faces_t] if uvs_t.shape == (vertices_t.shape[0], 2) else uvs_t
            if face_uvs.shape != (faces_t.shape[0], 3, 2):
                raise InputError(
                    f"{where}: UVs must be per vertex [V, 2] or per face corner [F, 3, 2], got {tuple(uvs_t.shape)}"
                )
        problem = None if uv_mode == "xatlas" else uv_problem(face_uvs)
        if problem is not None and uv_mode == "file":
            raise InputError(
                f"{where}: its UVs are unusable ({problem}): let xatlas generate new ones (uvs 'auto' or 'xatlas', "
                "--uvs xatlas on the command line) or fix the UV layout"
            )
        origin: Literal["file", "xatlas"] = "file"
        # Vertices at one position (split along UV seams) are merged: they share one normal, and seams of the
        # file's old layout do not split xatlas charts.
        positions, merged = torch.unique(vertices_t, dim=0, return_inverse=True)
        if uv_mode == "xatlas" or problem is not None:
            face_uvs, origin = xatlas_uvs(unit_size(positions).float(), merged[faces_t], where), "xatlas"
        assert face_uvs is not None
        return cls(
            vertices=vertices_t,
            faces=faces_t,
            face_uvs=face_uvs.clamp(0.0, 1.0),
            normals=vertex_normals(positions, merged[faces_t])[merged].to(vertices_t.dtype),
            uv_origin=origin,
            source=source,
        )

    def to(self, device: torch.device | str) -> MeshAsset:
        """The same mesh with its tensors on `device`."""
        return replace(
            self, vertices=self.vertices.to(device), faces=self.faces.to(device), face_uvs=self.face_uvs.to(device),
            normals=self.normals.to(device),
        )  # fmt: skip

    def bounding_sphere(self) -> tuple[Float[Tensor, "3"], float]:
        """The centre of the axis-aligned bounding box and the largest vertex distance from it (float64 maths)."""
        positions = self.vertices.double()
        centre = (positions.amin(0) + positions.amax(0)) / 2
        return centre.to(self.vertices.dtype), float((positions - centre).norm(dim=-1).amax())

    def normalized(self, radius: float = 1.0) -> MeshAsset:
        """The same mesh centred at its bounding-box centre and scaled so the farthest vertex is at `radius`.

        The official code centres at the vertex mean, which drifts towards densely tessellated parts; the box
        centre does not. With the paper's cameras (distance 2, field of view 60 degrees) a unit sphere just fits.
        """
        return replace(self, vertices=(unit_size(self.vertices) * radius).to(self.vertices.dtype))

    # ---- export ---------------------------------------------------------------------------------------------

    def save(self, path: str | Path, texture_rgb01: Float[Tensor, "3 Ht Wt"]) -> tuple[Path, ...]:
        """Write the mesh with a texture: `.obj` (+ `.mtl` + `.png` beside it) or `.glb`, atomically.

        Args:
            path: the destination, ending in .obj or .glb; parent folders are created.
            texture_rgb01: the texture image in [0, 1], row 0 on top (UV origin bottom-left).

        Returns:
            The written paths (the OBJ last).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".obj", ".glb"):
            raise InputError(f"{path}: a textured mesh is written as .obj (with .mtl and .png) or .glb")
        if texture_rgb01.ndim != 3 or texture_rgb01.shape[0] != 3:
            raise ValueError(f"texture_rgb01 must be [3, Ht, Wt], got {tuple(texture_rgb01.shape)}")
        outputs = (path,) if suffix == ".glb" else (path.with_suffix(".png"), path.with_suffix(".mtl"), path)
        if self.source is not None and any(_same_file(out, self.source) for out in outputs):
            raise InputError(f"{path}: would overwrite the input mesh {self.source}; choose another output path")
        image = to_uint8(texture_rgb01)
        positions, uv, normals, faces = self._export_arrays()
        if suffix == ".glb":
            _write_glb(path, positions, uv, normals, faces, image)
        else:
            _write_obj(path, positions, uv, normals, faces, image)
        return outputs

    def _export_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One export vertex per distinct (vertex, UV) pair: vertices are split only along UV seams."""
        corner_vertex = self.faces.reshape(-1).cpu().numpy()
        corner_uv = self.face_uvs.reshape(-1, 2).detach().cpu().double().numpy()
        keys = np.column_stack([corner_vertex.astype(np.float64), corner_uv])
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        vertex = unique[:, 0].astype(np.int64)
        positions = self.vertices.detach().cpu().double().numpy()[vertex]
        normals = self.normals.detach().cpu().double().numpy()[vertex]
        return positions, unique[:, 1:], normals, inverse.reshape(-1, 3)


def _checked_geometry(vertices: np.ndarray | Tensor, faces: np.ndarray | Tensor, where: str) -> tuple[Tensor, Tensor]:
    """Float32 vertices and int64 faces, or an InputError for a mesh that cannot be rendered."""
    vertices_t = torch.as_tensor(np.asarray(vertices, dtype=np.float64)).float()
    faces_t = torch.as_tensor(np.asarray(faces, dtype=np.int64))
    if faces_t.numel() == 0:
        raise InputError(
            f"{where}: has no faces (a point cloud?): mesh texturing needs a triangle mesh; for Gaussian splats use "
            "`sync-splat restyle`"
        )
    if vertices_t.ndim != 2 or vertices_t.shape[1] != 3 or faces_t.ndim != 2 or faces_t.shape[1] != 3:
        raise InputError(
            f"{where}: needs vertices [V, 3] and triangles [F, 3], got {tuple(vertices_t.shape)} and "
            f"{tuple(faces_t.shape)}: triangulate the mesh"
        )
    if faces_t.min() < 0 or faces_t.max() >= vertices_t.shape[0]:
        raise InputError(f"{where}: faces reference vertices that do not exist: repair or re-export the mesh")
    bad = int((~torch.isfinite(vertices_t).all(dim=1)).sum())
    if bad:
        raise InputError(
            f"{where}: {bad} of {vertices_t.shape[0]} vertices are not finite (NaN or inf): repair the mesh (e.g. "
            "Blender's Mesh > Clean Up) and export it again"
        )
    largest = float(vertices_t.abs().max())
    if largest > MAX_COORDINATE:
        raise InputError(
            f"{where}: vertex coordinates reach {largest:.3g}, beyond +-{MAX_COORDINATE:.0e}, where single-precision "
            "lengths and normals overflow: the file is likely corrupt; otherwise rescale the mesh (e.g. to metres)"
        )
    if float((vertices_t.amax(0) - vertices_t.amin(0)).max()) == 0.0:
        raise InputError(
            f"{where}: every vertex sits at one point (in single precision): the mesh has no surface to texture"
        )
    if float(face_area_vectors(unit_size(vertices_t), faces_t).norm(dim=-1).max()) / 2 <= _ZERO_AREA:
        raise InputError(
            f"{where}: every triangle has zero area (its vertices are repeated or on one line): the mesh has no "
            "surface to texture; repair or re-export it"
        )
    return vertices_t, faces_t


def unit_size(vertices: Float[Tensor, "V 3"]) -> Float[Tensor, "V 3"]:
    """`vertices` in float64, centred at their bounding-box centre and scaled so the farthest one is at distance 1.

    Normals, areas and UV charts do not change under this, and computing them here keeps them exact for meshes of
    any size and offset (in single precision, xatlas loses small meshes to underflow and hangs on large ones).
    """
    positions = vertices.double()
    centred = positions - (positions.amin(0) + positions.amax(0)) / 2
    extent = centred.norm(dim=-1).amax() if centred.numel() else centred.new_zeros(())
    return centred / extent if extent > 0 else centred


# ---------------------------------------------------------------------------------------------------------------------
# Normals.


def vertex_normals(vertices: Float[Tensor, "V 3"], faces: Int64[Tensor, "F 3"]) -> Float[Tensor, "V 3"]:
    """Area-weighted vertex normals, float64 (faces sharing a vertex index share its normal: merge vertices at one
    position first for a smooth normal across UV seams)."""
    unit = unit_size(vertices)  # float64 at unit size: no overflow or underflow in the products below
    face_normal = face_area_vectors(unit, faces)  # weighted by area
    summed = torch.zeros_like(unit).index_add_(0, faces.reshape(-1), face_normal.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(summed, dim=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Files.


def _read_parts(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vertices, faces and per-vertex UVs (None when a part has none) of every geometry, transforms applied."""
    import trimesh

    if path.suffix.lower() == ".obj":
        _check_obj_indices(path)
    try:
        scene = trimesh.load(path, force="scene", process=False)
        parts = scene.dump()
    except Exception as error:  # trimesh raises many types for broken files
        raise InputError(
            f"{path}: could not be read as a {path.suffix} mesh ({type(error).__name__}: {error}): check that it "
            "opens in a mesh viewer, or convert it to .obj or .glb"
        ) from error
    meshes = [part for part in parts if isinstance(part, trimesh.Trimesh) and len(part.faces)]
    if not meshes:
        raise InputError(
            f"{path}: has no faces (a point cloud?): mesh texturing needs a triangle mesh; for Gaussian splats use "
            "`sync-splat restyle`"
        )
    vertices, faces, uvs, offset = [], [], [], 0
    for mesh in meshes:
        vertices.append(np.asarray(mesh.vertices, dtype=np.float64))
        faces.append(np.asarray(mesh.faces, dtype=np.int64) + offset)
        uv = getattr(mesh.visual, "uv", None)
        ok = uv is not None and len(uv) == len(mesh.vertices)
        uvs.append(np.asarray(uv, dtype=np.float64) if ok else np.full((len(mesh.vertices), 2), np.nan))
        offset += len(mesh.vertices)
    all_uvs = np.concatenate(uvs)
    if np.isnan(all_uvs).all():
        return np.concatenate(vertices), np.concatenate(faces), None
    if any(np.isnan(uv).all() for uv in uvs):
        # Parts without UVs poison the layout: uv_problem sees NaNs and asks for xatlas.
        all_uvs = np.where(np.isnan(all_uvs), np.inf, all_uvs)
    return np.concatenate(vertices), np.concatenate(faces), all_uvs


def _check_obj_indices(path: Path) -> None:
    """Refuse an OBJ face that uses index 0, naming its line. A scan of the mapped file that looks only at lines
    holding a zero number (coordinates such as "v 0 1 0" included): a fraction of what trimesh takes to parse it."""
    try:
        with path.open("rb") as stream:
            data = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # unreadable, or empty: trimesh's own error then names the file
        return
    with data:
        position = 0
        while (zero := _OBJ_ZERO_INDEX.search(data, position)) is not None:
            start = data.rfind(b"\n", 0, zero.start()) + 1
            end = data.find(b"\n", zero.end())
            position = len(data) if end < 0 else end
            face = _OBJ_FACE.match(data, start, position)
            if face is not None and face.end() > zero.start():  # in the face's numbers, not after a "#"
                line = data[:start].count(b"\n") + 1
                text = data[start : min(position, start + 80)].decode("ascii", "replace").strip()
                raise InputError(
                    f"{path}: line {line} ({text!r}): face index 0 does not exist; OBJ indices start at 1 (negative "
                    "ones count back from the last vertex): fix the face or re-export the mesh"
                )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _write_obj(
    path: Path, positions: np.ndarray, uv: np.ndarray, normals: np.ndarray, faces: np.ndarray, image: np.ndarray
) -> None:
    """OBJ + MTL + PNG, each to a temporary name first; renamed PNG, MTL, then OBJ (the innermost context first)."""
    mtl_name, png_name = path.with_suffix(".mtl").name, path.with_suffix(".png").name
    text = io.StringIO()
    text.write(f"# written by sync-splat\nmtllib {mtl_name}\n")
    np.savetxt(text, positions, fmt="v %.7g %.7g %.7g")
    np.savetxt(text, uv, fmt="vt %.7g %.7g")
    np.savetxt(text, normals, fmt="vn %.5g %.5g %.5g")
    text.write("usemtl material_0\n")
    one_based = faces + 1
    np.savetxt(text, np.repeat(one_based, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    material = (
        f"# written by sync-splat\nnewmtl material_0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {png_name}\n"
    )
    with (
        atomic_output(path) as obj_tmp,
        atomic_output(path.with_suffix(".mtl")) as mtl_tmp,
        atomic_output(path.with_suffix(".png")) as png_tmp,
    ):
        encode_png(image, png_tmp)
        mtl_tmp.write_text(material)
        obj_tmp.write_text(text.getvalue())


def _write_glb(
    path: Path, positions: np.ndarray, uv: np.ndarray, normals: np.ndarray, faces: np.ndarray, image: np.ndarray
) -> None:
    """A binary glTF with the texture embedded (trimesh converts the UVs to glTF's top-left origin)."""
    import trimesh
    from PIL import Image

    visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(np.ascontiguousarray(image), mode="RGB"))
    mesh = trimesh.Trimesh(
        vertices=positions, faces=faces, vertex_normals=normals, visual=visual, process=False, validate=False
    )
    data = mesh.export(file_type="glb")
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
