"""Axis conventions of exported meshes, and an optional ICP refinement.

Our frame (DESIGN.md): world **Z up**, the object's front (the side the input image shows)
facing **+X** (azimuth 0), so a viewer at +X looking at the origin has +Y on their right.

``AXIS_CONVENTIONS[name]`` is a 3x3 matrix ``M`` with ``ours = M @ file_coordinates`` for a
mesh as written by that method's public export code and loaded with trimesh (which applies no
axis conversion, also not to glTF/GLB). Each entry is derived as the inverse of the export
transform we read in the method's repository (comments cite the file); ``M`` is orthogonal, so
the inverse is its transpose. When ``det(M) < 0`` the export mirrored the geometry, and
:func:`apply_convention` reverses the face winding so normals point outwards again.

Conventions we could *not* determine from public code are deliberately absent (see the module
notes at ``EXCLUDED_CONVENTIONS``): guessing would make a baseline's Chamfer silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
import trimesh
from scipy.spatial import cKDTree

from evaluation.geometry import sample_surface, validate_mesh

__all__ = [
    "AXIS_CONVENTIONS",
    "EXCLUDED_CONVENTIONS",
    "IcpResult",
    "apply_convention",
    "apply_linear",
    "refine_icp",
]

FloatArray = npt.NDArray[np.float64]


def _rot90(axis: str, quarter_turns: int) -> FloatArray:
    """Right-handed rotation by ``quarter_turns`` x 90 degrees about a coordinate axis (exact;
    same sign convention as ``trimesh.transformations.rotation_matrix``)."""
    c, s = ((1, 0), (0, 1), (-1, 0), (0, -1))[quarter_turns % 4]
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)
    raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")


def _inverse_of_export(export: npt.ArrayLike) -> FloatArray:
    """``export`` maps our frame to file coordinates (column vectors); return its inverse."""
    e = np.asarray(export, dtype=np.float64)
    m = e.T.copy()
    if not np.allclose(m @ e, np.eye(3)):
        raise AssertionError("axis conventions must be orthogonal")
    m.setflags(write=False)
    return m


# InstantMesh (TencentARC/InstantMesh). Its LRM frame *is* our frame: src/utils/camera_util.py
# places cameras at (r cos(el) cos(az), r cos(el) sin(az), r sin(el)) with up_world = +z, and
# the Zero123++ views are relative to the input view at azimuth 0 (+x). Mesh vertices leave
# `extract_mesh` in that frame (FlexiCubes grid, or marching cubes on an 'ij' x/y/z grid).
# Row-vector code `v @ A` with a symmetric A equals `A @ v` for column vectors.
_IM_OBJ = np.diag([1.0, 1.0, -1.0])  # src/utils/mesh_util.py save_obj: z negated, faces [2,1,0]
_IM_GLB = np.diag([-1.0, 1.0, -1.0])  # src/utils/mesh_util.py save_glb
_IM_APP_PERM = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float64)  # app.py [:, [1,2,0]]

# TripoSR (VAST-AI-Research/TripoSR): tsr/utils.py get_spherical_cameras documents "x back,
# y right, z up" (cameras at azimuth 0 on +x, up +z) and render() starts at azimuth 0;
# extract_mesh queries the triplane on an 'ij' x/y/z grid and MarchingCubeHelper swaps
# torchmcubes' z/y/x output back ([..., [2, 1, 0]]), and run.py exports unchanged.
# gradio_app.py applies to_gradio_3d_orientation: Rx(-90 deg) then Ry(+90 deg).
_TRIPOSR_GRADIO = _rot90("y", 1) @ _rot90("x", -1)

# LGM (3DTopia/LGM): core/provider_objaverse.py moves every object so the first input camera
# (the input view) has identity rotation at (0, 0, r) in OpenGL axes (+y up, looking along -z,
# +x to its right) - kiui's orbit_camera has azimuth 0 on +z and +y up. convert.py extracts
# the mesh by marching cubes on an 'ij' x/y/z grid and kiui Mesh.write_glb stores the vertices
# unchanged. Export map ours -> LGM: front +x -> +z, right +y -> +x, up +z -> +y.
_LGM_EXPORT = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float64)

AXIS_CONVENTIONS: MappingProxyType[str, FloatArray] = MappingProxyType(
    {
        "identity": _inverse_of_export(np.eye(3)),
        # This project's own .obj/.glb exports (instantmesh.mesh_export, rendering.mesh_io):
        # our Z-up world stored Y up as glTF requires, (x, y, z) -> (x, z, -y).
        "imesh_y_up": _inverse_of_export(_rot90("x", -1)),
        # run.py / app.py vertex-colour .obj (the default export of run.py).
        "instantmesh": _inverse_of_export(_IM_OBJ),
        # run.py --export_texmap (save_obj_with_mtl writes the vertices unchanged).
        "instantmesh_texmap": _inverse_of_export(np.eye(3)),
        # app.py (Gradio demo): vertices permuted [1, 2, 0] before save_obj / save_glb.
        "instantmesh_app_obj": _inverse_of_export(_IM_OBJ @ _IM_APP_PERM),
        "instantmesh_app_glb": _inverse_of_export(_IM_GLB @ _IM_APP_PERM),
        # run.py output (obj/glb via trimesh, unchanged).
        "triposr": _inverse_of_export(np.eye(3)),
        # gradio_app.py output (to_gradio_3d_orientation).
        "triposr_gradio": _inverse_of_export(_TRIPOSR_GRADIO),
        # convert.py .glb (and the Gaussians' .ply of infer.py: same frame).
        "lgm": _inverse_of_export(_LGM_EXPORT),
    }
)

#: Methods the paper compares with whose export frame public code does not determine.
EXCLUDED_CONVENTIONS: MappingProxyType[str, str] = MappingProxyType(
    {
        "crm": "thu-ml/CRM exports the reconstruction's FlexiCubes vertices unchanged, but that "
        "frame is fixed by the canonical-coordinate-map renders of its (unreleased) training "
        "data; the public code does not say where the input view faces.",
        "sv3d": "Stability-AI/generative-models publishes SV3D's orbit-video sampling only; the "
        "paper's mesh extraction (coarse-to-fine 3D optimisation) code is not public "
        "(issue #316), so no exported mesh frame exists to convert from.",
    }
)


def apply_linear(mesh: trimesh.Trimesh, matrix: npt.ArrayLike) -> trimesh.Trimesh:
    """A new mesh with ``vertices' = A @ v (+ t)`` for a 3x3 ``A`` or a 4x4 affine matrix.

    Face winding is reversed when ``det(A) < 0`` (a mirroring map), so an outward-oriented
    closed mesh stays outward-oriented. Visuals are kept (the face order does not change).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (4, 4):
        linear, offset = m[:3, :3], m[:3, 3]
    elif m.shape == (3, 3):
        linear, offset = m, np.zeros(3)
    else:
        raise ValueError(f"expected a 3x3 or 4x4 matrix, got shape {m.shape}")
    det = float(np.linalg.det(linear))
    if abs(det) < 1e-12:
        raise ValueError("the transform is singular")
    out = mesh.copy()
    out.vertices = np.asarray(mesh.vertices, dtype=np.float64) @ linear.T + offset
    if det < 0:
        out.faces = np.asarray(mesh.faces)[:, ::-1].copy()
    return out


