"""sync-splat: restyle Gaussian splats, meshes and panoramas with SyncTweedies.

SyncTweedies (Kim et al., NeurIPS 2024) runs one diffusion process per rendered view and keeps them consistent
by averaging their Tweedie estimates through a shared canonical space. This package holds the sampler
(`sync_splat.sampler`), the denoisers it can drive (`sync_splat.denoisers`), the bridges between canonical and
instance spaces (`sync_splat.bridges`) and the geometry they need. Conventions: `docs/conventions.md`.

Importing this package stays light: diffusers, nerfstudio, gsplat's CUDA code and nvdiffrast are imported only
by the code that needs them.
"""

__version__ = "0.1.0"
