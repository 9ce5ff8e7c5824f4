"""Checkpoint I/O: official InstantMesh ``.ckpt`` files and our safetensors format.

Official checkpoints are PyTorch Lightning files whose ``state_dict`` holds the model under the
``lrm_generator.`` prefix. They are read with ``torch.load(..., weights_only=True)``, so a file
that needs arbitrary code to unpickle is refused. Loading is strict: every key, shape (and, after
casting, dtype) must match the model built for the variant, otherwise :class:`CheckpointMismatch`
lists what is missing, unexpected or mis-shaped.

Our own format is a directory with ``model.safetensors`` and ``config.json`` (the variant config
and the image normalization), written by :func:`save_model`.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from instantmesh.encoder import read_preprocessor_normalization
from instantmesh.model import InstantMesh, InstantNeRF, build_model
from instantmesh.variants import VariantConfig, get_variant

UPSTREAM_PREFIX = "lrm_generator."
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
FORMAT_NAME = "instantmesh-lrm"
FORMAT_VERSION = 1
VARIANT_KEY = "instantmesh_variant"
"""Top-level entry of an upstream-layout checkpoint written by our trainer: the variant config
(``VariantConfig.to_dict()``) the weights were trained with."""
_SHOW = 5


class CheckpointError(ValueError):
    """A checkpoint file could not be read or used."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint's tensors do not match the model of the requested variant."""

    def __init__(
        self,
        source: str,
        variant: str,
        missing: list[str],
        unexpected: list[str],
        mis_shaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mis_shaped = mis_shaped
        lines = [f"checkpoint {source} does not match variant {variant!r}:"]
        if missing:
            lines.append(
                f"  {len(missing)} missing key(s) (in the model, not in the checkpoint): "
                + _first(missing)
            )
        if unexpected:
            lines.append(
                f"  {len(unexpected)} unexpected key(s) (in the checkpoint, not in the model): "
                + _first(unexpected)
            )
        if mis_shaped:
            shown = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mis_shaped]
            lines.append(f"  {len(mis_shaped)} mis-shaped key(s): " + _first(shown))
        super().__init__("\n".join(lines))


def _first(items: list[str]) -> str:
    text = ", ".join(items[:_SHOW])
    return text + (f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def read_upstream_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The ``lrm_generator.`` tensors of an upstream-layout checkpoint (prefix stripped) and the
    payload's other top-level entries (``global_step``, ``instantmesh_variant``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain-tensor checkpoint that loads with "
            f"weights_only=True (it may need arbitrary code to unpickle): {err}"
        ) from err
    except Exception as err:  # garbage input can fail anywhere inside the unpickler
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated, corrupt or not a PyTorch checkpoint "
            f"({type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, Mapping) or "state_dict" not in payload:
        kind = type(payload).__name__
        keys = sorted(map(str, payload))[:_SHOW] if isinstance(payload, Mapping) else []
        raise CheckpointError(
            f"{path} is not an InstantMesh checkpoint: expected a dict with 'state_dict', "
            f"got {kind}" + (f" with keys {keys}" if keys else "")
        )
    state = payload["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict")
    stripped = {
        key[len(UPSTREAM_PREFIX) :]: value
        for key, value in state.items()
        if isinstance(key, str) and key.startswith(UPSTREAM_PREFIX)
    }
    if not stripped:
        raise CheckpointError(
            f"{path}: no '{UPSTREAM_PREFIX}' tensors in its state_dict "
            f"(first keys: {_first(sorted(map(str, state)))})"
        )
    bad = [k for k, v in stripped.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: non-tensor entries in the state_dict: {_first(bad)}")
    meta = {str(k): v for k, v in payload.items() if k != "state_dict"}
    return stripped, meta


def read_upstream_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``lrm_generator.`` tensors of an official checkpoint, prefix stripped."""
    return read_upstream_checkpoint(path)[0]


def embedded_variant(meta: Mapping[str, Any], source: str) -> VariantConfig | None:
    """The variant config that our trainer embeds as ``instantmesh_variant`` (``None`` in
    official checkpoints, which carry no config)."""
    data = meta.get(VARIANT_KEY)
    if data is None:
        return None
    try:
        return VariantConfig.from_dict(dict(data))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid '{VARIANT_KEY}' entry: {err}") from err


def check_trained_variant(
    trained: VariantConfig | None, requested: VariantConfig, source: str
) -> None:
    """Refuse to load a checkpoint trained as one variant into a model of another."""
    if trained is not None and trained.name != requested.name:
        raise CheckpointError(
            f"{source} was trained as {trained.name}, not {requested.name}; "
            f"pass --variant {trained.name}"
        )


def check_state_dict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise :class:`CheckpointMismatch` unless ``state_dict`` has exactly ``model``'s keys with
    its shapes (what a strict load needs; the model may live on the meta device)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mis_shaped:
        variant = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
        raise CheckpointMismatch(source, variant, missing, unexpected, mis_shaped)


def load_state_dict_strict(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    *,
    assign: bool = True,
) -> None:
    """Strictly load ``state_dict`` into ``model`` (which may live on the meta device).

    Tensors are cast to the model's dtypes. With ``assign`` (the default) they replace the
    model's tensors (no second copy of the weights); ``assign=False`` copies them into the
    existing parameters instead, which keeps an optimizer that holds them valid (resuming).
    """
    check_state_dict(model, state_dict, source)
    expected = model.state_dict()
    device = next(iter(expected.values())).device
    target = torch.device("cpu") if device.type == "meta" else device
    cast = {k: state_dict[k].to(device=target, dtype=v.dtype) for k, v in expected.items()}
    model.load_state_dict(cast, strict=True, assign=assign)


def _read_config(directory: Path) -> tuple[VariantConfig, dict[str, Any]]:
    config_path = directory / CONFIG_FILE
    try:
        data = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read model config {config_path}: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{config_path} is not an {FORMAT_NAME} config")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: unsupported format_version {data.get('format_version')!r}"
        )
    try:
        cfg = VariantConfig.from_dict(data["variant"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: invalid variant config: {err}") from err
    return cfg, data


def save_model(model: InstantNeRF | InstantMesh, path: str | Path) -> Path:
    """Write ``model`` to directory ``path`` as ``model.safetensors`` + ``config.json``."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "variant": model.cfg.to_dict(),
        "image_mean": list(model.encoder.image_mean),
        "image_std": list(model.encoder.image_std),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_model(path: str | Path, device: str | torch.device = "cpu") -> InstantNeRF | InstantMesh:
    """Load a model written by :func:`save_model` (its config decides the variant)."""
    directory = Path(path)
    cfg, data = _read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"model weights not found: {weights}")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read safetensors file {weights}: {err}") from err
    model = build_model(cfg, device="meta")
    load_state_dict_strict(model, state, str(weights))
    model.encoder.set_normalization(data["image_mean"], data["image_std"])
    return model.to(device)


