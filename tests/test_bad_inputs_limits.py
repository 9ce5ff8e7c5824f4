"""Issue 16 parts 3 and 4: nothing hangs, limits hold, faults of the machine are named.

FIFOs / devices / directories named like meshes are failed rows (never read); a hung item is an
``ItemTimeout`` row; face limits hold for every format; ``mtllib`` is confined and capped; the
texture limit is the documented one; deep ``metadata.pbtxt`` parses; a list ``predictor.yaml``
is a one-line error; a full or read-only output root stops the job naming the device (exit 2),
leaves no staging or scratch behind and a re-run completes; published folders honour the umask.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray.cloudpickle
from bad_corpus import (
    big_mesh,
    deep_pbtxt,
    good_mesh,
    obj_with_mtllib,
    png_of_pixels,
    whitespace_glb,
    write_big_meshes,
    write_special_files,
)

from pipelines import storage
from pipelines.runner import RunOptions, run_stage
from pipelines.schema import manifest_from_rows, read_parquet
from pipelines.stage import ItemContext, Stage

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
QUIET = RunOptions(workers=1, shard_size=20, progress=False)


# --- helpers ----------------------------------------------------------------------------------


@dataclass
class WriteConfig:
    bytes_per_item: int = 1000
    hang_uid: str = ""


def write_item(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    if row["uid"] == ctx.config.hang_uid:
        threading.Event().wait()  # blocks forever, like a read of a FIFO
    assert ctx.scratch_dir is not None
    (ctx.scratch_dir / "sub").mkdir()
    (ctx.scratch_dir / "sub" / "data.bin").write_bytes(os.urandom(ctx.config.bytes_per_item))
    return {"n": 1}


WRITE = Stage("write", write_item, pa.schema([("n", pa.int64())]), item_output="items")


def _manifest(uids: list[str]) -> pa.Table:
    return manifest_from_rows(
        {"uid": u, "source": "synthetic", "mesh_uri": f"/none/{u}", "sha256": None} for u in uids
    )


def _status(report: Any) -> dict[str, dict[str, Any]]:
    return {r["uid"]: r for r in read_parquet(report.status_uri).to_pylist()}


def _mount(args: list[str]) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (root only; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not _mount(["-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)]):
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only bind mount of an (empty) folder (root only; skipped elsewhere)."""
    src, mnt = tmp_path / "ro_src", tmp_path / "ro"
    src.mkdir()
    mnt.mkdir()
    if not _mount(["--bind", str(src), str(mnt)]):
        pytest.skip("bind mounts need root")
    if not _mount(["-o", "remount,bind,ro", str(mnt)]):
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        pytest.skip("read-only remount refused")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


# --- nothing hangs ----------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_local")
def test_fifo_device_and_directory_inputs_are_failed_rows(tmp_path: Path) -> None:
    from pipelines.inspect_meshes import InspectConfig, run_inspect
    from pipelines.render import RenderConfig, run_render

    src = tmp_path / "in"
    special = write_special_files(src)
    good_mesh(src, "good.glb")
    report = run_render(
        RenderConfig(
            input=str(src),
            out=str(tmp_path / "out"),
            backend="cpu",
            layout="zero123pp",
            size=16,
            run=QUIET,
        )
    )
    rows = _status(report)
    assert rows["good"]["status"] == "ok"
    for kind, (path, cause) in special.items():
        row = rows[path.stem]
        assert row["status"] == "failed", kind
        assert cause in row["error"].lower(), (kind, row["error"])

    # inspect with a manifest naming a FIFO and /dev/zero (with sha256: hashing would block)
    manifest = manifest_from_rows(
        [
            {
                "uid": "fifo",
                "source": "synthetic",
                "mesh_uri": str(src / "pipe.glb"),
                "sha256": "0" * 64,
            },
            {"uid": "zero", "source": "synthetic", "mesh_uri": "/dev/zero", "sha256": "0" * 64},
            {
                "uid": "good",
                "source": "synthetic",
                "mesh_uri": str(src / "good.glb"),
                "sha256": None,
            },
        ]
    )
    rows = _status(
        run_inspect(InspectConfig(manifest="-", out=str(tmp_path / "insp"), run=QUIET), manifest)
    )
    assert rows["good"]["status"] == "ok"
    assert "a fifo" in rows["fifo"]["error"].lower()
    assert "a character device" in rows["zero"]["error"]


@pytest.mark.usefixtures("ray_local")
def test_a_hung_item_is_an_item_timeout_row_and_the_job_goes_on(tmp_path: Path) -> None:
    uids = ["a", "hang", "b", "c"]
    report = run_stage(
        WRITE,
        WriteConfig(hang_uid="hang"),
        _manifest(uids),
        str(tmp_path / "out"),
        RunOptions(workers=1, shard_size=4, progress=False, item_timeout_s=2.0),
    )
    rows = _status(report)
    assert rows["hang"]["status"] == "failed" and rows["hang"]["error_type"] == "ItemTimeout"
    assert "no result after 2 s" in rows["hang"]["error"]
    assert all(rows[u]["status"] == "ok" for u in ("a", "b", "c"))
    items = tmp_path / "out" / "items"
    assert sorted(p.name for p in items.iterdir()) == ["a", "b", "c"]  # nothing half-published


