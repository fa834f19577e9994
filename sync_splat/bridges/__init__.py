"""Bridges between a canonical variable and its per-view instances: the `Bridge` protocol and one file per bridge."""

from sync_splat.bridges.base import Bridge

__all__ = ["Bridge"]
