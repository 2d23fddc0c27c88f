"""Model inputs shared by training and prediction: set drawing and whole-sample prediction."""

import numpy as np
import torch

from flowrbc.inputs import (draw_sets, predict_sets_each, prediction_sets,
                            sets_per_sample, shuffle_prefix)
from flowrbc.models import ModelConfig, build_model

TARGETS = {"hematocrit": {"kind": "regression", "mean": 40.0, "std": 4.0}, "anemia": {"kind": "binary"}}


def _ragged(counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(sum(counts), 2, generator=g)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]))
    return X, offsets


def _model(family):
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, width=8, depth=1, heads=2, slots=4, outputs={"hematocrit": 1, "anemia": 1})
    return build_model(cfg).eval()


def test_all_cells_equals_one_pass_over_each_sample_whatever_the_padding(monkeypatch):
    import flowrbc.inputs as inputs

    monkeypatch.setattr(inputs, "PREDICT_ELEMENTS", 20)  # batches of ragged sizes, and 17 cells alone
    X, offsets = _ragged([5, 17, 1, 9, 4])
    for family in ("deepsets++", "slot_set", "set_transformer++"):
        model = _model(family)
        out = predict_sets_each(model, X, offsets, np.arange(5), TARGETS, [None], cells=None)[0]
        for i in range(5):
            cells = X[offsets[i] : offsets[i + 1]][None]  # (1, n_i, 2): no padding
            with torch.no_grad():
                raw = model(cells)
            assert np.isclose(out["hematocrit"][i], float(raw["hematocrit"][0, 0]) * 4.0 + 40.0, atol=1e-5), family
            assert np.isclose(out["anemia"][i], float(raw["anemia"][0, 0]), atol=1e-5), family


def test_a_streaming_model_folds_a_large_sample_in_chunks_with_the_whole_set_result(monkeypatch):
    import flowrbc.inputs as inputs

    X, offsets = _ragged([300])
    model = _model("slot_set")
    whole = predict_sets_each(model, X, offsets, np.arange(1), TARGETS, [None], cells=None)[0]
    chunks = []
    update = model.update
    model.update = lambda state, x, mask=None: chunks.append(x.shape[1]) or update(state, x, mask)
    monkeypatch.setattr(inputs, "PREDICT_ELEMENTS", 64)
    streamed = predict_sets_each(model, X, offsets, np.arange(1), TARGETS, [None], cells=None)[0]
    assert chunks == [64, 64, 64, 64, 44]
    assert np.isclose(whole["hematocrit"][0], streamed["hematocrit"][0], atol=1e-5)


def test_draws_come_from_their_own_sample_and_average():
    X, offsets = _ragged([40, 6])
    X[:40] += 100.0  # sample 0's cells are far from sample 1's
    g = torch.Generator().manual_seed(1)
    sets = draw_sets(X, offsets, torch.tensor([0, 1]), 50, g)  # (2, 50, 2)
    assert (sets[0] > 50).all() and (sets[1] < 50).all()
    model = _model("deepsets++")
    one = predict_sets_each(model, X, offsets, np.arange(2), TARGETS, [None], cells=8, draws=1, seed=3)[0]
    many = predict_sets_each(model, X, offsets, np.arange(2), TARGETS, [None], cells=8, draws=5, seed=3)[0]
    assert one["hematocrit"].shape == many["hematocrit"].shape == (2,)
    assert not np.isclose(one["hematocrit"][0], many["hematocrit"][0])  # 40 cells: 5 sets of 8, another average
    assert np.isclose(one["hematocrit"][1], many["hematocrit"][1], atol=1e-5)  # 6 cells: one set either way


def test_prediction_sets_cover_each_sample_before_reusing_a_cell():
    counts = [100, 10, 2000, 101]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]))
    X, _ = _ragged(counts)
    k, sets = prediction_sets(X, offsets, torch.arange(4), 25, 10, seed=0)
    assert k.tolist() == [4, 1, 10, 5] == sets_per_sample(np.array(counts), 25, 10).tolist()
    used = [[] for _ in counts]
    for live, rows in sets:
        assert rows.shape == (len(live), 25)
        for j, r in zip(live.tolist(), rows):
            assert ((r >= offsets[j]) & (r < offsets[j + 1])).all()  # its own cells only
            used[j].append(r.tolist())
    uses = [np.bincount(np.concatenate(u) - int(offsets[j]), minlength=counts[j]) for j, u in enumerate(used)]
    assert (uses[0] == 1).all()  # 4 disjoint sets covering all 100 cells
    assert set(uses[1].tolist()) <= {2, 3} and uses[1].sum() == 25  # 10 cells in one set of 25
    assert (uses[2] <= 1).all() and uses[2].sum() == 250  # 10 disjoint sets of 2,000 cells
    assert (uses[3] >= 1).all() and (uses[3] <= 2).all()  # 101 cells in 5 sets: all used, none thrice


def test_shuffle_prefix_is_uniform_over_seeds():
    firsts, threes = [], []
    for seed in range(4000):
        perm = shuffle_prefix(np.array([5, 3, 5]), 4, seed)  # (3, 4)
        assert (perm[0] == perm[2]).all()  # equal sizes, one shuffle
        firsts.append(perm[0, 0])
        threes.append(perm[1])
    first5 = np.bincount(firsts, minlength=5) / 4000
    assert np.abs(first5 - 0.2).max() < 0.03  # each cell first with probability 1/5
    threes = np.array(threes)
    assert (np.sort(threes[:, :3], axis=1) == np.arange(3)).all() and (threes[:, 3] >= 3).all()  # then padding


def test_a_sample_keeps_its_sets_in_any_batch():
    X, offsets = _ragged([50, 50, 30])
    _, together = prediction_sets(X, offsets, torch.arange(3), 10, 5, seed=4)
    _, alone = prediction_sets(X, offsets, torch.tensor([1]), 10, 5, seed=4)
    for (live, rows), (_, mine) in zip(together, alone):
        assert torch.equal(rows[live == 1], mine)


def test_deep_sets_embed_a_large_set_in_chunks_exactly(monkeypatch):
    """Set norm over the whole set, gathered chunk by chunk: the one-pass embedding, for each
    block kind a Deep Sets model can chunk; an equivariant block falls back to one pass."""
    import flowrbc.inputs as inputs

    X, offsets = _ragged([203])
    monkeypatch.setattr(inputs, "PREDICT_ELEMENTS", 17)
    kinds = [dict(family="deepsets++"), dict(family="deepsets++", pooling="max"),
             dict(family="deepsets", norm="set", residual="none"), dict(family="deepsets", equivariant="mean")]
    for kind in kinds:
        torch.manual_seed(0)
        model = build_model(ModelConfig(width=8, depth=3, outputs={"hematocrit": 1, "anemia": 1}, **kind)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))  # away from the identity-like initial norms
            whole = model.embed(X[None])  # (1, D)
        (_, z), = list(inputs.whole_sets(model, X, offsets, torch.tensor([0])))
        torch.testing.assert_close(z, whole, atol=1e-5, rtol=1e-5)
        if kind["family"] == "deepsets++" and "pooling" not in kind:
            assert model.encoder.whole_set(X, 17) is not None
    assert build_model(ModelConfig(family="deepsets", equivariant="mean", width=8)).encoder.whole_set(X, 17) is None
