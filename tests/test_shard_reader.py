"""Tar-shard reader and the datasets on it: same items as the folders, splits over ranks and
DataLoader workers without duplicates or loss, loud errors, skip reports, webdataset / Ray Data
compatibility (``instantmesh.shard_reader``, ``Zero123ppDataset`` over shards)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import pickle
import tarfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from instantmesh.shard_reader import (
    CorruptMemberError,
    MissingMemberError,
    SampleError,
    ShardError,
    ShardReader,
    Split,
    current_split,
    iter_tar,
    list_shards,
)
from instantmesh.zero123pp_data import Zero123ppDataset, grid_to_views_tensor
from rendering.shard_format import (
    INDEX_NAME,
    INDEX_SCHEMA,
    SUCCESS_NAME,
    encode_key,
    shard_name,
    write_shard,
)

SIZE = 16
Z123_FILES = tuple(f"{i:03d}.png" for i in range(7))


def _png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def zero123pp_files(n: int) -> dict[str, bytes]:
    """Seven RGBA views on white whose opaque square has a colour unique to (object n, view)."""
    files: dict[str, bytes] = {}
    for v in range(7):
        arr = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
        arr[...] = (255, 255, 255, 0)
        arr[4:12, 4:12] = (n % 256, (7 * n + 30 * v) % 256, v * 30, 255)
        files[f"{v:03d}.png"] = _png(arr, "RGBA")
    buf = io.BytesIO()
    np.savez(buf, cam_poses=np.zeros((7, 3, 4), dtype=np.float32))
    files["cameras.npz"] = buf.getvalue()
    files["render.json"] = json.dumps({"uid": n}).encode()
    return files


def uid_of(n: int) -> str:
    return f"obj.{n:03d}"  # a '.' in every uid: keys are percent-encoded


def write_folders(root: Path, objects: Mapping[str, Mapping[str, bytes]], layout_dir: str) -> Path:
    for uid, files in objects.items():
        folder = root / layout_dir / uid
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    return root


def write_shard_set(
    out: Path, layout: str, objects: Mapping[str, Mapping[str, bytes]], shard_size: int
) -> Path:
    """Shards, ``index.parquet`` and ``_SUCCESS.json`` in the ``rendering.shard_format`` layout
    (the fields the readers use), written with the format's own ``write_shard``."""
    out.mkdir(parents=True, exist_ok=True)
    uids = sorted(objects)
    rows: list[dict[str, Any]] = []
    shards = []
    for n, start in enumerate(range(0, len(uids), shard_size)):
        chunk = uids[start : start + shard_size]
        name = shard_name(n)
        with open(out / name, "wb") as f:
            record = write_shard(f, [(u, objects[u]) for u in chunk])
        rows += [{"shard": name, **dataclasses.asdict(m)} for m in record.members]
        shards.append({"name": name, "objects": len(chunk), "bytes": record.bytes})
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), out / INDEX_NAME)
    members = sorted(objects[uids[0]])
    marker = {"layout": layout, "members": members, "shards": shards}
    (out / SUCCESS_NAME).write_text(json.dumps(marker))
    return out


