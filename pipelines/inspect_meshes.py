"""``imesh inspect``: load every manifest object, validate it and record mesh statistics.

The per-item work is ``rendering.mesh_io.mesh_stats`` (plain Python); this module only wires it
into the generic runner. A file that is missing, truncated, not parseable, without triangles or
with non-finite vertices, or whose bytes do not match the manifest's ``sha256``, becomes a
``failed`` status row naming the cause; the other objects go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from filtering.objaverse_cache import sha256_file
from pipelines import storage
from pipelines.configs import NO_HASH
from pipelines.fingerprint import row_mesh_inputs
from pipelines.runner import RunOptions, StageReport, run_stage
from pipelines.schema import read_manifest
from pipelines.stage import ItemContext, Stage
from rendering.mesh_io import check_regular_file, mesh_stats


class ChecksumMismatch(ValueError):
    """The mesh file's sha256 differs from the manifest's."""


@dataclass
class InspectConfig:
    """Validate meshes and record statistics (faces, bounds, texture, connected parts)."""

    manifest: str
    """Object manifest (Parquet URL) with uid, source, mesh_uri, sha256."""
    out: str
    """Job output root (URL); the stage writes `<out>/inspect/{status,results}.parquet`."""
    verify_sha256: bool = True
    """Fail an object whose file does not match the manifest's sha256 (when one is given)."""
    run: RunOptions = field(default_factory=RunOptions, metadata=NO_HASH)
    """Execution settings (workers, shard size, progress)."""
    address: str | None = field(default=None, metadata=NO_HASH)
    """Ray cluster address; default: RAY_ADDRESS if set, else a local embedded Ray."""


RESULT_SCHEMA = pa.schema(
    [
        ("n_faces", pa.int64()),
        ("n_vertices", pa.int64()),
        ("n_geometries", pa.int32()),
        ("bbox_min", pa.list_(pa.float64())),
        ("bbox_max", pa.list_(pa.float64())),
        ("surface_area", pa.float64()),
        ("n_components", pa.int64()),
        ("textures_declared", pa.int32()),
        ("textures_decoded", pa.int32()),
        ("has_texture", pa.bool_()),
        ("file_bytes", pa.int64()),
    ]
)


def inspect_item(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    path, temporary = storage.local_path(row["mesh_uri"])
    try:
        check_regular_file(path)  # a FIFO or /dev/zero would block or never end the hashing
        if ctx.config.verify_sha256 and row.get("sha256"):
            actual = sha256_file(path)
            if actual != row["sha256"]:
                raise ChecksumMismatch(
                    f"{row['mesh_uri']}: sha256 {actual[:12]}... != manifest {row['sha256'][:12]}..."
                )
        return mesh_stats(path)
    finally:
        if temporary:
            path.unlink(missing_ok=True)


INSPECT_STAGE = Stage(
    name="inspect",
    process=inspect_item,
    result_schema=RESULT_SCHEMA,
    input_fingerprint=row_mesh_inputs,  # the file and its textures: replaced -> redone
)


def run_inspect(cfg: InspectConfig, manifest: pa.Table | None = None) -> StageReport:
    """Run the inspection stage (Ray must be initialised: see ``pipelines.ray_session``).
    ``manifest``: the already read ``cfg.manifest`` (read here otherwise)."""
    table = manifest if manifest is not None else read_manifest(cfg.manifest)
    return run_stage(INSPECT_STAGE, cfg, table, cfg.out, cfg.run)
