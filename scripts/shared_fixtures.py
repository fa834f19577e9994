"""The real files nobody here wrote (`../shared/fixtures`), for the scripts: where they are looked for, in order:
$SYNC_SPLAT_FIXTURES, <repo>/shared/fixtures, <repo>/../shared/fixtures, /work/shared/fixtures."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_fixture(name: str) -> Path | None:
    """The path of the shared fixture `name`, or None when it is in none of the places above."""
    roots = (os.environ.get("SYNC_SPLAT_FIXTURES"), REPO / "shared" / "fixtures", REPO.parent / "shared" / "fixtures",
             "/work/shared/fixtures")  # fmt: skip
    for root in roots:
        if root and (Path(root) / name).is_file():
            return Path(root) / name
    return None


def require_fixture(name: str, instead: str) -> Path:
    """The path of the fixture `name`, or one `InputError` line saying where it was looked for and what to do.

    Args:
        name: the fixture's file name.
        instead: what the user can pass to do without it, e.g. "pass --scenes demo".
    """
    from sync_splat.errors import InputError

    path = find_fixture(name)
    if path is None:
        raise InputError(
            f"the benchmark file {name} was not found (looked in $SYNC_SPLAT_FIXTURES, then a shared/fixtures folder "
            f"in or beside the repository): point $SYNC_SPLAT_FIXTURES at the folder that holds it, or {instead}"
        )
    return path
