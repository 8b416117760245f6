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
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.bundle import Split
from ..devices import autocast, grad_scaler, infer_batch
from ..errors import ConfigError, StageError
from ..records import DistillSpec

LOGITS_FP16_MIN = 1 << 22  # logits of at least this many values (N x classes) are stored as float16 on disk


@dataclass(frozen=True)
class DistillResult:
    history: tuple[float, ...]  # validation accuracy (0..1) after each epoch
    epochs_run: int
    stopped_early: bool
    seconds: float
    final_loss: float  # mean training loss of the last epoch (nan if no epoch ran)
    samples_per_epoch: int = 0  # training samples seen per epoch (the fidelity knob, or the whole split)
    device: str = "cpu"


def as_split(x, y=None) -> Split:
    """A :class:`Split` as is, or an in-memory one from already-normalised tensors ``x``, ``y``."""
    if isinstance(x, Split):
        return x
    if y is None:
        y = torch.zeros(len(x), dtype=torch.long)
    return Split.from_tensors(x, y)


def compute_logits(model: nn.Module, x, batch_size: int | None = None, *, device: str = "cpu",
                   out: np.ndarray | None = None, progress: str | None = None) -> torch.Tensor | np.ndarray:
    """The model's logits for ``x`` (a tensor or a :class:`Split`) in eval mode, no grad, float32 on the CPU;
    written into ``out`` (e.g. a float16 memmap) and returned as it when given. The model is run on
    ``device`` and left where it was, in batches of ``batch_size`` (default: :func:`..devices.infer_batch`)."""
    split = as_split(x)
    batch_size = batch_size or infer_batch(device)
    was_training = model.training
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    model.to(device)
    outs, pos = [], 0
    try:
        with torch.no_grad(), autocast(device):
            for xb, _ in split.batches(batch_size, device=device, progress=progress):
                o = model(xb).float().cpu()
                if out is not None:
                    out[pos:pos + len(o)] = o.numpy().astype(out.dtype, copy=False)
                    pos += len(o)
                else:
                    outs.append(o)
    finally:
        model.to(home)
        if was_training:
            model.train()
    if out is not None:
        return out
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, x, y: torch.Tensor | None = None, batch_size: int | None = None, *,
             device: str = "cpu") -> float:
    """Top-1 accuracy (0..1) in eval mode on ``x, y`` tensors or a :class:`Split`."""
    split = as_split(x, y)
    if len(split) == 0:
        return float("nan")
    logits = compute_logits(model, split, batch_size, device=device)
    return float((logits.argmax(1) == split.labels.cpu()).float().mean())


EPOCH_VAL_MAX = 2000  # validation samples scored after each KD epoch (the final score uses them all)


def epoch_val_indices(n: int) -> np.ndarray | None:
    """The validation samples scored after each KD epoch: all of a small split, else a fixed seeded subset of
    EPOCH_VAL_MAX (the same for every candidate, so early stopping compares like with like). On 10,000
    validation images that pass was as long as a 5,000-sample KD epoch; the subset's accuracy has a standard
    error of ~0.5 pp at 95%, well inside the early stopper's 2 pp margin. Final accuracy is measured on the
    whole split, on the exported model."""
    if n <= EPOCH_VAL_MAX:
        return None
    return np.sort(np.random.default_rng(0).permutation(n)[:EPOCH_VAL_MAX])


def epoch_accuracy(model: nn.Module, val, *, device: str = "cpu", batch_size: int | None = None) -> float:
    """Top-1 accuracy on :func:`epoch_val_indices` of ``val`` (eval mode, no grad)."""
    idx = epoch_val_indices(len(val))
    if idx is None:
        return accuracy(model, val, device=device)
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in val.batches(batch_size or infer_batch(device), idx, device=device):
            correct += int((model(xb).argmax(1) == yb).sum())
    model.train(was_training)
    return correct / len(idx)


def logits_on_disk(model: nn.Module, split: Split, folder: Path, key: str, *, device: str = "cpu",
                   batch_size: int | None = None, log=None) -> tuple[np.ndarray, bool]:
    """Teacher logits over ``split`` kept on disk: ``folder/<key>.npy`` (float16 for large sets, else
    float32), memory-mapped read-only. Computed once; a later call with the same key (a resumed run)
    reads the file. Returns (logits, reused)."""
    folder = Path(folder)
    path = folder / f"{key}.npy"
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.ndim == 2 and len(arr) == len(split):
                return arr, True
        except (OSError, ValueError):
            pass  # a torn file: recomputed below
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        k = int(model.eval()(split.take([0])).shape[1]) if len(split) else 0
    dtype = np.float16 if len(split) * k >= LOGITS_FP16_MIN else np.float32
    tmp = folder / f".{key}.{os.getpid()}.npy"
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(split), k))
        compute_logits(model, split, batch_size, device=device, out=mm,
                       progress="teacher logits" if len(split) >= 2000 else None)
        if not np.isfinite(mm).all():
            raise StageError("teacher logits", "the teacher produced non-finite logits (NaN/inf); check the model and data")
        mm.flush()
        del mm
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r"), False