def test_run_options_have_a_default_item_timeout() -> None:
    assert 0 < RunOptions().item_timeout_s <= 3600


# --- limits hold ------------------------------------------------------------------------------


def test_face_limit_holds_for_every_format(tmp_path: Path) -> None:
    from rendering import mesh_io
    from rendering.backends import prepare_object
    from rendering.mesh_io import MeshTooLarge, declared_face_count

    paths = write_big_meshes(tmp_path, 5000)  # 5120 faces
    padded = tmp_path / "padded.glb"
    padded.write_bytes(whitespace_glb(big_mesh(5000), (64 << 20) + 4096))
    paths["glb_whitespace"] = padded
    for kind, path in paths.items():
        assert declared_face_count(path) == 5120, kind
        with pytest.raises(MeshTooLarge, match="5120 faces exceed the limit of 1000"):
            prepare_object(path, max_faces=1000)
    prepare_object(paths["stl_binary"], max_faces=10_000)  # under the limit: loads

    # the total caps: a JSON chunk or a text mesh over them is refused, not skipped
    old = (mesh_io.MAX_GLTF_JSON_BYTES, mesh_io.MAX_TEXT_MESH_BYTES)
    try:
        mesh_io.MAX_GLTF_JSON_BYTES = 1 << 20
        mesh_io.MAX_TEXT_MESH_BYTES = 1 << 10
        with pytest.raises(MeshTooLarge, match="JSON chunk"):
            declared_face_count(padded)
        with pytest.raises(MeshTooLarge, match="text mesh"):
            declared_face_count(paths["stl_ascii"])
    finally:
        mesh_io.MAX_GLTF_JSON_BYTES, mesh_io.MAX_TEXT_MESH_BYTES = old


def test_mtllib_is_confined_to_the_mesh_folder_and_capped(tmp_path: Path) -> None:
    from rendering import mesh_io
    from rendering import procedural as pg
    from rendering.mesh_io import MeshLoadError, load_scene, texture_problems

    (tmp_path / "outside.mtl").write_text(pg.mtl_text("tex.png"))
    escape = obj_with_mtllib(tmp_path / "obj", "../outside.mtl", "escape.obj")
    problems = texture_problems(escape)
    assert any("outside.mtl resolves outside the mesh's folder" in p for p in problems)
    with pytest.raises(MeshLoadError, match="resolves outside the mesh's folder"):
        load_scene(escape)

    big = obj_with_mtllib(tmp_path / "obj", "big.mtl", "big.obj")
    (tmp_path / "obj" / "big.mtl").write_text(pg.mtl_text("tex.png") + "#" * 4096 + "\n")
    old = mesh_io.MAX_MTL_BYTES
    try:
        mesh_io.MAX_MTL_BYTES = 1024
        assert any("big.mtl is" in p and "(limit 1024)" in p for p in texture_problems(big))
        with pytest.raises(MeshLoadError, match="limit 1024"):
            load_scene(big)
    finally:
        mesh_io.MAX_MTL_BYTES = old


def test_texture_limit_is_the_documented_one(tmp_path: Path) -> None:
    from PIL import Image

    from rendering.mesh_io import MAX_TEXTURE_PIXELS, _image_problem

    assert MAX_TEXTURE_PIXELS == 16384**2 and Image.MAX_IMAGE_PIXELS == MAX_TEXTURE_PIXELS
    ok = tmp_path / "big.png"
    ok.write_bytes(png_of_pixels(10_000, 10_000))  # 100 Mpx: over PIL's default 89.5 Mpx
    assert _image_problem(ok.name, None, ok, MAX_TEXTURE_PIXELS) is None
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_of_pixels(16_400, 16_400))
    assert "decompression bomb" in (_image_problem(bomb.name, None, bomb, MAX_TEXTURE_PIXELS) or "")


def test_deeply_nested_gso_metadata_parses(tmp_path: Path) -> None:
    from evaluation.datasets import read_gso_metadata, scan_gso
    from evaluation.layouts import write_gso_object
    from rendering import procedural as pg

    tex = pg.make_texture("checker", 0, size=16)
    folder = write_gso_object(
        tmp_path, "Deep", pg.textured(pg.make_shape("box", 0), tex), tex, "Toys"
    )
    (folder / "metadata.pbtxt").write_text(deep_pbtxt(100_000, "Shoe"))
    broken = write_gso_object(
        tmp_path, "Broken", pg.textured(pg.make_shape("box", 1), tex), tex, "Toys"
    )
    (broken / "metadata.pbtxt").write_text("x { " * 50_000)  # never closed
    objs = {o.uid: o for o in scan_gso(tmp_path)}
    assert objs["Deep"].category == "Shoe"
    assert objs["Broken"].category is None
    assert any("unreadable" in n for n in objs["Broken"].notes)
    assert read_gso_metadata(folder / "metadata.pbtxt")["name"] == "Deep"


