"""The ``blender`` backend: Cycles renders through a persistent Blender worker process.

This module is the client side and never imports ``bpy``. :class:`BlenderBackend` starts
``python -m rendering.backends.blender_worker`` (same interpreter) on the first render and
sends it one request per object; the worker resets its scene, imports the file with Blender's
own importer, renders every camera and answers. A warm worker pays ~0.1 s of per-object overhead
(scene reset ~8 ms, glTF import ~7 ms, EXR round trip, IPC) instead of the ~1.7-2.4 s of a
fresh Blender process per object (``benchmarks/bench_blender_worker.py``: 4-5x end to end on
small objects, 4 views at 128^2, 8 spp, 2 CPU cores).

Protocol (JSON lines; one request on the worker's stdin, one reply on its stdout; the worker
keeps its stdout for replies only and sends Blender's own output to stderr, which the client
writes to ``<scratch>/worker-<n>.log``):

- worker -> client at start: ``{"op": "hello", "ok": true, "protocol": 1, "pid": ...,
  "blender_version": "5.0.1", "auto_exec": false, "device": "CPU"|"OPTIX"|"CUDA", "gpus": [...],
  "suffixes": [...]}`` (``ok: false`` + ``error`` when the requested device is missing);
- ``{"op": "render", "id": n, "path": ..., "matrix": 4x4, "cameras": [{"c2w": 4x4,
  "fov_deg": ..., "width": ..., "height": ...}], "out_dir": ..., "samples": ...,
  "shading": "lit"|"unlit", "threads": ...}`` -> ``{"op": "result", "id": n, "ok": true,
  "views": [".../view_000.npy", ...], "auto_exec": false, "timings": {...}}`` or
  ``{"op": "result", "id": n, "ok": false, "error": "..."}`` (the worker stays alive);
- ``{"op": "ping"}`` -> ``{"op": "pong", ...hello fields}``; ``{"op": "exit"}`` -> ``{"op": "bye"}``
  and the worker exits.

``matrix`` is the ``matrix_world`` of an empty that parents every imported root object:
``file_to_world @ inverse(importer rotation)``, because Blender's glTF / OBJ / FBX importers
already turn Y up into Z up (:data:`rendering.normalize.Y_UP_TO_Z_UP`; the glTF importer bakes
it into the vertices, the OBJ importer into the object matrix) and the PLY / STL importers do not
rotate. Each ``view_NNN.npy`` is float32 ``(H, W, 8)``, row 0 at the top: linear premultiplied
RGBA, Cycles' Depth pass (planar z, 1e10 on background), Cycles' Normal pass (world space,
averaged over the pixel's samples). :func:`raw_to_view` converts it to the
:class:`~rendering.backends.base.View` conventions: straight alpha, RGB encoded with the
``Standard`` view transform (the sRGB curve, as Blender's PNG output), depth ``+inf`` on
background, unit normals turned towards the camera and 0 on background. Cycles decides the Depth
pass from one sample per pixel while alpha averages all samples, so at anti-aliased silhouettes a
few pixels (~0.1 % of the mask at 4-16 spp) are in the mask but have depth ``+inf``.

Failure handling: a file Blender cannot import -> :class:`RenderError` naming the file and the
importer's message, same worker keeps serving; more than ``timeout_s`` for one object -> the
worker's process group is killed and :class:`RenderTimeout` is raised; a worker that dies
mid-object (segfault, OOM kill) -> :class:`RenderError` with its exit status and the tail of its
log. In both cases the next :meth:`BlenderBackend.render` starts a fresh worker. Workers are
recycled after ``max_objects_per_worker`` objects to bound slow leaks.

Process lifetime: the worker must not outlive the process that started it (a Ray actor whose
driver was killed, say), and a killed client cannot clean up after itself. So (1) the worker is
started with ``--parent-pid`` and arms ``PR_SET_PDEATHSIG`` = SIGKILL first thing (Linux; see
:func:`rendering.backends.blender_worker.die_with_parent`); because Linux fires that signal
when the forking *thread* exits, workers are forked from the main thread or from
:class:`_Spawner`'s thread, which lives as long as the process (Ray Data runs the render UDF on
a pool thread; a caller may use a short-lived one). (2) The default scratch directory is named
``blender-backend-<pid>-<random>``; a backend creating one removes the siblings whose owner pid
is dead (:func:`remove_stale_scratch`): the hundreds of MB a SIGKILLed client left behind.

Security: the worker sets ``use_scripts_auto_execute = False`` (reported in the handshake, the
backend refuses a worker that reports otherwise), only runs the mesh importers and refuses
``.blend`` files; so does the client, before any request is sent.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from rendering.backends.base import (
    BackendUnavailable,
    RenderError,
    RenderObject,
    RenderSettings,
    RenderTimeout,
    View,
)
from rendering.cameras import Camera
from rendering.normalize import Y_UP_TO_Z_UP

INSTALL_HINT = "pip install 'instantmesh-pipeline[render]'"
WORKER_MODULE = "rendering.backends.blender_worker"

IMPORTER_ROTATION: dict[str, np.ndarray] = {
    ".glb": Y_UP_TO_Z_UP,
    ".gltf": Y_UP_TO_Z_UP,
    ".obj": Y_UP_TO_Z_UP,
    ".fbx": Y_UP_TO_Z_UP,
    ".ply": np.eye(4),
    ".stl": np.eye(4),
}
"""The rotation each Blender importer applies to the file's coordinates (default options)."""

