"""On-disk layouts of the evaluation datasets (writers; the evaluation-set builders read them).

Google Scanned Objects (one folder per object, as unpacked from the official zips)::

    <root>/<Name>/meshes/model.obj          OBJ whose MTL says ``map_Kd texture.png`` ...
    <root>/<Name>/meshes/model.mtl
    <root>/<Name>/materials/textures/texture.png   ... but the texture lives here (the quirk:
                                                  loaders must look beside the OBJ *and* here)
    <root>/<Name>/metadata.pbtxt            protobuf text with name and category annotations

OmniObject3D raw scans and Blender renders (the release's ``OmniObject3D_Data_Root``)::

    <root>/raw_scans/<category>/<category>_<NNN>/Scan/Scan.obj, Scan.mtl, Scan.jpg
    <root>/blender_renders/<category>/<category>_<NNN>/render/transforms.json
    <root>/blender_renders/<category>/<category>_<NNN>/render/images/r_<i>.png

``transforms.json`` is what the official render script (``tools/blender_script.py`` of
github.com/omniobject3d/OmniObject3D) writes: ``camera_angle_x`` (radians) and ``frames`` with
``file_path`` (``r_<i>``), ``rotation``, ``transform_matrix`` (Blender ``camera.matrix_world``,
camera-to-world, OpenGL axes) and ``scale`` (the factor ``0.99 / max |coordinate|`` the scan was
scaled by after Blender's default Y-up OBJ import). There is no ``w``/``h``; the official renders
are 800 x 800.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from rendering.cameras import Camera
from rendering.procedural import jpeg_bytes, mtl_text, obj_text, png_bytes


def write_gso_object(
    root: str | os.PathLike[str],
    name: str,
    mesh: trimesh.Trimesh,
    texture: Image.Image,
    category: str,
) -> Path:
    """Write one object in the GSO layout; returns its folder."""
    folder = Path(root) / name
    (folder / "meshes").mkdir(parents=True, exist_ok=True)
    (folder / "materials" / "textures").mkdir(parents=True, exist_ok=True)
    (folder / "meshes" / "model.obj").write_text(obj_text(mesh, "model.mtl"))
    (folder / "meshes" / "model.mtl").write_text(mtl_text("texture.png"))
    (folder / "materials" / "textures" / "texture.png").write_bytes(png_bytes(texture))
    (folder / "metadata.pbtxt").write_text(
        f'name: "{name}"\nversion: 1\nstatus: APPROVED\n'
        f'annotations {{\n  key: "category"\n  value: "{category}"\n}}\n'
        f'description: "Procedural fixture object {name}"\n'
    )
    return folder


def omni3d_object_id(category: str, index: int) -> str:
    return f"{category}_{index:03d}"


def write_omni3d_object(
    root: str | os.PathLike[str],
    category: str,
    index: int,
    mesh: trimesh.Trimesh,
    texture: Image.Image,
    y_up: bool = True,
) -> Path:
    """Write one object in the OmniObject3D raw-scan layout; returns its ``Scan`` folder.
    ``mesh`` is given in our Z-up frame; with ``y_up`` (default) it is stored Y up like the
    release's scans, (x, y, z) -> (x, z, -y), which ``load_omni3d_mesh`` undoes."""
    scan = Path(root) / "raw_scans" / category / omni3d_object_id(category, index) / "Scan"
    scan.mkdir(parents=True, exist_ok=True)
    if y_up:
        mesh = mesh.copy()
        mesh.vertices = (
            np.asarray(mesh.vertices)
            @ np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]).T
        )
    (scan / "Scan.obj").write_text(obj_text(mesh, "Scan.mtl"))
    (scan / "Scan.mtl").write_text(mtl_text("Scan.jpg"))
    (scan / "Scan.jpg").write_bytes(jpeg_bytes(texture))
    return scan


def omni3d_render_dir(root: str | os.PathLike[str], category: str, index: int) -> Path:
    """``<root>/blender_renders/<category>/<category>_<NNN>/render`` (the release layout)."""
    return Path(root) / "blender_renders" / category / omni3d_object_id(category, index) / "render"


def write_omni3d_transforms(
    root: str | os.PathLike[str],
    category: str,
    index: int,
    cameras: Sequence[Camera],
    scale: float = 1.0,
) -> Path:
    """Write an OmniObject3D ``transforms.json`` for ``cameras`` (shared FOV) in the release
    layout, with the same keys the official render script writes; returns the file path.
    Only the cameras are written (no images)."""
    if not cameras:
        raise ValueError("write_omni3d_transforms needs at least one camera")
    fovs = {round(c.fov_deg, 9) for c in cameras}
    if len(fovs) != 1:
        raise ValueError(f"all cameras must share one FOV, got {sorted(fovs)}")
    data = {
        "camera_angle_x": math.radians(cameras[0].fov_deg),
        "frames": [
            {
                "file_path": f"r_{i}",
                "rotation": 2.0 * math.pi / len(cameras),
                "transform_matrix": [[float(x) for x in row] for row in cam.c2w],
                "scale": float(scale),
            }
            for i, cam in enumerate(cameras)
        ],
    }
    path = omni3d_render_dir(root, category, index) / "transforms.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4))
    return path
