"""The InstantMesh model: sparse-view LRM (NeRF and FlexiCubes variants), checkpoint I/O.

Plain PyTorch; no Ray. Entry points:

- :func:`build_model` -- a randomly initialised model of a named variant (``device='meta'`` for
  shapes only);
- :func:`load_checkpoint` -- an official ``.ckpt`` (strict) or a directory from :func:`save_model`;
- :func:`input_cameras` -- the six Zero123++ views as 16-d encoder cameras.
"""

from instantmesh.cameras import input_cameras, orbit_render_cameras
from instantmesh.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    load_checkpoint,
    load_model,
    save_model,
)
from instantmesh.model import InstantMesh, InstantNeRF, build_model
from instantmesh.variants import OFFICIAL_VARIANTS, VARIANTS, VariantConfig, get_variant

__all__ = [
    "OFFICIAL_VARIANTS",
    "VARIANTS",
    "CheckpointError",
    "CheckpointMismatch",
    "InstantMesh",
    "InstantNeRF",
    "VariantConfig",
    "build_model",
    "get_variant",
    "input_cameras",
    "load_checkpoint",
    "load_model",
    "orbit_render_cameras",
    "save_model",
]
