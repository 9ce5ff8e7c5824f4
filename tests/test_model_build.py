"""Model construction: official variants match the checkpoint manifests exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import instantmesh
from instantmesh import OFFICIAL_VARIANTS, VARIANTS, build_model, get_variant, input_cameras
from instantmesh.manifests import manifest_text, read_manifest, state_dict_specs
from instantmesh.variants import VariantConfig

SHARED_CHECKPOINTS = Path(__file__).resolve().parents[1].parent / "shared" / "checkpoints"

# Parameter and tensor counts of the official checkpoints (shared/FACTS.md).
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


@pytest.mark.parametrize("variant", OFFICIAL_VARIANTS)
def test_packaged_manifest_equals_shared_copy(variant: str) -> None:
    original = SHARED_CHECKPOINTS / f"keys_{variant}.txt"
    if not original.is_file():
        pytest.skip(f"{original} not present")
    assert manifest_text(variant) == original.read_text()


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
