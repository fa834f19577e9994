"""Writing files safely: every output goes to a temporary file beside its destination, then is renamed into place.

A crash or an error mid-write therefore never leaves a half-written file under the final name, and an existing
file is replaced only when the new one is complete (`os.replace` is atomic on one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sync_splat.errors import InputError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is renamed to `path`, on error it is removed.

    The temporary file keeps `path`'s suffix, so writers that pick a format from the extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def refuse_existing(*paths: str | os.PathLike[str]) -> None:
    """Outputs are never overwritten: raise `InputError` before any work when one of `paths` already exists."""
    for path in map(Path, paths):
        if path.exists():
            raise InputError(f"{path} already exists: choose another --out or remove it first (outputs are never "
                             "overwritten)")  # fmt: skip
