"""Zero123++ v1.2 pipeline and fine-tuning data, on a tiny random-initialised model (CPU, offline).

The tiny model is a complete diffusers folder in the layout of ``sudo-ai/zero123plus-v1.2``
(``model_index.json`` with 77 ``ramping_coefficients``, the real scheduler and feature-extractor
configs, a small UNet / VAE / CLIP text + vision encoder), written with ``save_pretrained`` and
read back through :func:`instantmesh.zero123pp.from_pretrained`. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from PIL import Image

from instantmesh.checkpoint import CheckpointMismatch
from instantmesh.zero123pp import (
    GRID_HEIGHT,
    GRID_WIDTH,
    MissingDependencyError,
    ReferenceAttnProcessor,
    Zero123PlusPipeline,
    from_pretrained,
    generate_multiview,
    load_white_background_unet,
    merge_grid,
    prepare_views,
    preprocess_condition,
    resize_foreground,
    scale_image,
    scale_latents,
    split_grid,
    unscale_image,
    unscale_latents,
)
from instantmesh.zero123pp_data import (
    Zero123ppDataset,
    grid_to_views_tensor,
    views_to_grid_tensor,
)

HIDDEN = 16
SEQ_LEN = 77
SMALL_H, SMALL_W = 96, 64  # a 3 x 2 grid of 32 px views (latents 12 x 8)


# --------------------------------------------------------------------------------------------
# The tiny model folder
# --------------------------------------------------------------------------------------------


def build_tiny_zero123pp(folder: Path) -> Path:
    """A random-initialised Zero123++-shaped diffusers folder (same components and configs as
    sudo-ai/zero123plus-v1.2, tiny widths)."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
        EulerAncestralDiscreteScheduler,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        # Attention (hence reference attention) at the half-resolution level and the mid block:
        # keeps the full 640 x 960 run cheap on CPU.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=2,
        norm_num_groups=4,
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),  # 3 downsamplings: VAE factor 8 like the real one
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )
    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=SEQ_LEN)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=HIDDEN,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=SEQ_LEN,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            projection_dim=HIDDEN,
        )
    )
    vision_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=HIDDEN,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=224,
            patch_size=32,
            projection_dim=HIDDEN,
        )
    )
    # The two preprocessor configs of zero123plus-v1.2, verbatim in substance.
    feature_extractor_clip = CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    feature_extractor_vae = CLIPImageProcessor(
        size={"shortest_edge": 512},
        crop_size={"height": 512, "width": 512},
        resample=2,
        image_mean=0.5,
        image_std=0.8,
    )
    # zero123plus-v1.2's scheduler_config.json (from_pretrained switches it to "trailing").
    scheduler = EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        prediction_type="v_prediction",
        steps_offset=1,
        timestep_spacing="linspace",
    )
    pipe = Zero123PlusPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        vision_encoder=vision_encoder,
        feature_extractor_clip=feature_extractor_clip,
        feature_extractor_vae=feature_extractor_vae,
        ramping_coefficients=np.linspace(0.0, 0.6, SEQ_LEN).tolist(),
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Any:
    """Tiny tensors: one intra-op thread is faster than two (and immune to a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_zero123pp(tmp_path_factory.mktemp("zero123pp") / "zero123plus-v1.2")


@pytest.fixture(scope="module")
def pipe(tiny_folder: Path) -> Zero123PlusPipeline:
    p = from_pretrained(tiny_folder)
    p.set_progress_bar_config(disable=True)
    return p


def _noise_image(seed: int, size: tuple[int, int] = (320, 320)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _object_rgba(width: int = 400, height: int = 300) -> Image.Image:
    """Transparent canvas with an opaque off-centre red rectangle (100 x 60 px)."""
    arr = np.zeros((height, width, 4), dtype=np.uint8)
    arr[40:100, 250:350] = (200, 30, 30, 255)
    return Image.fromarray(arr, "RGBA")


def _first(out: Any) -> Any:
    """The first image of a pipeline output."""
    assert isinstance(out, ImagePipelineOutput)
    return out.images[0]


def _pixels(image: Any) -> np.ndarray:
    assert isinstance(image, Image.Image)
    return np.asarray(image)


# --------------------------------------------------------------------------------------------
# Grid split / merge, scaling constants
# --------------------------------------------------------------------------------------------


def test_split_merge_round_trip_is_exact_and_row_major() -> None:
    grid = _noise_image(1, (GRID_WIDTH, GRID_HEIGHT))
    views = split_grid(grid)
    assert len(views) == 6 and all(v.size == (320, 320) for v in views)
    assert _pixels(merge_grid(views)).tobytes() == _pixels(grid).tobytes()
    # Row-major: view k sits at row k // 2, column k % 2.
    arr = _pixels(grid)
    for k, v in enumerate(views):
        r, c = divmod(k, 2)
        np.testing.assert_array_equal(
            _pixels(v), arr[r * 320 : (r + 1) * 320, c * 320 : (c + 1) * 320]
        )
    # The tensor tiling used for training data is the same layout.
    t = torch.from_numpy(np.stack([_pixels(v) for v in views])).permute(0, 3, 1, 2)
    tiled = views_to_grid_tensor(t)
    np.testing.assert_array_equal(tiled.permute(1, 2, 0).numpy(), arr)
    assert torch.equal(grid_to_views_tensor(tiled), t)
    # User-provided views: a grid or six images, RGBA composited on white.
    assert [_pixels(v).tobytes() for v in prepare_views(grid)] == [
        _pixels(v).tobytes() for v in views
    ]
    transparent = Image.new("RGBA", (320, 320), (0, 0, 0, 0))
    assert (_pixels(prepare_views([transparent] * 6)[0]) == 255).all()


def test_split_and_merge_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="multiple"):
        split_grid(Image.new("RGB", (641, 960)))
    with pytest.raises(ValueError, match="6"):
        merge_grid([Image.new("RGB", (32, 32))] * 5)
    with pytest.raises(ValueError, match="differ"):
        merge_grid([Image.new("RGB", (32, 32))] * 5 + [Image.new("RGB", (16, 16))])
    with pytest.raises(ValueError, match="6 views"):
        prepare_views([Image.new("RGB", (32, 32))] * 4)


def test_latent_and_image_scaling_constants() -> None:
    z = torch.tensor([0.22, 1.22, -1.0])
    torch.testing.assert_close(scale_latents(z), (z - 0.22) * 0.75)
    torch.testing.assert_close(unscale_latents(scale_latents(z)), z)
    x = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(scale_image(x), torch.tensor([-0.625, 0.0, 0.625]))
    torch.testing.assert_close(unscale_image(scale_image(x)), x)


# --------------------------------------------------------------------------------------------
# Condition preprocessing
# --------------------------------------------------------------------------------------------


def test_preprocess_condition_centres_foreground_at_85_percent_on_white() -> None:
    out = preprocess_condition(_object_rgba())
    assert out.mode == "RGB" and out.size == (320, 320)
    arr = _pixels(out).astype(int)
    assert (arr[0, 0] == 255).all() and (arr[-1, -1] == 255).all()
    fg = np.argwhere((np.abs(arr - 255).sum(-1)) > 30)
    (y0, x0), (y1, x1) = fg.min(0), fg.max(0) + 1
    # The long side (width) spans 85 % of the frame; the box is centred.
    assert (x1 - x0) / 320 == pytest.approx(0.85, abs=0.02)
    assert (x0 + x1) / 2 == pytest.approx(160, abs=2) and (y0 + y1) / 2 == pytest.approx(160, abs=2)
    # Native resolution (upstream run.py parity): the padded square is int(side / 0.85).
    native = preprocess_condition(_object_rgba(), size=None)
    assert native.size == (int(99 / 0.85),) * 2
    assert resize_foreground(_object_rgba()).size == native.size
    # RGB input has no mask: kept (only resized / centre-cropped to 320).
    assert preprocess_condition(_noise_image(0, (640, 480))).size == (320, 320)


def test_background_removal_reports_missing_rembg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rembg", None)  # import fails even if it were installed
    with pytest.raises(MissingDependencyError, match="rembg"):
        preprocess_condition(_noise_image(0), remove_background=True)
    # Already-transparent RGBA needs no removal (upstream skips it too).
    assert preprocess_condition(_object_rgba(), remove_background=True).size == (320, 320)


# --------------------------------------------------------------------------------------------
# Pipeline: loading, validation, sampling
# --------------------------------------------------------------------------------------------


def test_folder_layout_and_loaded_configuration(
    tiny_folder: Path, pipe: Zero123PlusPipeline
) -> None:
    index = json.loads((tiny_folder / "model_index.json").read_text())
    assert index["_class_name"] == "Zero123PlusPipeline"
    assert len(index["ramping_coefficients"]) == SEQ_LEN
    for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler", "vision_encoder"):
        assert (tiny_folder / name).is_dir()
    assert index["feature_extractor_vae"] == ["transformers", "CLIPImageProcessor"]
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    procs = pipe.unet.attn_processors
    assert all(isinstance(p, ReferenceAttnProcessor) for p in procs.values())
    assert {n for n, p in procs.items() if getattr(p, "enabled", False)} == {
        n for n in procs if n.endswith("attn1.processor")
    }


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"model_index\.json"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"image": np.zeros((320, 320, 3), np.uint8)}, "image"),
        ({"image": Image.new("L", (320, 320))}, "image"),
        ({"image": Image.new("RGB", (8, 320))}, "image"),
        ({"image": Image.new("RGBA", (320, 320), (0, 0, 0, 0))}, "image"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"seed": -1}, "seed"),
        ({"seed": "42"}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": 1, "generator": torch.Generator()}, "seed"),
        ({"generator": 3}, "generator"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"height": 100}, "height"),
        ({"width": 65}, "width"),
        ({"output_type": "bmp"}, "output_type"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
    ],
)
def test_check_inputs_names_the_argument(
    pipe: Zero123PlusPipeline, kwargs: dict[str, Any], argument: str
) -> None:
    call: dict[str, Any] = {"image": _noise_image(0), "num_inference_steps": 1}
    call.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=f"`{argument}`"):
        pipe(call.pop("image"), **call)


def test_tiny_run_shape_and_seed_determinism(pipe: Zero123PlusPipeline) -> None:
    image = _noise_image(0)

    def run(seed: int, img: Image.Image = image) -> np.ndarray:
        out = pipe(img, num_inference_steps=2, seed=seed, height=SMALL_H, width=SMALL_W)
        return _pixels(_first(out))

    a = run(0)
    assert a.shape == (96, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, run(0))
    assert not np.array_equal(a, run(1))
    # The condition image matters (reference attention + CLIP embedding).
    assert not np.array_equal(a, run(0, _noise_image(5)))
    # seed=s draws everything from one stream in upstream's order: identical to upstream
    # run.py's seed_everything(s) followed by a call without a generator (global RNG only).
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out = pipe(image, num_inference_steps=2, height=SMALL_H, width=SMALL_W)
    assert np.array_equal(a, _pixels(_first(out)))
    # Latent output: the un-scaled latents of the grid (VAE factor 8).
    out = pipe(
        image, num_inference_steps=1, seed=0, output_type="latent", height=SMALL_H, width=SMALL_W
    )
    assert isinstance(out, ImagePipelineOutput)
    latents = out.images
    assert isinstance(latents, torch.Tensor) and tuple(latents.shape) == (1, 4, 12, 8)


def test_default_output_is_the_640x960_grid(pipe: Zero123PlusPipeline) -> None:
    result = generate_multiview(pipe, _object_rgba(), seed=3, num_inference_steps=1)
    assert result.grid.size == (640, 960) and result.grid.mode == "RGB"
    assert len(result.views) == 6 and all(v.size == (320, 320) for v in result.views)
    assert _pixels(merge_grid(result.views)).tobytes() == _pixels(result.grid).tobytes()
    assert result.condition.size == (int(99 / 0.85),) * 2  # native resolution, as run.py


# --------------------------------------------------------------------------------------------
# White-background UNet weights
# --------------------------------------------------------------------------------------------


def test_white_background_unet_loads_strictly(pipe: Zero123PlusPipeline, tmp_path: Path) -> None:
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    synthetic = {k: torch.randn(v.shape, generator=gen) for k, v in original.items()}
    path = tmp_path / "diffusion_pytorch_model.bin"
    torch.save(synthetic, path)
    try:
        load_white_background_unet(pipe, path)
        loaded = pipe.unet.state_dict()
        assert all(torch.equal(loaded[k], synthetic[k]) for k in synthetic)

        key = sorted(synthetic)[3]
        missing = {k: v for k, v in synthetic.items() if k != key}
        torch.save(missing, path)
        with pytest.raises(CheckpointMismatch, match="missing") as err:
            load_white_background_unet(pipe, path)
        assert key in str(err.value) and err.value.missing == [key]

        torch.save({**synthetic, "extra.weight": torch.zeros(1)}, path)
        with pytest.raises(CheckpointMismatch, match=r"extra\.weight"):
            load_white_background_unet(pipe, path)

        bad = dict(synthetic)
        bad[key] = torch.zeros(*synthetic[key].shape, 2)
        with pytest.raises(CheckpointMismatch, match="mis-shaped"):
            load_white_background_unet(pipe, bad)
    finally:
        load_white_background_unet(pipe, original)
    assert all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in original.items())


# --------------------------------------------------------------------------------------------
# Fine-tuning data
# --------------------------------------------------------------------------------------------


def _write_object(folder: Path, size: int, colours: list[tuple[int, int, int]]) -> None:
    """Seven RGBA views in the render layout: white (255, 255, 255, 0) background, an opaque
    square of ``colours[i]`` and one half-transparent black pixel."""
    folder.mkdir(parents=True)
    for i, colour in enumerate(colours):
        arr = np.zeros((size, size, 4), dtype=np.uint8)
        arr[...] = (255, 255, 255, 0)
        arr[size // 4 : size // 2, size // 4 : size // 2] = (*colour, 255)
        arr[0, 0] = (0, 0, 0, 128)
        Image.fromarray(arr, "RGBA").save(folder / f"{i:03d}.png")


def test_dataset_round_trips_written_views(tmp_path: Path) -> None:
    colours = [(10 * i, 200 - 20 * i, 30 + 25 * i) for i in range(7)]
    root = tmp_path / "out"
    _write_object(root / "rendering_zero123plus" / "obj_b", 320, colours)
    _write_object(root / "rendering_zero123plus" / "obj_a", 320, colours[::-1])
    ds = Zero123ppDataset(root)
    assert ds.uids == ["obj_a", "obj_b"] and len(ds) == 2
    item = ds[1]
    assert item["uid"] == "obj_b"
    cond, target = item["cond"], item["target"]
    assert isinstance(cond, torch.Tensor) and isinstance(target, torch.Tensor)
    assert cond.shape == (3, 320, 320) and target.shape == (3, 960, 640)
    assert cond.dtype == torch.float32 and target.dtype == torch.float32
    # White background, colours exact, alpha composited on white like the upstream loader.
    assert torch.all(cond[:, -1, -1] == 1.0)
    torch.testing.assert_close(cond[:, 100, 100], torch.tensor(colours[0]) / 255.0)
    half = 128 / 255.0
    torch.testing.assert_close(cond[:, 0, 0], torch.full((3,), 1.0 - half))
    views = grid_to_views_tensor(target)
    for k in range(6):
        torch.testing.assert_close(views[k][:, 100, 100], torch.tensor(colours[k + 1]) / 255.0)
    # Round trip back to files: the grid, split with the PIL helper, gives the written views
    # (their opaque pixels exactly).
    grid_img = Image.fromarray(
        (target.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8), "RGB"
    )
    for k, view in enumerate(split_grid(grid_img)):
        with Image.open(root / "rendering_zero123plus" / "obj_b" / f"{k + 1:03d}.png") as im:
            written = np.asarray(im)
        opaque = written[..., 3] == 255
        np.testing.assert_array_equal(_pixels(view)[opaque], written[..., :3][opaque])
    # Explicit uids, the layout folder itself as root, and loud failures.
    assert Zero123ppDataset(root / "rendering_zero123plus", uids=["obj_b"]).uids == ["obj_b"]
    with pytest.raises(FileNotFoundError, match="obj_c"):
        Zero123ppDataset(root, uids=["obj_c"])
    (root / "rendering_zero123plus" / "obj_a" / "004.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"004\.png"):
        ds[0]


def test_dataset_reads_cpu_renders_of_the_layout(tmp_path: Path) -> None:
    import trimesh

    from rendering import procedural as pg
    from rendering.backends import RenderSettings, make_backend, prepare_object
    from rendering.output_layouts import layout_spec, render_layout

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.7)
    glb = tmp_path / "sphere.glb"
    glb.write_bytes(pg.glb_bytes(pg.textured(mesh, pg.make_texture("checker", 0, size=32))))
    obj, _ = prepare_object(glb)
    backend = make_backend("cpu", RenderSettings(shading="unlit"))
    try:
        folder = tmp_path / "out" / "rendering_zero123plus" / "sphere"
        render_layout(backend, obj, "sphere", layout_spec("zero123pp", size=48), folder)
    finally:
        backend.close()
    item = Zero123ppDataset(tmp_path / "out", view_size=48)[0]
    cond, target = item["cond"], item["target"]
    assert isinstance(cond, torch.Tensor) and isinstance(target, torch.Tensor)
    assert cond.shape == (3, 48, 48) and target.shape == (3, 144, 96)
    for k, view in enumerate(grid_to_views_tensor(target)):
        with Image.open(folder / f"{k + 1:03d}.png") as im:
            rgba = np.asarray(im).astype(np.float32) / 255.0
        expected = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
        np.testing.assert_allclose(view.permute(1, 2, 0).numpy(), expected, atol=1e-6)
        assert (view[:, rgba[..., 3] == 0] == 1.0).all()  # background reads as white
    # Resizing to the 320 px training size keeps the layout (3 x 320 by 2 x 320).
    resized = Zero123ppDataset(tmp_path / "out")[0]["target"]
    assert isinstance(resized, torch.Tensor) and resized.shape == (3, 960, 640)
