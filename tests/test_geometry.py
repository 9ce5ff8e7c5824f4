"""Chamfer / F-Score against analytic values, mesh validation, axis conventions and ICP.

Sampling-noise bounds used below. Comparing point samples instead of surfaces only ever makes a
nearest-neighbour distance *larger* (the nearest sample is no closer than the surface), and by
at most the in-surface gap rho to the nearest sample. For N uniform samples on area A the
samples are (close to) a 2D Poisson process of intensity lam = N / A, whose nearest-neighbour
distance has mean 1 / (2 sqrt(lam)) and E[rho^2] = 1 / (pi lam). The tessellated sphere sits
inside the true sphere by at most its sagitta (< 2e-4 for an icosphere with 5 subdivisions).
"""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy import integrate

from evaluation.alignment import (
    AXIS_CONVENTIONS,
    EXCLUDED_CONVENTIONS,
    apply_convention,
    apply_linear,
    refine_icp,
)
from evaluation.geometry import (
    GeometryError,
    bbox_normalization,
    chamfer_fscore,
    cpu_threads,
    geometry_metrics,
    sample_surface,
    threshold_key,
)

N_BIG = 50_000
SAGITTA = 2e-4


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=5, radius=1.0)


def _shifted(mesh: trimesh.Trimesh, offset: tuple[float, float, float]) -> trimesh.Trimesh:
    out = mesh.copy()
    out.apply_translation(offset)
    return out


def _mean_nn_gap(n: int, area: float) -> float:
    return 0.5 / np.sqrt(n / area)


# ----------------------------------------------------------------------------- definitions


def test_mesh_vs_itself_is_sampling_noise_only(sphere: trimesh.Trimesh) -> None:
    """Two independent 16K samplings of the same (normalised) sphere: each directional mean is
    the mean nearest-neighbour gap 1 / (2 sqrt(lam)) (about 0.014); +-5% covers the curvature
    and finite-N deviations from the Poisson model (~10 standard errors)."""
    out = geometry_metrics(sphere, sphere, n_points=16_000)
    _, scale = bbox_normalization(np.asarray(sphere.vertices), np.asarray(sphere.faces))
    expected = _mean_nn_gap(16_000, sphere.area * scale**2)
    assert out["chamfer"] == pytest.approx(expected, rel=0.05)
    assert out["chamfer_pred_to_gt"] == pytest.approx(expected, rel=0.05)
    assert out["fscore@0.2"] == 1.0
    assert out["precision@0.2"] == 1.0 and out["recall@0.2"] == 1.0


@pytest.mark.parametrize("d", [0.1, 0.3])
def test_shifted_unit_sphere_chamfer_is_d_over_2(sphere: trimesh.Trimesh, d: float) -> None:
    """Unit sphere vs the same sphere shifted by d (d <= 1), normalize='none'.

    With c = cos(angle to the shift) uniform on [-1, 1] (Archimedes) the distance from a point
    of one sphere to the other sphere is |r - 1|, r = sqrt(1 + d^2 - 2 d c), and dc = -r dr / d:
    E|r - 1| = 1/(2d) * int_{1-d}^{1+d} |r - 1| r dr = 1/(2d) * ((d^2/2 - d^3/3) + (d^2/2 + d^3/3))
    = d / 2. So the (mean) Chamfer is d/2 and the summed variant is d. An independent numeric
    quadrature of the same integral is checked too.
    """
    quad = 0.5 * integrate.quad(lambda c: abs(np.sqrt(1 + d * d - 2 * d * c) - 1), -1, 1)[0]
    assert quad == pytest.approx(d / 2, abs=1e-9)
    mean = geometry_metrics(_shifted(sphere, (d, 0, 0)), sphere, N_BIG, normalize="none")
    total = geometry_metrics(
        _shifted(sphere, (0, 0, d)), sphere, N_BIG, normalize="none", reduction="sum"
    )
    se = 3 * d / np.sqrt(N_BIG)  # 3 standard errors (std of |r - 1| < d)
    gap = _mean_nn_gap(N_BIG, 4 * np.pi)
    for key in ("chamfer_pred_to_gt", "chamfer_gt_to_pred", "chamfer"):
        assert d / 2 - se - SAGITTA <= mean[key] <= d / 2 + gap + se
    assert d - 2 * (se + SAGITTA) <= total["chamfer"] <= d + 2 * (gap + se)