BACKGROUND_DEPTH_THRESHOLD = 1e9
"""Raw depth at or above this is background (Cycles writes 1e10 there)."""

SCRATCH_PREFIX = "blender-backend-"
"""Default scratch directories are ``<tempdir>/blender-backend-<owner pid>-<mkdtemp suffix>``."""

_SCRATCH_NAME = re.compile(r"blender-backend-([1-9][0-9]{0,9})-[a-z0-9_]+", re.ASCII)
"""Exactly the names :meth:`BlenderBackend._ensure_scratch` creates (mkdtemp's suffix
alphabet); the only entries :func:`remove_stale_scratch` may touch."""

_PROJECT_ROOT = Path(__file__).resolve().parents[2]

_T = TypeVar("_T")


def bpy_available() -> bool:
    """Whether ``bpy`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("bpy") is not None
    except (ImportError, ValueError):
        return False


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Blender's ``Standard`` view transform for an sRGB display: the piecewise sRGB curve,
    clipped to [0, 1] (matches Blender's own PNG output to ~1e-5)."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055).astype(
        np.float32
    )


def pixel_rays(camera: Camera) -> np.ndarray:
    """World-space viewing directions (not normalized) through each pixel centre, (H, W, 3)."""
    f = camera.focal_px()
    i = (np.arange(camera.width) + 0.5 - camera.width / 2.0) / f
    j = (np.arange(camera.height) + 0.5 - camera.height / 2.0) / f
    x, y = np.meshgrid(i, -j)
    d_cam = np.stack([x, y, -np.ones_like(x)], axis=-1)
    rays: np.ndarray = d_cam @ np.asarray(camera.c2w[:3, :3]).T
    return rays


BOUNDS_TOLERANCE = 0.01
"""Blender's geometry box may differ from trimesh's (placed by ``file_to_world``) by this
fraction of the box's largest side before the object is refused."""


def expected_world_bounds(obj: RenderObject) -> np.ndarray | None:
    """The world box trimesh's faces occupy once placed with ``obj.file_to_world``."""
    if obj.file_bounds is None:
        return None
    lo, hi = np.asarray(obj.file_bounds, dtype=np.float64)
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    m = np.asarray(obj.file_to_world, dtype=np.float64)
    world = corners @ m[:3, :3].T + m[:3, 3]
    return np.stack([world.min(axis=0), world.max(axis=0)])


