"""Pages in tests: free ports, waiting without sleeping blindly, and what headless Chromium shows of a page.

The browser is Debian's `chromium` (`make test` installs it where it can); tests that need it carry
`needs_browser`, which skips them, saying why, where none is installed. A page's scene arrives over a websocket,
which Chromium's virtual time does not wait for, so a look is retaken with more time until it shows what a test
waits for.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed (`make test` installs Debian's chromium when run as root)"
)
WINDOW = (800, 600)
BUDGETS_MS = (15_000, 30_000, 60_000, 120_000)
"""Virtual time Chromium gives the page before it is looked at, tried in turn until the page shows what is waited
for."""
MIN_PIXELS = WINDOW[0] * WINDOW[1] // 50
"""A drawn scene covers at least 2% of the window: far more than the world-axes icon's few pure-colour pixels."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def look(url: str, until: Callable[[np.ndarray, str], bool] = lambda image, dom: True) -> tuple[np.ndarray, str]:
    """What headless Chromium shows of `url`: a screenshot `[H, W, 3]` uint8 and the page's DOM as HTML, taken in
    one load and retaken with more virtual time until `until(image, dom)` holds (the last look if it never does).
    Each look starts from a fresh profile, so a look that went wrong (a blank page, seen in loaded suite runs) leaves
    nothing behind for the next."""
    assert CHROMIUM is not None, "needs_browser skips the tests that look at pages without Chromium"
    with tempfile.TemporaryDirectory() as folder:
        shot = Path(folder) / "shot.png"
        for budget in BUDGETS_MS:
            shot.unlink(missing_ok=True)
            loaded = subprocess.run(
                [
                    CHROMIUM, "--headless", "--no-sandbox", "--hide-scrollbars", "--use-gl=angle",
                    "--use-angle=swiftshader", "--enable-unsafe-swiftshader", f"--user-data-dir={folder}/{budget}",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--virtual-time-budget={budget}",
                    f"--screenshot={shot}", "--dump-dom", url,
                ],
                capture_output=True, text=True, timeout=180, check=True,
            )  # fmt: skip
            image, dom = iio.imread(shot)[:, :, :3], loaded.stdout
            if until(image, dom):
                break
        return image, dom


def screenshot(url: str, until: Callable[[np.ndarray], bool] = lambda image: True) -> np.ndarray:
    """A headless Chromium screenshot of `url`, `[H, W, 3]` uint8, retaken with more time until `until` holds."""
    return look(url, lambda image, dom: until(image))[0]


def pure(image: np.ndarray, channels: str) -> np.ndarray:
    """Pixels of one hue: the named channels ("r", "g", "b") all clearly above every other one.

    A margin rather than exact values, because the page's tone mapping desaturates bright colours (pure green is
    drawn as about (147, 228, 89)).
    """
    values = {c: image[:, :, "rgb".index(c)].astype(int) for c in "rgb"}
    weakest_on = np.minimum.reduce([values[c] for c in channels])
    strongest_off = np.maximum.reduce([values[c] for c in "rgb" if c not in channels] + [np.zeros_like(weakest_on)])
    return weakest_on - strongest_off > 50


def empty_viser_page() -> np.ndarray:
    """A screenshot of a viser page with nothing in its scene: what no content looks like."""
    import viser

    server = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
    server.gui.add_markdown("an empty scene")  # a panel like the pages' (without it viser shows its own buttons)
    try:
        return screenshot(f"http://127.0.0.1:{server.get_port()}", until=lambda image: image.std() > 0)
    finally:
        server.stop()
