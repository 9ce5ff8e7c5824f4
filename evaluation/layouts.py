"""On-disk layouts of the evaluation datasets (writers; the evaluation-set builders read them).

Google Scanned Objects (one folder per object, as unpacked from the official zips)::

    <root>/<Name>/meshes/model.obj          OBJ whose MTL says ``map_Kd texture.png`` ...
    <root>/<Name>/meshes/model.mtl
    <root>/<Name>/materials/textures/texture.png   ... but the texture lives here (the quirk:
                                                  loaders must look beside the OBJ *and* here)
    <root>/<Name>/metadata.pbtxt            protobuf text with name and category annotations

OmniObject3D raw scans::

    <root>/raw_scans/<category>/<category>_<NNN>/Scan/Scan.obj, Scan.mtl, Scan.jpg
"""

from __future__ import annotations

import os
from pathlib import Path

import trimesh
from PIL import Image

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
) -> Path:
    """Write one object in the OmniObject3D raw-scan layout; returns its ``Scan`` folder."""
    scan = Path(root) / "raw_scans" / category / omni3d_object_id(category, index) / "Scan"
    scan.mkdir(parents=True, exist_ok=True)
    (scan / "Scan.obj").write_text(obj_text(mesh, "Scan.mtl"))
    (scan / "Scan.mtl").write_text(mtl_text("Scan.jpg"))
    (scan / "Scan.jpg").write_bytes(jpeg_bytes(texture))
    return scan
