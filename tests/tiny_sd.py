"""Tiny random Stable Diffusion 1.5 + ControlNet depth folders for offline tests.

The components have SD 1.5's geometry at a toy width: a 4-channel latent,
a VAE with scale factor 8, a UNet with self- and cross-attention, a CLIP text encoder, and a ControlNet whose
conditioning embedder also downsamples by 8. They are built from config after `torch.manual_seed(0)`, so every
build gives the same weights, and saved as safetensors in the layout of a hub repository, so the code under test
loads them through the same `from_pretrained` calls as real model ids.

The tokenizer is the library's byte-level one built in memory (`random_weights.byte_tokenizer`), because diffusers'
own tiny tokenizer needs a download; `model_max_length=77` as SD's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sync_splat.denoisers.random_weights import byte_tokenizer


@dataclass(frozen=True)
class TinySDPaths:
    """Where `save_tiny_sd` wrote the models.

    Attributes:
        model: the SD pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/), epsilon prediction.
        model_v: the same weights with a v-prediction scheduler config.
        controlnet: the ControlNet depth folder (config.json + diffusion_pytorch_model.safetensors).
    """

    model: Path
    model_v: Path
    controlnet: Path


def build_tiny_sd() -> dict:
    """The tiny components, freshly initialised after `torch.manual_seed(0)`.

    Returns:
        A dict with "unet", "vae", "text_encoder", "tokenizer", "scheduler" and "controlnet".
    """
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = byte_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        attention_head_dim=4,
        cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    # The conditioning embedder must downsample as much as the VAE (2**3 = 8), else the residuals do not fit.
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    # A fresh ControlNet's output convolutions are zero ("zero convolutions"), so its residuals would vanish and no
    # test could see the depth or the scale; give them random weights, as training would.
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    for conv in [*zero_convs, controlnet.controlnet_cond_embedding.conv_out]:
        torch.nn.init.normal_(conv.weight, std=0.3)
        torch.nn.init.normal_(conv.bias, std=0.1)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "controlnet": controlnet,
    }


def save_tiny_sd(root: str | Path) -> TinySDPaths:
    """Build the tiny models and save them under `root` as safetensors folders.

    Args:
        root: an existing folder; "sd", "sd-v" and "controlnet" are written inside it.

    Returns:
        The three folders.
    """
    import shutil

    from diffusers import StableDiffusionPipeline

    root = Path(root)
    parts = build_tiny_sd()
    pipe = StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    paths = TinySDPaths(model=root / "sd", model_v=root / "sd-v", controlnet=root / "controlnet")
    pipe.save_pretrained(paths.model, safe_serialization=True)
    parts["controlnet"].save_pretrained(paths.controlnet, safe_serialization=True)

    shutil.copytree(paths.model, paths.model_v)
    scheduler_config = paths.model_v / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler_config.read_text())
    config["prediction_type"] = "v_prediction"
    scheduler_config.write_text(json.dumps(config, indent=2))
    return paths


def save_tiny_configs(folder: str | Path) -> Path:
    """The tiny models' configs as `random_weights.build_random_models` reads them (unet, vae, text_encoder,
    controlnet and scheduler `.json` in `folder`, created): the real-size benchmark's flow at a toy size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = build_tiny_sd()
    for name in ("unet", "vae", "controlnet", "scheduler"):
        (folder / f"{name}.json").write_text(parts[name].to_json_string())
    (folder / "text_encoder.json").write_text(parts["text_encoder"].config.to_json_string())
    return folder