def test_sphere_vs_cube_matches_independent_integration(sphere: trimesh.Trimesh) -> None:
    """Unit sphere (pred) vs cube [-1, 1]^3 (GT), normalize='none'.

    sphere -> cube: a sphere point lies inside the cube; its distance to the cube's surface is
    1 - max(|x|, |y|, |z|); integrated with a midpoint rule on a 2000 x 4000 grid uniform in
    (cos(theta), phi), which is area-uniform on the sphere.
    cube -> sphere: a point (x, y, 1) on a face is at distance sqrt(x^2 + y^2 + 1) - 1 from the
    sphere; averaged over one face with scipy's dblquad (all faces are alike).
    """
    t = (np.arange(2000) + 0.5) / 2000 * 2 - 1
    phi = (np.arange(4000) + 0.5) / 4000 * 2 * np.pi
    tt, pp = np.meshgrid(t, phi, indexing="ij")
    s = np.sqrt(1 - tt**2)
    coords = np.abs(np.stack([s * np.cos(pp), s * np.sin(pp), tt]))
    sphere_to_cube = float(np.mean(1 - coords.max(axis=0)))
    cube_to_sphere = (
        integrate.dblquad(lambda y, x: np.sqrt(x * x + y * y + 1) - 1, -1, 1, -1, 1)[0] / 4
    )

    cube = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    out = geometry_metrics(sphere, cube, N_BIG, normalize="none")
    se = 3 * 0.15 / np.sqrt(N_BIG)  # distances lie in [0, 0.42]: std < 0.15
    acc, comp = out["chamfer_pred_to_gt"], out["chamfer_gt_to_pred"]
    assert sphere_to_cube - se <= acc <= sphere_to_cube + _mean_nn_gap(N_BIG, 24.0) + SAGITTA + se
    assert (
        cube_to_sphere - se - SAGITTA
        <= comp
        <= cube_to_sphere + _mean_nn_gap(N_BIG, 4 * np.pi) + se
    )
    assert out["chamfer"] == pytest.approx((acc + comp) / 2)


def _fraction_within(d: float, t: float) -> float:
    """Fraction of the unit sphere within distance t of the unit sphere shifted by d:
    |r - 1| < t  <=>  (1 + d^2 - (1 + t)^2) / (2d) < c < (1 + d^2 - (1 - t)^2) / (2d)."""
    lo = max(-1.0, (1 + d * d - (1 + t) ** 2) / (2 * d))
    hi = min(1.0, (1 + d * d - (1 - t) ** 2) / (2 * d))
    return max(0.0, hi - lo) / 2


def test_fscore_on_shifted_sphere_matches_analytic_fractions(sphere: trimesh.Trimesh) -> None:
    """Precision/recall = fraction of each sphere within t of the other. Sample-based distances
    sqrt(h^2 + rho^2) exceed the surface distance h, which shifts the effective threshold down
    by about E[rho^2] / (2t); we allow twice that shift plus 4 binomial standard errors."""
    d, thresholds = 0.15, (0.05, 0.1, 0.2)
    out = geometry_metrics(_shifted(sphere, (0, d, 0)), sphere, N_BIG, thresholds, normalize="none")
    lam = N_BIG / (4 * np.pi)
    for t in thresholds:
        frac = _fraction_within(d, t)
        shift = 2 * (1 / (np.pi * lam)) / (2 * t)
        tol = 4 * np.sqrt(max(frac * (1 - frac), 1e-4) / N_BIG)
        for key in ("precision", "recall"):
            value = out[threshold_key(key, t)]
            assert _fraction_within(d, t - shift) - tol <= value <= frac + tol, (key, t)
        p, r = out[threshold_key("precision", t)], out[threshold_key("recall", t)]
        assert out[threshold_key("fscore", t)] == pytest.approx(2 * p * r / (p + r))
    assert out["fscore@0.2"] == 1.0  # t > d: every point is within t


