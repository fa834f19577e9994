"""Reading 360-degree depth maps: equirectangular images of metric distance, the input of `sync-splat panorama`.

A depth map is a 2:1 equirectangular image (docs/conventions.md: row 0 north, longitude growing to the right, the
seam at the left and right edges) holding, per texel, the distance to the scene along that direction. Formats:

- `.npy`: a 2D array of real numbers (loaded without pickle; the header is checked against the file's size first, so
  a header that claims more than the file holds allocates nothing);
- `.png`: a single-channel **16-bit** PNG of integers, times `png_scale` (0.001 reads millimetres as metres). An
  8-bit PNG holds no metric depth (the official SyncTweedies code conditioned on a colour-mapped `*_vis.png` with
  uint8 wrap-around, which folds far depths onto near ones), so it is refused;
- `.exr`: read through imageio where a plugin for it is installed (one channel, or identical channels); otherwise
  the error says to convert it to `.npy`;
- `.dpt`: the Sintel / 360MonoDepth binary format, little-endian: a float32 tag 202021.25, int32 width, int32
  height, then `height * width` float32 depths, row-major (as 360MonoDepth's own reader).

Every problem is one `InputError` line naming the file, what is wrong and the fix. Inputs are only read.
Depth is scale-free for the panorama pipeline (ControlNet sees min-max normalised inverse depth), so `png_scale`
changes the returned values but not a painted panorama.
"""

from __future__ import annotations

import tokenize
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError

DPT_TAG = 202021.25
"""The float32 tag that opens a `.dpt` file."""
_DPT_HEADER_BYTES = 12
_MAX_DPT_SIDE = 100_000

SUFFIXES = (".npy", ".png", ".exr", ".dpt")
"""Depth map file types `read_depth_map` reads."""


