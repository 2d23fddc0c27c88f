"""The training loop (flowrbc.fit): learns, selects by validation, stops on NaN, resumes exactly."""

import math

import pytest
import torch

from flowrbc.errors import FlowrbcError
from flowrbc.fit import FitConfig, TrainingDiverged, fit, resolve_device


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.3
    return x, y


def _batches(x, y):
    def batches(epoch, generator):
        perm = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            yield x[idx], y[idx]

    return batches


def _mse(model, batch):
    return ((model(batch[0]).squeeze(-1) - batch[1]) ** 2).mean()


def test_fit_reduces_loss_and_keeps_best():
    x, y = _problem()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    seen_grad = []

    def evaluate(m):
        seen_grad.append(torch.is_grad_enabled())
        return {"mse": float(_mse(m, (x, y)))}

    result = fit(model, _batches(x, y), _mse, config=FitConfig(epochs=10, lr=0.1), evaluate=evaluate)
    scores = [h["mse"] for h in result.history]
    assert scores[-1] < 0.2 * scores[0]
    assert result.best_score == min(scores)
    assert result.history[result.best_epoch - 1]["mse"] == result.best_score
    assert not any(seen_grad)  # evaluation runs under no_grad
    # learning rate decayed ×0.1 at 20/60/80 % of the epochs
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(1e-4)


def test_nan_loss_stops_with_last_good_weights():
    x, y = _problem()
    model = torch.nn.Linear(4, 1)

    def loss(m, batch):
        value = _mse(m, batch)
        return value * math.nan if loss.calls >= 20 else value

    loss.calls = 0

    def counted(m, batch):
        loss.calls += 1
        return loss(m, batch)

    with pytest.raises(TrainingDiverged, match="loss is nan at epoch 3") as info:
        fit(model, _batches(x, y), counted, config=FitConfig(epochs=5))
    assert isinstance(info.value, FlowrbcError)
    result = info.value.result
    assert result.best_epoch == 2
    for name, value in model.state_dict().items():
        assert torch.equal(value, result.best_state[name])
        assert torch.isfinite(value).all()


def test_resume_equals_uninterrupted():
    x, y = _problem()
    config = FitConfig(epochs=5, lr=1e-2)

    def evaluate(m):
        return {"mse": float(_mse(m, (x, y)))}

    torch.manual_seed(1)
    full = fit(torch.nn.Linear(4, 1), _batches(x, y), _mse, config=config, evaluate=evaluate)

    saved = {}

    class Stop(Exception):
        pass

    def stop_after_two(state):
        saved.update(state.resume_state())
        if state.epoch == 2:
            raise Stop

    torch.manual_seed(1)
    with pytest.raises(Stop):
        fit(torch.nn.Linear(4, 1), _batches(x, y), _mse, config=config, evaluate=evaluate,
            on_epoch_end=stop_after_two)
    torch.manual_seed(99)  # a fresh process would initialise differently: resume must not care
    resumed = fit(torch.nn.Linear(4, 1), _batches(x, y), _mse, config=config, evaluate=evaluate,
                  resume=saved)
    assert [h["mse"] for h in resumed.history] == [h["mse"] for h in full.history]
    for name, value in full.best_state.items():
        assert torch.equal(value, resumed.best_state[name])


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(FlowrbcError, match="--device 'nonsense'"):
        resolve_device("nonsense")


def test_autocast_rule_cpu_bf16_only_for_wide_models_on_bf16_hardware(monkeypatch):
    import flowrbc.fit as fitmod
    import flowrbc.precision as precision

    cpu = torch.device("cpu")
    for units in (["amx_bf16"], []):
        hardware = bool(units)
        monkeypatch.setattr(precision, "cpu_capability", lambda: {"model": "test CPU", "bf16_units": units})
        with fitmod.autocast_for(cpu, "auto", precision.CPU_BF16_MIN_WIDTH):
            assert torch.is_autocast_enabled("cpu") == hardware
        with fitmod.autocast_for(cpu, "auto", precision.CPU_BF16_MIN_WIDTH_INFER, train=False):
            assert torch.is_autocast_enabled("cpu") == hardware
        with fitmod.autocast_for(cpu, "auto", 64), fitmod.autocast_for(cpu, "fp32", 256), fitmod.autocast_for(cpu):
            assert not torch.is_autocast_enabled("cpu")
        with fitmod.autocast_for(cpu, "auto", precision.CPU_BF16_MIN_WIDTH_INFER // 2, train=False):
            assert not torch.is_autocast_enabled("cpu")
        with fitmod.autocast_for(cpu, "bf16", 16):  # asked: obeyed, units or not
            assert torch.is_autocast_enabled("cpu")
