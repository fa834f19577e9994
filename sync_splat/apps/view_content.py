"""What `sync-splat view` shows, loaded and turned into viser scene nodes: splat scenes (with a subset for big ones
and a second colour set to switch to), textured meshes, and equirectangular panoramas as unlit spheres (or their cube
faces). `sync_splat.apps.view` builds the page around them; viser is imported only inside these functions.
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError
from sync_splat.functional.rotation import quat_to_rotmat
from sync_splat.scene.gaussians import GaussianScene

if TYPE_CHECKING:
    from sync_splat.apps.view import ViewConfig, ViewPage

Up = Literal["+x", "+y", "+z", "-x", "-y", "-z"]

PANORAMA_RADIUS = 10.0
"""Radius of the panorama sphere, in the viewer's units (well inside its far clipping plane)."""
MAX_PANORAMA_WIDTH = 4096
"""Wider panoramas are downsampled before sending: the widest texture WebGL guarantees on common GPUs."""
_SUBSET_SEED = 0


# ---- splats -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplatContent:
    """What the page sends for a splat scene.

    Attributes:
        centres: the Gaussians' centres, `[G', 3]` (G' <= G: finite Gaussians only, at most `max_gaussians`).
        covariances: their world covariances, `[G', 3, 3]`.
        opacities: `sigmoid(opacity_logits)`, `[G', 1]`.
        colours: each colour set's DC colours in [0, 1], `[G', 3]`: "restyled" (PATH's) and, with a `before`
            scene, "source".
        name: PATH's file name.
        total: G, the Gaussians in the file.
        left_out: what is not sent, for the summary ("" when everything is).
        centre: the middle of the scene, where the camera looks.
        extent: the radius of the scene's bulk.
    """

    centres: np.ndarray
    covariances: np.ndarray
    opacities: np.ndarray
    colours: dict[str, np.ndarray]
    name: str
    total: int
    left_out: str
    centre: np.ndarray
    extent: float

    def build(self, page: ViewPage, up: Up) -> tuple[np.ndarray, np.ndarray]:
        scene_api = page.server.scene
        # viser 0.2.7 offers Gaussian splatting as an experimental method with a leading underscore; later
        # releases name it add_gaussian_splats.
        add_splats = getattr(scene_api, "add_gaussian_splats", None) or scene_api._add_gaussian_splats
        nodes = {
            which: add_splats(
                f"/splats/{which}",
                centers=self.centres,
                covariances=self.covariances,
                rgbs=rgb01,
                opacities=self.opacities,
                visible=which == "restyled",
            )  # fmt: skip
            for which, rgb01 in self.colours.items()
        }
        page.summary = f"{self.name}: {len(self.centres):,} Gaussians{self.left_out}"
        if len(nodes) > 1:
            page.summary += ", restyled and source colours (the Colours control switches)"
            page.add_switch("Colours", nodes)
        return orbit_eye(self.centre, self.extent, up), self.centre


def load_splats(path: Path, config: ViewConfig) -> SplatContent:
    """Read PATH (and `config.before`) and prepare what the page sends: finite Gaussians only, and at most
    `config.max_gaussians` of them (a seeded random subset, the same for both colour sets).

    Raises:
        InputError: a file cannot be read, holds no finite Gaussian, or `before` does not share PATH's geometry.
    """
    scene = _read_scene(path)
    colours = {"restyled": scene.rgb01}
    if config.before is not None:
        source = _read_scene(config.before)
        if source.num_gaussians != scene.num_gaussians or not torch.equal(source.means, scene.means):
            raise InputError(
                f"--before {config.before}: its {source.num_gaussians:,} Gaussians are not {path}'s "
                f"{scene.num_gaussians:,} in the same places: pass the scene {path.name} was restyled from, in the "
                "same file format"
            )
        colours["source"] = source.rgb01
    total = scene.num_gaussians
    finite = torch.cat(
        [scene.means, scene.log_scales, scene.quats_wxyz, scene.opacity_logits[:, None], *colours.values()], dim=-1
    ).isfinite().all(dim=-1)  # fmt: skip
    keep = finite.nonzero()[:, 0]
    if len(keep) == 0:
        raise InputError(f"{path}: the scene has no Gaussian with finite values: there is nothing to show")
    left_out = f" ({total - len(keep):,} with non-finite values left out)" if len(keep) < total else ""
    if len(keep) > config.max_gaussians:
        generator = torch.Generator().manual_seed(_SUBSET_SEED)
        keep = keep[torch.randperm(len(keep), generator=generator)[: config.max_gaussians].sort().values]
        left_out = (f" of {total:,} (a random subset keeps the browser responsive; --max-gaussians to "
                    "change)")  # fmt: skip
    kept = GaussianScene(
        means=scene.means[keep], quats_wxyz=scene.quats_wxyz[keep], log_scales=scene.log_scales[keep],
        opacity_logits=scene.opacity_logits[keep], sh=scene.sh[keep],
    )  # fmt: skip
    centre, radius = kept.bounding_sphere(trim=0.01)
    extent = max(radius, 1e-6)
    return SplatContent(
        centres=kept.means.numpy().astype(np.float32),
        covariances=splat_covariances(kept.quats_wxyz, kept.log_scales, extent),
        opacities=torch.sigmoid(kept.opacity_logits)[:, None].numpy(),
        colours={name: rgb[keep].numpy().astype(np.float32) for name, rgb in colours.items()},
        name=path.name,
        total=total,
        left_out=left_out,
        centre=centre.double().numpy(),
        extent=extent,
    )


