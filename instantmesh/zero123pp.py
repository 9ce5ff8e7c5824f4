"""Zero123++ v1.2 multi-view diffusion (InstantMesh's white-background fine-tune), on diffusers.

One condition image in, one 640 (w) x 960 (h) image out: six 320 x 320 views in a 3 x 2 grid,
read row-major (view ``k`` at row ``k // 2``, column ``k % 2``), elevations 20 / -10 alternating,
azimuths condition + 30, 90, ..., 330 deg (:func:`rendering.cameras.zero123pp_cameras`).

Behaviour reproduced from upstream (SUDO-AI-3D/zero123plus ``diffusers-support/pipeline.py``, as
vendored by TencentARC/InstantMesh ``zero123plus/pipeline.py`` and driven by its ``run.py``):

- **Components**: the diffusers folder of ``sudo-ai/zero123plus-v1.2``: ``vae``,
  ``text_encoder`` + ``tokenizer`` (the prompt is always the empty string), ``unet``,
  ``scheduler``, ``vision_encoder`` (CLIP with projection: the global image embedding),
  ``feature_extractor_clip`` / ``feature_extractor_vae`` (their ``preprocessor_config.json``:
  224 px bicubic with CLIP mean/std, and 512 px bilinear with mean 0.5 / std 0.8), and
  ``ramping_coefficients`` (77 floats in ``model_index.json``).
- **Global condition**: ``prompt_embeds = text("") + image_embeds[:, None, :] * ramp[:, None]``
  (one ramp weight per token); the negative (unconditional) embedding is ``text("")`` alone.
- **Reference attention**: every self-attention (``attn1``) processor of the UNet is wrapped.
  Per UNet call, the condition latents are noised to the current step
  (``scheduler.add_noise`` with fresh noise, then ``scheduler.scale_model_input``) and run through
  the UNet in "write" mode, which records each ``attn1``'s input tokens; the real call then runs
  in "read" mode, where each ``attn1`` attends over ``[own tokens, recorded tokens]``.
- **Condition latents**: ``vae.encode(feature_extractor_vae(image)).latent_dist.sample()``, *not*
  multiplied by the VAE scaling factor. With classifier-free guidance (``guidance_scale > 1``) the
  negative branch's reference is the encoding of an all-zero image (of the normalized input).
- **Latent scaling of the output**: the model denoises ``scale_latents(z) = (z - 0.22) * 0.75``
  of ``z = vae_latent * scaling_factor`` of images squeezed by ``scale_image(x) = x * 0.5 / 0.8``;
  decoding is ``unscale_image(vae.decode(unscale_latents(z) / scaling_factor))``.
- **Sampling**: v-prediction, ``EulerAncestralDiscreteScheduler`` with
  ``timestep_spacing="trailing"`` (``run.py`` swaps it in; :func:`from_pretrained` does too),
  75 steps, guidance 4.0; RGBA input composited on white (the InstantMesh variant of
  ``to_rgb_image``).
- **Randomness** (upstream order, one stream): the condition-latent sample, the negative
  condition-latent sample, the initial latents, then per step the reference noise followed by the
  Euler-ancestral noise. ``seed=`` draws all of them from one ``torch.Generator`` seeded with it
  on the execution device, which is what ``run.py`` gets from ``seed_everything(seed)`` for its
  first image (everything drawn from the device's default generator). ``generator=`` instead
  reproduces upstream's custom-pipeline call with a generator: it feeds the initial latents and
  the scheduler only, the condition-latent samples and the reference noise come from torch's
  global RNG.

Differences from upstream, on purpose: the pipeline is a :class:`diffusers.DiffusionPipeline`
with its own denoising loop (same order of operations as ``StableDiffusionPipeline.__call__``)
instead of a ``StableDiffusionPipeline`` subclass; the UNet stays a plain
``UNet2DConditionModel`` (reference attention lives in its processors and in
:meth:`Zero123PlusPipeline.reference_unet`), so weights load into ``pipe.unet`` directly; image
preprocessing reads the two feature extractors' configs and applies them with PIL like the
``transformers`` 4.x ``CLIPImageProcessor`` upstream ran on (``transformers`` 5 ships a
torchvision-backed processor under that name, whose resampling differs); the ControlNet
(depth / normal) variants and the ``is_cfg_guidance`` mode (unused by upstream's pipeline) are not
implemented.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

# Concrete modules rather than the ``diffusers`` namespace: its lazy ``__init__`` makes type
# checkers see the dummy placeholder classes.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
    EulerAncestralDiscreteScheduler,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from instantmesh.background import (
    FOREGROUND_RATIO,
    MissingDependencyError,
    composite_on_white,
    remove_image_background,
    resize_foreground,
)
from instantmesh.background import has_transparency as _has_transparency
from instantmesh.background import normalize_mode as _normalize_mode
from instantmesh.checkpoint import CheckpointError, CheckpointMismatch, load_state_dict_strict
from instantmesh.zero123pp_data import (
    GRID_COLS,
    GRID_HEIGHT,
    GRID_ROWS,
    GRID_WIDTH,
    NUM_VIEWS,
    VIEW_SIZE,
)

logger = logging.getLogger(__name__)

MODEL_ID = "sudo-ai/zero123plus-v1.2"
WHITE_BACKGROUND_UNET_FILE = "diffusion_pytorch_model.bin"
"""InstantMesh's white-background UNet (``TencentARC/InstantMesh``): plain diffusers keys."""

