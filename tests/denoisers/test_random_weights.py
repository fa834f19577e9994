"""SD 1.5 + ControlNet depth from the repository's configs, and a denoiser built from models in memory."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_sd import TinySDPaths, build_tiny_sd, save_tiny_configs

from sync_splat.conditions import ViewConditions
from sync_splat.denoisers.random_weights import SD15_DEPTH, build_random_models, parameter_counts
from sync_splat.denoisers.stable_diffusion import StableDiffusionDenoiserConfig, StableDiffusionParts
from sync_splat.errors import InputError
from sync_splat.functional.diffusion import NoiseSchedule

RELEASED_PARAMETERS = {
    "unet": 859_520_964,  # stable-diffusion-v1-5 unet/
    "vae": 83_653_863,  # its vae/
    "text_encoder": 123_060_480,  # its text_encoder/ (CLIP ViT-L/14's text tower)
    "controlnet": 361_279_120,  # lllyasviel/control_v11f1p_sd15_depth
}


def test_the_configs_give_the_released_models_parameter_counts() -> None:
    parts = build_random_models(SD15_DEPTH, device="meta")  # shapes only: no memory, no initialisation
    assert parameter_counts(parts) == RELEASED_PARAMETERS
    assert all(p.is_meta for p in parts.unet.parameters())
    assert (parts.unet.config.sample_size, parts.vae.config.scaling_factor) == (64, 0.18215)
    assert parts.text_encoder.config.max_position_embeddings == parts.tokenizer.model_max_length == 77
    # The schedule is SD 1.5's scaled-linear one, as the denoiser reads it.
    schedule = NoiseSchedule.from_scheduler_config(parts.scheduler_config)
    reference = NoiseSchedule.scaled_linear()
    assert torch.allclose(schedule.alphas_cumprod, reference.alphas_cumprod)
    assert schedule.steps_offset == 1 and parts.scheduler_config["prediction_type"] == "epsilon"


def test_the_same_seed_builds_the_same_weights_and_leaves_the_random_state(tmp_path) -> None:
    folder = save_tiny_configs(tmp_path / "configs")
    before = torch.random.get_rng_state()
    first, second = build_random_models(folder, seed=3), build_random_models(folder, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    other = build_random_models(folder, seed=4)
    for name in ("unet", "vae", "text_encoder", "controlnet"):
        a, b, c = (getattr(parts, name).state_dict() for parts in (first, second, other))
        assert all(torch.equal(a[key], b[key]) for key in a), name
    assert any(not torch.equal(a[key], c[key]) for key in a)
    written = json.loads((folder / "unet.json").read_text())
    assert list(first.unet.config.block_out_channels) == written["block_out_channels"]


def test_a_denoiser_from_built_parts_equals_the_one_loaded_from_their_folders(tiny_sd: TinySDPaths) -> None:
    built = build_tiny_sd()  # the weights tiny_sd saved
    parts = StableDiffusionParts(
        unet=built["unet"], vae=built["vae"], text_encoder=built["text_encoder"], tokenizer=built["tokenizer"],
        scheduler_config=dict(built["scheduler"].config), controlnet=built["controlnet"],
    )  # fmt: skip
    settings = {"prompt": "a chair", "dtype": "fp32", "device": "cpu", "guidance_scale": 7.5}
    from_parts = StableDiffusionDenoiserConfig(**settings).setup(parts)
    loaded = StableDiffusionDenoiserConfig(
        model=str(tiny_sd.model), controlnet=str(tiny_sd.controlnet), **settings
    ).setup()
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, generator=generator)
    cond = ViewConditions(prompt_suffixes=(", front view", ", back view"), depth=torch.rand(2, 1, 64, 64))
    assert torch.equal(from_parts.predict_eps(x_t, 501, cond), loaded.predict_eps(x_t, 501, cond))
    assert torch.equal(from_parts.decode(x_t), loaded.decode(x_t))
    assert from_parts.schedule.steps_offset == loaded.schedule.steps_offset == 1
    assert (from_parts.native_size, from_parts.downsample) == (loaded.native_size, loaded.downsample)


def test_built_parts_are_cast_to_the_requested_dtype_but_the_vae_stays_float32(tmp_path) -> None:
    parts = build_random_models(save_tiny_configs(tmp_path / "configs"))
    denoiser = StableDiffusionDenoiserConfig(dtype="bf16", device="cpu").setup(parts)
    assert {denoiser.unet.dtype, denoiser.text_encoder.dtype, denoiser.controlnet.dtype} == {torch.bfloat16}
    assert denoiser.vae.dtype == torch.float32
    assert all(buffer.dtype == torch.int64 for buffer in denoiser.text_encoder.buffers())  # position ids stay ints


def test_built_parts_with_an_unsupported_prediction_type_are_refused(tmp_path) -> None:
    parts = build_random_models(save_tiny_configs(tmp_path / "configs"))
    odd = StableDiffusionParts(
        **{**vars(parts), "scheduler_config": {**parts.scheduler_config, "prediction_type": "x"}}
    )
    with pytest.raises(InputError, match="prediction_type 'x' is not supported"):
        StableDiffusionDenoiserConfig(device="cpu").setup(odd)
