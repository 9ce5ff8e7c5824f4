"""Training checkpoints: layout (upstream keys), atomic publish, resume in place, pruning."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from instantmesh import CheckpointError, build_model, get_variant, load_checkpoint
from instantmesh.checkpoint import UPSTREAM_PREFIX
from pipelines import storage
from pipelines.train_checkpoints import (
    TRAINER_STATE_FILE,
    TrainingCheckpointError,
    checkpoint_url,
    latest_training_checkpoint,
    list_training_checkpoints,
    load_training_checkpoint,
    save_training_checkpoint,
)


def _trained(variant: str, seed: int = 0, steps: int = 2):
    """A model, AdamW and a cosine-restart schedule (as upstream's train configs) after
    ``steps`` optimizer steps on random gradients."""
    torch.manual_seed(seed)
    model = build_model(variant)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, eta_min=4e-5)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        sched.step()
    return model, opt, sched


def _fresh(variant: str, seed: int = 99):
    return _trained(variant, seed=seed, steps=0)


def _assert_equal_nested(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_equal_nested(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture
def memory_out() -> str:
    url = f"memory://train-{uuid.uuid4().hex}"
    yield url
    storage.remove(url)


@pytest.mark.parametrize("where", ["local", "file", "memory"])
def test_round_trip_restores_model_optimizer_scheduler_in_place(
    where: str, tmp_path: Path, memory_out: str
) -> None:
    out = {"local": str(tmp_path / "run"), "file": f"file://{tmp_path}/run"}.get(where, memory_out)
    model, opt, sched = _trained("tiny-nerf", steps=3)
    gen = torch.Generator().manual_seed(7)
    state = {"step": 3, "epoch": 1, "generator": gen.get_state(), "seen": [1.5, None, "a"]}
    url = save_training_checkpoint(out, 3, model, opt, sched, state)
    assert url == checkpoint_url(out, 3) == storage.join(out, "checkpoints", "step-00000003")
    assert latest_training_checkpoint(out) == url

    model2, opt2, sched2 = _fresh("tiny-nerf")
    params_before = [id(p) for p in model2.parameters()]
    restored = load_training_checkpoint(url, model2, opt2, sched2)
    _assert_equal_nested(restored, state)
    _assert_equal_nested(opt2.state_dict(), opt.state_dict(), "optimizer")
    assert sched2.state_dict() == sched.state_dict() and sched2.last_epoch == 3
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # in place: the optimizer still updates the model's parameters after the restore
    assert [id(p) for p in model2.parameters()] == params_before
    for m, o in ((model, opt), (model2, opt2)):
        for p in m.parameters():
            p.grad = torch.ones_like(p)
        o.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_layout_is_upstream_and_loads_strictly(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    for variant in ("tiny-nerf", "tiny-mesh"):
        model, opt, sched = _trained(variant)
        url = save_training_checkpoint(out, 12, model, opt, sched, {"step": 12})
        name = variant.replace("-", "_") + ".ckpt"
        assert sorted(p.name for p in Path(url).iterdir()) == sorted(
            [name, TRAINER_STATE_FILE, storage.MARKER_NAME]
        )
        payload = torch.load(Path(url) / name, map_location="cpu", weights_only=True)
        assert sorted(payload) == ["global_step", "instantmesh_variant", "state_dict"]
        assert payload["global_step"] == 12
        assert payload["instantmesh_variant"] == get_variant(variant).to_dict()
        expected = model.state_dict()
        assert list(payload["state_dict"]) == [UPSTREAM_PREFIX + k for k in expected]
        # strict loads: by directory without a variant (embedded config), and named
        for loaded in (load_checkpoint(url), load_checkpoint(Path(url) / name, variant)):
            assert loaded.cfg.name == variant
            for k, v in expected.items():
                assert torch.equal(loaded.state_dict()[k], v), k
        marker = storage.read_marker(url)
        assert marker is not None and marker["step"] == 12 and marker["variant"] == variant
        assert marker["files"][name] == (Path(url) / name).stat().st_size
        storage.remove(url)

    model, opt, sched = _trained("tiny-mesh")
    url = save_training_checkpoint(out, 1, model, opt, sched, {})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(url, "tiny-nerf")
    assert "was trained as tiny-mesh, not tiny-nerf; pass --variant tiny-mesh" in str(info.value)
    nerf, nerf_opt, nerf_sched = _fresh("tiny-nerf")
    with pytest.raises(TrainingCheckpointError, match="pass --variant tiny-mesh") as info2:
        load_training_checkpoint(url, nerf, nerf_opt, nerf_sched)
    assert storage.join(url, "tiny_mesh.ckpt") in str(info2.value)


def test_killed_save_is_skipped_and_refused(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    model, opt, sched = _trained("tiny-nerf")
    good = save_training_checkpoint(out, 5, model, opt, sched, {"step": 5})
    # a writer killed after moving its files into place but before the marker
    killed = Path(checkpoint_url(out, 9))
    killed.mkdir(parents=True)
    for f in Path(good).iterdir():
        if f.name != storage.MARKER_NAME:
            (killed / f.name).write_bytes(f.read_bytes())
    # and one killed while copying into the staging folder
    staging = Path(out) / "checkpoints" / storage.STAGING_DIR / "step-00000011.abc"
    staging.mkdir(parents=True)
    (staging / "tiny_nerf.ckpt").write_bytes(b"partial")
    assert list_training_checkpoints(out) == [(5, good)]
    assert latest_training_checkpoint(out) == good
    with pytest.raises(TrainingCheckpointError) as info:
        load_training_checkpoint(str(killed), *_fresh("tiny-nerf"))
    assert str(killed) in str(info.value) and "not a complete training checkpoint" in str(
        info.value
    )
    assert latest_training_checkpoint(str(tmp_path / "nothing")) is None
    # the next save clears the staging leftovers
    save_training_checkpoint(out, 6, model, opt, sched, {"step": 6})
    assert list((Path(out) / "checkpoints" / storage.STAGING_DIR).iterdir()) == []
    assert latest_training_checkpoint(out) == checkpoint_url(out, 6)


def test_truncated_or_corrupt_files_are_clear_errors(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    model, opt, sched = _trained("tiny-nerf")
    url = save_training_checkpoint(out, 2, model, opt, sched, {"step": 2})
    ckpt = Path(url) / "tiny_nerf.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainingCheckpointError) as info:
        load_training_checkpoint(url, *_fresh("tiny-nerf"))
    assert str(info.value) == (
        f"training checkpoint {url} is damaged: tiny_nerf.ckpt has {len(data) // 2} bytes, "
        f"{len(data)} were written (truncated or overwritten)"
    )
    ckpt.write_bytes(data)
    trainer = Path(url) / TRAINER_STATE_FILE
    trainer.write_bytes(b"\x00" * trainer.stat().st_size)  # same size, garbage
    with pytest.raises(
        TrainingCheckpointError, match=r"cannot read .*trainer_state\.pt: truncated"
    ):
        load_training_checkpoint(url, *_fresh("tiny-nerf"))
    trainer.unlink()
    with pytest.raises(TrainingCheckpointError, match=r"trainer_state\.pt is missing"):
        load_training_checkpoint(url, *_fresh("tiny-nerf"))


def test_keep_prunes_older_checkpoints(memory_out: str, tmp_path: Path) -> None:
    for out in (memory_out, str(tmp_path / "run")):
        model, opt, sched = _trained("tiny-nerf", steps=1)
        for step in (10, 20):
            save_training_checkpoint(out, step, model, opt, sched, {"step": step})
        storage.makedirs(checkpoint_url(out, 15))  # a killed save: removed as older
        storage.makedirs(checkpoint_url(out, 99))  # newer incomplete: left alone
        storage.atomic_write_text(storage.join(checkpoint_url(out, 99), "x.ckpt"), "x")
        save_training_checkpoint(out, 30, model, opt, sched, {"step": 30}, keep=2)
        assert [s for s, _ in list_training_checkpoints(out)] == [20, 30]
        assert not storage.exists(checkpoint_url(out, 10))
        assert not storage.exists(checkpoint_url(out, 15))
        assert storage.exists(checkpoint_url(out, 99))
        save_training_checkpoint(out, 40, model, opt, sched, {"step": 40}, keep=1)
        assert list_training_checkpoints(out) == [(40, checkpoint_url(out, 40))]
        with pytest.raises(ValueError, match="keep must be >= 1"):
            save_training_checkpoint(out, 50, model, opt, sched, {}, keep=0)


def test_state_must_load_with_weights_only(tmp_path: Path) -> None:
    model, opt, sched = _trained("tiny-nerf", steps=0)
    with pytest.raises(TypeError, match=r"state\['rng'\] is a Generator"):
        save_training_checkpoint(
            str(tmp_path), 1, model, opt, sched, {"rng": np.random.default_rng(0)}
        )
    with pytest.raises(TypeError, match=r"state\['x'\]\[1\] is a set"):
        save_training_checkpoint(str(tmp_path), 1, model, opt, sched, {"x": [1, {2}]})
    assert latest_training_checkpoint(str(tmp_path)) is None  # nothing was written
    with pytest.raises(TypeError, match="cannot checkpoint a Linear"):
        save_training_checkpoint(str(tmp_path), 1, torch.nn.Linear(2, 2), opt, sched, {})


def test_without_scheduler(tmp_path: Path) -> None:
    model, opt, _ = _trained("tiny-nerf", steps=1)
    url = save_training_checkpoint(str(tmp_path), 1, model, opt, None, {"step": 1})
    model2, opt2, sched2 = _fresh("tiny-nerf")
    assert load_training_checkpoint(url, model2, opt2, None) == {"step": 1}
    _assert_equal_nested(opt2.state_dict(), opt.state_dict())
    with pytest.raises(TrainingCheckpointError, match="saved without a learning-rate scheduler"):
        load_training_checkpoint(url, model2, opt2, sched2)
