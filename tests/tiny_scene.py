"""A tiny splat scene for tests that restyle end to end: a thinned copy of the demo teapot, generated in code."""

from __future__ import annotations

import math

import torch

from sync_splat.scene.demo import make_demo_scene
from sync_splat.scene.gaussians import GaussianScene


def tiny_scene() -> GaussianScene:
    """About 600 Gaussians of the demo teapot, enlarged to keep its surfaces closed; SH degree 0."""
    scene = make_demo_scene()
    keep = torch.arange(0, scene.num_gaussians, 8)
    return GaussianScene(
        means=scene.means[keep].clone(),
        quats_wxyz=scene.quats_wxyz[keep].clone(),
        log_scales=scene.log_scales[keep] + math.log(2.8),
        opacity_logits=scene.opacity_logits[keep].clone(),
        sh=scene.sh[keep].clone(),
    )