def upstream_checkpoint_name(variant: str) -> str:
    """File name of the official checkpoint, e.g. ``instant_nerf_base.ckpt``."""
    return variant.replace("-", "_") + ".ckpt"


def _find_checkpoint_in(directory: Path, variant: str | None) -> Path:
    if variant is not None:
        named = directory / upstream_checkpoint_name(variant)
        if named.is_file():
            return named
    candidates = sorted(directory.glob("*.ckpt"))
    if len(candidates) == 1:
        return candidates[0]
    wanted = upstream_checkpoint_name(variant) if variant else "one *.ckpt file"
    raise CheckpointError(
        f"cannot choose a checkpoint in {directory}: looked for {wanted}, found "
        f"{[c.name for c in candidates] or 'no .ckpt files'}"
    )


def load_checkpoint(
    path_or_dir: str | Path,
    variant: str | VariantConfig | None = None,
    device: str | torch.device = "cpu",
) -> InstantNeRF | InstantMesh:
    """Build ``variant`` and strictly load its weights.

    ``path_or_dir`` may be an official ``.ckpt`` file, a directory holding one (named like
    ``instant_nerf_base.ckpt``, or the only ``*.ckpt`` there), or a directory written by
    :func:`save_model` (then ``variant`` may be omitted, and must agree with it if given).
    A ``.ckpt`` written by our trainer embeds its variant config (``instantmesh_variant``):
    ``variant`` may then be omitted (the embedded config is built), and a ``variant`` of another
    name is refused with a :class:`CheckpointError` naming both. Official checkpoints carry no
    config and need ``variant``.
    A ``preprocessor_config.json`` beside the checkpoint sets the image mean/std.
    """
    path = Path(path_or_dir)
    if path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        model = load_model(path, device=device)
        if variant is not None and get_variant(variant).name != model.cfg.name:
            raise CheckpointError(
                f"{path} holds variant {model.cfg.name!r}, not {get_variant(variant).name!r}"
            )
        return model
    if path.is_dir():
        path = _find_checkpoint_in(path, get_variant(variant).name if variant else None)
    state, meta = read_upstream_checkpoint(path)
    trained = embedded_variant(meta, str(path))
    if variant is None:
        if trained is None:
            raise ValueError(f"loading an official checkpoint ({path}) needs the variant name")
        cfg = trained
    else:
        cfg = get_variant(variant)
        check_trained_variant(trained, cfg, str(path))
    model = build_model(cfg, device="meta")
    load_state_dict_strict(model, state, str(path))
    preprocessor = path.parent / PREPROCESSOR_FILE
    if preprocessor.is_file():
        mean, std = read_preprocessor_normalization(preprocessor)
        model.encoder.set_normalization(mean, std)
    return model.to(device)
