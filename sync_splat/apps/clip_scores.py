"""CLIP scores of a text-driven 3D edit, the field's protocol (docs/evaluation.md gives the definitions).

Instruct-NeRF2NeRF introduced two scores that its successors (GaussCtrl, Instruct-GS2GS) report; both use unit CLIP
embeddings `E` of rendered frames and of two captions, one of the source and one of the target:
- text-image direction similarity: the mean over frames of `cos(E(restyled_i) - E(source_i), E(target) -
  E(source caption))`, whether each frame moved the way the captions do;
- direction consistency: the mean over consecutive frames of `cos(E(restyled_{i+1}) - E(restyled_i),
  E(source_{i+1}) - E(source_i))`, whether the restyled scene changes along the path as the source does.
CLIP-S is the mean `cos(E(restyled_i), E(target))`, kept as the raw cosine.

The scores take embeddings as they come and make them unit length first, so any embedder (a fake one in tests)
works and their scale does not matter. `ClipEmbedder` computes them with a transformers CLIP model: a hub id or a
local folder holding the model (safetensors), its tokenizer and its image processor.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sync_splat.denoisers.model_loading import offline
from sync_splat.errors import InputError

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
"""The CLIP of Instruct-NeRF2NeRF's and GaussCtrl's tables (ViT-L/14)."""
BATCH = 16
"""Frames embedded together."""


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.double(), dim=-1)


def direction_similarity(
    source: Float[Tensor, "F D"],
    restyled: Float[Tensor, "F D"],
    source_text: Float[Tensor, " D"],
    target_text: Float[Tensor, " D"],
) -> float:
    """Mean over frames of the cosine between each frame's image shift and the captions' text shift."""
    image_shift = _unit(restyled) - _unit(source)
    text_shift = _unit(target_text) - _unit(source_text)
    return float(F.cosine_similarity(image_shift, text_shift.expand_as(image_shift), dim=-1).mean())


def direction_consistency(source: Float[Tensor, "F D"], restyled: Float[Tensor, "F D"]) -> float:
    """Mean over consecutive frames of the cosine between the restyled and the source frames' steps."""
    if len(source) < 2:
        raise ValueError("direction consistency needs at least two frames")
    restyled_step, source_step = _unit(restyled).diff(dim=0), _unit(source).diff(dim=0)
    return float(F.cosine_similarity(restyled_step, source_step, dim=-1).mean())


def clip_score(images: Float[Tensor, "F D"], text: Float[Tensor, " D"]) -> float:
    """Mean cosine between the frames and the caption (CLIP-S unscaled)."""
    images = _unit(images)
    return float((images @ _unit(text)).mean())


class ClipEmbedder:
    """CLIP image and text embeddings from transformers.

    Frames are resized whole to the model's input size (no crop: what lies at a frame's edge counts too), bicubic
    with antialiasing, and normalised with the model's mean and standard deviation.

    Args:
        name: a hub id or a local folder (CLIPModel in safetensors, its tokenizer and its image processor).
        device: where the model runs.

    Raises:
        InputError: the model cannot be had (missing folder, offline and not cached, pickled weights only).
    """

    def __init__(self, name: str, device: torch.device) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
        from transformers.utils import logging as hf_logging

        path = Path(name).expanduser()
        local = path.is_dir()
        if path.exists() and not local:
            raise InputError(f"--clip {name} is a file: pass a CLIP model folder or a hub id (default {DEFAULT_CLIP})")
        if not local and (name.startswith(("/", ".", "~")) or name.endswith("/") or name.count("/") > 1):
            raise InputError(f"--clip {name}: no such folder: pass a CLIP model folder or a hub id ({DEFAULT_CLIP})")
        where = str(path) if local else name
        only_local = local or offline()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar for loading a model of a few files says nothing
        try:
            self.model = CLIPModel.from_pretrained(where, local_files_only=only_local, use_safetensors=True)
            self.tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=only_local)
            processor = CLIPImageProcessor.from_pretrained(where, local_files_only=only_local)
        except (OSError, ValueError) as error:
            reason = " ".join(str(error).split()).split(". ")[0][:200] or type(error).__name__
            if local:
                fix = "pass a folder with a transformers CLIPModel (safetensors), its tokenizer and image processor"
            else:
                state = "HF_HUB_OFFLINE is set and it is not cached" if offline() else "it could not be downloaded"
                fix = f"{state}: pass a local folder of it with --clip"
            raise InputError(f"--clip {name}: cannot load the CLIP model ({reason}); {fix}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.model = self.model.to(device).eval()
        self.device = device
        crop = processor.crop_size
        self.size = (int(crop), int(crop)) if isinstance(crop, int) else (int(crop["height"]), int(crop["width"]))
        self.mean = torch.tensor(processor.image_mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def images(self, rgb01: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N D"]:
        """Embeddings of images in [0, 1] (not yet unit length)."""
        out = []
        for chunk in rgb01.split(BATCH):
            pixels = F.interpolate(chunk.float().to(self.device), size=self.size, mode="bicubic", antialias=True)
            pixels = (pixels.clamp(0, 1) - self.mean) / self.std
            out.append(_features(self.model.get_image_features(pixel_values=pixels)))
        return torch.cat(out).float().cpu()

    @torch.no_grad()
    def texts(self, prompts: list[str]) -> Float[Tensor, "T D"]:
        """Embeddings of captions (not yet unit length); long captions are cut at the model's length."""
        tokens = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return _features(self.model.get_text_features(**tokens)).float().cpu()


def _features(output: Tensor | object) -> Tensor:
    """The projected embeddings, whether transformers returns them bare or as a model output's pooled output."""
    return output if isinstance(output, Tensor) else output.pooler_output  # type: ignore[attr-defined]
