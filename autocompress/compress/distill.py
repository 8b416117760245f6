"""Knowledge distillation (Hinton et al.): train a student on the teacher's softened logits.

``loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``

The teacher's logits are computed once by the caller (:func:`compute_logits`) and passed in; a
candidate never re-runs the teacher. The learning rate warms up linearly over the first ~3% of steps
(at least one, at most half an epoch) and then follows a cosine to zero: a one-cycle schedule collapsed
one-epoch runs in the field notes (pitfall 5), a plain cosine did not.

BatchNorm layers with a momentum below 0.1 (torchvision's MobileNetV3 uses 0.01) are set to 0.1 so the
running statistics of a pruned student catch up within a few epochs (field notes, pitfall 1).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, StageError
from ..records import DistillSpec

EVAL_BATCH = 256


@dataclass(frozen=True)
class DistillResult:
    history: tuple[float, ...]  # validation accuracy (0..1) after each epoch
    epochs_run: int
    stopped_early: bool
    seconds: float
    final_loss: float  # mean training loss of the last epoch (nan if no epoch ran)


def compute_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's logits for ``x`` (eval mode, no grad), in float32 on the CPU."""
    was_training = model.training
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(model(x[i:i + batch_size]).float().cpu())
    if was_training:
        model.train()
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy (0..1) in eval mode."""
    if len(x) == 0:
        return float("nan")
    logits = compute_logits(model, x, batch_size)
    return float((logits.argmax(1) == y.cpu()).float().mean())


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation of the whole batch by up to ``max_shift`` pixels (zero padding)."""
    if max_shift <= 0 or x.dim() != 4:
        return x
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    h, w = x.shape[-2:]
    return padded[..., p + dy:p + dy + h, p + dx:p + dx + w]


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimizer(model: nn.Module, spec: DistillSpec) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr)
    raise ConfigError(f"distill optimizer '{spec.optimizer}'; choose sgd or adam")


def kd_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    T = temperature
    soft = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean") * (T * T)
    hard = F.cross_entropy(s, y)
    return alpha * soft + (1.0 - alpha) * hard


def distill(
    student: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    teacher_logits: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    spec: DistillSpec,
    *,
    seed: int = 0,
    on_epoch: Callable[[int, float], bool | None] | None = None,
    augment_shift: int = 0,
) -> DistillResult:
    """Train ``student`` in place for ``spec.epochs`` epochs; returns validation accuracy per epoch.

    After each epoch ``on_epoch(epoch_index, val_acc)`` is called; returning False stops training
    (``stopped_early``). A non-finite loss raises StageError("distill", ...). The student is left in
    eval mode. ``augment_shift`` > 0 translates each batch randomly by up to that many pixels.
    """
    t0 = time.perf_counter()
    if len(x_train) != len(teacher_logits) or len(x_train) != len(y_train):
        raise StageError(
            "distill",
            f"{len(x_train)} training inputs, {len(y_train)} labels and {len(teacher_logits)} teacher logits; "
            "they must match (compute the teacher logits on the same training split)",
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or threads)
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        for m in student.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None and m.momentum < 0.1:
                m.momentum = 0.1
        opt = _optimizer(student, spec)
        n, bs = len(x_train), max(1, min(spec.batch_size, len(x_train)))
        steps_per_epoch = max(1, n // bs)  # drop the last partial batch (BatchNorm needs > 1 sample)
        total = steps_per_epoch * spec.epochs
        warmup = max(1, min(steps_per_epoch // 2, int(0.03 * total)))
        y_train = y_train.long()
        teacher_logits = teacher_logits.float()
        history: list[float] = []
        stopped, final_loss, step = False, float("nan"), 0
        for epoch in range(spec.epochs):
            student.train()
            perm = torch.randperm(n, generator=gen)
            running, count = 0.0, 0
            for b in range(steps_per_epoch):
                idx = perm[b * bs:(b + 1) * bs]
                xb = _shift(x_train[idx], augment_shift, gen)
                for g in opt.param_groups:
                    g["lr"] = _lr_at(step, total, warmup, spec.lr)
                loss = kd_loss(student(xb), teacher_logits[idx], y_train[idx], spec.temperature, spec.alpha)
                if not torch.isfinite(loss):
                    raise StageError("distill", f"loss became NaN at epoch {epoch + 1}; lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += float(loss.detach()) * len(idx)
                count += len(idx)
                step += 1
            final_loss = running / max(count, 1)
            acc = accuracy(student, x_val, y_val)
            history.append(acc)
            if on_epoch is not None and on_epoch(epoch, acc) is False:
                stopped = True
                break
    finally:
        torch.set_num_threads(threads)
        student.eval()
    return DistillResult(
        history=tuple(history),
        epochs_run=len(history),
        stopped_early=stopped,
        seconds=time.perf_counter() - t0,
        final_loss=final_loss,
    )
