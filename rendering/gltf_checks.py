"""glTF structure checks and decoding that trimesh's loader lacks, so trimesh and Blender see
the same geometry.

:func:`checked_gltf` reads a ``.glb`` / ``.gltf`` (its JSON and buffers, ``data:`` URIs
included) and raises :class:`~rendering.mesh_io.MeshLoadError` naming the file and the cause for:

- a node graph with a cycle (Blender's importer recurses until ``RecursionError``; trimesh
  silently loads some nodes): ``node cycle: node 0 -> 1 -> 0``;
- triangle indices beyond their primitive's vertex count (trimesh raised a bare
  ``IndexError``): ``mesh 0 primitive 0: index 1000 out of range (8 vertices)``;
- a ``KHR_draco_mesh_compression`` primitive whose data does not decode (or decodes to a
  different count than its accessors declare).

It returns ``None`` when trimesh can load the file as it is, or the bytes of an equivalent
*dense* GLB when the file uses features trimesh ignores: Draco-compressed primitives (trimesh
saw only the empty fallback accessors: "only degenerate faces") are decoded with ``DracoPy``
sparse accessors (trimesh read the base values only, Blender applies the sparse
substitution) are materialized, and ``KHR_materials_pbrSpecularGlossiness`` materials become
metallic-roughness ones with the diffuse texture x factor as base colour, as Blender's importer
does (trimesh's own conversion folded the default white specular into the base colour: the
rasterizers rendered white while inspection reported a texture). Images, materials and nodes are kept; external image files of a
``.gltf`` stay referenced by their URIs (load the bytes with a resolver on the file's folder).

:func:`trimesh_unsupported` lists material features that trimesh (hence the CPU and nvdiffrast
backends, which render from trimesh's materials) silently drops while Blender renders them:
a base-colour texture read from ``TEXCOORD_n`` with n > 0, ``KHR_texture_transform``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

DRACO = "KHR_draco_mesh_compression"
TEXTURE_TRANSFORM = "KHR_texture_transform"
SPEC_GLOSS = "KHR_materials_pbrSpecularGlossiness"

_COMPONENT = {
    5120: np.int8,
    5121: np.uint8,
    5122: np.int16,
    5123: np.uint16,
    5125: np.uint32,
    5126: np.float32,
}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


def _error(path: Path, message: str) -> Exception:
    from rendering.mesh_io import MeshLoadError

    return MeshLoadError(f"{path}: {message}")


def decode_data_uri(uri: str) -> bytes:
    """The payload of a ``data:`` URI (base64 or percent-encoded); ``ValueError`` if malformed."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:"):
        raise ValueError("malformed data: URI (no ',')")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error as e:
            raise ValueError(f"invalid base64 in data: URI ({e})") from None
    return unquote(payload).encode("latin-1")