def binding_problems(bound: dict[str, Any] | None, obj: RenderObject, suffix: str) -> list[str]:
    """Where Blender's import (the worker's ``bound`` report) disagrees with trimesh's view of
    the same file (``obj.file_bounds``, ``obj.textures_decoded``): such a render would publish
    something other than what inspection, filtering and the rasterizer backends see."""
    if bound is None:
        return ["the Blender worker sent no import report"]
    problems: list[str] = []
    expected = expected_world_bounds(obj)
    got = bound.get("bounds")
    if expected is not None:
        if got is None:
            problems.append("Blender imported no faces")
        else:
            got_arr = np.asarray(got, dtype=np.float64)
            tol = BOUNDS_TOLERANCE * float((expected[1] - expected[0]).max())
            if np.abs(got_arr - expected).max() > tol:
                cause = _pose_features(obj.path) if suffix in (".glb", ".gltf") else ""
                problems.append(
                    "Blender's imported geometry is not where the loaded mesh is: its box "
                    f"{np.round(got_arr, 3).tolist()} vs {np.round(expected, 3).tolist()} "
                    f"expected{cause}"
                )
    bound_images = [
        (m["name"], im) for m in bound.get("materials", []) for im in m.get("images", [])
    ]
    for material, im in bound_images:
        if not im.get("has_data"):
            why = "its file is missing" if im.get("missing") else "its pixels do not load"
            problems.append(
                f"Blender cannot load texture image {im.get('name')!r} of material "
                f"{material!r} ({why}; it would render Blender's magenta missing-texture colour)"
            )
    loaded = [(material, im) for material, im in bound_images if im.get("has_data")]
    if obj.textures_decoded is not None:
        if obj.textures_decoded > 0 and not loaded:
            problems.append(
                f"the loaded mesh has {obj.textures_decoded} base-colour texture(s) but Blender "
                "bound none (it would render flat colours)"
            )
        elif obj.textures_decoded == 0 and loaded:
            names = ", ".join(sorted({str(im.get("name")) for _, im in loaded}))
            problems.append(
                f"Blender binds base-colour texture image(s) {names} that the loaded mesh does "
                "not have (inspection and the filter would see an untextured object)"
            )
    return problems


def _pose_features(path: Path) -> str:
    """``": the file has skins (1), animations (1)"``: glTF features that make Blender pose
    geometry (trimesh and the rasterizers use the bind pose / static node transforms)."""
    from rendering.gltf_checks import read_gltf

    try:
        doc, _ = read_gltf(path)
    except ValueError:
        return ""
    found = [f"{key} ({len(doc[key])})" for key in ("skins", "animations") if doc.get(key)]
    targets = sum(
        1
        for m in doc.get("meshes", []) or []
        for p in m.get("primitives", []) or []
        if p.get("targets")
    )
    if targets:
        found.append(f"morph targets ({targets} primitives)")
    if not found:
        return ""
    return (
        f": the file has {', '.join(found)}, which Blender's importer poses while trimesh "
        "and the rasterizer backends use the static mesh"
    )


def raw_to_view(raw: np.ndarray, camera: Camera) -> View:
    """A worker's ``(H, W, 8)`` array (see the module docstring) -> :class:`View`."""
    h, w = camera.height, camera.width
    if raw.shape != (h, w, 8):
        raise ValueError(f"raw view must be ({h}, {w}, 8), got {raw.shape}")
    raw = raw.astype(np.float32, copy=False)
    alpha = np.clip(raw[..., 3], 0.0, 1.0)
    covered = alpha > 1e-6
    rgb_linear = np.where(covered[..., None], raw[..., :3] / np.maximum(alpha, 1e-6)[..., None], 0)
    rgba = np.concatenate([srgb_encode(rgb_linear), alpha[..., None]], axis=-1).astype(np.float32)

    depth_raw = raw[..., 4]
    background = ~np.isfinite(depth_raw) | (depth_raw >= BACKGROUND_DEPTH_THRESHOLD)
    depth = np.where(background, np.inf, depth_raw).astype(np.float32)

    normal = raw[..., 5:8].astype(np.float64)
    # Cycles' Depth pass takes one sample per pixel while alpha is averaged, so a few silhouette
    # pixels (~0.1 %) are covered (alpha >= 0.5) yet have background depth. Give them the depth
    # and normal of the nearest pixel with a surface sample, so depth is finite in the mask.
    holes = (alpha >= 0.5) & background
    if holes.any() and not background.all():
        from scipy.ndimage import distance_transform_edt

        _, (rows, cols) = distance_transform_edt(background, return_indices=True)
        depth = np.where(holes, depth[rows, cols], depth).astype(np.float32)
        normal = np.where(holes[..., None], normal[rows, cols], normal)
        background = background & ~holes
    length = np.linalg.norm(normal, axis=-1)
    valid = (length > 1e-6) & ~background
    normal = np.where(valid[..., None], normal / np.maximum(length, 1e-12)[..., None], 0.0)
    away = np.einsum("hwc,hwc->hw", normal, pixel_rays(camera)) > 0.0
    normal[away] *= -1.0
    return View(rgba=rgba, depth=depth, normal=normal.astype(np.float32), camera=camera)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker's process group (it runs in its own session) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"exit code {code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"exit code {code}"
    return f"exit code {code}"


