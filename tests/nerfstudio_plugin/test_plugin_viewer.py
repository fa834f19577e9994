"""The live viewer of `ns-train sync-splat`, headless: it answers on 127.0.0.1 only and shows the custom controls.

This is also the test that runs the `ns-train` console script itself, in a subprocess.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ns_train_command, subprocess_env

CONTROLS = [
    b"Custom Elements", b"Prompt", b"Guidance scale", b"Restart sampling", b"Show x0_hat preview", b"Denoising step",
]  # fmt: skip
COMPLETE = b"3 / 3 (complete)"  # the step counter's value after the last step


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening_addresses(pid: int, port: int) -> set[str]:
    """The local addresses on which process `pid` listens on TCP `port` (psutil comes with viser)."""
    import psutil

    return {
        c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }  # fmt: skip


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"ns-train exited ({process.returncode}) before the viewer answered:\n{log.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the viewer did not answer on {url} within {timeout} s:\n{log.read_text()[-4000:]}")


def talk_to_viewer(url: str, wanted: list[bytes], timeout: float) -> tuple[bytes, bytes]:
    """What the viewer sends a new client until all of `wanted` came (msgpack: labels are plain UTF-8), then what it
    sends back for a camera pose (a render of the model, as a background image)."""
    import msgspec
    from websockets.sync.client import connect

    def receive(websocket, until: list[bytes]) -> bytes:
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(label in received for label in until):
            try:
                message = websocket.recv(timeout=1)
            except TimeoutError:
                continue
            received += message if isinstance(message, bytes) else message.encode()
        return received

    camera = {
        "type": "ViewerCameraMessage", "wxyz": (1.0, 0.0, 0.0, 0.0), "position": (0.0, 4.6, 30.0), "fov": 0.9,
        "aspect": 1.0, "look_at": (0.0, 4.6, 0.0), "up_direction": (0.0, 1.0, 0.0),
    }  # fmt: skip
    with connect(url, open_timeout=timeout) as websocket:
        gui = receive(websocket, wanted)
        websocket.send(msgspec.msgpack.encode(camera))
        render = receive(websocket, [b"BackgroundImageMessage"])
    return gui, render


@pytest.mark.slow
def test_viewer_answers_on_localhost_with_the_custom_controls(tmp_path: Path, scene_files: dict[str, Path]) -> None:
    port = free_port()
    log = tmp_path / "ns-train.log"
    command = ns_train_command(
        tmp_path, "--viewer.websocket-port", str(port), "--pipeline.source", str(scene_files["ply"]),
        "--pipeline.denoiser", "prior", "--pipeline.prompt", "wood", "--pipeline.steps", "3", "--pipeline.views", "3",
        vis="viewer",
    )  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=subprocess_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", process, log, timeout=150)
        gui, render = talk_to_viewer(f"ws://127.0.0.1:{port}", [*CONTROLS, COMPLETE], timeout=60)
        for label in [*CONTROLS, COMPLETE]:
            assert label in gui, label
        assert b"BackgroundImageMessage" in render  # the model rendered the client's view (CPU renderer)
        assert listening_addresses(process.pid, port) == {"127.0.0.1"}  # not 0.0.0.0: no other interface
        assert (tmp_path / "test" / "sync-splat" / "run" / "restyled.ply").is_file()
        assert "Traceback" not in log.read_text()  # e.g. the viewer's render thread
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the viewer keeps ns-train alive after the last step
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