def _rows(logits, idx: np.ndarray, device) -> torch.Tensor:
    """Teacher logits of the given rows as float32 on ``device`` (a tensor or a memmap)."""
    if isinstance(logits, torch.Tensor):
        return logits[torch.from_numpy(idx)].float().to(device)
    return torch.from_numpy(np.asarray(logits[idx], dtype=np.float32)).to(device)


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


def epoch_samples(n: int, spec: DistillSpec) -> int:
    """Training samples per epoch: ``spec.samples_per_epoch`` capped at the split, else all ``n``."""
    m = spec.samples_per_epoch
    return n if m is None or m <= 0 else min(n, int(m))


def distill(
    student: nn.Module,
    train,
    teacher_logits,
    val,
    spec: DistillSpec,
    *,
    seed: int = 0,
    on_epoch: Callable[[int, float], bool | None] | None = None,
    augment_shift: int = 0,
    device: str = "cpu",
) -> DistillResult:
    """Train ``student`` in place for ``spec.epochs`` epochs; returns validation accuracy per epoch.

    ``train`` / ``val``: :class:`Split` (e.g. ``data.train``) or ``(x, y)`` tensors of normalised inputs;
    ``teacher_logits``: one row per training sample (a tensor or a memmap, see :func:`logits_on_disk`).
    Each epoch draws a seeded permutation of the train split and trains on its first
    ``spec.samples_per_epoch`` samples (all when unset). After each epoch ``on_epoch(epoch_index,
    val_acc)`` is called; returning False stops training (``stopped_early``). A non-finite loss raises
    StageError("distill", ...). On ``device="cuda"`` training runs in mixed precision; the student is
    left on the CPU in eval mode. ``augment_shift`` > 0 translates each batch randomly by up to that
    many pixels.
    """
    t0 = time.perf_counter()
    train = as_split(*train) if isinstance(train, tuple) else as_split(train)
    val = as_split(*val) if isinstance(val, tuple) else as_split(val)
    if len(train) != len(teacher_logits):
        raise StageError(
            "distill",
            f"{len(train)} training samples and {len(teacher_logits)} teacher logits; "
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
        student.to(device)
        opt = _optimizer(student, spec)
        scaler = grad_scaler(device)
        n = len(train)
        per_epoch = epoch_samples(n, spec)
        bs = max(1, min(spec.batch_size, per_epoch))
        steps_per_epoch = max(1, per_epoch // bs)  # drop the last partial batch (BatchNorm needs > 1 sample)
        total = steps_per_epoch * spec.epochs
        warmup = max(1, min(steps_per_epoch // 2, int(0.03 * total)))
        history: list[float] = []
        stopped, final_loss, step = False, float("nan"), 0
        for epoch in range(spec.epochs):
            student.train()
            order = torch.randperm(n, generator=gen).numpy()[: steps_per_epoch * bs]
            running, count = 0.0, 0
            for b, (xb, yb) in enumerate(train.batches(bs, order, device=device)):
                idx = order[b * bs:(b + 1) * bs]
                xb = _shift(xb, augment_shift, gen)
                for g in opt.param_groups:
                    g["lr"] = _lr_at(step, total, warmup, spec.lr)
                with autocast(device):
                    out = student(xb)
                loss = kd_loss(out.float(), _rows(teacher_logits, idx, device), yb, spec.temperature, spec.alpha)
                if not torch.isfinite(loss):
                    raise StageError("distill", f"loss became NaN at epoch {epoch + 1}; lower the learning rate")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                running += float(loss.detach()) * len(idx)
                count += len(idx)
                step += 1
            final_loss = running / max(count, 1)
            acc = epoch_accuracy(student, val, device=device)
            history.append(acc)
            if on_epoch is not None and on_epoch(epoch, acc) is False:
                stopped = True
                break
    finally:
        torch.set_num_threads(threads)
        student.to("cpu")
        student.eval()
    return DistillResult(
        history=tuple(history),
        epochs_run=len(history),
        stopped_early=stopped,
        seconds=time.perf_counter() - t0,
        final_loss=final_loss,
        samples_per_epoch=steps_per_epoch * bs if spec.epochs else 0,
        device=str(device),
    )
