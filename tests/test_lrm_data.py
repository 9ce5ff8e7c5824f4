"""``Instantmesh32Dataset``: the upstream LRM loader's items (``src/data/objaverse.py`` of
TencentARC/InstantMesh), checked against values derived by hand from a rendered object's files:
white compositing, depth units, the normal encoding, cameras that unproject the depth maps onto
the object's surface (and project the origin to the image centre), seeded view sampling; the
same items from folders and shards; loud errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from test_shard_reader import rewrite_shard, write_shard_set

from instantmesh.lrm_data import (
    ITEM_KEYS,
    Instantmesh32Dataset,
    project_points,
)
from instantmesh.shard_reader import CorruptMemberError, MissingMemberError
from rendering import cameras as cams
from rendering import procedural as pg
from rendering.backends import RenderSettings, make_backend, prepare_object
from rendering.output_layouts import layout_spec, render_layout
from rendering.shard_format import encode_key, shard_name

SIZE, VIEWS, SEED = 64, 10, 3
UIDS = ("sphere", "sphere.b")
RADIUS = 1.0  # the icosphere normalized into [-1, 1]^3


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A textured sphere rendered in the instantmesh32 layout (cpu backend, 10 views of 64 px),
    plus a copy under a second uid (with a '.')."""
    root = tmp_path_factory.mktemp("lrm")
    glb = root / "sphere.glb"
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.7)
    glb.write_bytes(pg.glb_bytes(pg.textured(mesh, pg.make_texture("checker", 0, size=64))))
    obj, _ = prepare_object(glb)
    backend = make_backend("cpu", RenderSettings(shading="unlit"))
    folder = root / "rendering_random_32views" / UIDS[0]
    try:
        spec = layout_spec("instantmesh32", size=SIZE, seed=SEED, views=VIEWS)
        render_layout(backend, obj, UIDS[0], spec, folder)
    finally:
        backend.close()
    shutil.copytree(folder, folder.parent / UIDS[1])
    return root


def _dataset(source: Any, **kw: Any) -> Instantmesh32Dataset:
    return Instantmesh32Dataset(source, total_view_n=VIEWS, **kw)


def _plain(source: Any, **kw: Any) -> Instantmesh32Dataset:
    """No augmentation: cameras and normals as rendered."""
    return _dataset(source, camera_rotation=False, scale_probability=0.0, **kw)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _views(item: dict[str, Any], key: str) -> torch.Tensor:
    """Inputs then targets of ``key`` (upstream's supervision set)."""
    return torch.cat([item[f"input_{key}"], item[f"target_{key}"]])


def test_item_keys_shapes_dtypes(renders: Path) -> None:
    item = _dataset(renders)[0]
    assert set(item) == set(ITEM_KEYS) and item["uid"] == UIDS[0]
    for side, n in (("input", 6), ("target", 4)):
        assert item[f"{side}_images"].shape == (n, 3, SIZE, SIZE)
        assert item[f"{side}_alphas"].shape == (n, 1, SIZE, SIZE)
        assert item[f"{side}_depths"].shape == (n, 1, SIZE, SIZE)
        assert item[f"{side}_normals"].shape == (n, 3, SIZE, SIZE)
        assert item[f"{side}_c2ws"].shape == (n, 4, 4)
        assert item[f"{side}_Ks"].shape == (n, 3, 3)
        assert item[f"{side}_indices"].shape == (n,)
        assert item[f"{side}_indices"].dtype == torch.int64
        for k in ("images", "alphas", "depths", "normals", "c2ws", "Ks"):
            assert item[f"{side}_{k}"].dtype == torch.float32
    assert item["input_cameras"].shape == (6, 16)
    assert item["render_cameras"].shape == (10, 25)
    assert item["rotation"].shape == (4, 4) and item["scale"].shape == ()


