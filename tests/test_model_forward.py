"""Forward/backward of tiny variants and numerics parity of the building blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instantmesh import build_model, input_cameras, orbit_render_cameras
from instantmesh.encoder import CameraConditionedDinoEncoder
from instantmesh.meshing import extract_nerf_mesh
from instantmesh.model import InstantMesh, InstantNeRF
from instantmesh.synthesizer import cube_lattice
from instantmesh.triplane_sampling import sample_triplane
from instantmesh.variants import EncoderConfig, get_variant
from instantmesh.volume_rendering import ray_box_limits, rays_from_cameras, stratified_depths


def _inputs(batch: int = 2, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, 6, 3, size, size, generator=gen), input_cameras(batch_size=batch)


def test_tiny_nerf_forward_backward() -> None:
    torch.manual_seed(0)
    model = build_model("tiny-nerf")
    assert isinstance(model, InstantNeRF)
    images, cameras = _inputs()
    planes = model.forward_planes(images, cameras)
    assert planes.shape == (2, 3, 8, 8, 8)
    out = model.synthesizer.forward_points(planes, torch.rand(2, 50, 3) * 2 - 1)
    assert out["sigma"].shape == (2, 50, 1) and out["rgb"].shape == (2, 50, 3)
    assert (out["sigma"] >= 0).all()
    assert ((out["rgb"] >= -0.001) & (out["rgb"] <= 1.001)).all()
    renders = model.synthesizer(planes, orbit_render_cameras(3)[None].repeat(2, 1, 1), 8)
    assert renders["images_rgb"].shape == (2, 3, 3, 8, 8)
    assert renders["images_depth"].shape == renders["images_weight"].shape == (2, 3, 1, 8, 8)
    loss = out["sigma"].mean() + out["rgb"].mean() + renders["images_rgb"].mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_tiny_mesh_fields_forward_backward() -> None:
    torch.manual_seed(0)
    model = build_model("tiny-mesh")
    assert isinstance(model, InstantMesh)
    planes = model.forward_planes(*_inputs())
    assert planes.shape == (2, 3, 8, 8, 8)
    points = cube_lattice(3).expand(2, -1, -1)  # 27 lattice points, 8 cubes
    corners = torch.tensor(
        [
            [
                x * 9 + y * 3 + z + dx * 9 + dy * 3 + dz
                for dx in (0, 1)
                for dy in (0, 1)
                for dz in (0, 1)
            ]
            for x in (0, 1)
            for y in (0, 1)
            for z in (0, 1)
        ]
    )
    sdf, deformation, weight = model.synthesizer.geometry(planes, points, corners)
    assert (
        sdf.shape == (2, 27, 1) and deformation.shape == (2, 27, 3) and weight.shape == (2, 8, 21)
    )
    rgb = model.synthesizer.texture(planes, points)
    fields = model.synthesizer.forward_points(planes, points)
    torch.testing.assert_close(fields["sdf"], sdf)
    torch.testing.assert_close(fields["deformation"], deformation)
    torch.testing.assert_close(fields["rgb"], rgb)
    bounded = model.bounded_deformation(deformation)
    assert bounded.abs().max() <= 1 / (8 * 4.0)
    (sdf.mean() + bounded.mean() + weight.mean() + rgb.mean()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_encoder_matches_hf_vit_when_unmodulated() -> None:
    """With zero adaLN weights our encoder is a plain ViT: compare with transformers' eager ViT."""
    transformers = pytest.importorskip("transformers")
    cfg = EncoderConfig(
        hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, patch_size=8, image_size=32
    )
    torch.manual_seed(0)
    ours = CameraConditionedDinoEncoder(cfg).eval()
    hf_cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        patch_size=8,
        image_size=32,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    hf_cfg._attn_implementation = "eager"
    hf = transformers.ViTModel(hf_cfg, add_pooling_layer=False).eval()
    renames = {
        "attention.attention.query": "attention.q_proj",
        "attention.attention.key": "attention.k_proj",
        "attention.attention.value": "attention.v_proj",
        "attention.output.dense": "attention.o_proj",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    }
    state = {}
    for key, value in ours.model.state_dict().items():
        if "adaLN" in key:
            continue
        key = key.replace("encoder.layer.", "layers.")
        for old, new in renames.items():
            key = key.replace(old, new)
        state[key] = value
    hf.load_state_dict(state, strict=True)
    images = torch.rand(1, 3, 3, 32, 32)
    cams = torch.randn(1, 3, 16)
    with torch.no_grad():
        expected = hf(pixel_values=ours.normalize(images.flatten(0, 1))).last_hidden_state
        got = ours(images, cams)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_position_embeddings_use_scale_factor_resampling() -> None:
    """transformers 4.34 / DINO resampling: scale_factor (g + 0.1) / g0, not size=(g, g)."""
    enc = CameraConditionedDinoEncoder(EncoderConfig())  # DINO ViT-B/16 geometry, 14x14 grid
    emb = enc.model.embeddings
    with torch.no_grad():
        emb.position_embeddings.normal_()
    pos = emb.resampled_position_embeddings(320, 320)
    assert pos.shape == (1, 401, 768)
    grid = emb.position_embeddings[:, 1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    ref = F.interpolate(
        grid, scale_factor=(20.1 / 14, 20.1 / 14), mode="bicubic", align_corners=False
    )
    torch.testing.assert_close(
        pos[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 400, 768), rtol=0, atol=0
    )
    torch.testing.assert_close(pos[:, :1], emb.position_embeddings[:, :1], rtol=0, atol=0)
    by_size = F.interpolate(grid, size=(20, 20), mode="bicubic", align_corners=False)
    assert (by_size.permute(0, 2, 3, 1).reshape(1, 400, 768) - pos[:, 1:]).abs().max() > 1e-2
    assert emb.resampled_position_embeddings(224, 224) is emb.position_embeddings


def test_encoder_normalization_is_imagenet_by_default() -> None:
    enc = CameraConditionedDinoEncoder(get_variant("tiny-nerf").encoder)
    x = torch.full((1, 3, 2, 2), 0.5)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(enc.normalize(x)[0, :, 0, 0], expected)
    enc.set_normalization([0.5] * 3, [0.5] * 3)
    assert float(enc.normalize(x).abs().max()) == 0.0


def _reference_triplane_sample(planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """EG3D formulation: points @ inv(plane_axes), keep (u, v), grid_sample, (N, 3, M, C)."""
    axes = torch.tensor(
        [
            [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
            [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
            [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
        ],
        dtype=torch.float32,
    )
    n, _, c, h, w = planes.shape
    m = points.shape[1]
    proj = torch.einsum("nmi,pij->npmj", points, torch.linalg.inv(axes))[..., :2]
    out = F.grid_sample(
        planes.reshape(n * 3, c, h, w), proj.reshape(n * 3, 1, m, 2), align_corners=False
    )
    return out.reshape(n, 3, c, m).permute(0, 1, 3, 2)


def test_triplane_sampling_matches_plane_axes_projection() -> None:
    gen = torch.Generator().manual_seed(1)
    planes = torch.randn(2, 3, 5, 6, 7, generator=gen)
    points = torch.rand(2, 40, 3, generator=gen) * 2.4 - 1.2  # some outside the box: zero padding
    torch.testing.assert_close(
        sample_triplane(planes, points), _reference_triplane_sample(planes, points)
    )
    # a point at texel centre (row 1, col 2) of the XY plane reads exactly that texel
    x = (2 + 0.5) / 7 * 2 - 1
    y = (1 + 0.5) / 6 * 2 - 1
    feats = sample_triplane(planes, torch.tensor([[[x, y, 0.0]]]).expand(2, 1, 3).contiguous())
    torch.testing.assert_close(feats[:, 0, 0], planes[:, 0, :, 1, 2])


def test_ray_generation_and_box_limits() -> None:
    cams = orbit_render_cameras(4, radius=4.0, elevation=0.0, fov=30.0)
    origins, dirs = rays_from_cameras(
        cams[:, :16].reshape(4, 4, 4), cams[:, 16:].reshape(4, 3, 3), 2
    )
    assert origins.shape == dirs.shape == (4, 4, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(4, 4))
    # the four pixels are symmetric about the optical axis, which points at the origin
    torch.testing.assert_close(
        dirs.mean(1) / dirs.mean(1).norm(dim=-1, keepdim=True), -origins[:, 0] / 4.0
    )
    # pixel (0, 0) is the top-left one: its ray points up (+z)
    assert (dirs[:, 0, 2] > 0).all()
    start, end = ray_box_limits(
        torch.tensor([[0.0, 0.0, 4.0], [0.0, 3.0, 4.0]]),
        torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]]),
        2.0,
    )
    torch.testing.assert_close(start[:, 0], torch.tensor([3.0, -1.0]))
    torch.testing.assert_close(end[:, 0], torch.tensor([5.0, -2.0]))


def test_empty_field_renders_white_and_generator_makes_it_deterministic() -> None:
    model = build_model("tiny-nerf")
    planes = torch.zeros(1, 3, 8, 8, 8)
    with torch.no_grad():
        for p in model.synthesizer.decoder.parameters():
            p.zero_()
        model.synthesizer.decoder.net[-1].bias[0] = -50.0  # softplus(-51) ~ 0: empty space
    cams = orbit_render_cameras(2)[None]
    with torch.no_grad():
        out = model.synthesizer(planes, cams, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["images_rgb"], torch.ones(1, 2, 3, 6, 6), atol=1e-6, rtol=0)
    assert float(out["images_weight"].max()) < 1e-6
    torch.manual_seed(0)
    model2 = build_model("tiny-nerf")
    planes2 = torch.randn(1, 3, 8, 8, 8)
    a = model2.synthesizer(planes2, cams, 6, generator=torch.Generator().manual_seed(3))
    b = model2.synthesizer(planes2, cams, 6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a["images_rgb"], b["images_rgb"], rtol=0, atol=0)


def test_marching_cubes_on_a_sphere_density() -> None:
    synth = build_model("tiny-nerf").synthesizer

    def sphere(planes: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        radius = points.norm(dim=-1, keepdim=True)
        return {"sigma": 30 * (0.5 - radius) + 11, "rgb": (points + 1) / 2}

    synth.raw_points = sphere  # type: ignore[method-assign]
    mesh = extract_nerf_mesh(synth, torch.zeros(1, 3, 8, 8, 8), resolution=32, threshold=10.0)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(radii.mean() - 0.5) < 0.01 and mesh.vertices.dtype == np.float32
    tri = mesh.vertices[mesh.faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((normals * tri.mean(1)).sum(1) > 0).all()  # wound outwards
    assert mesh.vertex_colors.dtype == np.uint8
    expected = np.clip((mesh.vertices + 1) / 2 * 255, 0, 255).astype(np.uint8)
    assert np.abs(mesh.vertex_colors.astype(int) - expected).max() <= 1
    with pytest.raises(ValueError, match="no surface"):
        extract_nerf_mesh(synth, torch.zeros(1, 3, 8, 8, 8), resolution=8, threshold=1e6)


@pytest.mark.slow
def test_full_size_nerf_base_forward_on_cpu() -> None:
    torch.manual_seed(0)
    model = build_model("instant-nerf-base").eval()
    images = torch.rand(1, 6, 3, 320, 320)
    with torch.no_grad():
        planes = model.forward_planes(images, input_cameras(batch_size=1))
        out = model.synthesizer.forward_points(planes, torch.rand(1, 1000, 3) * 2 - 1)
    assert planes.shape == (1, 3, 40, 64, 64)
    assert torch.isfinite(planes).all() and out["rgb"].shape == (1, 1000, 3)
    assert math.isfinite(float(out["sigma"].sum()))


def test_stratified_jitter_follows_upstream_memory_order() -> None:
    """Upstream jitters a *permuted* depth tensor with ``rand_like``, which fills it in memory
    order; seeded renders only reproduce upstream if the draws land in the same places."""
    gen = torch.Generator().manual_seed(2)
    start = torch.rand(2, 5, 1, generator=gen)
    end = start + 1 + torch.rand(2, 5, 1, generator=gen)
    n = 6
    steps = (torch.arange(n, dtype=torch.float32) / (n - 1)).reshape(n, 1, 1, 1)
    reference = (start[None] + steps * (end - start)[None]).permute(1, 2, 0, 3)
    torch.manual_seed(11)
    reference = reference + torch.rand_like(reference) * ((end - start) / (n - 1))[..., None]
    torch.manual_seed(11)
    torch.testing.assert_close(stratified_depths(start, end, n, None), reference, rtol=0, atol=0)
