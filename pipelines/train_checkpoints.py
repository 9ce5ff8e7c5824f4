"""Training checkpoints: atomic, resumable, in the upstream InstantMesh key layout.

Layout under a training run's output root ``<out>``::

    <out>/checkpoints/step-00001000/
        tiny_mesh.ckpt      {"state_dict": {"lrm_generator.<key>": tensor}, "global_step": 1000,
                             "instantmesh_variant": VariantConfig.to_dict()}
        trainer_state.pt    {"step", "optimizer", "scheduler", "state"}
        _SUCCESS.json       completion marker, written last (file names and sizes)

The ``.ckpt`` file is named like the official checkpoints (``upstream_checkpoint_name``: the
variant with ``-`` -> ``_``) and keeps their key layout (``lrm_generator.`` prefix, as the
Lightning module of upstream ``src/model.py`` / ``src/model_mesh.py`` stores its generator), so
``instantmesh.load_checkpoint(<step dir>)`` and the predictors load it strictly; the embedded
variant config lets them do so without ``--variant`` and refuses a wrong one. Both files hold
only tensors and plain Python values, so ``torch.load(..., weights_only=True)`` reads them.

A checkpoint is published with :func:`pipelines.storage.publish_dir` (scratch folder -> staging
-> final folder, marker last): a writer killed at any point leaves no folder that
:func:`latest_training_checkpoint` returns. Only one process (rank 0) writes checkpoints of a
run; local paths, ``file://`` and fsspec URLs work alike.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

from instantmesh.checkpoint import (
    UPSTREAM_PREFIX,
    VARIANT_KEY,
    CheckpointError,
    check_trained_variant,
    embedded_variant,
    load_state_dict_strict,
    read_upstream_checkpoint,
    upstream_checkpoint_name,
)
from instantmesh.variants import VariantConfig
from pipelines import storage
from rendering.urls import filesystem, is_local_fs

__all__ = [
    "CHECKPOINTS_DIR",
    "TRAINER_STATE_FILE",
    "TrainingCheckpointError",
    "checkpoint_url",
    "latest_training_checkpoint",
    "list_training_checkpoints",
    "load_training_checkpoint",
    "save_training_checkpoint",
    "unwrap_model",
]

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


class TrainingCheckpointError(CheckpointError):
    """A training checkpoint is incomplete, truncated, corrupt or does not fit the run."""


class Stateful(Protocol):
    """What an optimizer and a learning-rate scheduler offer for checkpointing."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, /) -> None: ...


def checkpoint_url(out_url: str, step: int) -> str:
    """``<out>/checkpoints/step-%08d``."""
    return storage.join(out_url, CHECKPOINTS_DIR, f"step-{step:08d}")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DistributedDataParallel / ``torch.compile`` wrappers (its keys and
    ``cfg`` are the ones a checkpoint holds)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            inner = model.module
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _variant_of(model: torch.nn.Module) -> VariantConfig:
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, VariantConfig):
        raise TypeError(
            f"cannot checkpoint a {type(model).__name__}: expected an InstantNeRF/InstantMesh "
            "model (with a VariantConfig 'cfg')"
        )
    return cfg


