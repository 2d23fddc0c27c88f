"""Reading every cell: the decoder refitted on whole-patient embeddings (flowrbc.decoder_fit)."""

import numpy as np
import pytest
import torch

from flowrbc.io.builtin import synthetic_cohort
from flowrbc.train import TrainConfig, train_cohort

TINY = dict(width=16, depth=1, set_size=32, epochs=3, batch_size=16, device="cpu", seed=5)


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(n_patients=200, n_cells=96, seed=13)


@pytest.fixture(scope="module")
def data(cohort):
    from flowrbc.prepare import TrainingData

    return TrainingData.of(cohort, targets=None, covariates=None, index_inputs=False, set_size=32,
                           device=torch.device("cpu"))


def _model(data, seed=0):
    from flowrbc.models import ModelConfig, build_model

    torch.manual_seed(seed)
    return build_model(ModelConfig(family="deepsets++", in_features=2, depth=1, width=16,
                                   covariates=data.decoder_width, outputs={n: 1 for n in data.specs})).eval()


def test_whole_embeddings_are_each_patients_every_cell_in_one_set(data):
    from flowrbc.decoder_fit import whole_embeddings

    model = _model(data)
    idx = np.array([5, 0, 17])
    Z = whole_embeddings(model, data.prep.X, data.prep.offsets, idx)
    for row, i in enumerate(idx):
        cells = data.prep.X[data.prep.offsets[i] : data.prep.offsets[i + 1]]  # (n_i, C)
        with torch.no_grad():
            torch.testing.assert_close(Z[row], model.embed(cells[None])[0])


def test_fit_decoder_learns_from_a_blank_decoder_and_leaves_the_encoder(data):
    """A decoder drawn afresh, its heads scaled up, predicts noise; refitted on whole-set
    embeddings it must do far better on the validation split, and the encoder must not move."""
    from flowrbc.decoder_fit import fit_decoder

    model = _model(data)
    encoder = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in [*model.decoder.trunk, *model.decoder.heads.values()]:
            layer.reset_parameters()
        for head in model.decoder.heads.values():
            head.weight.mul_(20.0)
    done = fit_decoder(model, data, lr=3e-3, weight_decay=0.0, covariate_dropout=0.2, seed=0, max_epochs=40)
    assert done.kept and done.best_epoch > 0 and done.val_after < 0.9 * done.val_before
    assert done.gain == pytest.approx(done.val_before - done.val_after, rel=1e-4) and done.gain > 2 * done.gain_se
    assert min(done.history) == pytest.approx(done.val_after)
    for k, v in model.state_dict().items():
        if k in encoder:
            torch.testing.assert_close(v, encoder[k])


def test_fit_decoder_keeps_the_trained_decoder_when_nothing_beats_it(data):
    from flowrbc.decoder_fit import fit_decoder

    model = _model(data)
    before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    done = fit_decoder(model, data, lr=1e-3, weight_decay=0.0, covariate_dropout=0.0, seed=0, max_epochs=0)
    assert done.best_epoch == 0 and not done.kept and done.val_after == done.val_before
    for k, v in model.decoder.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_a_refit_better_by_too_few_standard_errors_is_not_kept(data, monkeypatch):
    """The same refit as above, under a margin no gain can clear: the epochs run and find a
    better decoder, but the trained one stays."""
    from flowrbc import decoder_fit

    model = _model(data)
    before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    monkeypatch.setattr(decoder_fit, "MARGIN_SE", 1e9)
    done = decoder_fit.fit_decoder(model, data, lr=3e-3, weight_decay=0.0, covariate_dropout=0.0, seed=0,
                                   max_epochs=20)
    assert done.best_epoch > 0 and done.gain > 0 and not done.kept and done.val_after == done.val_before
    for k, v in model.decoder.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_read_all_predicts_on_every_cell_and_read_sets_on_sets(cohort, tmp_path):
    """``--read all`` (default): the checkpoint reads every cell (no draws: seed and draws
    change nothing) and its decoder is the refitted one; ``--read sets`` keeps the sets."""
    from flowrbc.checkpoint import load_checkpoint
    from flowrbc.predictor import Predictor

    whole = train_cohort(cohort, TrainConfig(**TINY), tmp_path / "all", plots=False)
    sets = train_cohort(cohort, TrainConfig(**dict(TINY, read="sets")), tmp_path / "sets", plots=False)
    assert load_checkpoint(whole.run_dir / "model.pt")["read_size"] is None
    assert load_checkpoint(sets.run_dir / "model.pt")["read_size"] == 32
    fitted = whole.metrics["decoder_fit"]
    assert fitted["val_after"] <= fitted["val_before"] and sets.metrics["decoder_fit"] is None
    assert fitted["kept"] == (fitted["best_epoch"] > 0 and fitted["gain"] > 2 * fitted["gain_se"])

    a, b = Predictor.load(whole.run_dir / "model.pt"), Predictor.load(sets.run_dir / "model.pt")
    assert a.set_size is None and b.set_size == 32
    prep = a.prepare_cohort(cohort, np.arange(8))
    once, _ = a.predict(prep, seed=0)
    again, _ = a.predict(prep, seed=3, draws=1)
    np.testing.assert_array_equal(once.set_model["hematocrit"], again.set_model["hematocrit"])
    # the epochs are the same run: only the decoder differs
    enc_a = {k: v for k, v in a.model.state_dict().items() if not k.startswith("decoder.")}
    enc_b = {k: v for k, v in b.model.state_dict().items() if not k.startswith("decoder.")}
    for k in enc_a:
        torch.testing.assert_close(enc_a[k], enc_b[k])
    assert any(not torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items()
               if k.startswith("decoder.")) == fitted["kept"]


def test_a_checkpoint_without_read_size_reads_as_it_trained(cohort, tmp_path):
    from flowrbc.checkpoint import load_checkpoint, save_checkpoint
    from flowrbc.predictor import Predictor

    run = train_cohort(cohort, TrainConfig(**TINY), tmp_path / "run", plots=False)
    payload = load_checkpoint(run.run_dir / "model.pt")
    del payload["read_size"]
    save_checkpoint(tmp_path / "older.pt", payload)
    assert Predictor.load(tmp_path / "older.pt").set_size == 32


def test_bad_read_is_refused():
    from flowrbc.errors import FlowrbcError

    with pytest.raises(FlowrbcError, match="--read every"):
        TrainConfig(read="every").check()


def test_sample_losses_average_to_the_loss(data):
    """Per-sample shares, missing targets included, average to the training loss."""
    idx = torch.arange(0, 40)
    g = torch.Generator().manual_seed(0)
    out = {name: torch.randn(len(idx), 1, generator=g) for name in data.specs}
    known = float(data.mask["hematocrit"][3])
    data.mask["hematocrit"][3] = 0.0  # one sample without a hematocrit
    try:
        each = data.sample_losses(out, idx)
        assert each.shape == (40,)
        torch.testing.assert_close(each.mean(), data.loss(out, idx)[0])
    finally:
        data.mask["hematocrit"][3] = known
