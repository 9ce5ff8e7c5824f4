"""The two training stages: what each trains, how a step runs, and upstream's optimiser settings.

One registry entry per stage (:data:`STAGES`), as upstream InstantMesh trains (TencentARC/
InstantMesh):

- ``nerf`` (stage 1): ``configs/instant-nerf-large-train.yaml`` + ``src/model.py`` ``MVRecon``:
  a NeRF variant, volume rendering of random 192 x 192 crops;
- ``mesh`` (stage 2): ``configs/instant-mesh-large-train.yaml`` + ``src/model_mesh.py``: a mesh
  (FlexiCubes) variant at 512 x 512, initialised from a stage-1 checkpoint (``init_ckpt``).

Each constant cites where upstream sets it. The step and data-preparation functions are named
by ``"module:function"`` and imported on first use, so reading the registry (``--help``, config
checks) imports neither torch nor the model code.

Schedule interval: upstream returns ``{'optimizer': ..., 'lr_scheduler': scheduler}`` from
``configure_optimizers`` with no ``interval`` key, and PyTorch Lightning's default for that is
``"epoch"``: the cosine schedule advances once per **epoch** (a pass over the data), not per
step. :attr:`Stage.scheduler_interval` keeps that; ``"step"`` is there for runs that want the
per-step reading.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from training.batches import PreparedBatch
    from training.step_output import StepOutput

    PrepareFn = Callable[..., PreparedBatch]
    StepFn = Callable[[Any, PreparedBatch, torch.nn.Module, torch.Generator], StepOutput]

SchedulerInterval = Literal["epoch", "step"]


@dataclass(frozen=True)
class Stage:
    """One training stage: the synthesizer kind it trains and upstream's settings for it."""

    name: str
    synthesizer: Literal["nerf", "mesh"]
    """The variant kind the stage trains (``instantmesh.VARIANTS[v].synthesizer``)."""
    prepare: str
    """``module:function`` turning a collated dataset batch into a ``PreparedBatch``."""
    step: str
    """``module:function`` running one forward pass and the losses -> ``StepOutput``."""
    lr: float
    """AdamW learning rate (upstream ``model.base_learning_rate``; train.py uses it unscaled)."""
    betas: tuple[float, float]
    weight_decay: float
    scheduler_t0: int
    """``CosineAnnealingWarmRestarts`` period ``T_0`` (in scheduler intervals)."""
    eta_min_ratio: float
    """``eta_min`` = ``lr`` x this."""
    scheduler_interval: SchedulerInterval
    grad_clip: float | None
    """Gradient-norm clip (Lightning ``gradient_clip_val``); None: no clipping."""
    render_size: int
    """Side of the supervised renders (upstream ``model.params.render_size``)."""
    input_size: int
    """Side of the input views (upstream ``model.params.input_size``)."""
    batch_size: int
    """Objects per GPU per step (upstream ``data.params.batch_size``)."""
    checkpoint_every: int
    """Steps between checkpoints (upstream ``modelcheckpoint.every_n_train_steps``)."""
    init_from: Literal["nerf"] | None
    """The stage whose checkpoint initialises this one (upstream ``init_ckpt``), if any."""
    upstream: str
    """The upstream files these settings come from."""

    def prepare_fn(self) -> PrepareFn:
        fn: PrepareFn = _resolve(self.prepare)
        return fn

    def step_fn(self) -> StepFn:
        fn: StepFn = _resolve(self.step)
        return fn


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