DEFAULT_STEPS = 75
DEFAULT_GUIDANCE = 4.0
MIN_IMAGE_SIDE = 16

LATENT_SHIFT = 0.22
LATENT_SCALE = 0.75
IMAGE_HALF_RANGE = 0.5
IMAGE_RANGE = 0.8

_REF_WRITE = "write"
_REF_READ = "read"


# ----------------------------------------------------------------------------------------------
# Latent and image scaling (upstream scale_latents / unscale_latents / scale_image / unscale_image)


def scale_latents(latents: torch.Tensor) -> torch.Tensor:
    """VAE latents (already times ``scaling_factor``) -> the space the UNet denoises."""
    return (latents - LATENT_SHIFT) * LATENT_SCALE


def unscale_latents(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`scale_latents`."""
    return latents / LATENT_SCALE + LATENT_SHIFT


def scale_image(image: torch.Tensor) -> torch.Tensor:
    """An image in [-1, 1] -> [-0.625, 0.625], the range the target grids are encoded from."""
    return image * IMAGE_HALF_RANGE / IMAGE_RANGE


def unscale_image(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`scale_image` (same operation order as upstream, bit for bit)."""
    return image / IMAGE_HALF_RANGE * IMAGE_RANGE


# ----------------------------------------------------------------------------------------------
# Errors


class Zero123ppWeightsError(CheckpointError):
    """The Zero123++ weights folder could not be found or used."""


# ----------------------------------------------------------------------------------------------
# Grid helpers (PIL)


def split_grid(image: Image.Image) -> list[Image.Image]:
    """The six views of a 3 x 2 grid image, row-major (view ``k`` at row ``k // 2``, col ``k % 2``).

    Any grid whose width is a multiple of 2 and height a multiple of 3 works (640 x 960 gives
    320 x 320 views).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    width, height = image.size
    if width % GRID_COLS or height % GRID_ROWS:
        raise ValueError(
            f"grid image must be {GRID_COLS} views wide and {GRID_ROWS} high: width a multiple "
            f"of {GRID_COLS} and height of {GRID_ROWS}, got {width}x{height} (w x h)"
        )
    vw, vh = width // GRID_COLS, height // GRID_ROWS
    return [
        image.crop((c * vw, r * vh, (c + 1) * vw, (r + 1) * vh))
        for r in range(GRID_ROWS)
        for c in range(GRID_COLS)
    ]


def merge_grid(views: Sequence[Image.Image]) -> Image.Image:
    """Six equally sized views -> one 3 x 2 grid image (row-major); inverse of :func:`split_grid`."""
    if isinstance(views, Image.Image) or len(views) != NUM_VIEWS:
        n = "a single image" if isinstance(views, Image.Image) else f"{len(views)} views"
        raise ValueError(f"views must be a sequence of {NUM_VIEWS} images, got {n}")
    for i, v in enumerate(views):
        if not isinstance(v, Image.Image):
            raise TypeError(f"views[{i}] must be a PIL.Image.Image, got {type(v).__name__}")
    size, mode = views[0].size, views[0].mode
    bad = [i for i, v in enumerate(views) if v.size != size or v.mode != mode]
    if bad:
        raise ValueError(
            f"all views must share size and mode ({size[0]}x{size[1]} {mode}); views {bad} differ"
        )
    vw, vh = size
    grid = Image.new(mode, (GRID_COLS * vw, GRID_ROWS * vh))
    for k, v in enumerate(views):
        r, c = divmod(k, GRID_COLS)
        grid.paste(v, (c * vw, r * vh))
    return grid


# ----------------------------------------------------------------------------------------------
# Condition-image preprocessing


def _resize_shortest_edge(
    image: Image.Image, shortest_edge: int, resample: int
) -> tuple[Image.Image, tuple[int, int]]:
    """PIL resize so the short side is ``shortest_edge`` (long side truncated like transformers
    4.x's ``get_resize_output_image_size``)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    new_w, new_h = (shortest_edge, new_long) if width <= height else (new_long, shortest_edge)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample=PIL.Image.Resampling(resample))
    return image, (new_w, new_h)


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    w, h = image.size
    if (w, h) == (width, height):
        return image
    top, left = (h - height) // 2, (w - width) // 2
    return image.crop((left, top, left + width, top + height))


def preprocess_condition(
    image: Image.Image,
    remove_background: bool = False,
    *,
    foreground_ratio: float | None = FOREGROUND_RATIO,
    size: int | None = VIEW_SIZE,
    rembg_session: Any = None,
    rembg_model: str | os.PathLike[str] | None = None,
) -> Image.Image:
    """Condition image as the pipeline should see it: RGB, object centred, white background.

    A lower-level helper than :func:`instantmesh.background.prepare_condition_image` (upstream
    ``run.py``'s exact decision, used by ``imesh generate``): here re-centring also applies to an
    RGBA input when ``remove_background`` is off.

    1. Optional background removal (the optional extra ``rembg``: a clear
       :class:`MissingDependencyError` when requested and absent; skipped for an RGBA image that
       already has transparency, like upstream). ``rembg_session`` is reused when given, else
       one is built from the local ``rembg_model`` file or rembg's cache (never downloaded:
       :class:`~instantmesh.background.RembgModelMissing` when absent).
    2. An image with transparency has its foreground cropped, centred and padded to
       ``foreground_ratio`` (0.85) of the frame (:func:`resize_foreground`; ``None`` skips it).
       RGB input (or fully opaque RGBA) is kept as is: with no mask there is no foreground box,
       as with upstream's ``--no_rembg``.
    3. Composited on white (:func:`composite_on_white`).
    4. ``size`` (default 320): resized so the short side is ``size`` (PIL bicubic) and centre
       cropped to ``size x size``. ``size=None`` keeps the native resolution, which is what
       upstream ``run.py`` feeds the pipeline (its feature extractors then resize to 512 / 224
       from the full-resolution image); use it for upstream parity.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    img = _normalize_mode(image)
    if remove_background:
        img = remove_image_background(img, rembg_session, model=rembg_model)
    if foreground_ratio is not None and _has_transparency(img):
        img = resize_foreground(img, foreground_ratio)
    rgb = composite_on_white(img) if img.mode == "RGBA" else img.convert("RGB")
    if size is not None:
        rgb, _ = _resize_shortest_edge(rgb, size, int(PIL.Image.Resampling.BICUBIC))
        rgb = _center_crop(rgb, size, size)
    return rgb


def prepare_views(
    views: Image.Image | Sequence[Image.Image], view_size: int = VIEW_SIZE
) -> list[Image.Image]:
    """User-provided multi-view input -> six RGB views on white, ``view_size`` square.

    ``views`` is either one 3 x 2 grid image (e.g. a saved Zero123++ output) or six single views
    (row-major order: elevations 20 / -10 alternating, azimuths 30, 90, ..., 330 relative to the
    condition). RGBA views are composited on white; views of another size are resized (bicubic).
    """
    if isinstance(views, Image.Image):
        singles = split_grid(views)
    else:
        singles = list(views)
        if len(singles) != NUM_VIEWS:
            raise ValueError(f"expected {NUM_VIEWS} views (or one grid image), got {len(singles)}")
    out = []
    for i, v in enumerate(singles):
        if not isinstance(v, Image.Image):
            raise TypeError(f"views[{i}] must be a PIL.Image.Image, got {type(v).__name__}")
        v = _normalize_mode(v)
        rgb = composite_on_white(v) if v.mode == "RGBA" else v.convert("RGB")
        if rgb.size != (view_size, view_size):
            rgb = rgb.resize((view_size, view_size), resample=PIL.Image.Resampling.BICUBIC)
        out.append(rgb)
    return out


def _processor_config(processor: Any) -> dict[str, Any]:
    if processor is None:
        raise ValueError("the pipeline has no feature extractor for this input")
    if hasattr(processor, "to_dict"):
        return dict(processor.to_dict())
    if isinstance(processor, Mapping):
        return dict(processor)
    raise TypeError(f"cannot read an image-processor config from {type(processor).__name__}")


def _channel_values(value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3:
        raise ValueError(f"expected 1 or 3 normalization values, got {arr.size}")
    return arr


def _size_value(value: Any, key: str) -> int | None:
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, Mapping):
        v = value.get(key)
        return None if v is None else int(v)
    return None


def image_to_pixels(image: Image.Image, processor: Any) -> torch.Tensor:
    """``(1, 3, H, W)`` float32 pixels for ``image`` by a CLIP-style processor's config, applied
    with PIL as ``transformers`` 4.x's ``CLIPImageProcessor`` did: shortest-edge resize (the
    config's ``resample``), centre crop, rescale, normalize."""
    cfg = _processor_config(processor)
    img = image.convert("RGB") if cfg.get("do_convert_rgb", True) else image
    if cfg.get("do_resize", True):
        size = cfg.get("size", {})
        edge = _size_value(size, "shortest_edge")
        resample = int(cfg.get("resample", int(PIL.Image.Resampling.BICUBIC)))
        if edge is not None:
            img, _ = _resize_shortest_edge(img, edge, resample)
        elif isinstance(size, Mapping) and size.get("height") and size.get("width"):
            target = (int(size["width"]), int(size["height"]))
            if img.size != target:
                img = img.resize(target, resample=PIL.Image.Resampling(resample))
    if cfg.get("do_center_crop", True):
        crop = cfg.get("crop_size", {})
        if isinstance(crop, numbers.Integral):
            ch = cw = int(crop)
        else:
            ch, cw = int(crop["height"]), int(crop["width"])
        img = _center_crop(img, ch, cw)
    arr = np.asarray(img, dtype=np.float64)
    if cfg.get("do_rescale", True):
        arr = arr * float(cfg.get("rescale_factor", 1.0 / 255.0))
    arr32 = arr.astype(np.float32)
    if cfg.get("do_normalize", True):
        mean = _channel_values(cfg.get("image_mean", 0.5))
        std = _channel_values(cfg.get("image_std", 0.5))
        arr32 = (arr32 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(arr32)).permute(2, 0, 1).unsqueeze(0)


# ----------------------------------------------------------------------------------------------
# Reference attention


class ReferenceAttnProcessor:
    """Self-attention processor with a reference bank (Zero123++'s reference-only attention).

    ``ref_mode="write"`` records this layer's key/value source tokens (the self-attention input)
    under ``name`` in ``ref_bank``; ``ref_mode="read"`` appends the recorded tokens to the
    key/value source. Disabled processors (cross-attention) and calls without a mode run the
    inner processor unchanged.
    """

    def __init__(self, inner: Any, *, enabled: bool, name: str) -> None:
        self.inner = inner
        self.enabled = enabled
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        ref_mode: str | None = None,
        ref_bank: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        if self.enabled and ref_mode is not None:
            if ref_bank is None:
                raise ValueError("reference attention needs a ref_bank dict")
            if ref_mode == _REF_WRITE:
                ref_bank[self.name] = encoder_hidden_states
            elif ref_mode == _REF_READ:
                if self.name not in ref_bank:
                    raise RuntimeError(
                        f"reference attention: nothing recorded for {self.name} (run the "
                        "condition pass in write mode first)"
                    )
                encoder_hidden_states = torch.cat(
                    [encoder_hidden_states, ref_bank.pop(self.name)], dim=1
                )
            else:
                raise ValueError(f"ref_mode must be {_REF_WRITE!r} or {_REF_READ!r}: {ref_mode!r}")
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask)


def install_reference_attention(unet: UNet2DConditionModel) -> None:
    """Wrap every attention processor of ``unet``: self-attention (``attn1``) ones get the
    reference bank, the others run plain. The inner processor is ``AttnProcessor2_0``
    (PyTorch SDPA), as upstream. Idempotent; adds no parameters (state dicts are unchanged)."""
    procs = unet.attn_processors
    if procs and all(isinstance(p, ReferenceAttnProcessor) for p in procs.values()):
        return
    wrapped: dict[str, Any] = {
        name: ReferenceAttnProcessor(
            AttnProcessor2_0(), enabled=name.endswith("attn1.processor"), name=name
        )
        for name in procs
    }
    unet.set_attn_processor(wrapped)


# ----------------------------------------------------------------------------------------------
# The pipeline


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class Zero123PlusPipeline(DiffusionPipeline):
    """Zero123++ v1.2 image-to-multi-view pipeline (see the module docstring).

    Components are registered under the names of the ``sudo-ai/zero123plus-v1.2`` folder, so
    ``Zero123PlusPipeline.from_pretrained(folder)`` (or :func:`from_pretrained`) loads it and
    ``save_pretrained`` writes the same layout, ``ramping_coefficients`` in ``model_index.json``.
    """

    vae: AutoencoderKL
    text_encoder: Any
    tokenizer: Any
    unet: UNet2DConditionModel
    scheduler: Any
    vision_encoder: Any
    feature_extractor_clip: Any
    feature_extractor_vae: Any

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: Any,
        tokenizer: Any,
        unet: UNet2DConditionModel,
        scheduler: Any,
        vision_encoder: Any,
        feature_extractor_clip: Any,
        feature_extractor_vae: Any,
        ramping_coefficients: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            vision_encoder=vision_encoder,
            feature_extractor_clip=feature_extractor_clip,
            feature_extractor_vae=feature_extractor_vae,
        )
        ramp = None if ramping_coefficients is None else [float(x) for x in ramping_coefficients]
        self.register_to_config(ramping_coefficients=ramp)
        self.vae_scale_factor = 2 ** (len(self.vae.config["block_out_channels"]) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        install_reference_attention(self.unet)

    # -- validation ------------------------------------------------------------------------

    def check_inputs(
        self,
        image: Any,
        num_inference_steps: Any = DEFAULT_STEPS,
        guidance_scale: Any = DEFAULT_GUIDANCE,
        seed: Any = None,
        generator: Any = None,
        height: Any = GRID_HEIGHT,
        width: Any = GRID_WIDTH,
        num_images_per_prompt: Any = 1,
        output_type: Any = "pil",
    ) -> None:
        """Raise ``TypeError`` / ``ValueError`` naming the offending argument."""
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"`image` must be a PIL.Image.Image (RGB, or RGBA composited on white), got "
                f"{type(image).__name__}"
            )
        if image.mode not in ("RGB", "RGBA"):
            raise ValueError(
                f"`image` must be mode RGB or RGBA, got {image.mode!r} (convert it, or use "
                "preprocess_condition())"
            )
        w, h = image.size
        if min(w, h) < MIN_IMAGE_SIDE:
            raise ValueError(f"`image` is {w}x{h}; both sides must be >= {MIN_IMAGE_SIDE} px")
        if image.mode == "RGBA" and image.getchannel("A").getextrema()[1] == 0:  # type: ignore[index]
            raise ValueError("`image` is fully transparent (its alpha channel is zero everywhere)")
        max_steps = int(getattr(self.scheduler.config, "num_train_timesteps", 1000))
        if not _is_int(num_inference_steps) or not 1 <= num_inference_steps <= max_steps:
            raise ValueError(
                f"`num_inference_steps` must be an int in [1, {max_steps}], got "
                f"{num_inference_steps!r}"
            )
        if (
            not isinstance(guidance_scale, numbers.Real)
            or isinstance(guidance_scale, bool)
            or not math.isfinite(float(guidance_scale))
            or guidance_scale < 0
        ):
            raise ValueError(
                f"`guidance_scale` must be a finite number >= 0, got {guidance_scale!r}"
            )
        if seed is not None:
            if not _is_int(seed) or not 0 <= seed < 2**64:
                raise ValueError(f"`seed` must be an int in [0, 2**64), got {seed!r}")
            if generator is not None:
                raise ValueError("pass either `seed` or `generator`, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"`generator` must be a torch.Generator, got {type(generator).__name__}"
            )
        multiple = self.vae_scale_factor
        for name, value, cells in (("height", height, GRID_ROWS), ("width", width, GRID_COLS)):
            if not _is_int(value) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
            if value % (cells * multiple):
                raise ValueError(
                    f"`{name}` must be a multiple of {cells * multiple} ({cells} grid cells "
                    f"x VAE factor {multiple}), got {value}"
                )
        if not _is_int(num_images_per_prompt) or num_images_per_prompt < 1:
            raise ValueError(
                f"`num_images_per_prompt` must be an int >= 1, got {num_images_per_prompt!r}"
            )
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(
                f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}"
            )
        ramp = self.config["ramping_coefficients"]
        if ramp is None:
            raise ValueError(
                "`ramping_coefficients` missing from the pipeline config (model_index.json)"
            )
        max_len = int(self.tokenizer.model_max_length)
        if len(ramp) != max_len:
            raise ValueError(
                f"`ramping_coefficients` has {len(ramp)} values; the tokenizer's sequence "
                f"length is {max_len}"
            )

    # -- conditioning ----------------------------------------------------------------------

    def encode_empty_prompt(self, device: torch.device) -> torch.Tensor:
        """Text-encoder states of the empty prompt, ``(1, 77, D)`` (as ``encode_prompt("")``)."""
        tokens = self.tokenizer(
            "",
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        states = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return states.to(dtype=self.text_encoder.dtype, device=device)

    def encode_condition_image(
        self, pixels: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Condition latents: a VAE posterior sample, unscaled (no ``scaling_factor``)."""
        return self.vae.encode(pixels).latent_dist.sample(generator=generator)

    def global_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding spread over the prompt tokens by the ramping coefficients:
        ``(B, 1, P) * (77, 1) -> (B, 77, P)``."""
        embeds = self.vision_encoder(pixels, output_hidden_states=False).image_embeds
        embeds = embeds.unsqueeze(-2)
        ramp = embeds.new_tensor(self.config["ramping_coefficients"]).unsqueeze(-1)
        return embeds * ramp

    def reference_unet(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        cond_lat: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """One UNet evaluation with reference attention to the (noised) condition latents."""
        noise = randn_tensor(
            tuple(cond_lat.shape), generator=generator, device=cond_lat.device, dtype=cond_lat.dtype
        )
        t = timestep.reshape(-1)
        noisy_cond = self.scheduler.add_noise(cond_lat, noise, t)
        noisy_cond = self.scheduler.scale_model_input(noisy_cond, t)
        bank: dict[str, torch.Tensor] = {}
        self.unet(
            noisy_cond,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            cross_attention_kwargs={"ref_mode": _REF_WRITE, "ref_bank": bank},
            return_dict=False,
        )
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            cross_attention_kwargs={"ref_mode": _REF_READ, "ref_bank": bank},
            return_dict=False,
        )[0]

    # -- sampling --------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image,
        *,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        height: int = GRID_HEIGHT,
        width: int = GRID_WIDTH,
        num_images_per_prompt: int = 1,
        output_type: Literal["pil", "np", "pt", "latent"] = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Generate the 3 x 2 multi-view grid for one condition image.

        ``image``: RGB, or RGBA (composited on white); see :func:`preprocess_condition` for the
        recommended centring. ``seed`` / ``generator``: see the module docstring (randomness).
        Returns ``ImagePipelineOutput(images=[grid, ...])`` (``num_images_per_prompt`` grids,
        ``width`` x ``height``), or the un-scaled latents for ``output_type="latent"``.
        """
        self.check_inputs(
            image,
            num_inference_steps,
            guidance_scale,
            seed,
            generator,
            height,
            width,
            num_images_per_prompt,
            output_type,
        )
        install_reference_attention(self.unet)
        device = self._execution_device
        if seed is not None:
            stream = torch.Generator(device=device).manual_seed(int(seed))
            latent_gen: torch.Generator | None = stream
            cond_gen: torch.Generator | None = stream
        else:
            latent_gen, cond_gen = generator, None
        do_cfg = guidance_scale > 1.0 and self.unet.config["time_cond_proj_dim"] is None
        n = int(num_images_per_prompt)

        rgb = composite_on_white(image)
        vae_pixels = image_to_pixels(rgb, self.feature_extractor_vae)
        clip_pixels = image_to_pixels(rgb, self.feature_extractor_clip)
        vae_pixels = vae_pixels.to(device=device, dtype=self.vae.dtype)
        clip_pixels = clip_pixels.to(device=device, dtype=self.vision_encoder.dtype)

        cond_lat = self.encode_condition_image(vae_pixels, cond_gen)
        if do_cfg:
            negative_lat = self.encode_condition_image(torch.zeros_like(vae_pixels), cond_gen)
            cond_lat = torch.cat([negative_lat, cond_lat])
        global_embeds = self.global_embeddings(clip_pixels)
        empty = self.encode_empty_prompt(device)
        prompt_embeds = (empty + global_embeds).to(dtype=self.text_encoder.dtype)
        seq = prompt_embeds.shape[1]
        prompt_embeds = prompt_embeds.repeat(1, n, 1).view(n, seq, -1)
        if do_cfg:
            negative = empty.repeat(1, n, 1).view(n, seq, -1)
            prompt_embeds = torch.cat([negative, prompt_embeds])
        if n > 1:
            b, *lat_shape = cond_lat.shape
            cond_lat = cond_lat.repeat(1, n, 1, 1).view(b * n, *lat_shape)
        cond_lat = cond_lat.to(dtype=self.unet.dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (
            n,
            int(self.unet.config["in_channels"]),
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        latents = randn_tensor(
            shape, generator=latent_gen, device=device, dtype=prompt_embeds.dtype
        )
        latents = latents * self.scheduler.init_noise_sigma

        with self.progress_bar(total=len(timesteps)) as progress:
            for t in timesteps:
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                pred = self.reference_unet(model_input, t, prompt_embeds, cond_lat, cond_gen)
                if do_cfg:
                    pred_uncond, pred_cond = pred.chunk(2)
                    pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
                latents = self.scheduler.step(
                    pred, t, latents, generator=latent_gen, return_dict=False
                )[0]
                progress.update()

        latents = unscale_latents(latents)
        if output_type == "latent":
            images: Any = latents
        else:
            scaling = float(self.vae.config["scaling_factor"])
            decoded = self.vae.decode(latents.to(self.vae.dtype) / scaling, return_dict=False)[0]
            images = self.image_processor.postprocess(
                unscale_image(decoded), output_type=output_type
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


# ----------------------------------------------------------------------------------------------
# Loading


@contextlib.contextmanager
def _loading_bars_on_a_terminal_only() -> Iterator[None]:
    """diffusers' and transformers' loading bars ("Loading pipeline components", "Loading
    weights") off while stderr is not a terminal: in a log their carriage-return redraws are
    noise. Each library's setting is restored afterwards."""
    if sys.stderr.isatty():
        yield
        return
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    enabled = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    for module in enabled:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module in enabled:
            module.enable_progress_bar()


def from_pretrained(
    path: str | os.PathLike[str] = MODEL_ID,
    *,
    torch_dtype: torch.dtype | None = None,
    white_background_unet: str | os.PathLike[str] | None = None,
    trailing: bool = True,
    local_files_only: bool = True,
) -> Zero123PlusPipeline:
    """Load the Zero123++ v1.2 diffusers folder (a local path, or a repo id already in the
    Hugging Face cache: nothing is downloaded unless ``local_files_only=False``).

    ``trailing`` swaps in ``EulerAncestralDiscreteScheduler`` with ``timestep_spacing="trailing"``
    (as InstantMesh's ``run.py``). ``white_background_unet``: InstantMesh's fine-tuned UNet
    weights file, loaded strictly with :func:`load_white_background_unet`.
    """
    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    source = os.fspath(path)
    local = Path(source)
    if local.exists() and not (local / "model_index.json").is_file():
        raise Zero123ppWeightsError(
            f"{local} is not a diffusers pipeline folder (no model_index.json); expected the "
            f"layout of {MODEL_ID}"
        )
    try:
        with _loading_bars_on_a_terminal_only():
            pipe = Zero123PlusPipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        if local.exists():
            raise
        raise Zero123ppWeightsError(
            f"Zero123++ weights not found at {source!r}: not a local folder and not in the "
            f"Hugging Face cache (downloads are off; fetch them once, e.g. "
            f"`hf download {MODEL_ID}`, or pass the folder's path): {err}"
        ) from err
    if not isinstance(pipe, Zero123PlusPipeline):  # pragma: no cover - diffusers contract
        raise Zero123ppWeightsError(f"{source} loaded as {type(pipe).__name__}")
    if pipe.config["ramping_coefficients"] is None:
        raise Zero123ppWeightsError(f"{source}: model_index.json has no ramping_coefficients")
    if trailing:
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="trailing"
        )
    prediction = getattr(pipe.scheduler.config, "prediction_type", None)
    if prediction != "v_prediction":
        logger.warning(
            "scheduler prediction_type is %r; Zero123++ v1.2 is a v-prediction model", prediction
        )
    if white_background_unet is not None:
        load_white_background_unet(pipe, white_background_unet)
    return pipe


def read_unet_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a UNet weights file: ``.safetensors``, or a plain PyTorch state dict read with
    ``weights_only=True`` (a ``{"state_dict": ...}`` wrapper is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"UNet weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as err:
            raise CheckpointError(f"cannot read safetensors file {path}: {err}") from err
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot read {path} as a plain-tensor PyTorch state dict "
            f"(weights_only=True): {type(err).__name__}: {err}"
        ) from err
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(payload).__name__}")
    bad = [str(k) for k, v in payload.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: non-tensor entries: {', '.join(bad[:5])}")
    return {str(k): v for k, v in payload.items()}


def load_white_background_unet(
    pipe: Zero123PlusPipeline | UNet2DConditionModel,
    path: str | os.PathLike[str] | Mapping[str, torch.Tensor],
) -> None:
    """Load InstantMesh's white-background UNet weights into ``pipe.unet``, strictly.

    Every key and shape must match the UNet (``diffusion_pytorch_model.bin`` holds plain
    diffusers ``UNet2DConditionModel`` keys); otherwise :class:`CheckpointMismatch` lists the
    missing, unexpected and mis-shaped keys and nothing is loaded. Tensors are cast to the
    UNet's dtype and device.
    """
    unet = pipe.unet if isinstance(pipe, Zero123PlusPipeline) else pipe
    if not isinstance(unet, torch.nn.Module):
        raise TypeError(f"expected a Zero123PlusPipeline or a UNet, got {type(pipe).__name__}")
    if isinstance(path, Mapping):
        state, source = dict(path), "<state dict>"
    else:
        state, source = read_unet_state_dict(path), os.fspath(path)
    expected = unet.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mis_shaped:
        raise CheckpointMismatch(
            source, "Zero123++ v1.2 UNet2DConditionModel", missing, unexpected, mis_shaped
        )
    load_state_dict_strict(unet, state, source)


# ----------------------------------------------------------------------------------------------
# One-call entry point


@dataclass(frozen=True)
class MultiviewResult:
    """What :func:`generate_multiview` produced."""

    condition: Image.Image
    """The condition image the pipeline saw (after :func:`preprocess_condition`)."""
    grid: Image.Image
    """The 3 x 2 grid (640 x 960 at the defaults)."""
    views: list[Image.Image]
    """The six views, row-major (elevations 20 / -10 alternating, azimuths 30 ... 330)."""
    seed: int


def generate_multiview(
    pipe: Zero123PlusPipeline,
    image: Image.Image,
    *,
    seed: int = 42,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    remove_background: bool = False,
    foreground_ratio: float | None = FOREGROUND_RATIO,
    condition_size: int | None = None,
    height: int = GRID_HEIGHT,
    width: int = GRID_WIDTH,
    rembg_session: Any = None,
    rembg_model: str | os.PathLike[str] | None = None,
) -> MultiviewResult:
    """Preprocess ``image`` (:func:`preprocess_condition`; ``condition_size=None`` keeps its
    resolution, as upstream ``run.py``), run the pipeline with ``seed``, split the grid.

    To feed a condition already prepared by
    :func:`instantmesh.background.prepare_condition_image` unchanged, pass its RGB image with
    ``remove_background=False, foreground_ratio=None`` (and ``condition_size=None``)."""
    cond = preprocess_condition(
        image,
        remove_background,
        foreground_ratio=foreground_ratio,
        size=condition_size,
        rembg_session=rembg_session,
        rembg_model=rembg_model,
    )
    out = pipe(
        cond,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        seed=seed,
        height=height,
        width=width,
    )
    assert isinstance(out, ImagePipelineOutput)
    grid = out.images[0]
    if not isinstance(grid, Image.Image):  # pragma: no cover - output_type is "pil"
        raise TypeError(f"expected a PIL grid, got {type(grid).__name__}")
    return MultiviewResult(condition=cond, grid=grid, views=split_grid(grid), seed=int(seed))


__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "FOREGROUND_RATIO",
    "GRID_HEIGHT",
    "GRID_WIDTH",
    "MODEL_ID",
    "VIEW_SIZE",
    "WHITE_BACKGROUND_UNET_FILE",
    "MissingDependencyError",
    "MultiviewResult",
    "ReferenceAttnProcessor",
    "Zero123PlusPipeline",
    "Zero123ppWeightsError",
    "composite_on_white",
    "from_pretrained",
    "generate_multiview",
    "image_to_pixels",
    "install_reference_attention",
    "load_white_background_unet",
    "merge_grid",
    "prepare_views",
    "preprocess_condition",
    "read_unet_state_dict",
    "remove_image_background",
    "resize_foreground",
    "scale_image",
    "scale_latents",
    "split_grid",
    "unscale_image",
    "unscale_latents",
]
