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