def read_gltf(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[bytes]]:
    """The JSON document and the bytes of every buffer (``MeshLoadError`` when unreadable)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".glb":
            data = path.read_bytes()
            if len(data) < 20 or data[:4] != b"glTF":
                raise ValueError("not a GLB")
            json_len, json_type = struct.unpack_from("<II", data, 12)
            if json_type != 0x4E4F534A:
                raise ValueError("first chunk is not JSON")
            doc = json.loads(data[20 : 20 + json_len])
            rest = data[20 + json_len :]
            bin_chunk = b""
            if len(rest) >= 8:
                bin_len = struct.unpack_from("<I", rest, 0)[0]
                bin_chunk = rest[8 : 8 + bin_len]
        else:
            doc = json.loads(path.read_text())
            bin_chunk = b""
        if not isinstance(doc, dict):
            raise ValueError("the JSON is not an object")
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise _error(path, f"cannot parse ({type(e).__name__}: {e})") from e
    buffers: list[bytes] = []
    for i, buf in enumerate(doc.get("buffers", []) or []):
        uri = buf.get("uri") if isinstance(buf, dict) else None
        if uri is None:
            buffers.append(bin_chunk if i == 0 else b"")
            continue
        try:
            if uri.startswith("data:"):
                buffers.append(decode_data_uri(uri))
                continue
            target = (path.parent / unquote(uri)).resolve()
            if not target.is_relative_to(path.parent.resolve()):
                raise _error(path, f"buffer {i} path {uri!r} resolves outside the mesh's folder")
            buffers.append(target.read_bytes())
        except (OSError, ValueError) as e:
            raise _error(path, f"cannot read buffer {i} ({e})") from e
    return doc, buffers


def _view_bytes(doc: dict[str, Any], buffers: list[bytes], index: int) -> tuple[bytes, int]:
    view = doc["bufferViews"][index]
    data = buffers[int(view.get("buffer", 0))]
    start = int(view.get("byteOffset", 0))
    length = int(view["byteLength"])
    if start + length > len(data):
        raise ValueError(f"bufferView {index} exceeds its buffer ({start + length} > {len(data)})")
    return data[start : start + length], int(view.get("byteStride", 0))


def accessor_array(doc: dict[str, Any], buffers: list[bytes], index: int) -> np.ndarray:
    """Accessor ``index`` as an ``(count, width)`` array, sparse substitution applied."""
    acc = doc["accessors"][index]
    dtype = np.dtype(_COMPONENT[int(acc["componentType"])])
    width = _WIDTH[acc["type"]]
    count = int(acc["count"])
    if "bufferView" in acc:
        data, stride = _view_bytes(doc, buffers, int(acc["bufferView"]))
        offset = int(acc.get("byteOffset", 0))
        item = dtype.itemsize * width
        stride = stride or item
        if count and offset + stride * (count - 1) + item > len(data):
            raise ValueError(f"accessor {index} exceeds its bufferView")
        if stride == item:
            out = np.frombuffer(data, dtype, count * width, offset).reshape(count, width).copy()
        else:
            rows = np.lib.stride_tricks.as_strided(
                np.frombuffer(data, np.uint8, len(data) - offset, offset),
                shape=(count, item),
                strides=(stride, 1),
            )
            out = np.ascontiguousarray(rows).view(dtype).reshape(count, width).copy()
    else:
        out = np.zeros((count, width), dtype)
    sparse = acc.get("sparse")
    if sparse:
        n = int(sparse["count"])
        ind = sparse["indices"]
        idata, _ = _view_bytes(doc, buffers, int(ind["bufferView"]))
        idx = np.frombuffer(
            idata, np.dtype(_COMPONENT[int(ind["componentType"])]), n, int(ind.get("byteOffset", 0))
        )
        val = sparse["values"]
        vdata, _ = _view_bytes(doc, buffers, int(val["bufferView"]))
        values = np.frombuffer(vdata, dtype, n * width, int(val.get("byteOffset", 0)))
        if n and int(idx.max()) >= count:
            raise ValueError(f"accessor {index}: sparse index {int(idx.max())} >= count {count}")
        out[idx.astype(np.int64)] = values.reshape(n, width)
    return out


def _node_cycle(doc: dict[str, Any]) -> list[int] | None:
    nodes = doc.get("nodes", []) or []
    state = [0] * len(nodes)  # 0 new, 1 on the current path, 2 done
    for root in range(len(nodes)):
        if state[root]:
            continue
        path: list[int] = []
        stack: list[tuple[int, int]] = [(root, 0)]
        while stack:
            node, child_i = stack.pop()
            if child_i == 0:
                state[node] = 1
                path.append(node)
            children = nodes[node].get("children", []) if isinstance(nodes[node], dict) else []
            if child_i < len(children):
                stack.append((node, child_i + 1))
                child = int(children[child_i])
                if not 0 <= child < len(nodes):
                    continue  # a dangling child index: left to the loaders
                if state[child] == 1:
                    return [*path[path.index(child) :], child]
                if state[child] == 0:
                    stack.append((child, 0))
            else:
                state[node] = 2
                path.pop()
    return None


def _decode_draco(
    path: Path, doc: dict[str, Any], buffers: list[bytes], where: str, ext: dict[str, Any]
) -> Any:
    try:
        import DracoPy  # type: ignore[import-untyped]
    except ImportError:
        raise _error(
            path,
            f"{where} is Draco-compressed ({DRACO}) and DracoPy is not installed "
            "(pip install DracoPy)",
        ) from None
    try:
        data, _ = _view_bytes(doc, buffers, int(ext["bufferView"]))
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise _error(path, f"{where}: invalid {DRACO} bufferView ({e})") from e
    try:
        return DracoPy.decode(data)
    except Exception as e:  # DracoPy raises FileTypeException / ValueError for bad data
        raise _error(
            path, f"{where}: {DRACO} data does not decode ({type(e).__name__}: {e})"
        ) from e


def checked_gltf(path: str | os.PathLike[str]) -> bytes | None:
    """Check ``path`` (see the module docstring); ``None`` or the bytes of a dense GLB."""
    path = Path(path)
    doc, buffers = read_gltf(path)
    cycle = _node_cycle(doc)
    if cycle is not None:
        raise _error(path, f"node cycle: node {' -> '.join(str(n) for n in cycle)}")
    accessors = doc.get("accessors", []) or []
    rewrite = any(isinstance(a, dict) and a.get("sparse") for a in accessors)
    decoded: dict[tuple[int, int], Any] = {}
    try:
        for mi, mesh in enumerate(doc.get("meshes", []) or []):
            for pi, prim in enumerate(mesh.get("primitives", []) or []):
                where = f"mesh {mi} primitive {pi}"
                ext = (prim.get("extensions") or {}).get(DRACO)
                if ext is not None:
                    draco = _decode_draco(path, doc, buffers, where, ext)
                    n_points = len(np.asarray(draco.points))
                    faces = np.asarray(draco.faces)
                    if faces.size and (int(faces.max()) >= n_points or int(faces.min()) < 0):
                        raise _error(path, f"{where}: Draco face index out of range")
                    decoded[(mi, pi)] = draco
                    rewrite = True
                    continue
                if prim.get("mode", 4) != 4 or "indices" not in prim:
                    continue
                attrs = prim.get("attributes", {}) or {}
                if "POSITION" not in attrs:
                    continue
                n_vertices = int(accessors[int(attrs["POSITION"])]["count"])
                indices = accessor_array(doc, buffers, int(prim["indices"]))
                if indices.size and int(indices.max()) >= n_vertices:
                    raise _error(
                        path,
                        f"{where}: index {int(indices.max())} out of range ({n_vertices} vertices)",
                    )
    except (KeyError, IndexError, TypeError, ValueError) as e:
        if getattr(e, "args", None) and str(path) in str(e.args[0]):
            raise
        raise _error(path, f"cannot parse ({type(e).__name__}: {e})") from e
    rewrite = rewrite or any(
        SPEC_GLOSS in ((m.get("extensions") or {}) if isinstance(m, dict) else {})
        for m in doc.get("materials", []) or []
    )
    if not rewrite:
        return None
    return _dense_glb(path, doc, buffers, decoded)


def _dense_glb(
    path: Path, doc: dict[str, Any], buffers: list[bytes], decoded: dict[tuple[int, int], Any]
) -> bytes:
    """One GLB: every buffer concatenated, sparse accessors materialized, Draco primitives
    replaced by plain accessors of the decoded data."""
    doc = json.loads(json.dumps(doc))
    blob = bytearray()
    bases = []
    for data in buffers:
        blob += b"\x00" * (-len(blob) % 8)
        bases.append(len(blob))
        blob += data
    for view in doc.get("bufferViews", []) or []:
        view["byteOffset"] = bases[int(view.get("buffer", 0))] + int(view.get("byteOffset", 0))
        view["buffer"] = 0

    def append(arr: np.ndarray, component: int, kind: str, target: int | None) -> int:
        nonlocal blob
        blob += b"\x00" * (-len(blob) % 8)
        view: dict[str, Any] = {"buffer": 0, "byteOffset": len(blob), "byteLength": arr.nbytes}
        if target is not None:
            view["target"] = target
        blob += arr.tobytes()
        doc["bufferViews"].append(view)
        acc: dict[str, Any] = {
            "bufferView": len(doc["bufferViews"]) - 1,
            "componentType": component,
            "count": int(arr.shape[0]),
            "type": kind,
        }
        if kind == "VEC3" and component == 5126 and len(arr):
            acc["min"] = arr.min(axis=0).tolist()
            acc["max"] = arr.max(axis=0).tolist()
        doc["accessors"].append(acc)
        return len(doc["accessors"]) - 1

    doc.setdefault("bufferViews", [])
    doc.setdefault("accessors", [])
    for i, acc in enumerate(list(doc["accessors"])):
        if isinstance(acc, dict) and acc.get("sparse"):
            dense = accessor_array({**doc, "accessors": doc["accessors"]}, [bytes(blob)], i)
            new = append(dense, int(acc["componentType"]), acc["type"], None)
            moved = doc["accessors"].pop(new)
            moved.update({k: acc[k] for k in ("normalized", "min", "max") if k in acc})
            doc["accessors"][i] = moved
    for (mi, pi), draco in decoded.items():
        prim = doc["meshes"][mi]["primitives"][pi]
        ext = prim["extensions"].pop(DRACO)
        if not prim["extensions"]:
            del prim["extensions"]
        faces = np.ascontiguousarray(np.asarray(draco.faces, dtype=np.uint32).reshape(-1, 1))
        prim["indices"] = append(faces, 5125, "SCALAR", 34963)
        attrs = prim.setdefault("attributes", {})
        for name, unique_id in (ext.get("attributes") or {}).items():
            attr = draco.get_attribute_by_unique_id(int(unique_id))
            if attr is None:
                raise _error(path, f"mesh {mi} primitive {pi}: Draco attribute {name} missing")
            values = np.asarray(attr["data"])
            if values.ndim == 1:
                values = values[:, None]
            if name in attrs and isinstance(attrs[name], int):
                declared = doc["accessors"][attrs[name]]
                dtype = np.dtype(_COMPONENT[int(declared["componentType"])])
                kind = declared["type"]
                normalized = bool(declared.get("normalized", False))
            else:
                dtype, kind, normalized = np.dtype(np.float32), f"VEC{values.shape[1]}", False
            if normalized and dtype.kind in "ui" and values.dtype.kind == "f":
                values = np.asarray(np.round(values * float(np.iinfo(dtype.name).max)))
            arr = np.ascontiguousarray(values.astype(dtype))
            comp = next(k for k, v in _COMPONENT.items() if np.dtype(v) == dtype)
            attrs[name] = append(arr, comp, kind, 34962)
            if normalized:
                doc["accessors"][attrs[name]]["normalized"] = True
    for mat in doc.get("materials", []) or []:
        spec = (
            (mat.get("extensions") or {}).pop(SPEC_GLOSS, None) if isinstance(mat, dict) else None
        )
        if spec is None:
            continue
        # What Blender's importer does: the diffuse texture x factor is the base colour.
        pbr = {
            "baseColorFactor": spec.get("diffuseFactor", [1.0, 1.0, 1.0, 1.0]),
            "metallicFactor": 0.0,
            "roughnessFactor": 1.0 - float(spec.get("glossinessFactor", 1.0)),
        }
        if "diffuseTexture" in spec:
            pbr["baseColorTexture"] = spec["diffuseTexture"]
        mat["pbrMetallicRoughness"] = pbr
        if not mat["extensions"]:
            del mat["extensions"]
    for key in ("extensionsUsed", "extensionsRequired"):
        if key in doc:
            doc[key] = [e for e in doc[key] if e not in (DRACO, SPEC_GLOSS)]
            if not doc[key]:
                del doc[key]
    doc["buffers"] = [{"byteLength": len(blob)}]
    js = json.dumps(doc).encode()
    js += b" " * (-len(js) % 4)
    blob += b"\x00" * (-len(blob) % 4)
    body = struct.pack("<II", len(js), 0x4E4F534A) + js
    body += struct.pack("<II", len(blob), 0x004E4942) + bytes(blob)
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


def trimesh_unsupported(path: str | os.PathLike[str]) -> list[str]:
    """Base-colour texture features trimesh's glTF loader drops (the CPU and nvdiffrast
    backends would render the object with the wrong texture coordinates)."""
    path = Path(path)
    if path.suffix.lower() not in (".glb", ".gltf"):
        return []
    try:
        doc, _ = read_gltf(path)
    except ValueError:  # MeshLoadError: the loader reports it
        return []
    problems = []
    for i, mat in enumerate(doc.get("materials", []) or []):
        if not isinstance(mat, dict):
            continue
        refs = [(mat.get("pbrMetallicRoughness") or {}).get("baseColorTexture")]
        spec = (mat.get("extensions") or {}).get("KHR_materials_pbrSpecularGlossiness") or {}
        refs.append(spec.get("diffuseTexture"))
        for ref in refs:
            if not isinstance(ref, dict):
                continue
            transform = (ref.get("extensions") or {}).get(TEXTURE_TRANSFORM)
            tex_coord = int((transform or {}).get("texCoord", ref.get("texCoord", 0)) or 0)
            if tex_coord != 0:
                problems.append(f"material {i}: base-colour texture on TEXCOORD_{tex_coord}")
            if transform is not None:
                problems.append(f"material {i}: base-colour texture uses {TEXTURE_TRANSFORM}")
    return problems