def test_sampling_is_seeded_and_follows_upstream(renders: Path) -> None:
    ds = _dataset(renders, seed=7)
    a = ds[0]
    inputs, targets = a["input_indices"].tolist(), a["target_indices"].tolist()
    # Upstream: 6 + 4 distinct views of total_view_n; targets never include inputs.
    assert len(inputs) == 6 and len(targets) == 4
    assert len(set(inputs + targets)) == 10 and all(0 <= i < VIEWS for i in inputs + targets)
    # Same seed and epoch -> same views and augmentation, whatever instance or access path.
    b = next(iter(_dataset(renders, seed=7)))
    for key in ITEM_KEYS:
        if key != "uid":
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    orders = {tuple(_dataset(renders, seed=s)[0]["input_indices"].tolist()) for s in range(5)}
    assert len(orders) == 5  # another seed, other views
    ds.set_epoch(1)
    assert ds[0]["input_indices"].tolist() != inputs  # a new draw each epoch
    # The draw is per object: both uids hold the same files but get their own views.
    assert ds[0]["input_indices"].tolist() != ds[1]["input_indices"].tolist()


def test_images_on_white_alphas_and_depth_units(renders: Path) -> None:
    folder = renders / "rendering_random_32views" / UIDS[0]
    item = _plain(renders)[0]
    item16 = _plain(renders, depth="png16")[0]
    for k, idx in enumerate(_views(item, "indices").tolist()):
        rgba = _png(folder / f"{idx:03d}.png").astype(np.float32) / 255.0
        a = rgba[..., 3:]
        expected = rgba[..., :3] * a + (1.0 - a)  # composited on white
        got = _views(item, "images")[k].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)
        background = rgba[..., 3] == 0
        assert background.any() and (got[background] == 1.0).all()
        np.testing.assert_array_equal(_views(item, "alphas")[k, 0].numpy(), rgba[..., 3])
        # Depth: upstream's 8-bit decoding value / 255 * 6, or the 16-bit companion; metric,
        # 0 on the background.
        d8 = _png(folder / f"{idx:03d}_depth.png").astype(np.float64) / 255.0 * 6.0
        d16 = _png(folder / f"{idx:03d}_depth16.png").astype(np.float64) / 65535.0 * 6.0
        np.testing.assert_allclose(_views(item, "depths")[k, 0].numpy(), d8, atol=1e-6)
        np.testing.assert_allclose(_views(item16, "depths")[k, 0].numpy(), d16, atol=1e-6)
        assert (_views(item16, "depths")[k, 0].numpy()[background] == 0).all()
        # The centre pixel sees the sphere's near pole: depth = camera distance - radius.
        cam = cams.training_cameras(UIDS[0], SEED, n=VIEWS, size=SIZE)[idx]
        centre = _views(item16, "depths")[k, 0, SIZE // 2, SIZE // 2].item()
        assert centre == pytest.approx(cam.distance - RADIUS, abs=0.02)


def test_normals_follow_the_upstream_encoding(renders: Path) -> None:
    folder = renders / "rendering_random_32views" / UIDS[0]
    item = _plain(renders)[0]
    for k, idx in enumerate(_views(item, "indices").tolist()):
        nrm = _png(folder / f"{idx:03d}_normal.png").astype(np.float32) / 255.0
        alpha = _png(folder / f"{idx:03d}.png")[..., 3:].astype(np.float32) / 255.0
        n = nrm[..., :3] * nrm[..., 3:] * 2.0 - 1.0  # on black, decoded
        n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
        expected = (n + 1.0) / 2.0 * alpha  # re-encoded, lerp(0, n, alpha)
        got = _views(item, "normals")[k].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert (got[alpha[..., 0] == 0] == 0).all()


def _unproject(depth: np.ndarray, c2w: np.ndarray, K: np.ndarray) -> np.ndarray:
    """World points of every pixel: normalised pixel centres through K (OpenCV camera axes,
    planar depth), flipped to the OpenGL camera frame, then c2w."""
    h, w = depth.shape
    v, u = (np.mgrid[0:h, 0:w] + 0.5) / np.array([h, w])[:, None, None]
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    cam_gl = np.stack([x, -y, -depth, np.ones_like(depth)], axis=-1)
    return (cam_gl @ c2w.T)[..., :3]


@pytest.mark.parametrize("augment", [False, True])
def test_cameras_unproject_depth_onto_the_surface_and_normals_agree(
    renders: Path, augment: bool
) -> None:
    kw: dict[str, Any] = {"depth": "png16"}
    if augment:
        kw |= {"camera_rotation": True, "scale_probability": 1.0}
        item = _dataset(renders, **kw)[0]
    else:
        item = _plain(renders, **kw)[0]
    scale = float(item["scale"])
    rotation = item["rotation"].numpy()
    if augment:
        assert 0.7 <= scale <= 1.1 and not np.allclose(rotation, np.eye(4))
        assert rotation[2, 2] == 1.0 and np.allclose(
            rotation[:3, :3] @ rotation[:3, :3].T, np.eye(3)
        )
    else:
        assert scale == 1.0 and np.allclose(rotation, np.eye(4))
    f = 0.5 / math.tan(math.radians(50.0) / 2.0)  # upstream's fixed FOV 50
    K_expected = torch.tensor([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]])
    renders_cams = cams.training_cameras(UIDS[0], SEED, n=VIEWS, size=SIZE)
    c2ws, Ks = _views(item, "c2ws"), _views(item, "Ks")
    for k, idx in enumerate(_views(item, "indices").tolist()):
        torch.testing.assert_close(Ks[k], K_expected)
        # c2w = rotation @ (the rendered camera), translation scaled.
        expected = rotation.astype(np.float64) @ renders_cams[idx].c2w
        expected[:3, 3] *= scale
        np.testing.assert_allclose(c2ws[k].numpy(), expected, atol=1e-5)
        # The bounding-box centre (the origin) projects to the image centre.
        uv = project_points(torch.zeros(1, 3), c2ws[k], Ks[k])
        torch.testing.assert_close(uv, torch.tensor([[0.5, 0.5]]), atol=1e-5, rtol=0)
        # Depth + cameras: interior pixels unproject onto the (scaled) unit sphere ...
        depth = _views(item, "depths")[k, 0].numpy().astype(np.float64)
        alpha = _views(item, "alphas")[k, 0].numpy()
        interior = (alpha == 1.0) & (depth > 0)
        interior[1:-1, 1:-1] &= interior[:-2, 1:-1] & interior[2:, 1:-1]
        interior[1:-1, 1:-1] &= interior[1:-1, :-2] & interior[1:-1, 2:]
        assert interior.sum() > 100
        points = _unproject(depth, c2ws[k].numpy().astype(np.float64), Ks[k].numpy())[interior]
        np.testing.assert_allclose(np.linalg.norm(points, axis=-1), RADIUS * scale, atol=0.01)
        # ... and those points project back to their pixels through project_points.
        back = project_points(torch.from_numpy(points).float(), c2ws[k], Ks[k]).numpy()
        rows, cols = np.nonzero(interior)
        np.testing.assert_allclose(back[:, 0] * SIZE, cols + 0.5, atol=0.05)
        np.testing.assert_allclose(back[:, 1] * SIZE, rows + 0.5, atol=0.05)
        # Normals are world-space (rotated with the cameras): outward, along the point.
        n = _views(item, "normals")[k].permute(1, 2, 0).numpy()[interior] * 2.0 - 1.0
        cos = np.sum(n * points / np.linalg.norm(points, axis=-1, keepdims=True), axis=-1)
        assert np.median(cos) > 0.999 and cos.min() > 0.98
    # Flattened cameras: encoder vectors (c2w 3x4 + fx, fy, cx, cy) and render cameras.
    enc = item["input_cameras"]
    torch.testing.assert_close(enc[:, :12], item["input_c2ws"][:, :3, :4].reshape(6, 12))
    torch.testing.assert_close(enc[:, 12:], torch.tensor([f, f, 0.5, 0.5]).expand(6, 4))
    torch.testing.assert_close(item["render_cameras"][:, :16], c2ws.reshape(10, 16))
    torch.testing.assert_close(item["render_cameras"][:, 16:], Ks.reshape(10, 9))


