"""Masked norms: the formulas, padding invariance, gradients, running statistics."""

import pytest
import torch
import torch.nn.functional as F

from flowrbc.models.norms import FeatureNorm, LayerNorm, NoNorm, SetNorm, make_norm


def _pad(x, extra, value=7.0):
    """Append ``extra`` padded elements (value ``value``) and shuffle; returns (x, mask, perm)."""
    b, n, d = x.shape
    pad = torch.full((b, extra, d), value, dtype=x.dtype)
    xp = torch.cat([x, pad], 1)
    mask = torch.cat([torch.ones(b, n, dtype=torch.bool), torch.zeros(b, extra, dtype=torch.bool)], 1)
    perm = torch.randperm(n + extra)
    return xp[:, perm], mask[:, perm], perm


def test_set_norm_standardises_each_set_over_elements_and_features():
    torch.manual_seed(0)
    x = torch.randn(3, 10, 4, dtype=torch.float64) * 5 + 3
    norm = SetNorm(4).double()
    y = norm(x)
    for b in range(3):
        ref = (x[b] - x[b].mean()) / torch.sqrt(x[b].var(unbiased=False) + norm.eps)
        torch.testing.assert_close(y[b], ref)
    # per-feature affine
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, 0.0, -1.0]))
    torch.testing.assert_close(norm(x), y * norm.weight + norm.bias)


def test_set_norm_keeps_relative_scale_that_layer_norm_removes():
    # two elements, one a multiple of the other: layer norm maps them to the same output
    x = torch.tensor([[[1.0, 2.0, 4.0], [2.0, 4.0, 8.0]]])
    ln = LayerNorm(3)(x)
    sn = SetNorm(3)(x)
    torch.testing.assert_close(ln[0, 0], ln[0, 1])
    assert (sn[0, 0] - sn[0, 1]).abs().max() > 0.5


@pytest.mark.parametrize("kind", ["set", "layer", "feature", "none"])
@pytest.mark.parametrize("training", [True, False])
def test_masked_norm_ignores_padding(kind, training):
    torch.manual_seed(1)
    x = torch.randn(4, 6, 5, dtype=torch.float64) * 2 + 1
    norm = make_norm(kind, 5).double().train(training)
    ref = norm(x)
    if kind == "feature":
        norm.running_mean.zero_(), norm.running_var.fill_(1.0)
    xp, mask, perm = _pad(x, 5, value=1e3)
    out = norm(xp, mask)
    real = torch.argsort(perm)[:6]  # positions of the real elements in the shuffled set
    torch.testing.assert_close(out[:, real], ref, rtol=1e-10, atol=1e-10)


def test_set_norm_masked_matches_per_set_statistics_with_uneven_sets():
    torch.manual_seed(2)
    x = torch.randn(2, 8, 3, dtype=torch.float64)
    mask = torch.tensor([[True] * 3 + [False] * 5, [True] * 8])
    y = SetNorm(3).double()(x, mask)
    torch.testing.assert_close(y[0, :3], SetNorm(3).double()(x[:1, :3])[0])
    torch.testing.assert_close(y[1], SetNorm(3).double()(x[1:])[0])


def test_set_norm_gradients_are_exact():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, True, False], [True] * 5])
    norm = SetNorm(3).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0), norm.bias.uniform_(-1, 1)
    assert torch.autograd.gradcheck(lambda t: norm(t, mask), (x,))
    assert torch.autograd.gradcheck(lambda t: norm(t), (x,))


