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
from conftest import ns_train_command, subprocess_env, train_in_process

CONTROLS = [
    b"Custom Elements", b"Prompt", b"Guidance scale", b"Apply prompt and guidance", b"Restart sampling",
    b"Show x0_hat preview", b"Denoising step", b"Status",
]  # fmt: skip
COMPLETE = b"3 / 3 (complete)"  # the step counter's value after the last step
HEADER = b"Step: 3"  # the viewer's own step, in denoising steps


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
        gui, render = talk_to_viewer(f"ws://127.0.0.1:{port}", [*CONTROLS, COMPLETE, HEADER], timeout=60)
        for label in [*CONTROLS, COMPLETE, HEADER]:
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


def test_the_viewer_header_counts_denoising_steps(tmp_path: Path, scene_files: dict[str, Path]) -> None:
    """The viewer's "Step" follows the denoising steps (up to 3, then from 0 again after a restart once sampling
    completed), not the trainer's iterations; the step counter is a read-only line, not an input whose updates
    count as control changes."""
    from nerfstudio_plugin.viewer import ViewerReadout

    headers: list[str] = []

    def watch(pipeline, step: int) -> None:  # runs before the pipeline's own callback: it sees the previous step
        headers.append(pipeline._trainer.viewer_state.stats_markdown.content.split("\n")[0].strip())
        if step == 2:  # the third and last step was just taken; the viewer wraps this in the lock held here
            pipeline.restart_sampling()

    viewers = []
    train_in_process(
        tmp_path, "--pipeline.source", str(scene_files["ply"]), "--pipeline.denoiser", "prior", "--pipeline.prompt",
        "wood", "--pipeline.steps", "3", "--pipeline.views", "2", "--viewer.websocket-port", str(free_port()),
        "--viewer.quit-on-train-completion", "True",
        during=lambda pipeline, step: [watch(pipeline, step), viewers.append(pipeline._trainer.viewer_state)],
        vis="viewer",
    )  # fmt: skip
    viewer = viewers[-1]
    headers.append(viewer.stats_markdown.content.split("\n")[0].strip())
    assert headers == ["Step: 0", "Step: 1", "Step: 2", "Step: 0", "Step: 1", "Step: 2", "Step: 3"]
    assert isinstance(viewer.pipeline.step_counter, ViewerReadout)
    assert viewer.pipeline.step_counter.gui_handle.content.endswith("3 / 3 (complete)")


def decoded(frame: bytes | str) -> list[dict]:
    """The viser messages of one websocket frame (msgpack: one message or a list of them)."""
    import msgspec

    data = msgspec.msgpack.decode(frame if isinstance(frame, bytes) else frame.encode())
    return [m for m in (data if isinstance(data, list) else [data]) if isinstance(m, dict)]


@pytest.mark.slow
def test_live_view_renders_each_denoising_step_at_full_resolution(tmp_path: Path, scene_files: dict[str, Path]) -> None:
    """Started paused, resumed from the viewer's own button: while sampling, every image the viewer sends is at
    its "Max res" (512 px), not the lowest resolution it uses while a control changes, and its header counts the
    denoising steps."""
    import io

    import msgspec
    from PIL import Image
    from websockets.sync.client import connect

    steps, port = 12, free_port()
    log = tmp_path / "ns-train.log"
    command = ns_train_command(
        tmp_path, "--viewer.websocket-port", str(port), "--pipeline.source", str(scene_files["ply"]),
        "--pipeline.denoiser", "prior", "--pipeline.prompt", "wood", "--pipeline.steps", str(steps),
        "--pipeline.views", "3", "--start-paused", "True", vis="viewer",
    )  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=subprocess_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    camera = {
        "type": "ViewerCameraMessage", "wxyz": (1.0, 0.0, 0.0, 0.0), "position": (0.0, 4.6, 30.0), "fov": 0.9,
        "aspect": 1.0, "look_at": (0.0, 4.6, 0.0), "up_direction": (0.0, 1.0, 0.0),
    }  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", process, log, timeout=150)
        sizes, headers, resume, resumed = [], [], None, False
        with connect(f"ws://127.0.0.1:{port}", open_timeout=60) as websocket:
            websocket.send(msgspec.msgpack.encode(camera))
            deadline = time.monotonic() + 120
            complete = f"{steps} / {steps} (complete)"
            last_step = f"Step: {steps}"

            def finished() -> bool:  # the readout and the viewer's header are separate messages: wait for both
                return any(complete in h for h in headers) and any(h.startswith(last_step) for h in headers)

            while time.monotonic() < deadline and not finished():
                try:
                    frame = websocket.recv(timeout=1)
                except TimeoutError:
                    continue
                for message in decoded(frame):
                    if message.get("label") == "Resume Training":
                        resume = message["id"]
                    elif message.get("type") == "BackgroundImageMessage" and resumed:
                        sizes.append(Image.open(io.BytesIO(message["rgb_bytes"])).size)
                    elif "markdown" in message.get("updates", {}):
                        headers.append(message["updates"]["markdown"])
                if resume is not None and not resumed and sizes == [] and b"BackgroundImageMessage" in frame:
                    # The first render of the paused scene came: press "Resume Training".
                    click = {"type": "GuiUpdateMessage", "id": resume, "updates": {"value": True}}
                    websocket.send(msgspec.msgpack.encode(click))
                    resumed = True
        assert resumed, log.read_text()[-3000:]
        assert any(complete in header for header in headers), headers
        assert len(sizes) >= 3 and set(sizes) == {(512, 512)}, sizes
        counted = [int(h.split("Step: ")[1].split()[0]) for h in headers if h.startswith("Step: ")]
        assert counted[-1] == steps and counted == sorted(counted), counted
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
