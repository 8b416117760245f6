"""Data at scale: load time and peak RSS of an image folder, KD epoch time vs samples per epoch, and a
1-trial run end to end on a large folder within the memory budget. Prints JSON lines; figures go to
benchmarks/README.md ("Data at scale").

    python benchmarks/make_image_folder.py /tmp/img32 --train 50000 --test 10000 --size 32
    python benchmarks/bench_data.py load /tmp/img32 --size 32                    # memory (default budget)
    python benchmarks/bench_data.py load /tmp/img32 --size 32 --budget 0         # every split from disk
    python benchmarks/bench_data.py kd /tmp/img32 --samples 1000 5000 10000      # KD epoch time vs the knob
    python benchmarks/make_image_folder.py /tmp/img224 --train 20000 --test 4000 --size 224
    python benchmarks/bench_data.py run /tmp/img224 --size 224 --budget 1G --samples 2000

Each measurement runs in a child process; its peak RSS is ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


def _child(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; returns its last JSON line plus wall time and peak RSS."""
    t = time.perf_counter()
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1]) if lines else {}
    out.update(wall_s=round(wall, 1), peak_rss_mb=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))
    return out


def _budget_env(budget: str | None) -> dict:
    return {"AUTOCOMPRESS_DATA_MEMORY": budget} if budget is not None else {}


def cmd_load(args) -> dict:
    code = textwrap.dedent(f"""
        import json, time
        from autocompress.data import load_data
        t = time.perf_counter()
        d = load_data({str(args.folder)!r}, image_size={args.size})
        print(json.dumps({{"load_s": round(time.perf_counter() - t, 1), "train": d.size("train"), "val": d.size("val"),
                          "classes": d.num_classes, "in_memory": [d.train.in_memory, d.val.in_memory],
                          "dtype": str(d.train.pixels.dtype), "fingerprint": d.fingerprint}}))
    """)
    return {"what": "load", "folder": str(args.folder), "size": args.size, "budget": args.budget,
            **_child(code, _budget_env(args.budget))}


def cmd_kd(args) -> list[dict]:
    """One KD epoch of a CIFAR ResNet-20 student per samples-per-epoch value, in one child process (the
    teacher is a ResNet-20 at its seeded initialisation: the time of an epoch does not depend on weights)."""
    code = textwrap.dedent(f"""
        import json, sys, time, torch
        sys.path.insert(0, {str(HERE / 'models')!r})
        from cifar_resnet import resnet20
        from autocompress.compress.distill import compute_logits, distill
        from autocompress.data import load_data
        from autocompress.records import DistillSpec
        t = time.perf_counter()
        d = load_data({str(args.folder)!r}, image_size={args.size})
        load_s = time.perf_counter() - t
        torch.manual_seed(0)
        teacher = resnet20().eval()
        t = time.perf_counter()
        logits = compute_logits(teacher, d.train)
        print(json.dumps({{"load_s": round(load_s, 1), "train": d.size("train"),
                          "teacher_logits_s": round(time.perf_counter() - t, 1)}}), flush=True)
        for m in {list(args.samples)!r}:
            torch.manual_seed(0)
            spec = DistillSpec(epochs=1, lr=0.05, batch_size=64, samples_per_epoch=m or None)
            res = distill(resnet20(), d.train, logits, d.val, spec, seed=0)
            print(json.dumps({{"samples_per_epoch": res.samples_per_epoch, "kd_epoch_s": round(res.seconds, 1),
                              "threads": torch.get_num_threads()}}), flush=True)
    """)
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    rows = []
    for line in proc.stdout:
        if line.startswith("{"):
            row = {"what": "kd", **json.loads(line)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    proc.wait()
    rss = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return [{"what": "kd", "rc": proc.returncode, "peak_rss_mb": rss}]


def cmd_run(args) -> dict:
    """``autocompress run`` with a tiny user CNN (checkpoint given: no teacher training), one trial:
    50% pruning + KD 1 epoch on ``--samples`` samples + int8."""
    import yaml

    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    (work / "models.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def cnn():
            return nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    """))
    space = {"kind": "search_space", "name": "bench-data", "student": {"kind": ["pruned"]},
             "sparsity": {"granularity": "uniform", "range": {"low": 0.5, "high": 0.5}},
             "bits": {"granularity": "uniform", "choices": ["int8"]},
             "distill": {"epochs": 1, "samples_per_epoch": args.samples}}
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    profile = {"kind": "hardware_profile", "name": "bench-cpu", "precisions": ["fp32", "int8"],
               "int8_format": "qdq", "int8_types": "u8s8",
               "latency": {"warmup": 2, "min_rounds": 3, "max_rounds": 5, "time_cap_s": 2.0}}
    (work / "profile.yaml").write_text(yaml.safe_dump(profile))
    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(work)!r})
        from models import cnn
        torch.manual_seed(0)
        torch.save(cnn().state_dict(), {str(work / 'ck.pt')!r})
    """)
    _child(code)
    cmd = [str(Path(PY).parent / "autocompress"), "run", "--model", f"{work}/models.py:cnn", "--checkpoint",
           f"{work}/ck.pt", "--data", str(args.folder), "--image-size", str(args.size), "--space",
           f"{work}/space.yaml", "--profile", f"{work}/profile.yaml", "--trials", "1", "--out", f"{work}/run",
           "--max-accuracy-drop", "100"]
    code = f"import json, subprocess, sys, time; t=time.perf_counter(); p=subprocess.run({cmd!r}); " \
           "print(json.dumps({'rc': p.returncode, 'run_s': round(time.perf_counter()-t, 1)}))"
    out = _child(code, {**_budget_env(args.budget), "AUTOCOMPRESS_CACHE": str(work / "cache")})
    trials = (work / "run" / "trials.jsonl").read_text().splitlines() if (work / "run" / "trials.jsonl").is_file() else []
    rec = json.loads(trials[-1]) if trials else {}
    return {"what": "run", "folder": str(args.folder), "size": args.size, "budget": args.budget,
            "samples_per_epoch": args.samples, "status": rec.get("status"), "stage_times": rec.get("stage_times"),
            "run_dir": str(work / "run"), **out}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("load", "kd", "run"):
        p = sub.add_parser(name)
        p.add_argument("folder", type=Path)
        p.add_argument("--size", type=int, default=32)
        p.add_argument("--budget", default=None, help="AUTOCOMPRESS_DATA_MEMORY for the child (e.g. 0, 1G)")
        if name == "kd":
            p.add_argument("--samples", type=int, nargs="+", default=[1000, 5000, 10000])
        if name == "run":
            p.add_argument("--samples", type=int, default=2000)
    args = ap.parse_args(argv)
    from autocompress.measure.hardware import fingerprint

    print(json.dumps({"machine": fingerprint(), "note": "CPU shared with other jobs while measured"}), flush=True)
    out = {"load": cmd_load, "kd": cmd_kd, "run": cmd_run}[args.cmd](args)
    for row in out if isinstance(out, list) else [out]:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