def read_depth_map(path: str | Path, png_scale: float = 0.001) -> Float[Tensor, "Ht Wt"]:
    """Read a 360-degree depth map (equirectangular, 2:1) as float32 distances.

    Args:
        path: a `.npy`, 16-bit `.png`, `.exr` or `.dpt` file.
        png_scale: distance per unit of a 16-bit PNG (0.001: the PNG holds millimetres, the result metres).

    Returns:
        The depth map `[Ht, 2 Ht]`, float32, every value finite and positive.

    Raises:
        InputError: the file is missing, of an unknown type, unreadable, truncated, not a 2:1 2D map, or holds
            non-finite or non-positive depths.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: depth map not found" + (" (it is a folder)" if path.is_dir() else ""))
    suffix = path.suffix.lower()
    if suffix == ".npy":
        depth = _read_npy(path)
    elif suffix == ".png":
        depth = _read_png(path, png_scale)
    elif suffix == ".exr":
        depth = _read_exr(path)
    elif suffix == ".dpt":
        depth = _read_dpt(path)
    else:
        raise InputError(
            f"{path}: unknown depth map type {path.suffix!r}: use one of {', '.join(SUFFIXES)} "
            "(a 2:1 equirectangular map of distances)"
        )
    return _check(path, depth)


def _read_npy(path: Path) -> np.ndarray:
    _check_npy_header(path)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:  # pickled object arrays, or a corrupt header
        raise InputError(f"{path}: not a plain numeric .npy array ({error}); save it with numpy.save") from error
    except OSError as error:
        raise InputError(f"{path}: cannot read the .npy file ({error})") from error
    if not isinstance(array, np.ndarray) or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise InputError(f"{path}: a depth map must hold real numbers, got dtype {getattr(array, 'dtype', None)}")
    return array


def _check_npy_header(path: Path) -> None:
    """Read only the .npy header and refuse a file that is empty, not a .npy, or shorter or longer than the array
    its header declares, before anything is allocated for it."""
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes): save the depth map with numpy.save")
    try:
        with path.open("rb") as stream:
            version = np.lib.format.read_magic(stream)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(stream)
            data_offset = stream.tell()
    except (ValueError, EOFError, OSError, SyntaxError, tokenize.TokenError) as error:  # numpy parses it as Python
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: not a readable .npy file ({reason}): save the depth map with numpy.save") from None
    if dtype.hasobject:
        raise InputError(
            f"{path}: a depth map must hold real numbers, got dtype {dtype} (pickled Python objects): save a float "
            "array with numpy.save"
        )
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    available = size - data_offset
    if needed != available:
        state = "truncated" if needed > available else "corrupt"
        raise InputError(
            f"{path}: {state}: its header declares a {dtype} array of shape {tuple(shape)} ({needed} bytes) but "
            f"{available} bytes follow the header: save the depth map again with numpy.save"
        )


def _read_png(path: Path, png_scale: float) -> np.ndarray:
    if not (np.isfinite(png_scale) and png_scale > 0):
        raise InputError(f"png_scale must be a positive number, got {png_scale}")
    try:
        array = iio.imread(path)
    except Exception as error:  # imageio raises many types for a corrupt image
        raise InputError(f"{path}: cannot read the PNG ({error})") from error
    if array.dtype != np.uint16:
        raise InputError(
            f"{path}: a PNG depth map must be single-channel 16-bit, got {array.dtype} with shape {array.shape} "
            "(colour-mapped depth previews hold no distances): save distances as 16-bit PNG or .npy"
        )
    return array.astype(np.float64) * png_scale


def _read_exr(path: Path) -> np.ndarray:
    try:
        array = np.asarray(iio.imread(path))
    except Exception as error:  # no EXR plugin (the usual case), or a corrupt file
        raise InputError(
            f"{path}: cannot read this EXR here ({type(error).__name__}: no working imageio EXR plugin, or a corrupt "
            "file): convert it to .npy (e.g. numpy.save('depth.npy', depth)) and pass that"
        ) from error
    if array.ndim == 3:
        if not np.array_equal(array, np.broadcast_to(array[..., :1], array.shape)):
            raise InputError(
                f"{path}: the EXR has {array.shape[-1]} different channels; save the depth alone (one channel) as "
                ".npy or EXR"
            )
        array = array[..., 0]
    return array


def _read_dpt(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if len(data) < _DPT_HEADER_BYTES:
        raise InputError(f"{path}: truncated .dpt file: {len(data)} bytes, shorter than its 12-byte header")
    tag = float(np.frombuffer(data, dtype="<f4", count=1)[0])
    if tag != DPT_TAG:
        raise InputError(f"{path}: not a .dpt depth file: its tag is {tag!r}, expected {DPT_TAG}")
    width, height = (int(v) for v in np.frombuffer(data, dtype="<i4", count=2, offset=4))
    if not (0 < width < _MAX_DPT_SIDE and 0 < height < _MAX_DPT_SIDE):
        raise InputError(f"{path}: corrupt .dpt header: width {width}, height {height}")
    expected = _DPT_HEADER_BYTES + 4 * width * height
    if len(data) < expected:
        raise InputError(f"{path}: truncated .dpt file: {len(data)} bytes, but a {width}x{height} map needs {expected}")
    if len(data) > expected:
        raise InputError(f"{path}: corrupt .dpt file: {len(data) - expected} bytes follow the {width}x{height} map")
    return np.frombuffer(data, dtype="<f4", count=width * height, offset=_DPT_HEADER_BYTES).reshape(height, width)


def _check(path: Path, array: np.ndarray) -> Tensor:
    """The one shape and value check every format goes through."""
    if array.ndim != 2:
        raise InputError(f"{path}: a depth map must be a 2D array [height, width], got shape {tuple(array.shape)}")
    height, width = array.shape
    if height < 2 or width != 2 * height:
        raise InputError(
            f"{path}: a 360-degree depth map is equirectangular with aspect 2:1 (width = 2 x height), got "
            f"{width}x{height} (width x height)"
        )
    array = array.astype(np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise InputError(
            f"{path}: {int((~finite).sum())} depths are not finite (first at row {row}, column {col}): fill the holes "
            "(e.g. with the nearest valid depth) before painting"
        )
    if not (array > 0).all():
        row, col = np.argwhere(array <= 0)[0]
        raise InputError(
            f"{path}: {int((array <= 0).sum())} depths are zero or negative (first at row {row}, column {col}, "
            f"value {array[row, col]}): a depth map must hold positive distances; fill missing values first"
        )
    return torch.from_numpy(array.copy())
