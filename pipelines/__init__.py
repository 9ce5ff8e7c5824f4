"""Job wiring for the InstantMesh data-and-evaluation pipeline.

This is the only package that knows Ray. It maps the plain-Python libraries (`rendering`,
`filtering`, `evaluation`, `instantmesh`) over manifests with Ray Data, writes one status row per
item and stage, publishes outputs atomically and resumes interrupted jobs.
"""

from rendering.provenance import dist_version

# "0.0.0+unknown": running from a source tree that was not installed.
__version__ = dist_version() or "0.0.0+unknown"

__all__ = ["__version__"]