def _check_plain(value: Any, where: str) -> None:
    """Refuse values that ``torch.load(weights_only=True)`` would not read back, at save time
    (a resume that fails on its own checkpoint is found too late)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}, not str/int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}: training state must hold only tensors, numbers, "
        "strings, None and lists/tuples/dicts of them (torch.load weights_only=True)"
    )


def _step_dirs(out_url: str) -> list[tuple[int, str]]:
    """(step, URL) of every ``step-*`` folder under ``<out>/checkpoints``, complete or not."""
    root = storage.join(out_url, CHECKPOINTS_DIR)
    fs, path = filesystem(root)
    if not fs.exists(path):
        return []
    found = []
    for entry in fs.ls(path, detail=True):
        if entry.get("type") != "directory":
            continue
        match = _STEP_DIR.match(str(entry["name"]).rstrip("/").rsplit("/", 1)[-1])
        if match:
            step = int(match.group(1))
            found.append((step, checkpoint_url(out_url, step)))
    return sorted(found)


def _is_complete(ckpt_url: str) -> bool:
    marker = storage.read_marker(ckpt_url)
    if marker is None:
        return False
    files = marker.get("files")
    return (
        isinstance(files, Mapping)
        and TRAINER_STATE_FILE in files
        and any(name.endswith(".ckpt") for name in files)
    )


def list_training_checkpoints(out_url: str) -> list[tuple[int, str]]:
    """(step, URL) of the complete checkpoints of the run at ``out_url``, oldest first."""
    return [(step, url) for step, url in _step_dirs(out_url) if _is_complete(url)]


def latest_training_checkpoint(out_url: str) -> str | None:
    """URL of the newest complete checkpoint (``None`` if there is none); folders without a
    completion marker (a save killed midway) are skipped."""
    complete = list_training_checkpoints(out_url)
    return complete[-1][1] if complete else None


def save_training_checkpoint(
    out_url: str,
    step: int,
    model: torch.nn.Module,
    optimizer: Stateful,
    scheduler: Stateful | None,
    state: Mapping[str, Any],
    *,
    keep: int | None = None,
) -> str:
    """Publish the checkpoint of ``step`` atomically and return its URL.

    Args:
        out_url: the run's output root; the checkpoint goes to ``<out>/checkpoints/step-%08d``.
        step: the global step (number of optimizer steps done).
        model: the InstantNeRF/InstantMesh being trained (DDP-wrapped or not).
        optimizer, scheduler: their ``state_dict()`` go to ``trainer_state.pt`` (no scheduler:
            ``None``).
        state: the trainer's own resume state (step, epoch, RNG states, ...): tensors, numbers,
            strings, ``None`` and containers of them only (checked here).
        keep: after publishing, keep only this many newest complete checkpoints (``None``: all).
            Incomplete folders of earlier steps (killed saves) are removed as well.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 (or None for all), got {keep}")
    _check_plain(dict(state), "state")
    net = unwrap_model(model)
    cfg = _variant_of(net)
    weights = {
        UPSTREAM_PREFIX + key: value.detach().to("cpu").contiguous()
        for key, value in net.state_dict().items()
    }
    trainer_state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "state": dict(state),
    }
    final = checkpoint_url(out_url, step)
    root = storage.join(out_url, CHECKPOINTS_DIR)
    storage.clean_staging(root)  # a killed save's leftovers
    # Local outputs are written in their staging folder (the publish is then a rename on the
    # same filesystem, and a large checkpoint needs no room in the temp dir); remote ones in
    # the temp dir, then uploaded.
    fs, root_path = filesystem(root)
    scratch_parent = None
    if is_local_fs(fs):
        scratch_parent = f"{root_path}/{storage.STAGING_DIR}"
        os.makedirs(scratch_parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imesh-ckpt-", dir=scratch_parent) as scratch:
        local = Path(scratch) / "checkpoint"
        local.mkdir()
        torch.save(
            {"state_dict": weights, "global_step": step, VARIANT_KEY: cfg.to_dict()},
            local / upstream_checkpoint_name(cfg.name),
        )
        torch.save(trainer_state, local / TRAINER_STATE_FILE)
        marker = {
            "step": step,
            "variant": cfg.name,
            "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        storage.publish_dir(local, final, marker)
    if keep is not None:
        _prune(out_url, step, keep)
    return final


def _prune(out_url: str, newest: int, keep: int) -> None:
    dirs = _step_dirs(out_url)
    complete = [(s, u) for s, u in dirs if _is_complete(u)]
    retained = {u for _, u in complete[-keep:]} | {checkpoint_url(out_url, newest)}
    complete_urls = {u for _, u in complete}
    for step, url in dirs:
        if url in retained or (url not in complete_urls and step >= newest):
            continue  # kept, or possibly a newer save under way
        storage.remove(url)


def _checked_copy(ckpt_url: str, name: str, files: Mapping[str, Any], scratch: Path) -> Path:
    """A local path holding ``<ckpt_url>/<name>`` (the file itself when local, else a copy in
    ``scratch``), after checking that its size is the one the marker recorded."""
    url = storage.join(ckpt_url, name)
    fs, path = filesystem(url)
    if not fs.exists(path):
        raise TrainingCheckpointError(
            f"training checkpoint {ckpt_url} is damaged: {name} is missing"
        )
    size, expected = int(fs.size(path)), files.get(name)
    if isinstance(expected, int) and size != expected:
        raise TrainingCheckpointError(
            f"training checkpoint {ckpt_url} is damaged: {name} has {size} bytes, "
            f"{expected} were written (truncated or overwritten)"
        )
    if is_local_fs(fs):
        return Path(path)
    local = scratch / name
    fs.get(path, str(local))
    return local


def load_training_checkpoint(
    ckpt_url: str,
    model: torch.nn.Module,
    optimizer: Stateful,
    scheduler: Stateful | None,
) -> dict[str, Any]:
    """Restore ``model``, ``optimizer`` and ``scheduler`` in place from the checkpoint at
    ``ckpt_url`` and return the trainer ``state`` saved with it.

    The weights are copied into the model's existing parameters (the optimizer keeps pointing
    at them) and cast to their device and dtype. Raises :class:`TrainingCheckpointError`
    naming ``ckpt_url`` when the checkpoint is incomplete (no marker), a file is missing,
    truncated or corrupt, or it was trained as another variant.
    """
    marker = storage.read_marker(ckpt_url)
    if marker is None:
        raise TrainingCheckpointError(
            f"{ckpt_url} is not a complete training checkpoint (no {storage.MARKER_NAME}: "
            "its save was killed or is still running); resume from the latest complete one"
        )
    files = marker.get("files")
    if not isinstance(files, Mapping):
        raise TrainingCheckpointError(f"{ckpt_url}: its {storage.MARKER_NAME} lists no files")
    ckpt_names = sorted(name for name in files if name.endswith(".ckpt"))
    if len(ckpt_names) != 1 or TRAINER_STATE_FILE not in files:
        raise TrainingCheckpointError(
            f"{ckpt_url}: expected one .ckpt file and {TRAINER_STATE_FILE}, "
            f"its marker lists {sorted(files)}"
        )
    net = unwrap_model(model)
    cfg = _variant_of(net)
    with tempfile.TemporaryDirectory(prefix="imesh-ckpt-") as tmp:
        scratch = Path(tmp)
        weights = _checked_copy(ckpt_url, ckpt_names[0], files, scratch)
        trainer_file = _checked_copy(ckpt_url, TRAINER_STATE_FILE, files, scratch)
        source = storage.join(ckpt_url, ckpt_names[0])
        try:
            state_dict, meta = read_upstream_checkpoint(weights)
            check_trained_variant(embedded_variant(meta, source), cfg, source)
        except CheckpointError as err:
            # name the URL, not a scratch copy
            raise TrainingCheckpointError(str(err).replace(str(weights), source)) from err
        load_state_dict_strict(net, state_dict, source, assign=False)
        del state_dict
        trainer_source = storage.join(ckpt_url, TRAINER_STATE_FILE)
        try:
            trainer = torch.load(trainer_file, map_location="cpu", weights_only=True)
        except Exception as err:  # garbage can fail anywhere inside the unpickler
            raise TrainingCheckpointError(
                f"cannot read {trainer_source}: truncated or corrupt ({type(err).__name__}: {err})"
            ) from err
    if not isinstance(trainer, Mapping) or not {"optimizer", "scheduler", "state"} <= set(trainer):
        raise TrainingCheckpointError(
            f"{trainer_source} is not a trainer state (expected keys optimizer, scheduler, state)"
        )
    optimizer.load_state_dict(trainer["optimizer"])
    if scheduler is not None:
        if trainer["scheduler"] is None:
            raise TrainingCheckpointError(
                f"{ckpt_url} was saved without a learning-rate scheduler; this run has one"
            )
        scheduler.load_state_dict(trainer["scheduler"])
    return dict(trainer["state"])
