"""The end-to-end pipelines behind the front doors: restyle a splat scene, texture a mesh, paint a panorama.

Each builds a denoiser, a bridge and the sampler from one settings dataclass (`SamplingSettings` and its
extensions), runs it with a progress bar and writes its products atomically.
"""
