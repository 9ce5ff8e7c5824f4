"""``imesh train``: train the sparse-view reconstruction model (LRM) on our renders, on Ray Train.

Two stages as upstream InstantMesh (``training.stages``): ``--stage nerf`` trains a NeRF variant
(stage 1), ``--stage mesh`` a FlexiCubes mesh variant initialised from a stage-1 checkpoint
(``--init-from``). The data is an ``instantmesh32`` render output root or a shard folder of
``imesh shards`` (``Instantmesh32Dataset`` tells them apart). Outputs under ``--out``::

    config.yaml                       the resolved config (+ provenance); a rerun compares with it
    checkpoints/step-%08d/            atomic checkpoints (pipelines.train_checkpoints): the
                                      upstream-layout .ckpt + trainer state; loadable with
                                      instantmesh.load_checkpoint and imesh benchmark
    metrics.parquet                   one row per step (pipelines.train_report.MetricsLog)
    report.html                       loss curves and throughput (pipelines.train_report)
    _ray/                             Ray Train's own run folders

Execution: a ``ray.train.torch.TorchTrainer`` with ``--num-workers`` workers (one per GPU with
``--use-gpu``; DDP across them), each running :func:`train_worker`: the model, upstream's AdamW
and cosine schedule, the rank's share of the dataset (``Instantmesh32Dataset(rank=...,
world_size=..., shuffle=True, seed=...)``, epochs by ``set_epoch``) through a DataLoader, and per
step the stage's ``prepare`` (CPU generator seeded from (seed, step, rank)) and ``step``
(device generator, same seed), backward, clip, optimiser step. Rank 0 logs a metrics row per
step (loss terms averaged over ranks, lr, samples/s, images/s, data vs step time, the uids of
every rank's batch), sends progress lines to the driver and writes the checkpoints. An epoch
ends on every rank when one rank's share runs out (DDP ranks stay in step). Mixed precision:
bf16 autocast on CUDA (``--mixed-precision auto``), off on CPU.

Resume: a rerun on the same ``--out`` with the same output-relevant options (those not marked
``NO_HASH``) continues from the latest complete checkpoint: model, optimiser, schedule, step,
epoch, and the objects of the epoch already consumed, which the dataset then leaves out without
decoding (``SampleDataset.set_resume_skip``); every random draw depends only on (seed, epoch,
uid) or (seed, step, rank), so the steps after the checkpoint see the same batches and, on the
same machine and thread count, give the same losses. With ``--loader-workers`` k > 1 each loader
worker continues its own sequence, but the DataLoader's round-robin over them restarts at worker
0, so the batch order after a resume is the uninterrupted one only when the epoch's consumed
batches are a multiple of k. Metrics rows after the checkpoint's step are dropped. Other
options than the recorded ones: exit 2 naming the keys. ``--steps`` may grow.

Every input is checked before Ray starts (:func:`check_train_config`): the data and its objects,
the stage/variant pairing, ``--init-from`` (loaded strictly), the LPIPS backbone on disk, the
render size against the data; a bad one is a one-line error, exit 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import queue as queue_mod
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from instantmesh.variants import VARIANTS
from pipelines import storage
from pipelines.configs import (
    NO_HASH,
    ConfigError,
    from_dict,
    registry_choices,
    to_dict,
    write_resolved_config,
)
from training.stages import STAGES, Stage

if TYPE_CHECKING:
    import torch

    StageName = str
    VariantName = str
else:
    StageName = registry_choices(STAGES)
    VariantName = registry_choices(VARIANTS)

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.parquet"
REPORT_NAME = "report.html"
RAY_DIR = "_ray"
RANDOM_INIT = "random"
"""``--init-from random``: start stage 2 from random weights (explicit, warned)."""


@dataclass
class TrainConfig:
    """Train the reconstruction model (stage nerf or mesh) on instantmesh32 renders, on Ray
    Train; resumable."""

    data: str
    """Training data: an `imesh render --layout instantmesh32` output root (or its
    rendering_random_32views folder), or a shard folder of `imesh shards`."""
    out: str = field(metadata=NO_HASH)
    """Output folder (local path or file:// URL): config.yaml, checkpoints/,
    metrics.parquet, report.html. A rerun on the same folder resumes."""
    stage: StageName = "nerf"
    """Training stage: nerf (stage 1, a NeRF variant) or mesh (stage 2, a mesh variant,
    initialised from a stage-1 checkpoint)."""
    variant: VariantName = "tiny-nerf"
    """Model variant (instantmesh.VARIANTS); its kind must match the stage."""
    init_from: str | None = None
    """Initial weights: a checkpoint folder (checkpoints/step-N of a run, or a folder holding
    one .ckpt), a .ckpt file, or a saved model folder. Required for --stage mesh (a stage-1
    checkpoint, converted as upstream); 'random' starts from random weights (warned)."""
    batch_size: int | None = None
    """Objects per worker per step (default: the stage's, upstream 2)."""
    lr: float | None = None
    """AdamW learning rate (default: the stage's, upstream 4e-4 nerf / 4e-5 mesh)."""
    steps: int = field(default=1000, metadata=NO_HASH)
    """Optimiser steps in total (a rerun with more steps continues the run)."""
    seed: int = 0
    """Seed of the initial weights, the data order, the view sampling and every step's draws."""
    checkpoint_every: int | None = field(default=None, metadata=NO_HASH)
    """Steps between checkpoints (default: the stage's, upstream 1000 nerf / 2000 mesh); the
    last step is always checkpointed."""
    keep_checkpoints: int | None = field(default=None, metadata=NO_HASH)
    """Keep only this many newest checkpoints (default: all)."""
    input_size: int | None = None
    """Side of the input views fed to the encoder (default: the variant's input_size)."""
    render_size: int | None = None
    """Side of the supervised renders (default: the stage's, 192 nerf crops / 512 mesh); at
    most the data's image size."""
    num_workers: int = 1
    """Ray Train workers (data-parallel ranks; one per GPU with --use-gpu)."""
    use_gpu: bool | None = field(default=None, metadata=NO_HASH)
    """One GPU per worker; default (None): when the Ray cluster has GPUs."""
    cpus_per_worker: int = field(default=1, metadata=NO_HASH)
    """CPUs each worker reserves (and its torch threads)."""
    loader_workers: int = 0
    """DataLoader worker processes per train worker (0: decode in the train worker)."""
    lpips_net: str = "vgg"
    """LPIPS backbone of the perceptual loss: vgg (upstream), alex, squeeze; weights must be on
    disk. 'random' (random trunk) is for wiring tests only, and recorded as such."""
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    """auto: bf16 autocast on CUDA, off on CPU; bf16: always (CUDA); no: float32 (upstream)."""
    input_views: int = 6
    """Input views per object (upstream input_view_num)."""
    target_views: int = 4
    """Extra supervised views per object (upstream target_view_num)."""
    total_views: int | None = 32
    """Views the input/target views are drawn from (upstream total_view_n; None: all the
    object has)."""
    depth: Literal["png8", "png16"] = "png8"
    """Depth PNG read: the upstream 8-bit one or the lossless 16-bit companion."""
    log_every: int = field(default=10, metadata=NO_HASH)
    """Print a progress line every this many steps."""
    address: str | None = field(default=None, metadata=NO_HASH)
    """Ray cluster address; default: RAY_ADDRESS if set, else a local embedded Ray."""


@dataclass(frozen=True)
class TrainPlan:
    """What :func:`check_train_config` resolved (driver side, before Ray)."""

    lr: float
    batch_size: int
    input_size: int
    render_size: int
    checkpoint_every: int
    grad_clip: float | None
    objects: int | None
    """Objects in the data (None: a shard set without an index)."""
    source_kind: str
    """shards or folders."""
    resume_from: str | None
    """The checkpoint a rerun continues from (None: a fresh run)."""
    resume_step: int


@dataclass
class TrainResult:
    """What a run did."""

    out: str
    start_step: int
    steps: int
    """The step count reached (== the config's steps when finished)."""
    resumed_from: str | None
    wall_s: float
    """Driver wall time, Ray start included."""
    train_s: float
    """Time from the first to the last step (the training proper)."""
    startup_s: float
    """From starting Ray Train to the first step (Ray workers, model, data, first batch)."""
    samples_per_s: float
    checkpoint: str | None
    metrics_uri: str
    report_uri: str | None
    last_loss: float | None = None
    ray_start_s: float = 0.0
    """Checks and starting (or joining) Ray, before run_train (set by the CLI)."""


# ---------------------------------------------------------------------------------------------
# Checks before Ray.
# ---------------------------------------------------------------------------------------------


def _plain_url(url: str) -> str:
    """A local path / ``file://`` URL as an absolute path (one spelling per folder)."""
    if storage.is_local(url):
        return os.path.abspath(storage.filesystem(url)[1])
    return url


def normalized(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with local paths absolute (the recorded config then compares across cwds)."""
    init = cfg.init_from
    if init is not None and init != RANDOM_INIT:
        init = _plain_url(init)
    return dataclasses.replace(
        cfg, data=_plain_url(cfg.data), out=_plain_url(cfg.out), init_from=init
    )


def _dataset(cfg: TrainConfig, **kw: Any) -> Any:
    from instantmesh.lrm_data import Instantmesh32Dataset

    return Instantmesh32Dataset(
        cfg.data,
        input_view_num=cfg.input_views,
        target_view_num=cfg.target_views,
        total_view_n=cfg.total_views,
        depth=cfg.depth,
        seed=cfg.seed,
        **kw,
    )


def _check_data(cfg: TrainConfig) -> tuple[int | None, str, int | None]:
    """(objects, source kind, image size of the first object (folders)); ConfigError else."""
    from instantmesh.shard_reader import SampleError

    if not storage.is_local(cfg.data) and not storage.exists(cfg.data):
        raise ConfigError(f"--data {cfg.data}: no such folder")
    if storage.is_local(cfg.data) and not os.path.exists(cfg.data):
        raise ConfigError(f"--data {cfg.data}: no such folder")
    try:
        ds = _dataset(cfg)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"--data {cfg.data}: {e}") from e
    try:
        n: int | None = len(ds)
    except TypeError:
        n = None
    if n == 0:
        raise ConfigError(
            f"--data {cfg.data}: no objects (no {ds.layout_dir}/<uid>/cameras.npz folders)"
        )
    size = None
    if ds.source_kind == "folders":
        try:
            item = ds[0]
        except (SampleError, ValueError) as e:
            raise ConfigError(f"--data {cfg.data}: first object unreadable: {e}") from e
        size = int(item["input_images"].shape[-1])
    return n, ds.source_kind, size


def read_init_state(url: str) -> dict[str, torch.Tensor]:
    """The model tensors of ``url``: an upstream-layout ``.ckpt`` file, a folder holding exactly
    one (a training checkpoint ``checkpoints/step-N``), or a ``save_model`` folder."""
    from safetensors.torch import load_file

    from instantmesh.checkpoint import (
        CONFIG_FILE,
        WEIGHTS_FILE,
        CheckpointError,
        read_upstream_state_dict,
    )

    path = Path(url)
    if not path.exists():
        raise FileNotFoundError(f"--init-from {url}: no such file or folder")
    if path.is_file():
        return read_upstream_state_dict(path)
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return dict(load_file(str(path / WEIGHTS_FILE), device="cpu"))
    found = sorted(path.glob("*.ckpt"))
    if len(found) != 1:
        raise CheckpointError(
            f"--init-from {url}: expected one .ckpt file (or a saved model folder), found "
            f"{[p.name for p in found] or 'none'}"
        )
    return read_upstream_state_dict(found[0])


def init_model_state(
    stage: Stage,
    state: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    source: str,
    *,
    check_only: bool = False,
) -> None:
    """Load ``state`` into ``model`` strictly (``check_only``: only check keys and shapes, e.g.
    against a model on the meta device). Stage mesh converts a stage-1 (NeRF) state as upstream
    does (``training.mesh_stage.mesh_state_from_nerf``); the heads without a stage-1
    counterpart (deformation, FlexiCubes weights) keep the model's initialisation, as upstream.
    A state with exactly the model's keys (a stage-2 checkpoint) loads as it is."""
    from instantmesh.checkpoint import check_state_dict, load_state_dict_strict

    own = model.state_dict()
    if stage.init_from == "nerf" and set(state) != set(own):
        from training.mesh_stage import mesh_state_from_nerf

        converted = mesh_state_from_nerf(state, model)  # type: ignore[arg-type]
        state = {k: converted.get(k, v) for k, v in own.items()}
    if check_only:
        check_state_dict(model, state, source)
    else:
        load_state_dict_strict(model, state, source)


def _check_init(cfg: TrainConfig, stage: Stage) -> None:
    if cfg.init_from is None:
        if stage.init_from is not None:
            raise ConfigError(
                f"--stage {stage.name} starts from a stage-1 ({stage.init_from}) checkpoint "
                f"(upstream init_ckpt): pass --init-from <checkpoints/step-N folder or .ckpt>, "
                f"or --init-from {RANDOM_INIT} to start from random weights"
            )
        return
    if cfg.init_from == RANDOM_INIT:
        if stage.init_from is not None:
            print(
                f"imesh train: warning: --init-from {RANDOM_INIT}: stage {stage.name} starts "
                "from random weights, not from a stage-1 checkpoint as upstream does",
                file=sys.stderr,
            )
        return
    from instantmesh.checkpoint import CheckpointError
    from instantmesh.model import build_model

    try:
        state = read_init_state(cfg.init_from)
        model = build_model(cfg.variant, device="meta")
        init_model_state(stage, state, model, cfg.init_from, check_only=True)
    except (CheckpointError, ValueError) as e:
        cause = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise ConfigError(f"--init-from {cfg.init_from}: {cause}") from e


def _check_lpips(net: str) -> None:
    from evaluation.metrics import LPIPS_NETS, lpips_backbone_path, lpips_install_hint

    if net == "random" or net.endswith("-random"):
        return
    if net not in LPIPS_NETS:
        raise ConfigError(
            f"--lpips-net {net!r}: expected one of {list(LPIPS_NETS)} (or 'random', wiring "
            "tests only)"
        )
    if not lpips_backbone_path(net).is_file():
        raise ConfigError(
            f"--lpips-net {net}: the backbone is not on disk. {lpips_install_hint(net)}"
        )


def recorded_config(out: str) -> dict[str, Any] | None:
    """The config recorded in ``out`` by an earlier run (provenance left out), or None."""
    url = storage.join(out, CONFIG_NAME)
    if not storage.exists(url):
        return None
    data = yaml.safe_load(storage.read_text(url)) or {}
    data.pop("_provenance", None)
    return dict(data)


def differing_keys(old: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    """Output-relevant options whose value differs from the recorded config ``old``."""
    new = to_dict(cfg, hashed_only=True)
    return sorted(k for k in new if old.get(k) != new[k])


def check_train_config(cfg: TrainConfig) -> tuple[TrainConfig, TrainPlan]:
    """Every check that needs no Ray; returns the normalised config and the plan. Raises
    :class:`ConfigError` (or a ``CheckpointError``) with a one-line cause."""
    cfg = normalized(cfg)
    stage = STAGES[cfg.stage]
    variant = VARIANTS[cfg.variant]
    if variant.synthesizer != stage.synthesizer:
        fitting = [n for n, v in VARIANTS.items() if v.synthesizer == stage.synthesizer]
        raise ConfigError(
            f"--stage {cfg.stage} trains {stage.synthesizer} variants ({', '.join(fitting)}); "
            f"--variant {cfg.variant} is a {variant.synthesizer} variant"
        )
    for name in ("batch_size", "checkpoint_every", "keep_checkpoints", "input_size", "log_every"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if cfg.num_workers < 1 or cfg.cpus_per_worker < 1 or cfg.loader_workers < 0:
        raise ConfigError(
            "--num-workers and --cpus-per-worker must be >= 1 and --loader-workers >= 0"
        )
    if cfg.lr is not None and not cfg.lr > 0:
        raise ConfigError(f"--lr must be > 0, got {cfg.lr}")
    if not storage.is_local(cfg.out):
        raise ConfigError(f"--out {cfg.out}: training writes to a local folder or file:// URL")
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ConfigError(f"--out {cfg.out}: exists and is not a folder")
    _check_lpips(cfg.lpips_net)
    objects, kind, image_size = _check_data(cfg)
    render_size = cfg.render_size or stage.render_size
    if image_size is not None and render_size > image_size:
        raise ConfigError(
            f"--render-size {render_size} (the {cfg.stage} stage's default when not given) is "
            f"larger than the data's {image_size}-px views; pass --render-size <= {image_size}"
        )
    _check_init(cfg, stage)

    from pipelines.train_checkpoints import latest_training_checkpoint

    old = recorded_config(cfg.out)
    resume, resume_step = None, 0
    if old is not None:
        diff = differing_keys(old, cfg)
        if diff:
            shown = ", ".join(f"{k} ({old.get(k)!r} -> {getattr(cfg, k)!r})" for k in diff[:6])
            raise ConfigError(
                f"--out {cfg.out} holds a run with other settings: {shown}; resume with the "
                "same options or train into another --out"
            )
        resume = latest_training_checkpoint(cfg.out)
        if resume is not None:
            resume_step = int(resume.rstrip("/").rsplit("-", 1)[-1])
    plan = TrainPlan(
        lr=cfg.lr if cfg.lr is not None else stage.lr,
        batch_size=cfg.batch_size or stage.batch_size,
        input_size=cfg.input_size or variant.input_size,
        render_size=render_size,
        checkpoint_every=cfg.checkpoint_every or stage.checkpoint_every,
        grad_clip=stage.grad_clip,
        objects=objects,
        source_kind=kind,
        resume_from=resume,
        resume_step=resume_step,
    )
    return cfg, plan


# ---------------------------------------------------------------------------------------------
# Worker side (one per Ray Train worker).
# ---------------------------------------------------------------------------------------------


def step_seed(seed: int, step: int, rank: int, purpose: str = "step") -> int:
    """A 63-bit seed of (seed, step, rank): every draw of a step is a function of these."""
    digest = hashlib.sha256(f"imesh-train|{purpose}|{seed}|{step}|{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _step_module(step_fn: Callable[..., Any], model: Any) -> Any:
    """An ``nn.Module`` whose ``forward`` runs the stage's step on ``model`` and returns its
    ``StepOutput``: wrapping this (not the model) in DDP makes the step's forward pass the one
    DDP hooks, so the gradients of every parameter used are averaged across ranks."""
    import torch

    class _Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: Any, lpips: Any, generator: Any) -> Any:
            return step_fn(self.model, batch, lpips, generator)

    return _Step()


def _autocast(cfg: TrainConfig, device: torch.device) -> Any:
    import contextlib

    import torch

    use = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.type == "cuda")
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def optimizer_step(
    runner: Callable[..., Any],
    prepare: Callable[..., Any],
    batch: Mapping[str, Any],
    *,
    seed: int,
    plan: TrainPlan,
    cfg: TrainConfig,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.nn.Parameter],
    lpips: Any,
) -> Any:
    """One training step on a collated ``batch``: every draw seeded by ``seed`` (the global
    torch RNG, the CPU generator of ``prepare``, the device generator of the model's own
    sampling), forward under the configured autocast, backward, gradient clip (the stage's),
    optimiser step. ``runner(prepared, lpips, generator)`` runs the stage's step (the DDP
    wrapper in the worker, the plain step function in the benchmark). Returns its
    ``StepOutput``; the scheduler is the caller's (it may step per epoch)."""
    import torch

    torch.manual_seed(seed)
    prepared = prepare(
        batch,
        input_size=plan.input_size,
        render_size=plan.render_size,
        generator=torch.Generator().manual_seed(seed),
    ).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    optimizer.zero_grad(set_to_none=True)
    with _autocast(cfg, device):
        out = runner(prepared, lpips, generator)
    out.loss.backward()
    if plan.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, plan.grad_clip)
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out


def train_worker(payload: dict[str, Any]) -> None:
    """The Ray Train loop of one worker (see the module docstring)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = int(ctx.get_world_rank()), int(ctx.get_world_size())
    device = ray.train.torch.get_device()
    progress = payload.get("progress")

    def send(message: dict[str, Any]) -> None:
        if rank == 0 and progress is not None:
            progress.put(message)

    prepare_model = None
    if world > 1:

        def prepare_model(module: Any) -> Any:
            return ray.train.torch.prepare_model(
                module, parallel_strategy_kwargs={"find_unused_parameters": True}
            )

    run_training(
        from_dict(TrainConfig, payload["config"]),
        TrainPlan(**payload["plan"]),
        rank=rank,
        world_size=world,
        device=device,
        send=send,
        prepare_model=prepare_model,
    )


def _all_min(flag: int, world: int, device: torch.device) -> int:
    import torch
    import torch.distributed as dist

    if world == 1:
        return flag
    t = torch.tensor([flag], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _mean_terms(terms: Mapping[str, float], world: int, device: torch.device) -> dict[str, float]:
    import torch
    import torch.distributed as dist

    if world == 1:
        return dict(terms)
    keys = sorted(terms)
    t = torch.tensor([terms[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist(), strict=True)}


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def run_training(
    cfg: TrainConfig,
    plan: TrainPlan,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    send: Callable[[dict[str, Any]], None],
    prepare_model: Callable[[Any], Any] | None = None,
) -> None:
    """The training loop of rank ``rank`` (called by :func:`train_worker` inside Ray Train)."""
    import torch

    from instantmesh.model import build_model
    from pipelines.train_checkpoints import load_training_checkpoint, save_training_checkpoint
    from pipelines.train_report import MetricsLog
    from training.losses import load_lpips_loss
    from training.stages import build_optimizer, build_scheduler

    torch.set_num_threads(cfg.cpus_per_worker)
    stage = STAGES[cfg.stage]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.variant).to(device)
    if cfg.init_from not in (None, RANDOM_INIT):
        assert cfg.init_from is not None
        init_model_state(stage, read_init_state(cfg.init_from), model, cfg.init_from)
    model.train()
    optimizer = build_optimizer(stage, model, plan.lr)
    scheduler = build_scheduler(stage, optimizer, plan.lr)
    step, epoch, batches_in_epoch = 0, 0, 0
    consumed: list[str] = []
    if plan.resume_from is not None:
        state = load_training_checkpoint(plan.resume_from, model, optimizer, scheduler)
        step, epoch = int(state["step"]), int(state["epoch"])
        batches_in_epoch = int(state["batches_in_epoch"])
        consumed = [str(u) for u in state["consumed"][rank]]
    wrapped = _step_module(stage.step_fn(), model)
    runner = prepare_model(wrapped) if prepare_model is not None else wrapped
    lpips = load_lpips_loss(cfg.lpips_net, device)
    prepare = stage.prepare_fn()
    dataset = _dataset(cfg, rank=rank, world_size=world_size, shuffle=True)
    metrics = MetricsLog(cfg.out, resume_from_step=step) if rank == 0 else None
    ckpt_url = plan.resume_from
    start_step = step
    first_step_at: float | None = None
    last: dict[str, float] = {}
    params = [p for p in model.parameters() if p.requires_grad]

    def checkpoint() -> None:
        nonlocal ckpt_url
        gathered = _gather_lists(consumed, world_size)
        if rank == 0:
            state = {
                "step": step,
                "epoch": epoch,
                "batches_in_epoch": batches_in_epoch,
                "consumed": gathered,
                "config": to_dict(cfg),
                "rng_torch": torch.get_rng_state(),
            }
            ckpt_url = save_training_checkpoint(
                cfg.out, step, model, optimizer, scheduler, state, keep=cfg.keep_checkpoints
            )
            assert metrics is not None
            metrics.flush()
            send({"kind": "checkpoint", "step": step, "url": ckpt_url})
        _barrier(world_size)

    while step < cfg.steps:
        dataset.set_epoch(epoch)
        dataset.set_resume_skip(consumed)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=plan.batch_size, num_workers=cfg.loader_workers
        )
        batches = iter(loader)
        while step < cfg.steps:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if _all_min(0 if batch is None else 1, world_size, device) == 0:
                break
            assert batch is not None
            data_s = time.perf_counter() - t0
            if first_step_at is None:
                first_step_at = time.time()
                send({"kind": "started", "time": first_step_at, "step": step})
            lr = float(optimizer.param_groups[0]["lr"])
            out = optimizer_step(
                runner,
                prepare,
                batch,
                seed=step_seed(cfg.seed, step, rank),
                plan=plan,
                cfg=cfg,
                device=device,
                optimizer=optimizer,
                params=params,
                lpips=lpips,
            )
            if stage.scheduler_interval == "step":
                scheduler.step()
            step += 1
            batches_in_epoch += 1
            uids = [str(u) for u in batch["uid"]]
            consumed.extend(uids)
            step_s = time.perf_counter() - t0
            terms = _mean_terms(out.terms, world_size, device)
            every_uid = [u for part in _gather_lists(uids, world_size) for u in part]
            last = terms
            if metrics is not None:
                samples = len(every_uid)
                metrics.append(
                    {
                        "step": step,
                        "epoch": epoch,
                        **terms,
                        "lr": lr,
                        "samples_per_s": samples / step_s,
                        "images_per_s": out.images * world_size / step_s,
                        "data_time_s": data_s,
                        "step_time_s": step_s,
                        "uids": every_uid,
                    }
                )
                if step % cfg.log_every == 0 or step == cfg.steps:
                    send(
                        {
                            "kind": "progress",
                            "step": step,
                            "loss": terms.get("loss", float("nan")),
                            "samples_per_s": samples / step_s,
                            "data_share": data_s / step_s,
                        }
                    )
            if step % plan.checkpoint_every == 0 or step == cfg.steps:
                checkpoint()
        if step >= cfg.steps:
            break
        epoch += 1  # the pass ended: next epoch
        batches_in_epoch = 0
        consumed = []
        if stage.scheduler_interval == "epoch":
            scheduler.step()
    send(
        {
            "kind": "done",
            "step": step,
            "start_step": start_step,
            "checkpoint": ckpt_url,
            "time": time.time(),
            "loss": last.get("loss"),
        }
    )


def _gather_lists(values: list[str], world: int) -> list[list[str]]:
    """Every rank's ``values`` (e.g. the uids consumed this epoch), by rank."""
    if world == 1:
        return [list(values)]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, list(values))
    return [list(x) for x in out]


# ---------------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------------


def _use_gpu(cfg: TrainConfig) -> bool:
    """``--use-gpu``, or (auto) whether the Ray cluster has GPUs; a cluster too small for the
    workers is a ConfigError (Ray Train would wait for the resources forever)."""
    import ray

    have = ray.cluster_resources()
    use = cfg.use_gpu if cfg.use_gpu is not None else float(have.get("GPU", 0)) >= 1
    need = {"CPU": cfg.num_workers * cfg.cpus_per_worker, "GPU": cfg.num_workers if use else 0}
    short = [f"{need[k]:g} {k}" for k in need if need[k] > float(have.get(k, 0))]
    if short:
        raise ConfigError(
            f"--num-workers {cfg.num_workers} x --cpus-per-worker {cfg.cpus_per_worker}"
            + (" with --use-gpu" if use else "")
            + f" needs {' and '.join(short)}; the Ray cluster has "
            + ", ".join(f"{float(have.get(k, 0)):g} {k}" for k in need)
        )
    return use


def run_train(
    cfg: TrainConfig,
    plan: TrainPlan | None = None,
    echo: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run (or resume) training on Ray Train; call inside ``ray_session``. ``plan``: from
    :func:`check_train_config` (run here when not given). One trainer per output folder: a
    second one on the same ``--out`` fails at once (``StageLocked``, naming the holder)."""
    from pipelines.runner import stage_lock

    echo = echo or (lambda line: print(line, flush=True))
    t_start = time.time()
    if plan is None:
        cfg, plan = check_train_config(cfg)
    use_gpu = _use_gpu(cfg)  # before anything is written
    storage.makedirs(cfg.out)
    with stage_lock(cfg.out):
        return _train_locked(cfg, plan, use_gpu, echo, t_start)


def _train_locked(
    cfg: TrainConfig,
    plan: TrainPlan,
    use_gpu: bool,
    echo: Callable[[str], None],
    t_start: float,
) -> TrainResult:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    write_resolved_config(cfg, storage.join(cfg.out, CONFIG_NAME))
    if plan.resume_from is not None:
        echo(f"resuming from {plan.resume_from} (step {plan.resume_step} of {cfg.steps})")
    if plan.resume_step >= cfg.steps:
        echo(f"{cfg.out} already holds step {plan.resume_step} of {cfg.steps}: nothing to train")
        return _finish(cfg, plan, t_start, plan.resume_step, plan.resume_step, None, None, echo)
    progress: Queue = Queue()
    payload = {
        "config": to_dict(cfg),
        "plan": dataclasses.asdict(plan),
        "progress": progress,
    }
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=payload,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            storage_path=storage.join(cfg.out, RAY_DIR),
            name=f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        ),
    )
    errors: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # handed to the driver thread below
            errors.append(e)

    t_fit = time.time()
    thread = threading.Thread(target=fit, name="imesh-train-fit", daemon=True)
    thread.start()
    done: dict[str, Any] = {}
    started: float | None = None
    while thread.is_alive() or not progress.empty():
        try:
            msg = progress.get(timeout=0.5)
        except (queue_mod.Empty, Exception):  # ray.util.queue.Empty
            continue
        kind = msg.get("kind")
        if kind == "started":
            started = float(msg["time"])
        elif kind == "progress":
            echo(
                f"step {msg['step']}/{cfg.steps}  loss {msg['loss']:.4f}  "
                f"{msg['samples_per_s']:.2f} samples/s  data {100 * msg['data_share']:.0f}% "
                "of step time"
            )
        elif kind == "checkpoint":
            echo(f"checkpoint: {msg['url']}")
        elif kind == "done":
            done = msg
    thread.join()
    if errors:
        raise _worker_error(errors[0]) from errors[0]
    end = float(done.get("time", time.time()))
    first = started if started is not None else end
    return _finish(
        cfg,
        plan,
        t_start,
        int(done.get("start_step", plan.resume_step)),
        int(done.get("step", plan.resume_step)),
        done.get("checkpoint"),
        (first - t_fit, end - first, done.get("loss")),
        echo,
    )


def _worker_error(e: BaseException) -> BaseException:
    """The first worker's own exception out of Ray Train's wrapper (a user error then reaches
    the CLI as itself: one line, exit 2)."""
    failures = getattr(e, "worker_failures", None)
    if isinstance(failures, Mapping) and failures:
        inner = failures[min(failures)]
        cause = getattr(inner, "cause", None)
        return cause if isinstance(cause, BaseException) else inner
    return e


def _finish(
    cfg: TrainConfig,
    plan: TrainPlan,
    t_start: float,
    start_step: int,
    step: int,
    checkpoint: str | None,
    timing: tuple[float, float, Any] | None,
    echo: Callable[[str], None],
) -> TrainResult:
    from pipelines.train_checkpoints import latest_training_checkpoint
    from pipelines.train_report import write_train_report

    metrics_uri = storage.join(cfg.out, METRICS_NAME)
    report_uri = write_train_report(cfg.out) if storage.exists(metrics_uri) else None
    startup_s, train_s, loss = timing if timing is not None else (0.0, 0.0, None)
    steps_run = step - start_step
    samples = steps_run * plan.batch_size * cfg.num_workers
    result = TrainResult(
        out=cfg.out,
        start_step=start_step,
        steps=step,
        resumed_from=plan.resume_from,
        wall_s=time.time() - t_start,
        train_s=train_s,
        startup_s=startup_s,
        samples_per_s=samples / train_s if train_s > 0 else 0.0,
        checkpoint=checkpoint or latest_training_checkpoint(cfg.out),
        metrics_uri=metrics_uri,
        report_uri=report_uri,
        last_loss=None if loss is None else float(loss),
    )
    return result


def summary_lines(cfg: TrainConfig, result: TrainResult) -> list[str]:
    """The final summary: steps, wall, throughput, outputs and the evaluation command."""
    lines = [
        f"trained steps {result.start_step} -> {result.steps} of {cfg.steps} "
        f"({cfg.stage} stage, {cfg.variant})"
        + (f", resumed from {result.resumed_from}" if result.resumed_from else "")
        + (f"; last loss {result.last_loss:.4f}" if result.last_loss is not None else ""),
        f"wall {result.wall_s:.1f} s (checks + Ray start {result.ray_start_s:.1f} s, Ray Train "
        f"start to first step {result.startup_s:.1f} s, training {result.train_s:.1f} s), "
        f"{result.samples_per_s:.2f} samples/s",
        f"checkpoints: {storage.join(cfg.out, 'checkpoints')}/  latest: {result.checkpoint}",
        f"metrics: {result.metrics_uri}  report: {result.report_uri}",
    ]
    if cfg.lpips_net.endswith("random"):
        lines.append("note: --lpips-net random: the LPIPS term used a random trunk (wiring only)")
    if result.checkpoint is not None:
        lines.append(
            "evaluate: imesh benchmark --predictor instantmesh --checkpoint "
            f"{result.checkpoint} --variant {cfg.variant} --evalsets <evaluation set dirs> "
            "--out <run dir>"
        )
    return lines


def main_train(cfg: TrainConfig) -> int:
    """``imesh train``: check the inputs (exit 2 before Ray), train, print the summary."""
    from pipelines.ray_session import ray_session

    t0 = time.time()
    cfg, plan = check_train_config(cfg)
    with ray_session(cfg.address):
        t_ray = time.time()
        result = run_train(cfg, plan)
    result = dataclasses.replace(result, wall_s=time.time() - t0, ray_start_s=t_ray - t0)
    for line in summary_lines(cfg, result):
        print(line)
    sys.stdout.flush()
    return 0


__all__ = [
    "TrainConfig",
    "TrainPlan",
    "TrainResult",
    "check_train_config",
    "main_train",
    "read_init_state",
    "run_train",
    "step_seed",
    "summary_lines",
]