def rewrite_shard(path: Path, edit: dict[str, bytes | None]) -> None:
    """Rewrite a shard with members replaced (bytes) or removed (None); ``edit`` keys are tar
    member names."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            new = edit.get(name, data)
            if new is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(new)
            tar.addfile(info, io.BytesIO(new))


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, bytes]]:
    return {uid_of(n): zero123pp_files(n) for n in range(10)}


@pytest.fixture(scope="module")
def folders(objects: dict[str, dict[str, bytes]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folders(tmp_path_factory.mktemp("renders"), objects, "rendering_zero123plus")


def shard_set(tmp: Path, objects: Mapping[str, Mapping[str, bytes]], shard_size: int) -> Path:
    return write_shard_set(tmp / f"shards-{shard_size}", "zero123pp", objects, shard_size)


# ---------------------------------------------------------------------------------------------
# Same items, streaming, fsspec
# ---------------------------------------------------------------------------------------------


def test_shards_give_the_folder_items(
    objects: dict[str, dict[str, bytes]], folders: Path, tmp_path: Path
) -> None:
    shards = shard_set(tmp_path, objects, 4)
    assert [Path(u).name for u in list_shards(shards)] == [shard_name(i) for i in range(3)]
    from_folders = Zero123ppDataset(folders, view_size=SIZE)
    from_shards = Zero123ppDataset(shards, view_size=SIZE)
    assert from_folders.source_kind == "folders" and from_shards.source_kind == "shards"
    assert len(from_shards) == len(from_folders) == 10  # from _SUCCESS.json's shard counts
    items = list(from_shards)
    assert [it["uid"] for it in items] == sorted(objects)  # ascending uid, decoded keys
    for i, item in enumerate(items):
        ref = from_folders[i]
        assert item["uid"] == ref["uid"]
        torch.testing.assert_close(item["cond"], ref["cond"], rtol=0, atol=0)
        torch.testing.assert_close(item["target"], ref["target"], rtol=0, atol=0)
    # The values are the written pixels: view 3 of object 5 at its opaque square.
    views = grid_to_views_tensor(items[5]["target"])
    expected = torch.tensor([5, (35 + 90) % 256, 90], dtype=torch.float32) / 255.0
    torch.testing.assert_close(views[2][:, 8, 8], expected)
    assert torch.all(views[2][:, 0, 0] == 1.0)  # background on white
    with pytest.raises(TypeError, match="no random access"):
        from_shards[0]


def test_tar_stream_groups_members_and_decodes_keys(
    objects: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    shards = shard_set(tmp_path, objects, 4)
    samples = list(iter_tar(list_shards(shards)[1]))
    assert [s.uid for s in samples] == sorted(objects)[4:8]
    assert [s.position for s in samples] == [0, 1, 2, 3]
    assert samples[0].key == encode_key(samples[0].uid) and "." not in samples[0].key
    assert dict(samples[0].members) == objects[samples[0].uid]
    with pytest.raises(MissingMemberError, match=r"007\.png"):
        samples[0].read("007.png")


def test_reads_fsspec_urls(objects: dict[str, dict[str, bytes]], tmp_path: Path) -> None:
    import fsspec

    shards = shard_set(tmp_path, objects, 4)
    fs = fsspec.filesystem("memory")
    for p in shards.iterdir():
        fs.pipe(f"/shardset/{p.name}", p.read_bytes())
    try:
        ds = Zero123ppDataset("memory://shardset", view_size=SIZE)
        assert [it["uid"] for it in ds] == sorted(objects)
        reader = ShardReader("memory://shardset")
        assert reader.counts == {shard_name(0): 4, shard_name(1): 4, shard_name(2): 2}
    finally:
        fs.rm("/shardset", recursive=True)


def test_unfinished_or_foreign_sets_are_refused(
    objects: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    shards = shard_set(tmp_path, objects, 4)
    (shards / SUCCESS_NAME).rename(shards / "marker.bak")
    with pytest.raises(FileNotFoundError, match="unfinished"):
        Zero123ppDataset(shards)
    (shards / "marker.bak").write_text(json.dumps({"layout": "instantmesh32"}))
    (shards / "marker.bak").rename(shards / SUCCESS_NAME)
    with pytest.raises(ValueError, match="'instantmesh32' shards"):
        Zero123ppDataset(shards)
    with pytest.raises(ValueError, match="uids select object folders"):
        Zero123ppDataset(list_shards(shards), uids=["obj.001"])


# ---------------------------------------------------------------------------------------------
# Splits: ranks x DataLoader workers
# ---------------------------------------------------------------------------------------------


def _uids_over(ds_for_rank: Any, world_size: int, num_workers: int) -> list[str]:
    seen: list[str] = []
    for rank in range(world_size):
        loader = torch.utils.data.DataLoader(
            ds_for_rank(rank), batch_size=None, num_workers=num_workers
        )
        seen += [item["uid"] for item in loader]
    return seen


@pytest.mark.parametrize(
    ("shard_size", "split", "per_sample"),
    [
        (2, "auto", False),  # 5 shards >= 4 splits: whole shards per split
        (4, "auto", True),  # 3 shards < 4 splits: every split streams every shard
        (4, "shard", False),  # forced shard-level with 3 shards: one split idle, none lost
    ],
)
def test_splits_cover_every_object_once(
    objects: dict[str, dict[str, bytes]],
    tmp_path: Path,
    shard_size: int,
    split: str,
    per_sample: bool,
) -> None:
    shards = shard_set(tmp_path, objects, shard_size)
    reader = ShardReader(shards, split=split)  # type: ignore[arg-type]
    parts = []
    for rank in range(2):
        for worker in range(2):
            s = Split(rank, 2, worker, 2)
            assert reader.plan(s)[1] is per_sample
            parts.append([t.uid for t in reader.iter_samples(s)])
    flat = [u for p in parts for u in p]
    assert sorted(flat) == sorted(objects) and len(flat) == len(set(flat))
    sizes = sorted(len(p) for p in parts)
    if per_sample:
        assert sizes[-1] - sizes[0] <= 1  # balanced to one sample
    elif shard_size == 2:
        assert sizes == [2, 2, 2, 4]  # whole shards: split 0 gets shards 0 and 4
    else:
        assert sizes == [0, 2, 4, 4]  # 3 shards over 4 splits: the last split reads nothing

    # The same through real DataLoader workers (2 ranks x 2 workers).
    def make(rank: int) -> Zero123ppDataset:
        return Zero123ppDataset(shards, view_size=SIZE, rank=rank, world_size=2, split=split)  # type: ignore[arg-type]

    seen = _uids_over(make, world_size=2, num_workers=2)
    assert sorted(seen) == sorted(objects) and not [u for u, c in Counter(seen).items() if c > 1]


def test_folders_split_over_ranks_and_workers(
    objects: dict[str, dict[str, bytes]], folders: Path
) -> None:
    def make(rank: int) -> Zero123ppDataset:
        return Zero123ppDataset(folders, view_size=SIZE, rank=rank, world_size=2, shuffle=True)

    seen = _uids_over(make, world_size=2, num_workers=2)
    assert sorted(seen) == sorted(objects) and len(seen) == len(set(seen))
    # Shuffled per epoch, identically on every rank (same seed): each epoch still covers all.
    ds = make(0)
    ds.set_epoch(0)
    first = [it["uid"] for it in ds]
    ds.set_epoch(1)
    second = [it["uid"] for it in ds]
    assert first != second and sorted(first) != sorted(second)
    other = [it["uid"] for it in _epoch(make(1), 1)]
    assert sorted(second + other) == sorted(objects)


def _epoch(ds: Zero123ppDataset, epoch: int) -> list[dict[str, Any]]:
    ds.set_epoch(epoch)
    return list(ds)


def test_rank_comes_from_torch_distributed(
    objects: dict[str, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = shard_set(tmp_path, objects, 2)
    ds = Zero123ppDataset(shards, view_size=SIZE)
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    assert current_split() == Split(1, 2, 0, 1)
    assert current_split(0, 1) == Split(0, 1, 0, 1)  # explicit arguments win
    rank1 = [it["uid"] for it in ds]
    assert rank1 == sorted(objects)[2:4] + sorted(objects)[6:8]  # shards 1 and 3 of 5
    # A spawned worker gets the rank resolved in the main process (it has no group itself).
    clone = pickle.loads(pickle.dumps(ds))
    assert (clone.rank, clone.world_size) == (1, 2)
    with pytest.raises(ValueError, match="both rank and world_size"):
        Zero123ppDataset(shards, rank=1)


# ---------------------------------------------------------------------------------------------
# Loud by default; skip reports
# ---------------------------------------------------------------------------------------------


def _truncated_png(objects: dict[str, dict[str, bytes]], uid: str, name: str) -> bytes:
    data = objects[uid][name]
    return data[: len(data) // 2]


def test_truncated_png_member_raises_naming_uid_shard_member(
    objects: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    shards = shard_set(tmp_path, objects, 4)
    bad = uid_of(5)
    shard = shards / shard_name(1)
    rewrite_shard(shard, {f"{encode_key(bad)}.003.png": _truncated_png(objects, bad, "003.png")})
    with pytest.raises(CorruptMemberError) as err:
        list(Zero123ppDataset(shards, view_size=SIZE))
    msg = str(err.value)
    assert bad in msg and str(shard) in msg and "003.png" in msg and "not a readable PNG" in msg
    assert (err.value.uid, err.value.member) == (bad, "003.png")


def test_removed_member_raises_even_when_not_decoded(
    objects: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    shards = shard_set(tmp_path, objects, 4)
    rewrite_shard(shards / shard_name(0), {f"{encode_key(uid_of(1))}.render.json": None})
    with pytest.raises(MissingMemberError, match=r"'obj\.001'.*render\.json.*shard-000000\.tar"):
        list(Zero123ppDataset(shards, view_size=SIZE))
    rewrite_shard(shards / shard_name(0), {f"{encode_key(uid_of(2))}.006.png": None})
    (shards / SUCCESS_NAME).write_text(json.dumps({"layout": "zero123pp"}))  # no member list
    with pytest.raises(FileNotFoundError, match=r"'obj\.002'.*006\.png"):
        list(Zero123ppDataset(shards, view_size=SIZE))  # still loud
    ds = Zero123ppDataset(shards, view_size=SIZE, on_error="skip")
    assert [it["uid"] for it in ds] == [u for u in sorted(objects) if u not in (uid_of(2),)]
    # Without the member list only what the dataset decodes is checked: obj.001 (render.json
    # missing) still makes a valid item; obj.002 (a target view missing) does not.
    assert [(r.uid, r.member) for r in ds.skipped] == [(uid_of(2), "006.png")]


def test_skip_mode_leaves_bad_objects_out_and_reports_them(
    objects: dict[str, dict[str, bytes]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shards = shard_set(tmp_path, objects, 4)
    truncated, removed = uid_of(5), uid_of(8)
    rewrite_shard(
        shards / shard_name(1),
        {f"{encode_key(truncated)}.003.png": _truncated_png(objects, truncated, "003.png")},
    )
    rewrite_shard(shards / shard_name(2), {f"{encode_key(removed)}.000.png": None})
    ds = Zero123ppDataset(shards, view_size=SIZE, on_error="skip")
    with caplog.at_level(logging.INFO, logger="instantmesh.shard_reader"):
        got = [it["uid"] for it in ds]
    assert got == [u for u in sorted(objects) if u not in (truncated, removed)]
    records = ds.skipped
    assert [(r.uid, Path(r.where).name, r.member, r.epoch) for r in records] == [
        (truncated, shard_name(1), "003.png", 0),
        (removed, shard_name(2), "000.png", 0),
    ]
    assert records[0].error.startswith("CorruptMemberError: not a readable PNG")
    assert records[1].error.startswith("MissingMemberError")
    line = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(line) == 1 and "epoch 0" in line[0] and "skipped 2 of 10 objects" in line[0]
    assert truncated in line[0] and removed in line[0]
    summary = ds.skip_summary(epoch=0)
    assert summary.splitlines()[0] == "zero123pp: 2 object(s) skipped (epoch 0)"
    assert ds.skip_summary(epoch=1).startswith("zero123pp: 0 object(s)")

    # Through DataLoader workers the records reach the main process too.
    ds2 = Zero123ppDataset(shards, view_size=SIZE, on_error="skip")
    loader = torch.utils.data.DataLoader(ds2, batch_size=2, num_workers=2)
    n = sum(len(batch["uid"]) for batch in loader)
    assert n == 8
    assert sorted(r.uid for r in ds2.skipped) == [truncated, removed]
    assert {r.worker for r in ds2.skipped} <= {0, 1}


def test_truncated_tar_is_a_shard_error(
    objects: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    shards = shard_set(tmp_path, objects, 4)
    shard = shards / shard_name(1)
    index = pq.read_table(shards / INDEX_NAME).to_pylist()
    # Cut inside the data of obj.006's 002.png: tar itself reports the end of data.
    row = next(r for r in index if r["shard"] == shard.name and r["member"].endswith("6.002.png"))
    data = shard.read_bytes()
    shard.write_bytes(data[: row["offset"] + row["size"] // 2])
    with pytest.raises(ShardError, match=r"'obj\.006'.*shard-000001\.tar.*unreadable tar"):
        list(Zero123ppDataset(shards, view_size=SIZE))
    ds = Zero123ppDataset(shards, view_size=SIZE, on_error="skip")
    got = [it["uid"] for it in ds]
    # obj.004 and obj.005 came before the cut; obj.006 and obj.007 are lost with the shard's
    # tail; the other shards are read.
    assert got == [u for u in sorted(objects) if u not in (uid_of(6), uid_of(7))]
    assert [(r.uid, r.member) for r in ds.skipped] == [(uid_of(6), "obj%2E006.002.png")]


def test_broken_shard_in_sample_level_splits_is_reported_once(
    objects: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    shards = shard_set(tmp_path, objects, 4)  # 3 shards < 4 splits: every split reads all
    shard = shards / shard_name(1)
    index = pq.read_table(shards / INDEX_NAME).to_pylist()
    row = next(r for r in index if r["shard"] == shard.name and r["member"].endswith("6.002.png"))
    shard.write_bytes(shard.read_bytes()[: row["offset"] + 10])
    reader = ShardReader(shards)
    errors: list[ShardError] = []
    seen: list[str] = []
    for rank in range(2):
        for worker in range(2):
            split = Split(rank, 2, worker, 2)
            assert reader.plan(split)[1]  # sample level
            seen += [t.uid for t in reader.iter_samples(split, errors.append)]
    assert len(errors) == 1 and errors[0].uid == uid_of(6)
    assert sorted(seen) == [u for u in sorted(objects) if u not in (uid_of(6), uid_of(7))]


def test_tar_cut_between_samples_is_caught_by_the_counts(
    objects: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    shards = shard_set(tmp_path, objects, 4)
    shard = shards / shard_name(0)
    index = pq.read_table(shards / INDEX_NAME).to_pylist()
    first_of_last = min(
        r["offset"] for r in index if r["shard"] == shard.name and r["uid"] == uid_of(3)
    )
    # Cut at obj.003's first header: a tar reader sees a clean, shorter archive.
    shard.write_bytes(shard.read_bytes()[: first_of_last - 512])
    assert [s.uid for s in iter_tar(str(shard))] == [uid_of(i) for i in range(3)]
    with pytest.raises(
        ShardError, match=r"3 samples in the tar \(the last is 'obj\.002'\), _SUCCESS\.json lists 4"
    ):
        list(Zero123ppDataset(shards, view_size=SIZE))


def test_folder_errors_name_the_folder_and_file(
    objects: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    root = write_folders(tmp_path, objects, "rendering_zero123plus")
    folder = root / "rendering_zero123plus" / uid_of(2)
    (folder / "004.png").write_bytes(_truncated_png(objects, uid_of(2), "004.png"))
    ds = Zero123ppDataset(root, view_size=SIZE)
    with pytest.raises(CorruptMemberError) as err:
        ds[2]
    assert str(folder) in str(err.value) and "004.png" in str(err.value)
    with pytest.raises(SampleError, match=r"'obj\.002'"):
        list(ds)
    skipping = Zero123ppDataset(root, view_size=SIZE, on_error="skip")
    assert len(list(skipping)) == 9
    assert [(r.uid, r.where, r.member) for r in skipping.skipped] == [
        (uid_of(2), str(folder), "004.png")
    ]


# ---------------------------------------------------------------------------------------------
# Compatibility: the webdataset package and Ray Data read the same shards
# ---------------------------------------------------------------------------------------------


def test_webdataset_package_reads_the_shards(
    objects: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    import webdataset as wds

    from rendering.shard_format import decode_key

    shards = shard_set(tmp_path, objects, 4)
    samples = list(wds.WebDataset([str(u) for u in list_shards(shards)], shardshuffle=False))
    assert [decode_key(s["__key__"]) for s in samples] == sorted(objects)
    for s in samples:
        files = objects[decode_key(s["__key__"])]
        assert {k: v for k, v in s.items() if not k.startswith("__")} == files


def test_ray_data_reads_the_shards(
    objects: dict[str, dict[str, bytes]], tmp_path: Path, ray_local: None
) -> None:
    import ray.data

    from rendering.shard_format import decode_key

    shards = shard_set(tmp_path, objects, 4)
    ds = ray.data.read_webdataset(str(shards), file_extensions=["tar"], decoder=None)
    rows = ds.take_all()
    assert sorted(decode_key(r["__key__"]) for r in rows) == sorted(objects)
    for r in rows:
        files = objects[decode_key(r["__key__"])]
        assert {k: r[k] for k in files} == files
