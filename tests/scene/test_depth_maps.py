"""Reading 360-degree depth maps: every format round-trips, every bad file gives one clear InputError, and inputs are
never modified."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from sync_splat.errors import InputError
from sync_splat.scene.depth_maps import DPT_TAG, read_depth_map


def depth_array(height: int = 4) -> np.ndarray:
    """Positive distances, 2:1, all different."""
    return (1.0 + np.arange(height * 2 * height, dtype=np.float32).reshape(height, 2 * height) / 8).astype(np.float32)


def dpt_bytes(depth: np.ndarray, width: int | None = None, height: int | None = None, tag: float = DPT_TAG) -> bytes:
    """A .dpt file: float32 tag, int32 width, int32 height, float32 row-major depths (little-endian)."""
    h, w = depth.shape
    header = struct.pack("<fii", tag, w if width is None else width, h if height is None else height)
    return header + depth.astype("<f4").tobytes()


def read_unchanged(path: Path, **kwargs) -> torch.Tensor:
    """Read the depth map and check the file was not modified."""
    before = path.read_bytes(), path.stat().st_mtime_ns
    try:
        return read_depth_map(path, **kwargs)
    finally:
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_npy_round_trip(tmp_path) -> None:
    path = tmp_path / "depth.npy"
    np.save(path, depth_array().astype(np.float64))
    depth = read_unchanged(path)
    assert depth.dtype == torch.float32 and depth.shape == (4, 8)
    np.testing.assert_array_equal(depth.numpy(), depth_array())


def test_16_bit_png_is_scaled(tmp_path) -> None:
    path = tmp_path / "depth.png"
    millimetres = (depth_array() * 1000).astype(np.uint16)
    iio.imwrite(path, millimetres)
    np.testing.assert_allclose(read_unchanged(path).numpy(), millimetres / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(read_unchanged(path, png_scale=1.0).numpy(), millimetres, rtol=1e-6)


def test_dpt_round_trip(tmp_path) -> None:
    path = tmp_path / "depth.dpt"
    path.write_bytes(dpt_bytes(depth_array()))
    np.testing.assert_array_equal(read_unchanged(path).numpy(), depth_array())


def write_npy(array: np.ndarray):
    def write(path: Path) -> None:
        np.save(path, array)

    return write


def write_bytes(data: bytes):
    def write(path: Path) -> None:
        path.write_bytes(data)

    return write


def write_png(array: np.ndarray):
    def write(path: Path) -> None:
        iio.imwrite(path, array)

    return write


with_nan = depth_array()
with_nan[1, 2] = np.nan
with_zero = depth_array()
with_zero[3, 0] = 0.0


def npy_with_unclosed_shape() -> bytes:
    """A .npy whose header dict leaves the shape's bracket open (one byte changed): numpy's header parser then fails
    inside Python's tokenizer, with an error that is not a ValueError."""
    data = io.BytesIO()
    np.save(data, depth_array())
    return data.getvalue().replace(b"(4, 8)", b"(4, 8 ", 1)


BAD_FILES = {
    "unknown extension": ("depth.txt", write_bytes(b"1 2 3"), "unknown depth map type"),
    "not 2D": ("depth.npy", write_npy(np.ones((4, 8, 3), np.float32)), "2D array"),
    "not 2:1": ("depth.npy", write_npy(np.ones((4, 4), np.float32)), "2:1"),
    "not finite": ("depth.npy", write_npy(with_nan), "not finite"),
    "not positive": ("depth.npy", write_npy(with_zero), "zero or negative"),
    "negative": ("depth.npy", write_npy(-depth_array()), "zero or negative"),
    "not numeric": ("depth.npy", write_npy(np.array([["a"] * 4] * 2)), "real numbers"),
    "pickled": ("depth.npy", write_npy(np.array([{}, {}], dtype=object)), "numpy.save"),
    "npy header unparsable": ("depth.npy", write_bytes(npy_with_unclosed_shape()), "not a readable .npy file"),
    "8-bit png": ("depth.png", write_png((depth_array() * 10).astype(np.uint8)), "16-bit"),
    "rgb png": ("depth.png", write_png(np.zeros((4, 8, 3), np.uint8)), "16-bit"),
    "dpt shorter than its header": ("depth.dpt", write_bytes(struct.pack("<f", DPT_TAG)), "truncated"),
    "dpt truncated data": ("depth.dpt", write_bytes(dpt_bytes(depth_array())[:-4]), "truncated"),
    "dpt trailing data": ("depth.dpt", write_bytes(dpt_bytes(depth_array()) + b"\0" * 4), "follow"),
    "dpt wrong tag": ("depth.dpt", write_bytes(dpt_bytes(depth_array(), tag=1.5)), "tag"),
    "dpt bad size": ("depth.dpt", write_bytes(dpt_bytes(depth_array(), width=-3)), "header"),
    "exr unreadable": ("depth.exr", write_bytes(b"v/1\x01" + b"\0" * 60), "convert it to .npy"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_give_one_clear_error(tmp_path, case) -> None:
    name, write, message = BAD_FILES[case]
    path = tmp_path / name
    write(path)
    with pytest.raises(InputError, match=message) as error:
        read_unchanged(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_depth_map(tmp_path / "nowhere.npy")
    with pytest.raises(InputError, match="folder"):
        read_depth_map(tmp_path)
