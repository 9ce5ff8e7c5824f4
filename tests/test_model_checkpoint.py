"""Checkpoint I/O: upstream-format .ckpt files (strict, weights_only) and our safetensors format."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch

from instantmesh import (
    CheckpointError,
    CheckpointMismatch,
    build_model,
    get_variant,
    load_checkpoint,
    load_model,
    save_model,
)
from instantmesh.checkpoint import UPSTREAM_PREFIX, VARIANT_KEY


def _upstream_payload(
    variant: str = "tiny-nerf", seed: int = 0
) -> tuple[dict, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v) for k, v in build_model(variant).state_dict().items()}
    payload = {
        "state_dict": {
            **{UPSTREAM_PREFIX + k: v for k, v in state.items()},
            "lpips.net.0.weight": torch.zeros(2),  # training-only modules are ignored
        },
        "epoch": 7,
        "global_step": 1234,
    }
    return payload, state


def _assert_same_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_upstream_checkpoint_round_trips_strictly(tmp_path: Path) -> None:
    payload, state = _upstream_payload()
    path = tmp_path / "model.ckpt"
    torch.save(payload, path)
    model = load_checkpoint(path, "tiny-nerf")
    _assert_same_state(model, state)
    assert all(p.device.type == "cpu" for p in model.parameters())
    planes = model.forward_planes(torch.rand(1, 6, 3, 48, 48), torch.rand(1, 6, 16))
    assert planes.shape == (1, 3, 8, 8, 8)


def test_directory_lookup_and_preprocessor_config(tmp_path: Path) -> None:
    payload, state = _upstream_payload("tiny-mesh")
    torch.save(payload, tmp_path / "tiny_mesh.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    )
    model = load_checkpoint(tmp_path, "tiny-mesh")
    _assert_same_state(model, state)
    assert model.encoder.image_mean == (0.5, 0.5, 0.5)
    assert model.encoder.image_std == (0.25, 0.25, 0.25)
    with pytest.raises(CheckpointError, match="cannot choose a checkpoint"):
        load_checkpoint(tmp_path, "tiny-nerf")
    with pytest.raises(ValueError, match="needs the variant"):
        load_checkpoint(tmp_path / "tiny_mesh.ckpt")


def test_mismatches_are_listed(tmp_path: Path) -> None:
    payload, state = _upstream_payload()
    sd = payload["state_dict"]
    keys = list(state)
    for key in keys[:7]:  # seven missing
        del sd[UPSTREAM_PREFIX + key]
    sd[UPSTREAM_PREFIX + "synthesizer.decoder.extra.weight"] = torch.zeros(1)
    sd[UPSTREAM_PREFIX + "transformer.deconv.bias"] = torch.zeros(99)
    path = tmp_path / "bad.ckpt"
    torch.save(payload, path)
    with pytest.raises(CheckpointMismatch) as info:
        load_checkpoint(path, "tiny-nerf")
    err = info.value
    message = str(err)
    assert str(path) in message and "'tiny-nerf'" in message
    assert "7 missing key(s)" in message and "(2 more)" in message and keys[0] in message
    assert "1 unexpected key(s)" in message and "synthesizer.decoder.extra.weight" in message
    assert (
        "1 mis-shaped key(s)" in message
        and "transformer.deconv.bias: checkpoint (99,) vs model (8,)" in message
    )
    assert err.missing == keys[:7]
    assert err.unexpected == ["synthesizer.decoder.extra.weight"]
    assert err.mis_shaped == [("transformer.deconv.bias", (99,), (8,))]


def test_wrong_variant_is_a_mismatch(tmp_path: Path) -> None:
    payload, _ = _upstream_payload("tiny-nerf")
    torch.save(payload, tmp_path / "nerf.ckpt")
    with pytest.raises(CheckpointMismatch, match="missing key"):
        load_checkpoint(tmp_path / "nerf.ckpt", "tiny-mesh")


def test_embedded_variant_is_used_and_checked(tmp_path: Path) -> None:
    """A trainer-written .ckpt embeds its VariantConfig: no variant needed, a wrong one refused."""
    payload, state = _upstream_payload("tiny-mesh")
    custom = dataclasses.replace(get_variant("tiny-mesh"), grid_res=6)  # no registry entry
    payload[VARIANT_KEY] = custom.to_dict()
    path = tmp_path / "tiny_mesh.ckpt"
    torch.save(payload, path)
    model = load_checkpoint(path)
    _assert_same_state(model, state)
    assert model.cfg == custom and model.cfg.grid_res == 6
    assert load_checkpoint(tmp_path, "tiny-mesh").cfg == get_variant("tiny-mesh")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path, "tiny-nerf")  # the only .ckpt there, trained as tiny-mesh
    assert str(info.value) == (
        f"{path} was trained as tiny-mesh, not tiny-nerf; pass --variant tiny-mesh"
    )
    payload[VARIANT_KEY] = {"name": "x", "synthesizer": "voxels"}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="invalid 'instantmesh_variant' entry"):
        load_checkpoint(path)


def test_truncated_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    payload, _ = _upstream_payload()
    good = tmp_path / "good.ckpt"
    torch.save(payload, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*truncated\.ckpt"):
        load_checkpoint(truncated, "tiny-nerf")
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.ckpt"):
        load_checkpoint(text, "tiny-nerf")
    no_state = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(1)}, no_state)
    with pytest.raises(CheckpointError, match=r"plain\.ckpt is not an InstantMesh checkpoint"):
        load_checkpoint(no_state, "tiny-nerf")
    no_prefix = tmp_path / "noprefix.ckpt"
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, no_prefix)
    with pytest.raises(CheckpointError, match=r"no 'lrm_generator\.' tensors"):
        load_checkpoint(no_prefix, "tiny-nerf")
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_checkpoint(tmp_path / "missing.ckpt", "tiny-nerf")


class _Payload:
    """Unpickling this would run code (it calls ``_record_execution``)."""

    def __reduce__(self) -> tuple:
        return (_record_execution, ("executed",))


EXECUTED: list[str] = []


def _record_execution(value: str) -> str:
    EXECUTED.append(value)
    return value


def test_pickles_needing_code_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"lrm_generator.x": _Payload()}}, path)
    with pytest.raises(CheckpointError, match="weights_only") as info:
        load_checkpoint(path, "tiny-nerf")
    assert str(path) in str(info.value)
    assert EXECUTED == []
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)


def test_safetensors_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("tiny-mesh")
    model.encoder.set_normalization([0.4, 0.5, 0.6], [0.2, 0.3, 0.4])
    out = save_model(model, tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["variant"]["name"] == "tiny-mesh"
    loaded = load_model(out)
    _assert_same_state(loaded, model.state_dict())
    assert loaded.cfg == model.cfg
    assert loaded.encoder.image_mean == (0.4, 0.5, 0.6)
    again = load_checkpoint(out)
    _assert_same_state(again, model.state_dict())
    with pytest.raises(CheckpointError, match="holds variant 'tiny-mesh'"):
        load_checkpoint(out, "tiny-nerf")
    (out / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(out)