def splat_covariances(
    quats_wxyz: Float[Tensor, "G 4"], log_scales: Float[Tensor, "G 3"], extent: float
) -> Float[np.ndarray, "G 3 3"]:
    """World covariances `R diag(scale^2) R^T` for viser, with a floor of (1e-4 extent)^2 on each axis' variance.

    viser stores a Cholesky factor of each covariance, which needs a positive-definite matrix: the floor keeps
    flat Gaussians (a zero scale) factorable without visibly changing any Gaussian larger than 1e-4 of the scene.
    """
    rotations = quat_to_rotmat(quats_wxyz.double())
    variances = (2 * log_scales.double()).exp().clamp_min((1e-4 * extent) ** 2)
    covariances = rotations @ torch.diag_embed(variances) @ rotations.transpose(-1, -2)
    return covariances.numpy()


def _read_scene(path: Path) -> GaussianScene:
    from sync_splat.scene.splat_file import load_scene

    return load_scene(path).to("cpu")


# ---- meshes -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mesh:
    glb: bytes
    name: str
    faces: int
    centre: np.ndarray
    extent: float

    def build(self, page: ViewPage, up: Up) -> tuple[np.ndarray, np.ndarray]:
        page.server.scene.add_glb("/mesh", glb_data=self.glb)
        page.summary = f"{self.name}: a mesh of {self.faces:,} triangles"
        return orbit_eye(self.centre, self.extent, up), self.centre


def load_mesh(path: Path) -> _Mesh:
    import trimesh

    try:
        scene = trimesh.load(str(path), force="scene")
    except Exception as error:  # trimesh raises many types for unreadable files
        raise InputError(
            f"{path}: cannot read the mesh ({type(error).__name__}: {error}): pass a valid .obj/.glb/.gltf/.ply"
        ) from None
    faces = sum(len(geometry.faces) for geometry in scene.geometry.values() if hasattr(geometry, "faces"))
    if faces == 0 or scene.bounds is None or not np.isfinite(scene.bounds).all():
        raise InputError(f"{path}: the file holds no triangles with finite vertices: there is nothing to show")
    glb = path.read_bytes() if path.suffix.lower() == ".glb" else scene.export(file_type="glb")
    low, high = scene.bounds
    return _Mesh(
        glb=glb,
        name=path.name,
        faces=faces,
        centre=(low + high) / 2,
        extent=max(float(np.linalg.norm(high - low)) / 2, 1e-6),
    )


def ply_has_faces(path: Path) -> bool:
    """Whether a PLY header declares a non-empty `face` element (a mesh) rather than only vertices (Gaussians)."""
    with path.open("rb") as stream:
        head = stream.read(1 << 16)
    end = head.find(b"end_header")
    for line in head[: end if end >= 0 else len(head)].splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == b"element" and words[1] == b"face":
            return words[2] != b"0"
    return False


