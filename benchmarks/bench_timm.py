"""Breadth: ~20 CNN families from timm through the product, each as a user model file with a checkpoint.

For every model: a file ``<name>.py`` with ``build()`` (``timm.create_model(name, pretrained=False,
num_classes=10)``: random init, nothing downloaded) and a seeded state_dict saved with ``torch.save``, then

    autocompress run --model <name>.py:build --checkpoint <name>.pt --data digits-small.npz \\
        --space <seed-only space: uniform 50% + int8, 1 KD epoch> --profile <fast cpu profile> --trials 1 \\
        --max-accuracy-drop 100 --no-early-stop

in its own process (a hung one is killed after --per-model-timeout). The data are scikit-learn's digits at
32x32 as the built-in ``digits`` makes them, 300 images for training and 300 for validation (stratified,
seeded): one KD epoch and its validation stay short on two shared cores. Recorded per model: status, stage and
message of the one trial, params before (baseline.json) and after, speedup, stage times, seconds. A model
passes when its trial is COMPLETE with fewer parameters than the baseline.

    .venv/bin/python benchmarks/bench_timm.py --out benchmarks/results/timm.csv

The latency figures are indicative only: the profile measures a few short rounds, three models run at once
(--jobs) and the machine's two cores are shared with other jobs while it runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

# (timm name, what the family exercises)
MODELS = [
    ("resnet18", "plain residual"),
    ("seresnet18", "squeeze-excitation"),
    ("mobilenetv2_050", "inverted residual, depthwise"),
    ("efficientnet_b0", "inverted residual + SE"),
    ("ghostnet_050", "ghost modules (concat of cheap ops)"),
    ("densenet121", "dense connections (concat)"),
    ("repvgg_a0", "re-parameterisable (RepVGG)"),
    ("mobileone_s0", "re-parameterisable (MobileOne)"),
    ("cspresnet50", "cross-stage partial (CSP)"),
    ("cspdarknet53", "cross-stage partial (CSP)"),
    ("convnext_atto", "ConvNeXt (LayerNorm, 7x7 depthwise)"),
    ("dla34", "deep layer aggregation"),
    ("mixnet_s", "mixed kernel sizes (channel splits)"),
    ("rexnet_100", "ReXNet (partial residual)"),
    ("regnetx_002", "RegNet (group conv)"),
    ("hrnet_w18_small", "HRNet (multi-resolution fusion)"),
    ("res2net50_14w_8s", "Res2Net (hierarchical splits)"),
    ("resnest14d", "ResNeSt (split attention)"),
    ("selecsls42b", "SelecSLS (selective concat)"),
    ("lcnet_050", "PP-LCNet"),
]

MODEL_FILE = '''import timm


def build():
    return timm.create_model({name!r}, pretrained=False, num_classes=10)
'''

SPACE = {
    "kind": "search_space", "name": "timm-breadth",
    "description": "one seeded candidate: uniform 50% pruning + int8, 1 KD epoch",
    "sparsity": {"granularity": "uniform", "range": 0.5, "criterion": ["l1"]},
    "bits": {"choices": ["int8"]},
    "distill": {"epochs": 1},
    "seeds": [{"sparsity": 0.5, "bits": "int8", "epochs": 1}],
}

# one thread and a few short latency rounds (indicative); stage bounds as the default profile's except prune,
# raised because the two cores are shared while this runs (the figure is per model, in the CSV)
PROFILE = {
    "kind": "hardware_profile", "name": "bench-cpu-fast", "intra_op_threads": 1, "precisions": ["fp32", "int8"],
    "int8_format": "qdq", "int8_types": "u8s8",
    "latency": {"warmup": 2, "min_rounds": 3, "max_rounds": 8, "time_cap_s": 2.0, "block_ms": 5},
}

FIELDS = ["model", "family", "passed", "status", "stage", "message", "params_before", "params_after", "params_ratio",
          "speedup", "accuracy", "baseline_accuracy", "prune_s", "distill_s", "export_s", "quantize_s", "seconds"]


def write_small_digits(path: Path, n_train: int = 300, n_val: int = 300, size: int = 32, seed: int = 0) -> None:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from autocompress.data.bundle import resize

    d = load_digits()
    x = resize(torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None], size).clamp(0, 1).expand(-1, 3, -1, -1).numpy()
    tr, rest = train_test_split(np.arange(len(x)), train_size=n_train, stratify=d.target, random_state=seed)
    va, _ = train_test_split(rest, train_size=n_val, stratify=d.target[rest], random_state=seed)
    np.savez_compressed(path, x_train=x[tr], y_train=d.target[tr], x_val=x[va], y_val=d.target[va],
                        class_names=np.array([str(i) for i in range(10)]))


def run_one(name: str, family: str, work: Path, per_model_timeout: float) -> dict:
    import torch

    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.py").write_text(MODEL_FILE.format(name=name))
    ns: dict = {}
    exec(MODEL_FILE.format(name=name), ns)
    torch.manual_seed(0)
    torch.save(ns["build"]().state_dict(), d / f"{name}.pt")
    out = d / "run"
    cmd = [sys.executable, "-m", "autocompress.cli", "run", "--model", f"{d / name}.py:build",
           "--checkpoint", str(d / f"{name}.pt"), "--data", str(work / "digits-small.npz"),
           "--space", str(work / "space.yaml"), "--profile", str(work / "profile.yaml"), "--trials", "1",
           "--out", str(out), "--max-accuracy-drop", "100", "--no-early-stop"]
    row = {"model": name, "family": family}
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=per_model_timeout)
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] if proc.returncode else []
    except subprocess.TimeoutExpired:
        proc, tail = None, [f"killed after {per_model_timeout:g} s"]
    row["seconds"] = round(time.perf_counter() - t, 1)
    base = json.loads((out / "baseline.json").read_text()) if (out / "baseline.json").is_file() else {}
    recs = [json.loads(ln) for ln in (out / "trials.jsonl").read_text().splitlines()] if (out / "trials.jsonl").is_file() else []
    row["params_before"] = base.get("params")
    row["baseline_accuracy"] = base.get("accuracy")
    if recs:
        r = recs[-1]
        m, st = r["metrics"], r.get("stage_times") or {}
        row.update(status=r["status"], stage=r.get("stage") or "", message=(r.get("message") or "")[:300],
                   params_after=m.get("params"), speedup=m.get("speedup"), accuracy=m.get("accuracy"),
                   prune_s=st.get("prune"), distill_s=st.get("distill"), export_s=st.get("export"),
                   quantize_s=st.get("quantize"))
    else:
        row.update(status="NO TRIAL", stage="baseline" if not base else "", message=" ".join(tail)[:300])
    pb, pa = row.get("params_before"), row.get("params_after")
    row["params_ratio"] = round(pa / pb, 3) if pa and pb else None
    row["passed"] = bool(row["status"] == "COMPLETE" and pa and pb and pa < pb)
    (d / "row.json").write_text(json.dumps(row))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/timm.csv")
    ap.add_argument("--work", default="/tmp/autocompress-bench-timm")
    ap.add_argument("--models", nargs="*", help="a subset of the timm names (default: all)")
    ap.add_argument("--prune-timeout", type=float, default=300.0, help="the profile's stage_timeout_s.prune")
    ap.add_argument("--per-model-timeout", type=float, default=900.0)
    ap.add_argument("--jobs", type=int, default=3, help="models run at once (each in its own process)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "space.yaml").write_text(yaml.safe_dump(SPACE))
    if not (work / "digits-small.npz").is_file():
        write_small_digits(work / "digits-small.npz")
    (work / "profile.yaml").write_text(yaml.safe_dump({**PROFILE, "stage_timeout_s": {"prune": args.prune_timeout}}))
    chosen = [(n, f) for n, f in MODELS if not args.models or n in args.models]
    def one(item):
        row = run_one(*item, work, args.per_model_timeout)
        print(f"{row['model']:18s} {row['status']:9s} params {row.get('params_before')} -> {row.get('params_after')} "
              f"speedup {row.get('speedup')} {row['seconds']:.0f}s {row.get('stage') or ''} {row.get('message') or ''}",
              flush=True)
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(one, chosen))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in FIELDS})
    passed = sum(r["passed"] for r in rows)
    print(f"{passed} of {len(rows)} give a COMPLETE pruned candidate with fewer parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
