"""Multi-view self-attention for Stable Diffusion's UNet (as the SyncTweedies paper uses it, inherited from SyncMVD).

Every self-attention layer (`attn1`) of the UNet is given `MultiViewAttnProcessor`. In it, the queries of view `i`
attend to the joint keys and values of a ring of views `{i} U {i + o mod N : o in neighbour_offsets}`, giving
`h_a`, and, while the reference weight `w` is positive, separately to the keys and values of one reference view,
giving `h_ref`. The layer's output is `(h_a + w h_ref) / (1 + w)`; with `w == 0` the reference branch is not
computed at all. The ControlNet's attention is left alone, as in the official code.

Batches and chunking. A processor sees one forward batch of rows `[B, L, C]` and needs, for each row, which view it
is and which rows hold its neighbours. The caller says so with a `ViewLayout` (the global view index and a group
id of every row; rows attend only within their group, which keeps the classifier-free guidance branches apart),
set for the duration of a forward pass with `MultiViewAttention.views(layout)`. Keys and values are taken from the
same forward batch: a neighbour's keys at layer l depend on its own neighbours at every earlier layer, so through
the 16 attention layers of SD 1.5 every view of a ring depends on every other one, and splitting a ring over
several forward passes cannot be exact. `StableDiffusionDenoiser` therefore puts all views of one guidance branch
in one forward pass while this attention is installed; the processor raises if a needed view is missing from the
batch rather than silently attending to less.

With no neighbour offsets and reference weight 0 the processor computes exactly what diffusers' default
`AttnProcessor2_0` computes. Only torch is imported here; the processor duck-types diffusers' `Attention` module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MultiViewAttentionConfig:
    """Which views each view's self-attention sees."""

    neighbour_offsets: tuple[int, ...] = (-1, 1)
    """Ring offsets of the views each view attends to besides itself, cyclic over the N views (SyncMVD: -1, 1)."""
    reference_view: int | None = None
    """The view every view also attends to; None picks the middle view N // 2 (the official splat and panorama
    choice: view 25 of 50, view 4 of 8)."""
    reference_weight: float = 1.0
    """w in (h_a + w h_ref) / (1 + w) while the reference is active; 0 disables the reference branch."""
    reference_until: float = 0.2
    """The reference is active while t > (1 - reference_until) * T, i.e. for the first fraction of the trajectory
    (the official `ref_attention_end`; 0.2 means t > 800 for SD)."""

    def reference_weight_at(self, t: int, num_train_timesteps: int) -> float:
        """w at train timestep t: `reference_weight` early in the trajectory, 0 afterwards."""
        return self.reference_weight if t > (1.0 - self.reference_until) * num_train_timesteps else 0.0


@dataclass(frozen=True)
class ViewLayout:
    """What each row of one forward batch is.

    Attributes:
        view_index: the global view index (0..N-1) of every batch row.
        group: a group id per row; rows attend only to rows of their own group (one group per guidance branch).
        num_views: N, the size of the ring the neighbour offsets wrap around.
        reference_view: the global index of the reference view, or None for no reference branch.
        reference_weight: w for this forward pass (already resolved for the current timestep).
    """

    view_index: tuple[int, ...]
    group: tuple[int, ...]
    num_views: int
    reference_view: int | None = None
    reference_weight: float = 0.0

    @classmethod
    def branches(
        cls, num_views: int, num_groups: int, reference_view: int | None = None, reference_weight: float = 0.0
    ) -> ViewLayout:
        """All N views of `num_groups` groups stacked group after group (the layout of a guided forward pass)."""
        return cls(
            view_index=tuple(range(num_views)) * num_groups,
            group=tuple(g for g in range(num_groups) for _ in range(num_views)),
            num_views=num_views,
            reference_view=reference_view,
            reference_weight=reference_weight,
        )


@dataclass(frozen=True)
class _Rows:
    """Batch-row indices resolved from a layout: the rows each row attends to."""

    neighbours: Tensor  # [B, k] long, row b's own row first
    reference: Tensor | None  # [B] long, or None when the reference branch is off
    reference_weight: float


def _resolve_rows(layout: ViewLayout, neighbour_offsets: tuple[int, ...]) -> _Rows:
    if len(layout.view_index) != len(layout.group):
        raise ValueError("ViewLayout.view_index and ViewLayout.group must have one entry per batch row")
    n = layout.num_views
    row_of = {(g, v): row for row, (v, g) in enumerate(zip(layout.view_index, layout.group, strict=True))}
    if len(row_of) != len(layout.view_index):
        raise ValueError("ViewLayout lists a (group, view) pair twice")

    def find(group: int, view: int) -> int:
        row = row_of.get((group, view))
        if row is None:
            raise ValueError(
                f"multi-view attention needs view {view} of group {group} in the same forward batch "
                "(keys and values of neighbours are read from the batch)"
            )
        return row

    # Distinct views only: with N smaller than the ring, -1 and +1 may be the same view, which must not count twice.
    offsets = list(dict.fromkeys(o % n for o in (0, *neighbour_offsets)))
    neighbours = [[find(g, (v + o) % n) for o in offsets] for v, g in zip(layout.view_index, layout.group, strict=True)]
    reference = None
    if layout.reference_view is not None and layout.reference_weight > 0.0:
        if not 0 <= layout.reference_view < n:
            raise ValueError(f"reference view {layout.reference_view} is out of range for {n} views")
        reference = torch.tensor([find(g, layout.reference_view) for g in layout.group], dtype=torch.long)
    return _Rows(torch.tensor(neighbours, dtype=torch.long), reference, layout.reference_weight)


