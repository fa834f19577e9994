"""The one exception type that reaches users as a single line, and how a command ends when it fails or is stopped.

Raise `InputError` for anything the user can fix (a bad file, a wrong setting, a missing model): the message names
what is wrong, where (file, property, field) and how to fix it. The command-line front door prints it as one line
and exits non-zero, without a traceback (`one_line_errors`). Ctrl-C ends a command the same way, with one line that
says which outputs, if any, were already complete (`sync_splat.scene.files` reports each one with `note_written`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

INTERRUPTED_EXIT_STATUS = 130
"""What a shell reports for a command stopped by Ctrl-C (128 + SIGINT)."""

_written: list[Path] = []
"""Every output this process has moved into place, in order: what an interrupted command already finished."""


class InputError(Exception):
    """A problem with the user's input or setup, explained in one line."""


def note_written(path: Path) -> None:
    """Record that `path` is complete under its final name (called by the atomic writers)."""
    _written.append(Path(path))


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Run a command's body and end it in one line on stderr, never a traceback.

    An `InputError` ends it with `<prog>: error: <message>` and exit status 2; Ctrl-C with `<prog>: interrupted;
    nothing was written` (or the outputs that were already complete) and exit status 130.
    """
    first = len(_written)
    try:
        yield
    except InputError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        done = _written[first:]
        if done:
            message = f"interrupted after writing {', '.join(map(str, done))} (complete); nothing else was written"
        else:
            message = "interrupted; nothing was written"
        print(f"{prog}: {message}", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT_STATUS) from None
