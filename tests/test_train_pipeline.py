"""``imesh train`` on Ray Train: stage nerf then stage mesh on fixture renders (the loss drops),
kill-and-resume with the same batches and losses, the trained checkpoint evaluated by ``imesh
benchmark``, and bad inputs refused before Ray (exit 2, one line)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.ray_reaper import session_pids
from pipelines.runner import RunOptions
from pipelines.train import TrainConfig, check_train_config, run_train
from rendering import procedural as pg
from rendering.backends import RenderSettings, make_backend, prepare_object
from rendering.output_layouts import layout_spec, render_layout
from training.stages import STAGES, build_optimizer, build_scheduler

pytestmark = pytest.mark.usefixtures("ray_local")

SIZE, VIEWS = 32, 8
SHAPES = ("sphere", "box", "cylinder")
IMESH = [sys.executable, "-c", "from pipelines.cli import entry; entry()"]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
OPTS = RunOptions(workers=1, shard_size=4, progress=False)


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three textured procedural objects in the instantmesh32 layout (cpu backend, 8 views of
    32 px): the training data of every test here."""
    root = tmp_path_factory.mktemp("train_renders")
    backend = make_backend("cpu", RenderSettings(shading="unlit"))
    try:
        for i, shape in enumerate(SHAPES):
            mesh = pg.textured(pg.make_shape(shape, i), pg.make_texture("checker", i, size=32))
            glb = root / f"{shape}.glb"
            glb.write_bytes(pg.glb_bytes(mesh))
            obj, _ = prepare_object(glb)
            spec = layout_spec("instantmesh32", size=SIZE, seed=i, views=VIEWS)
            render_layout(backend, obj, shape, spec, root / "rendering_random_32views" / shape)
    finally:
        backend.close()
    return root


def _cfg(renders: Path, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "data": str(renders),
        "out": str(out),
        "total_views": VIEWS,
        "input_views": 2,
        "target_views": 2,
        "render_size": SIZE,  # the random LPIPS trunk (AlexNet) needs >= 32 px
        "batch_size": 1,
        "lpips_net": "random",
        "log_every": 1000,
    }
    return TrainConfig(**{**base, **kw})


def _args(cfg: TrainConfig) -> list[str]:
    out = []
    for key, value in vars(cfg).items():
        if value is None or key == "address":
            continue
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def _metrics(out: Path) -> list[dict[str, Any]]:
    return sorted(pq.read_table(out / "metrics.parquet").to_pylist(), key=lambda r: r["step"])


# ---------------------------------------------------------------------------------------------
# Stage registry: upstream's optimiser and schedule.


def test_stage_registry_holds_upstream_optimiser_and_schedule() -> None:
    import torch

    nerf, mesh = STAGES["nerf"], STAGES["mesh"]
    assert (nerf.lr, nerf.render_size, nerf.grad_clip, nerf.checkpoint_every) == (
        4e-4,
        192,
        1.0,
        1000,
    )
    assert (mesh.lr, mesh.render_size, mesh.grad_clip, mesh.checkpoint_every) == (
        4e-5,
        512,
        None,
        2000,
    )
    assert mesh.init_from == "nerf" and nerf.init_from is None
    lin = torch.nn.Linear(2, 2)
    opt = build_optimizer("nerf", lin)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert (group["lr"], group["betas"], group["weight_decay"]) == (4e-4, (0.9, 0.95), 0.01)
    sched = build_scheduler("nerf", opt)
    # CosineAnnealingWarmRestarts(T_0=3000, eta_min=lr/10): halfway the lr is the midpoint
    for _ in range(1500):
        sched.step()
    assert group["lr"] == pytest.approx((4e-4 + 4e-5) / 2, rel=1e-9)
    for _ in range(1500):
        sched.step()
    assert group["lr"] == pytest.approx(4e-4)  # restarted after T_0
    opt2 = build_optimizer("mesh", lin, lr=1e-3)
    sched2 = build_scheduler("mesh", opt2, lr=1e-3)
    for _ in range(50000):
        sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(5e-4)  # eta_min 0, T_0 100000


def test_resume_skip_leaves_consumed_objects_out_undecoded(renders: Path) -> None:
    from instantmesh.lrm_data import Instantmesh32Dataset

    ds = Instantmesh32Dataset(
        renders, input_view_num=2, target_view_num=2, total_view_n=VIEWS, shuffle=True, seed=5
    )
    ds.set_epoch(1)
    full = [item["uid"] for item in ds]
    assert sorted(full) == sorted(SHAPES)
    decoded: list[str] = []
    decode = ds.decode
    ds.decode = lambda sample: (decoded.append(sample.uid), decode(sample))[1]  # type: ignore[method-assign]
    ds.set_resume_skip(full[:2])
    assert [item["uid"] for item in ds] == full[2:]
    assert decoded == full[2:]  # the skipped objects were never decoded
    ds.set_resume_skip([])
    assert [item["uid"] for item in ds] == full