def _finalize(procs: list[subprocess.Popen[bytes]], scratch: Path | None) -> None:
    """Last-resort cleanup when a backend is garbage collected without ``close()``."""
    for proc in procs:
        _kill_group(proc)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process. A zombie counts as dead (it has exited; it only
    waits for its parent to reap it). EPERM means it exists under another user: alive. When
    unsure, alive: a stale directory kept is harmless, a live one removed is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def remove_stale_scratch(root: str | os.PathLike[str]) -> list[Path]:
    """Remove the default scratch directories in ``root`` whose owner process is dead (a client
    killed by SIGKILL / SIGTERM runs no cleanup) and return them.

    Only entries named like ours (:data:`_SCRATCH_NAME`) that are real directories (never a
    symlink, never followed) owned by the current user, and never the current process's. Races
    are tolerated: another backend sweeping the same root at the same time, or the entry
    vanishing or changing underneath, make ``rmtree`` fail quietly (``shutil.rmtree`` works
    through file descriptors here and refuses to descend through a symlink).
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    me = os.getpid()
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        match = _SCRATCH_NAME.fullmatch(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            owner_uid = entry.stat(follow_symlinks=False).st_uid
        except OSError:
            continue
        pid = int(match.group(1))
        if (uid is not None and owner_uid != uid) or pid == me or _pid_alive(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(Path(entry.path))
    return removed


class _Spawner:
    """Runs ``subprocess.Popen`` on a thread that lives as long as the process.

    Why: ``PR_SET_PDEATHSIG`` (armed by the worker) fires when the *thread* that forked the
    worker exits, not when its process does. A worker forked from a short-lived thread (a
    caller's ``threading.Thread``, a respawn after a timeout on whichever thread called
    ``render``) would be SIGKILLed when that thread ends, though its backend lives on. So calls
    from the main thread fork directly (it lives as long as the process) and calls from any
    other thread are handed to one daemon thread started on first use, which blocks on its queue
    until the process exits. (Under Ray Data, ``ShardWorker.__call__`` and so every lazy worker
    start runs on a ``ThreadPoolExecutor`` thread, not on the actor's main thread.)
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the thread, lock and queue (in a forked child: none of the parent's threads
        exist there, and the lock may have been held by one of them at the fork)."""
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], _T]) -> _T:
        """``fn()``, called on the main thread or on the spawner thread."""
        if threading.current_thread() is threading.main_thread():
            return fn()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="blender-backend-spawner", daemon=True
                )
                self._thread.start()
        future: Future[_T] = Future()
        self._jobs.put((fn, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            fn, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # handed to the caller, which re-raises it
                future.set_exception(e)


_SPAWNER = _Spawner()
if hasattr(os, "register_at_fork"):  # a forked child has no spawner thread and maybe a held lock
    os.register_at_fork(after_in_child=_SPAWNER.reset)


class _WorkerGone(Exception):
    pass


class _WorkerTimeout(Exception):
    pass


class BlenderBackend:
    """Cycles renders of mesh files through a persistent Blender worker process.

    ``settings.samples`` / ``shading`` / ``device`` / ``threads`` configure Cycles;
    ``settings.timeout_s`` (copied to the adjustable attribute :attr:`timeout_s`) bounds one
    object's render (the worker's start is bounded separately by ``startup_timeout_s``).
    ``max_objects_per_worker`` recycles the worker after that many objects. ``scratch_dir``
    holds per-request outputs and worker logs (by default a private temporary directory,
    ``blender-backend-<pid>-*``, removed by :meth:`close`; creating it also removes the ones
    dead processes left behind, see :func:`remove_stale_scratch`).

    Counters: :attr:`objects_rendered` (successful objects), :attr:`workers_started`,
    :attr:`timeouts`; :attr:`last_timings` holds the last successful object's seconds
    (``start_s`` worker start paid by this object, ``reset_s``, ``import_s``, ``setup_s``,
    ``render_s`` Cycles time summed over views, ``io_s`` EXR -> npy in the worker,
    ``worker_s``, ``load_s`` client-side loading, ``total_s`` end to end).

    Not thread-safe: use one instance per thread or process.
    """

    name = "blender"

    def __init__(
        self,
        settings: RenderSettings | None = None,
        *,
        max_objects_per_worker: int = 200,
        scratch_dir: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 120.0,
        close_grace_s: float = 10.0,
    ) -> None:
        if not bpy_available():
            raise BackendUnavailable(
                f"the 'blender' backend needs bpy (Blender as a Python module): {INSTALL_HINT}"
            )
        if max_objects_per_worker < 1:
            raise ValueError(f"max_objects_per_worker must be >= 1, got {max_objects_per_worker}")
        self.settings = settings or RenderSettings()
        self.timeout_s = float(self.settings.timeout_s)
        self.max_objects_per_worker = int(max_objects_per_worker)
        self.startup_timeout_s = float(startup_timeout_s)
        self.close_grace_s = float(close_grace_s)
        self.objects_rendered = 0
        self.workers_started = 0
        self.timeouts = 0
        self.last_timings: dict[str, float] = {}
        self.worker_info: dict[str, Any] = {}
        """The current (or last) worker's hello message."""

        self._owns_scratch = scratch_dir is None
        self._scratch_arg = Path(scratch_dir) if scratch_dir is not None else None
        self._scratch: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._procs: list[subprocess.Popen[bytes]] = []  # shared with the finalizer
        self._log_path: Path | None = None
        self._buf = b""
        self._worker_objects = 0
        self._next_id = 0
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- public API ------------------------------------------------------------------------

    @property
    def worker_pid(self) -> int | None:
        """PID of the running worker (None when none is running)."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    @property
    def log_path(self) -> Path | None:
        """The current (or last) worker's stderr log."""
        return self._log_path

    def start(self) -> dict[str, Any]:
        """Start a worker now if none is running (``render`` does this lazily); returns its
        hello message."""
        if self._proc is None or self._proc.poll() is not None:
            self._discard_dead_worker()
            self._spawn()
        return self.worker_info

    def prepare_native(self, path: str | os.PathLike[str]) -> RenderObject:
        """A :class:`RenderObject` for a format only Blender reads (FBX): the worker imports
        the file and reports its bounds in Blender's frame (importer rotation applied); the
        normalization is computed from those, so ``file_to_world`` keeps its meaning (file
        coordinates, before the importer's rotation -> normalized world)."""
        from rendering.normalize import normalization_transform

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in IMPORTER_ROTATION:
            raise RenderError(f"{path}: the blender backend cannot import {suffix!r}")
        if not path.is_file():
            raise RenderError(f"{path}: no such file")
        if self._proc is None or self._proc.poll() is not None:
            self.start()
        self._next_id += 1
        request = {"op": "bounds", "id": self._next_id, "path": str(path.resolve())}
        try:
            reply = self._call(request, self.timeout_s)
        except _WorkerTimeout:
            self._kill_worker()
            self.timeouts += 1
            raise RenderTimeout(
                f"{path}: importing took longer than {self.timeout_s:g} s"
            ) from None
        except _WorkerGone as e:
            self._kill_worker()
            raise RenderError(f"{path}: the Blender worker died while importing ({e})") from None
        if not reply.get("ok"):
            error = str(reply.get("error", "unknown error"))
            raise RenderError(error if str(path) in error else f"{path}: {error}")
        bounds = np.asarray(reply["bounds"], dtype=np.float64)
        try:
            normalize = normalization_transform(bounds)
        except ValueError as e:
            raise RenderError(f"{path}: {e}") from e
        rotation = IMPORTER_ROTATION[suffix]
        centred = (bounds - bounds.mean(axis=0)) * normalize[0, 0]
        return RenderObject(
            path=path,
            file_to_world=normalize @ rotation,
            source_up="y" if rotation[1, 2] != 0 else "z",
            bounds_world=centred,
        )

    def render(self, obj: RenderObject, cameras: Sequence[Camera]) -> list[View]:
        t0 = time.perf_counter()
        path = Path(obj.path)
        suffix = path.suffix.lower()
        if suffix == ".blend":
            raise RenderError(f"{path}: .blend files are refused (they can carry scripts)")
        if suffix not in IMPORTER_ROTATION:
            raise RenderError(
                f"{path}: the blender backend cannot import {suffix!r}; "
                f"expected one of {', '.join(IMPORTER_ROTATION)}"
            )
        if not path.is_file():
            raise RenderError(f"{path}: no such file")
        cameras = list(cameras)
        if not cameras:
            return []

        if self._proc is not None and self._worker_objects >= self.max_objects_per_worker:
            self._stop_worker()
        start_s = 0.0
        if self._proc is None or self._proc.poll() is not None:
            ts = time.perf_counter()
            self.start()
            start_s = time.perf_counter() - ts

        matrix = np.asarray(obj.file_to_world, dtype=np.float64) @ np.linalg.inv(
            IMPORTER_ROTATION[suffix]
        )
        self._next_id += 1
        req_id = self._next_id
        assert self._scratch is not None
        out_dir = self._scratch / f"req-{req_id:06d}"
        request = {
            "op": "render",
            "id": req_id,
            "path": str(path.resolve()),
            "matrix": matrix.tolist(),
            "cameras": [
                {
                    "c2w": np.asarray(c.c2w).tolist(),
                    "fov_deg": float(c.fov_deg),
                    "width": int(c.width),
                    "height": int(c.height),
                }
                for c in cameras
            ],
            "out_dir": str(out_dir),
            "samples": int(self.settings.samples),
            "engine": self.settings.engine,
            "shading": self.settings.shading,
            "threads": int(self.settings.threads),
        }
        self._worker_objects += 1
        try:
            try:
                reply = self._call(request, self.timeout_s)
            except _WorkerTimeout:
                pid = self._proc.pid if self._proc is not None else None
                self._kill_worker()
                self.timeouts += 1
                raise RenderTimeout(
                    f"{path}: rendering took longer than the {self.timeout_s:g} s timeout; "
                    f"killed the Blender worker (pid {pid}); the next render starts a fresh one"
                ) from None
            except _WorkerGone as e:
                self._kill_worker()
                raise RenderError(
                    f"{path}: the Blender worker died while rendering ({e}); "
                    f"log tail:\n{self._log_tail()}"
                ) from None
            except BaseException:  # e.g. KeyboardInterrupt: a reply may still be pending
                self._kill_worker()
                raise
            if reply.get("id") != req_id:
                self._kill_worker()
                raise RenderError(f"{path}: out-of-order reply from the Blender worker: {reply}")
            if not reply.get("ok"):
                error = str(reply.get("error", "unknown error"))
                raise RenderError(error if str(path) in error else f"{path}: {error}")
            if reply.get("auto_exec") is not False:
                self._kill_worker()
                raise RenderError(f"{path}: worker reports Python auto-execution enabled")
            problems = binding_problems(reply.get("bound"), obj, suffix)
            if problems:
                raise RenderError(f"{path}: {'; '.join(problems)}")
            tl = time.perf_counter()
            views = [
                raw_to_view(np.load(npy), cam)
                for cam, npy in zip(cameras, reply["views"], strict=True)
            ]
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        self.objects_rendered += 1
        timings = {k: float(v) for k, v in reply.get("timings", {}).items()}
        timings["start_s"] = start_s
        timings["load_s"] = time.perf_counter() - tl
        timings["total_s"] = time.perf_counter() - t0
        self.last_timings = timings
        return views

    def close(self) -> None:
        """Ask the worker to exit (kill it after ``close_grace_s``) and remove the scratch
        directory if the backend created it. The backend can render again afterwards."""
        self._stop_worker()
        if self._owns_scratch and self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def __enter__(self) -> BlenderBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker lifecycle ------------------------------------------------------------------

    def _ensure_scratch(self) -> Path:
        if self._scratch is None or not self._scratch.is_dir():
            if self._scratch_arg is not None:
                self._scratch_arg.mkdir(parents=True, exist_ok=True)
                self._scratch = self._scratch_arg
            else:
                prefix = f"{SCRATCH_PREFIX}{os.getpid()}-"
                self._scratch = Path(tempfile.mkdtemp(prefix=prefix))
                remove_stale_scratch(self._scratch.parent)
        if self._finalizer is None:
            self._finalizer = weakref.finalize(
                self, _finalize, self._procs, self._scratch if self._owns_scratch else None
            )
        return self._scratch

    def _spawn(self) -> None:
        scratch = self._ensure_scratch()
        self.workers_started += 1
        self._log_path = scratch / f"worker-{self.workers_started:04d}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable,
            "-m",
            WORKER_MODULE,
            "--device",
            self.settings.device,
            "--parent-pid",
            str(os.getpid()),
        ]
        with open(self._log_path, "wb") as log:
            # Forked on the main thread or the spawner thread: see _Spawner (PDEATHSIG).
            proc = _SPAWNER.run(
                lambda: subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    bufsize=0,
                    env=env,
                    cwd=str(scratch),
                    start_new_session=True,
                    close_fds=True,
                )
            )
        self._proc = proc
        self._procs.append(proc)
        self._buf = b""
        self._worker_objects = 0
        try:
            hello = self._read_reply(time.monotonic() + self.startup_timeout_s)
        except (_WorkerTimeout, _WorkerGone) as e:
            what = (
                f"did not answer within {self.startup_timeout_s:g} s"
                if isinstance(e, _WorkerTimeout)
                else f"exited at start ({e})"
            )
            self._kill_worker()
            raise BackendUnavailable(
                f"the Blender worker {what}; is bpy usable ({INSTALL_HINT})? "
                f"log tail:\n{self._log_tail()}"
            ) from None
        if hello.get("op") != "hello" or not hello.get("ok"):
            self._kill_worker()
            raise BackendUnavailable(
                f"the Blender worker refused to start: {hello.get('error', hello)}"
            )
        if hello.get("auto_exec") is not False:
            self._kill_worker()
            raise BackendUnavailable("the Blender worker could not disable Python auto-execution")
        self.worker_info = hello

    def _stop_worker(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self._call({"op": "exit", "id": 0}, self.close_grace_s)
                proc.wait(timeout=self.close_grace_s)
            except (_WorkerTimeout, _WorkerGone, subprocess.TimeoutExpired):
                pass
        self._kill_worker()

    def _kill_worker(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _kill_group(proc)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc in self._procs:
            self._procs.remove(proc)

    def _discard_dead_worker(self) -> None:
        """A worker that died between objects (e.g. killed from outside) is just replaced."""
        if self._proc is not None:
            self._kill_worker()

    # -- protocol --------------------------------------------------------------------------

    def _call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise _WorkerGone("no worker")
        deadline = time.monotonic() + timeout_s
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerGone(self._exit_status(proc)) from None
        return self._read_reply(deadline)

    def _read_reply(self, deadline: float) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        stream: IO[bytes] = proc.stdout
        fd = stream.fileno()
        while True:
            newline = self._buf.find(b"\n")
            if newline >= 0:
                line, self._buf = self._buf[:newline], self._buf[newline + 1 :]
                if not line.strip():
                    continue
                try:
                    message: dict[str, Any] = json.loads(line)
                except json.JSONDecodeError:
                    raise _WorkerGone(f"garbled reply {line[:200]!r}") from None
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerTimeout()
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _WorkerGone(self._exit_status(proc))
            self._buf += chunk

    @staticmethod
    def _exit_status(proc: subprocess.Popen[bytes]) -> str:
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        return _describe_exit(code)

    def _log_tail(self, max_bytes: int = 3000) -> str:
        if self._log_path is None or not self._log_path.is_file():
            return "(no log)"
        with open(self._log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", "replace").strip() or "(empty log)"