def _upper_hemisphere(rings: int, segments: int) -> trimesh.Trimesh:
    """Open unit hemisphere z >= 0 (latitude-longitude grid, rim exactly on z = 0)."""
    theta = np.linspace(0.0, np.pi / 2, rings + 1)[1:]  # polar angle of each ring
    phi = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    tt, pp = np.meshgrid(theta, phi, indexing="ij")
    ring_vertices = np.stack([np.sin(tt) * np.cos(pp), np.sin(tt) * np.sin(pp), np.cos(tt)], -1)
    vertices = np.vstack([[0.0, 0.0, 1.0], ring_vertices.reshape(-1, 3)])
    j = np.arange(segments)
    jn = (j + 1) % segments
    faces = [np.stack([np.zeros(segments, int), 1 + j, 1 + jn], 1)]  # cap around the pole
    for i in range(rings - 1):
        a, b = 1 + i * segments + j, 1 + i * segments + jn
        c, d = a + segments, b + segments
        faces += [np.stack([a, c, d], 1), np.stack([a, d, b], 1)]
    return trimesh.Trimesh(vertices=vertices, faces=np.vstack(faces), process=False)


def test_precision_and_recall_are_not_swapped(sphere: trimesh.Trimesh) -> None:
    """Pred = upper hemisphere of the GT sphere. Every pred point lies on the GT: precision 1.
    A GT point at angle a below the equator is at chord 2 sin(a/2) from the hemisphere's rim,
    and the band z in (-sin(a), 0) covers sin(a)/2 of the sphere, so
    recall = 1/2 + sin(a_t)/2 with a_t = 2 arcsin(t/2)."""
    upper = _upper_hemisphere(rings=64, segments=256)
    t = 0.2
    out = geometry_metrics(upper, sphere, N_BIG, (t,), normalize="none")
    expected_recall = 0.5 + np.sin(2 * np.arcsin(t / 2)) / 2
    assert out["precision@0.2"] == 1.0
    tol = 4 * np.sqrt(0.25 / N_BIG) + _mean_nn_gap(N_BIG, 2 * np.pi) / 2
    assert out["recall@0.2"] == pytest.approx(expected_recall, abs=tol)
    assert out["chamfer_pred_to_gt"] < out["chamfer_gt_to_pred"]


def test_far_apart_meshes_have_fscore_zero_not_nan(sphere: trimesh.Trimesh) -> None:
    out = geometry_metrics(_shifted(sphere, (10, 0, 0)), sphere, 2000, normalize="none")
    assert out["fscore@0.2"] == 0.0 and out["precision@0.2"] == 0.0


def test_distance_variants_on_a_known_pair() -> None:
    """Single points: pred (0,0,0), GT (0.3, 0.4, 0): L2 0.5, L1 0.7, squared L2 0.25."""
    p, g = np.zeros((1, 3)), np.array([[0.3, 0.4, 0.0]])
    assert chamfer_fscore(p, g)["chamfer"] == pytest.approx(0.5)
    assert chamfer_fscore(p, g, distance="l1")["chamfer"] == pytest.approx(0.7)
    assert chamfer_fscore(p, g, squared=True)["chamfer"] == pytest.approx(0.25)
    assert chamfer_fscore(p, g, reduction="sum")["chamfer"] == pytest.approx(1.0)
    out = chamfer_fscore(p, g, thresholds=(0.6, 0.45))
    assert out["fscore@0.6"] == 1.0 and out["fscore@0.45"] == 0.0
    assert threshold_key("fscore", 0.2) == "fscore@0.2"
    assert threshold_key("fscore", 0.05) == "fscore@0.05"


# ----------------------------------------------------------------------------- normalisation


def test_separate_normalisation_removes_scale_and_offset(sphere: trimesh.Trimesh) -> None:
    moved = sphere.copy()
    moved.apply_scale(3.7)
    moved.apply_translation((5.0, -2.0, 1.0))
    sep = geometry_metrics(moved, sphere, 16_000)
    same = geometry_metrics(sphere, sphere, 16_000)
    assert sep["chamfer"] == pytest.approx(same["chamfer"], rel=1e-9)
    joint = geometry_metrics(moved, sphere, 16_000, normalize="joint")
    assert joint["chamfer"] > 1.0 and joint["fscore@0.2"] == 0.0


