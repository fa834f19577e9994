"""Gaussian splat scenes: the tensors, and reading and writing them (3DGS PLY files, splatfacto checkpoints and runs).

A `GaussianScene` holds the raw, pre-activation parameters of G Gaussians, exactly as 3DGS PLY files and splatfacto
store them (docs/conventions.md): `means` [G, 3], `quats_wxyz` [G, 4] (possibly unnormalised), `log_scales` [G, 3]
(`scale = exp`), `opacity_logits` [G] (`alpha = sigmoid`) and spherical harmonics `sh` [G, K, 3] with
K = (degree + 1)^2 and the DC term at `sh[:, 0]`, so the DC colour is `rgb01 = 0.5 + SH_C0 * sh[:, 0]`.

Inputs (`GaussianScene.load`):
- a `.ply` in the standard 3DGS layout, binary or ascii, float or double properties (held as float32), with or
  without normals, `f_rest_*` of degree 0-3 in the channel-major Inria order (the K-1 coefficients of red, then
  green, then blue); or the `ply-color-mode rgb` variant with uint8 `red green blue` instead of `f_dc_*`.
  Properties this layout does not name are ignored. That includes Mip-Splatting's `filter_3D`: its 3D smoothing
  filter would enlarge each Gaussian (and lower its opacity) at render time, but every renderer downstream of us
  (gsplat, splatfacto, standard viewers) ignores it too, so we keep the stored geometry exactly as written;
- a splatfacto checkpoint (`.ckpt`), a run's `config.yml` (the newest `nerfstudio_models/step-*.ckpt` beside it is
  read), or a run folder. Checkpoints load with `torch.load(weights_only=True)`: nothing is unpickled.

Output (`GaussianScene.save`): the standard layout `x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3`,
binary little-endian float32, raw values, written atomically; `load(save(scene))` is bit-exact. Inputs are never
written to. Every problem with an input is one `InputError` line naming the file, the property and the fix.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError
from sync_splat.scene.files import atomic_output

SH_C0 = 0.28209479177387814
"""The degree-0 spherical-harmonic constant 1 / (2 sqrt(pi)): `rgb01 = 0.5 + SH_C0 * sh_dc`."""

_GEOMETRY = ("x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_F_DC = ("f_dc_0", "f_dc_1", "f_dc_2")
_RGB = ("red", "green", "blue")
_SH_COUNTS = {1: 0, 4: 1, 9: 2, 16: 3}  # K -> degree
# PLY scalar type names (both spellings) -> numpy dtype characters.
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_SPLATFACTO_PARAMS = ("means", "scales", "quats", "opacities", "features_dc", "features_rest")


@dataclass(frozen=True, eq=False, repr=False)
class GaussianScene:
    """G Gaussians with their raw (pre-activation) parameters; geometry is never changed by this class.

    Attributes:
        means: centres, world frame.
        quats_wxyz: rotations, possibly unnormalised (normalise on use).
        log_scales: per-axis log standard deviations.
        opacity_logits: `alpha = sigmoid(opacity_logits)`.
        sh: spherical-harmonic coefficients, K = (degree + 1)^2, DC at `sh[:, 0]`.
        source: the file the scene was read from (`save` refuses to overwrite it); None for generated scenes.
    """

    means: Float[Tensor, "G 3"]
    quats_wxyz: Float[Tensor, "G 4"]
    log_scales: Float[Tensor, "G 3"]
    opacity_logits: Float[Tensor, " G"]
    sh: Float[Tensor, "G K 3"]
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        g = self.means.shape[0]
        expected = {
            "means": (g, 3),
            "quats_wxyz": (g, 4),
            "log_scales": (g, 3),
            "opacity_logits": (g,),
            "sh": (g, self.sh.shape[1] if self.sh.ndim == 3 else -1, 3),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"GaussianScene.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        if self.sh.shape[1] not in _SH_COUNTS:
            raise ValueError(f"GaussianScene.sh has K = {self.sh.shape[1]} coefficients; K must be 1, 4, 9 or 16")

    def __repr__(self) -> str:
        return f"GaussianScene(num_gaussians={self.num_gaussians}, sh_degree={self.sh_degree}, source={self.source})"

    # ---- views of the data ----------------------------------------------------------------------------------

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return _SH_COUNTS[self.sh.shape[1]]

    @property
    def rgb01(self) -> Float[Tensor, "G 3"]:
        """The view-independent (DC) colour, clamped to [0, 1]."""
        return (0.5 + SH_C0 * self.sh[:, 0]).clamp(0.0, 1.0)

    def colours(self, camera_centre: Float[Tensor, "3"] | None = None) -> Float[Tensor, "G 3"]:
        """Colours in [0, 1]: the DC colour, or the full SH colour seen from `camera_centre` (gsplat's rule:
        direction = mean - camera centre, colour = clamp(SH(direction) + 0.5))."""
        if camera_centre is None or self.sh_degree == 0:
            return self.rgb01
        dirs = torch.nn.functional.normalize(self.means - camera_centre.to(self.means), dim=-1)
        bases = _sh_bases(self.sh_degree, dirs)  # [G, K]
        return ((bases[:, :, None] * self.sh).sum(dim=1) + 0.5).clamp(0.0, 1.0)

    @property
    def bounds(self) -> tuple[Float[Tensor, "3"], Float[Tensor, "3"]]:
        """Axis-aligned bounds (min, max) of the Gaussian centres."""
        return self.means.amin(dim=0), self.means.amax(dim=0)

    @property
    def centre(self) -> Float[Tensor, "3"]:
        """The centre of the axis-aligned bounds: where an orbit rig looks."""
        low, high = self.bounds
        return (low + high) / 2

    @property
    def radius(self) -> float:
        """The radius of the sphere around `centre` that holds every Gaussian centre."""
        return float((self.means - self.centre).norm(dim=-1).max())

    def bounding_sphere(self, trim: float = 0.0) -> tuple[Float[Tensor, "3"], float]:
        """A sphere around the bulk of the scene, ignoring a `trim` fraction of outliers (floaters of real captures).

        The centre is the middle of the per-axis `[trim, 1 - trim]` quantiles of the means; the radius is the
        `1 - trim` quantile of the distances to it. `trim = 0` gives `(centre, radius)`.
        """
        low, high = _quantile(self.means, trim), _quantile(self.means, 1.0 - trim)
        centre = (low + high) / 2
        distances = (self.means - centre).norm(dim=-1, keepdim=True)
        return centre, float(_quantile(distances, 1.0 - trim)[0])

    # ---- new scenes -----------------------------------------------------------------------------------------

    def with_colors(self, rgb01: Float[Tensor, "G 3"]) -> GaussianScene:
        """The same geometry (the very same tensors) with view-independent colours: the DC term becomes
        `(rgb01 - 0.5) / SH_C0` and the higher-order SH coefficients are zero (K is kept)."""
        if tuple(rgb01.shape) != (self.num_gaussians, 3):
            raise ValueError(f"with_colors: rgb01 has shape {tuple(rgb01.shape)}, expected ({self.num_gaussians}, 3)")
        sh = torch.zeros_like(self.sh)
        sh[:, 0] = (rgb01.to(self.sh) - 0.5) / SH_C0
        return dataclasses.replace(self, sh=sh)

    def to(self, device: torch.device | str) -> GaussianScene:
        """The scene with every tensor on `device`."""
        tensors = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self) if f.name != "source"}
        return dataclasses.replace(self, **tensors)

    # ---- files ----------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GaussianScene:
        """Read a scene from a `.ply`, a splatfacto `.ckpt`, a run's `config.yml`, or a run folder."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file: pass a .ply, a splatfacto .ckpt or a run's config.yml")
        if path.is_dir():  # a run folder (config.yml inside) or its checkpoint folder
            config, models = path / "config.yml", path / "nerfstudio_models"
            run = config if config.is_file() else models if models.is_dir() else path
            return read_splatfacto_checkpoint(latest_checkpoint(run))
        suffix = path.suffix.lower()
        if suffix == ".ply":
            return read_ply(path)
        if suffix == ".ckpt":
            return read_splatfacto_checkpoint(path)
        if suffix in (".yml", ".yaml"):
            return read_splatfacto_checkpoint(latest_checkpoint(path))
        raise InputError(
            f"{path}: unknown extension {path.suffix!r}: pass a 3DGS .ply, a splatfacto .ckpt or a run's config.yml"
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the standard 3DGS PLY (see `write_ply`); returns the path written."""
        return write_ply(self, path)


# ---- PLY files ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlyElementHeader:
    name: str
    count: int
    properties: dict[str, str]  # name -> PLY type, or "list <count type> <value type>"


def _read_ply_header(path: Path) -> tuple[str, list[_PlyElementHeader], int]:
    """The format, the elements and the byte offset of the data, read without loading any data."""
    with path.open("rb") as stream:
        head = stream.read(1 << 16)
        while b"end_header" not in head and len(head) < (1 << 24):
            chunk = stream.read(1 << 16)
            if not chunk:
                break
            head += chunk
    if not head.startswith(b"ply"):
        raise InputError(f"{path}: not a PLY file (it does not start with 'ply'): pass a 3DGS .ply")
    end = re.search(rb"(\r\n|\n|\r)end_header(\r\n|\n|\r)", head)
    if end is None:
        raise InputError(f"{path}: the PLY header has no 'end_header' line: the file is truncated or not a PLY")
    try:
        lines = head[: end.start()].decode("ascii").splitlines()[1:]
    except UnicodeDecodeError:
        raise InputError(f"{path}: the PLY header is not ASCII text: re-export the file") from None
    file_format, elements = None, []
    for line in lines:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) == 3:
            file_format = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append(_PlyElementHeader(words[1], int(words[2]), {}))
        elif words[0] == "property" and elements and len(words) >= 3:
            elements[-1].properties[words[-1]] = " ".join(words[1:-1])
        else:
            raise InputError(f"{path}: malformed PLY header line {line!r}: re-export the file")
    if file_format not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise InputError(f"{path}: unknown PLY format {file_format!r}: expected ascii or binary")
    for element in elements:
        for name, kind in element.properties.items():
            words = kind.split()
            scalar = len(words) == 1 and words[0] in _PLY_TYPES
            listed = len(words) == 3 and words[0] == "list" and words[1] in _PLY_TYPES and words[2] in _PLY_TYPES
            if not (scalar or listed):
                raise InputError(
                    f"{path}: property {name!r} of element {element.name!r} has type {kind!r}, which is not a PLY "
                    "number type: re-export the file"
                )
    return file_format, elements, end.end()


def _check_ply_size(path: Path, file_format: str, elements: list[_PlyElementHeader], data_offset: int) -> None:
    """Reject a file that cannot hold what its header declares, before anything is allocated for it."""
    available = path.stat().st_size - data_offset
    if file_format == "ascii":  # every value takes at least one character and one separator
        needed = sum(e.count * 2 * len(e.properties) for e in elements) - 1
    else:  # scalars have a fixed size; a list takes at least its length field ("list <length type> <type>")
        needed = sum(e.count * sum(_min_binary_size(kind) for kind in e.properties.values()) for e in elements)
    if needed > available:
        declared = ", ".join(f"{e.count} {e.name} rows" for e in elements)
        raise InputError(
            f"{path}: truncated: the header declares {declared} (at least {needed} bytes of data) but the file holds "
            f"only {available} bytes after the header: re-export or re-download it"
        )


def _min_binary_size(kind: str) -> int:
    words = kind.split()
    return np.dtype(_PLY_TYPES[words[1] if words[0] == "list" else words[0]]).itemsize


def read_ply(path: str | os.PathLike[str]) -> GaussianScene:
    """Read a 3DGS PLY (module docstring: accepted layouts); values are converted to float32."""
    from plyfile import PlyData, PlyParseError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file: pass an existing .ply")
    file_format, elements, data_offset = _read_ply_header(path)
    vertex = next((e for e in elements if e.name == "vertex"), None)
    if vertex is None:
        raise InputError(f"{path}: no 'vertex' element: a 3DGS PLY stores one vertex per Gaussian")
    props = vertex.properties
    f_rest = _f_rest_names(path, props)
    colour_names = _F_DC if any(name in props for name in _F_DC) or not all(c in props for c in _RGB) else _RGB
    missing = [name for name in (*_GEOMETRY, *colour_names) if name not in props]
    if missing:
        hint = " (or uchar red green blue)" if colour_names == _F_DC and set(missing) & set(_F_DC) else ""
        raise InputError(
            f"{path}: missing vertex properties {', '.join(missing)}{hint}: this is not a 3D Gaussian splatting "
            "PLY (x y z f_dc_0..2 opacity scale_0..2 rot_0..3); export the scene as a 3DGS .ply"
        )
    for name in (*_GEOMETRY, *_F_DC, *f_rest):
        if name in props and props[name] not in ("float", "float32", "double", "float64"):
            raise InputError(
                f"{path}: property {name!r} has type {props[name]!r}; a 3DGS PLY stores it as float or double: "
                "re-export the file"
            )
    if colour_names == _RGB and any(props[c] not in ("uchar", "uint8") for c in _RGB):
        raise InputError(f"{path}: properties red green blue must be uchar (0-255): re-export the file")
    if vertex.count == 0:
        raise InputError(f"{path}: the file holds zero Gaussians: export a scene with at least one Gaussian")
    _check_ply_size(path, file_format, elements, data_offset)

    try:
        data = PlyData.read(str(path), mmap="r")["vertex"].data  # read-only map; columns are copied below
    except (PlyParseError, ValueError, OSError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: cannot parse the PLY data ({reason}): the file is truncated or corrupt") from None

    names = [*_GEOMETRY, *colour_names, *f_rest]
    table = np.stack([np.asarray(data[name], dtype=np.float32) for name in names], axis=1)  # [G, P], a copy
    bad = {name: int(n) for name, n in zip(names, (~np.isfinite(table)).sum(axis=0), strict=True) if n}
    if bad:
        listing = ", ".join(f"{name}: {n}" for name, n in bad.items())
        raise InputError(
            f"{path}: NaN or infinite values ({listing}; out of {len(table)} Gaussians): remove those Gaussians "
            "(ns-export gaussian-splat drops them) and re-export"
        )
    table = torch.from_numpy(table)
    sh_dc = table[:, 11:14]  # after the 11 geometry columns
    if colour_names == _RGB:
        sh_dc = (sh_dc / 255.0 - 0.5) / SH_C0
    sh_rest = table[:, 14:].reshape(len(table), 3, len(f_rest) // 3).transpose(1, 2)  # channel-major -> [G, K-1, 3]
    return GaussianScene(
        means=table[:, 0:3].contiguous(),
        quats_wxyz=table[:, 7:11].contiguous(),
        log_scales=table[:, 4:7].contiguous(),
        opacity_logits=table[:, 3].contiguous(),
        sh=torch.cat([sh_dc[:, None], sh_rest], dim=1).contiguous(),
        source=path,
    )


def _f_rest_names(path: Path, props: dict[str, str]) -> list[str]:
    """The f_rest properties in index order; their count must be 3 (K - 1) for a degree 0-3 SH."""
    indices = sorted(int(m.group(1)) for name in props if (m := re.fullmatch(r"f_rest_(\d+)", name)))
    if indices != list(range(len(indices))):
        gap = next(i for i in range(len(indices) + 1) if i not in indices)
        raise InputError(f"{path}: f_rest properties are not numbered 0..{len(indices) - 1}: f_rest_{gap} is missing")
    if len(indices) not in (3 * (k - 1) for k in _SH_COUNTS):
        raise InputError(
            f"{path}: {len(indices)} f_rest properties do not match a spherical-harmonic degree: degrees 0, 1, 2, 3 "
            "need 0, 9, 24 or 45"
        )
    return [f"f_rest_{i}" for i in indices]


def ply_property_names(sh_degree: int) -> list[str]:
    """The standard 3DGS vertex properties, in file order, for a given SH degree."""
    num_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return [
        *("x", "y", "z", "nx", "ny", "nz"),
        *_F_DC,
        *(f"f_rest_{i}" for i in range(num_rest)),
        "opacity",
        *(f"scale_{i}" for i in range(3)),
        *(f"rot_{i}" for i in range(4)),
    ]


def write_ply(scene: GaussianScene, path: str | os.PathLike[str]) -> Path:
    """Write `scene` as a standard 3DGS PLY: binary little-endian float32, raw values, zero normals, f_rest in the
    channel-major Inria order. The file appears complete or not at all; the scene's own source is never overwritten.
    """
    from plyfile import PlyData, PlyElement

    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise InputError(f"{path}: a Gaussian scene is written as .ply: choose an output path ending in .ply")
    source = scene.source
    if source is not None and (path.resolve() == source.resolve() or (path.exists() and path.samefile(source))):
        raise InputError(f"{path}: this is the scene's input file and is never overwritten: choose another path")
    g = scene.num_gaussians
    sh_rest = scene.sh[:, 1:].transpose(1, 2).reshape(g, -1)  # [G, 3 (K - 1)]: all of red, then green, then blue
    table = torch.cat(
        [
            scene.means,
            torch.zeros_like(scene.means),
            scene.sh[:, 0],
            sh_rest,
            scene.opacity_logits[:, None],
            scene.log_scales,
            scene.quats_wxyz,
        ],
        dim=1,
    )
    table = table.detach().to("cpu", torch.float32).numpy().astype("<f4", copy=False)
    names = ply_property_names(scene.sh_degree)
    rows = np.ascontiguousarray(table).view(np.dtype([(name, "<f4") for name in names])).reshape(g)
    ply = PlyData([PlyElement.describe(rows, "vertex")], byte_order="<", comments=["Generated by sync-splat"])
    with atomic_output(path) as tmp:
        ply.write(str(tmp))
    return path


# ---- splatfacto checkpoints and runs ------------------------------------------------------------------------


def latest_checkpoint(run: str | os.PathLike[str]) -> Path:
    """The newest `step-*.ckpt` of a nerfstudio run, given its `config.yml` or a folder of checkpoints.

    Nerfstudio lays a run out as `<run>/config.yml` and `<run>/<relative_model_dir>/step-XXXXXXXXX.ckpt`
    (`relative_model_dir` is `nerfstudio_models` unless the config says otherwise). The config is a YAML of Python
    objects; it is read with a safe loader that keeps their fields as plain data and constructs nothing.
    """
    run = Path(run)
    if run.is_dir():
        folder, where = run, run
    else:
        relative = _read_run_config(run).get("relative_model_dir", ["nerfstudio_models"])  # a pickled Path's args
        folder = run.parent.joinpath(*(relative if isinstance(relative, list) else [str(relative)]))
        where = f"{folder} (the checkpoint folder beside this config.yml)"
    steps = {}
    if folder.is_dir():
        for candidate in folder.iterdir():
            if m := re.fullmatch(r"step-(\d+)\.ckpt", candidate.name):
                steps[int(m.group(1))] = candidate
    if not steps:
        raise InputError(f"{run}: no step-*.ckpt checkpoint in {where}: train the run further or pass a .ckpt file")
    return steps[max(steps)]


def _read_run_config(path: Path) -> dict:
    import yaml

    class PlainLoader(yaml.SafeLoader):
        """SafeLoader that reads `!!python/...` tagged nodes as the plain mappings, lists and strings they hold."""

    def plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> object:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    PlainLoader.add_multi_constructor("tag:yaml.org,2002:python/", plain)
    try:
        config = yaml.load(path.read_text("utf8"), Loader=PlainLoader)  # PlainLoader constructs plain data only
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, OSError) as err:
        reason = str(err).splitlines()[0]
        raise InputError(f"{path}: not a readable nerfstudio config.yml ({reason}): pass the run's .ckpt") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: not a nerfstudio config.yml (no trainer settings): pass the run's .ckpt instead")
    return config


def read_splatfacto_checkpoint(path: str | os.PathLike[str]) -> GaussianScene:
    """Read the Gaussians of a splatfacto checkpoint (`{"step", "pipeline", "optimizers", ...}`).

    The parameters are `pipeline["_model.gauss_params.<name>"]` (older checkpoints: `_model.<name>`): means, log
    scales, wxyz quats, opacity logits [G, 1], `features_dc` [G, 3] and `features_rest` [G, K-1, 3]. A degree-0
    splatfacto model (`features_rest` [G, 0, 3]) stores logit colours in `features_dc` (it renders
    `sigmoid(features_dc)`), so its DC coefficient is `(sigmoid(features_dc) - 0.5) / SH_C0`, as nerfstudio's
    `shs_0` computes it; otherwise `features_dc` is the DC coefficient itself.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint: pass an existing splatfacto .ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # torch raises many types for a bad file; all mean the same to the user
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        reason = f"it is truncated or not a PyTorch checkpoint: {detail}"
        if "weights_only" in str(err) or "Weights only load failed" in str(err):
            reason = "it holds Python objects besides tensors, which sync-splat never unpickles"
        raise InputError(f"{path}: cannot read the checkpoint ({reason}): pass a splatfacto checkpoint") from None
    state = checkpoint.get("pipeline", checkpoint) if isinstance(checkpoint, dict) else None
    state = state if isinstance(state, dict) else {}
    prefix = next(
        (p for p in ("_model.gauss_params.", "_model.", "gauss_params.", "") if f"{p}means" in state),
        "_model.gauss_params.",
    )
    missing = [f"{prefix}{n}" for n in _SPLATFACTO_PARAMS if not isinstance(state.get(f"{prefix}{n}"), Tensor)]
    if missing:
        raise InputError(
            f"{path}: no Gaussians in this checkpoint (missing {', '.join(missing)}): pass a splatfacto checkpoint"
        )
    params = {name: state[f"{prefix}{name}"].detach().to(torch.float32).clone() for name in _SPLATFACTO_PARAMS}
    params["opacities"] = params["opacities"].reshape(-1)
    g = params["means"].shape[0]
    expected = {"means": (g, 3), "scales": (g, 3), "quats": (g, 4), "opacities": (g,), "features_dc": (g, 3)}
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise InputError(
                f"{path}: {prefix}{name} has shape {tuple(params[name].shape)}, expected {shape}: pass a splatfacto "
                "checkpoint"
            )
    rest = params["features_rest"]
    if rest.ndim != 3 or rest.shape[0] != g or rest.shape[2] != 3 or rest.shape[1] + 1 not in _SH_COUNTS:
        raise InputError(
            f"{path}: {prefix}features_rest has shape {tuple(rest.shape)}, expected ({g}, K-1, 3) with K = 1, 4, 9 or "
            "16: pass a splatfacto checkpoint"
        )
    if g == 0:
        raise InputError(f"{path}: the checkpoint holds zero Gaussians: pass a trained splatfacto checkpoint")
    bad = {name: int((~torch.isfinite(t)).sum()) for name, t in params.items()}
    bad = {name: n for name, n in bad.items() if n}
    if bad:
        listing = ", ".join(f"{prefix}{name}: {n}" for name, n in bad.items())
        raise InputError(f"{path}: NaN or infinite values ({listing}): the run diverged; pass an earlier checkpoint")
    sh_dc = params["features_dc"]
    if rest.shape[1] == 0:
        sh_dc = (torch.sigmoid(sh_dc) - 0.5) / SH_C0
    return GaussianScene(
        means=params["means"],
        quats_wxyz=params["quats"],
        log_scales=params["scales"],
        opacity_logits=params["opacities"],
        sh=torch.cat([sh_dc[:, None], rest], dim=1),
        source=path,
    )


# ---- small maths --------------------------------------------------------------------------------------------


def _quantile(values: Float[Tensor, "G D"], q: float) -> Float[Tensor, " D"]:
    """Per-column q-quantile (nearest rank), without torch.quantile's 16M-element limit."""
    k = min(max(int(round(q * (values.shape[0] - 1))), 0), values.shape[0] - 1)
    return values.kthvalue(k + 1, dim=0).values


def _sh_bases(degree: int, dirs: Float[Tensor, "G 3"]) -> Float[Tensor, "G K"]:
    """Real SH basis functions up to degree 3 at unit directions, in the order and signs of 3DGS and gsplat."""
    x, y, z = dirs.unbind(-1)
    bases = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        c1 = 0.4886025119029199
        bases += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        bases += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.31539156525252005 * (2 * zz - xx - yy),
            -1.0925484305920792 * x * z,
            0.5462742152960396 * (xx - yy),
        ]
    if degree >= 3:
        bases += [
            -0.5900435899266435 * y * (3 * xx - yy),
            2.890611442640554 * x * y * z,
            -0.4570457994644658 * y * (4 * zz - xx - yy),
            0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
            -0.4570457994644658 * x * (4 * zz - xx - yy),
            1.445305721320277 * z * (xx - yy),
            -0.5900435899266435 * x * (xx - 3 * yy),
        ]
    return torch.stack(bases, dim=-1)
