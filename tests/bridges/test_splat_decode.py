"""The splat bridge decodes each set of views once: with Stable Diffusion every decode is a VAE pass per view."""

from __future__ import annotations

import torch

from sync_splat.apps.phases import DENOISER_PHASES, PhaseTimer, Timed
from sync_splat.apps.restyle import orbit_cameras
from sync_splat.bridges.splat import SplatBridgeConfig
from sync_splat.codec import PixelCodec
from sync_splat.scene.demo import make_demo_scene


def test_a_synchronised_step_decodes_its_views_once() -> None:
    """g then f over the same x0_hat decode it once (a VAE pass per view with SD); a new or modified tensor is decoded
    again."""
    timer = PhaseTimer(torch.device("cpu"))
    codec = Timed(PixelCodec(), timer, DENOISER_PHASES)
    scene = make_demo_scene()
    bridge = SplatBridgeConfig().setup(codec, scene, orbit_cameras(scene, 2, 32, 50.0))
    x0_hat = torch.rand(bridge.num_views, *bridge.instance_shape) * 2 - 1
    z = bridge.unproject(x0_hat)
    bridge.project(z, background=x0_hat)
    assert timer.calls["codec"] == 2  # one decode (g), one encode (f)
    torch.testing.assert_close(bridge.decode_views(x0_hat), PixelCodec().decode(x0_hat))
    assert timer.calls["codec"] == 2  # the same, unchanged tensor: the kept answer
    x0_hat.mul_(0.5)  # modified in place: decoded again
    torch.testing.assert_close(bridge.decode_views(x0_hat), PixelCodec().decode(x0_hat))
    assert timer.calls["codec"] == 3
    bridge.decode_views(x0_hat.clone())
    assert timer.calls["codec"] == 4
