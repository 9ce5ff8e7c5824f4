"""Model construction: official variants match the checkpoint manifests exactly."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

import instantmesh
from instantmesh import OFFICIAL_VARIANTS, VARIANTS, build_model, get_variant, input_cameras
from instantmesh.manifests import manifest_text, read_manifest, state_dict_specs
from instantmesh.variants import VariantConfig

# Parameter and tensor counts of the official checkpoints (docs/protocol.md, "The model's input
# cameras and inference": instant_{mesh,nerf}_{large,base}.ckpt of huggingface.co/TencentARC).
OFFICIAL_COUNTS = {
    "instant-mesh-large": (378_657_644, 519),
    "instant-mesh-base": (313_352_516, 455),
    "instant-nerf-large": (378_477_332, 495),
    "instant-nerf-base": (313_249_004, 431),
}


@pytest.mark.parametrize("variant", OFFICIAL_VARIANTS)
def test_meta_build_matches_manifest_exactly(variant: str) -> None:
    model = build_model(variant, device="meta")
    manifest = read_manifest(variant)
    specs = state_dict_specs(model.state_dict())
    assert list(specs) == list(manifest.tensors)  # same keys, same order
    assert specs == manifest.tensors  # same shapes and dtypes
    params, tensors = OFFICIAL_COUNTS[variant]
    assert sum(p.numel() for p in model.parameters()) == params == manifest.total_parameters
    assert len(specs) == tensors == manifest.total_tensors
    assert list(model.buffers()) == []


MANIFEST_SHA256 = {
    "instant-mesh-base": "25c4187418efe619ec0455279197c847a2246840cca5713e98ad70ac833bb324",
    "instant-mesh-large": "01dfcc92c90a6e1fe73d107b3a322c19f39273b43dc852717a4783e6ec6e56ba",
    "instant-nerf-base": "a0189d1940cd0a9b0a71c77c4ec70a138050d1f3c00f984fd4e7f86e8770f0eb",
    "instant-nerf-large": "a49c4e4ac12e00600fde6e433bd6300575bcbafdbcc2ff28f76e8c987e39103f",
}
"""SHA-256 of the packaged key manifests (instantmesh/manifests/keys_<variant>.txt), recorded
when they were compared byte for byte with the key lists read from the official checkpoints."""


@pytest.mark.parametrize("variant", OFFICIAL_VARIANTS)
def test_packaged_manifest_is_the_recorded_key_list(variant: str) -> None:
    """The manifest ships as package data (read through importlib.resources) and is exactly the
    recorded file: an edit to a key, shape or dtype fails here, not at checkpoint load time."""
    text = manifest_text(variant)
    assert hashlib.sha256(text.encode()).hexdigest() == MANIFEST_SHA256[variant]
    manifest = read_manifest(variant)
    assert manifest.total_parameters == OFFICIAL_COUNTS[variant][0] == manifest.numel
    assert manifest.total_tensors == OFFICIAL_COUNTS[variant][1] == len(manifest.tensors)


def test_every_official_variant_has_a_packaged_manifest() -> None:
    assert set(MANIFEST_SHA256) == set(OFFICIAL_VARIANTS)


def test_variant_registry_and_config_round_trip() -> None:
    assert set(OFFICIAL_VARIANTS) < set(VARIANTS)
    assert {"tiny-nerf", "tiny-mesh"} <= set(VARIANTS)
    for cfg in VARIANTS.values():
        assert VariantConfig.from_dict(cfg.to_dict()) == cfg
    assert get_variant("instant-nerf-large").transformer.num_layers == 16
    assert get_variant("instant-mesh-base").triplane_dim == 40
    with pytest.raises(ValueError, match="unknown InstantMesh variant"):
        get_variant("instant-nerf-huge")
    with pytest.raises(ValueError, match="unknown variant config fields"):
        VariantConfig.from_dict({**get_variant("tiny-nerf").to_dict(), "bogus": 1})


def test_tiny_variants_are_small() -> None:
    for name in ("tiny-nerf", "tiny-mesh"):
        model = build_model(name)
        assert sum(p.numel() for p in model.parameters()) < 200_000
        assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


def test_public_api_exports() -> None:
    for name in ("build_model", "load_checkpoint", "input_cameras", "save_model"):
        assert callable(getattr(instantmesh, name))


def test_input_cameras_are_zero123plus_views() -> None:
    cams = input_cameras()
    assert cams.shape == (6, 16) and cams.dtype == torch.float32
    assert input_cameras(batch_size=2).shape == (2, 6, 16)
    c2w = cams[:, :12].reshape(6, 3, 4)
    rot, pos = c2w[:, :, :3], c2w[:, :, 3]
    torch.testing.assert_close(
        rot @ rot.transpose(1, 2), torch.eye(3).expand(6, 3, 3), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(pos.norm(dim=-1), torch.full((6,), 4.0))
    for i, (azimuth, elevation) in enumerate(
        zip((30, 90, 150, 210, 270, 330), (20, -10) * 3, strict=True)
    ):
        az, el = math.radians(azimuth), math.radians(elevation)
        expected = 4.0 * torch.tensor(
            [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
        )
        torch.testing.assert_close(pos[i], expected)
    # OpenGL: the camera looks down its -z axis, i.e. its z axis points from the origin to it.
    torch.testing.assert_close(rot[:, :, 2], pos / 4.0)
    assert (rot[:, 2, 1] > 0).all()  # camera up has a positive world-z component
    focal = 0.5 / math.tan(math.radians(15))
    torch.testing.assert_close(cams[:, 12:], torch.tensor([focal, focal, 0.5, 0.5]).expand(6, 4))
    torch.testing.assert_close(input_cameras(radius=8.0)[:, [3, 7, 11]], 2 * pos)
