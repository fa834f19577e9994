"""The one exception type that reaches users as a single line.

Raise `InputError` for anything the user can fix (a bad file, a wrong setting, a missing model): the message names
what is wrong, where (file, property, field) and how to fix it. The command-line front door prints it as one line
and exits non-zero, without a traceback (`one_line_errors`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class InputError(Exception):
    """A problem with the user's input or setup, explained in one line."""


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Run a command's body; an `InputError` ends it with `<prog>: error: <message>` on stderr and exit status 2."""
    try:
        yield
    except InputError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