class _LayoutSlot:
    """The layout of the forward pass in progress, shared by all processors of one UNet."""

    def __init__(self) -> None:
        self.rows: _Rows | None = None


class MultiViewAttnProcessor:
    """A self-attention processor in which each view attends to its ring neighbours and a reference view.

    It follows diffusers' `AttnProcessor2_0` step for step (norms, projections, residual, rescaling) and differs
    only in which keys and values each query row sees.
    """

    def __init__(self, neighbour_offsets: tuple[int, ...], slot: _LayoutSlot, original: object) -> None:
        self.neighbour_offsets = tuple(neighbour_offsets)
        self.slot = slot
        self.original = original  # the processor this one replaced, restored by `uninstall_multiview_attention`

    def __call__(
        self,
        attn,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args,
        **kwargs,
    ) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("MultiViewAttnProcessor is for self-attention (attn1) without an attention mask")
        rows = self.slot.rows
        if rows is None:
            raise RuntimeError(
                "multi-view attention is installed but no view layout is set: run the UNet inside "
                "`with MultiViewAttention.views(layout):`"
            )
        if rows.neighbours.shape[0] != hidden_states.shape[0]:
            raise ValueError(
                f"the view layout describes {rows.neighbours.shape[0]} rows but the batch has {hidden_states.shape[0]}"
            )

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, heads, L, d]
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        neighbours = rows.neighbours.to(key.device)
        k = neighbours.shape[1]
        # Joint keys/values of the ring: [B, k, heads, L, d] -> [B, heads, k * L, d].
        key_ring = key[neighbours].transpose(1, 2).reshape(batch_size, attn.heads, k * tokens, head_dim)
        value_ring = value[neighbours].transpose(1, 2).reshape(batch_size, attn.heads, k * tokens, head_dim)
        hidden_states = F.scaled_dot_product_attention(query, key_ring, value_ring, dropout_p=0.0, is_causal=False)
        if rows.reference is not None:
            reference = rows.reference.to(key.device)
            h_ref = F.scaled_dot_product_attention(query, key[reference], value[reference], dropout_p=0.0)
            w = rows.reference_weight
            hidden_states = (hidden_states + w * h_ref) / (1.0 + w)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class MultiViewAttention:
    """The multi-view attention installed on one UNet: sets the view layout around its forward passes."""

    def __init__(self, config: MultiViewAttentionConfig, slot: _LayoutSlot, num_layers: int) -> None:
        self.config = config
        self.num_layers = num_layers
        self._slot = slot

    @contextlib.contextmanager
    def views(self, layout: ViewLayout) -> Iterator[None]:
        """Run the UNet inside this context: every batch row is the view and group `layout` says."""
        self._slot.rows = _resolve_rows(layout, self.config.neighbour_offsets)
        try:
            yield
        finally:
            self._slot.rows = None


def _self_attention_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for name, m in unet.named_modules() if name.endswith("attn1") and hasattr(m, "set_processor")]


def install_multiview_attention(unet: torch.nn.Module, config: MultiViewAttentionConfig) -> MultiViewAttention:
    """Replace the processor of every self-attention layer (`attn1`) of `unet` with `MultiViewAttnProcessor`.

    Args:
        unet: a diffusers `UNet2DConditionModel` (its cross-attention layers are left alone).
        config: neighbour offsets and reference settings.

    Returns:
        The handle whose `views(layout)` context each forward pass must run in.
    """
    layers = _self_attention_layers(unet)
    if any(isinstance(layer.processor, MultiViewAttnProcessor) for layer in layers):
        raise ValueError("multi-view attention is already installed on this UNet: uninstall it first")
    slot = _LayoutSlot()
    for layer in layers:
        layer.set_processor(MultiViewAttnProcessor(config.neighbour_offsets, slot, original=layer.processor))
    return MultiViewAttention(config, slot, num_layers=len(layers))


def uninstall_multiview_attention(unet: torch.nn.Module) -> int:
    """Put back the processors `install_multiview_attention` replaced; returns how many layers were restored."""
    restored = 0
    for layer in _self_attention_layers(unet):
        if isinstance(layer.processor, MultiViewAttnProcessor):
            layer.set_processor(layer.processor.original)
            restored += 1
    return restored
