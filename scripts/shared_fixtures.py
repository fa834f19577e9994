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
