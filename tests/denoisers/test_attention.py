"""Multi-view self-attention: equal to diffusers' default when restricted to self, equal to an explicit loop
otherwise, independent of how views are laid out in the batch, and cleanly installed and removed."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_sd import TinySDPaths

from sync_splat.denoisers.attention import (
    MultiViewAttentionConfig,
    MultiViewAttnProcessor,
    ViewLayout,
    install_multiview_attention,
    uninstall_multiview_attention,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def unet(tiny_sd: TinySDPaths):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_sd.model, subfolder="unet", use_safetensors=True).eval()


@pytest.fixture
def attn():
    """One SD-style self-attention layer (8 heads of 4 channels, with output projection and dropout)."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=32, heads=8, dim_head=4, bias=False, upcast_attention=False).eval()


def hidden(batch: int, tokens: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, tokens, 32, generator=torch.Generator().manual_seed(seed))


def run(attn, x: torch.Tensor, config: MultiViewAttentionConfig, layout: ViewLayout) -> torch.Tensor:
    handle = install_multiview_attention(torch.nn.ModuleDict({"attn1": attn}), config)
    try:
        with torch.no_grad(), handle.views(layout):
            return attn(x)
    finally:
        uninstall_multiview_attention(torch.nn.ModuleDict({"attn1": attn}))


def explicit(attn, x: torch.Tensor, layout: ViewLayout, offsets: tuple[int, ...]) -> torch.Tensor:
    """The definition, one row at a time: softmax over the joint keys of the ring, mixed with the reference."""
    n, heads = layout.num_views, attn.heads
    rows = {(g, v): r for r, (v, g) in enumerate(zip(layout.view_index, layout.group, strict=True))}

    def split(t: torch.Tensor) -> torch.Tensor:  # [L, heads * d] -> [heads, L, d]
        return t.view(t.shape[0], heads, -1).transpose(0, 1)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        return weights @ v

    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    out = []
    for view, group in zip(layout.view_index, layout.group, strict=True):
        ring = list(dict.fromkeys((view + o) % n for o in (0, *offsets)))
        joint = [rows[(group, u)] for u in ring]
        row = rows[(group, view)]
        h = attend(split(q[row]), split(torch.cat([k[r] for r in joint])), split(torch.cat([v[r] for r in joint])))
        w = layout.reference_weight
        if layout.reference_view is not None and w > 0:
            ref = rows[(group, layout.reference_view)]
            h = (h + w * attend(split(q[row]), split(k[ref]), split(v[ref]))) / (1 + w)
        out.append(attn.to_out[0](h.transpose(0, 1).reshape(x.shape[1], -1)))
    return torch.stack(out)


def test_self_only_equals_diffusers_default_processor(attn):
    from diffusers.models.attention_processor import AttnProcessor2_0

    x = hidden(5)
    attn.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        expected = attn(x)
    config = MultiViewAttentionConfig(neighbour_offsets=(), reference_weight=0.0)
    got = run(attn, x, config, ViewLayout.branches(5, 1, reference_view=2, reference_weight=0.0))
    assert torch.allclose(got, expected, atol=ATOL)


def test_self_only_unet_equals_the_default_unet(unet):
    g = torch.Generator().manual_seed(0)
    sample, text = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 77, 32, generator=g)
    with torch.no_grad():
        expected = unet(sample, 500, encoder_hidden_states=text).sample
        handle = install_multiview_attention(unet, MultiViewAttentionConfig(neighbour_offsets=(), reference_weight=0))
        try:
            with handle.views(ViewLayout.branches(2, 2)):
                got = unet(sample, 500, encoder_hidden_states=text).sample
        finally:
            uninstall_multiview_attention(unet)
    assert torch.allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize(
    ("offsets", "num_views", "num_groups", "reference_view", "weight"),
    [
        ((-1, 1), 5, 1, None, 0.0),  # ring only
        ((-1, 1), 4, 2, 2, 1.0),  # two guidance branches, reference on
        ((1,), 3, 1, 0, 0.5),  # one-sided ring, partial reference weight
        ((-1, 1), 2, 1, None, 0.0),  # -1 and +1 are the same view: counted once
        ((-2, -1, 1, 2), 6, 1, 5, 2.0),  # a wider ring
    ],
)
def test_matches_the_explicit_definition(attn, offsets, num_views, num_groups, reference_view, weight):
    layout = ViewLayout.branches(num_views, num_groups, reference_view, weight)
    x = hidden(num_views * num_groups)
    config = MultiViewAttentionConfig(neighbour_offsets=offsets)
    with torch.no_grad():
        expected = explicit(attn, x, layout, offsets)
    assert torch.allclose(run(attn, x, config, layout), expected, atol=ATOL)


