"""StableDiffusionDenoiser on tiny random models loaded from local folders: CPU, offline, seconds."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from tiny_sd import TinySDPaths, build_tiny_sd

from sync_splat.conditions import ViewConditions
from sync_splat.denoisers.attention import MultiViewAttentionConfig
from sync_splat.denoisers.base import Denoiser
from sync_splat.denoisers.stable_diffusion import (
    StableDiffusionDenoiser,
    StableDiffusionDenoiserConfig,
    resolve_device_and_dtype,
)
from sync_splat.errors import InputError
from sync_splat.functional.diffusion import NoiseSchedule, ddim_step, eps_from_v, tweedie

ATOL = 1e-5
SUFFIXES = (", front view", ", side view", ", back view")


def make(paths: TinySDPaths, **overrides) -> StableDiffusionDenoiser:
    settings = {
        "model": str(paths.model),
        "controlnet": str(paths.controlnet),
        "prompt": "a wooden chair",
        "dtype": "fp32",
        "device": "cpu",
        "max_batch": 4,
        **overrides,
    }
    return StableDiffusionDenoiserConfig(**settings).setup()


def inputs(num_views: int = 3, latent: int = 8, seed: int = 0) -> tuple[torch.Tensor, ViewConditions]:
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(num_views, 4, latent, latent, generator=g)
    depth = torch.rand(num_views, 1, latent * 8, latent * 8, generator=g)
    return x_t, ViewConditions(prompt_suffixes=SUFFIXES[:num_views], depth=depth)


@pytest.fixture(scope="module")
def denoiser(tiny_sd: TinySDPaths) -> StableDiffusionDenoiser:
    return make(tiny_sd)


def test_loads_local_folders_through_from_pretrained(tiny_sd: TinySDPaths, monkeypatch: pytest.MonkeyPatch):
    # A dead proxy proves that nothing is fetched: local folders never touch the network.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    denoiser = make(tiny_sd)
    fresh = build_tiny_sd()
    for name in ("unet", "vae", "text_encoder", "controlnet"):
        loaded, built = getattr(denoiser, name).state_dict(), fresh[name].state_dict()
        assert loaded.keys() == built.keys()
        assert all(torch.equal(loaded[k], built[k]) for k in built), f"{name} weights differ from the saved ones"
    reference = NoiseSchedule.scaled_linear()  # SD 1.5's values, which the tiny scheduler config holds
    assert torch.allclose(denoiser.schedule.alphas_cumprod, reference.alphas_cumprod)
    assert denoiser.schedule.final_alpha_cumprod == pytest.approx(reference.final_alpha_cumprod)
    assert denoiser.schedule.steps_offset == 1
    assert denoiser.prediction_type == "epsilon"
    assert (denoiser.latent_channels, denoiser.downsample, denoiser.native_size) == (4, 8, 64)
    assert denoiser.attention is None


def test_implements_the_denoiser_protocol(denoiser: StableDiffusionDenoiser):
    assert isinstance(denoiser, Denoiser)
    x_t, cond = inputs()
    eps = denoiser.predict_eps(x_t, 901, cond)
    assert eps.shape == x_t.shape and eps.dtype == x_t.dtype and torch.isfinite(eps).all()
    rgb01 = denoiser.decode(x_t)
    assert rgb01.shape == (3, 3, 64, 64)
    assert denoiser.encode(rgb01).shape == x_t.shape


def test_encode_uses_the_posterior_mean(denoiser: StableDiffusionDenoiser):
    rgb01 = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    first, second = denoiser.encode(rgb01), denoiser.encode(rgb01)
    assert torch.equal(first, second)
    expected = denoiser.vae.encode(rgb01 * 2 - 1).latent_dist.mean * denoiser.vae.config.scaling_factor
    assert torch.allclose(first, expected, atol=ATOL)


def test_decode_clamps_to_unit_range(denoiser: StableDiffusionDenoiser):
    x = 20.0 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    rgb01 = denoiser.decode(x)
    raw = denoiser.vae.decode(x / denoiser.vae.config.scaling_factor).sample / 2 + 0.5
    assert raw.min() < 0 or raw.max() > 1, "the test latents should push the VAE outside [0, 1]"
    assert torch.allclose(rgb01, raw.clamp(0, 1), atol=ATOL)


def test_codec_chunks_by_max_batch(tiny_sd: TinySDPaths, denoiser: StableDiffusionDenoiser):
    one_at_a_time = make(tiny_sd, max_batch=1)
    rgb01 = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(one_at_a_time.encode(rgb01), denoiser.encode(rgb01), atol=ATOL)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(one_at_a_time.decode(x), denoiser.decode(x), atol=ATOL)


def test_ddim_steps_over_three_views_match_diffusers(denoiser: StableDiffusionDenoiser):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(denoiser.config.model, subfolder="scheduler", clip_sample=False)
    scheduler.set_timesteps(4)
    schedule = denoiser.schedule
    timesteps = schedule.timesteps(4)
    assert torch.equal(timesteps, scheduler.timesteps)
    x_ours, cond = inputs()
    x_diffusers = x_ours.clone()
    for t in timesteps.tolist():
        alpha_bar, alpha_bar_prev = schedule.alpha_bar(t), schedule.alpha_bar(schedule.previous_timestep(t, 4))
        x0_hat = tweedie(x_ours, denoiser.predict_eps(x_ours, t, cond), alpha_bar)
        x_ours = ddim_step(x_ours, x0_hat, alpha_bar, alpha_bar_prev)
        eps = denoiser.predict_eps(x_diffusers, t, cond)
        x_diffusers = scheduler.step(eps, t, x_diffusers).prev_sample
    assert torch.allclose(x_ours, x_diffusers, atol=1e-4)
    rgb01 = denoiser.decode(x_ours)
    assert rgb01.shape == (3, 3, 64, 64) and torch.isfinite(rgb01).all()


@pytest.mark.parametrize("guidance_scale", [1.0, 7.5])
def test_chunked_equals_unchunked(tiny_sd: TinySDPaths, guidance_scale: float):
    x_t, cond = inputs()
    chunked = make(tiny_sd, max_batch=1, guidance_scale=guidance_scale).predict_eps(x_t, 701, cond)
    whole = make(tiny_sd, max_batch=4, guidance_scale=guidance_scale).predict_eps(x_t, 701, cond)
    assert torch.allclose(chunked, whole, atol=ATOL)


def test_guidance_combines_the_two_branches(tiny_sd: TinySDPaths):
    x_t, cond = inputs()
    eps_c = make(tiny_sd, guidance_scale=1.0).predict_eps(x_t, 501, cond)
    eps_u = make(tiny_sd, guidance_scale=0.0).predict_eps(x_t, 501, cond)
    assert not torch.allclose(eps_c, eps_u, atol=1e-4), "the negative prompt should change the prediction"
    eps = make(tiny_sd, guidance_scale=7.5).predict_eps(x_t, 501, cond)
    assert torch.allclose(eps, eps_u + 7.5 * (eps_c - eps_u), atol=1e-4)


def test_prompts_take_view_suffixes_and_are_encoded_once(tiny_sd: TinySDPaths, monkeypatch: pytest.MonkeyPatch):
    denoiser = make(tiny_sd, guidance_scale=1.0, negative_prompt="")
    calls = []
    forward = denoiser.text_encoder.forward
    monkeypatch.setattr(denoiser.text_encoder, "forward", lambda *a, **k: calls.append(a) or forward(*a, **k))
    x_t = inputs()[0][:1].expand(3, -1, -1, -1)  # the same latent and depth in every view: only prompts differ
    suffixes = (", front view", ", back view", ", front view")
    cond = ViewConditions(prompt_suffixes=suffixes, depth=torch.full((3, 1, 64, 64), 0.5))
    eps = denoiser.predict_eps(x_t, 801, cond)
    denoiser.predict_eps(x_t, 601, cond)
    assert torch.allclose(eps[0], eps[2], atol=ATOL)
    assert not torch.allclose(eps[0], eps[1], atol=1e-4)
    assert sorted(denoiser._prompt_cache) == ["a wooden chair, back view", "a wooden chair, front view"]
    assert len(calls) == 1, "prompt embeddings should be computed once per distinct prompt"


def test_v_prediction_is_converted_to_epsilon(tiny_sd: TinySDPaths):
    # The epsilon folder holds the same weights, so its prediction is the v folder's raw UNet output.
    x_t, cond = inputs()
    cond = dataclasses.replace(cond, depth=None)
    raw = make(tiny_sd, controlnet=None, guidance_scale=1.0).predict_eps(x_t, 401, cond)
    v_model = make(tiny_sd, model=str(tiny_sd.model_v), controlnet=None, guidance_scale=1.0)
    assert v_model.prediction_type == "v_prediction"
    eps = v_model.predict_eps(x_t, 401, cond)
    assert torch.allclose(eps, eps_from_v(x_t, raw, v_model.schedule.alpha_bar(401)), atol=ATOL)


def test_controlnet_schedule_reaches_the_model(tiny_sd: TinySDPaths, monkeypatch: pytest.MonkeyPatch):
    denoiser = make(tiny_sd, controlnet_scale=0.7, controlnet_scale_schedule=(1.0, 0.0), guidance_scale=1.0)
    scales = []
    forward = denoiser.controlnet.forward

    def spy(*args, **kwargs):
        scales.append(kwargs["conditioning_scale"])
        return forward(*args, **kwargs)

    monkeypatch.setattr(denoiser.controlnet, "forward", spy)
    x_t, cond = inputs()
    at_start = denoiser.predict_eps(x_t, 999, cond)
    denoiser.predict_eps(x_t, 499, cond)
    at_end = denoiser.predict_eps(x_t, 0, cond)
    assert scales == pytest.approx([0.7, 0.7 * 499 / 999, 0.0])
    # The scale is used: at scale 0 the prediction is the base model's, at 0.7 it is not.
    without = make(tiny_sd, controlnet=None, guidance_scale=1.0)
    plain = dataclasses.replace(cond, depth=None)
    assert torch.allclose(at_end, without.predict_eps(x_t, 0, plain), atol=ATOL)
    assert not torch.allclose(at_start, without.predict_eps(x_t, 999, plain), atol=1e-4)


def test_controlnet_needs_depth(denoiser: StableDiffusionDenoiser):
    x_t, cond = inputs()
    with pytest.raises(ValueError, match="depth"):
        denoiser.predict_eps(x_t, 901, dataclasses.replace(cond, depth=None))


def test_multiview_attention_is_chunk_independent(tiny_sd: TinySDPaths):
    attention = MultiViewAttentionConfig(neighbour_offsets=(-1, 1), reference_view=1, reference_weight=1.0)
    x_t, cond = inputs()
    branch_per_pass = make(tiny_sd, max_batch=1, multiview_attention=attention).predict_eps(x_t, 901, cond)
    one_pass = make(tiny_sd, max_batch=4, multiview_attention=attention).predict_eps(x_t, 901, cond)
    assert torch.allclose(branch_per_pass, one_pass, atol=ATOL)
    independent = make(tiny_sd).predict_eps(x_t, 901, cond)
    assert not torch.allclose(one_pass, independent, atol=1e-4), "views should see each other"
    self_only = MultiViewAttentionConfig(neighbour_offsets=(), reference_weight=0.0)
    assert torch.allclose(
        make(tiny_sd, multiview_attention=self_only).predict_eps(x_t, 901, cond), independent, atol=ATOL
    )


def test_missing_model_is_one_line_input_error(tiny_sd: TinySDPaths, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as missing:
        make(tiny_sd, model="sync-splat-tests/no-such-model")
    message = str(missing.value)
    assert "\n" not in message
    assert "sync-splat-tests/no-such-model" in message and "--denoiser prior" in message and "local" in message
    with pytest.raises(InputError, match="ControlNet 'sync-splat-tests/no-such-controlnet'"):
        make(tiny_sd, controlnet="sync-splat-tests/no-such-controlnet")


def test_missing_local_folder_is_one_line_naming_it(tiny_sd: TinySDPaths):
    missing = tiny_sd.model.parent / "not-there"
    with pytest.raises(InputError) as refused:
        make(tiny_sd, model=str(missing))
    message = str(refused.value)
    assert "\n" not in message
    assert str(missing) in message and "does not exist" in message and "--denoiser prior" in message


def test_a_failed_load_prints_nothing_but_the_error(
    tiny_sd: TinySDPaths, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
):
    """Offline, a model that is not in the cache: huggingface_hub warns about arguments diffusers passes it, and
    diffusers logs the failure, before the error; none of it may reach the user, who gets the error line alone."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="no-such-controlnet"):
            make(tiny_sd, controlnet="sync-splat-tests/no-such-controlnet")
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""


