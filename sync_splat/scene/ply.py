"""3DGS PLY files: reading every layout trainers write, and writing the standard one.

Inputs (`read_ply`): the standard 3DGS layout, binary or ascii, float or double properties (held as float32), with or
without normals, `f_rest_*` of degree 0-3 in the channel-major Inria order (the K-1 coefficients of red, then green,
then blue); or the `ply-color-mode rgb` variant with uint8 `red green blue` instead of `f_dc_*`. Properties this
layout does not name are ignored. That includes Mip-Splatting's `filter_3D`: its 3D smoothing filter would enlarge
each Gaussian (and lower its opacity) at render time, but every renderer downstream of us (gsplat, splatfacto,
standard viewers) ignores it too, so we keep the stored geometry exactly as written. The header is ASCII text, but for
its comment and obj_info lines, which may hold any bytes (exporters write UTF-8 names and paths there). It is checked
against the file's size before any data is read, so a header that claims more than the file holds is refused at once.

Output (`write_ply`): `x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3`, binary little-endian float32,
raw values, written atomically; `read_ply(write_ply(scene))` is bit-exact. Every problem with an input is one
`InputError` line naming the file, the property and the fix.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sync_splat.errors import InputError
from sync_splat.functional.sh import SH_C0, SH_DEGREES
from sync_splat.scene.files import atomic_output
from sync_splat.scene.gaussians import GaussianScene

_GEOMETRY = ("x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_F_DC = ("f_dc_0", "f_dc_1", "f_dc_2")
_RGB = ("red", "green", "blue")
# PLY scalar type names (both spellings) -> numpy dtype characters.
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_ASCII_OR_QUESTION_MARK = bytes(range(128)) + b"?" * 128
"""A `bytes.translate` table that keeps ASCII and replaces every other byte with '?'."""


@dataclass(frozen=True)
class _PlyElementHeader:
    name: str
    count: int
    properties: dict[str, str]  # name -> PLY type, or "list <count type> <value type>"


def _read_ply_header(path: Path) -> tuple[str, list[_PlyElementHeader], bytes]:
    """The format, the elements and the header's bytes up to the data (their length is the data's offset), read
    without loading any data. Comment and obj_info lines are free text in any encoding; every other line is ASCII."""
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
    lines = []
    for number, raw in enumerate(head[: end.start()].splitlines()[1:], start=2):
        if raw.split()[:1] in ([b"comment"], [b"obj_info"]):
            continue
        try:
            lines.append(raw.decode("ascii"))
        except UnicodeDecodeError:
            raise InputError(
                f"{path}: line {number} of the PLY header is not ASCII text (only comment and obj_info lines may hold "
                "other characters): the file is corrupt or not a PLY; re-export it"
            ) from None
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
    return file_format, elements, head[: end.end()]


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


class _AsciiHeaderFile(io.FileIO):
    """A PLY file as plyfile reads it: every non-ASCII byte of the header (only comment and obj_info lines hold
    them) shows as '?', since plyfile decodes the header as ASCII; the byte count, and so every offset, is unchanged,
    and the data after the header is read (or memory-mapped) from the file as it is."""

    def __init__(self, path: Path, header: bytes) -> None:
        super().__init__(path, "rb")
        self._header = header.translate(_ASCII_OR_QUESTION_MARK)

    def read(self, size: int = -1) -> bytes:
        start = self.tell()
        data = super().read(size)
        if start < len(self._header):
            shown = self._header[start : start + len(data)]
            data = shown + data[len(shown) :]
        return data


def _min_binary_size(kind: str) -> int:
    words = kind.split()
    return np.dtype(_PLY_TYPES[words[1] if words[0] == "list" else words[0]]).itemsize


def read_ply(path: str | os.PathLike[str]) -> GaussianScene:
    """Read a 3DGS PLY (module docstring: accepted layouts); values are converted to float32."""
    from plyfile import PlyData, PlyParseError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file: pass an existing .ply")
    file_format, elements, header = _read_ply_header(path)
    vertex = next((e for e in elements if e.name == "vertex"), None)
    if vertex is None:
        raise InputError(f"{path}: no 'vertex' element: a 3DGS PLY stores one vertex per Gaussian")
    props = vertex.properties
    f_rest = _f_rest_names(path, props)
    color_names = _F_DC if any(name in props for name in _F_DC) or not all(c in props for c in _RGB) else _RGB
    missing = [name for name in (*_GEOMETRY, *color_names) if name not in props]
    if missing:
        hint = " (or uchar red green blue)" if color_names == _F_DC and set(missing) & set(_F_DC) else ""
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
    if color_names == _RGB and any(props[c] not in ("uchar", "uint8") for c in _RGB):
        raise InputError(f"{path}: properties red green blue must be uchar (0-255): re-export the file")
    if vertex.count == 0:
        raise InputError(f"{path}: the file holds zero Gaussians: export a scene with at least one Gaussian")
    _check_ply_size(path, file_format, elements, len(header))

    names = [*_GEOMETRY, *color_names, *f_rest]
    try:
        with _AsciiHeaderFile(path, header) as stream:
            data = PlyData.read(stream, mmap="r")["vertex"].data  # read-only map; columns are copied below
            table = np.stack([np.asarray(data[name], dtype=np.float32) for name in names], axis=1)  # [G, P]
    except (PlyParseError, ValueError, OSError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: cannot parse the PLY data ({reason}): the file is truncated or corrupt") from None
    bad = {name: int(n) for name, n in zip(names, (~np.isfinite(table)).sum(axis=0), strict=True) if n}
    if bad:
        listing = ", ".join(f"{name}: {n}" for name, n in bad.items())
        raise InputError(
            f"{path}: NaN or infinite values ({listing}; out of {len(table)} Gaussians): remove those Gaussians "
            "(ns-export gaussian-splat drops them) and re-export"
        )
    table = torch.from_numpy(table)
    sh_dc = table[:, 11:14]  # after the 11 geometry columns
    if color_names == _RGB:
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
    if len(indices) not in (3 * (k - 1) for k in SH_DEGREES):
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