STAGES: dict[str, Stage] = {
    "nerf": Stage(
        name="nerf",
        synthesizer="nerf",
        prepare="training.batches:prepare_nerf_batch",
        step="training.nerf_stage:nerf_step",
        # configs/instant-nerf-large-train.yaml: model.base_learning_rate 4.0e-04
        lr=4.0e-4,
        # src/model.py MVRecon.configure_optimizers: AdamW(betas=(0.90, 0.95)), the param
        # group's weight_decay 0.01, CosineAnnealingWarmRestarts(optimizer, 3000, eta_min=lr/10)
        betas=(0.90, 0.95),
        weight_decay=0.01,
        scheduler_t0=3000,
        eta_min_ratio=0.1,
        scheduler_interval="epoch",  # Lightning's default for a scheduler without "interval"
        # configs/instant-nerf-large-train.yaml: lightning.trainer.gradient_clip_val 1.0
        grad_clip=1.0,
        # configs/instant-nerf-large-train.yaml: model.params.render_size 192 (random crops of
        # a random resize, src/model.py prepare_batch_data), input_size 320
        render_size=192,
        input_size=320,
        # configs/instant-nerf-large-train.yaml: data.params.batch_size 2 (per GPU)
        batch_size=2,
        # configs/instant-nerf-large-train.yaml: modelcheckpoint every_n_train_steps 1000
        checkpoint_every=1000,
        init_from=None,
        upstream="configs/instant-nerf-large-train.yaml, src/model.py",
    ),
    "mesh": Stage(
        name="mesh",
        synthesizer="mesh",
        prepare="training.batches:prepare_mesh_batch",
        step="training.mesh_stage:mesh_step",
        # configs/instant-mesh-large-train.yaml: model.base_learning_rate 4.0e-05
        lr=4.0e-5,
        # src/model_mesh.py MVRecon.configure_optimizers: AdamW(betas=(0.90, 0.95),
        # weight_decay=0.01), CosineAnnealingWarmRestarts(optimizer, 100000, eta_min=0)
        betas=(0.90, 0.95),
        weight_decay=0.01,
        scheduler_t0=100000,
        eta_min_ratio=0.0,
        scheduler_interval="epoch",
        # configs/instant-mesh-large-train.yaml sets no gradient_clip_val: no clipping
        grad_clip=None,
        # configs/instant-mesh-large-train.yaml: model.params.render_size 512, input_size 320
        render_size=512,
        input_size=320,
        batch_size=2,
        # configs/instant-mesh-large-train.yaml: modelcheckpoint every_n_train_steps 2000
        checkpoint_every=2000,
        # configs/instant-mesh-large-train.yaml: model.params.init_ckpt = the stage-1 last.ckpt
        init_from="nerf",
        upstream="configs/instant-mesh-large-train.yaml, src/model_mesh.py",
    ),
}


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown training stage {name!r}; choose one of {list(STAGES)}") from None


def build_optimizer(stage: Stage | str, model: torch.nn.Module, lr: float | None = None) -> Any:
    """Upstream's AdamW over every parameter of ``model`` (``lr``: the stage's by default)."""
    import torch

    st = get_stage(stage) if isinstance(stage, str) else stage
    return torch.optim.AdamW(
        model.parameters(),
        lr=st.lr if lr is None else lr,
        betas=st.betas,
        weight_decay=st.weight_decay,
    )


def build_scheduler(
    stage: Stage | str, optimizer: torch.optim.Optimizer, lr: float | None = None
) -> Any:
    """Upstream's ``CosineAnnealingWarmRestarts(T_0, eta_min = lr x ratio)`` for ``optimizer``
    (step it per :attr:`Stage.scheduler_interval`)."""
    import torch

    st = get_stage(stage) if isinstance(stage, str) else stage
    base = st.lr if lr is None else lr
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=st.scheduler_t0, eta_min=base * st.eta_min_ratio
    )


def stage_defaults(stage: Stage | str) -> Mapping[str, Any]:
    """The stage's defaults of the trainer options (lr, render/input size, batch, checkpoints)."""
    st = get_stage(stage) if isinstance(stage, str) else stage
    return {
        "lr": st.lr,
        "render_size": st.render_size,
        "input_size": st.input_size,
        "batch_size": st.batch_size,
        "checkpoint_every": st.checkpoint_every,
        "grad_clip": st.grad_clip,
    }
