"""Fuzzing the file loaders: seeded mutants of valid PLY, OBJ and .npy files each load or raise `InputError`.

The valid files are built here: a binary and an ascii 3DGS PLY, a textured OBJ, and a 2:1 `.npy` depth map. Each
mutant changes one thing: random bytes, a cut, inserted garbage, a number anywhere in the text replaced by an extreme
one (huge counts and shapes, zero and negative indices, NaN), or a header or text line deleted or repeated. A worker
process loads every mutant through the public loaders (`GaussianScene.load`, `MeshAsset.load`, `read_depth_map`)
with its address space capped a little above what it holds after the imports, so that a loader which believes a
header and tries to allocate for it fails here (as `MemoryError`) instead of taking the machine's memory, and with an
alarm per file, so a loader that loops is reported instead of hanging the suite. Anything but a load or an
`InputError`, and any change to the input file, is a failure.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SEED = 16
MUTANTS_PER_FILE = 100
"""Mutants of each of the four valid files: 400 in all."""
HEADROOM_BYTES = 1 << 30
"""Address space the worker may add to what it maps after the imports: far beyond what any of these files (a few
kilobytes) needs, far below what a believed huge header asks for."""
SECONDS_PER_FILE = 20
"""Alarm per mutant: every load here takes milliseconds; this bound only tells a loop from a slow machine."""
EXTREME_NUMBERS = (
    b"0", b"-1", b"-0", b"2147483648", b"4294967296", b"18446744073709551616", b"99999999999999999999999999999",
    b"1e308", b"1e400", b"nan", b"-inf",
)  # fmt: skip


def valid_files(folder: Path) -> dict[str, bytes]:
    """The four valid files, by name: loading each must succeed (the worker checks that first)."""
    import plyfile
    import torch

    from sync_splat.scene.gaussians import GaussianScene

    generator = torch.Generator().manual_seed(SEED)
    scene = GaussianScene(
        means=torch.randn(6, 3, generator=generator),
        quats_wxyz=torch.randn(6, 4, generator=generator),
        log_scales=torch.randn(6, 3, generator=generator) - 3,
        opacity_logits=torch.randn(6, generator=generator),
        sh=torch.randn(6, 4, 3, generator=generator),
    )
    binary = scene.save(folder / "scene.ply").read_bytes()
    text = plyfile.PlyData.read(str(folder / "scene.ply"))
    text.text = True
    text.comments = ["made for the fuzz test"]
    text.write(str(folder / "scene_ascii.ply"))
    mesh = (
        "# a pyramid with UVs and normals\nmtllib pyramid.mtl\n"
        "v -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\nv 0 0 1.5\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvt 0.5 0.5\n"
        "vn 0 0 -1\nvn 0 -0.83 0.55\nvn 0.83 0 0.55\nvn 0 0.83 0.55\nvn -0.83 0 0.55\n"
        "usemtl skin\nf 1/1/1 3/3/1 2/2/1\nf 1/1/1 4/4/1 3/3/1\n"
        "f 1/1/2 2/2/2 5/5/2\nf 2/2/3 3/3/3 5/5/3\nf 3/3/4 4/4/4 5/5/4\nf 4/4/5 1/1/5 5/5/5\n"
    )
    depth = io.BytesIO()
    np.save(depth, (1.0 + np.random.default_rng(SEED).random((8, 16))).astype(np.float32))
    return {
        "scene.ply": binary,
        "scene_ascii.ply": (folder / "scene_ascii.ply").read_bytes(),
        "pyramid.obj": mesh.encode(),
        "depth.npy": depth.getvalue(),
    }


def text_end(data: bytes) -> int:
    """Where a file's text part ends: a PLY's header, a .npy's header line, or all of an OBJ."""
    if data.startswith(b"ply"):
        end = data.find(b"end_header\n")
        return len(data) if end < 0 else end + len(b"end_header\n")
    if data.startswith(b"\x93NUMPY"):
        end = data.find(b"\n")
        return len(data) if end < 0 else end + 1
    return len(data)


