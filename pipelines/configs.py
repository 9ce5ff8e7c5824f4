"""Typed job configs: dataclasses loadable from YAML, overridable on the CLI, hashed, recorded.

Conventions shared by every job config:

- A config is a (possibly nested) dataclass. Field docstrings become ``--help`` text.
- ``load_config(cls, path)`` reads YAML into the dataclass and refuses unknown keys, naming them.
- ``config_hash(cfg)`` hashes only fields that change *outputs*. Fields declared with
  ``field(..., metadata=NO_HASH)`` (worker counts, progress display, cluster address) are left
  out, so re-running a job with more workers resumes instead of redoing everything.
- ``write_resolved_config(cfg, url)`` writes the resolved config next to the outputs together
  with provenance (``rendering.provenance``: package version, git commit, Python, torch,
  command line, time).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from pipelines.storage import atomic_write_text
from rendering.provenance import git_commit as git_commit  # re-exported: one implementation
from rendering.provenance import provenance

T = TypeVar("T")

NO_HASH = {"hash": False}
"""Field metadata for settings that do not change outputs (excluded from ``config_hash``)."""


class ConfigError(ValueError):
    """A config file or override that does not fit the job's config dataclass."""


def registry_choices(names: Iterable[str]) -> Any:
    """``typing.Literal`` of a registry's names, for a config field's annotation.

    The registry is the single truth: ``--help`` (tyro), YAML loading (:func:`from_dict`) and
    the tests read the choices from this annotation, so adding a registry entry adds the choice
    everywhere. Static type checkers see ``str``; use it as::

        if TYPE_CHECKING:
            BackendName = str
        else:
            BackendName = registry_choices(BACKENDS)
    """
    choices = tuple(names)
    if not choices:
        raise ValueError("a registry with no entries gives no choices")
    return Literal[choices]  # type: ignore[valid-type]


def to_dict(cfg: Any, *, hashed_only: bool = False) -> dict[str, Any]:
    """A plain-data (YAML/JSON-able) view of a config dataclass."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if hashed_only and f.metadata.get("hash", True) is False:
            continue
        out[f.name] = _plain(getattr(cfg, f.name), hashed_only)
    return out


def _plain(value: Any, hashed_only: bool) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value, hashed_only=hashed_only)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v, hashed_only) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, hashed_only) for k, v in value.items()}
    return value


def config_hash(cfg: Any) -> str:
    """Short stable hash of the output-relevant fields of ``cfg`` (16 hex chars)."""
    blob = json.dumps(to_dict(cfg, hashed_only=True), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: Lower bounds of numeric options, by field name (the same name means the same thing in every
#: command): (bound, inclusive). Checked by :func:`check_ranges` on every parsed command line.
LOWER_BOUNDS: dict[str, tuple[float, bool]] = {
    **dict.fromkeys(
        (
            "size", "render_size", "eval_size", "silhouette_size", "views", "samples",
            "render_samples", "n", "per_category", "n_points", "resolution", "mc_resolution",
            "shard_size", "max_faces", "max_objects_per_worker", "steps",
        ),
        (1, True),
    ),
    **dict.fromkeys(
        ("workers", "threads", "n_positives", "gso_objects", "worst_k", "seed", "min_coverage",
         "coverage_threshold", "gap_ratio", "min_part_ratio", "diffusion_seed", "guidance"),
        (0, True),
    ),
    **dict.fromkeys(
        ("timeout_s", "cpus_per_worker", "gpus_per_worker", "metrics_gpus_per_worker",
         "fscore_threshold"),
        (0, False),
    ),
}  # fmt: skip


def check_ranges(cfg: Any, where: str = "") -> None:
    """Raise :class:`ConfigError` naming the option when a numeric option is out of range
    (:data:`LOWER_BOUNDS`; fractions such as coverages must also be <= 1)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        option = f"--{where}{f.name.replace('_', '-')}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, where=f"{where}{f.name}.")
            continue
        if f.name not in LOWER_BOUNDS or isinstance(value, bool):
            continue
        if not isinstance(value, int | float):
            continue
        bound, inclusive = LOWER_BOUNDS[f.name]
        if value < bound or (value == bound and not inclusive):
            relation = ">=" if inclusive else ">"
            raise ConfigError(f"{option} must be {relation} {bound:g}, got {value}")
        if f.name in ("min_coverage", "coverage_threshold", "gap_ratio", "min_part_ratio") and (
            value > 1
        ):
            raise ConfigError(f"{option} is a fraction in [0, 1], got {value}")


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Build dataclass ``cls`` from plain data, checking keys and converting nested configs.

    Keys may use the option spelling (``lpips-net``) or the field name (``lpips_net``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    assert dataclasses.is_dataclass(cls)
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{where}: {e}") from e


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` (from YAML) as type ``tp``; a value of the wrong kind is a ConfigError naming
    the key. A single value where a list is expected becomes a one-element list."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where) if len(args) == 1 else value
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        items = list(value) if isinstance(value, list | tuple) else [value]
        targs = typing.get_args(tp)
        item_tp = targs[0] if targs else Any
        converted = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(items)]
        return tuple(converted) if origin is tuple else converted
    if tp is Path and isinstance(value, str):
        return Path(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {bool: (bool,), int: (int,), float: (float,), str: (str,)}.get(tp)
    if expected is not None and (
        not isinstance(value, expected) or (tp is not bool and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def load_config(cls: type[T], path: str | Path) -> T:
    """Load a YAML config file into ``cls`` (a ``_provenance`` block, if present, is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if isinstance(data, dict):
        data.pop("_provenance", None)
    return from_dict(cls, data, where=str(path))


def write_resolved_config(cfg: Any, url: str) -> None:
    """Write ``cfg`` (resolved) plus provenance and its hash as YAML to ``url``."""
    data = to_dict(cfg)
    data["_provenance"] = {**provenance(), "config_hash": config_hash(cfg)}
    atomic_write_text(url, yaml.safe_dump(data, sort_keys=False))
