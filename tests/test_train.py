"""The training loop's choice of the epoch it hands back."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compress import train
from compress.train import TrainConfig, fit, improves, seed_everything
from compress.zoo import ModelSpec, build_model


def test_improves_prefers_accuracy_then_lower_loss():
    assert improves(0.96, 0.9, 0.95, 0.1)  # higher accuracy wins whatever the loss
    assert not improves(0.94, 0.01, 0.95, 0.1)
    assert improves(0.95, 0.09, 0.95, 0.1)  # same accuracy: lower loss wins
    assert not improves(0.95, 0.1, 0.95, 0.1)  # a full tie keeps the earlier epoch
    assert not improves(0.95, float("nan"), 0.95, 0.1)


def test_fit_restores_the_lowest_loss_epoch_among_equally_accurate_ones(digits, monkeypatch):
    # (accuracy, loss) per validation: before training, then after epochs 1-4; epochs 2-4 tie on accuracy
    scripted = iter([(0.5, 2.0), (0.9, 0.5), (0.95, 0.4), (0.95, 0.3), (0.95, 0.35)])
    monkeypatch.setattr(train, "_validate", lambda model, split, ctx: next(scripted))
    seed_everything(0)
    model = build_model(ModelSpec("mlp", 0.5), digits.input_shape, digits.num_classes)

    def loss_fn(x, y):
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    result = fit(model, digits, TrainConfig(epochs=4, optimizer="adamw", lr=0.003), loss_fn, "mlp")
    assert result.best_epoch == 3 and result.best_val_accuracy == 0.95
    assert [h["val_loss"] for h in result.history] == [0.5, 0.4, 0.3, 0.35]


def test_linear_schedule_warms_up_then_decays_to_zero():
    from compress.train import _scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = _scheduler(optimizer, TrainConfig(epochs=2, lr=1.0, optimizer="adamw", schedule="linear"), steps_per_epoch=50)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)  # 10% warm-up
    assert rates[10] > rates[50] > rates[99] > 0 and rates[99] < 0.02