def test_predictor_yaml_that_is_a_list_is_a_one_line_error(tmp_path: Path) -> None:
    from evaluation.predictors import MeshDirOptions, MeshDirPredictor, PredictorError
    from pipelines.errors import USER_ERRORS

    (tmp_path / "predictor.yaml").write_text("- convention: instantmesh\n")
    with pytest.raises(PredictorError, match=r"must be a mapping .* not a YAML list"):
        MeshDirPredictor(MeshDirOptions(mesh_dir=str(tmp_path)))
    assert issubclass(PredictorError, USER_ERRORS)


# --- faults of the machine are named ----------------------------------------------------------


@pytest.mark.usefixtures("ray_local")
def test_disk_full_names_the_device_cleans_up_and_a_rerun_completes(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    out = str(small_tmpfs / "out")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    options = RunOptions(workers=1, shard_size=4, progress=False, scratch_dir=str(scratch))
    cfg = WriteConfig(bytes_per_item=96 * 1024)
    uids = [f"item_{i}" for i in range(12)]  # ~1.1 MiB of outputs for 512 KiB
    with pytest.raises(storage.StorageFault) as info:
        run_stage(WRITE, cfg, _manifest(uids), out, options)
    message = str(info.value)
    assert "no space left on device" in message and str(small_tmpfs) in message
    assert "tmpfs" in message and "re-run" in message
    assert not list((small_tmpfs / "out" / "items").glob(".staging/*"))
    assert not list(scratch.iterdir())  # no scratch folder left behind

    from pipelines.errors import USER_ERRORS

    assert isinstance(info.value, USER_ERRORS)  # the CLI prints it as one line, exit 2

    assert _mount(["-o", "remount,size=8m", str(small_tmpfs)])
    report = run_stage(WRITE, cfg, _manifest(uids), out, options)
    assert report.counts == {"ok": 12}


def test_publish_refuses_before_copying_when_the_target_is_full(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    local = tmp_path / "scratch_item"
    local.mkdir()
    (local / "big.bin").write_bytes(os.urandom(800 * 1024))
    with pytest.raises(storage.StorageFault, match=r"no space left on device.*needed"):
        storage.publish_dir(local, str(small_tmpfs / "items" / "x"), {"uid": "x"})
    assert not list((small_tmpfs / "items" / ".staging").iterdir())
    assert not (small_tmpfs / "items" / "x").exists()


@pytest.mark.usefixtures("ray_local")
def test_read_only_output_root_is_a_named_error(read_only_dir: Path) -> None:
    with pytest.raises(storage.StorageFault, match="read-only file system"):
        run_stage(WRITE, WriteConfig(), _manifest(["a"]), str(read_only_dir / "out"), QUIET)


def test_cli_names_a_read_only_output_root_with_exit_2(
    read_only_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main

    assert main(["fixtures", "--out", str(read_only_dir / "fx"), "--seed", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "read-only file system" in err[0] and str(read_only_dir) in err[0]


def test_storage_fault_is_found_behind_wrappers() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/x/y")
    try:
        try:
            raise full
        except OSError as e:
            raise RuntimeError("UDF failed to process a data block") from e
    except RuntimeError as wrapped:
        fault = storage.storage_fault(wrapped)
    assert fault is not None and "no space left on device writing /x/y" in str(fault)
    assert storage.storage_fault(PermissionError(errno.EACCES, "denied", "/x")) is None


# --- published folders honour the umask -------------------------------------------------------


@pytest.mark.usefixtures("ray_local")
def test_published_folders_honour_the_umask(tmp_path: Path) -> None:
    mask = storage.current_umask()
    report = run_stage(WRITE, WriteConfig(), _manifest(["a"]), str(tmp_path / "out"), QUIET)
    assert report.counts == {"ok": 1}
    item = tmp_path / "out" / "items" / "a"
    assert stat.S_IMODE(item.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((item / "sub").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((item / "sub" / "data.bin").stat().st_mode) == 0o666 & ~mask


def test_publish_dir_uses_the_process_umask(tmp_path: Path) -> None:
    import tempfile

    old = os.umask(0o027)
    try:
        local = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700, as scratch folders are made
        fd, name = tempfile.mkstemp(dir=local)  # 0600
        os.close(fd)
        storage.publish_dir(local, str(tmp_path / "items" / "x"), {"uid": "x"})
    finally:
        os.umask(old)
    final = tmp_path / "items" / "x"
    assert stat.S_IMODE(final.stat().st_mode) == 0o750
    assert stat.S_IMODE((final / Path(name).name).stat().st_mode) == 0o640
