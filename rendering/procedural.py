"""Deterministic procedural meshes and textures (test fixtures and the offline demo).

Every function here is a pure function of its arguments (including an explicit ``seed``): the
same call gives the same vertices, the same texture pixels and the same GLB/OBJ bytes, so
fixtures can be regenerated and diffed.

Shapes are built with ``trimesh.creation``; texture coordinates are a spherical projection of
the vertex positions about the shape's centre (good enough for visibly textured renders).
Textures are small RGB images (checker, stripes, value noise, gradient) coloured from the seed.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import trimesh
from PIL import Image
from trimesh.visual.material import PBRMaterial
from trimesh.visual.texture import TextureVisuals

TEXTURE_PATTERNS = ("checker", "stripes", "noise", "gradient")
SHAPES = ("sphere", "box", "cylinder", "cone", "capsule", "torus", "blob")


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` saturated, distinct-ish RGB colours (uint8)."""
    hues = (rng.random() + np.arange(n) / n) % 1.0
    sat = rng.uniform(0.55, 0.9, n)
    val = rng.uniform(0.6, 0.95, n)
    i = np.floor(hues * 6).astype(int) % 6
    f = hues * 6 - np.floor(hues * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)]
    rgb = np.stack([np.choose(i, [row[c] for row in table]) for c in range(3)], axis=1)
    return (rgb * 255).round().astype(np.uint8)


