"""Scene data and files: Gaussian splat scenes, mesh assets, camera rigs, and atomic file output."""
