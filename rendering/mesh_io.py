"""Loading meshes with precise errors, and per-mesh statistics.

``load_mesh(path)`` loads any format trimesh reads (GLB/glTF, OBJ+MTL, PLY, STL, OFF) as one
``trimesh.Trimesh`` in world space (scene-graph transforms applied, geometries concatenated) and
raises ``MeshLoadError`` with the path and the cause for: a missing file, a file that does not
parse, a file with no triangles, and non-finite vertex coordinates.

``mesh_stats(path)`` is the per-object record of the inspection stage: counts, bounds, texture
presence (a base-colour texture image that actually decodes), connected components of the
position-welded mesh, surface area.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import trimesh

WELD_DECIMALS = 6
"""Vertices whose coordinates agree to this many decimals are the same point when welding
(UV/normal seams split vertices in GLB/OBJ files; welding undoes that before counting parts)."""


class MeshLoadError(ValueError):
    """A mesh file that cannot be used; the message names the file and the cause."""


_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_regular_file(path: str | os.PathLike[str]) -> int:
    """The size of ``path`` if it is (a symlink to) a regular file, else ``MeshLoadError``.

    Only regular files are ever read: a FIFO blocks its reader forever, ``/dev/zero`` never
    ends, a directory named ``x.glb`` is not a mesh. Call this before hashing or opening."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MeshLoadError(f"{path}: file not found") from None
    except OSError as e:
        raise MeshLoadError(f"{path}: cannot stat ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "not a file")
        raise MeshLoadError(f"{path}: not a regular file ({kind}; only regular files are read)")
    return st.st_size


def check_mesh_file(path: str | os.PathLike[str]) -> None:
    """Cheap container checks before anything reads the file: it is a regular file (never a
    FIFO, device or directory), is not empty and, for GLB, its header is consistent (magic,
    version, length = file size). ``MeshLoadError``."""
    path = Path(path)
    size = check_regular_file(path)
    if size == 0:
        raise MeshLoadError(f"{path}: empty file")
    if path.suffix.lower() == ".glb":
        _check_glb_header(path, size)


def load_scene(path: str | os.PathLike[str]) -> trimesh.Scene:
    path = Path(path)
    check_mesh_file(path)
    if path.suffix.lower() == ".obj":
        refused = [msg for _, msg in _obj_material_files(path) if msg and "missing" not in msg]
        if refused:
            raise MeshLoadError(f"{path}: {'; '.join(refused)}")
    dense = None
    if path.suffix.lower() in (".glb", ".gltf"):
        from rendering.gltf_checks import checked_gltf

        dense = checked_gltf(path)  # node cycles, index range, Draco and sparse decoding
    try:
        if dense is not None:
            import io

            scene = trimesh.load(
                io.BytesIO(dense),
                file_type="glb",
                force="scene",
                process=False,
                resolver=trimesh.resolvers.FilePathResolver(str(path)),
            )
        else:
            scene = trimesh.load(str(path), force="scene", process=False)
    except Exception as e:  # trimesh raises many exception types for malformed input
        raise MeshLoadError(f"{path}: cannot parse ({type(e).__name__}: {e})") from e
    if not isinstance(scene, trimesh.Scene):
        raise MeshLoadError(f"{path}: loader returned {type(scene).__name__}, not a scene")
    return scene


def _check_glb_header(path: Path, size: int) -> None:
    """A GLB's 12-byte header: magic ``glTF``, version 2, total length = the file size."""
    import struct

    with open(path, "rb") as f:
        header = f.read(12)
    if len(header) < 12:
        raise MeshLoadError(f"{path}: cannot parse (GLB header truncated: {len(header)} bytes)")
    magic, version, length = struct.unpack("<4sII", header)
    if magic != b"glTF":
        raise MeshLoadError(f"{path}: cannot parse (not a GLB: magic {magic!r})")
    if version != 2:
        raise MeshLoadError(f"{path}: cannot parse (GLB version {version}, expected 2)")
    if length != size:
        raise MeshLoadError(
            f"{path}: cannot parse (GLB header says {length} bytes, the file has {size}: "
            "truncated or corrupt)"
        )


class MeshTooLarge(MeshLoadError):
    """A mesh whose declared face count exceeds the configured limit (checked before loading)."""


MAX_GLTF_JSON_BYTES = 128 << 20
"""Largest glTF JSON (a ``.gltf`` file or a GLB's JSON chunk) that is parsed to count faces;
a larger one is refused (``MeshTooLarge``), whatever it starts with."""
MAX_TEXT_MESH_BYTES = 2 << 30
"""Largest text mesh (OBJ, ASCII STL/PLY/OFF) whose faces are counted by streaming it before
loading; a larger one is refused (``MeshTooLarge``) when a face limit is set."""
MAX_MESH_HEADER_BYTES = 1 << 16
"""PLY / OFF headers longer than this are refused as unparsable (real ones are < 1 KiB)."""


def _text_mesh_size(p: Path) -> int:
    size = p.stat().st_size
    if size > MAX_TEXT_MESH_BYTES:
        raise MeshTooLarge(
            f"{p}: {size} bytes of text mesh exceed the {MAX_TEXT_MESH_BYTES} bytes whose faces "
            "are counted before loading (refused)"
        )
    return size


def _glb_json_doc(p: Path) -> Any:
    """The JSON of a GLB, read by its declared chunk length (no fixed prefix: leading
    whitespace of any length is still parsed), capped at ``MAX_GLTF_JSON_BYTES``."""
    import json
    import struct

    with open(p, "rb") as fh:
        head = fh.read(20)
        if len(head) < 20 or head[:4] != b"glTF":
            return None
        json_len, json_type = struct.unpack_from("<II", head, 12)
        if json_type != 0x4E4F534A:
            return None
        if json_len > MAX_GLTF_JSON_BYTES:
            raise MeshTooLarge(
                f"{p}: GLB JSON chunk of {json_len} bytes exceeds {MAX_GLTF_JSON_BYTES} (refused)"
            )
        return json.loads(fh.read(json_len))


def _ply_faces(p: Path) -> int | None:
    with open(p, "rb") as fh:
        head = fh.read(MAX_MESH_HEADER_BYTES)
    if not head.startswith(b"ply"):
        return None
    end = head.find(b"end_header")
    if end < 0:
        raise MeshLoadError(
            f"{p}: cannot parse (PLY header without end_header in its first "
            f"{MAX_MESH_HEADER_BYTES} bytes)"
        )
    for line in head[:end].splitlines():
        tokens = line.split()
        if len(tokens) == 3 and tokens[0] == b"element" and tokens[1] == b"face":
            return int(tokens[2])
    return 0


def _stl_faces(p: Path) -> int:
    import struct

    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(84)
    if len(head) == 84:
        (n,) = struct.unpack_from("<I", head, 80)
        if size == 84 + 50 * n or not head.lstrip().startswith(b"solid"):
            return int(n)  # binary STL: the count field (the loader checks the size)
    _text_mesh_size(p)
    total = 0
    with open(p, "rb") as fh:
        for line in fh:
            if line.lstrip().startswith(b"facet"):
                total += 1
    return total


def _off_faces(p: Path) -> int | None:
    with open(p, "rb") as fh:
        head = fh.read(MAX_MESH_HEADER_BYTES)
    lines = [ln.split(b"#", 1)[0].split() for ln in head.splitlines()]
    tokens = [t for ln in lines for t in ln]
    if not tokens or not tokens[0].endswith(b"OFF"):
        return None
    if len(tokens) < 3:
        raise MeshLoadError(f"{p}: cannot parse (OFF header without vertex/face counts)")
    return int(tokens[2])


def declared_face_count(path: str | os.PathLike[str]) -> int | None:
    """Faces a mesh file declares, read cheaply **before** loading it, for every format our
    loaders read: GLB/glTF from the index accessors' counts in the JSON (parsed whole, capped
    at ``MAX_GLTF_JSON_BYTES``), OBJ by streaming ``f`` lines (each n-gon counts n - 2), PLY
    and OFF from their headers, binary STL from its count field, ASCII STL by streaming
    ``facet`` lines (text formats capped at ``MAX_TEXT_MESH_BYTES``). ``MeshTooLarge`` when a
    cap is exceeded; ``None`` for formats only Blender reads (FBX) or when a file is too
    malformed to count (its loader then reports it)."""
    import json

    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix == ".ply":
            return _ply_faces(p)
        if suffix == ".stl":
            return _stl_faces(p)
        if suffix == ".off":
            return _off_faces(p)
        if suffix in (".glb", ".gltf"):
            if suffix == ".glb":
                doc = _glb_json_doc(p)
                if doc is None:
                    return None
            else:
                size = p.stat().st_size
                if size > MAX_GLTF_JSON_BYTES:
                    raise MeshTooLarge(
                        f"{p}: glTF JSON of {size} bytes exceeds {MAX_GLTF_JSON_BYTES} (refused)"
                    )
                doc = json.loads(p.read_bytes())
            accessors = doc.get("accessors", [])
            total = 0
            for mesh in doc.get("meshes", []):
                for prim in mesh.get("primitives", []):
                    if prim.get("mode", 4) != 4:
                        continue
                    if "indices" in prim:
                        total += int(accessors[prim["indices"]]["count"]) // 3
                    elif "POSITION" in prim.get("attributes", {}):
                        total += int(accessors[prim["attributes"]["POSITION"]]["count"]) // 3
            return total
        if suffix == ".obj":
            _text_mesh_size(p)
            total = 0
            with open(p, "rb") as fh:
                for line in fh:
                    if line.startswith(b"f "):
                        total += max(len(line.split()) - 3, 0)
            return total
    except MeshLoadError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return None


def check_face_limit(path: str | os.PathLike[str], max_faces: int | None) -> None:
    """Raise :class:`MeshTooLarge` when ``path`` declares more than ``max_faces`` triangles."""
    if not max_faces:
        return
    n = declared_face_count(path)
    if n is not None and n > max_faces:
        raise MeshTooLarge(
            f"{path}: {n} faces exceed the limit of {max_faces} (raise it with --max-faces)"
        )


def load_mesh(path: str | os.PathLike[str]) -> trimesh.Trimesh:
    """Load ``path`` as one world-space triangle mesh (see module docstring for errors)."""
    scene = load_scene(path)
    return scene_to_mesh(scene, where=str(path))


def scene_to_mesh(scene: trimesh.Scene, where: str = "mesh") -> trimesh.Trimesh:
    meshes = [g for g in scene.geometry.values() if isinstance(g, trimesh.Trimesh)]
    if not meshes or sum(len(m.faces) for m in meshes) == 0:
        raise MeshLoadError(f"{where}: no triangles")
    try:
        mesh = scene.to_mesh()
    except Exception as e:
        raise MeshLoadError(f"{where}: cannot flatten scene ({type(e).__name__}: {e})") from e
    if len(mesh.faces) == 0:
        raise MeshLoadError(f"{where}: no triangles")
    if not np.isfinite(mesh.vertices).all():
        bad = int((~np.isfinite(mesh.vertices)).any(axis=1).sum())
        raise MeshLoadError(
            f"{where}: {bad} vertex/vertices with non-finite (NaN or infinite) coordinates"
        )
    if not (np.asarray(mesh.area_faces) > 0).any():
        raise MeshLoadError(f"{where}: only degenerate (zero-area) faces")
    return mesh


def base_color_textures(scene: trimesh.Scene) -> tuple[int, int]:
    """(declared, decoded): base-colour texture images referenced by materials and how many of
    them decode as images. Vertex colours and flat colour factors are not textures."""
    declared = decoded = 0
    for geom in scene.geometry.values():
        visual = getattr(geom, "visual", None)
        material = getattr(visual, "material", None)
        if material is None:
            continue
        image = getattr(material, "baseColorTexture", None)
        if image is None:
            image = getattr(material, "image", None)
        if image is None:
            continue
        declared += 1
        try:
            image.load()
            if image.size[0] > 0 and image.size[1] > 0:
                decoded += 1
        except Exception:  # a texture that does not decode is counted as declared, not decoded
            continue
    return declared, decoded


def connected_components(mesh: trimesh.Trimesh, decimals: int = WELD_DECIMALS) -> int:
    """Number of connected components after welding vertices that share a position."""
    rounded = np.round(mesh.vertices, decimals)
    _, inverse = np.unique(rounded, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    faces = inverse[mesh.faces]
    used = np.unique(faces)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    n = int(inverse.max()) + 1
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n)
    )
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    return len(np.unique(labels[used]))