def test_rows_are_found_by_global_view_index(attn):
    """Shuffling the batch rows (and saying so in the layout) shuffles the output the same way."""
    config = MultiViewAttentionConfig(neighbour_offsets=(-1, 1))
    layout = ViewLayout.branches(4, 2, reference_view=1, reference_weight=1.0)
    x = hidden(8)
    ordered = run(attn, x, config, layout)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    shuffled = ViewLayout(
        view_index=tuple(layout.view_index[i] for i in perm),
        group=tuple(layout.group[i] for i in perm),
        num_views=4,
        reference_view=1,
        reference_weight=1.0,
    )
    assert torch.allclose(run(attn, x[perm], config, shuffled), ordered[perm], atol=ATOL)


def test_groups_do_not_see_each_other(attn):
    """Two guidance branches in one batch give what each branch gives alone."""
    config = MultiViewAttentionConfig(neighbour_offsets=(-1, 1))
    x = hidden(6)
    together = run(attn, x, config, ViewLayout.branches(3, 2, reference_view=0, reference_weight=1.0))
    first = run(attn, x[:3], config, ViewLayout.branches(3, 1, reference_view=0, reference_weight=1.0))
    second = run(attn, x[3:], config, ViewLayout.branches(3, 1, reference_view=0, reference_weight=1.0))
    assert torch.allclose(together, torch.cat([first, second]), atol=ATOL)


def test_zero_reference_weight_skips_the_reference_branch(attn, monkeypatch: pytest.MonkeyPatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    config = MultiViewAttentionConfig(neighbour_offsets=(-1, 1))
    x = hidden(3)
    without = run(attn, x, config, ViewLayout.branches(3, 1, reference_view=None))
    assert len(calls) == 1
    off = run(attn, x, config, ViewLayout.branches(3, 1, reference_view=1, reference_weight=0.0))
    assert len(calls) == 2 and torch.equal(off, without)
    on = run(attn, x, config, ViewLayout.branches(3, 1, reference_view=1, reference_weight=1.0))
    assert len(calls) == 4 and not torch.allclose(on, without, atol=1e-4)


def test_reference_weight_follows_the_timestep_threshold():
    config = MultiViewAttentionConfig(reference_weight=0.8, reference_until=0.2)
    assert [config.reference_weight_at(t, 1000) for t in (999, 801, 800, 0)] == [0.8, 0.8, 0.0, 0.0]


def test_missing_neighbour_or_layout_raises(attn):
    config = MultiViewAttentionConfig(neighbour_offsets=(-1, 1))
    chunk = ViewLayout(view_index=(0, 1), group=(0, 0), num_views=4)  # views 2 and 3 are in another pass
    with pytest.raises(ValueError, match="view 3 of group 0"):
        run(attn, hidden(2), config, chunk)
    layers = torch.nn.ModuleDict({"attn1": attn})
    install_multiview_attention(layers, config)
    try:
        with pytest.raises(RuntimeError, match="no view layout"), torch.no_grad():
            attn(hidden(2))
    finally:
        uninstall_multiview_attention(layers)


def test_install_and_uninstall_touch_only_self_attention(unet):
    before = dict(unet.attn_processors)
    handle = install_multiview_attention(unet, MultiViewAttentionConfig())
    try:
        after = unet.attn_processors
        replaced = [name for name in after if isinstance(after[name], MultiViewAttnProcessor)]
        assert replaced and all(".attn1." in name for name in replaced)
        assert len(replaced) == handle.num_layers == sum(".attn1." in name for name in before)
        assert all(after[name] is before[name] for name in before if ".attn2." in name)
        with pytest.raises(ValueError, match="already installed"):
            install_multiview_attention(unet, MultiViewAttentionConfig())
    finally:
        assert uninstall_multiview_attention(unet) == handle.num_layers
    assert all(unet.attn_processors[name] is before[name] for name in before)
