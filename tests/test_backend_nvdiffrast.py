"""The ``nvdiffrast`` backend.

Three groups:

- **Availability** (CPU, always run): without nvdiffrast or without CUDA, ``unavailable_reason``
  explains what is missing and ``make_backend("nvdiffrast")`` raises ``BackendUnavailable``
  (never an ImportError or a crash).
- **Plumbing on a fake rasterizer** (CPU, always run): :class:`FakeDr` re-implements, in plain
  torch on the CPU, the parts of ``nvdiffrast.torch`` the backend uses, following nvdiffrast's
  own CUDA sources (``rasterize.cu``: pixel centres at NDC ``(i + 0.5) 2 / W - 1``, row 0 at
  NDC y = -1, homogeneous edge functions, output ``(b0, b1, z/w, triangle id + 1)``;
  ``interpolate.cu``: ``b0 a0 + b1 a1 + (1 - b0 - b1) a2``; ``texture.cu``, linear + wrap:
  ``u - floor(u)``, ``u W - 0.5``, wrapped taps). It exercises everything of the backend except
  the real kernels (projection, near / far, row flip, UV convention, ids, normals, batching) and
  compares it with the ``cpu`` backend. It does not prove nvdiffrast itself behaves so.
- **The real thing** (``@pytest.mark.gpu``, skipped cleanly without CUDA and nvdiffrast; run with
  ``pytest -m gpu``): the same comparisons against the ``cpu`` backend with nvdiffrast's CUDA
  rasterizer, plus analytic depth / normals and texture orientation.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

import rendering.backends.nvdiffrast_backend as nvb
from rendering import procedural
from rendering.backends import (
    BackendUnavailable,
    RenderError,
    RenderObject,
    RenderSettings,
    View,
    make_backend,
    prepare_object,
    unavailable_reason,
)
from rendering.backends.cpu import CpuBackend
from rendering.cameras import Camera, camera_from_spherical, project


def _cuda_ready() -> bool:
    return importlib.util.find_spec("nvdiffrast") is not None and torch.cuda.is_available()


# --- a CPU stand-in for nvdiffrast.torch -------------------------------------------------------


class FakeDr:
    """The subset of ``nvdiffrast.torch`` the backend calls, on the CPU (see module docstring)."""

    class RasterizeCudaContext:
        def __init__(self, device: Any = None) -> None:
            self.device = device

    TILE = 8

    @staticmethod
    def rasterize(
        ctx: Any, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int], **_: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert pos.dtype == torch.float32 and pos.ndim == 3 and pos.shape[2] == 4
        assert tri.dtype == torch.int32 and pos.is_contiguous() and tri.is_contiguous()
        h, w = resolution
        t = tri.long()
        out = torch.zeros((pos.shape[0], h, w, 4), dtype=torch.float32)
        for b in range(pos.shape[0]):
            p = pos[b].double()
            assert (p[:, 3] > 0).all(), "the fake does not clip"
            verts = p[t]  # (F, 3, 4)
            # face bounding boxes in pixel units (column, row from the bottom), for culling
            px = (verts[..., 0] / verts[..., 3] + 1) * w / 2 - 0.5
            py = (verts[..., 1] / verts[..., 3] + 1) * h / 2 - 0.5
            lo_x, hi_x = px.min(1).values, px.max(1).values
            lo_y, hi_y = py.min(1).values, py.max(1).values
            for ty in range(0, h, FakeDr.TILE):
                for tx in range(0, w, FakeDr.TILE):
                    ty1, tx1 = min(ty + FakeDr.TILE, h), min(tx + FakeDr.TILE, w)
                    near = (hi_x >= tx - 1) & (lo_x <= tx1) & (hi_y >= ty - 1) & (lo_y <= ty1)
                    faces = torch.nonzero(near).squeeze(1)
                    if faces.numel() == 0:
                        continue
                    out[b, ty:ty1, tx:tx1] = FakeDr._tile(
                        verts[faces], faces, tx, tx1, ty, ty1, w, h
                    )
        return out, torch.zeros((pos.shape[0], h, w, 0))

    @staticmethod
    def _tile(
        verts: torch.Tensor,
        faces: torch.Tensor,
        tx: int,
        tx1: int,
        ty: int,
        ty1: int,
        w: int,
        h: int,
    ) -> torch.Tensor:
        """rasterize.cu's per-pixel arithmetic for pixels [ty, ty1) x [tx, tx1) and ``faces``."""
        fx = (2.0 / w) * torch.arange(tx, tx1, dtype=torch.float64) + (1.0 / w - 1.0)
        fy = (2.0 / h) * torch.arange(ty, ty1, dtype=torch.float64) + (1.0 / h - 1.0)
        gy, gx = torch.meshgrid(fy, fx, indexing="ij")
        gx, gy = gx.reshape(-1, 1), gy.reshape(-1, 1)  # row 0 = NDC y -1 (the bottom)
        v0, v1, v2 = verts[:, 0], verts[:, 1], verts[:, 2]  # (G, 4)
        p0x, p0y = v0[:, 0] - gx * v0[:, 3], v0[:, 1] - gy * v0[:, 3]  # (N, G)
        p1x, p1y = v1[:, 0] - gx * v1[:, 3], v1[:, 1] - gy * v1[:, 3]
        p2x, p2y = v2[:, 0] - gx * v2[:, 3], v2[:, 1] - gy * v2[:, 3]
        a0 = p1x * p2y - p1y * p2x
        a1 = p2x * p0y - p2y * p0x
        a2 = p0x * p1y - p0y * p1x
        total = a0 + a1 + a2
        pos_side = (a0 >= 0) & (a1 >= 0) & (a2 >= 0)
        neg_side = (a0 <= 0) & (a1 <= 0) & (a2 <= 0)
        inside = (pos_side | neg_side) & (total != 0)
        zw = (v0[:, 2] * a0 + v1[:, 2] * a1 + v2[:, 2] * a2) / (
            v0[:, 3] * a0 + v1[:, 3] * a1 + v2[:, 3] * a2
        )
        inside &= (zw >= -1) & (zw <= 1)
        zw = torch.where(inside, zw, torch.full_like(zw, math.inf))
        best = zw.min(dim=1, keepdim=True).values
        hit = torch.isfinite(best[:, 0])
        n = zw.shape[1]
        # exact depth ties: the lowest triangle id (faces are in increasing order)
        k = torch.where((zw == best) & inside, torch.arange(n), n).min(dim=1).values
        k_safe = k.clamp_max(n - 1)[:, None]
        tot = total.gather(1, k_safe)[:, 0]
        b0 = (a0.gather(1, k_safe)[:, 0] / tot).clamp(0, 1)
        b1 = (a1.gather(1, k_safe)[:, 0] / tot).clamp(0, 1)
        res = torch.stack([b0, b1, best[:, 0], (faces[k_safe[:, 0]] + 1).double()], dim=1)
        res = torch.where(hit[:, None], res, torch.zeros_like(res)).float()
        return res.reshape(ty1 - ty, tx1 - tx, 4)

    @staticmethod
    def interpolate(
        attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, **_: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert attr.dtype == torch.float32 and attr.is_contiguous()
        a = attr if attr.ndim == 3 else attr[None]
        a = a.expand(rast.shape[0], -1, -1)
        tid = rast[..., 3].long() - 1
        corners = tri.long()[tid.clamp_min(0)]  # (B, H, W, 3)
        b0, b1 = rast[..., 0:1], rast[..., 1:2]
        out = torch.zeros((*rast.shape[:3], a.shape[2]), dtype=torch.float32)
        for b in range(rast.shape[0]):
            ak = [a[b][corners[b, ..., k]] for k in range(3)]
            out[b] = b0[b] * ak[0] + b1[b] * ak[1] + (1 - b0[b] - b1[b]) * ak[2]
        out = torch.where((tid >= 0)[..., None], out, torch.zeros_like(out))
        return out, torch.zeros((*rast.shape[:3], 0))

    @staticmethod
    def texture(
        tex: torch.Tensor,
        uv: torch.Tensor,
        filter_mode: str = "auto",
        boundary_mode: str = "wrap",
        **_: Any,
    ) -> torch.Tensor:
        assert filter_mode == "linear" and boundary_mode == "wrap"
        assert tex.ndim == 4 and tex.shape[0] == 1 and uv.is_contiguous()
        h, w = tex.shape[1], tex.shape[2]
        u = uv[..., 0] - torch.floor(uv[..., 0])
        v = uv[..., 1] - torch.floor(uv[..., 1])
        x, y = u * w - 0.5, v * h - 0.5
        x0, y0 = torch.floor(x), torch.floor(y)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        ix0, iy0 = x0.long() % w, y0.long() % h
        ix1, iy1 = (ix0 + 1) % w, (iy0 + 1) % h
        t = tex[0]
        top = t[iy0, ix0] * (1 - fx) + t[iy0, ix1] * fx
        bottom = t[iy1, ix0] * (1 - fx) + t[iy1, ix1] * fx
        return top * (1 - fy) + bottom * fy


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[nvb.NvdiffrastBackend]:
    monkeypatch.setattr(nvb, "_load_runtime", lambda settings: (FakeDr, torch.device("cpu")))
    backend = nvb.NvdiffrastBackend(RenderSettings(shading="unlit"))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def real_backend() -> Iterator[nvb.NvdiffrastBackend]:
    if not _cuda_ready():
        pytest.skip("needs CUDA and nvdiffrast")
    backend = nvb.NvdiffrastBackend(RenderSettings(shading="unlit"))
    yield backend
    backend.close()


# --- shared assets and comparisons ---------------------------------------------------------


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(px):
        inner = out.copy()
        inner[1:] &= out[:-1]
        inner[:-1] &= out[1:]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        inner[0] = inner[-1] = False
        inner[:, 0] = inner[:, -1] = False
        out = inner
    return out


def write_glb(path: Path, mesh: trimesh.Trimesh) -> RenderObject:
    path.write_bytes(procedural.glb_bytes(mesh))
    obj, _ = prepare_object(path)
    return obj


def textured_cube(path: Path) -> RenderObject:
    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    mesh = trimesh.Trimesh(box.vertices, box.faces, process=False)
    return write_glb(path, procedural.textured(mesh, procedural.make_texture("checker", 1)))


def textured_sphere(path: Path) -> RenderObject:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    mesh = trimesh.Trimesh(sphere.vertices, sphere.faces, process=False)
    return write_glb(path, procedural.textured(mesh, procedural.make_texture("gradient", 2)))


CAMERAS = [(0.0, 0.0), (35.0, 25.0), (160.0, -30.0), (250.0, 60.0)]


def cameras(size: int | tuple[int, int] = 64, distance: float = 3.5) -> list[Camera]:
    return [camera_from_spherical(az, el, distance, 40.0, size) for az, el in CAMERAS]


def check_view_invariants(view: View) -> None:
    h, w = view.camera.height, view.camera.width
    assert view.rgba.shape == (h, w, 4) and view.rgba.dtype == np.float32
    assert view.depth.dtype == np.float32 and view.normal.dtype == np.float32
    assert set(np.unique(view.rgba[..., 3]).tolist()) <= {0.0, 1.0}  # binary coverage
    mask = view.mask
    assert np.isfinite(view.depth[mask]).all() and (view.depth[mask] > 0).all()
    assert np.isposinf(view.depth[~mask]).all()
    assert (view.rgba[~mask] == 0).all() and (view.normal[~mask] == 0).all()
    assert np.allclose(np.linalg.norm(view.normal[mask], axis=-1), 1.0, atol=1e-5)
    assert (view.rgba >= 0).all() and (view.rgba <= 1).all()


def compare_with_cpu(
    backend: nvb.NvdiffrastBackend, obj: RenderObject, cams: list[Camera]
) -> list[dict[str, float]]:
    """Render ``obj`` with ``backend`` and the cpu backend; per view: mask IoU, max depth error,
    mean normal angle (deg) and the fraction of normals off by > 1 deg on the common mask, mean
    colour error inside the common mask eroded by 2 px."""
    ours = backend.render(obj, cams)
    ref = CpuBackend(RenderSettings(shading="unlit")).render(obj, cams)
    stats = []
    for a, b in zip(ours, ref, strict=True):
        check_view_invariants(a)
        common = a.mask & b.mask
        interior = erode(common, 2)
        cos = np.clip((a.normal[common] * b.normal[common]).sum(-1), -1, 1)
        stats.append(
            {
                "iou": iou(a.mask, b.mask),
                "depth_max": float(np.abs(a.depth[common] - b.depth[common]).max()),
                "normal_deg": float(np.degrees(np.arccos(cos)).mean()),
                "normal_outliers": float((np.degrees(np.arccos(cos)) > 1.0).mean()),
                "colour_mae": float(np.abs(a.rgba[interior] - b.rgba[interior]).mean()),
            }
        )
    return stats


def assert_agrees_with_cpu(stats: list[dict[str, float]], colour_mae: float) -> None:
    for s in stats:
        assert s["iou"] > 0.99, stats
        assert s["depth_max"] < 1e-3, stats
        # identical face normals; only crease / silhouette pixels whose centre sits within
        # nvdiffrast's 1/16 px vertex snapping of an edge may land on the neighbouring face
        assert s["normal_outliers"] < 0.02, stats
        assert s["normal_deg"] < 2.0, stats
        assert s["colour_mae"] < colour_mae, stats


RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def quadrant_quad(path: Path) -> RenderObject:
    """A 2 x 2 square in the plane x = 0 (world) with a quadrant texture: u along world +y,
    v along world +z; the file is written Z up-agnostic through prepare_object (GLB is Y up,
    so the square is built in file coordinates that turn into world x = 0)."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[:32, :32], img[:32, 32:], img[32:, :32], img[32:, 32:] = RED, GREEN, BLUE, YELLOW
    from trimesh.visual.material import PBRMaterial
    from trimesh.visual.texture import TextureVisuals

    # world (x, y, z) = file (x, -z, y) for Y-up files: world y = -file z, world z = file y
    world = np.array([[0.0, -1, -1], [0.0, 1, -1], [0.0, 1, 1], [0.0, -1, 1]])
    file_coords = np.stack([world[:, 0], world[:, 2], -world[:, 1]], axis=1)
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    material = PBRMaterial(baseColorTexture=Image.fromarray(img, "RGB"))
    mesh = trimesh.Trimesh(
        file_coords,
        np.array([[0, 1, 2], [0, 2, 3]]),
        visual=TextureVisuals(uv=uv, material=material),
        process=False,
    )
    return write_glb(path, mesh)


def assert_quadrants(view: View) -> None:
    h, w = view.camera.height, view.camera.width
    r0, r1, c0, c1 = h // 2 - h // 8, h // 2 + h // 8, w // 2 - w // 8, w // 2 + w // 8
    got = {
        "top_left": view.rgba[r0, c0, :3],
        "top_right": view.rgba[r0, c1, :3],
        "bottom_left": view.rgba[r1, c0, :3],
        "bottom_right": view.rgba[r1, c1, :3],
    }
    want = {"top_left": RED, "top_right": GREEN, "bottom_left": BLUE, "bottom_right": YELLOW}
    for k, rgb in want.items():
        np.testing.assert_allclose(got[k], np.array(rgb) / 255, atol=1e-3, err_msg=k)


# --- availability (CPU) ------------------------------------------------------------------------


@pytest.mark.skipif(_cuda_ready(), reason="nvdiffrast and CUDA are usable here")
def test_unavailable_here_is_explained_not_a_crash() -> None:
    reason = unavailable_reason("nvdiffrast")
    assert reason is not None
    assert "nvdiffrast" in reason and ("pip install" in reason or "CUDA" in reason)
    with pytest.raises(BackendUnavailable) as e:
        make_backend("nvdiffrast")
    assert "nvdiffrast" in str(e.value)
    assert "pip install" in str(e.value) or "CUDA" in str(e.value)


def test_missing_package_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvdiffrast", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'instantmesh-pipeline\[gpu\]'"):
        make_backend("nvdiffrast")


def test_package_without_cuda_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pkg = types.ModuleType("nvdiffrast")
    fake_pkg.__version__ = "0.0-test"  # type: ignore[attr-defined]
    fake_torch = types.ModuleType("nvdiffrast.torch")
    fake_pkg.torch = fake_torch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nvdiffrast", fake_pkg)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", fake_torch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="CUDA GPU"):
        make_backend("nvdiffrast")


def test_cpu_device_setting_is_refused() -> None:
    with pytest.raises(BackendUnavailable, match="CUDA GPU only"):
        make_backend("nvdiffrast", RenderSettings(device="cpu"))


def test_context_failure_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(FakeDr):
        class RasterizeCudaContext:
            def __init__(self, device: Any = None) -> None:
                raise RuntimeError("Error building extension 'nvdiffrast_plugin'")

    monkeypatch.setattr(nvb, "_load_runtime", lambda settings: (Broken, torch.device("cpu")))
    with pytest.raises(BackendUnavailable, match="JIT-compiled") as e:
        nvb.NvdiffrastBackend()
    assert "Error building extension" in str(e.value)


# --- pure helpers --------------------------------------------------------------------------------


def test_projection_matches_the_pinhole_model() -> None:
    rng = np.random.default_rng(0)
    for size in [(64, 64), (96, 48), (40, 80)]:
        cam = camera_from_spherical(30.0, 20.0, 4.0, 50.0, size)
        near, far = nvb.depth_range(np.array([[-1.0] * 3, [1.0] * 3]), cam) or (0.0, 0.0)
        pts = rng.uniform(-1, 1, (50, 3))
        clip = np.c_[pts, np.ones(50)] @ (nvb.projection_matrix(cam, near, far) @ cam.w2c).T
        ndc = clip[:, :3] / clip[:, 3:]
        pixels, depth = project(pts, cam)
        w, h = cam.width, cam.height
        # nvdiffrast: column i at NDC x = (i + 0.5) 2 / W - 1, row r (from the bottom) at
        # NDC y = (r + 0.5) 2 / H - 1; our rows count from the top: row_top = H - 1 - r.
        col = (ndc[:, 0] + 1) * w / 2
        row_top = h - (ndc[:, 1] + 1) * h / 2
        np.testing.assert_allclose(np.c_[col, row_top], pixels, atol=1e-9)
        np.testing.assert_allclose(clip[:, 3], depth, atol=1e-12)  # clip w = planar depth
        assert (ndc[:, 2] > -1).all() and (ndc[:, 2] < 1).all()  # inside near / far


def test_depth_range_brackets_the_box_and_handles_cameras_inside() -> None:
    box = np.array([[-1.0] * 3, [1.0] * 3])
    near, far = nvb.depth_range(box, camera_from_spherical(0, 0, 4.0, 30.0, 32)) or (0, 0)
    assert 2.9 < near < 3.0 and 5.0 < far < 5.1
    cam = camera_from_spherical(45, 35.26438968, 4.0, 30.0, 32)  # along the diagonal
    near, far = nvb.depth_range(box, cam) or (0, 0)
    assert near < 4 - math.sqrt(3) and far > 4 + math.sqrt(3)
    near, far = nvb.depth_range(box, camera_from_spherical(0, 0, 0.5, 30.0, 32)) or (0, 0)
    assert 0 < near <= 1e-4 and far > 1.5  # camera inside the box
    behind = np.array([[5.0, -1, -1], [6.0, 1, 1]])  # the camera at x = 4 looks towards -x
    assert nvb.depth_range(behind, camera_from_spherical(0, 0, 4.0, 30.0, 32)) is None


def test_triangle_ids_decode_both_encodings() -> None:
    ids = torch.tensor([0, 1, 2, 16777215, 16777216, 16777217, 40_000_000])
    small = ids.to(torch.float32)
    big = (ids.to(torch.int32) + 0x4A800000).view(torch.float32)  # nvdiffrast's bit-cast
    enc = torch.where(ids <= 16777216, small, big)
    np.testing.assert_array_equal(nvb.decode_triangle_ids(enc).numpy(), (ids - 1).numpy())


def test_batches_group_same_size_cameras_within_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    cams = cameras(32)[:3] + cameras((48, 32))[:2] + cameras(32)[:1]
    assert nvb._batches(cams, 100) == [[0, 1, 2], [3, 4], [5]]
    monkeypatch.setattr(nvb, "PIXEL_BUDGET", 2 * 32 * 32)
    assert nvb._batches(cams, 100) == [[0, 1], [2], [3], [4], [5]]
    monkeypatch.setattr(nvb, "VERTEX_BUDGET", 150)
    assert nvb._batches(cams, 100) == [[0], [1], [2], [3], [4], [5]]


# --- the backend on the fake rasterizer (CPU) ------------------------------------------------


@pytest.mark.parametrize("shape", ["cube", "sphere"])
def test_fake_rasterizer_backend_matches_cpu(
    fake_backend: nvb.NvdiffrastBackend, tmp_path: Path, shape: str
) -> None:
    make: Callable[[Path], RenderObject] = textured_cube if shape == "cube" else textured_sphere
    obj = make(tmp_path / f"{shape}.glb")
    stats = compare_with_cpu(fake_backend, obj, cameras(64))
    # exact edge tests on both sides: masks agree to a pixel or two at most
    for s in stats:
        assert s["iou"] > 0.995, stats
    assert_agrees_with_cpu(stats, colour_mae=2e-3)


def test_fake_rasterizer_analytic_cube_and_orientation(
    fake_backend: nvb.NvdiffrastBackend, tmp_path: Path
) -> None:
    obj = textured_cube(tmp_path / "cube.glb")
    cam = camera_from_spherical(0.0, 0.0, 4.0, 30.0, 65)  # on +x; centre pixel on the axis
    view = fake_backend.render(obj, [cam])[0]
    assert view.depth[32, 32] == pytest.approx(3.0, abs=1e-5)  # face x = 1
    np.testing.assert_allclose(view.normal[32, 32], [1.0, 0.0, 0.0], atol=1e-6)
    quad = quadrant_quad(tmp_path / "quad.glb")
    assert_quadrants(fake_backend.render(quad, [cam])[0])
    # non-square image: the object stays centred and round
    wide = camera_from_spherical(0.0, 0.0, 10.0, 30.0, (96, 48))
    mask = fake_backend.render(obj, [wide])[0].mask
    rows, cols = np.nonzero(mask)
    assert rows.mean() == pytest.approx(23.5, abs=0.01) and cols.mean() == pytest.approx(47.5)
    assert np.ptp(rows) == np.ptp(cols)


def test_fake_rasterizer_batches_and_budgets_do_not_change_pixels(
    fake_backend: nvb.NvdiffrastBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    obj = textured_sphere(tmp_path / "sphere.glb")
    cams = cameras(32) + cameras((40, 24))[:2]
    together = fake_backend.render(obj, cams)
    monkeypatch.setattr(nvb, "PIXEL_BUDGET", 1)
    alone = fake_backend.render(obj, cams)
    assert [v.camera for v in together] == cams
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a.rgba, b.rgba)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.normal, b.normal)


def test_fake_rasterizer_errors_and_empty_inputs(
    fake_backend: nvb.NvdiffrastBackend, tmp_path: Path
) -> None:
    missing = RenderObject(path=tmp_path / "missing.glb", file_to_world=np.eye(4))
    with pytest.raises(RenderError, match=r"missing\.glb"):
        fake_backend.render(missing, cameras(16))
    obj = textured_cube(tmp_path / "cube.glb")
    assert fake_backend.render(obj, []) == []
    # an object entirely behind the camera renders empty
    behind = RenderObject(path=obj.path, file_to_world=np.diag([0.1, 0.1, 0.1, 1.0]))
    cam = Camera.from_c2w(
        np.array([[0, 0, -1, 3.0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]), 30.0, 16
    )
    view = fake_backend.render(behind, [cam])[0]  # looks towards +x, away from the origin
    assert view.coverage == 0.0 and np.isposinf(view.depth).all()
    fake_backend.close()
    with pytest.raises(RenderError, match="closed"):
        fake_backend.render(obj, cameras(16))


# --- the real nvdiffrast (GPU) ---------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("shape", ["cube", "sphere"])
def test_gpu_matches_cpu_backend(
    real_backend: nvb.NvdiffrastBackend, tmp_path: Path, shape: str
) -> None:
    make: Callable[[Path], RenderObject] = textured_cube if shape == "cube" else textured_sphere
    obj = make(tmp_path / f"{shape}.glb")
    for size in (64, 256):
        stats = compare_with_cpu(real_backend, obj, cameras(size))
        # colour: float32 UV interpolation moves bilinear weights slightly; a 2 px erosion
        # keeps silhouette pixels (possibly another face) out of the comparison
        assert_agrees_with_cpu(stats, colour_mae=0.01)


@pytest.mark.gpu
def test_gpu_analytic_depth_normals_and_texture_orientation(
    real_backend: nvb.NvdiffrastBackend, tmp_path: Path
) -> None:
    cam = camera_from_spherical(0.0, 0.0, 4.0, 30.0, 65)
    cube = real_backend.render(textured_cube(tmp_path / "cube.glb"), [cam])[0]
    check_view_invariants(cube)
    assert cube.depth[32, 32] == pytest.approx(3.0, abs=1e-4)
    np.testing.assert_allclose(cube.depth[cube.mask], 3.0, atol=1e-4)  # the whole face x = 1
    np.testing.assert_allclose(cube.normal[32, 32], [1.0, 0.0, 0.0], atol=1e-5)
    sphere = real_backend.render(textured_sphere(tmp_path / "sphere.glb"), [cam])[0]
    # the optical axis meets the icosphere at a vertex (on the unit sphere); the facet normals
    # there lean up to ~5 deg (half a facet) from the radial direction
    assert 3.0 - 1e-4 < sphere.depth[32, 32] < 3.0 + 5e-3
    np.testing.assert_allclose(sphere.normal[32, 32], [1.0, 0.0, 0.0], atol=0.12)
    assert_quadrants(real_backend.render(quadrant_quad(tmp_path / "quad.glb"), [cam])[0])
    wide = camera_from_spherical(0.0, 0.0, 10.0, 30.0, (96, 48))
    rows, cols = np.nonzero(real_backend.render(textured_cube(tmp_path / "c2.glb"), [wide])[0].mask)
    assert rows.mean() == pytest.approx(23.5, abs=0.01) and cols.mean() == pytest.approx(47.5)


@pytest.mark.gpu
def test_gpu_registry_and_errors(real_backend: nvb.NvdiffrastBackend, tmp_path: Path) -> None:
    assert unavailable_reason("nvdiffrast") is None
    backend = make_backend("nvdiffrast", RenderSettings())
    assert isinstance(backend, nvb.NvdiffrastBackend) and backend.name == "nvdiffrast"
    backend.close()
    missing = RenderObject(path=tmp_path / "missing.glb", file_to_world=np.eye(4))
    with pytest.raises(RenderError, match=r"missing\.glb"):
        real_backend.render(missing, cameras(16))
