"""The teacher: loaded from a checkpoint, or trained from scratch once and cached by content hash."""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TeacherSpec
from ..data import DataBundle
from ..data.bundle import Split
from ..devices import autocast, grad_scaler, infer_batch
from ..records import content_hash
from .loader import ModelInfo, architecture_signature, load_checkpoint, resolve_model


@dataclass(frozen=True)
class Teacher:
    model: nn.Module  # eval mode, CPU
    info: ModelInfo
    val_accuracy: float  # 0..1, measured in torch on data.val
    source: str  # "checkpoint:<path>" | "trained" | "cache:<path>" | "instance" (an nn.Module given as is)
    epochs: int
    train_seconds: float


def cache_dir_default() -> Path:
    env = os.environ.get("AUTOCOMPRESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autocompress"


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@torch.no_grad()
def _val_metrics(model: nn.Module, x, y: torch.Tensor | None = None, batch_size: int | None = None, *,
                 device: str = "cpu") -> tuple[float, float]:
    """(top-1 accuracy 0..1, mean cross-entropy) in eval mode, over a :class:`Split` or ``x, y`` tensors."""
    split = x if isinstance(x, Split) else Split.from_tensors(x, y)
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval().to(device)
    correct, loss = 0, 0.0
    try:
        with autocast(device):
            for xb, yb in split.batches(batch_size or infer_batch(device), device=device):
                out = model(xb).float()
                correct += int((out.argmax(1) == yb).sum())
                loss += float(F.cross_entropy(out, yb, reduction="sum"))
    finally:
        model.to(home)
    return correct / max(1, len(split)), loss / max(1, len(split))


def evaluate(model: nn.Module, x, y: torch.Tensor | None = None, batch_size: int | None = None, *, device: str = "cpu") -> float:
    """Top-1 accuracy (0..1) in eval mode, over a :class:`Split` (e.g. ``data.val``) or ``x, y`` tensors."""
    return _val_metrics(model, x, y, batch_size, device=device)[0]


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (edge padding): light, label-safe augmentation."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dev = x.device
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g).to(dev)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev)[None])[:, None, :, None]  # n,1,h,1
    cols = (dx[:, None] + torch.arange(w, device=dev)[None])[:, None, None, :]  # n,1,1,w
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return padded[batch, chans, rows, cols]


RECIPE_VERSION = 2  # bump when train_teacher changes, so cached teachers are retrained


def teacher_key(spec: str, model: nn.Module, data: DataBundle, train: TeacherSpec, seed: int) -> str:
    return content_hash(
        {
            "recipe": RECIPE_VERSION,
            "spec": spec,
            "arch": architecture_signature(model),
            "data": data.fingerprint,
            "train": train.model_dump(),
            "seed": seed,
            "torch": torch.__version__,
        }
    )


