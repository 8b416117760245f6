"""Prune a digits teacher ~50% (l1) and recover it with knowledge distillation; writes benchmarks/results/distill.csv.

    python benchmarks/bench_distill.py [--model resnet18] [--sparsity 0.5] [--epochs 3] [--lr 0.01]

The teacher comes from autocompress.models.teacher.get_teacher (trained once, then cached). Goal: within
1 pp of the teacher in <= 3 KD epochs. Digits saturates: a smoke test of the recipe, not a benchmark of
accuracy trade-offs. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch

from autocompress.compress.distill import accuracy, compute_logits, distill
from autocompress.compress.prune import prune_model
from autocompress.data import load_data
from autocompress.models.teacher import get_teacher
from autocompress.records import DistillSpec

OUT = Path(__file__).resolve().parent / "results" / "distill.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = load_data("digits", image_size=32)
    teacher = get_teacher(args.model, data, seed=args.seed)
    t_acc = teacher.val_accuracy
    t0 = time.perf_counter()
    logits = compute_logits(teacher.model, data.x_train)
    logit_s = time.perf_counter() - t0
    pr = prune_model(teacher.model, {"_default": args.sparsity}, data.x_train[:1], criterion=args.criterion,
                     calib=(data.x_calib[:64], data.y_train[:64]) if args.criterion == "taylor" else None)
    p_acc = accuracy(pr.model, data.x_val, data.y_val)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"teacher {args.model}: val acc {t_acc:.4f}; teacher logits {logit_s:.1f}s")
    print(f"pruned {args.sparsity:.0%} ({args.criterion}) in {pr.seconds:.2f}s: params {pr.params_ratio:.1%}, "
          f"MACs {pr.macs_ratio:.1%}; val acc before KD {p_acc:.4f}")
    stamps = [time.perf_counter()]

    def on_epoch(i: int, acc: float) -> None:
        stamps.append(time.perf_counter())
        print(f"  KD epoch {i + 1}: val acc {acc:.4f} ({stamps[-1] - stamps[-2]:.1f}s)")

    spec = DistillSpec(epochs=args.epochs, lr=args.lr, temperature=args.temperature, alpha=args.alpha,
                       batch_size=args.batch_size)
    res = distill(pr.model, data.train, logits, data.val, spec, seed=args.seed,
                  on_epoch=on_epoch)
    gap = (t_acc - res.history[-1]) * 100
    print(f"KD {res.epochs_run} epochs in {res.seconds:.1f}s; gap to teacher {gap:+.2f} pp "
          f"({'within' if gap <= 1.0 else 'NOT within'} 1 pp)")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "sparsity", "criterion", "stage", "epoch", "val_acc", "seconds", "params_ratio",
                    "macs_ratio", "load_avg"])
        common = [args.model, args.sparsity, args.criterion]
        tail = [f"{pr.params_ratio:.4f}", f"{pr.macs_ratio:.4f}", f"{os.getloadavg()[0]:.1f}"]
        w.writerow(common + ["teacher", "", f"{t_acc:.4f}", "", "1", "1", tail[-1]])
        w.writerow(common + ["pruned", 0, f"{p_acc:.4f}", f"{pr.seconds:.2f}"] + tail)
        for i, acc in enumerate(res.history):
            w.writerow(common + ["kd", i + 1, f"{acc:.4f}", f"{stamps[i + 1] - stamps[i]:.1f}"] + tail)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    main()