def mesh_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Statistics of one mesh file; raises ``MeshLoadError`` for unusable files."""
    scene = load_scene(path)
    mesh = scene_to_mesh(scene, where=str(path))
    declared, decoded = base_color_textures(scene)
    lo, hi = mesh.bounds
    return {
        "n_faces": len(mesh.faces),
        "n_vertices": len(mesh.vertices),
        "n_geometries": len(scene.geometry),
        "bbox_min": [float(x) for x in lo],
        "bbox_max": [float(x) for x in hi],
        "surface_area": float(mesh.area),
        "n_components": connected_components(mesh),
        "textures_declared": declared,
        "textures_decoded": decoded,
        "has_texture": decoded > 0,
        "file_bytes": Path(path).stat().st_size,
    }


def load_world_mesh(path: str | os.PathLike[str]) -> trimesh.Trimesh:
    """Load ``path`` into our Z-up world frame: glTF/OBJ/FBX files (Y up by convention) are
    rotated by ``Y_UP_TO_Z_UP``, PLY/STL/OFF taken as Z up (``rendering.normalize``)."""
    from rendering.normalize import Y_UP_TO_Z_UP, source_up_for

    mesh = load_mesh(path)
    if source_up_for(path) == "y":
        mesh.apply_transform(Y_UP_TO_Z_UP)
    return mesh


def world_mesh_glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    """Binary glTF of a mesh given in our Z-up world frame, stored Y up as glTF requires (so
    :func:`load_world_mesh` and every glTF viewer see it upright)."""
    from rendering.normalize import Y_UP_TO_Z_UP

    out = mesh.copy()
    out.apply_transform(np.linalg.inv(Y_UP_TO_Z_UP))
    data = trimesh.Scene(out).export(file_type="glb")
    assert isinstance(data, bytes)
    return data


_MTL_MAPS = ("map_kd", "map_ka", "map_ks", "map_bump", "bump", "map_d", "norm", "map_pr")

MAX_TEXTURE_PIXELS = 16384 * 16384
"""Largest texture (in pixels) any texture reader accepts; larger ones (or decompression bombs
whose header claims more) are refused with a clear error instead of exhausting memory. The one
place this limit lives: :func:`set_texture_pixel_limit` makes it PIL's limit too."""
MAX_MTL_BYTES = 16 << 20
"""Largest OBJ material file (``mtllib``) that is read; real ones are a few KiB."""


