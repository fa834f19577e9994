"""Stable Diffusion 1.5 / 2.x with an optional ControlNet depth, as a `Denoiser` (diffusers, imported on build).

The denoiser owns the model weights, the text prompt (views add their suffixes from `ViewConditions`), the noise
schedule read from the model's scheduler config, and the VAE codec. It never runs a diffusers scheduler or
pipeline: the sampler does its own steps with `sync_splat.functional.diffusion`, so all this file provides is an
epsilon prediction with classifier-free guidance and ControlNet depth (as the SyncTweedies paper uses them):

    eps_hat = eps_u + w (eps_c - eps_u),

where `eps_c` is conditioned on "prompt + suffix" of the view and `eps_u` on the negative prompt, both with the
same depth residuals, scaled by `controlnet_scale` times a linear schedule over t. Models that predict v (SD 2 768-v)
or x0 are converted to epsilon here, so the sampler sees only epsilon.

Views are processed in chunks of at most `max_batch` views, each chunk's conditional and unconditional rows in one
forward pass, so memory does not grow with the number of views. With multi-view attention (`attention.py`) a
view's attention reads the keys of its ring neighbours from the same forward pass, which couples every view of a
guidance branch; then all views of a branch go through one pass (both branches when N <= max_batch).

Weights load from safetensors only (`use_safetensors=True`; a local folder holding only pickled `.bin` files is
refused before anything is read), component by component: no safety checker, no pipeline object. Models built in
memory (`StableDiffusionParts`; `random_weights.py` builds SD 1.5 at its real size for timing) skip the loading.
Conventions: docs/conventions.md (rgb01 images, latents = VAE mean x scaling factor, channel-first, N views).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import tyro
from jaxtyping import Float
from torch import Tensor

from sync_splat.conditions import ViewConditions
from sync_splat.denoisers.attention import (
    MultiViewAttention,
    MultiViewAttentionConfig,
    ViewLayout,
    install_multiview_attention,
)
from sync_splat.denoisers.model_loading import (
    DTYPES,
    load_part,
    load_weights,
    locate,
    offline,
    resolve_device_and_dtype,
)
from sync_splat.errors import InputError
from sync_splat.functional.diffusion import NoiseSchedule, eps_from_v, eps_from_x0

DEFAULT_NEGATIVE_PROMPT = "oversmoothed, blurry, depth of field, out of focus, low quality, bloom, glowing effect."
"""The official SyncTweedies negative prompt for meshes, panoramas and splats."""


@dataclass(frozen=True)
class StableDiffusionDenoiserConfig:
    """Settings of `StableDiffusionDenoiser`; `setup()` loads the weights and builds it."""

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    """Base model: a hub id or a local diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    controlnet: str | None = "lllyasviel/control_v11f1p_sd15_depth"
    """ControlNet depth: a hub id or a local folder; None runs the base model without depth conditioning."""
    prompt: tyro.conf.Suppress[str] = ""
    """The text prompt; each view appends its suffix (ViewConditions.prompt_suffixes). Not a command-line option:
    the front doors set it from their own --prompt."""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    """The prompt of the unconditional guidance branch (the same for every view)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance weight w (1 skips the unconditional branch; the official splat setting is 35)."""
    controlnet_scale: float = 0.7
    """ControlNet residual scale (the official setting for meshes, panoramas and splats)."""
    controlnet_scale_schedule: tuple[float, float] = (1.0, 1.0)
    """Multipliers of controlnet_scale at the noisiest (t = T - 1) and the cleanest (t = 0) train timestep,
    linear in t in between; (1, 1) keeps the scale constant."""
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    """Weights and activations of the UNet, ControlNet and text encoder. fp16 requests on the CPU run in fp32,
    because CPU half-precision kernels are about 100x slower than fp32; the VAE always runs in fp32."""
    device: str = "auto"
    """Torch device; "auto" takes CUDA when available, else the CPU."""
    max_batch: int = 8
    """The most views one forward pass takes; with guidance each view has a conditional and an unconditional row,
    so the UNet batch is up to 2 x max_batch (multi-view attention needs all views of a branch in one pass)."""
    variant: str | None = None
    """Weight file variant to load, such as "fp16" (smaller downloads); None loads the default files, or the fp16
    safetensors where a repository has no others."""
    multiview_attention: MultiViewAttentionConfig | None = None
    """Ring and reference self-attention across views (SyncMVD); None keeps the UNet's own attention."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise InputError(f"StableDiffusionDenoiserConfig.max_batch must be at least 1, got {self.max_batch}")
        if self.dtype not in DTYPES:
            raise InputError(f"StableDiffusionDenoiserConfig.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if len(self.controlnet_scale_schedule) != 2:
            raise InputError("StableDiffusionDenoiserConfig.controlnet_scale_schedule must be (start, end)")

    def setup(self, parts: StableDiffusionParts | None = None) -> StableDiffusionDenoiser:
        """Load the models (or take `parts`, already built) and build the denoiser; raises InputError for missing or
        pickled weights."""
        return StableDiffusionDenoiser(self, parts)


@dataclass(frozen=True)
class StableDiffusionParts:
    """The models a `StableDiffusionDenoiser` runs: loaded from `model` / `controlnet` by `load_parts`, or built in
    memory (`random_weights.build_random_models` makes them at their real sizes with random weights)."""

    unet: Any
    """A diffusers `UNet2DConditionModel`."""
    vae: Any
    """A diffusers `AutoencoderKL`."""
    text_encoder: Any
    """A transformers `CLIPTextModel`."""
    tokenizer: Any
    """A transformers `CLIPTokenizer`."""
    scheduler_config: dict[str, Any]
    """The training schedule: a diffusers scheduler config."""
    controlnet: Any | None
    """A diffusers `ControlNetModel`, or None for the base model alone."""


def load_parts(
    config: StableDiffusionDenoiserConfig, dtype: torch.dtype, vae_dtype: torch.dtype
) -> StableDiffusionParts:
    """The models `config.model` and `config.controlnet` name, loaded from safetensors (module docstring)."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local_only = offline()
    where, local = locate(config.model, "model", ("unet", "vae", "text_encoder"))
    common: dict[str, Any] = {"local_files_only": local or local_only}
    weights: dict[str, Any] = {**common, "use_safetensors": True}
    scheduler_config = load_part(
        "model", config.model, local, lambda: DDIMScheduler.load_config(where, subfolder="scheduler", **common)
    )
    _check_prediction_type(config.model, scheduler_config)
    if config.controlnet is not None:
        # Found (or not) before the base model's weights are read, which takes a while.
        cn_where, cn_local = locate(config.controlnet, "ControlNet", (".",))
        cn_common: dict[str, Any] = {"local_files_only": cn_local or local_only}
        load_part("ControlNet", config.controlnet, cn_local, lambda: ControlNetModel.load_config(cn_where, **cn_common))

    def model_part(cls: Any, subfolder: str, dtype: torch.dtype) -> Any:
        return load_weights(
            "model",
            config.model,
            local,
            lambda variant: cls.from_pretrained(
                where, subfolder=subfolder, torch_dtype=dtype, variant=variant, **weights
            ),
            config.variant,
        )

    unet = model_part(UNet2DConditionModel, "unet", dtype)
    vae = model_part(AutoencoderKL, "vae", vae_dtype)
    text_encoder = model_part(CLIPTextModel, "text_encoder", dtype)
    tokenizer = load_part(
        "model", config.model, local, lambda: CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **common)
    )
    controlnet = None
    if config.controlnet is not None:
        controlnet = load_weights(
            "ControlNet",
            config.controlnet,
            cn_local,
            lambda variant: ControlNetModel.from_pretrained(
                cn_where, torch_dtype=dtype, variant=variant, use_safetensors=True, **cn_common
            ),
            config.variant,
        )
    return StableDiffusionParts(unet, vae, text_encoder, tokenizer, dict(scheduler_config), controlnet)


