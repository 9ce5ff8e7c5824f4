"""``imesh shards``: WebDataset tar shards of a finished render stage (rendering.shard_format)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import fsspec
import pytest

from pipelines.runner import RunOptions
from pipelines.schema import read_parquet
from pipelines.shards import ShardsConfig, check_shards_config, run_shards, shard_item
from pipelines.stage import ItemContext
from rendering import procedural as pg
from rendering import shard_format as sf
from rendering.output_layouts import LAYOUT_DIRS

SHAPES = {
    "box": "box",
    "chair.v2": "sphere",
    "cone": "cone",
    "torus": "torus",
    "capsule": "capsule",
}
"""uid -> procedural shape; ``chair.v2`` has a dot, which its key must escape."""
VIEWS = 2


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Path:
    """One render output root with both shardable layouts of five tiny objects (cpu backend)."""
    from pipelines.render import RenderConfig, run_render

    root = tmp_path_factory.mktemp("shards")
    src = root / "meshes"
    src.mkdir()
    for i, (uid, shape) in enumerate(SHAPES.items()):
        mesh = pg.textured(pg.make_shape(shape, i), pg.make_texture("checker", i, size=16))
        (src / f"{uid}.glb").write_bytes(pg.glb_bytes(mesh))
    out = root / "renders"
    for layout in sf.SHARD_LAYOUTS:
        report = run_render(
            RenderConfig(
                out=str(out),
                input=str(src),
                layout=layout,  # type: ignore[arg-type]
                backend="cpu",
                size=32,
                views=VIEWS,
                run=RunOptions(workers=1, shard_size=8, progress=False),
            )
        )
        assert report.ok == len(SHAPES), report.errors
    return out


def _cfg(renders: Path, out: Any, **kwargs: Any) -> ShardsConfig:
    run = RunOptions(workers=1, shard_size=1, progress=False)
    return ShardsConfig(renders=str(renders), out=str(out), run=run, **kwargs)


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))}


# --------------------------------------------------------------------------------------------
# The format contract (library level).
# --------------------------------------------------------------------------------------------


def test_keys_escape_dots_slashes_percent_and_invert() -> None:
    assert sf.encode_key("chair.v2") == "chair%2Ev2"
    assert sf.encode_key("a%b/c") == "a%25b%2Fc"
    assert sf.encode_key("tab\there") == "tab%09here"
    assert sf.encode_key("椅子_1-x") == "椅子_1-x"  # printable unicode kept
    for uid in ("chair.v2", "a%b/c", "tab\there", "椅子.€", "x" * 200, "%2E"):
        key = sf.encode_key(uid)
        assert "." not in key and "/" not in key
        assert sf.decode_key(key) == uid
    for bad in ("a.b", "a/b", "a%2e", "a%2", "%", "", "a%FF"):
        with pytest.raises(sf.ShardFormatError):
            sf.decode_key(bad)
    assert sf.member_name("chair%2Ev2", "000_depth16.png") == "chair%2Ev2.000_depth16.png"
    assert sf.split_member("chair%2Ev2.000_depth16.png") == ("chair%2Ev2", "000_depth16.png")
    with pytest.raises(sf.ShardFormatError):
        sf.split_member("no-dot")
    assert sf.shard_name(7) == "shard-000007.tar"


def test_layout_members_follow_the_render_layouts() -> None:
    assert sf.layout_members("instantmesh32", views=2) == (
        "000.png", "000_depth.png", "000_depth16.png", "000_normal.png",
        "001.png", "001_depth.png", "001_depth16.png", "001_normal.png",
        "cameras.npz", "render.json",
    )  # fmt: skip
    assert len(sf.layout_members("instantmesh32")) == 32 * 4 + 2
    views = tuple(f"{i:03d}.png" for i in range(7))
    assert sf.layout_members("zero123pp") == (*views, "cameras.npz", "render.json")
    with pytest.raises(sf.ShardFormatError, match="eval"):
        sf.layout_members("eval")


def test_write_shard_is_deterministic_with_exact_offsets_and_sizes() -> None:
    samples = [
        ("b.1", {"x.png": b"\x89PNG" * 300, "cameras.npz": b"npz"}),
        ("L" * 200, {"render.json": b"{}"}),  # member name > 100 bytes: a PAX path record
        ("椅子", {"000.png": bytes(range(256)) * 5}),
    ]
    a, b = io.BytesIO(), io.BytesIO()
    rec = sf.write_shard(a, iter(samples))
    assert sf.write_shard(b, samples) == rec
    data = a.getvalue()
    assert data == b.getvalue() and len(data) == rec.bytes
    assert hashlib.sha256(data).hexdigest() == rec.sha256
    assert len(data) == sf.shard_tar_bytes(
        sum(sf.member_tar_bytes(m.member, m.size) for m in rec.members)
    )
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
        assert [i.name for i in infos] == [m.member for m in rec.members]
        assert [i.name for i in infos][:2] == ["b%2E1.cameras.npz", "b%2E1.x.png"]  # sorted
        for info, m in zip(infos, rec.members, strict=True):
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
            assert info.mode == 0o644 and info.isreg()
            assert info.offset_data == m.offset and info.size == m.size
            payload = data[m.offset : m.offset + m.size]
            assert payload == tar.extractfile(info).read()  # type: ignore[union-attr]
            assert hashlib.sha256(payload).hexdigest() == m.sha256
            assert sf.decode_key(m.key) == m.uid


# --------------------------------------------------------------------------------------------
# The stage.
# --------------------------------------------------------------------------------------------


def test_shards_index_and_success(renders: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    result = run_shards(_cfg(renders, out, shard_size=2))
    uids = sorted(SHAPES)
    assert result.complete and result.report.ok == 3 and result.objects == len(uids)
    assert sorted(_tars(out)) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert result.plan.shards == [uids[0:2], uids[2:4], uids[4:5]]
    members = sf.layout_members("instantmesh32", views=VIEWS)

    index = read_parquet(str(out / sf.INDEX_NAME))
    assert index.schema.equals(sf.INDEX_SCHEMA)
    rows = index.to_pylist()
    assert len(rows) == len(uids) * len(members)
    assert [r["uid"] for r in rows[:: len(members)]] == uids  # ascending uids, shard by shard
    objects = renders / LAYOUT_DIRS["instantmesh32"]
    for r in rows:
        key, file_name = sf.split_member(r["member"])
        assert key == r["key"] == sf.encode_key(r["uid"])
        with open(out / r["shard"], "rb") as fh:
            fh.seek(r["offset"])
            data = fh.read(r["size"])
        assert data == (objects / r["uid"] / file_name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]

    success = json.loads((out / sf.SUCCESS_NAME).read_text())
    assert success["counts"] == {
        "shards": 3,
        "objects": 5,
        "members": 5 * len(members),
        "bytes": sum(len(b) for b in _tars(out).values()),
        "render_rows": 5,
    }
    assert success["layout"] == "instantmesh32" and success["members"] == list(members)
    assert success["policy"] == {"shard_size": 2, "max_bytes": None}
    assert success["source"]["status"].endswith("render-instantmesh32/status.parquet")
    assert success["provenance"]["package"] == "instantmesh-pipeline"
    for s in success["shards"]:
        assert hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    status = read_parquet(str(out / "shards-instantmesh32" / "status.parquet")).to_pylist()
    assert sorted(r["uid"] for r in status) == ["shard-000000", "shard-000001", "shard-000002"]
    assert {r["status"] for r in status} == {"ok"}


def test_two_runs_give_byte_identical_shards(renders: Path, tmp_path: Path) -> None:
    run_shards(_cfg(renders, tmp_path / "a", shard_size=3))
    run_shards(_cfg(renders, tmp_path / "b", shard_size=3))
    a, b = _tars(tmp_path / "a"), _tars(tmp_path / "b")
    assert list(a) == ["shard-000000.tar", "shard-000001.tar"] and a == b


def test_resume_rewrites_only_the_missing_shard(renders: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    cfg = _cfg(renders, out, shard_size=2)
    run_shards(cfg)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("shard-*.tar")}
    parts = out / "shards-instantmesh32" / "parts"
    target = "shard-000001"
    (out / f"{target}.tar").unlink()
    killed = [p for p in parts.iterdir() if target in read_parquet(str(p))["uid"].to_pylist()]
    assert len(killed) == 1  # --run.shard-size 1: one shard's status per part
    killed[0].unlink()
    (out / f"{target}.tar.tmp-0123").write_bytes(b"partial")  # a killed run's leftover

    again = run_shards(cfg)
    assert again.report.processed == 1 and again.report.skipped_done == 2 and again.complete
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("shard-*.tar")}
    assert after.keys() == before.keys()
    for name in before:
        if name == f"{target}.tar":
            assert after[name][1] == before[name][1]  # rewritten, the same bytes
        else:
            assert after[name] == before[name]  # untouched: same mtime
    assert not list(out.glob("*.tmp-*"))

    # The tar alone deleted (its ok row kept): recorded as ShardMissing and rewritten.
    (out / "shard-000002.tar").unlink()
    third = run_shards(cfg)
    assert third.report.processed == 1 and (out / "shard-000002.tar").exists()
    assert (out / "shard-000002.tar").read_bytes() == before["shard-000002.tar"][1]
    nothing = run_shards(cfg)
    assert nothing.report.processed == 0 and nothing.complete


def test_webdataset_reads_every_sample(renders: Path, tmp_path: Path) -> None:
    import webdataset as wds

    out = tmp_path / "shards"
    run_shards(_cfg(renders, out, shard_size=2))
    urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=True))
    members = sf.layout_members("instantmesh32", views=VIEWS)
    assert [s["__key__"] for s in samples] == [sf.encode_key(u) for u in sorted(SHAPES)]
    objects = renders / LAYOUT_DIRS["instantmesh32"]
    for s in samples:
        uid = sf.decode_key(s["__key__"])
        assert sorted(k for k in s if not k.startswith("__")) == list(members)
        for name in members:
            assert s[name] == (objects / uid / name).read_bytes(), (uid, name)


def test_zero123pp_layout(renders: Path, tmp_path: Path) -> None:
    out = tmp_path / "z"
    result = run_shards(_cfg(renders, out, layout="zero123pp"))
    assert result.complete and list(_tars(out)) == ["shard-000000.tar"]
    members = sf.layout_members("zero123pp")
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names == [sf.member_name(sf.encode_key(u), m) for u in sorted(SHAPES) for m in members]
    index = read_parquet(str(out / sf.INDEX_NAME)).to_pylist()
    data = (out / "shard-000000.tar").read_bytes()
    objects = renders / LAYOUT_DIRS["zero123pp"]
    for r in index:
        payload = data[r["offset"] : r["offset"] + r["size"]]
        assert payload == (objects / r["uid"] / sf.split_member(r["member"])[1]).read_bytes()
        assert hashlib.sha256(payload).hexdigest() == r["sha256"]
    assert (out / "shards-zero123pp" / "status.parquet").exists()


def test_max_bytes_closes_shards_before_they_exceed(renders: Path, tmp_path: Path) -> None:
    one = run_shards(_cfg(renders, tmp_path / "one", shard_size=1))
    sizes = sorted(len(b) for b in _tars(tmp_path / "one").values())
    limit = 2 * sizes[-1]  # room for two objects (one tar's end padding counts once)
    out = tmp_path / "capped"
    capped = run_shards(_cfg(renders, out, max_bytes=limit))
    assert one.complete and capped.complete
    tars = _tars(out)
    assert all(len(b) <= limit for b in tars.values())
    assert 1 < len(tars) < len(SHAPES)
    assert [u for s in capped.plan.shards for u in s] == sorted(SHAPES)
    for i in range(len(tars) - 1):  # each closed shard could not take the next object
        nxt = capped.plan.shards[i + 1][0]
        grown = capped.plan.shards[i] + [nxt]
        bytes_if_grown = sum(
            sf.member_tar_bytes(r["member"], r["size"])
            for r in read_parquet(str(tmp_path / "one" / sf.INDEX_NAME)).to_pylist()
            if r["uid"] in grown
        )
        assert sf.shard_tar_bytes(bytes_if_grown) > limit


def test_url_outputs_file_and_memory(renders: Path, tmp_path: Path) -> None:
    local = tmp_path / "local"
    run_shards(_cfg(renders, local, shard_size=2))
    expected = _tars(local)
    # A file:// URL through the whole stage on Ray.
    via_url = run_shards(_cfg(renders, f"file://{tmp_path / 'url'}", shard_size=2))
    assert via_url.complete and _tars(tmp_path / "url") == expected
    # memory:// (an object store's code path: local scratch file, upload under a temporary
    # name, rename) in this process: each Ray worker would have its own memory filesystem.
    import pipelines.shards as shards_mod

    url = "memory://imesh-test-shards/out"
    cfg = _cfg(renders, url, shard_size=2)
    for row in shards_mod._manifest(cfg, check_shards_config(cfg)).to_pylist():
        result = shard_item(row, ItemContext(uid=row["uid"], attempt=1, config=cfg))
        assert result["shard"] == f"{row['uid']}.tar"
    fs = fsspec.filesystem("memory")
    try:
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.find("/imesh-test-shards/out"))
        assert names == sorted(expected)  # no temporary left beside them
        for name, data in expected.items():
            assert fs.cat_file(f"/imesh-test-shards/out/{name}") == data
    finally:
        fs.rm("/imesh-test-shards", recursive=True)


def test_a_failed_write_leaves_no_file_under_the_final_name(
    renders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.shards as shards_mod

    cfg = _cfg(renders, tmp_path / "out", shard_size=5)
    plan = check_shards_config(cfg)
    row = shards_mod._manifest(cfg, plan).to_pylist()[0]
    ctx = ItemContext(uid=row["uid"], attempt=1, config=cfg)
    real = shards_mod.read_object
    seen: list[str] = []

    def failing(fs: Any, root: str, uid: str, members: Any) -> dict[str, bytes]:
        seen.append(uid)
        written = list((tmp_path / "out").iterdir())
        if len(seen) == 3:  # mid-shard: two objects already streamed into the temporary tar
            assert [p.name for p in written if ".tmp-" in p.name]
            assert not (tmp_path / "out" / "shard-000000.tar").exists()
            raise OSError("disk unplugged")
        return real(fs, root, uid, members)

    monkeypatch.setattr(shards_mod, "read_object", failing)
    with pytest.raises(OSError, match="unplugged"):
        shard_item(row, ctx)
    assert list((tmp_path / "out").iterdir()) == []  # no final tar, no temporary left
    monkeypatch.setattr(shards_mod, "read_object", real)
    shard_item(row, ctx)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["shard-000000.tar"]


def test_an_object_missing_a_member_fails_only_its_shard(renders: Path, tmp_path: Path) -> None:
    copy = tmp_path / "renders"
    shutil.copytree(renders, copy)
    (copy / LAYOUT_DIRS["instantmesh32"] / "cone" / "001_normal.png").unlink()
    out = tmp_path / "shards"
    result = run_shards(_cfg(copy, out, shard_size=2))  # cone is in shard 1 (box, capsule | ...)
    status = {
        r["uid"]: r
        for r in read_parquet(str(out / "shards-instantmesh32" / "status.parquet")).to_pylist()
    }
    assert [status[f"shard-00000{i}"]["status"] for i in range(3)] == ["ok", "failed", "ok"]
    error = status["shard-000001"]["error"]
    assert "cone" in error and "001_normal.png" in error
    assert status["shard-000001"]["error_type"] == "ShardInputError"
    assert not result.complete and not (out / sf.SUCCESS_NAME).exists()
    assert sorted(_tars(out)) == ["shard-000000.tar", "shard-000002.tar"]
    index = read_parquet(str(out / sf.INDEX_NAME))
    assert set(index["shard"].to_pylist()) == {"shard-000000.tar", "shard-000002.tar"}


def test_cli_bad_inputs_exit_2_before_ray(
    renders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main

    def run(*args: str) -> tuple[int, str]:
        rc = main(["shards", *args, "--out", str(tmp_path / "o"), "--run.no-progress"])
        err = capsys.readouterr().err.strip()
        return rc, err

    rc, err = run("--from", str(tmp_path / "nowhere"))
    assert rc == 2 and "no such render output root" in err and len(err.splitlines()) == 1
    empty = tmp_path / "empty"
    (empty / "render-zero123pp").mkdir(parents=True)
    shutil.copy(renders / "render-zero123pp" / "status.parquet", empty / "render-zero123pp")
    rc, err = run("--renders", str(empty))
    assert rc == 2 and "render-instantmesh32/status.parquet" in err
    assert "render-zero123pp" in err and len(err.splitlines()) == 1  # names the layout present
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(renders / "render-zero123pp" / "status.parquet")
    failed = table.set_column(
        table.schema.get_field_index("status"), "status", pa.array(["failed"] * table.num_rows)
    )
    pq.write_table(failed, empty / "render-zero123pp" / "status.parquet")
    rc, err = run("--from", str(empty), "--layout", "zero123pp")
    assert rc == 2 and "no ok objects" in err and "5 failed" in err
    assert not (tmp_path / "o").exists()  # nothing written: refused before the stage


def test_cli_writes_shards(
    renders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main

    out = tmp_path / "cli"
    rc = main(
        [
            *("shards", "--from", str(renders), "--out", str(out), "--shard-size", "4"),
            *("--run.workers", "1", "--run.no-progress"),
        ]
    )
    assert rc == 0
    assert "2 of 2 tar shards, 5 objects" in capsys.readouterr().out
    assert sorted(_tars(out)) == ["shard-000000.tar", "shard-000001.tar"]
    config = (out / "shards-instantmesh32" / "config.yaml").read_text()
    assert "shard_size: 4" in config


def test_config_fields_match_the_cli_contract() -> None:
    names = [f.name for f in dataclasses.fields(ShardsConfig)]
    assert names[:5] == ["renders", "out", "layout", "shard_size", "max_bytes"]
