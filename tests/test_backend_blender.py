"""The ``blender`` backend (persistent Blender worker): analytic renders, axis conventions,
failure handling (corrupt files, timeouts, crashes, recycling) and the worker protocol.

Skipped as a whole where ``bpy`` is not installed. Images are 32-96 px with 1-4 samples; one
module-scoped backend serves the rendering tests, the failure tests start their own workers
(~1 s each).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

if importlib.util.find_spec("bpy") is None:
    pytest.skip(
        "bpy (Blender as a Python module) is not installed: "
        "pip install 'instantmesh-pipeline[render]'",
        allow_module_level=True,
    )

from rendering.backends import (
    BackendUnavailable,
    RenderError,
    RenderObject,
    RenderSettings,
    RenderTimeout,
    make_backend,
    prepare_object,
)
from rendering.backends.blender import BlenderBackend, raw_to_view, remove_stale_scratch
from rendering.backends.blender_worker import EXIT_PARENT_GONE
from rendering.cameras import Camera, camera_from_spherical
from rendering.normalize import Y_UP_TO_Z_UP
from rendering.procedural import glb_bytes, textured

SETTINGS = RenderSettings(samples=2, shading="unlit", threads=2, timeout_s=120.0)
TEXTURE_RGB = (200, 60, 30)


@pytest.fixture(scope="module")
def backend() -> Iterator[BlenderBackend]:
    b = BlenderBackend(SETTINGS)
    yield b
    b.close()


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("blender_assets")
    box = trimesh.creation.box(extents=[2.0, 2.0, 2.0])
    cube = textured(
        trimesh.Trimesh(box.vertices, box.faces, process=False),
        Image.new("RGB", (8, 8), TEXTURE_RGB),
    )
    paths = {"cube": root / "cube.glb"}
    paths["cube"].write_bytes(glb_bytes(cube))
    data = paths["cube"].read_bytes()
    paths["truncated"] = root / "truncated.glb"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["garbage"] = root / "garbage.glb"
    paths["garbage"].write_bytes(b"glTF\x02\x00\x00\x00" + os.urandom(64))
    return paths


def _cube(assets: dict[str, Path]) -> RenderObject:
    obj, _ = prepare_object(assets["cube"])
    return obj


# -- analytic renders ----------------------------------------------------------------------


def test_hello_reports_secure_worker(backend: BlenderBackend) -> None:
    hello = backend.start()
    assert hello["auto_exec"] is False
    assert hello["blender_version"].startswith("5.")
    assert hello["device"] == "CPU" or hello["gpus"]
    assert ".blend" not in hello["suffixes"]
    assert backend.worker_pid == hello["pid"]


def test_cube_depth_normal_coverage_colour(
    backend: BlenderBackend, assets: dict[str, Path]
) -> None:
    """The normalized cube spans [-1, 1]^3: from distance 3 its front face is at depth 2."""
    fov = 60.0
    cams = [
        camera_from_spherical(0, 0, 3.0, fov, 64),
        camera_from_spherical(90, 0, 3.0, fov, 64),
        camera_from_spherical(0, 90, 3.0, fov, 64),
        camera_from_spherical(180, -90, 3.0, fov, 64),
    ]
    views = backend.render(_cube(assets), cams)
    assert len(views) == 4
    expected_normals = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, -1)]
    # the front face's half-width projects to tan(a) = 1/2 against tan(fov/2)
    side = 64 * 0.5 / math.tan(math.radians(fov / 2))
    coverage = (side / 64) ** 2
    tolerance = 4 * side / 64**2  # one pixel ring around the square
    for view, n in zip(views, expected_normals, strict=True):
        assert view.rgba.dtype == np.float32 and view.depth.dtype == np.float32
        centre = (slice(28, 36), slice(28, 36))
        np.testing.assert_allclose(view.depth[centre], 2.0, atol=1e-3)
        np.testing.assert_allclose(view.normal[centre], np.broadcast_to(n, (8, 8, 3)), atol=1e-3)
        assert abs(view.coverage - coverage) <= tolerance, (view.coverage, coverage)
        assert np.isinf(view.depth[0, 0]) and np.isinf(view.depth[-1, -1])
        assert not view.normal[0, 0].any() and view.rgba[0, 0, 3] == 0.0
        finite = np.isfinite(view.depth)
        np.testing.assert_allclose(np.linalg.norm(view.normal[finite], axis=-1), 1.0, atol=1e-4)
        # unlit: the pixel is the texture's sRGB colour
        np.testing.assert_allclose(
            view.rgba[32, 32], [*(c / 255 for c in TEXTURE_RGB), 1.0], atol=1.0 / 255
        )
        assert 0.0 <= view.rgba.min() and view.rgba.max() <= 1.0
    t = backend.last_timings
    assert {"import_s", "render_s", "total_s", "start_s"} <= set(t)
    assert t["total_s"] >= t["render_s"] > 0


def test_horizontal_fov_on_non_square_image(
    backend: BlenderBackend, assets: dict[str, Path]
) -> None:
    """fov_deg is horizontal: the face's width in pixels follows width / 2 / tan(fov / 2)."""
    fov, w, h = 60.0, 80, 40
    cam = camera_from_spherical(0, 0, 3.0, fov, (w, h))
    (view,) = backend.render(_cube(assets), [cam])
    assert view.rgba.shape == (h, w, 4)
    width_px = view.mask[h // 2].sum()
    assert abs(width_px - w * 0.5 / math.tan(math.radians(fov / 2))) <= 1.0
    assert view.mask[:, w // 2].all()  # taller than the frame (square pixels)


def test_renders_are_deterministic(backend: BlenderBackend, assets: dict[str, Path]) -> None:
    cam = camera_from_spherical(30, 20, 3.0, 50, 32)
    a = backend.render(_cube(assets), [cam])[0]
    b = backend.render(_cube(assets), [cam])[0]
    np.testing.assert_array_equal(a.rgba, b.rgba)
    np.testing.assert_array_equal(a.depth, b.depth)


def test_lit_shading(backend: BlenderBackend, assets: dict[str, Path]) -> None:
    """Lit: uniform white environment; a convex diffuse-ish face comes out near its colour."""
    cam = camera_from_spherical(0, 0, 3.0, 60, 32)
    unlit = backend.render(_cube(assets), [cam])[0]
    original = backend.settings
    backend.settings = dataclasses.replace(original, shading="lit", samples=4)
    try:
        lit = backend.render(_cube(assets), [cam])[0]
    finally:
        backend.settings = original
    # Depth is a single-sample pass, identical for any shading; alpha (hence which silhouette
    # pixels count as covered and get their depth filled from a neighbour) depends on samples.
    both = lit.mask & unlit.mask
    assert both.sum() >= 0.97 * max(lit.mask.sum(), unlit.mask.sum())
    from scipy.ndimage import binary_erosion

    interior = binary_erosion(both, iterations=1)
    np.testing.assert_array_equal(lit.depth[interior], unlit.depth[interior])
    assert np.abs(lit.rgba[16, 16, :3] - unlit.rgba[16, 16, :3]).max() < 0.15


# -- axis conventions ----------------------------------------------------------------------


def _l_shape_world() -> trimesh.Trimesh:
    """A column along world Z, an arm at the top towards +Y, a foot at the bottom towards +X."""
    parts = []
    for extents, centre in (
        ((0.4, 0.4, 2.0), (0.0, 0.0, 0.0)),
        ((0.4, 0.8, 0.4), (0.0, 0.6, 0.8)),
        ((0.8, 0.4, 0.4), (0.6, 0.0, -0.8)),
    ):
        box = trimesh.creation.box(extents=extents)
        box.apply_translation(centre)
        parts.append(box)
    mesh = trimesh.util.concatenate(parts)
    assert isinstance(mesh, trimesh.Trimesh)
    return mesh


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply", ".stl"])
def test_axis_convention(backend: BlenderBackend, tmp_path: Path, suffix: str) -> None:
    """The file is written in its format's convention (Y up for glTF/OBJ, Z up for PLY/STL);
    the render must show the world shape: tall, arm to the right seen from +x (image right =
    +y), foot to the left seen from +y (image right = -x), nearest faces at depth 2.4."""
    world = _l_shape_world()
    to_file = np.linalg.inv(Y_UP_TO_Z_UP) if suffix in (".glb", ".obj") else np.eye(4)
    file_mesh = world.copy()
    file_mesh.apply_transform(to_file)
    path = tmp_path / f"l_shape{suffix}"
    if suffix == ".glb":
        path.write_bytes(glb_bytes(file_mesh))
    else:
        file_mesh.export(path)
    obj, _ = prepare_object(path)
    # normalized: x, y in [-0.6, 0.6] (column at -0.4), z in [-1, 1]
    cams = [camera_from_spherical(0, 0, 3.0, 60, 48), camera_from_spherical(90, 0, 3.0, 60, 48)]
    front, side = backend.render(obj, cams)
    for view in (front, side):
        rows, cols = np.nonzero(view.mask)
        assert np.ptp(rows) > 1.4 * np.ptp(cols), "the column must look tall (world Z up)"
        assert float(np.nanmin(np.where(np.isfinite(view.depth), view.depth, np.nan))) == (
            pytest.approx(2.4, abs=1e-3)
        )

    def mean_col(view_mask: np.ndarray, band: slice) -> float:
        return float(np.nonzero(view_mask[band])[1].mean())

    top, bottom = slice(4, 14), slice(34, 44)
    assert mean_col(front.mask, top) > mean_col(front.mask, bottom) + 4  # arm towards +y
    assert mean_col(side.mask, bottom) < mean_col(side.mask, top) - 4  # foot towards +x


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["truncated", "garbage"])
def test_corrupt_file_keeps_worker(
    backend: BlenderBackend, assets: dict[str, Path], name: str
) -> None:
    backend.start()
    started, pid = backend.workers_started, backend.worker_pid
    obj = RenderObject(path=assets[name], file_to_world=np.eye(4))
    with pytest.raises(RenderError) as info:
        backend.render(obj, [camera_from_spherical(0, 0, 3.0, 50, 32)])
    assert str(assets[name]) in str(info.value)
    assert "import" in str(info.value)
    views = backend.render(_cube(assets), [camera_from_spherical(0, 0, 3.0, 50, 32)])
    assert views[0].coverage > 0.5
    assert backend.workers_started == started and backend.worker_pid == pid


def test_refuses_blend_and_missing_files(backend: BlenderBackend, tmp_path: Path) -> None:
    blend = tmp_path / "scene.blend"
    blend.write_bytes(b"BLENDER-v500")
    cam = camera_from_spherical(0, 0, 3.0, 50, 32)
    with pytest.raises(RenderError, match=r"scene\.blend.*refused"):
        backend.render(RenderObject(path=blend, file_to_world=np.eye(4)), [cam])
    with pytest.raises(RenderError, match="no such file"):
        backend.render(RenderObject(path=tmp_path / "missing.glb", file_to_world=np.eye(4)), [cam])


def test_worker_protocol_refuses_blend(tmp_path: Path) -> None:
    """Talk to a bare worker: handshake, .blend refusal, malformed input, orderly exit."""
    blend = tmp_path / "scene.blend"
    blend.write_bytes(b"BLENDER-v500")
    requests = [
        {"op": "render", "id": 1, "path": str(blend), "out_dir": str(tmp_path / "o")},
        {"op": "bogus", "id": 2},
        {"op": "exit", "id": 3},
    ]
    stdin = "".join(json.dumps(r) + "\n" for r in requests[:2]) + "not json\n"
    stdin += json.dumps(requests[2]) + "\n"
    proc = subprocess.run(
        [sys.executable, "-m", "rendering.backends.blender_worker", "--device", "cpu"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    replies = [json.loads(line) for line in proc.stdout.splitlines()]  # nothing but JSON
    assert [r["op"] for r in replies] == ["hello", "result", "result", "result", "bye"]
    hello = replies[0]
    assert hello["ok"] and hello["auto_exec"] is False and hello["device"] == "CPU"
    assert not replies[1]["ok"] and "refusing to open a .blend" in replies[1]["error"]
    assert not replies[2]["ok"] and "unknown op" in replies[2]["error"]
    assert not replies[3]["ok"] and "malformed" in replies[3]["error"]


def test_timeout_kills_and_respawns(assets: dict[str, Path]) -> None:
    settings = RenderSettings(samples=32, shading="lit", threads=2, timeout_s=0.05)
    cams = [camera_from_spherical(a, 20, 3.0, 50, 96) for a in (0, 90, 180, 270)]
    with BlenderBackend(settings) as b:
        b.start()
        old_pid = b.worker_pid
        assert old_pid is not None
        with pytest.raises(RenderTimeout, match=r"cube\.glb"):
            b.render(_cube(assets), cams)
        assert b.timeouts == 1 and b.worker_pid is None
        assert not _alive(old_pid)
        b.timeout_s = 120.0
        views = b.render(_cube(assets), cams[:1])
        assert views[0].coverage > 0.3
        assert b.workers_started == 2 and b.objects_rendered == 1


def test_crash_mid_render_reports_and_respawns(assets: dict[str, Path]) -> None:
    settings = RenderSettings(samples=64, shading="lit", threads=2, timeout_s=120.0)
    cams = [camera_from_spherical(a, 20, 3.0, 50, 128) for a in (0, 90, 180, 270)]
    with BlenderBackend(settings) as b:
        pid = b.start()["pid"]
        timer = threading.Timer(0.3, os.kill, (pid, signal.SIGSEGV))
        timer.start()
        try:
            with pytest.raises(RenderError, match=r"cube\.glb.*died.*SIGSEGV") as info:
                b.render(_cube(assets), cams)
        finally:
            timer.cancel()
        assert "log tail" in str(info.value)
        # a worker that died between objects is replaced silently
        idle_pid = b.start()["pid"]
        os.kill(idle_pid, signal.SIGKILL)
        time.sleep(0.2)
        b.settings = dataclasses.replace(settings, samples=1)
        assert b.render(_cube(assets), cams[:1])[0].coverage > 0.3
        assert b.workers_started == 3


def test_recycles_after_max_objects(assets: dict[str, Path]) -> None:
    cam = camera_from_spherical(0, 0, 3.0, 50, 32)
    with BlenderBackend(SETTINGS, max_objects_per_worker=2) as b:
        pids = []
        for _ in range(3):
            b.render(_cube(assets), [cam])
            pids.append(b.worker_pid)
        assert b.workers_started == 2 and b.objects_rendered == 3
        assert pids[0] == pids[1] != pids[2]
        assert pids[0] is not None and not _alive(pids[0])


def test_close_stops_worker_and_cleans_scratch(assets: dict[str, Path]) -> None:
    b = make_backend("blender", SETTINGS)
    assert isinstance(b, BlenderBackend) and b.name == "blender"
    assert b.worker_pid is None  # lazy: nothing started yet
    b.render(_cube(assets), [camera_from_spherical(0, 0, 3.0, 50, 32)])
    pid, scratch = b.worker_pid, b.log_path.parent if b.log_path else None
    assert pid is not None and scratch is not None and scratch.is_dir()
    b.close()
    assert b.worker_pid is None and not _alive(pid) and not scratch.exists()


# -- process lifetime: orphaned workers, stale scratch ------------------------------------

_PROJECT_ROOT = Path(__file__).resolve().parents[1]

_ORPHAN_HELPER = """
import sys, threading, time
from rendering.backends import RenderSettings, prepare_object
from rendering.backends.blender import BlenderBackend
from rendering.cameras import camera_from_spherical

settings = RenderSettings(samples=4096, shading="lit", threads=1, timeout_s=3600.0)
backend = BlenderBackend(settings)
obj, _ = prepare_object(sys.argv[1])
cams = [camera_from_spherical(a, 20, 3.0, 50, 256) for a in range(0, 360, 45)]

def run():
    backend.start()
    print(backend.worker_pid, flush=True)
    backend.render(obj, cams)  # minutes of Cycles: still rendering when we are killed

if sys.argv[2] == "thread":
    threading.Thread(target=run, daemon=True).start()
    time.sleep(3600)
else:
    run()
"""


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not _alive(proc.pid)
    return proc.pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("thread", ["main", "thread"])
def test_worker_dies_with_a_sigkilled_client(
    assets: dict[str, Path], tmp_path: Path, thread: str
) -> None:
    """The bug: a client (a Ray actor) killed while its worker renders left the worker
    rendering as an orphan at full CPU. A busy worker never reads its stdin, so only
    PDEATHSIG can stop it. "thread": the client renders from a non-main thread (as Ray Data
    does), so the worker is forked on the spawner thread. The dead client's scratch
    directory is then recognisably stale."""
    helper = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_HELPER, str(assets["cube"]), thread],
        stdout=subprocess.PIPE,
        text=True,
        cwd=_PROJECT_ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    worker_pid = None
    try:
        assert helper.stdout is not None
        line = helper.stdout.readline()
        assert line.strip().isdigit(), f"helper printed {line!r} (exit {helper.poll()})"
        worker_pid = int(line)
        time.sleep(1.0)  # well into the render
        assert _alive(worker_pid), "the worker must be busy rendering when the client dies"
        t0 = time.monotonic()
        helper.kill()
        helper.wait(timeout=10)
        while _alive(worker_pid) and time.monotonic() - t0 < 5.0:
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        print(f"orphaned worker gone {elapsed:.3f} s after SIGKILL of its client")
        assert not _alive(worker_pid), "the worker outlived its SIGKILLed client"
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait(timeout=10)
        if worker_pid is not None and _alive(worker_pid):
            os.killpg(worker_pid, signal.SIGKILL)  # the worker leads its own session
    (scratch,) = tmp_path.glob(f"blender-backend-{helper.pid}-*")
    assert remove_stale_scratch(tmp_path) == [scratch] and not scratch.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_worker_whose_parent_is_already_gone_exits() -> None:
    """The race PDEATHSIG leaves open (the parent dies before the worker arms it): the worker
    checks its parent pid right after and exits, before loading bpy."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rendering.backends.blender_worker",
            "--parent-pid",
            str(_dead_pid()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=_PROJECT_ROOT,
    )
    assert proc.returncode == EXIT_PARENT_GONE, proc.stderr[-2000:]
    assert proc.stdout == "" and "is gone" in proc.stderr


def test_worker_outlives_the_thread_that_started_it(assets: dict[str, Path]) -> None:
    """PDEATHSIG fires when the *thread* that forked the worker exits: a worker started from a
    short-lived thread must survive that thread (it is forked on the spawner thread)."""
    with BlenderBackend(SETTINGS) as b:
        starter = threading.Thread(target=b.start)
        starter.start()
        starter.join()
        pid = b.worker_pid
        assert pid is not None
        time.sleep(0.5)
        assert _alive(pid) and b.worker_pid == pid
        views = b.render(_cube(assets), [camera_from_spherical(0, 0, 3.0, 50, 32)])
        assert views[0].coverage > 0.5 and b.workers_started == 1 and b.worker_pid == pid


def test_stale_scratch_of_dead_owners_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A starting backend removes sibling ``blender-backend-<pid>-*`` directories whose owner
    is dead, and nothing else: not a live owner's, not other names, not files, not symlinks
    (nor what they point to)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = _dead_pid()
    stale = tmp_path / f"blender-backend-{dead}-abc_1234"
    (stale / "req-000001").mkdir(parents=True)
    (stale / "worker-0001.log").write_bytes(b"x" * 4096)
    live = tmp_path / f"blender-backend-{os.getpid()}-live1234"
    other = tmp_path / f"not-blender-backend-{dead}-abcd1234"
    legacy = tmp_path / "blender-backend-k3j4h5g6"  # the old naming: owner unknown
    for d in (live, other, legacy):
        d.mkdir()
    a_file = tmp_path / f"blender-backend-{dead}-file1234"
    a_file.write_text("")
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("")
    link = tmp_path / f"blender-backend-{dead}-link1234"
    link.symlink_to(target, target_is_directory=True)

    with BlenderBackend(SETTINGS) as b:
        b.start()
        assert b.log_path is not None
        own = b.log_path.parent
        assert own.parent == tmp_path and own.name.startswith(f"blender-backend-{os.getpid()}-")
        assert not stale.exists()
        assert live.is_dir() and other.is_dir() and legacy.is_dir() and a_file.is_file()
        assert link.is_symlink() and (target / "keep").is_file()
    assert not own.exists()  # close() still removes its own directory


def test_client_modules_do_not_import_bpy() -> None:
    code = (
        "import sys, rendering.backends.blender, rendering.backends.blender_worker; "
        "print('bpy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU may be present")
def test_gpu_requested_without_gpu_is_unavailable() -> None:
    with (
        BlenderBackend(dataclasses.replace(SETTINGS, device="gpu")) as b,
        pytest.raises(BackendUnavailable, match="no OPTIX or CUDA device"),
    ):
        b.start()


def test_unavailable_without_bpy(monkeypatch: pytest.MonkeyPatch) -> None:
    import rendering.backends.blender as blender_module

    monkeypatch.setattr(blender_module, "bpy_available", lambda: False)
    with pytest.raises(BackendUnavailable, match=r"pip install 'instantmesh-pipeline\[render\]'"):
        BlenderBackend(SETTINGS)


def test_raw_to_view_conventions() -> None:
    """Unpremultiplied sRGB colour, +inf background depth, unit normals facing the camera."""
    cam = Camera.from_c2w(np.eye(4), 90.0, 2)  # looks down -z
    raw = np.zeros((2, 2, 8), np.float32)
    raw[..., 4] = 1e10
    raw[0, 0] = [0.1, 0.1, 0.1, 0.5, 3.0, 0.0, 0.0, 0.5]  # normal +z faces the camera
    raw[0, 1] = [0.2, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, -2.0]  # normal -z faces away: flipped
    view = raw_to_view(raw, cam)
    np.testing.assert_allclose(view.rgba[0, 0], [0.4845, 0.4845, 0.4845, 0.5], atol=1e-3)
    np.testing.assert_allclose(view.normal[0, 0], [0, 0, 1])
    np.testing.assert_allclose(view.normal[0, 1], [0, 0, 1])
    assert view.depth[0, 0] == 3.0 and np.isinf(view.depth[1]).all()
    assert not view.normal[1].any() and view.coverage == 0.5


# -- slow ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_memory_is_bounded(assets: dict[str, Path]) -> None:
    """100 objects x 4 views in one worker (10-20 s): resident memory stays flat (no per-object
    leak; measured 458 -> 460 MB)."""
    cams = [camera_from_spherical(a, 20, 3.0, 50, 64) for a in (0, 90, 180, 270)]
    with BlenderBackend(SETTINGS) as b:
        rss = []
        for i in range(100):
            b.render(_cube(assets), cams)
            if i in (10, 99):
                assert b.worker_pid is not None
                rss.append(_rss_mb(b.worker_pid))
        assert b.workers_started == 1
        print(f"worker RSS after 11 / 100 objects: {rss[0]:.0f} / {rss[1]:.0f} MB")
        assert rss[1] - rss[0] < 40, rss


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_eevee_engine_renders_headless_with_the_same_conventions(assets: dict[str, Path]) -> None:
    """EEVEE (EGL + Mesa, no GPU): same depth/normal conventions as Cycles (slow: shader
    compilation takes ~30 s on a CPU)."""
    cam = camera_from_spherical(0, 0, 3.0, 60, 32)
    with BlenderBackend(RenderSettings(engine="eevee", samples=2, shading="unlit")) as eevee:
        view = eevee.render(_cube(assets), [cam])[0]
    assert view.depth[16, 16] == pytest.approx(2.0, abs=2e-3)
    np.testing.assert_allclose(view.normal[16, 16], [1.0, 0.0, 0.0], atol=1e-2)
    assert 0.2 < view.coverage < 1.0


def test_fbx_is_normalized_by_blender_and_matches_the_glb(tmp_path: Path) -> None:
    """FBX (which our Python loaders cannot read) gets its normalization from Blender's own
    import; rendered like the same object as GLB, the silhouettes agree."""
    import subprocess
    import sys

    from rendering import procedural as pg

    box = trimesh.creation.box(extents=(0.4, 1.6, 0.8))  # tall along file-Y
    glb = tmp_path / "box.glb"
    glb.write_bytes(pg.glb_bytes(pg.textured(box, pg.make_texture("checker", 0))))
    fbx = tmp_path / "box.fbx"
    script = (
        "import bpy\n"
        "bpy.ops.wm.read_homefile(use_empty=True)\n"
        f"bpy.ops.import_scene.gltf(filepath={str(glb)!r})\n"
        # embedded texture: without it the FBX names a file that does not exist and Blender
        # would render magenta (refused by the worker's texture report)
        f"bpy.ops.export_scene.fbx(filepath={str(fbx)!r}, path_mode='COPY', embed_textures=True)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    cam = camera_from_spherical(30, 10, 3.5, 50, 48)
    with BlenderBackend(SETTINGS) as blender:
        native = blender.prepare_native(fbx)
        from_fbx = blender.render(native, [cam])[0]
        from_glb = blender.render(prepare_object(glb)[0], [cam])[0]
    iou = (from_fbx.mask & from_glb.mask).sum() / (from_fbx.mask | from_glb.mask).sum()
    assert iou > 0.97
    assert native.bounds_world[:, 2].ptp() == pytest.approx(2.0)  # tall in world Z
