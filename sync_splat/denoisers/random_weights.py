"""Stable Diffusion 1.5 and its ControlNet depth at their real sizes with random weights: timing without weights.

`configs/sd15_depth/` holds the published architecture of each component as a diffusers / transformers config:
the SD 1.5 UNet (block widths 320/640/1280/1280, two layers per block, 8 attention heads, cross-attention width 768,
64 x 64 latents), its VAE (widths 128/256/512/512, 4 latent channels, scaling factor 0.18215), the CLIP ViT-L/14
text encoder (width 768, 12 layers of 12 heads, MLP 3072, 77 positions, 49408 tokens), ControlNet depth v1.1 for
SD 1.5 (the UNet's down half and middle, a depth embedder of widths 16/32/96/256) and the scaled-linear training
schedule (betas 0.00085 to 0.012 over 1000 steps). Built from these files, the models take the same tensors and do
the same arithmetic per call as the released ones, so their time and memory are real even though their images are
noise. Nothing is downloaded.

The tokenizer is built in memory (one token per byte-level character, no merges, SD's 77-token limit): the real
one's vocabulary is a download, and a prompt's token count does not change the work, which is always 77 positions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sync_splat.denoisers.stable_diffusion import StableDiffusionParts

SD15_DEPTH = Path(__file__).resolve().parent / "configs" / "sd15_depth"
"""The configs of SD 1.5 and ControlNet depth v1.1: unet, vae, text_encoder, controlnet and scheduler `.json`."""


def byte_tokenizer() -> Any:
    """A CLIP tokenizer over the 256 byte-level characters, with SD's 77-token limit (a `CLIPTokenizer`)."""
    from transformers import CLIPTokenizer

    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[], model_max_length=77)


def read_config(name: str, configs: Path = SD15_DEPTH) -> dict[str, Any]:
    """The config `name` ("unet", "vae", "text_encoder", "controlnet" or "scheduler") of `configs`."""
    return json.loads((configs / f"{name}.json").read_text())


def build_random_models(
    configs: Path = SD15_DEPTH, device: str | torch.device = "cpu", seed: int = 0
) -> StableDiffusionParts:
    """The components of `configs`, freshly initialised in float32 (the same weights for the same seed).

    Args:
        configs: a folder of unet, vae, text_encoder, controlnet and scheduler `.json`.
        device: where the weights are made; "meta" makes no memory (shapes only, for counting parameters).
        seed: the seed of the initialisation (the global random state is left as it was).

    Returns:
        The models, for `StableDiffusionDenoiserConfig.setup(parts)`.
    """
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = byte_tokenizer()
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        # The special tokens are this tokenizer's (the config file names none: the real vocabulary's ids differ).
        text_config = {**read_config("text_encoder", configs), **special}
        return StableDiffusionParts(
            unet=UNet2DConditionModel.from_config(read_config("unet", configs)),
            vae=AutoencoderKL.from_config(read_config("vae", configs)),
            text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)),
            tokenizer=tokenizer,
            scheduler_config=read_config("scheduler", configs),
            controlnet=ControlNetModel.from_config(read_config("controlnet", configs)),
        )


def parameter_counts(parts: StableDiffusionParts) -> dict[str, int]:
    """The number of parameters of each model: "unet", "vae", "text_encoder" and "controlnet" (when there is one)."""
    models = {"unet": parts.unet, "vae": parts.vae, "text_encoder": parts.text_encoder, "controlnet": parts.controlnet}
    return {name: sum(p.numel() for p in model.parameters()) for name, model in models.items() if model is not None}
