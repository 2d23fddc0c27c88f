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