def _check_prediction_type(model: str, scheduler_config: Any) -> None:
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise InputError(
            f"model {model}: scheduler prediction_type {prediction_type!r} is not supported "
            "(epsilon, v_prediction or sample)"
        )


class StableDiffusionDenoiser:
    """Stable Diffusion (+ ControlNet depth) seen through its epsilon prediction; implements `Denoiser`.

    Attributes:
        config: the settings it was built from.
        schedule: the model's training schedule, from its scheduler config.
        prediction_type: what the UNet predicts ("epsilon", "v_prediction" or "sample"); converted to epsilon.
        latent_channels: C (4 for SD).
        downsample: H / h, the VAE's factor (8 for SD).
        native_size: the image size the UNet was trained at (512 for SD 1.5).
        max_batch: the most views per forward pass.
        device, dtype: where and in which precision the UNet, ControlNet and text encoder run.
        vae_dtype: the VAE's precision, always float32 (see `__init__` for why).
        unet, vae, text_encoder, tokenizer, controlnet: the diffusers / transformers components (controlnet may be
            None).
        attention: the installed multi-view attention, or None.
    """

    def __init__(self, config: StableDiffusionDenoiserConfig, parts: StableDiffusionParts | None = None) -> None:
        self.config = config
        self.device, self.dtype = resolve_device_and_dtype(config.device, config.dtype)
        # The VAE stays in float32 under fp16 and bf16. SD's VAE decoder has activations beyond fp16's range at
        # large sizes (inf/NaN, why diffusers upcasts SDXL's VAE), and the synchronised sampler encodes and
        # decodes every step, so half-precision rounding of the codec would accumulate over the trajectory.
        # The VAE is small (84 M parameters) and runs once per view and step, so fp32 costs little.
        self.vae_dtype = torch.float32
        if parts is None:
            parts = load_parts(config, self.dtype, self.vae_dtype)
        else:
            _check_prediction_type(config.model, parts.scheduler_config)
        self.schedule = NoiseSchedule.from_scheduler_config(parts.scheduler_config)
        self.prediction_type: str = parts.scheduler_config.get("prediction_type", "epsilon")
        self.unet, self.vae, self.text_encoder = parts.unet, parts.vae, parts.text_encoder
        self.tokenizer, self.controlnet = parts.tokenizer, parts.controlnet
        # transformers 5 builds an empty tokenizer (2 tokens) when the folder has none, instead of failing.
        if len(self.tokenizer) <= 2:
            raise InputError(f"model {config.model} has no usable tokenizer (tokenizer/ is missing or empty)")
        for module, dtype in ((self.unet, self.dtype), (self.vae, self.vae_dtype), (self.text_encoder, self.dtype),
                              (self.controlnet, self.dtype)):  # fmt: skip
            if module is None:
                continue
            # Loaded models already have their dtype; built ones are cast through torch's own `to`, which diffusers'
            # override wraps with a warning about float32 modules that SD's models do not have.
            torch.nn.Module.to(module, device=self.device, dtype=dtype).eval().requires_grad_(False)

        self.latent_channels: int = self.unet.config.in_channels
        if self.vae.config.latent_channels != self.latent_channels:
            raise InputError(
                f"model {config.model}: the UNet takes {self.latent_channels} channels but the VAE makes "
                f"{self.vae.config.latent_channels} (inpainting and other variants are not supported)"
            )
        self.downsample: int = 2 ** (len(self.vae.config.block_out_channels) - 1)
        sample_size = self.unet.config.sample_size
        self.native_size: int = (sample_size if isinstance(sample_size, int) else max(sample_size)) * self.downsample
        self.max_batch: int = config.max_batch
        # CLIP's position table bounds the prompt length even when a tokenizer config leaves it unset (1e30).
        self._max_tokens = min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)
        self._prompt_cache: dict[str, Tensor] = {}
        self.attention: MultiViewAttention | None = None
        if config.multiview_attention is not None:
            self.attention = install_multiview_attention(self.unet, config.multiview_attention)

    # ------------------------------------------------------------------ codec

    @torch.no_grad()
    def encode(self, rgb01: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N C h w"]:
        """RGB in [0, 1] to latents: the VAE posterior mean times the scaling factor (never a random sample).

        Returns latents on rgb01's device, in its (floating) dtype; views are encoded max_batch at a time.
        """
        scale, shift = self._latent_scale()
        chunks = []
        for chunk in rgb01.split(self.max_batch):
            image = chunk.to(self.device, self.vae_dtype) * 2.0 - 1.0
            mean = self.vae.encode(image).latent_dist.mean
            chunks.append(((mean - shift) * scale).to(rgb01.device, rgb01.dtype))
        return torch.cat(chunks)

    @torch.no_grad()
    def decode(self, x: Float[Tensor, "N C h w"]) -> Float[Tensor, "N 3 H W"]:
        """Latents to RGB in [0, 1], clamped (the VAE's output is not bounded); on x's device and dtype."""
        scale, shift = self._latent_scale()
        chunks = []
        for chunk in x.split(self.max_batch):
            latents = chunk.to(self.device, self.vae_dtype) / scale + shift
            image = self.vae.decode(latents).sample
            chunks.append((image / 2.0 + 0.5).clamp(0.0, 1.0).to(x.device, x.dtype))
        return torch.cat(chunks)

    def _latent_scale(self) -> tuple[float, float]:
        shift = self.vae.config.get("shift_factor", None)  # None for SD 1.5 / 2.x
        return float(self.vae.config.scaling_factor), float(shift or 0.0)

    # ------------------------------------------------------------------ noise prediction

    def controlnet_scale_at(self, t: int) -> float:
        """The ControlNet residual scale at train timestep t: `controlnet_scale` times the linear schedule."""
        start, end = self.config.controlnet_scale_schedule
        progress = t / max(self.schedule.num_train_timesteps - 1, 1)  # 1 at the noisiest timestep, 0 at t = 0
        return self.config.controlnet_scale * (end + (start - end) * progress)

    @torch.no_grad()
    def predict_eps(self, x_t: Float[Tensor, "N C h w"], t: int, cond: ViewConditions) -> Float[Tensor, "N C h w"]:
        """Guided epsilon prediction for every view at train timestep t.

        Args:
            x_t: the noisy latents of the N views.
            t: the train timestep (0..T-1), the same for all views.
            cond: per-view prompt suffixes and, with a ControlNet, depth `[N, 1, H, W]` in [0, 1] (near bright);
                depth of another size than the latents' image size is resized bilinearly.

        Returns:
            eps_hat on x_t's device and dtype; guidance and the v-to-epsilon conversion are computed in float32.
        """
        n = x_t.shape[0]
        t = int(t)
        if len(cond.prompt_suffixes) != n:
            raise ValueError(f"cond has {len(cond.prompt_suffixes)} prompt suffixes for {n} views")
        if self.controlnet is not None and cond.depth is None:
            raise ValueError("this denoiser has a ControlNet: cond.depth must hold one depth map per view")
        if cond.depth is not None and cond.depth.shape[0] != n:
            raise ValueError(f"cond.depth has {cond.depth.shape[0]} maps for {n} views")
        guided = self.config.guidance_scale != 1.0
        branches = ("cond", "uncond") if guided else ("cond",)

        outputs: dict[str, list[Tensor]] = {branch: [] for branch in branches}
        for views, group in self._forward_groups(n, branches):
            raw = self._forward(x_t, t, cond, views, group)
            for branch, rows in zip(group, raw.chunk(len(group)), strict=True):
                outputs[branch].append(rows.float())
        out = {branch: torch.cat(parts) for branch, parts in outputs.items()}
        guided_out = out["cond"]
        if guided:
            guided_out = out["uncond"] + self.config.guidance_scale * (out["cond"] - out["uncond"])
        return self._to_eps(x_t.to(self.device, torch.float32), guided_out, t).to(x_t.device, x_t.dtype)

    def _forward_groups(self, n: int, branches: tuple[str, ...]) -> list[tuple[slice, tuple[str, ...]]]:
        """The forward passes: (views, branches) pairs covering every view of every branch once."""
        if self.attention is None or n <= self.max_batch:
            step = self.max_batch if self.attention is None else n
            return [(slice(i, min(i + step, n)), branches) for i in range(0, n, step)]
        # Multi-view attention couples all views of a branch (attention.py), so a branch is one pass.
        return [(slice(0, n), (branch,)) for branch in branches]

    def _forward(self, x_t: Tensor, t: int, cond: ViewConditions, views: slice, branches: tuple[str, ...]) -> Tensor:
        """UNet (+ ControlNet) output for `views`, the rows of each branch stacked branch after branch."""
        x = x_t[views].to(self.device, self.dtype)
        k = x.shape[0]
        suffixes = cond.prompt_suffixes[views]
        prompts: list[str] = []
        for branch in branches:
            if branch == "cond":
                prompts += [self.config.prompt + suffix for suffix in suffixes]
            else:
                prompts += [self.config.negative_prompt] * k
        embeddings = self.prompt_embeddings(prompts)
        sample = x.repeat(len(branches), 1, 1, 1)
        timestep = torch.tensor(t, device=self.device)

        residuals: dict[str, Any] = {}
        if self.controlnet is not None:
            image = self._control_image(cond.depth[views], x.shape[-2:]).repeat(len(branches), 1, 1, 1)
            down, mid = self.controlnet(
                sample,
                timestep,
                encoder_hidden_states=embeddings,
                controlnet_cond=image,
                conditioning_scale=self.controlnet_scale_at(t),
                guess_mode=False,
                return_dict=False,
            )
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

        def unet() -> Tensor:
            return self.unet(sample, timestep, encoder_hidden_states=embeddings, return_dict=False, **residuals)[0]

        if self.attention is None:
            return unet()
        config = self.attention.config
        n = x_t.shape[0]
        reference = n // 2 if config.reference_view is None else config.reference_view
        if not 0 <= reference < n:
            raise InputError(f"multiview_attention.reference_view {reference} is out of range for {n} views")
        layout = ViewLayout.branches(
            n, len(branches), reference, config.reference_weight_at(t, self.schedule.num_train_timesteps)
        )
        with self.attention.views(layout):
            return unet()

    def _control_image(self, depth: Tensor, latent_size: torch.Size) -> Tensor:
        """Depth [k, 1, H, W] in [0, 1] as the ControlNet's image: the latents' image size, its channel count."""
        size = (latent_size[0] * self.downsample, latent_size[1] * self.downsample)
        image = depth.to(self.device, torch.float32)
        if tuple(image.shape[-2:]) != size:
            image = torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False)
        channels = self.controlnet.config.conditioning_channels
        if image.shape[1] != channels:
            image = image[:, :1].expand(-1, channels, -1, -1)
        return image.to(self.dtype)

    def _to_eps(self, x_t: Tensor, output: Tensor, t: int) -> Tensor:
        """The UNet's (guided) output as an epsilon prediction."""
        alpha_bar = self.schedule.alpha_bar(t)
        if self.prediction_type == "v_prediction":
            return eps_from_v(x_t, output, alpha_bar)
        if self.prediction_type == "sample":
            return eps_from_x0(x_t, output, alpha_bar)
        return output

    def prompt_embeddings(self, prompts: Sequence[str]) -> Float[Tensor, "B L D"]:
        """CLIP's last hidden states for each prompt, computed once per distinct prompt string and cached."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._prompt_cache))
        if missing:
            tokens = self.tokenizer(
                missing, padding="max_length", max_length=self._max_tokens, truncation=True, return_tensors="pt"
            )
            with torch.no_grad():
                hidden = self.text_encoder(tokens.input_ids.to(self.device)).last_hidden_state
            for prompt, embedding in zip(missing, hidden, strict=True):
                self._prompt_cache[prompt] = embedding.to(self.dtype)
        return torch.stack([self._prompt_cache[p] for p in prompts])