def set_texture_pixel_limit() -> None:
    """Make :data:`MAX_TEXTURE_PIXELS` PIL's ``Image.MAX_IMAGE_PIXELS`` (PIL's default, ~89.5
    Mpx, would refuse a legitimate 10000^2 texture). The guard stays on: PIL warns above the
    limit (turned into a refusal where we check images) and raises ``DecompressionBombError``
    above twice it, in every loader (trimesh's too). Called when this module is imported, and
    by every module that opens textures."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_TEXTURE_PIXELS


set_texture_pixel_limit()


def _image_problem(name: str, data: bytes | None, path: Path | None, max_pixels: int) -> str | None:
    import io
    import warnings

    from PIL import Image

    set_texture_pixel_limit()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else str(path)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    return f"texture {name} is {w}x{h} pixels (limit {max_pixels})"
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"texture {name} refused as a decompression bomb ({e})"
    except Exception as e:  # PIL raises many types for corrupt data
        # PIL names in-memory data by its object repr (an address): say "embedded data".
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "embedded data", str(e))
        return f"texture {name} does not decode ({type(e).__name__}: {detail})"
    return None


def _glb_json(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    import json
    import struct

    if len(data) < 20 or data[:4] != b"glTF":
        return None
    json_len, json_type = struct.unpack_from("<II", data, 12)
    if json_type != 0x4E4F534A:
        return None
    doc = json.loads(data[20 : 20 + json_len])
    rest = data[20 + json_len :]
    binary = b""
    if len(rest) >= 8:
        bin_len = struct.unpack_from("<I", rest, 0)[0]
        binary = rest[8 : 8 + bin_len]
    return doc, binary


def _obj_material_files(obj: Path) -> list[tuple[Path, str | None]]:
    """``(material file, problem or None)`` for each ``mtllib`` of an OBJ (streamed, never read
    whole). A material file must be a regular file inside the OBJ's folder (as texture paths
    must) and at most ``MAX_MTL_BYTES``; otherwise the problem says why and it is not read."""
    out: list[tuple[Path, str | None]] = []
    folder = obj.parent.resolve()
    with open(obj, "rb") as fh:
        for raw in fh:
            if not raw.lstrip().startswith(b"mtllib"):
                continue
            parts = raw.decode("utf-8", errors="replace").strip().split(None, 1)
            if len(parts) != 2 or parts[0] != "mtllib":
                continue
            mtl = obj.parent / parts[1].strip()
            if not mtl.resolve().is_relative_to(folder):
                out.append(
                    (mtl, f"material file {mtl} resolves outside the mesh's folder (refused)")
                )
                continue
            try:
                st = os.stat(mtl)
            except OSError:
                out.append((mtl, f"missing material file {mtl}"))
                continue
            if not stat.S_ISREG(st.st_mode):
                out.append((mtl, f"material file {mtl} is not a regular file (refused)"))
            elif st.st_size > MAX_MTL_BYTES:
                out.append(
                    (mtl, f"material file {mtl} is {st.st_size} bytes (limit {MAX_MTL_BYTES})")
                )
            else:
                out.append((mtl, None))
    return out


def texture_problems(
    path: str | os.PathLike[str], max_pixels: int = MAX_TEXTURE_PIXELS
) -> list[str]:
    """Problems with the texture images a mesh file references: missing files (OBJ ``map_*``
    lines, glTF ``images[].uri``), images that do not decode (also embedded GLB images), and
    images larger than ``max_pixels`` (checked from the header before decoding). Loaders
    silently drop such textures, so a renderer must refuse the object instead of writing
    untextured "training data"."""
    import json
    from urllib.parse import unquote

    p = Path(path)
    suffix = p.suffix.lower()
    problems: list[str] = []

    def check_file(f: Path) -> None:
        try:
            f.resolve().relative_to(p.parent.resolve())
        except ValueError:
            problems.append(f"texture path {f} resolves outside the mesh's folder (refused)")
            return
        if not f.is_file():
            problems.append(f"missing texture file {f}")
        else:
            issue = _image_problem(str(f), None, f, max_pixels)
            if issue:
                problems.append(issue)

    if suffix == ".obj":
        for mtl, problem in _obj_material_files(p):
            if problem is not None:
                problems.append(problem)
                continue
            with open(mtl, "rb") as fh:
                mtl_text = fh.read(MAX_MTL_BYTES).decode("utf-8", errors="replace")
            for mline in mtl_text.splitlines():
                tokens = mline.strip().split()
                if tokens and tokens[0].lower() in _MTL_MAPS and len(tokens) > 1:
                    check_file(mtl.parent / tokens[-1])
    elif suffix in (".gltf", ".glb"):
        try:
            if suffix == ".gltf":
                doc, binary = json.loads(p.read_text()), b""
            else:
                parsed = _glb_json(p.read_bytes())
                if parsed is None:
                    return problems  # not a GLB: the loader reports it
                doc, binary = parsed
        except (OSError, ValueError):
            return problems  # unparsable: the loader reports it with its own message
        views = doc.get("bufferViews", []) or []
        for i, image in enumerate(doc.get("images", []) or []):
            if not isinstance(image, dict):
                continue
            uri = image.get("uri")
            if isinstance(uri, str) and not uri.startswith("data:"):
                check_file(p.parent / unquote(uri))
            elif isinstance(uri, str):  # a data: URI gets the checks of an embedded image
                from rendering.gltf_checks import decode_data_uri

                try:
                    payload = decode_data_uri(uri)
                except ValueError as e:
                    problems.append(f"texture image {i} (data: URI) does not decode ({e})")
                    continue
                issue = _image_problem(f"image {i} (data: URI)", payload, None, max_pixels)
                if issue:
                    problems.append(issue)
            elif "bufferView" in image and binary:
                try:
                    view = views[int(image["bufferView"])]
                    start = int(view.get("byteOffset", 0))
                    data = binary[start : start + int(view["byteLength"])]
                except (IndexError, KeyError, TypeError, ValueError):
                    problems.append(f"embedded image {i} has an invalid bufferView")
                    continue
                issue = _image_problem(f"image {i} (embedded)", data, None, max_pixels)
                if issue:
                    problems.append(issue)
    return problems
