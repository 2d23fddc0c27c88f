"""Slot Set Encoder: mini-batch consistency (Prop. 1), slot equivariance (Prop. 2), the
readout trap, and the baselines that are not mini-batch consistent (appendix Table 1)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowrbc.models import ModelConfig, SlotSetEncoder, build_model

AGGS = ["sum", "mean", "max", "min"]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _chunks(n, sizes):
    """Split range(n) into consecutive chunks of the given sizes (last takes the rest)."""
    bounds, start = [], 0
    for s in sizes:
        if start >= n:
            break
        bounds.append((start, min(n, start + s)))
        start += s
    if start < n:
        bounds.append((start, n))
    return bounds


def _stream_encoder(enc, x, bounds, slots):
    state = enc.init_state(x.shape[0], slots=slots)
    for a, b in bounds:
        state = enc.update(state, x[:, a:b])
    return enc.finalize(state)


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("init", ["random", "deterministic"])
def test_encoder_chunked_equals_whole(agg, dtype, init):
    torch.manual_seed(0)
    enc = SlotSetEncoder(6, 5, 6, 6, init=init, agg=agg).to(dtype).eval()
    x = torch.randn(3, 40, 6, dtype=dtype)
    slots = enc.sample_slots(3)
    whole = enc(x, slots=slots)
    for sizes in ([1] * 40, [7, 1, 13, 1, 2], [39], [3] * 14):
        chunked = _stream_encoder(enc, x, _chunks(40, sizes), slots)
        torch.testing.assert_close(chunked, whole, rtol=TOL[dtype], atol=TOL[dtype])


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 30),
    cuts=st.lists(st.integers(1, 30), min_size=0, max_size=8),
    agg=st.sampled_from(AGGS),
    seed=st.integers(0, 2**16),
)
def test_encoder_chunked_equals_whole_any_partition(n, cuts, agg, seed):
    torch.manual_seed(seed)
    enc = SlotSetEncoder(4, 3, 5, 4, agg=agg).double()  # training mode: slots held in the state
    x = torch.randn(2, n, 4, dtype=torch.float64)
    order = torch.randperm(n)  # chunks are arbitrary subsets, not only runs
    slots = enc.sample_slots(2)
    whole = enc(x, slots=slots)
    chunked = _stream_encoder(enc, x[:, order], _chunks(n, cuts), slots)
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("slots2", [0, 3])
def test_full_model_streaming_equals_forward(agg, slots2):
    torch.manual_seed(1)
    config = ModelConfig(
        family="slot_set", width=8, slots=4, slots2=slots2, slot_agg=agg,
        outputs={"hematocrit": 1, "anemia": 1},
    )
    model = build_model(config).double().eval()
    x = torch.randn(2, 50, 2, dtype=torch.float64)
    whole = model(x)
    for sizes in ([1] * 50, [17, 1, 20, 12], [5] * 10):
        state = model.init_state(2)
        for a, b in _chunks(50, sizes):
            state = model.update(state, x[:, a:b])
        out = model.finalize(state)
        for name in whole:
            torch.testing.assert_close(out[name], whole[name], rtol=1e-10, atol=1e-10)


def test_streaming_with_masks_and_sets_missing_from_chunks():
    torch.manual_seed(2)
    model = build_model(ModelConfig(family="slot_set", width=8, slots=4)).double().eval()
    a = torch.randn(1, 9, 2, dtype=torch.float64)
    b = torch.randn(1, 3, 2, dtype=torch.float64)
    state = model.init_state(2)
    # chunk 1: set 0 has 5 elements, set 1 none; chunk 2: set 0 has 4, set 1 has 3
    x1 = torch.cat([a[:, :5], torch.zeros(1, 5, 2, dtype=torch.float64)])
    m1 = torch.tensor([[True] * 5, [False] * 5])
    x2 = torch.cat([a[:, 5:], torch.cat([b, torch.zeros(1, 1, 2, dtype=torch.float64)], 1)])
    m2 = torch.tensor([[True] * 4, [True] * 3 + [False]])
    state = model.update(state, x1, m1)
    state = model.update(state, x2, m2)
    out = model.finalize(state)["hematocrit"]
    torch.testing.assert_close(out[0:1], model(a)["hematocrit"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1:2], model(b)["hematocrit"], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="no real elements"):
        model.finalize(model.update(model.init_state(2), x1, m1))


def test_float32_streaming_all_aggregations():
    for agg in AGGS:
        torch.manual_seed(3)
        model = build_model(ModelConfig(family="slot_set", width=16, slots=8, slot_agg=agg)).eval()
        x = torch.randn(4, 300, 2)
        state = model.init_state(4)
        for a in range(0, 300, 7):
            state = model.update(state, x[:, a : a + 7])
        torch.testing.assert_close(
            model.finalize(state)["hematocrit"], model(x)["hematocrit"], rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("agg", AGGS)
def test_slot_permutation_equivariance(agg):
    torch.manual_seed(4)
    enc = SlotSetEncoder(5, 6, 4, 5, agg=agg).double()
    x = torch.randn(2, 11, 5, dtype=torch.float64)
    slots = enc.sample_slots(2)
    pi_x, pi_s = torch.randperm(11), torch.randperm(6)
    out = enc(x, slots=slots)
    torch.testing.assert_close(enc(x[:, pi_x], slots=slots[:, pi_s]), out[:, pi_s])


def test_eval_slots_are_fixed_and_distinct():
    enc = SlotSetEncoder(3, 4, 3, 3).eval()
    s1, s2 = enc.sample_slots(2), enc.sample_slots(2)
    torch.testing.assert_close(s1, s2)
    assert torch.cdist(s1[0], s1[0]).fill_diagonal_(1.0).min() > 1e-3  # not all equal to mu
    enc.train()
    assert not torch.equal(enc.sample_slots(2), enc.sample_slots(2))  # fresh noise in training


def _perturb_slots(model):
    with torch.no_grad():
        for enc in (model.sse, model.sse2):
            if enc is None:
                continue
            for name in ("mu", "log_sigma", "slot_init"):
                if hasattr(enc, name):
                    getattr(enc, name).add_(torch.randn_like(getattr(enc, name)))
            enc.q.weight.add_(torch.randn_like(enc.q.weight))
            enc.k.weight.add_(torch.randn_like(enc.k.weight))


@pytest.mark.parametrize("agg", ["sum", "mean"])
@pytest.mark.parametrize("slots2", [0, 3])
def test_readout_trap_sum_over_slots_ignores_the_slots(agg, slots2):
    # weights sum to one over the slots, so summing slots is sum pooling of v: the slots,
    # queries and keys do not matter (even with a second SSE stage).
    torch.manual_seed(5)
    config = ModelConfig(family="slot_set", width=8, slots=4, slots2=slots2, slot_agg=agg, slot_readout="sum")
    model = build_model(config).double().eval()
    x = torch.randn(3, 20, 2, dtype=torch.float64)
    before = model.embed(x)
    _perturb_slots(model)
    torch.testing.assert_close(model.embed(x), before, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(slot_readout="mlp"),
        dict(slot_readout="mlp", slots2=3),
        dict(slot_readout="flatten", slot_init="deterministic"),
    ],
)
def test_readout_depends_on_the_slots(kwargs):
    torch.manual_seed(5)
    model = build_model(ModelConfig(family="slot_set", width=8, slots=4, **kwargs)).double().eval()
    x = torch.randn(3, 20, 2, dtype=torch.float64)
    before = model.embed(x)
    _perturb_slots(model)
    after = model.embed(x)
    # measured 7e-4 (mlp), 6e-5 (two stages), 0.36 (flatten); the trap readout gives 1e-16
    assert (after - before).abs().max() > 1e-5 * before.abs().max()


@pytest.mark.parametrize(("readout", "trapped"), [("sum", True), ("mlp", False)])
def test_slot_parameters_get_gradient_only_without_the_trap(readout, trapped):
    torch.manual_seed(7)
    config = ModelConfig(family="slot_set", width=8, slots=4, slot_readout=readout)
    model = build_model(config).double()
    model(torch.randn(3, 20, 2, dtype=torch.float64))["hematocrit"].sum().backward()
    grads = [model.sse.mu.grad, model.sse.q.weight.grad, model.sse.k.weight.grad]
    largest = max(float(g.abs().max()) for g in grads)
    if trapped:
        assert largest < 1e-12
    else:
        assert largest > 1e-6


def _chunked_mean_embedding(model, x, size):
    """The natural aggregate of a set encoder over chunks: the size-weighted mean."""
    parts = [model.embed(x[:, a : a + size]) * min(size, x.shape[1] - a) for a in range(0, x.shape[1], size)]
    return torch.stack(parts).sum(0) / x.shape[1]


@pytest.mark.parametrize(
    ("kwargs", "consistent"),
    [
        (dict(family="deepsets", pooling="mean"), True),  # per-element layers: MBC
        (dict(family="deepsets", pooling="mean", equivariant="mean"), False),  # original layer
        (dict(family="deepsets", pooling="mean", equivariant="max"), False),
        (dict(family="set_transformer", pooling="pma"), False),  # self-attention
        (dict(family="set_transformer", pooling="mean"), False),
        (dict(family="deepsets++"), False),  # set norm uses the whole set
    ],
)
def test_mini_batch_consistency_of_baselines(kwargs, consistent):
    torch.manual_seed(6)
    model = build_model(ModelConfig(width=16, heads=2, outputs={}, **kwargs)).double().eval()
    x = torch.randn(4, 60, 2, dtype=torch.float64) * 2
    with torch.no_grad():
        whole = model.embed(x)
        gap = (_chunked_mean_embedding(model, x, 10) - whole).abs().max() / whole.abs().max()
    print(f"{kwargs}: relative MBC gap {float(gap):.3g}")
    if consistent:
        assert gap < 1e-10
    else:
        assert gap > 1e-3  # consistent models sit at ~1e-16