def test_shards_give_the_folder_items_and_batch(renders: Path, tmp_path: Path) -> None:
    layout = renders / "rendering_random_32views"
    objects = {u: {p.name: p.read_bytes() for p in (layout / u).iterdir()} for u in UIDS}
    shards = write_shard_set(tmp_path / "shards", "instantmesh32", objects, shard_size=1)
    from_folders = _dataset(renders, seed=5)
    from_shards = _dataset(shards, seed=5)
    items = list(from_shards)
    assert [it["uid"] for it in items] == list(UIDS)
    for i, item in enumerate(items):
        ref = from_folders[i]
        for key in ITEM_KEYS:
            if key != "uid":
                torch.testing.assert_close(item[key], ref[key], rtol=0, atol=0)
    loader = torch.utils.data.DataLoader(
        _dataset(shards, seed=5), batch_size=2, num_workers=2, collate_fn=None
    )
    batches = list(loader)
    uids = [u for b in batches for u in b["uid"]]
    assert sorted(uids) == list(UIDS)
    batch = batches[0]
    n = len(batch["uid"])
    assert batch["input_images"].shape == (n, 6, 3, SIZE, SIZE)
    assert batch["render_cameras"].shape == (n, 10, 25)


def test_bad_objects_are_loud_or_skipped(renders: Path, tmp_path: Path) -> None:
    with pytest.raises(CorruptMemberError, match=r"'sphere'.*cameras\.npz.*10 views.*from 32"):
        Instantmesh32Dataset(renders)[0]  # upstream's total_view_n 32 on a 10-view render
    with pytest.raises(CorruptMemberError, match=r"cameras\.npz.*fov_deg \[50\.0\].*FOV is 30"):
        _dataset(renders, fov=30.0)[0]
    layout = renders / "rendering_random_32views"
    objects = {u: {p.name: p.read_bytes() for p in (layout / u).iterdir()} for u in UIDS}
    shards = write_shard_set(tmp_path / "shards", "instantmesh32", objects, shard_size=1)
    # Truncate a normal map of the first object, remove a depth map of the second.
    data = objects[UIDS[0]]["004_normal.png"]
    rewrite_shard(
        shards / shard_name(0), {f"{encode_key(UIDS[0])}.004_normal.png": data[: len(data) // 3]}
    )
    rewrite_shard(shards / shard_name(1), {f"{encode_key(UIDS[1])}.007_depth.png": None})
    with pytest.raises(CorruptMemberError) as err:
        list(_dataset(shards))
    assert "'sphere'" in str(err.value) and "004_normal.png" in str(err.value)
    assert str(shards / shard_name(0)) in str(err.value)
    ds = _dataset(shards, on_error="skip")
    assert list(ds) == []
    assert [(r.uid, r.member) for r in ds.skipped] == [
        (UIDS[0], "004_normal.png"),
        (UIDS[1], "007_depth.png"),
    ]
    # From folders: a missing file names the folder and the file.
    copy = tmp_path / "renders"
    shutil.copytree(layout, copy / "rendering_random_32views")
    (copy / "rendering_random_32views" / UIDS[1] / "002.png").unlink()
    with pytest.raises(MissingMemberError) as missing:
        _dataset(copy)[1]
    assert isinstance(missing.value, FileNotFoundError)
    assert str(copy / "rendering_random_32views" / UIDS[1]) in str(missing.value)
    assert "002.png" in str(missing.value)
