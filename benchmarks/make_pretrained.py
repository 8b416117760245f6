"""Train a CIFAR-style ResNet on an image folder and save it the way published checkpoints were saved.

Stands in for a model someone else trained (nothing can be downloaded here): the checkpoint is
``{'epoch', 'state_dict', 'best_prec1'}`` with the ``module.`` prefix of ``nn.DataParallel``, without the
BatchNorm ``num_batches_tracked`` buffers (PyTorch < 0.4.1 had none) and in the old non-zip format,
like the widely used CIFAR ResNet checkpoints. Inputs are normalised with the training split's
per-channel mean and std (of images scaled to 0..1), which is also autocompress's default.

    python benchmarks/make_pretrained.py DATA_DIR --arch resnet20 --epochs 12 --out resnet20.th
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent


def read_split(root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for i, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            with Image.open(f) as im:
                xs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            ys.append(i)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(ys), classes


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="folder with train/<class>/ and test/<class>/")
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("cifar_resnet", HERE / "models" / "cifar_resnet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = getattr(mod, a.arch)()
    t = time.perf_counter()
    x_tr, y_tr, classes = read_split(a.data / "train")
    x_te, y_te, _ = read_split(a.data / "test")
    print(f"read {len(x_tr)} train / {len(x_te)} test images, classes {classes} in {time.perf_counter() - t:.1f} s")
    xf = x_tr.float() / 255
    mean, std = xf.mean(dim=(0, 2, 3)), xf.std(dim=(0, 2, 3))
    del xf

    def norm(xb):
        return (xb.float() / 255 - mean[None, :, None, None]) / std[None, :, None, None]

    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4, nesterov=True)
    steps = len(x_tr) // a.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=steps * a.epochs, pct_start=0.15)
    g = torch.Generator().manual_seed(0)
    best = 0.0
    for epoch in range(a.epochs):
        t = time.perf_counter()
        model.train()
        perm = torch.randperm(len(x_tr), generator=g)
        for i in range(steps):
            idx = perm[i * a.batch_size:(i + 1) * a.batch_size]
            xb = F.pad(norm(x_tr[idx]), (4, 4, 4, 4))  # random crop with 4 px padding
            dx, dy = (int(v) for v in torch.randint(0, 9, (2,), generator=g))
            xb = xb[..., dy:dy + 32, dx:dx + 32]
            loss = F.cross_entropy(model(xb), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if (i + 1) % 100 == 0:
                print(f"  step {i + 1}/{steps} loss {float(loss):.3f} ({time.perf_counter() - t:.0f} s)", flush=True)
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(norm(x_te[i:i + 500])).argmax(1) == y_te[i:i + 500]).sum())
                          for i in range(0, len(x_te), 500))
        prec1 = 100.0 * correct / len(x_te)
        print(f"epoch {epoch + 1}/{a.epochs}: loss {float(loss):.3f} test prec@1 {prec1:.2f} ({time.perf_counter() - t:.0f} s)")
        if prec1 >= best:
            best = prec1
            sd = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
            torch.save({"epoch": epoch + 1, "state_dict": sd, "best_prec1": best}, a.out,
                       _use_new_zipfile_serialization=False)
    print(f"saved {a.out} (best prec@1 {best:.2f}); normalisation mean {mean.tolist()} std {std.tolist()}")


if __name__ == "__main__":
    main()
