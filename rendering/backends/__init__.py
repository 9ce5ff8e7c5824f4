"""Rendering backends behind one registry: ``make_backend(name, settings)``.

Backends are imported lazily so that importing this package never pulls in ``bpy`` or
nvdiffrast: ``blender`` (bpy, Cycles; dataset renders), ``nvdiffrast`` (GPU rasterizer;
evaluation renders), ``cpu`` (software rasterizer; evaluation renders without a GPU or bpy).
"""

from __future__ import annotations

import importlib
from typing import Any

from rendering.backends.base import (
    Backend,
    BackendUnavailable,
    RenderError,
    RenderObject,
    RenderSettings,
    RenderTimeout,
    View,
    prepare_object,
)

BACKENDS: dict[str, str] = {
    "blender": "rendering.backends.blender:BlenderBackend",
    "nvdiffrast": "rendering.backends.nvdiffrast_backend:NvdiffrastBackend",
    "cpu": "rendering.backends.cpu:CpuBackend",
}
"""Backend name -> ``module:Class``; adding a backend is one module plus one line here."""


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here (``None`` when it can), checked without importing
    heavy modules, so a driver can refuse a job before starting workers."""
    import importlib.util

    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}"
    if name == "blender" and importlib.util.find_spec("bpy") is None:
        return "backend 'blender' needs bpy: pip install 'instantmesh-pipeline[render]'"
    if name == "nvdiffrast":
        if importlib.util.find_spec("nvdiffrast") is None:
            return "backend 'nvdiffrast' needs nvdiffrast: pip install 'instantmesh-pipeline[gpu]'"
        import torch

        if not torch.cuda.is_available():
            return "backend 'nvdiffrast' needs a CUDA GPU; use --backend cpu on this machine"
    return None


def make_backend(name: str, settings: RenderSettings | None = None, **kwargs: Any) -> Backend:
    """Instantiate backend ``name`` (extra keyword arguments go to its constructor);
    ``BackendUnavailable`` says what is missing."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, cls_name = BACKENDS[name].split(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    backend: Backend = cls(settings or RenderSettings(), **kwargs)
    return backend


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "RenderError",
    "RenderObject",
    "RenderSettings",
    "RenderTimeout",
    "View",
    "make_backend",
    "prepare_object",
    "unavailable_reason",
]
