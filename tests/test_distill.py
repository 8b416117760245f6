"""Knowledge distillation on a small real task (scikit-learn digits, 16x16)."""

from __future__ import annotations

import pytest
import torch
from test_prune import TinyNet

from autocompress.compress.distill import accuracy, compute_logits, distill
from autocompress.compress.prune import prune_model
from autocompress.errors import StageError
from autocompress.records import DistillSpec


@pytest.fixture(scope="module")
def teacher(digits):
    """A TinyNet trained briefly on digits (plain CE: alpha=0 with dummy teacher logits)."""
    torch.manual_seed(0)
    model = TinyNet(width=8)
    dummy = torch.zeros(len(digits.x_train), digits.num_classes)
    res = distill(model, digits.x_train, digits.y_train, dummy, digits.x_val, digits.y_val,
                  DistillSpec(epochs=4, lr=0.05, alpha=0.0, batch_size=64))
    assert res.history[-1] > 0.8, res.history
    return model, compute_logits(model, digits.x_train)


def test_compute_logits_matches_eval_forward(teacher, digits):
    model, logits = teacher
    assert logits.shape == (len(digits.x_train), digits.num_classes)
    with torch.no_grad():
        assert torch.allclose(logits[:5], model.eval()(digits.x_train[:5]), atol=1e-5)
    assert torch.allclose(compute_logits(model, digits.x_train[:70], batch_size=32), logits[:70], atol=1e-5)


def test_kd_recovers_a_pruned_model(teacher, digits):
    model, logits = teacher
    pruned = prune_model(model, {"_default": 0.5}, digits.x_train[:2]).model
    before = accuracy(pruned, digits.x_val, digits.y_val)
    seen = []
    res = distill(pruned, digits.x_train, digits.y_train, logits, digits.x_val, digits.y_val,
                  DistillSpec(epochs=2, lr=0.05, batch_size=64), on_epoch=lambda i, a: seen.append((i, a)))
    assert res.epochs_run == 2 and not res.stopped_early and len(res.history) == 2
    assert seen == list(enumerate(res.history))
    assert res.history[-1] >= before + 0.3, (before, res.history)
    assert res.history[-1] == pytest.approx(accuracy(pruned, digits.x_val, digits.y_val))
    assert not pruned.training and res.final_loss > 0 and res.seconds > 0


def test_on_epoch_false_stops_early(teacher, digits):
    model, logits = teacher
    student = TinyNet(width=4)
    res = distill(student, digits.x_train, digits.y_train, logits, digits.x_val, digits.y_val,
                  DistillSpec(epochs=3, lr=0.05), on_epoch=lambda i, a: False)
    assert res.epochs_run == 1 and res.stopped_early and len(res.history) == 1


def test_nan_loss_is_a_stage_error(digits):
    n = 128
    bad = torch.full((n, digits.num_classes), float("nan"))
    with pytest.raises(StageError, match="NaN at epoch 1; lower the learning rate") as e:
        distill(TinyNet(width=4), digits.x_train[:n], digits.y_train[:n], bad, digits.x_val, digits.y_val,
                DistillSpec(epochs=1))
    assert e.value.stage == "distill"


def test_mismatched_teacher_logits(digits):
    with pytest.raises(StageError, match="teacher logits"):
        distill(TinyNet(width=4), digits.x_train[:10], digits.y_train[:10], torch.zeros(9, 10),
                digits.x_val, digits.y_val, DistillSpec(epochs=1))