# ---- panoramas --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Panorama:
    glb: bytes
    name: str
    size: tuple[int, int]
    cube_faces: tuple[np.ndarray, ...] | None  # the six faces beside the panorama, in CUBE_FACES order
    extent: float = PANORAMA_RADIUS

    def build(self, page: ViewPage, up: Up) -> tuple[np.ndarray, np.ndarray]:
        sphere = page.server.scene.add_glb("/panorama/sphere", glb_data=self.glb)
        page.summary = f"{self.name}: a {self.size[1]} x {self.size[0]} panorama around the camera"
        if self.cube_faces is not None:
            page.add_switch("Show", {"sphere": sphere, "cube faces": _add_cube_faces(page.server, self.cube_faces)})
            page.summary += " (the Show control switches to its cube faces)"
        # Look along longitude 0 (+z) from the centre; orbiting a target this close turns the view in place.
        return np.zeros(3), np.array([0.0, 0.0, 1e-3 * PANORAMA_RADIUS])


def load_panorama(path: Path) -> _Panorama:
    pixels = _read_rgb(path)
    if pixels.shape[1] != 2 * pixels.shape[0]:
        raise InputError(
            f"{path}: an equirectangular panorama is twice as wide as it is high, got {pixels.shape[1]} x "
            f"{pixels.shape[0]}: pass the panorama PNG that `sync-splat panorama` wrote"
        )
    rgb = pixels
    if rgb.shape[1] > MAX_PANORAMA_WIDTH:
        step = math.ceil(rgb.shape[1] / MAX_PANORAMA_WIDTH)
        rgb = rgb[::step, ::step]
    return _Panorama(
        glb=panorama_sphere_glb(rgb), name=path.name, size=pixels.shape[:2], cube_faces=_read_cube_faces(path)
    )


def _read_rgb(path: Path) -> np.ndarray:
    """An 8-bit image as `[H, W, 3]` (grey is repeated, alpha dropped)."""
    import imageio.v3 as iio

    try:
        pixels = np.asarray(iio.imread(path))
    except Exception as error:  # imageio raises many types for unreadable files
        raise InputError(
            f"{path}: cannot read the image ({type(error).__name__}: {error}): pass a valid .png/.jpg"
        ) from None
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.dtype != np.uint8:
        raise InputError(f"{path}: expected an 8-bit RGB image, got shape {pixels.shape} ({pixels.dtype})")
    return np.ascontiguousarray(pixels[:, :, :3])


def _read_cube_faces(path: Path) -> tuple[np.ndarray, ...] | None:
    """The six cube faces `sync-splat panorama --cube-faces` wrote beside `path`, or None unless all six are there."""
    from sync_splat.bridges.panorama import cube_face_paths

    paths = cube_face_paths(path)
    if not all(face.is_file() for face in paths):
        return None
    faces = tuple(_read_rgb(face) for face in paths)
    if any(face.shape != (faces[0].shape[0], faces[0].shape[0], 3) for face in faces):
        raise InputError(f"{paths[0].parent}: the cube faces of {path.name} must be six square images of one size")
    return faces


def _add_cube_faces(server: Any, faces: tuple[np.ndarray, ...]) -> Any:
    """The six faces as images on a cube around the camera; returns the cube's parent node (hidden at first).

    A face is a 90-degree view with the OpenCV axes of `view_axes`; viser draws an image with its columns along
    the node's x, its rows along y and its front towards -z, as a camera at the node's origin looking along +z sees
    it. So each face is placed half a side along its view axis, rotated by its axes mirrored into the viewer's frame.
    """
    from viser.transforms import SO3

    from sync_splat.functional.equirect import CUBE_FACES, view_axes

    half = PANORAMA_RADIUS / 2
    yaw = torch.tensor([math.radians(face[1]) for face in CUBE_FACES], dtype=torch.float64)
    pitch = torch.tensor([math.radians(face[2]) for face in CUBE_FACES], dtype=torch.float64)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    axes = (mirror @ view_axes(yaw, pitch)).numpy()  # a proper rotation: both factors have determinant -1
    cube = server.scene.add_frame("/panorama/cube", show_axes=False, visible=False)
    for (name, _, _), face, rotation in zip(CUBE_FACES, faces, axes, strict=True):
        server.scene.add_image(
            f"/panorama/cube/{name}", face, render_width=2 * half, render_height=2 * half, format="png",
            wxyz=SO3.from_matrix(rotation).wxyz, position=half * rotation[:, 2],
        )  # fmt: skip
    return cube


