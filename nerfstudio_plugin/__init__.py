"""`ns-train sync-splat`: the nerfstudio front door of sync-splat (config, pipeline, model, datamanager).

Importing this package imports nothing: nerfstudio loads `nerfstudio_plugin.config:sync_splat` through the
`nerfstudio.method_configs` entry point. `sync_splat` never imports this package.
"""