def mutants(data: bytes, rng: np.random.Generator, count: int) -> Iterator[tuple[str, bytes]]:
    """`count` one-change mutants of `data`, each with a label that says what changed."""
    head = text_end(data)
    for _ in range(count):
        kind = str(rng.choice(["flip", "cut", "insert", "number", "number", "line"]))
        if kind == "flip":  # one to eight bytes set to random values, anywhere
            mutant = np.frombuffer(data, dtype=np.uint8).copy()
            where = rng.integers(0, len(data), int(rng.integers(1, 9)))
            mutant[where] = rng.integers(0, 256, len(where), dtype=np.uint8)
            yield f"flip bytes {sorted(where.tolist())}", mutant.tobytes()
        elif kind == "cut":
            at = int(rng.integers(0, len(data)))
            yield f"cut at {at}", data[:at]
        elif kind == "insert":
            at, size = int(rng.integers(0, len(data) + 1)), int(rng.integers(1, 64))
            garbage = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            yield f"insert {size} bytes at {at}", data[:at] + garbage + data[at:]
        elif kind == "number":  # a count, a shape, an index or a coordinate of the text part
            numbers = list(re.finditer(rb"\d+(?:\.\d+)?", data[:head]))
            match = numbers[int(rng.integers(0, len(numbers)))]
            number = EXTREME_NUMBERS[int(rng.integers(0, len(EXTREME_NUMBERS)))]
            label = f"number {match.group().decode()} at {match.start()} -> {number.decode()}"
            yield label, data[: match.start()] + number + data[match.end() :]
        else:  # a line of the text part deleted or repeated
            lines = data[:head].splitlines(keepends=True)
            at = int(rng.integers(0, len(lines)))
            repeat = bool(rng.integers(0, 2))
            changed = lines[: at + 1] + lines[at:] if repeat else lines[:at] + lines[at + 1 :]
            yield f"{'repeat' if repeat else 'delete'} line {at + 1}", b"".join(changed) + data[head:]


def loaders() -> dict[str, Callable[[Path], object]]:
    from sync_splat.scene.depth_maps import read_depth_map
    from sync_splat.scene.gaussians import GaussianScene
    from sync_splat.scene.mesh import MeshAsset

    return {".ply": GaussianScene.load, ".obj": MeshAsset.load, ".npy": read_depth_map}


class _Alarm(Exception):
    pass


def _raise_alarm(signum: int, frame: object) -> None:
    raise _Alarm


def worker(folder: Path) -> tuple[int, list[dict[str, str]]]:
    """Load every mutant under the memory cap and the alarm; return how many were loaded, and the failures."""
    from sync_splat.errors import InputError

    load = loaders()
    originals = valid_files(folder)
    for name, data in originals.items():
        (folder / name).write_bytes(data)
        load[Path(name).suffix](folder / name)  # the valid files load, and every module is warm before the cap
    mapped = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + HEADROOM_BYTES, resource.getrlimit(resource.RLIMIT_AS)[1]))
    signal.signal(signal.SIGALRM, _raise_alarm)
    rng = np.random.default_rng(SEED)
    loaded, failures, progress = 0, [], folder / "progress.txt"
    for name, data in originals.items():
        for number, (label, mutant) in enumerate(mutants(data, rng, MUTANTS_PER_FILE)):
            path = folder / "mutants" / f"{number:03d}_{name}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(mutant)
            progress.write_text(f"{path.name}: {label}")  # what a crash or a kill happened on
            outcome = None
            loaded += 1
            signal.alarm(SECONDS_PER_FILE)
            try:
                load[path.suffix](path)
            except InputError as error:
                if "\n" in str(error):
                    outcome = f"InputError of several lines: {error!r}"
            except _Alarm:
                outcome = f"still loading after {SECONDS_PER_FILE} s"
            except BaseException as error:  # noqa: BLE001 - anything else is the failure this test looks for
                outcome = f"{type(error).__name__}: {error}"[:300]
            finally:
                signal.alarm(0)
            if outcome is None and path.read_bytes() != mutant:
                outcome = "the loader changed its input"
            if outcome is not None:
                failures.append({"file": path.name, "mutation": label, "outcome": outcome})
            path.unlink()
    return loaded, failures


@pytest.mark.timeout(600)
def test_mutated_files_load_or_raise_one_input_error(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",  # each extra glibc arena reserves 64 MiB of the capped address space
    }
    try:
        result = subprocess.run(
            [sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker hung on {(tmp_path / 'progress.txt').read_text()}")
    last = (tmp_path / "progress.txt").read_text() if (tmp_path / "progress.txt").exists() else "(none yet)"
    assert result.returncode == 0, f"the worker died ({result.returncode}) on {last}: {result.stderr[-2000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["mutants"] == 4 * MUTANTS_PER_FILE
    failures = [f"{failure['file']} ({failure['mutation']}): {failure['outcome']}" for failure in report["failures"]]
    assert failures == [], "\n".join(failures)


if __name__ == "__main__":
    count, found = worker(Path(sys.argv[1]))
    print(json.dumps({"mutants": count, "failures": found}))