def test_sampler_is_uniform_and_seeded(sphere: trimesh.Trimesh) -> None:
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    a = sample_surface(v, f, 20_000, np.random.default_rng(7))
    b = sample_surface(v, f, 20_000, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    # Area-uniform on a sphere: z is uniform on [-1, 1] (Archimedes): mean 0, variance 1/3.
    assert abs(a[:, 2].mean()) < 4 * np.sqrt(1 / 3 / 20_000)
    assert a[:, 2].var() == pytest.approx(1 / 3, abs=0.01)
    # A 1 x 1 and a 3 x 1 rectangle: 3/4 of the points on the larger one.
    verts = np.array(
        [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [3, 1, 1], [0, 1, 1]],
        float,
    )
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    pts = sample_surface(verts, faces, 40_000, np.random.default_rng(0))
    assert np.mean(pts[:, 2] == 1.0) == pytest.approx(0.75, abs=4 * np.sqrt(0.1875 / 40_000))
    top = pts[pts[:, 2] == 1.0]
    assert top[:, 0].min() >= 0 and top[:, 0].max() <= 3 and top[:, 1].max() <= 1
    assert np.mean(top[:, 0] < 1.5) == pytest.approx(0.5, abs=0.02)


def test_same_seed_same_numbers_other_seed_other_numbers(sphere: trimesh.Trimesh) -> None:
    a = geometry_metrics(sphere, _shifted(sphere, (0.1, 0, 0)), 4000, seed=3)
    b = geometry_metrics(sphere, _shifted(sphere, (0.1, 0, 0)), 4000, seed=3)
    c = geometry_metrics(sphere, _shifted(sphere, (0.1, 0, 0)), 4000, seed=4)
    assert a == b and a["chamfer"] != c["chamfer"]


# ----------------------------------------------------------------------------- bad meshes


def test_bad_meshes_raise_geometry_error_naming_the_mesh(sphere: trimesh.Trimesh) -> None:
    empty = trimesh.Trimesh()
    no_faces = trimesh.Trimesh(vertices=np.eye(3), faces=np.zeros((0, 3), int), process=False)
    flat = trimesh.Trimesh(
        vertices=[[0, 0, 0], [1, 0, 0], [2, 0, 0]], faces=[[0, 1, 2]], process=False
    )
    nan_mesh = sphere.copy()
    nan_vertices = np.asarray(nan_mesh.vertices).copy()
    nan_vertices[5, 1] = np.nan
    nan_mesh = trimesh.Trimesh(vertices=nan_vertices, faces=sphere.faces, process=False)
    cases = [
        (empty, "no vertices"),
        (no_faces, "no faces"),
        (flat, "zero surface area"),
        (nan_mesh, "NaN"),
    ]
    for bad, message in cases:
        with pytest.raises(GeometryError, match=f"pred mesh.*{message}"):
            geometry_metrics(bad, sphere, 100)
        with pytest.raises(GeometryError, match=f"gt mesh.*{message}"):
            geometry_metrics(sphere, bad, 100)
    with pytest.raises(GeometryError, match=r"gt mesh: expected trimesh\.Trimesh"):
        geometry_metrics(sphere, trimesh.Scene(), 100)
    assert issubclass(GeometryError, ValueError)


# ----------------------------------------------------------------------------- conventions


def _asymmetric_mesh() -> trimesh.Trimesh:
    """A closed, outward-oriented mesh with no rotational symmetry: a box plus a bump."""
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.3))
    bump = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    bump.apply_translation((0.35, 0.15, 0.25))
    mesh = trimesh.util.concatenate([box, bump])
    assert mesh.volume > 0
    return mesh


def test_conventions_are_rotations_or_reflections() -> None:
    assert {"identity", "instantmesh", "triposr", "lgm"} <= set(AXIS_CONVENTIONS)
    assert not set(EXCLUDED_CONVENTIONS) & set(AXIS_CONVENTIONS)
    for name, m in AXIS_CONVENTIONS.items():
        np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12, err_msg=name)
        assert set(np.unique(m)) <= {-1.0, 0.0, 1.0}
        assert not m.flags.writeable