# ---------------------------------------------------------------------------------------------
# Bad inputs: exit 2, one line, before Ray, nothing written.


def _refused(capsys: pytest.CaptureFixture[str], args: list[str], out: Path) -> str:
    rc = main(["train", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
    return err


def test_bad_inputs_exit_2_before_ray(
    renders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    out = tmp_path / "out"
    base = _args(_cfg(renders, out))
    missing = _refused(capsys, [*base, "--data", str(tmp_path / "nowhere")], out)
    assert "--data" in missing and "nowhere" in missing
    empty = tmp_path / "empty" / "rendering_random_32views"
    empty.mkdir(parents=True)
    assert "no objects" in _refused(capsys, [*base, "--data", str(empty.parent)], out)
    mismatch = _refused(capsys, [*base, "--stage", "mesh", "--variant", "tiny-nerf"], out)
    assert "--stage mesh trains mesh variants" in mismatch and "tiny-nerf" in mismatch
    no_init = _refused(capsys, [*base, "--stage", "mesh", "--variant", "tiny-mesh"], out)
    assert "--init-from" in no_init and "random" in no_init
    bad_init = _refused(
        capsys,
        [*base, "--stage", "mesh", "--variant", "tiny-mesh", "--init-from", str(tmp_path / "x")],
        out,
    )
    assert "--init-from" in bad_init
    too_big = _refused(capsys, [*base, "--render-size", str(SIZE + 1)], out)
    assert f"{SIZE}-px" in too_big
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_home"))
    lpips = _refused(capsys, [*base, "--lpips-net", "vgg"], out)
    assert "vgg16" in lpips and "cp /path/to/" in lpips  # the install hint


# ---------------------------------------------------------------------------------------------
# Stage nerf -> stage mesh: the loss drops; the checkpoint loads strictly and is benchmarked.


@pytest.fixture(scope="module")
def trained(
    renders: Path, tmp_path_factory: pytest.TempPathFactory, ray_local: None
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("trained")
    nerf_cfg = _cfg(renders, root / "nerf", steps=3, lr=1e-3)
    nerf = run_train(nerf_cfg)
    mesh_cfg = _cfg(
        renders,
        root / "mesh",
        stage="mesh",
        variant="tiny-mesh",
        init_from=str(nerf.checkpoint),
        steps=30,
        lr=2e-3,
        batch_size=3,
        checkpoint_every=15,
    )
    mesh = run_train(mesh_cfg)
    return {"nerf": nerf, "mesh": mesh, "root": root}


def test_nerf_then_mesh_stage_the_loss_drops(trained: dict[str, Any]) -> None:
    nerf, mesh = trained["nerf"], trained["mesh"]
    assert nerf.steps == 3 and nerf.checkpoint.endswith("step-00000003")
    rows = _metrics(Path(mesh.out))
    assert [r["step"] for r in rows] == list(range(1, 31))
    for key in ("loss_mse", "loss_lpips", "loss_mask", "loss_depth", "loss_normal", "lr"):
        assert key in rows[0], sorted(rows[0])
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    print(f"mesh stage loss: first 5 steps {first:.4f}, last 5 steps {last:.4f}")
    assert last < first / LOSS_FACTOR
    assert all(r["samples_per_s"] > 0 and r["data_time_s"] >= 0 for r in rows)
    ckpts = sorted(p.name for p in (Path(mesh.out) / "checkpoints").glob("step-*"))
    assert ckpts == ["step-00000015", "step-00000030"]
    assert (Path(mesh.out) / "report.html").is_file()


LOSS_FACTOR = 1.1
"""Measured (CPU, one torch thread): the mean loss of the first 5 of the 30 tiny-mesh steps is
1.19 times that of the last 5 (1.273 -> 1.069; image terms: MSE 1.29x, LPIPS 1.38x, mask
1.15x, depth 1.22x) with the antialiased CPU mask, as with the hard mask before it (1.274 ->
1.071): antialiasing changes this short run little; asserted with margin."""


def test_trained_checkpoint_loads_strictly_and_benchmarks(
    trained: dict[str, Any], fixture_set: dict[str, Any], tmp_path: Path
) -> None:
    from instantmesh import InstantMesh, load_checkpoint
    from pipelines.evalset import EvalsetConfig, run_evalset

    ckpt = trained["mesh"].checkpoint
    model = load_checkpoint(ckpt, "tiny-mesh")
    assert isinstance(model, InstantMesh)
    run_evalset(
        EvalsetConfig(
            dataset="gso",
            root=str(fixture_set["paths"]["gso"]),
            out=str(tmp_path / "evalsets"),
            n=1,
            size=48,
            run=OPTS,
        )
    )
    rc = main(
        [
            "benchmark",
            "--predictor",
            "instantmesh",
            "--checkpoint",
            ckpt,
            "--variant",
            "tiny-mesh",
            "--views",
            "ground-truth",
            "--evalsets",
            str(tmp_path / "evalsets" / "gso"),
            "--out",
            str(tmp_path / "run"),
            "--lpips-net",
            "none",
            "--n-points",
            "1000",
            "--run.no-progress",
        ]
    )
    assert rc == 0
    objects = pq.read_table(tmp_path / "run" / "metrics").to_pylist()
    assert objects, "the benchmark wrote no run records"


# ---------------------------------------------------------------------------------------------
# Kill and resume: same batches, same losses.


def test_kill_and_resume_continues_with_the_same_batches(renders: Path, tmp_path: Path) -> None:
    steps = 16
    reference = run_train(_cfg(renders, tmp_path / "clean", steps=steps, checkpoint_every=4))
    assert reference.steps == steps
    killed = tmp_path / "killed"
    args = [*IMESH, "train", *_args(_cfg(renders, killed, steps=steps, checkpoint_every=4))]
    proc = subprocess.Popen(
        args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    first = killed / "checkpoints" / "step-00000004" / "_SUCCESS.json"
    deadline = time.time() + 240
    session = None
    try:
        while time.time() < deadline and proc.poll() is None and not first.is_file():
            time.sleep(0.02)
        session = os.path.realpath("/tmp/ray/session_latest")
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.time() + 60  # the reaper removes the killed run's Ray (its train worker)
    while time.time() < deadline and session and session_pids(session):
        time.sleep(0.5)
    done = sorted(
        int(p.name.split("-")[1])
        for p in (killed / "checkpoints").glob("step-*")
        if (p / "_SUCCESS.json").is_file()
    )
    assert done and done[-1] < steps
    at = done[-1]
    rerun = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {killed / 'checkpoints' / f'step-{at:08d}'} (step {at} of {steps})" in (
        rerun.stdout
    )
    got, want = _metrics(killed), _metrics(tmp_path / "clean")
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    for a, b in zip(got[at:], want[at:], strict=True):
        assert a["uids"] == b["uids"], (a["step"], a["uids"], b["uids"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7), a["step"]


def test_rerun_with_other_settings_is_refused(
    trained: dict[str, Any], renders: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = Path(trained["nerf"].out)
    args = _args(_cfg(renders, out, steps=3, lr=1e-3))
    rc = main(["train", *args, "--seed", "7"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "seed (0 -> 7)" in err and len(err.splitlines()) == 1
    _, plan = check_train_config(_cfg(renders, out, steps=5, lr=1e-3))
    assert plan.resume_step == 3 and plan.resume_from is not None  # more steps: continues


def test_stage_and_variant_choices_are_the_registry_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import typing

    from instantmesh import VARIANTS

    hints = typing.get_type_hints(TrainConfig)
    assert set(typing.get_args(hints["stage"])) == set(STAGES) == {"nerf", "mesh"}
    assert set(typing.get_args(hints["variant"])) == set(VARIANTS)
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--stage {nerf,mesh}", "--init-from", "--lpips-net", "--num-workers"):
        assert option in out


def test_workers_the_cluster_cannot_hold_are_refused(renders: Path, tmp_path: Path) -> None:
    """Ray Train would wait for the resources forever: refused, nothing written."""
    import ray

    from pipelines.configs import ConfigError

    if not ray.cluster_resources().get("GPU"):
        with pytest.raises(ConfigError, match=r"needs 1 GPU; the Ray cluster has .* 0 GPU"):
            run_train(_cfg(renders, tmp_path / "gpu", steps=1, use_gpu=True))
    with pytest.raises(ConfigError, match="needs 64 CPU"):
        run_train(_cfg(renders, tmp_path / "cpu", steps=1, num_workers=64))
    assert not (tmp_path / "gpu").exists() and not (tmp_path / "cpu").exists()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_gpu_path_bf16_both_stages(renders: Path, tmp_path: Path) -> None:
    """On a GPU: one Ray Train worker with a GPU, bf16 autocast (--mixed-precision auto), stage
    nerf then stage mesh (nvdiffrast when installed); finite losses, loadable checkpoints."""
    import math

    from instantmesh import load_checkpoint

    nerf = run_train(_cfg(renders, tmp_path / "nerf", steps=3, lr=1e-3, use_gpu=True))
    mesh = run_train(
        _cfg(
            renders,
            tmp_path / "mesh",
            stage="mesh",
            variant="tiny-mesh",
            init_from=str(nerf.checkpoint),
            steps=3,
            batch_size=3,
            use_gpu=True,
        )
    )
    for result, variant in ((nerf, "tiny-nerf"), (mesh, "tiny-mesh")):
        rows = _metrics(Path(result.out))
        assert [r["step"] for r in rows] == [1, 2, 3]
        assert all(math.isfinite(r["loss"]) for r in rows)
        load_checkpoint(result.checkpoint, variant)
