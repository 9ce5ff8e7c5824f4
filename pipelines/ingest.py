"""``imesh ingest``: an Objaverse cache (+ Cap3D captions) -> object manifest (Parquet)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from filtering.cap3d import read_captions
from filtering.objaverse_cache import default_cache_root, read_cache
from pipelines.configs import write_resolved_config
from pipelines.schema import manifest_from_rows, write_manifest


@dataclass
class IngestConfig:
    """Build the object manifest from a local Objaverse cache."""

    out: str
    """Manifest URL to write (Parquet), e.g. `out/manifests/objaverse.parquet`."""
    cache: str = str(default_cache_root())
    """Objaverse cache root (the folder that holds `hf-objaverse-v1/`)."""
    captions: str | None = None
    """Cap3D captions CSV (`Cap3D_automated_Objaverse_full.csv`); adds a `caption` column."""
    compute_sha256: bool = True
    """Hash every GLB present in the cache (reads every file once)."""


def build_manifest(cfg: IngestConfig) -> pa.Table:
    rows = read_cache(cfg.cache, compute_sha256=cfg.compute_sha256)
    captions = read_captions(cfg.captions) if cfg.captions else None
    for row in rows:
        row["caption"] = captions.get(row["uid"]) if captions is not None else None
    table = manifest_from_rows(rows)
    if "tags" in table.column_names and table.num_rows:
        idx = table.schema.get_field_index("tags")
        table = table.set_column(idx, "tags", table["tags"].cast(pa.list_(pa.string())))
    return table


def run_ingest(cfg: IngestConfig) -> pa.Table:
    table = build_manifest(cfg)
    write_manifest(table, cfg.out)
    write_resolved_config(cfg, cfg.out + ".config.yaml")
    return table


__all__ = ["IngestConfig", "build_manifest", "run_ingest"]