def _upstream_exports() -> dict[str, tuple[np.ndarray, bool]]:
    """What each upstream export does to vertices in *our* frame (row vectors), re-typed here
    from the upstream code, with whether it reverses the face order."""
    flip_z = np.diag([1.0, 1.0, -1.0])
    glb = np.diag([-1.0, 1.0, -1.0])
    rx = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])[:3, :3]
    ry = trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0])[:3, :3]
    return {
        # InstantMesh save_obj: v @ diag(1, 1, -1), faces[:, [2, 1, 0]]
        "instantmesh": (flip_z, True),
        "instantmesh_texmap": (np.eye(3), False),
        # app.py: v[:, [1, 2, 0]] first
        "instantmesh_app_obj": (np.eye(3)[:, [1, 2, 0]] @ flip_z, True),
        "instantmesh_app_glb": (np.eye(3)[:, [1, 2, 0]] @ glb, False),
        "triposr": (np.eye(3), False),
        # mesh.apply_transform(Rx(-90)); mesh.apply_transform(Ry(90))
        "triposr_gradio": ((ry @ rx).T, False),
        # LGM: front +x -> +z, right +y -> +x, up +z -> +y
        "lgm": (np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float), False),
    }


@pytest.mark.parametrize("name", sorted(_upstream_exports()))
def test_apply_convention_undoes_the_upstream_export(name: str) -> None:
    ours = _asymmetric_mesh()
    row_matrix, reverses = _upstream_exports()[name]
    faces = np.asarray(ours.faces)
    exported = trimesh.Trimesh(
        vertices=np.asarray(ours.vertices) @ row_matrix,
        faces=faces[:, [2, 1, 0]] if reverses else faces,
        process=False,
    )
    back = apply_convention(exported, name)
    np.testing.assert_allclose(back.vertices, ours.vertices, atol=1e-12)
    # Winding: the recovered closed mesh is outward-oriented again (positive volume).
    assert back.volume == pytest.approx(ours.volume)
    assert exported.vertices is not back.vertices
    np.testing.assert_allclose(exported.vertices, np.asarray(ours.vertices) @ row_matrix)


def test_lgm_and_triposr_axes_land_on_our_front_and_up() -> None:
    m = AXIS_CONVENTIONS["lgm"]
    np.testing.assert_array_equal(m @ [0, 0, 1], [1, 0, 0])  # LGM front (+z) -> our +x
    np.testing.assert_array_equal(m @ [0, 1, 0], [0, 0, 1])  # LGM up (+y) -> our +z
    g = AXIS_CONVENTIONS["triposr_gradio"]
    np.testing.assert_array_equal(g @ [0, 1, 0], [0, 0, 1])  # gradio's Y-up -> our Z-up


def test_unknown_or_excluded_convention_is_explained() -> None:
    mesh = _asymmetric_mesh()
    with pytest.raises(ValueError, match="SV3D"):
        apply_convention(mesh, "sv3d")
    with pytest.raises(ValueError, match="known:"):
        apply_convention(mesh, "nope")
    with pytest.raises(ValueError, match="3x3 or 4x4"):
        apply_linear(mesh, np.eye(2))


# ----------------------------------------------------------------------------- ICP


def test_icp_recovers_a_small_rigid_motion() -> None:
    gt = _asymmetric_mesh()
    motion = trimesh.transformations.rotation_matrix(np.deg2rad(8.0), [1.0, 2.0, 0.5])
    motion[:3, 3] = (0.04, -0.03, 0.02)
    pred = gt.copy()
    pred.apply_transform(motion)
    result = refine_icp(pred, gt, n_points=3000, seed=1)
    assert result.converged
    np.testing.assert_allclose(result.transform @ motion, np.eye(4), atol=0.02)
    np.testing.assert_allclose(result.mesh.vertices, gt.vertices, atol=0.02)
    before = geometry_metrics(pred, gt, 4000, normalize="none")["chamfer"]
    after = geometry_metrics(result.mesh, gt, 4000, normalize="none")["chamfer"]
    assert after < before / 2


@pytest.mark.parametrize(("env", "expected"), [("1", 1), ("3", 3)])
def test_kd_queries_use_the_process_thread_budget(
    monkeypatch: pytest.MonkeyPatch, env: str, expected: int
) -> None:
    # Ray starts a 1-CPU actor with OMP_NUM_THREADS=1: its KD-tree queries must not use every core.
    monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert cpu_threads() == expected


def test_kd_queries_default_to_the_cores_the_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cpu_threads() == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "not-a-number")
    assert cpu_threads() == cores