def apply_convention(mesh: trimesh.Trimesh, name: str) -> trimesh.Trimesh:
    """Map a mesh exported by method ``name`` into our frame (a new mesh; input untouched)."""
    if name not in AXIS_CONVENTIONS:
        hint = f" ({EXCLUDED_CONVENTIONS[name]})" if name in EXCLUDED_CONVENTIONS else ""
        raise ValueError(
            f"unknown axis convention {name!r}{hint}; known: {sorted(AXIS_CONVENTIONS)}"
        )
    return apply_linear(mesh, AXIS_CONVENTIONS[name])


@dataclass(frozen=True)
class IcpResult:
    """Outcome of :func:`refine_icp`: ``mesh = transform applied to pred``."""

    transform: FloatArray  # 4x4 rigid transform (rotation + translation)
    mesh: trimesh.Trimesh
    mean_distance: float  # mean pred -> gt nearest-neighbour distance after the last step
    iterations: int
    converged: bool


def _kabsch(src: FloatArray, dst: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Least-squares rotation R (det +1) and translation t with ``dst ~ R @ src + t``."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    h = (src - mu_s).T @ (dst - mu_d)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, mu_d - r @ mu_s


def refine_icp(
    pred: trimesh.Trimesh,
    gt: trimesh.Trimesh,
    *,
    n_points: int = 4000,
    max_iterations: int = 50,
    tolerance: float = 1e-7,
    max_correspondence: float | None = None,
    seed: int = 0,
) -> IcpResult:
    """Rigid point-to-point ICP of ``pred`` onto ``gt`` (off by default in the evaluation).

    Samples ``n_points`` on each surface (seeded, :func:`evaluation.geometry.sample_surface`),
    then repeats: match every pred point to its nearest GT point (pairs farther than
    ``max_correspondence`` are ignored when it is set), solve the best rotation + translation
    (Kabsch/SVD, proper rotation), until the mean matched distance improves by less than
    ``tolerance``. Only a refinement: start from the right axis convention, since ICP finds a
    local optimum. No scaling (meshes are normalised before comparison).
    """
    pv, pf = validate_mesh(pred, "pred")
    gv, gf = validate_mesh(gt, "gt")
    src0 = sample_surface(pv, pf, n_points, np.random.default_rng([seed, 0]))
    dst = sample_surface(gv, gf, n_points, np.random.default_rng([seed, 1]))
    tree = cKDTree(dst)
    rot, trans = np.eye(3), np.zeros(3)

    def matched_error(r: FloatArray, t: FloatArray) -> tuple[float, FloatArray, FloatArray]:
        src = src0 @ r.T + t
        dist, idx = tree.query(src, k=1, workers=-1)
        keep = np.ones(len(src), dtype=bool)
        if max_correspondence is not None:
            keep = dist <= max_correspondence
        err = float(np.mean(dist[keep])) if keep.any() else float("inf")
        return err, src[keep], dst[idx[keep]]

    err, src, matched = matched_error(rot, trans)
    converged = False
    iterations = 0
    while iterations < max_iterations and len(src) >= 3:
        iterations += 1
        r, t = _kabsch(src, matched)
        new_rot, new_trans = r @ rot, r @ trans + t
        new_err, new_src, new_matched = matched_error(new_rot, new_trans)
        if new_err > err:  # cannot happen with exact correspondences; keep the better pose
            converged = True
            break
        improvement = err - new_err
        rot, trans, err, src, matched = new_rot, new_trans, new_err, new_src, new_matched
        if improvement < tolerance:
            converged = True
            break
    transform = np.eye(4)
    transform[:3, :3], transform[:3, 3] = rot, trans
    return IcpResult(transform, apply_linear(pred, transform), err, iterations, converged)