def make_texture(pattern: str, seed: int, size: int = 64) -> Image.Image:
    """A ``size`` x ``size`` RGB texture with the given pattern, coloured from ``seed``."""
    rng = np.random.default_rng(seed)
    colors = _palette(rng, 4)
    yy, xx = np.mgrid[0:size, 0:size]
    if pattern == "checker":
        cells = int(rng.integers(4, 9))
        idx = ((xx * cells // size) + (yy * cells // size)) % 2
    elif pattern == "stripes":
        period = int(rng.integers(6, 17))
        idx = (xx + yy) // period % 3
    elif pattern == "noise":
        coarse = rng.integers(0, 4, size=(8, 8))
        idx = coarse[yy * 8 // size, xx * 8 // size]
    elif pattern == "gradient":
        a, b = colors[0].astype(float), colors[1].astype(float)
        w = (xx / max(size - 1, 1))[..., None]
        return Image.fromarray((a * (1 - w) + b * w).round().astype(np.uint8), "RGB")
    else:
        raise ValueError(f"unknown texture pattern {pattern!r}; expected one of {TEXTURE_PATTERNS}")
    return Image.fromarray(colors[idx], "RGB")


def _shape_builders(rng: np.random.Generator) -> dict[str, Callable[[], trimesh.Trimesh]]:
    return {
        "sphere": lambda: trimesh.creation.icosphere(subdivisions=3, radius=rng.uniform(0.6, 1.0)),
        "box": lambda: trimesh.creation.box(extents=rng.uniform(0.6, 1.6, 3)),
        "cylinder": lambda: trimesh.creation.cylinder(
            radius=rng.uniform(0.3, 0.6), height=rng.uniform(0.8, 1.6), sections=32
        ),
        "cone": lambda: trimesh.creation.cone(
            radius=rng.uniform(0.4, 0.7), height=rng.uniform(0.8, 1.4), sections=32
        ),
        "capsule": lambda: trimesh.creation.capsule(
            height=rng.uniform(0.6, 1.2), radius=rng.uniform(0.25, 0.45), count=[24, 24]
        ),
        "torus": lambda: trimesh.creation.torus(
            major_radius=rng.uniform(0.6, 0.8),
            minor_radius=rng.uniform(0.2, 0.3),
            major_sections=32,
            minor_sections=16,
        ),
        "blob": lambda: _blob(rng),
    }


def _blob(rng: np.random.Generator) -> trimesh.Trimesh:
    """A sphere with smooth seeded radial bumps (a watertight, non-convex single component)."""
    m = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    v = m.vertices
    k = rng.normal(size=(3, 3))
    bump = 0.15 * np.sin(v @ k).sum(axis=1)
    return trimesh.Trimesh(v * (1.0 + bump)[:, None], m.faces, process=False)


def make_shape(shape: str, seed: int) -> trimesh.Trimesh:
    """Geometry only (no visual) of a named shape with seeded proportions."""
    builders = _shape_builders(np.random.default_rng(seed))
    if shape not in builders:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    mesh = builders[shape]()
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)


def spherical_uv(vertices: np.ndarray) -> np.ndarray:
    """Texture coordinates from a spherical projection about the bounding-box centre."""
    c = vertices - (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    r = np.linalg.norm(c, axis=1) + 1e-12
    u = 0.5 + np.arctan2(c[:, 1], c[:, 0]) / (2 * np.pi)
    v = 0.5 + np.arcsin(np.clip(c[:, 2] / r, -1, 1)) / np.pi
    return np.stack([u, v], axis=1)


def textured(mesh: trimesh.Trimesh, texture: Image.Image) -> trimesh.Trimesh:
    """A copy of ``mesh`` with spherical UVs and a PBR base-colour texture."""
    material = PBRMaterial(baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=0.8)
    visual = TextureVisuals(uv=spherical_uv(mesh.vertices), material=material)
    return trimesh.Trimesh(mesh.vertices.copy(), mesh.faces.copy(), visual=visual, process=False)


def vertex_colored(mesh: trimesh.Trimesh, seed: int) -> trimesh.Trimesh:
    """A copy of ``mesh`` coloured per vertex (no texture map)."""
    rng = np.random.default_rng(seed)
    a, b = _palette(rng, 2).astype(float)
    z = mesh.vertices[:, 2]
    w = ((z - z.min()) / max(np.ptp(z), 1e-9))[:, None]
    rgb = (a * (1 - w) + b * w).round().astype(np.uint8)
    colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(
        mesh.vertices.copy(), mesh.faces.copy(), vertex_colors=colors, process=False
    )


def flat_colored(mesh: trimesh.Trimesh, seed: int) -> trimesh.Trimesh:
    """A copy of ``mesh`` with a single base-colour factor material (no texture map)."""
    rgb = _palette(np.random.default_rng(seed), 1)[0]
    material = PBRMaterial(baseColorFactor=[*rgb.tolist(), 255], metallicFactor=0.0)
    return trimesh.Trimesh(
        mesh.vertices.copy(),
        mesh.faces.copy(),
        visual=TextureVisuals(material=material),
        process=False,
    )


def combine(
    meshes: list[trimesh.Trimesh], offsets: list[tuple[float, float, float]]
) -> trimesh.Trimesh:
    """Concatenate translated copies of ``meshes`` into one mesh (separate connected parts)."""
    parts = []
    for mesh, offset in zip(meshes, offsets, strict=True):
        part = mesh.copy()
        part.apply_translation(offset)
        parts.append(part)
    combined = trimesh.util.concatenate(parts)
    if not isinstance(combined, trimesh.Trimesh):
        raise TypeError(f"concatenation gave {type(combined).__name__}, expected a Trimesh")
    return combined


def glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    """Binary glTF of ``mesh`` (embedded PNG texture if textured)."""
    data = trimesh.Scene(mesh).export(file_type="glb")
    assert isinstance(data, bytes)
    return data


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def obj_text(mesh: trimesh.Trimesh, mtl_name: str, material: str = "material_0") -> str:
    """Wavefront OBJ text with per-vertex UVs (``v``/``vt``/``f v/vt``) referencing ``mtl_name``."""
    uv = getattr(mesh.visual, "uv", None)
    if uv is None:
        raise ValueError("obj_text needs a textured mesh (with UVs)")
    lines = [f"mtllib {mtl_name}", "o object"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv]
    lines.append(f"usemtl {material}")
    lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in mesh.faces]
    return "\n".join(lines) + "\n"


def mtl_text(texture_name: str, material: str = "material_0") -> str:
    """A minimal MTL whose diffuse map is ``texture_name`` (relative to the MTL file)."""
    return (
        f"newmtl {material}\nKa 1.000 1.000 1.000\nKd 1.000 1.000 1.000\n"
        f"Ks 0.000 0.000 0.000\nd 1.0\nillum 1\nmap_Kd {texture_name}\n"
    )
