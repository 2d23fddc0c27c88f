"""The explicit attention path equals the fused kernel, with and without masked keys."""

import pytest
import torch
import torch.nn.functional as F

from flowrbc.models.set_transformer import MultiHead, explicit_attention


@pytest.mark.parametrize("m, n", [(4, 50), (50, 4), (1, 9)])
def test_explicit_attention_equals_sdpa(m, n):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, m, 8, generator=g)
    k, v = torch.randn(2, 3, 2, n, 8, generator=g)
    mask = torch.rand(3, 1, 1, n, generator=g) < 0.7
    mask[..., 0] = True  # every set keeps a key
    for attn_mask in (None, mask):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        torch.testing.assert_close(explicit_attention(q, k, v, attn_mask), want, rtol=1e-5, atol=1e-6)


def test_padded_keys_change_nothing_on_either_path():
    """Keys beyond the mask, whatever their values, leave the output alone (small side: the
    explicit path on CPU; 80 x 80: SDPA)."""
    torch.manual_seed(0)
    mh = MultiHead(16, 4)
    for m, n in ((8, 80), (80, 80)):
        q, kv = torch.randn(2, m, 16), torch.randn(2, n, 32)
        mask = torch.ones(2, n, dtype=torch.bool)
        mask[1, n // 2 :] = False
        out = mh.attend(q, kv, mask)
        kv2 = kv.clone()
        kv2[1, n // 2 :] = 1e3
        torch.testing.assert_close(mh.attend(q, kv2, mask), out)
        torch.testing.assert_close(mh.attend(q[1:], kv[1:, : n // 2], None), out[1:], rtol=1e-5, atol=1e-6)


def test_softmax_saves_its_dtype_and_has_the_exact_gradient():
    """The attention softmax: float64 values and gradients equal autograd's; under bf16 it returns
    (and saves) bf16 probabilities whose gradient matches the float32 one to bf16 resolution."""
    from flowrbc.models.set_transformer import softmax

    torch.manual_seed(0)
    s = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(softmax, (s,))
    g = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    (want,) = torch.autograd.grad(torch.softmax(s, -1), s, g)
    (got,) = torch.autograd.grad(softmax(s), s, g)
    torch.testing.assert_close(got, want)
    low = s.detach().bfloat16().requires_grad_()
    p = softmax(low)
    assert p.dtype == torch.bfloat16
    (grad_low,) = torch.autograd.grad(p, low, g.bfloat16())
    ref = s.detach().float().bfloat16().float().requires_grad_()
    (grad_ref,) = torch.autograd.grad(torch.softmax(ref, -1), ref, g.bfloat16().float())
    torch.testing.assert_close(grad_low.float(), grad_ref, rtol=0, atol=0.02)


def _st_plus_plus(lean: bool, inducing: int = 6, width: int = 32):
    from flowrbc.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(family="set_transformer++", depth=2, width=width, heads=4, inducing=inducing,
                                    lean=lean)).double()
    with torch.no_grad():
        for p in model.parameters():  # away from the initial zeros and ones, so every term shows
            p += 0.1 * torch.randn_like(p)
    return model


@pytest.mark.parametrize("lean", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_through_the_few_side_equals_the_projected_path(monkeypatch, lean, padded):
    """ISAB's inducing points, its read-back and PMA's seed attend through the few side
    (``MAB._learned_queries``, ``MAB._few_keys``): outputs and every parameter's gradient equal
    those of the projected keys, queries and values, padded sets included (float64)."""
    from flowrbc.models.set_transformer import MAB

    model = _st_plus_plus(lean)
    x = torch.randn(3, 20, 2, dtype=torch.float64)
    mask = None
    if padded:
        mask = torch.ones(3, 20, dtype=torch.bool)
        mask[0, 15:] = False
        mask[2, 5:] = False
    results = []
    for few in (True, False):
        monkeypatch.setattr(MAB, "_few", lambda self, n, dim, few=few: few)
        model.zero_grad()
        y = model(x, mask)["hematocrit"]  # (B, 1)
        y.sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    (y_few, g_few), (y_proj, g_proj) = results
    torch.testing.assert_close(y_few, y_proj, rtol=1e-10, atol=1e-12)
    assert len(g_few) == len(g_proj) > 0
    for a, b in zip(g_few, g_proj):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_the_few_side_path_runs_where_it_needs_fewer_products():
    """Chosen where heads * few <= width + few: ISAB 32 and PMA at width 128 with 4 heads, not
    64 inducing points at width 64 (there projecting is cheaper)."""
    from flowrbc.models.set_transformer import MAB

    mab = MAB(128, 4, "set", "clean", query="learned")
    assert mab._few(32, 128) and mab._few(1, 128)
    assert not MAB(64, 4, "set", "clean", query="learned")._few(64, 64)


def test_an_isab_block_keeps_less_for_backward_through_the_few_side(monkeypatch):
    """Tensors of a set's size (B, N, D) or larger that autograd holds for one lean ISAB block,
    besides its input: through the few side only the two softmax weights and the rFF's two
    tensors; the projected path also keeps keys|values, projected queries and the heads' output."""
    from flowrbc.models.set_transformer import ISAB, MAB
    from tests.saved_tensors import held_for_backward

    def held(few: bool) -> list[tuple[int, ...]]:
        monkeypatch.setattr(MAB, "_few", lambda self, n, dim: few)
        torch.manual_seed(0)
        block = ISAB(16, 4, 4, "set", "clean")
        for mab in (block.mab_in, block.mab_out):
            mab.lean = True
        x = torch.randn(2, 40, 16, requires_grad=True)
        y, big = held_for_backward(lambda t: block(t, None), x)
        y.sum().backward()
        assert torch.isfinite(x.grad).all()
        return [tuple(t.shape) for t in big]

    through, projected = held(True), held(False)
    assert len(through) == 4, through
    assert len(projected) > len(through) + 2, projected


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_norm_mix_equals_weights_times_the_set_norm_with_its_gradients(padded, offset):
    """``norm_mix`` (p^T x - mean) a + beta, with its hand-written backward, equals p^T norm(x)
    and autograd's gradients through it, for padded sets and for a mean that dominates the
    spread (the centred branch), in float64."""
    from flowrbc.models.norms import SetNorm
    from flowrbc.models.set_transformer import norm_mix

    torch.manual_seed(0)
    norm = SetNorm(5).double()
    with torch.no_grad():
        norm.weight.add_(torch.randn(5, dtype=torch.float64))
        norm.bias.add_(torch.randn(5, dtype=torch.float64))
    x = (torch.randn(3, 9, 5, dtype=torch.float64) + offset).requires_grad_()
    mask = None
    if padded:
        mask = torch.ones(3, 9, dtype=torch.bool)
        mask[1, 6:] = False
    s = torch.randn(3, 9, 4, dtype=torch.float64)
    if mask is not None:
        s = s.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    s.requires_grad_()
    dg = torch.randn(3, 4, 5, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        p = torch.softmax(s, 1)  # (B, N, M): columns sum to one over the real elements
        g = norm_mix(p, norm, x, mask) if fused else p.transpose(1, 2) @ norm(x, mask)
        grads.append((g.detach(), torch.autograd.grad(g, (s, x, norm.weight, norm.bias), dg)))
    (g1, d1), (g2, d2) = grads
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9)
    for a, b in zip(d1, d2):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
