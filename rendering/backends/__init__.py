"""Rendering backends behind one registry: ``make_backend(name, settings)``.

:data:`BACKENDS` maps each name to a :class:`BackendEntry`: where the class lives (imported
lazily, so importing this package never pulls in ``bpy`` or nvdiffrast), what it needs to run
here (:func:`unavailable_reason`), whether its workers reserve a GPU on a cluster, which
:class:`RenderSettings` it honours and a one-line description for ``--help``. The pipelines
derive their choices, GPU reservations and availability checks from these entries, so adding a
backend is one module (a class with ``name``, ``render(obj, cameras)`` and ``close()``, built
as ``cls(settings, **kwargs)``) plus one entry here.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, fields
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

SETTING_NAMES = tuple(f.name for f in fields(RenderSettings))
"""The :class:`RenderSettings` fields a backend entry may list in ``options``."""


@dataclass(frozen=True)
class BackendEntry:
    """One render backend: enough to list, check and schedule it without importing it."""

    name: str
    """Registry name (``--backend`` value); the class's ``name`` attribute."""
    target: str
    """``module:Class``, imported on first use (:meth:`load`)."""
    description: str
    """One line for ``--help``."""
    needs_gpu: bool = False
    """Each worker of a cluster job reserves one GPU (Ray ``num_gpus``)."""
    requires: tuple[str, ...] = ()
    """Modules that must be importable (looked up with ``find_spec``, never imported)."""
    needs_cuda: bool = False
    """A CUDA device visible to torch is needed on the machine that renders."""
    install_hint: str = ""
    """What to install when a required module is missing."""
    options: tuple[str, ...] = ()
    """The :class:`RenderSettings` fields it honours (it ignores the others): ``samples`` for
    a path tracer; ``shading`` only when its lit and unlit renders differ."""

    def __post_init__(self) -> None:
        if ":" not in self.target:
            raise ValueError(f"backend {self.name!r}: target must be 'module:Class'")
        unknown = sorted(set(self.options) - set(SETTING_NAMES))
        if unknown:
            raise ValueError(f"backend {self.name!r}: unknown render settings {unknown}")

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run here (``None`` when it can), checked without importing
        the backend or its heavy modules."""
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                hint = f": {self.install_hint}" if self.install_hint else ""
                return f"backend {self.name!r} needs {module}{hint}"
        if self.needs_cuda:
            import torch

            if not torch.cuda.is_available():
                return f"backend {self.name!r} needs a CUDA GPU; use --backend cpu on this machine"
        return None

    def load(self) -> type:
        """The backend class (imports its module)."""
        module_name, cls_name = self.target.split(":")
        cls: type = getattr(importlib.import_module(module_name), cls_name)
        return cls


BACKENDS: dict[str, BackendEntry] = {
    entry.name: entry
    for entry in (
        BackendEntry(
            name="blender",
            target="rendering.backends.blender:BlenderBackend",
            description="Blender Cycles path tracer in a persistent bpy worker (dataset "
            "renders; lit or unlit; its GPU when usable)",
            requires=("bpy",),
            install_hint="pip install 'instantmesh-pipeline[render]'",
            options=("samples", "engine", "shading", "device", "threads", "timeout_s"),
        ),
        BackendEntry(
            name="nvdiffrast",
            target="rendering.backends.nvdiffrast_backend:NvdiffrastBackend",
            description="GPU rasterizer (unlit base colour, no anti-aliasing; evaluation "
            "renders on GPU workers)",
            needs_gpu=True,
            requires=("nvdiffrast",),
            needs_cuda=True,
            install_hint="pip install 'instantmesh-pipeline[gpu]'",
            options=("device",),
        ),
        BackendEntry(
            name="cpu",
            target="rendering.backends.cpu:CpuBackend",
            description="software rasterizer (unlit base colour, no anti-aliasing; no GPU or "
            "bpy needed)",
            options=("threads",),
        ),
    )
}
"""Backend name -> :class:`BackendEntry`; adding a backend is one module plus one entry here."""


def backend_entry(name: str) -> BackendEntry:
    """The registry entry of ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here (``None`` when it can), checked without importing
    heavy modules, so a driver can refuse a job before starting workers."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}"
    return BACKENDS[name].unavailable_reason()


def describe_backends() -> str:
    """One ``name: description`` clause per backend, for ``--help`` texts."""
    return "; ".join(f"{e.name}: {e.description}" for e in BACKENDS.values())


def make_backend(name: str, settings: RenderSettings | None = None, **kwargs: Any) -> Backend:
    """Instantiate backend ``name`` (extra keyword arguments go to its constructor);
    ``BackendUnavailable`` says what is missing."""
    cls = backend_entry(name).load()
    backend: Backend = cls(settings or RenderSettings(), **kwargs)
    return backend


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendEntry",
    "BackendUnavailable",
    "RenderError",
    "RenderObject",
    "RenderSettings",
    "RenderTimeout",
    "View",
    "backend_entry",
    "describe_backends",
    "make_backend",
    "prepare_object",
    "unavailable_reason",
]