def test_the_first_load_error_is_reported(tiny_sd: TinySDPaths, tmp_path, capfd: pytest.CaptureFixture[str]):
    """A ControlNet folder without weights: the default files are missing (the reason to report), then the fp16
    retry finds no fp16 files either (an error about a variant nobody asked for)."""
    folder = tmp_path / "controlnet-without-weights"
    folder.mkdir()
    shutil.copy(tiny_sd.controlnet / "config.json", folder)
    with pytest.raises(InputError) as refused:
        make(tiny_sd, controlnet=str(folder))
    message = str(refused.value)
    assert "\n" not in message and str(folder) in message and "--denoiser prior" in message
    assert "diffusion_pytorch_model.safetensors" in message and "fp16.safetensors" not in message
    assert "fp16 variant failed too" in message
    assert "An error occurred while trying to fetch" not in capfd.readouterr().err  # diffusers' log, held back


def test_first_error_wins_over_the_retry(tiny_sd: TinySDPaths, monkeypatch: pytest.MonkeyPatch):
    """Whatever the two errors say, the message is built from the first, and the retry asks for fp16."""
    from diffusers import ControlNetModel

    variants = []

    def from_pretrained(*args, variant=None, **kwargs):
        variants.append(variant)
        raise OSError("no network: the first error" if len(variants) == 1 else "the retry's error")

    monkeypatch.setattr(ControlNetModel, "from_pretrained", from_pretrained)
    with pytest.raises(InputError) as refused:
        make(tiny_sd)
    assert variants == [None, "fp16"]
    assert "no network: the first error" in str(refused.value) and "the retry's error" not in str(refused.value)