def train_teacher(model: nn.Module, data: DataBundle, train: TeacherSpec, seed: int, name: str,
                  log: Callable[[str], None] = print, *, device: str = "cpu") -> tuple[float, int, int]:
    """Train in place (SGD + nesterov, warm-up then cosine, label smoothing 0.05, random shifts of
    up to H/16 px); stops at ``target_accuracy`` or after ``patience`` epochs without improvement, and
    keeps the best epoch. On ``device="cuda"`` in mixed precision; the model ends on the CPU.

    Returns (best val accuracy, epochs run, best epoch).
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    n = data.size("train")
    bs = min(train.batch_size, n)
    steps = n // bs + (1 if n % bs >= 2 else 0)  # drop a lone trailing sample: it breaks BatchNorm
    used = n if n % bs >= 2 else (n // bs) * bs  # the samples one epoch visits
    model.to(device)
    scaler = grad_scaler(device)
    total = steps * train.max_epochs
    warm = min(steps, total // 10 + 1)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=train.lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
    )
    shift = max(1, data.input_shape[1] // 16)
    best_acc, best_loss, best_epoch, best_state, epoch = -1.0, float("inf"), 0, None, 0
    for epoch in range(1, train.max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=g).numpy()[:used]
        loss_sum, seen = 0.0, 0
        for xb, yb in data.batches("train", bs, perm, device=device):
            xb = random_shift(xb, shift, g)
            with autocast(device):
                out = model(xb)
            loss = F.cross_entropy(out.float(), yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += float(loss.detach()) * len(yb)
            seen += len(yb)
        acc, val_loss = _val_metrics(model, data.val, device=device)
        log(f"teacher {name}: epoch {epoch}/{train.max_epochs} loss {loss_sum / max(1, seen):.4f} "
            f"val_loss {val_loss:.4f} val_acc {acc:.4f} ({time.perf_counter() - t0:.1f}s)")
        # improvement: higher accuracy, or the same accuracy with a lower loss (small val sets plateau)
        if acc > best_acc or (acc == best_acc and val_loss < best_loss):
            best_acc, best_loss, best_epoch = acc, val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        if acc >= train.target_accuracy or epoch - best_epoch >= train.patience:
            break
    model.to("cpu")
    if best_state is not None:
        model.load_state_dict(best_state)
    return best_acc, epoch, best_epoch


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _refuse_other_preprocessing(model: nn.Module, data: DataBundle, acc: float, what: str, device: str) -> None:
    """Trained weights fed other input statistics than they were trained with lose accuracy silently (a user CNN
    trained on raw 0..1 pixels scored 77% fed those and 33% under the default per-dataset normalisation; the run
    then compressed the 33% teacher). The weights are scored once more under each other preset (none; ImageNet's
    for 3 channels) and a preset 10 pp better stops the run with one line naming it. Statistics the user gave
    (--mean/--std) are taken as given."""
    from ..errors import ConfigError
    from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD

    if data.normalize == "explicit":
        return
    c = data.input_shape[0]
    presets = {"none": ((0.0,) * c, (1.0,) * c), **({"imagenet": (IMAGENET_MEAN, IMAGENET_STD)} if c == 3 else {})}
    scores = {mode: evaluate(model, data.renormalised(mode, m, s).val, device=device)
              for mode, (m, s) in presets.items() if mode != data.normalize}
    mode, best = max(scores.items(), key=lambda kv: kv[1], default=(None, 0.0))
    if mode is not None and best >= acc + 0.10:
        raise ConfigError(f"{what} scores {acc:.1%} on the validation split with --normalize {data.normalize} but "
                          f"{best:.1%} with --normalize {mode}: it was trained on other input statistics; rerun with "
                          f"--normalize {mode} (or give the --mean/--std it was trained with)")


def get_teacher(
    spec: str,
    data: DataBundle,
    *,
    checkpoint: str | None = None,
    trust_checkpoint: bool = False,
    train: TeacherSpec = TeacherSpec(),
    seed: int = 0,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> Teacher:
    """Load the teacher from ``checkpoint``, else from the cache, else train it once (on ``device``: 'cpu' or
    'cuda', see :func:`autocompress.devices.resolve_train_device`) and cache it. The model is returned on the CPU."""
    torch.manual_seed(seed)  # zoo/user models are initialised from this seed
    model, info = resolve_model(spec, data.num_classes, data.input_shape)
    if checkpoint:
        load_checkpoint(model, checkpoint, trust=trust_checkpoint)
        model.eval()
        acc = evaluate(model, data.val, device=device)
        _refuse_other_preprocessing(model, data, acc, f"checkpoint {checkpoint}", device)
        log(f"teacher {info.name}: loaded checkpoint {checkpoint}; val accuracy {acc:.4f}")
        return Teacher(model, info, acc, f"checkpoint:{checkpoint}", 0, 0.0)
    if info.source == "instance":  # an in-memory module from the Python API: its weights, as given
        model.eval()
        acc = evaluate(model, data.val, device=device)
        _refuse_other_preprocessing(model, data, acc, "the in-memory model", device)
        log(f"teacher {info.name}: in-memory model used as given; val accuracy {acc:.4f}")
        return Teacher(model, info, acc, "instance", 0, 0.0)

    path = Path(cache_dir or cache_dir_default()) / "teachers" / f"{teacher_key(spec, model, data, train, seed)}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
        except Exception as e:  # noqa: BLE001 - a broken cache entry is retrained, not fatal
            log(f"teacher {info.name}: cache entry {path} unreadable ({type(e).__name__}); retraining")
        else:
            model.eval()
            acc = evaluate(model, data.val, device=device)
            log(f"teacher {info.name}: from cache {path}; val accuracy {acc:.4f}")
            return Teacher(model, info, acc, f"cache:{path}", int(blob.get("epochs", 0)),
                           float(blob.get("train_seconds", 0.0)))

    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_count())
    t0 = time.perf_counter()
    try:
        acc, epochs, best = train_teacher(model, data, train, seed, info.name, log, device=device)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    model.eval()
    _atomic_save({"state_dict": model.state_dict(), "val_accuracy": acc, "epochs": epochs,
                  "train_seconds": seconds, "spec": spec, "data": data.fingerprint}, path)
    log(f"teacher {info.name}: val accuracy {acc:.4f} (best epoch {best} of {epochs}) in {seconds:.1f}s; "
        f"cached at {path}")
    return Teacher(model, info, acc, "trained", epochs, seconds)
