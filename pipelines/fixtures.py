"""``imesh fixtures``: deterministic procedural datasets laid out exactly like the real ones.

One call writes, under ``out`` (a local directory)::

    objaverse/hf-objaverse-v1/...           an Objaverse v1 cache (object paths, metadata shards,
                                            GLBs, LVIS annotations) -> filtering.objaverse_cache
    Cap3D_automated_Objaverse_full.csv      Cap3D captions (no header, quoted)
    gso/<Name>/...                          Google-Scanned-Objects-shaped folders
    omni3d/raw_scans/<cat>/<cat>_NNN/Scan/  OmniObject3D-shaped raw scans
    fixtures.json                           ground truth: every object, its kind and the filter
                                            outcome it is built to have (written last)

The Objaverse-shaped set holds positives and at least one object per filter rejection reason:
``no_texture`` (vertex colours; flat colour factor), ``tiny_in_view`` (a needle), ``multiple_parts``
(four separated cubes), ``no_caption``, ``lowpoly`` (tags lowpoly / low_poly / low-poly /
"low poly" and a "LowPoly" name), plus ``unreadable`` (a truncated GLB) and a positive made of
two interpenetrating boxes (touching parts are one object).

The whole directory is generated in a temporary sibling and renamed into place, so an
interrupted run never leaves a half-written fixture set that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from evaluation.layouts import (
    omni3d_object_id,
    write_gso_object,
    write_omni3d_object,
    write_omni3d_transforms,
)
from filtering.cap3d import write_captions
from filtering.objaverse_cache import CacheObject, sketchfab_annotation, write_cache
from pipelines.configs import ConfigError, to_dict
from rendering import procedural as pg
from rendering.cameras import omni3d_benchmark_cameras

FIXTURES_FILE = "fixtures.json"
CAPTIONS_FILE = "Cap3D_automated_Objaverse_full.csv"
LOWPOLY_TAGS = ("lowpoly", "low_poly", "low-poly", "low poly")


@dataclass
class FixturesConfig:
    """Procedural fixture datasets (Objaverse cache, Cap3D CSV, GSO and Omni3D folders)."""

    out: str
    """Local directory to write the fixture datasets into."""
    seed: int = 0
    """Seed for every shape, texture and uid; the same seed gives byte-identical files."""
    n_positives: int = 16
    """Objaverse-shaped objects that pass every filter criterion."""
    gso_objects: int = 6
    """Objects in the GSO-shaped folder."""
    omni3d_categories: dict[str, int] = field(
        default_factory=lambda: {"toy_train": 6, "apple": 2, "chair": 3}
    )
    """OmniObject3D-shaped categories and how many scans each holds."""
    force: bool = False
    """Regenerate even if a complete fixture set with the same settings exists."""


@dataclass
class FixtureObject:
    uid: str
    kind: str
    expected_reasons: list[str]
    mesh: trimesh.Trimesh | None
    name: str
    tags: list[str]
    caption: str | None
    shard: str
    lvis_category: str | None = None
    glb_transform: str | None = None  # "truncate" for the unreadable fixture

    @property
    def expected_kept(self) -> bool:
        return not self.expected_reasons


def fixture_uid(seed: int, key: str) -> str:
    return hashlib.sha256(f"imesh-fixture:{seed}:{key}".encode()).hexdigest()[:32]


GOOD_SHAPES = tuple(sh for sh in pg.SHAPES if sh != "capsule")
"""Shapes of the objects built to pass the filter. A capsule's seeded proportions reach an
aspect ratio of ~3.4; seen nearly end-on from 3.5 units it covers ~10 % of the image, so it
can land on either side of the ``tiny_in_view`` threshold: not a clean positive."""


def _good(seed: int, i: int) -> trimesh.Trimesh:
    shape = GOOD_SHAPES[i % len(GOOD_SHAPES)]
    pattern = pg.TEXTURE_PATTERNS[i % len(pg.TEXTURE_PATTERNS)]
    return pg.textured(pg.make_shape(shape, seed * 1000 + i), pg.make_texture(pattern, seed + i))


def _caption(i: int, shape: str) -> str:
    # Some captions carry commas and quotes so the CSV must be parsed, not split.
    styles = [
        f"a {shape} with a colourful pattern",
        f'a small, "patterned" {shape}',
        f"3D model of a {shape}, textured",
    ]
    return styles[i % len(styles)]


def objaverse_objects(cfg: FixturesConfig) -> list[FixtureObject]:
    s = cfg.seed
    objs: list[FixtureObject] = []

    def add(
        key: str, kind: str, reasons: list[str], mesh: trimesh.Trimesh | None, **kw: Any
    ) -> None:
        i = len(objs)
        uid = fixture_uid(s, key)
        kw.setdefault("name", key.replace("_", " ").title())
        kw.setdefault("tags", ["fixture", kind])
        kw.setdefault("caption", _caption(i, kind))
        objs.append(FixtureObject(uid, kind, reasons, mesh, shard=f"000-{i % 2:03d}", **kw))

    for i in range(cfg.n_positives):
        shape = GOOD_SHAPES[i % len(GOOD_SHAPES)]
        add(
            f"good_{i:02d}",
            "good",
            [],
            _good(s, i),
            lvis_category=shape,
            caption=_caption(i, shape),
        )
    box = pg.make_shape("box", s)
    touching = pg.combine([box, box], [(0.0, 0.0, 0.0), (0.5 * box.extents[0], 0.0, 0.3)])
    add(
        "touching_parts", "touching_parts", [], pg.textured(touching, pg.make_texture("checker", s))
    )
    add(
        "vertex_colors",
        "no_texture",
        ["no_texture"],
        pg.vertex_colored(pg.make_shape("sphere", s), s),
    )
    add("flat_color", "no_texture", ["no_texture"], pg.flat_colored(pg.make_shape("torus", s), s))
    needle = trimesh.creation.cylinder(radius=0.02, height=2.0, sections=16)
    add(
        "needle",
        "tiny_in_view",
        ["tiny_in_view"],
        pg.textured(needle, pg.make_texture("stripes", s)),
    )
    cube = trimesh.creation.box(extents=(1.2, 1.2, 1.2))
    grid = [(x, y, 0.0) for x in (-0.8, 0.8) for y in (-0.8, 0.8)]
    four = pg.combine([cube] * 4, grid)
    add(
        "separate_parts",
        "multiple_parts",
        ["multiple_parts"],
        pg.textured(four, pg.make_texture("noise", s)),
    )
    add("no_caption", "no_caption", ["no_caption"], _good(s, 101), caption=None)
    for j, tag in enumerate(LOWPOLY_TAGS):
        add(f"lowpoly_{j}", "lowpoly", ["lowpoly"], _good(s, 200 + j), tags=["fixture", tag])
    add("lowpoly_name", "lowpoly", ["lowpoly"], _good(s, 210), name="LowPoly Barrel")
    add("truncated_glb", "unreadable", ["unreadable"], _good(s, 300), glb_transform="truncate")
    return objs


def _glb(obj: FixtureObject) -> bytes:
    assert obj.mesh is not None
    data = pg.glb_bytes(obj.mesh)
    if obj.glb_transform == "truncate":
        return data[: int(len(data) * 0.6)]
    return data


def _write_objaverse(tmp: Path, objs: list[FixtureObject]) -> None:
    cache = [
        CacheObject(
            uid=o.uid,
            glb=_glb(o),
            annotation=sketchfab_annotation(
                o.uid,
                o.name,
                o.tags,
                face_count=len(o.mesh.faces) if o.mesh is not None else 0,
                vertex_count=len(o.mesh.vertices) if o.mesh is not None else 0,
            ),
            shard=o.shard,
            lvis_category=o.lvis_category,
        )
        for o in objs
    ]
    write_cache(tmp / "objaverse", cache)
    write_captions(tmp / CAPTIONS_FILE, {o.uid: o.caption for o in objs if o.caption is not None})


def _write_gso(tmp: Path, cfg: FixturesConfig) -> list[dict[str, Any]]:
    out = []
    for i in range(cfg.gso_objects):
        shape = pg.SHAPES[i % len(pg.SHAPES)]
        name = f"Fixture_{shape.title()}_{i:02d}"
        mesh = pg.make_shape(shape, cfg.seed * 7919 + i)
        texture = pg.make_texture(pg.TEXTURE_PATTERNS[i % 4], cfg.seed + 50 + i, size=128)
        write_gso_object(tmp / "gso", name, pg.textured(mesh, texture), texture, category="Toys")
        out.append({"name": name, "shape": shape})
    return out


def _write_omni3d(tmp: Path, cfg: FixturesConfig) -> list[dict[str, Any]]:
    out = []
    for c, (category, count) in enumerate(sorted(cfg.omni3d_categories.items())):
        for idx in range(1, count + 1):
            shape = pg.SHAPES[(c + idx) % len(pg.SHAPES)]
            mesh = pg.make_shape(shape, cfg.seed * 104729 + c * 100 + idx)
            texture = pg.make_texture(pg.TEXTURE_PATTERNS[idx % 4], cfg.seed + c * 100 + idx)
            write_omni3d_object(tmp / "omni3d", category, idx, pg.textured(mesh, texture), texture)
            if idx == 1:  # the first scan of each category has benchmark-view cameras
                scale = 0.99 / float(np.abs(mesh.vertices).max())
                cams = omni3d_benchmark_cameras(None, seed=cfg.seed, uid=f"{category}{idx}")
                write_omni3d_transforms(tmp / "omni3d", category, idx, cams, scale=scale)
            out.append({"id": omni3d_object_id(category, idx), "category": category})
    return out


def fixtures_complete(out: Path, cfg: FixturesConfig) -> bool:
    marker = out / FIXTURES_FILE
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text()).get("config", {})
    except json.JSONDecodeError:
        return False
    return bool(recorded == _recorded_config(cfg))


def _recorded_config(cfg: FixturesConfig) -> dict[str, Any]:
    """The settings that determine the fixture bytes (not where they are or ``force``)."""
    data = to_dict(cfg)
    data.pop("out")
    data.pop("force")
    return data


def make_fixtures(cfg: FixturesConfig) -> dict[str, Any]:
    """Write the fixture datasets (see module docstring); returns the ground-truth record."""
    if "://" in cfg.out:
        raise ConfigError(f"fixtures are written to a local directory, got the URL {cfg.out!r}")
    out = Path(cfg.out)
    if not cfg.force and fixtures_complete(out, cfg):
        return dict(json.loads((out / FIXTURES_FILE).read_text()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        objs = objaverse_objects(cfg)
        _write_objaverse(tmp, objs)
        gso = _write_gso(tmp, cfg)
        omni = _write_omni3d(tmp, cfg)
        record = {
            "config": _recorded_config(cfg),
            "paths": {
                "objaverse_cache": "objaverse",
                "captions": CAPTIONS_FILE,
                "gso": "gso",
                "omni3d": "omni3d",
            },
            "objaverse": [
                {
                    "uid": o.uid,
                    "kind": o.kind,
                    "name": o.name,
                    "tags": o.tags,
                    "caption": o.caption,
                    "expected_kept": o.expected_kept,
                    "expected_reasons": o.expected_reasons,
                }
                for o in objs
            ],
            "gso": gso,
            "omni3d": omni,
        }
        (tmp / FIXTURES_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def fixture_paths(out: str | Path) -> dict[str, Path]:
    """Absolute paths of the fixture datasets under ``out`` (which must be complete)."""
    out = Path(out)
    marker = out / FIXTURES_FILE
    if not marker.is_file():
        raise FileNotFoundError(f"{out} holds no complete fixture set ({FIXTURES_FILE} missing)")
    rel = json.loads(marker.read_text())["paths"]
    return {k: out / v for k, v in rel.items()}


__all__ = [
    "FixturesConfig",
    "fixture_paths",
    "fixture_uid",
    "make_fixtures",
    "objaverse_objects",
]
