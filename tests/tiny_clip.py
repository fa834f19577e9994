"""A tiny random CLIP folder for offline tests of `sync-splat eval`.

CLIP's two towers at a toy width (32 wide, 2 layers, 16-dimensional embeddings; 32 x 32 images in 8-pixel patches),
built from config after `torch.manual_seed(0)` and saved as safetensors with the byte-level tokenizer of
`sync_splat.denoisers.random_weights` and an image processor of the same input size, so the code under test loads
it through the same `from_pretrained` calls as `openai/clip-vit-large-patch14`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sync_splat.denoisers.random_weights import byte_tokenizer


def save_tiny_clip(folder: str | Path) -> Path:
    """Write the tiny CLIP (model, tokenizer, image processor) into `folder` and return it."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
        "num_hidden_layers": 2, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip
    vision = {
        "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
        "image_size": 32, "patch_size": 8,
    }  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(
        folder, safe_serialization=True
    )
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
