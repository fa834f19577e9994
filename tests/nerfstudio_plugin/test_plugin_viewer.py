"""The live viewer of `ns-train sync-splat`: it answers on 127.0.0.1 only and shows the custom controls, its header
counts denoising steps, and in headless Chromium the scene draws and changes with the steps.

This is also the test that runs the `ns-train` console script itself, in a subprocess.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import MIN_PIXELS, free_port, look, needs_browser, pure, wait_for
from conftest import (
    VIEWER_CAMERA,
    decoded,
    ns_train_command,
    resume_training,
    running,
    talk_to_viewer,
    train_in_process,
    wait_for_http,
)

from sync_splat.scene.frames import transform_scene
from sync_splat.scene.gaussians import GaussianScene

CONTROLS = [
    b"Custom Elements", b"Prompt", b"Guidance scale", b"Apply prompt and guidance", b"Restart sampling",
    b"Show x0_hat preview", b"Denoising step", b"Status",
]  # fmt: skip
COMPLETE = b"3 / 3 (complete)"  # the step counter's value after the last step
HEADER = b"Step: 3"  # the viewer's own step, in denoising steps


def listening_addresses(pid: int, port: int) -> set[str]:
    """The local addresses on which process `pid` listens on TCP `port` (psutil comes with viser)."""
    import psutil

    return {
        c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }  # fmt: skip


@pytest.mark.slow
def test_viewer_answers_on_localhost_with_the_custom_controls(tmp_path: Path, scene_files: dict[str, Path]) -> None:
    port = free_port()
    log = tmp_path / "ns-train.log"
    command = ns_train_command(
        tmp_path, "--viewer.websocket-port", str(port), "--pipeline.source", str(scene_files["ply"]),
        "--pipeline.denoiser", "prior", "--pipeline.prompt", "wood", "--pipeline.steps", "3", "--pipeline.views", "3",
        vis="viewer",
    )  # fmt: skip
    with running(command, log) as process:
        wait_for_http(f"http://127.0.0.1:{port}/", process, log, timeout=150)
        gui, render = talk_to_viewer(f"ws://127.0.0.1:{port}", [*CONTROLS, COMPLETE, HEADER], timeout=60)
        for label in [*CONTROLS, COMPLETE, HEADER]:
            assert label in gui, label
        assert b"BackgroundImageMessage" in render  # the model rendered the client's view (CPU renderer)
        assert listening_addresses(process.pid, port) == {"127.0.0.1"}  # not 0.0.0.0: no other interface
        assert (tmp_path / "test" / "sync-splat" / "run" / "restyled.ply").is_file()
        assert "Traceback" not in log.read_text()  # e.g. the viewer's render thread


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


@pytest.mark.slow
def test_live_view_renders_each_denoising_step_at_full_resolution(tmp_path: Path, scene_files: dict[str, Path]) -> None:
    """Started paused, resumed from the viewer's own button: while sampling, every image the viewer sends is at
    its "Max res" (512 px), not the lowest resolution it uses while a control changes, and its header counts the
    denoising steps."""
    import io

    import msgspec
    from PIL import Image
    from websockets.sync.client import connect

    steps, port = 200, free_port()  # prior steps are fast: 20 steps gave the viewer time for only 2 images in a CI run
    log = tmp_path / "ns-train.log"
    command = ns_train_command(
        tmp_path, "--viewer.websocket-port", str(port), "--pipeline.source", str(scene_files["ply"]),
        "--pipeline.denoiser", "prior", "--pipeline.prompt", "wood", "--pipeline.steps", str(steps),
        "--pipeline.views", "3", "--start-paused", "True", vis="viewer",
    )  # fmt: skip
    with running(command, log) as process:
        wait_for_http(f"http://127.0.0.1:{port}/", process, log, timeout=150)
        sizes, headers, resume, resumed = [], [], None, False
        with connect(f"ws://127.0.0.1:{port}", open_timeout=60) as websocket:
            websocket.send(msgspec.msgpack.encode(VIEWER_CAMERA))
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
        # The click itself is a control change, which the viewer answers with a lower resolution first; from its
        # first full-resolution image on, every image is at full resolution.
        assert (512, 512) in sizes, sizes
        settled = sizes[sizes.index((512, 512)) :]
        assert len(settled) >= 3 and set(settled) == {(512, 512)}, sizes
        counted = [int(h.split("Step: ")[1].split()[0]) for h in headers if h.startswith("Step: ")]
        assert counted[-1] == steps and counted == sorted(counted), counted


def page_text(dom: str) -> str:
    """The text of a page's HTML, tags removed (so `**Denoising step**: 1 / 2` reads `Denoising step: 1 / 2`)."""
    return re.sub(r"<[^>]+>", "", dom)


@needs_browser
@pytest.mark.slow
def test_browser_draws_the_live_scene_with_its_controls_and_follows_the_steps(
    tmp_path: Path, scene_files: dict[str, Path]
) -> None:
    """ns-train's viewer in headless Chromium, started paused: the scene draws (the source is painted magenta, which
    nothing else on the page is), the sampling controls are on the page, and once resumed (the viewer's own button)
    the page shows the restyled colours after the last step instead of those before the first."""
    source = GaussianScene.load(scene_files["ply"])
    # Small enough for the browser's default camera (about 0.5 from the origin) to see all of it.
    small = transform_scene(source, torch.eye(4)[:3], scale=0.12)
    magenta = small.with_colors(torch.tensor([[1.0, 0.0, 1.0]]).expand(small.num_gaussians, 3))
    port, log = free_port(), tmp_path / "ns-train.log"
    command = ns_train_command(
        tmp_path, "--viewer.websocket-port", str(port), "--pipeline.source", str(magenta.save(tmp_path / "m.ply")),
        "--pipeline.denoiser", "prior", "--pipeline.prompt", "wood", "--pipeline.steps", "2", "--pipeline.views", "3",
        "--start-paused", "True", vis="viewer",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    scene = (slice(60, None), slice(0, 470))  # the viewport, left of the control panel and below the header
    with running(command, log) as process:
        wait_for_http(url, process, log, timeout=150)

        def drawn_at(step: str):
            return lambda image, dom: (
                f"Denoising step: {step}" in page_text(dom)
                and (pure(image[scene], "rb").sum() > MIN_PIXELS if step.startswith("0") else True)
            )

        before, dom = look(url, until=drawn_at("0 / 2"))
        text = page_text(dom)
        for control in ("Prompt", "Guidance scale", "Apply prompt and guidance", "Restart sampling",
                        "Show x0_hat preview", "Denoising step: 0 / 2", "Status: sampling"):  # fmt: skip
            assert control in text, control
        assert pure(before[scene], "rb").sum() > MIN_PIXELS  # the scene drew, in the source's colour

        resume_training(url.replace("http", "ws"), timeout=60)
        restyled = tmp_path / "test" / "sync-splat" / "run" / "restyled.ply"
        wait_for(restyled.is_file, "the run to complete", timeout=90)
        after, dom = look(url, until=drawn_at("2 / 2 (complete)"))
        assert "Denoising step: 2 / 2 (complete)" in page_text(dom)
        assert pure(after[scene], "rb").sum() < pure(before[scene], "rb").sum() / 4  # magenta gave way to wood
        changed = np.abs(after[scene].astype(int) - before[scene].astype(int)).max(axis=-1) > 40
        assert changed.sum() > MIN_PIXELS
        assert "Traceback" not in log.read_text()