def test_pickled_weights_are_refused(tiny_sd: TinySDPaths, tmp_path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_sd.model, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"weights": torch.zeros(1)}, folder / "unet" / "diffusion_pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(InputError, match="only pickled weights") as refused:
        make(tiny_sd, model=str(folder))
    assert "\n" not in str(refused.value) and "unet" in str(refused.value)


def test_fp16_variant_safetensors_are_used_beside_pickles(
    tiny_sd: TinySDPaths, denoiser: StableDiffusionDenoiser, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """The official ControlNet depth repository ships safetensors only as the fp16 variant, next to a pickle."""
    folder = tmp_path / "controlnet-fp16"
    denoiser.controlnet.save_pretrained(folder, variant="fp16", safe_serialization=True)
    torch.save({"weights": torch.zeros(1)}, folder / "diffusion_pytorch_model.bin")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.safetensors",
    ]
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was loaded"))
    loaded = make(tiny_sd, controlnet=str(folder)).controlnet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in denoiser.controlnet.state_dict().items())


@pytest.mark.parametrize(
    ("device", "dtype", "expected"),
    [
        ("cpu", "fp16", torch.float32),
        ("cpu", "bf16", torch.bfloat16),
        ("cpu", "fp32", torch.float32),
        ("cuda", "fp16", torch.float16),
    ],
)
def test_fp16_requests_run_in_fp32_on_the_cpu(device: str, dtype: str, expected: torch.dtype):
    assert resolve_device_and_dtype(device, dtype) == (torch.device(device), expected)


def test_half_precision_keeps_the_vae_in_fp32(tiny_sd: TinySDPaths, denoiser: StableDiffusionDenoiser):
    half = make(tiny_sd, dtype="bf16")
    assert half.unet.dtype == half.controlnet.dtype == half.text_encoder.dtype == torch.bfloat16
    assert half.vae.dtype == torch.float32
    rgb01 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(half.encode(rgb01), denoiser.encode(rgb01))
    x_t, cond = inputs()
    eps, reference = half.predict_eps(x_t, 901, cond), denoiser.predict_eps(x_t, 901, cond)
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all()
    assert (eps - reference).norm() < 0.1 * reference.norm()
    assert make(tiny_sd, dtype="fp16").unet.dtype == torch.float32  # fp16 on the CPU runs in fp32


def test_config_rejects_bad_settings():
    with pytest.raises(InputError, match="max_batch"):
        StableDiffusionDenoiserConfig(max_batch=0)


def test_importing_stays_light():
    code = (
        "import sys; import sync_splat.denoisers.stable_diffusion, sync_splat.denoisers.attention, "
        "sync_splat.functional.depth; heavy = {'diffusers', 'transformers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
