"""The README's library example runs as written (on a PLY of the demo scene, in a scratch folder)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.gaussians import GaussianScene

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_library_example_restyles_a_scene(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text("utf8"), flags=re.DOTALL)
    (example,) = [block for block in blocks if "SyncSampler" in block]
    source = make_demo_scene()
    source.save(tmp_path / "point_cloud.ply")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        exec(compile(example, str(README), "exec"), {})
    finally:
        os.chdir(cwd)
    restyled = GaussianScene.load(tmp_path / "restyled.ply")
    assert restyled.num_gaussians == source.num_gaussians
    assert (restyled.rgb01 - source.rgb01).abs().mean() > 0.05  # the colours changed
