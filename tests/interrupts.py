"""Ctrl-C in tests: SIGINT acts as on a terminal even when the test run itself started with SIGINT ignored (a
background job, nohup), where Python would otherwise leave it ignored in the test process and its children."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


def ctrl_c_reaches_the_child() -> None:
    """`preexec_fn` for a subprocess a test interrupts: SIGINT back to its default, so Python raises
    KeyboardInterrupt there."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def ctrl_c_in_this_process() -> Iterator[None]:
    """Python's own SIGINT handler (KeyboardInterrupt) for the body, whatever the test run started with."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