def test_feature_norm_running_statistics_and_eval():
    torch.manual_seed(4)
    norm = FeatureNorm(2, momentum=1.0).double()
    x = torch.randn(8, 50, 2, dtype=torch.float64) * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -3.0])
    mask = torch.rand(8, 50) < 0.7
    y = norm(x, mask)
    real = x[mask]  # (n_real, 2)
    torch.testing.assert_close(norm.running_mean, real.mean(0))
    torch.testing.assert_close(norm.running_var, real.var(0, unbiased=True))
    torch.testing.assert_close(y[mask].mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-10, rtol=0)
    norm.eval()
    z = norm(x[:1, :3])  # eval: fixed statistics, any set, no batch dependence
    expected = (x[:1, :3] - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    torch.testing.assert_close(z, expected)


def test_set_norm_stats_in_float32_under_bfloat16():
    x = (torch.randn(2, 64, 8) * 3 + 100).bfloat16()
    with torch.no_grad():
        y = SetNorm(8)(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert abs(float(y.float().mean())) < 0.05 and abs(float(y.float().std()) - 1) < 0.05


@pytest.mark.parametrize("sets", [1, 3])
def test_set_norm_without_gradients_matches_the_training_path(sets):
    """Prediction's path (one layer_norm per set, no mask) gives the training path's values,
    in float64 and, under bf16 autocast, to bf16's resolution with a bf16 output."""
    torch.manual_seed(2)
    norm = SetNorm(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0), norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(sets, 40, 6, dtype=torch.float64) * 3 + 2
    train = norm(x.requires_grad_())  # the autograd Function
    with torch.no_grad():
        fast = norm(x)
    torch.testing.assert_close(fast, train.detach())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = norm.float()(x.float().bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.double(), train.detach(), rtol=0, atol=0.05)


def test_no_norm_is_identity_object():
    x = torch.randn(2, 3, 4)
    assert NoNorm()(x) is x
    with pytest.raises(ValueError, match="^norm:"):
        make_norm("batch", 4)


@pytest.mark.parametrize(("offset", "atol"), [(0.0, 1e-5), (30.0, 1e-4), (300.0, 1e-4), (1e4, 3e-3)])
def test_set_norm_float32_is_accurate_with_large_offsets(offset, atol):
    # the fast single-pass variance falls back to the stable kernel when the mean dominates;
    # what remains is float32's own resolution at the offset (ulp(1e4) / 0.5 = 2e-3)
    torch.manual_seed(5)
    x = (torch.randn(2, 300, 8) * 0.5 + offset).double()  # exactly representable in float32
    with torch.no_grad():
        ref = SetNorm(8).double()(x)
        out = SetNorm(8)(x.float())
        feature_ref = FeatureNorm(8).double()(x)
        feature_out = FeatureNorm(8)(x.float())
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=atol)
    torch.testing.assert_close(feature_out.double(), feature_ref, rtol=0, atol=atol)


@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("offset", [0.0, 40.0])  # 40: the mean dominates, the centred path
def test_norm_linear_node_matches_the_separate_layers(act, masked, offset):
    from flowrbc.models.norms import _SetNormLinearFunction, norm_act, norm_linear

    torch.manual_seed(0)
    norm, lin = SetNorm(6).double(), torch.nn.Linear(6, 5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(3, 7, 6, dtype=torch.float64) + offset).requires_grad_()
    mask = None
    if masked:
        mask = torch.ones(3, 7, dtype=torch.bool)
        mask[0, 4:], mask[2, 1:] = False, False
    params = (x, norm.weight, norm.bias, lin.weight, lin.bias)
    y = norm_linear(norm, lin, x, mask, act, lean=True)
    ref = lin(norm_act(norm, x, mask) if act else norm(x, mask))
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b)
    fn = lambda *p: _SetNormLinearFunction.apply(*p, mask, 1e-5, act)  # noqa: E731
    assert torch.autograd.gradcheck(fn, params)
    assert not y.grad_fn.name().startswith("Addmm")  # one node, not the layers


def test_norm_linear_under_bf16_autocast_keeps_float32_weight_gradients():
    from flowrbc.models.norms import norm_act, norm_linear

    torch.manual_seed(0)
    norm, lin = SetNorm(8), torch.nn.Linear(8, 8)
    x = torch.randn(2, 50, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm_linear(norm, lin, x, None, True, lean=True)
        ref = lin(norm_act(norm, x, None))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.float())
    grads = torch.autograd.grad(y.float().sum(), (x, lin.weight))
    expected = torch.autograd.grad(ref.float().sum(), (x, lin.weight))
    assert [g.dtype for g in grads] == [torch.float32, torch.float32]
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())


@pytest.mark.parametrize("lean", [True, False])
def test_a_lean_clean_deep_sets_block_saves_one_tensor_beside_its_input(lean):
    """Input-sized tensors autograd holds for one Deep Sets++ block, besides the input: with
    ``lean`` only the hidden tensor between its two linear layers; without, three."""
    from flowrbc.models.blocks import ElementBlock
    from tests.saved_tensors import held_for_backward

    torch.manual_seed(0)
    block = ElementBlock(16, "set", "clean", lean=lean)
    x = torch.randn(4, 50, 16, requires_grad=True)
    y, big = held_for_backward(block, x)
    assert len(big) == (1 if lean else 3), [tuple(t.shape) for t in big]
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_linear_is_f_linear_as_a_tensor_of_its_own():
    from flowrbc.models.norms import linear

    torch.manual_seed(0)
    x, w, b = torch.randn(3, 7, 5), torch.randn(4, 5), torch.randn(4)
    for bias in (b, None):
        y = linear(x, w, bias)
        assert y._base is None  # F.linear's (B, N, D_out) output is a view of its (B*N, D_out) product
        torch.testing.assert_close(y, F.linear(x, w, bias))
    w, b = w.requires_grad_(), b.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the float32 bias is cast to the product's dtype
        y = linear(x, w, b)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), F.linear(x, w, b).detach(), atol=0.05, rtol=0.02)  # bf16 roundings
    (db,) = torch.autograd.grad(y.float().sum(), b)
    assert db.dtype == torch.float32
    torch.testing.assert_close(db, torch.full_like(b, 21.0))  # each bias entry adds to B*N = 21 outputs


def _graph_nodes(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


@pytest.mark.parametrize("family", ["deepsets++", "set_transformer++"])
@pytest.mark.parametrize("lean", [False, True])
def test_no_gradient_is_cloned_behind_an_in_place_op_on_a_view(family, lean):
    """Residual sums and ReLUs are written into fresh outputs, never into views: autograd would
    clone the whole gradient there in backward (``CopySlices``)."""
    from flowrbc.models import ModelConfig, build_model

    inducing = 4 if family.startswith("set_transformer") else None
    model = build_model(ModelConfig(family=family, depth=2, width=16, lean=lean, inducing=inducing))
    out = model(torch.randn(2, 9, 2), torch.ones(2, 9, dtype=torch.bool))["hematocrit"]
    nodes = _graph_nodes(out.sum())
    assert "UnsafeViewBackward0" in nodes or "_SetNormLinearFunctionBackward" in nodes  # the walk saw the blocks
    assert "CopySlices" not in nodes and "AsStridedBackward0" not in nodes