def panorama_sphere_glb(rgb: np.ndarray, radius: float = PANORAMA_RADIUS, rows: int = 64) -> bytes:
    """A UV sphere around the origin that shows an equirectangular image from inside, as binary glTF.

    Vertex (i, j) of the `rows + 1` x `2 rows + 1` grid sits at latitude `pi/2 - pi i / rows` and longitude
    `-pi + 2 pi j / (2 rows)` (the last column repeats the first at the seam), at the panorama direction of
    docs/conventions.md with x negated; its UV is `(j / (2 rows), 1 - i / rows)` (origin bottom-left).

    Args:
        rgb: the panorama, 8-bit `[Ht, Wt, 3]`, row 0 at the top (north).
        radius: the sphere's radius.
        rows: latitude bands of the sphere.
    """
    import trimesh
    from PIL import Image

    cols = 2 * rows
    lat = math.pi / 2 - math.pi * np.arange(rows + 1) / rows
    lon = -math.pi + 2 * math.pi * np.arange(cols + 1) / cols
    lat, lon = np.meshgrid(lat, lon, indexing="ij")
    directions = np.stack([-np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], axis=-1)
    uv = np.stack(np.meshgrid(np.arange(cols + 1) / cols, 1 - np.arange(rows + 1) / rows, indexing="xy"), axis=-1)
    index = np.arange((rows + 1) * (cols + 1)).reshape(rows + 1, cols + 1)
    top_left, top_right = index[:-1, :-1].ravel(), index[:-1, 1:].ravel()
    bottom_left, bottom_right = index[1:, :-1].ravel(), index[1:, 1:].ravel()
    faces = np.concatenate(
        [np.stack([top_left, bottom_left, bottom_right], 1), np.stack([top_left, bottom_right, top_right], 1)]
    )
    vertices = radius * directions.reshape(-1, 3)
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    faces = faces[np.linalg.norm(normals, axis=1) > 1e-12 * radius**2]  # the poles' collapsed triangles
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(np.ascontiguousarray(rgb)), metallicFactor=0.0, roughnessFactor=1.0,
        doubleSided=True,
    )  # fmt: skip
    mesh = trimesh.Trimesh(
        vertices=vertices, faces=faces, process=False,
        visual=trimesh.visual.TextureVisuals(uv=uv.reshape(-1, 2), material=material),
    )  # fmt: skip
    buffer = io.BytesIO()
    mesh.export(buffer, file_type="glb")
    return _unlit(buffer.getvalue())


def _unlit(glb: bytes) -> bytes:
    """The same binary glTF with every material marked unlit (`KHR_materials_unlit`): drawn in its base colour,
    which the scene's lights do not shade."""
    magic, version, _ = struct.unpack_from("<4sII", glb)
    json_length, json_type = struct.unpack_from("<I4s", glb, 12)
    if magic != b"glTF" or json_type != b"JSON":
        raise ValueError("not a binary glTF file with a JSON chunk first")
    document = json.loads(glb[20 : 20 + json_length])
    for material in document.get("materials", []):
        material.setdefault("extensions", {})["KHR_materials_unlit"] = {}
    document["extensionsUsed"] = sorted({*document.get("extensionsUsed", []), "KHR_materials_unlit"})
    chunk = json.dumps(document, separators=(",", ":")).encode()
    chunk += b" " * (-len(chunk) % 4)  # chunks are 4-byte aligned; JSON pads with spaces
    rest = glb[20 + json_length :]
    header = struct.pack("<4sII", magic, version, 12 + 8 + len(chunk) + len(rest))
    return header + struct.pack("<I4s", len(chunk), b"JSON") + chunk + rest


# ---- cameras and the server -------------------------------------------------------------------------------------


def up_vector(up: Up) -> np.ndarray:
    vector = np.zeros(3)
    vector["xyz".index(up[1])] = 1.0 if up[0] == "+" else -1.0
    return vector


def orbit_eye(
    centre: np.ndarray, extent: float, up: Up, azimuth_deg: float = 20.0, elevation_deg: float = 25.0
) -> np.ndarray:
    """A camera position 2.5 bounding radii from `centre`, `elevation_deg` above its horizon and `azimuth_deg` round
    from the front (y-up: from +z towards +x). Off the axes, so it looks between a rig's cameras, not through one."""
    vertical = up_vector(up)
    front = next(axis for axis in np.eye(3)[[2, 0, 1]] if abs(axis @ vertical) < 0.5)
    side = np.cross(vertical, front)
    azimuth, elevation = math.radians(azimuth_deg), math.radians(elevation_deg)
    horizontal = math.cos(azimuth) * front + math.sin(azimuth) * side
    return centre + 2.5 * extent * (math.cos(elevation) * horizontal + math.sin(elevation) * vertical)
