"""The Blender worker: a long-lived process that renders one object per request with bpy.

Run as ``python -m rendering.backends.blender_worker [--device auto|cpu|gpu]``; the client is
:class:`rendering.backends.blender.BlenderBackend`, which documents the protocol. In short:
JSON lines, one request per line on **stdin**, one reply per line on the **original stdout**.
Blender writes its own chatter to file descriptor 1, so :func:`main` first duplicates fd 1 into a
private reply channel and points fd 1 at stderr (the client sends stderr to a log file); nothing
but replies ever reaches the client's pipe.

Per ``render`` request the worker

1. resets the scene (``wm.read_homefile(use_empty=True, use_factory_startup=True)``: ~7 ms, a
   complete fresh scene, preferences kept; ``read_factory_settings`` also reloads preferences and
   add-ons and costs ~37 ms; deleting every data block is faster but leaves scene state behind),
2. imports the file with Blender's own importer for its suffix (``.blend`` is refused: the
   worker never opens Blender files, and Python auto-execution is off),
3. parents every imported root object under an empty whose ``matrix_world`` is the request's
   ``matrix`` (the client composes ``file_to_world`` with the inverse of the importer's axis
   conversion),
4. for ``shading="unlit"`` routes every material's base colour to an emission shader and makes
   the world black; for ``"lit"`` the world is a uniform white environment of strength 1,
5. renders every camera with Cycles and writes Combined / Depth / Normal through the compositor
   File Output node as 32-bit OpenEXR files, loads them back with ``bpy.data.images.load`` and
   saves one ``view_NNN.npy`` per camera: float32 ``(H, W, 8)`` = linear premultiplied RGBA,
   raw depth (background 1e10), raw world-space normal; row 0 = top of the image. The client
   turns these into the :class:`rendering.backends.base.View` conventions.

bpy is imported inside :func:`main` only (never at module import): a process that merely
imports this module does not load Blender.

Orphans: started with ``--parent-pid`` (the client always passes its pid), the worker first asks
Linux to SIGKILL it when its parent dies (:func:`die_with_parent`), before importing bpy. A
worker busy in a long render never reads its stdin, so it would not notice EOF on a dead
client's pipe; without this it kept rendering at full CPU as an orphan.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1
PR_SET_PDEATHSIG = 1
"""``<linux/prctl.h>``: deliver a signal to this process when its parent dies."""
EXIT_PARENT_GONE = 3
"""Exit status of a worker whose parent died before it could arm the death signal."""
IMPORTERS: dict[str, str] = {
    ".glb": "gltf",
    ".gltf": "gltf",
    ".obj": "obj",
    ".fbx": "fbx",
    ".ply": "ply",
    ".stl": "stl",
}
"""Suffix -> importer; anything else (``.blend`` above all) is refused."""

BACKGROUND_DEPTH = 1e10
"""What Cycles writes into the Depth pass where no surface was hit."""

_PASSES = (("rgba", "RGBA", "Image"), ("depth", "FLOAT", "Depth"), ("normal", "VECTOR", "Normal"))
"""(file output item name, socket type, render layer output) for each saved pass."""


class WorkerError(Exception):
    """A request the worker could not serve; replied as ``{"ok": false, "error": ...}``."""


class Worker:
    """Holds bpy and the per-process settings; one instance per worker process."""

    def __init__(self, bpy: Any, device: str) -> None:
        self.bpy = bpy
        self.prefs = bpy.context.preferences
        self._secure_preferences()
        self.device_type, self.device_names = self._configure_device(device)

    # -- process-wide setup ---------------------------------------------------------------

    def _secure_preferences(self) -> None:
        self.prefs.filepaths.use_scripts_auto_execute = False

    def _configure_device(self, device: str) -> tuple[str, list[str]]:
        """Pick the Cycles compute device: ``('CPU', [])`` or ``('OPTIX'|'CUDA', names)``."""
        if device == "cpu":
            return "CPU", []
        cycles_prefs = self.prefs.addons["cycles"].preferences
        for kind in ("OPTIX", "CUDA"):
            try:
                cycles_prefs.compute_device_type = kind
                cycles_prefs.get_devices()
            except (TypeError, RuntimeError, ValueError):
                continue
            gpus = [d for d in cycles_prefs.devices if d.type == kind]
            if gpus:
                for d in cycles_prefs.devices:
                    d.use = d.type == kind
                return kind, [d.name for d in gpus]
        cycles_prefs.compute_device_type = "NONE"
        if device == "gpu":
            raise WorkerError("device='gpu' but Cycles finds no OPTIX or CUDA device")
        return "CPU", []

    def hello(self) -> dict[str, Any]:
        bpy = self.bpy
        return {
            "op": "hello",
            "ok": True,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "blender_version": bpy.app.version_string,
            "auto_exec": bool(self.prefs.filepaths.use_scripts_auto_execute),
            "device": self.device_type,
            "gpus": self.device_names,
            "suffixes": sorted(IMPORTERS),
        }

    # -- one request ----------------------------------------------------------------------

    def render(self, req: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        path = Path(req["path"])
        suffix = path.suffix.lower()
        if suffix == ".blend":
            raise WorkerError(
                f"{path}: refusing to open a .blend file (the worker never loads Blender files)"
            )
        if suffix not in IMPORTERS:
            raise WorkerError(
                f"{path}: unsupported suffix {suffix!r}; expected {sorted(IMPORTERS)}"
            )
        if not path.is_file():
            raise WorkerError(f"{path}: no such file")
        out_dir = Path(req["out_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)

        self._reset()
        t_reset = time.perf_counter()
        roots = self._import(path, IMPORTERS[suffix])
        t_import = time.perf_counter()
        self._place(roots, req["matrix"])
        bound = self._bound_report()
        self._materials(req["shading"])
        scene = self._setup_scene(req)
        file_output = self._setup_compositor(scene, out_dir)
        camera = self._add_camera(scene)
        t_setup = time.perf_counter()

        views = []
        render_s = io_s = 0.0
        for i, cam in enumerate(req["cameras"]):
            ta = time.perf_counter()
            prefix = f"v{i:03d}_"
            file_output.file_name = prefix
            self._set_camera(scene, camera, cam)
            self.bpy.ops.render.render(write_still=False)
            tb = time.perf_counter()
            npy = out_dir / f"view_{i:03d}.npy"
            self._collect(out_dir, prefix, int(cam["width"]), int(cam["height"]), npy)
            views.append(str(npy))
            render_s += tb - ta
            io_s += time.perf_counter() - tb
        return {
            "ok": True,
            "views": views,
            "auto_exec": bool(self.prefs.filepaths.use_scripts_auto_execute),
            "bound": bound,
            "timings": {
                "reset_s": t_reset - t0,
                "import_s": t_import - t_reset,
                "setup_s": t_setup - t_import,
                "render_s": render_s,
                "io_s": io_s,
                "worker_s": time.perf_counter() - t0,
            },
        }

    def bounds(self, req: dict[str, Any]) -> dict[str, Any]:
        """Import ``path`` as Blender does and return the axis-aligned bounds of its mesh
        vertices in Blender's world frame (importer rotation applied): the client normalizes
        formats only Blender can read (FBX) from these."""
        import numpy as np

        path = Path(req["path"])
        suffix = path.suffix.lower()
        if suffix not in IMPORTERS or suffix == ".blend":
            raise WorkerError(f"{path}: unsupported suffix {suffix!r}")
        self._reset()
        self._import(path, IMPORTERS[suffix])
        self.bpy.context.view_layer.update()
        lows, highs = [], []
        for obj in self.bpy.data.objects:
            if obj.type != "MESH" or len(obj.data.vertices) == 0:
                continue
            co = np.empty(len(obj.data.vertices) * 3, dtype=np.float64)
            obj.data.vertices.foreach_get("co", co)
            m = np.array(obj.matrix_world, dtype=np.float64)
            world = co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
            if not np.isfinite(world).all():
                raise WorkerError(f"{path}: non-finite vertex coordinates")
            lows.append(world.min(axis=0))
            highs.append(world.max(axis=0))
        if not lows:
            raise WorkerError(f"{path}: the file imported no mesh with vertices")
        lo, hi = np.min(lows, axis=0), np.max(highs, axis=0)
        return {"ok": True, "bounds": [lo.tolist(), hi.tolist()]}

    def _bound_report(self) -> dict[str, Any]:
        """What Blender will render, for the client to compare with trimesh's view of the file:
        ``bounds`` = world-space box of the *evaluated* faces (skins, shape keys, the current
        animation frame applied; after placement), ``materials`` = per material used by a mesh
        the base-colour images bound (``Image Texture`` nodes upstream of the BSDF's colour):
        name, ``has_data`` (pixels loaded: False renders Blender's magenta), ``size``,
        ``packed``, ``missing`` (an unpacked file that does not exist) and ``uv_map`` (the UV Map
        node's layer; ``""`` = the active render UV map)."""
        import numpy as np

        bpy = self.bpy
        depsgraph = bpy.context.evaluated_depsgraph_get()
        lows, highs = [], []
        used: dict[str, Any] = {}
        for obj in bpy.data.objects:
            if obj.type != "MESH":
                continue
            for slot in obj.material_slots:
                if slot.material is not None:
                    used[slot.material.name] = slot.material
            evaluated = obj.evaluated_get(depsgraph)
            mesh = evaluated.to_mesh()
            try:
                if len(mesh.polygons) == 0:
                    continue
                co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
                mesh.vertices.foreach_get("co", co)
                loops = np.empty(len(mesh.loops), dtype=np.int64)
                mesh.loops.foreach_get("vertex_index", loops)
                points = co.reshape(-1, 3)[np.unique(loops)]
                m = np.array(evaluated.matrix_world, dtype=np.float64)
                world = points @ m[:3, :3].T + m[:3, 3]
            finally:
                evaluated.to_mesh_clear()
            if not np.isfinite(world).all():
                continue  # the client's loader reports non-finite coordinates
            lows.append(world.min(axis=0))
            highs.append(world.max(axis=0))
        bounds = [np.min(lows, axis=0).tolist(), np.max(highs, axis=0).tolist()] if lows else None
        materials = []
        for name, mat in sorted(used.items()):
            images = []
            if mat.node_tree is not None:
                for node in _base_colour_images(mat.node_tree):
                    image = node.image
                    if image is None:
                        images.append({"name": node.name, "has_data": False, "no_image": True})
                        continue
                    size = tuple(image.size)  # loads the pixels; (0, 0) when they do not decode
                    packed = image.packed_file is not None
                    filepath = bpy.path.abspath(image.filepath) if image.filepath else ""
                    images.append(
                        {
                            "name": image.name,
                            "has_data": bool(image.has_data) and size[0] * size[1] > 0,
                            "size": list(size),
                            "packed": packed,
                            "missing": not packed
                            and image.source == "FILE"
                            and not (filepath and os.path.isfile(filepath)),
                            "uv_map": _uv_map_of(node),
                        }
                    )
            materials.append({"name": name, "images": images})
        return {"bounds": bounds, "materials": materials}

    def _reset(self) -> None:
        self.bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
        self._secure_preferences()  # cheap; keeps the invariant even if a reset touched it

    def _import(self, path: Path, importer: str) -> list[Any]:
        bpy = self.bpy
        before = set(bpy.data.objects)
        filepath = str(path)
        try:
            if importer == "gltf":
                result = bpy.ops.import_scene.gltf(filepath=filepath)
            elif importer == "obj":
                result = bpy.ops.wm.obj_import(filepath=filepath)
            elif importer == "fbx":
                result = bpy.ops.import_scene.fbx(filepath=filepath, use_image_search=False)
            elif importer == "ply":
                result = bpy.ops.wm.ply_import(filepath=filepath)
            else:
                result = bpy.ops.wm.stl_import(filepath=filepath)
        except Exception as e:  # importers raise RuntimeError and assorted Python errors
            # Blender appends "Location: .../bpy/ops.py:NNN" (the operator call, not the cause)
            # after the importer's traceback; the cause is the last line before it.
            message = [
                line.strip()
                for line in str(e).strip().splitlines()
                if line.strip() and not line.strip().startswith("Location:")
            ]
            cause = message[-1] if message else type(e).__name__
            raise WorkerError(f"{path}: Blender's {importer} importer failed: {cause}") from e
        if "FINISHED" not in result:
            raise WorkerError(f"{path}: Blender's {importer} importer returned {sorted(result)}")
        new = [o for o in bpy.data.objects if o not in before]
        # The file's own cameras and lights would change the framing-free, uniformly lit setup.
        for obj in [o for o in new if o.type in ("CAMERA", "LIGHT")]:
            new.remove(obj)
            bpy.data.objects.remove(obj, do_unlink=True)
        if not any(o.type == "MESH" and len(o.data.polygons) > 0 for o in new):
            raise WorkerError(f"{path}: the file imported no mesh with faces")
        return [o for o in new if o.parent is None]

    def _place(self, roots: list[Any], matrix: list[list[float]]) -> None:
        bpy = self.bpy
        from mathutils import Matrix  # type: ignore[import-not-found]

        scene = bpy.context.scene
        empty = bpy.data.objects.new("file_to_world", None)
        scene.collection.objects.link(empty)
        empty.matrix_world = Matrix(matrix)
        for obj in roots:
            obj.parent = empty
            obj.matrix_parent_inverse.identity()  # world = empty @ basis (basis holds the
            # importer's own rotation, e.g. the OBJ importer's Y-up -> Z-up object matrix)

    def _materials(self, shading: str) -> None:
        bpy = self.bpy
        default = None
        for obj in bpy.data.objects:
            if obj.type != "MESH":
                continue
            if len(obj.material_slots) == 0 or all(s.material is None for s in obj.material_slots):
                if default is None:
                    default = self._default_material(obj.data)
                if len(obj.material_slots) == 0:
                    obj.data.materials.append(default)
                else:
                    for slot in obj.material_slots:
                        slot.material = default
        if shading == "unlit":
            for mat in bpy.data.materials:
                if mat.node_tree is not None:
                    _to_emission(mat.node_tree)

    def _default_material(self, mesh: Any) -> Any:
        """Blender's default grey (0.8) Principled material; the mesh's active colour attribute
        (PLY vertex colours) as its base colour when it has one."""
        mat = self.bpy.data.materials.new("instantmesh_default")
        nt = mat.node_tree
        principled = next(n for n in nt.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
        principled.inputs["Base Color"].default_value = (0.8, 0.8, 0.8, 1.0)
        attrs = getattr(mesh, "color_attributes", None)
        if attrs is not None and len(attrs) > 0:
            node = nt.nodes.new("ShaderNodeVertexColor")
            active = attrs.active_color or attrs[0]
            node.layer_name = active.name
            nt.links.new(node.outputs["Color"], principled.inputs["Base Color"])
        return mat

    def _setup_scene(self, req: dict[str, Any]) -> Any:
        bpy = self.bpy
        scene = bpy.context.scene
        render = scene.render
        if req.get("engine", "cycles") == "eevee":
            # EEVEE runs headless (EGL + Mesa without a GPU): rasterized, fast, approximate
            # lighting. Same passes and conventions as Cycles.
            render.engine = "BLENDER_EEVEE"
            scene.eevee.taa_render_samples = max(1, int(req["samples"]))
        else:
            render.engine = "CYCLES"
        cycles = scene.cycles
        cycles.device = "CPU" if self.device_type == "CPU" else "GPU"
        cycles.samples = max(1, int(req["samples"]))
        cycles.use_adaptive_sampling = False
        cycles.use_denoising = False
        cycles.seed = 0
        render.film_transparent = True
        render.resolution_percentage = 100
        threads = int(req.get("threads", 0))
        if threads > 0:
            render.threads_mode = "FIXED"
            render.threads = threads
        else:
            render.threads_mode = "AUTO"
        scene.view_settings.view_transform = "Standard"
        scene.view_settings.look = "None"
        scene.view_settings.exposure = 0.0
        scene.view_settings.gamma = 1.0
        layer = scene.view_layers[0]
        layer.use_pass_combined = True
        layer.use_pass_z = True
        layer.use_pass_normal = True

        world = bpy.data.worlds.new("instantmesh_world")
        scene.world = world
        background = next(n for n in world.node_tree.nodes if n.bl_idname == "ShaderNodeBackground")
        if req["shading"] == "unlit":
            background.inputs["Color"].default_value = (0.0, 0.0, 0.0, 1.0)
            background.inputs["Strength"].default_value = 0.0
        else:
            background.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
            background.inputs["Strength"].default_value = 1.0
        return scene

    def _setup_compositor(self, scene: Any, out_dir: Path) -> Any:
        """Blender 5.0 compositor: a node group on ``scene.compositing_node_group``; Render
        Layers -> File Output (one single-layer 32-bit EXR per pass)."""
        bpy = self.bpy
        tree = bpy.data.node_groups.new("instantmesh_compositor", "CompositorNodeTree")
        scene.compositing_node_group = tree
        scene.render.use_compositing = True
        layers = tree.nodes.new("CompositorNodeRLayers")
        layers.scene = scene
        out = tree.nodes.new("CompositorNodeOutputFile")
        out.directory = str(out_dir) + os.sep
        fmt = out.format
        fmt.media_type = "IMAGE"
        fmt.file_format = "OPEN_EXR"
        fmt.color_depth = "32"
        fmt.exr_codec = "NONE"
        for item_name, socket_type, pass_name in _PASSES:
            item = out.file_output_items.new(socket_type, item_name)
            item.save_as_render = False
            tree.links.new(layers.outputs[pass_name], out.inputs[item_name])
        return out

    def _add_camera(self, scene: Any) -> Any:
        bpy = self.bpy
        data = bpy.data.cameras.new("instantmesh_camera")
        data.sensor_fit = "HORIZONTAL"  # angle_x is the horizontal FOV for every aspect ratio
        data.clip_start = 1e-3
        data.clip_end = 1e4
        cam = bpy.data.objects.new("instantmesh_camera", data)
        scene.collection.objects.link(cam)
        scene.camera = cam
        return cam

    def _set_camera(self, scene: Any, cam: Any, spec: dict[str, Any]) -> None:
        from mathutils import Matrix

        scene.render.resolution_x = int(spec["width"])
        scene.render.resolution_y = int(spec["height"])
        cam.data.angle_x = math.radians(float(spec["fov_deg"]))
        cam.matrix_world = Matrix(spec["c2w"])

    def _collect(self, out_dir: Path, prefix: str, width: int, height: int, npy: Path) -> None:
        """Load the view's EXR files, stack them into ``(H, W, 8)`` float32 top-down, save
        ``npy`` and delete the EXRs."""
        import numpy as np

        bpy = self.bpy
        arrays = {}
        for item_name, _, _ in _PASSES:
            exr = out_dir / f"{prefix}{item_name}.exr"
            if not exr.is_file():
                found = sorted(p.name for p in out_dir.glob(f"{prefix}{item_name}*"))
                if len(found) != 1:
                    raise WorkerError(f"compositor wrote no {exr.name} (found {found})")
                exr = out_dir / found[0]
            image = bpy.data.images.load(str(exr), check_existing=False)
            try:
                w, h = image.size
                if (w, h) != (width, height):
                    raise WorkerError(f"{exr.name} is {w}x{h}, expected {width}x{height}")
                buf = np.empty(w * h * 4, dtype=np.float32)
                image.pixels.foreach_get(buf)
            finally:
                bpy.data.images.remove(image)
            exr.unlink()
            arrays[item_name] = buf.reshape(h, w, 4)[::-1]
        stacked = np.concatenate(
            [arrays["rgba"], arrays["depth"][..., :1], arrays["normal"][..., :3]], axis=-1
        )
        np.save(npy, np.ascontiguousarray(stacked, dtype=np.float32))


_COLOR_INPUTS = {"ShaderNodeBsdfPrincipled": "Base Color", "ShaderNodeBsdfDiffuse": "Color"}


def _base_colour_images(tree: Any) -> list[Any]:
    """``Image Texture`` nodes upstream of the colour input of every Principled / Diffuse BSDF
    (through mix, multiply, separate/combine and other nodes), in tree order."""
    seen: set[str] = set()
    found: list[Any] = []
    stack = [
        node.inputs[name]
        for node in tree.nodes
        for kind, name in _COLOR_INPUTS.items()
        if node.bl_idname == kind
    ]
    while stack:
        socket = stack.pop()
        for link in socket.links:
            node = link.from_node
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.bl_idname == "ShaderNodeTexImage":
                found.append(node)
            else:
                stack.extend(i for i in node.inputs if i.is_linked)
    return found


def _uv_map_of(node: Any) -> str:
    """The UV layer an image node samples: a ``UV Map`` node upstream of its Vector input
    (through Mapping nodes), ``""`` (the active render UV map) when none is linked."""
    socket = node.inputs.get("Vector")
    while socket is not None and socket.is_linked:
        source = socket.links[0].from_node
        if source.bl_idname == "ShaderNodeUVMap":
            return str(source.uv_map)
        socket = source.inputs.get("Vector")
    return ""


def _to_emission(tree: Any) -> None:
    """Replace each Principled / Diffuse BSDF by ``mix(transparent, emission(base colour),
    alpha)`` so the rendered pixel is the base colour (texture x factor x vertex colour, as the
    importer wired it); links out of the BSDF are re-pointed at the replacement."""
    for node in list(tree.nodes):
        color_name = _COLOR_INPUTS.get(node.bl_idname)
        if color_name is None:
            continue
        color_in = node.inputs[color_name]
        emission = tree.nodes.new("ShaderNodeEmission")
        emission.inputs["Strength"].default_value = 1.0
        if color_in.is_linked:
            tree.links.new(color_in.links[0].from_socket, emission.inputs["Color"])
        else:
            emission.inputs["Color"].default_value = color_in.default_value
        shader_out = emission.outputs["Emission"]
        alpha_in = node.inputs.get("Alpha")
        if alpha_in is not None and (alpha_in.is_linked or alpha_in.default_value < 1.0):
            mix = tree.nodes.new("ShaderNodeMixShader")
            transparent = tree.nodes.new("ShaderNodeBsdfTransparent")
            if alpha_in.is_linked:
                tree.links.new(alpha_in.links[0].from_socket, mix.inputs["Fac"])
            else:
                mix.inputs["Fac"].default_value = alpha_in.default_value
            tree.links.new(transparent.outputs["BSDF"], mix.inputs[1])
            tree.links.new(shader_out, mix.inputs[2])
            shader_out = mix.outputs["Shader"]
        for link in list(node.outputs[0].links):
            target = link.to_socket
            tree.links.remove(link)
            tree.links.new(shader_out, target)


def _serve(worker: Worker, requests: Any, reply: Any) -> None:
    def send(message: dict[str, Any]) -> None:
        reply.write(json.dumps(message) + "\n")
        reply.flush()

    send(worker.hello())
    for line in requests:
        line = line.strip()
        if not line:
            continue
        req_id = None
        try:
            try:
                req = json.loads(line)
            except json.JSONDecodeError as e:
                raise WorkerError(f"malformed request ({e}): {line[:200]!r}") from None
            if not isinstance(req, dict):
                raise WorkerError(f"a request must be a JSON object, got {line[:200]!r}")
            req_id = req.get("id")
            op = req.get("op")
            if op == "exit":
                send({"op": "bye", "id": req_id, "ok": True})
                return
            if op == "bounds":
                send({"op": "result", "id": req_id, **worker.bounds(req)})
                continue
            if op == "ping":
                send({**worker.hello(), "op": "pong", "id": req_id})
                continue
            if op != "render":
                raise WorkerError(f"unknown op {op!r}")
            result = worker.render(req)
            send({"op": "result", "id": req_id, **result})
        except WorkerError as e:
            send({"op": "result", "id": req_id, "ok": False, "error": str(e)})
        except Exception as e:  # keep serving: one bad object must not end the worker
            traceback.print_exc(file=sys.stderr)
            send(
                {
                    "op": "result",
                    "id": req_id,
                    "ok": False,
                    "error": f"{type(e).__name__}: {e}",
                }
            )


def die_with_parent(parent_pid: int) -> bool:
    """Have the kernel SIGKILL this process as soon as its parent dies, however the parent
    dies (SIGKILL included: no cleanup code of the parent's can be relied on). Returns False
    when the parent is already gone, i.e. ``parent_pid`` is no longer our parent: it died
    between our fork and the ``prctl`` (the signal is only armed for a *future* death), so
    the caller must exit itself. A no-op returning True where ``prctl`` does not exist
    (non-Linux) or refuses.

    Linux ties the death signal to the parent *thread* that forked us, not its process; the
    client forks workers from the main thread or from a thread that lives as long as its
    process (see ``rendering.backends.blender._Spawner``), so in practice it fires when the
    client process dies. ``getppid`` reports the parent's process id either way.
    """
    if not sys.platform.startswith("linux"):
        return True
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return True
    # prctl is variadic and the kernel reads unsigned longs: pass full-width arguments.
    args = (ctypes.c_ulong(int(signal.SIGKILL)), *(ctypes.c_ulong(0) for _ in range(3)))
    if prctl(PR_SET_PDEATHSIG, *args) != 0:
        err = ctypes.get_errno()
        print(
            f"blender_worker: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}", file=sys.stderr
        )
        return True
    return os.getppid() == parent_pid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Persistent Blender render worker (JSON lines).")
    ap.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="die with this process (Linux: PR_SET_PDEATHSIG); exit at once if it is gone",
    )
    args = ap.parse_args(argv)
    if args.parent_pid is not None and not die_with_parent(args.parent_pid):
        print(f"blender_worker: parent {args.parent_pid} is gone; exiting", file=sys.stderr)
        return EXIT_PARENT_GONE

    # The reply channel is a private duplicate of the original stdout; fd 1 (where Blender
    # prints) becomes stderr, so Blender's output can never corrupt the protocol.
    sys.stdout.flush()
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    reply = os.fdopen(reply_fd, "w", encoding="utf-8", buffering=1)
    sys.stdout = sys.stderr

    import bpy  # type: ignore[import-not-found]  # only here: importing the module stays cheap

    try:
        worker = Worker(bpy, args.device)
    except WorkerError as e:
        reply.write(json.dumps({"op": "hello", "ok": False, "error": str(e)}) + "\n")
        reply.flush()
        return 2
    _serve(worker, sys.stdin, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
