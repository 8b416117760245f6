"""Predicted vs measured latency on held-out candidates, one profile per run.

1. The lookup table, built on this machine (``predict.build_table``: the torch-free grid of
   ``autocompress.profiling``, keyed on the kernels ORT runs after graph optimisation, plus its in-network
   scale), at ``benchmarks/results/<profile>.table.jsonl`` (resumable: rerun continues it), or ``--table``.
   The torch-side whole-model calibration on zoo models (disjoint from the candidates) is fitted as
   ``profile-device --calibrate`` does (opt-in there; here by default, ``--no-calibrate``: not); the same predictions
   without it are scored beside, on the same measurements.
2. Held-out candidates: zoo models (resnet18, mobilenet_v2, efficientnet_b0, regnet_x_400mf, shufflenet_v2_x1_0;
   ``build_model(name, 10, (3, S, S))``, S = 32 or 64, or ``--sizes``) pruned uniformly at a random ratio in 0-0.8 (2 decimals,
   seeds < 1000) with the product's stages, each in fp32 and int8 (static QDQ U8S8, the product's quantizer).
3. Each candidate measured with ``measure_latency`` (the profile's rules) in ``--windows`` fresh processes (the
   profile's statistic: median for cpu-1thread, p10 of the blocks for cpu; the same statistic across windows is the
   figure); with one intra-op thread, also this thread's CPU time (what the table's clock counts).
4. Predicted with ``predict_latency``; beside it the simple rival, latency from MACs: per precision,
   log(ms) = a + b log(MACs) fitted on the *other* architectures' candidates of the same run (their measurements,
   taken in the same windows: the rival sees no drift between a build and a check, the table does); and the
   predictions scaled by the device's speed in the windows against the build (``profiling.check.speed_now``: the
   table's context networks re-timed in each window; tables built since it kept their times). Prints and writes ``benchmarks/results/predict-<profile>.json`` (+ .csv):
   within +-10% / +-20%, median |error|, Kendall's tau, per precision and per architecture, the load average.

    python benchmarks/bench_predict.py --profile cpu-1thread           # ~15 min on 2 quiet cores
    python benchmarks/bench_predict.py --profile cpu --windows 3       # 2 threads: median of 3 fresh processes
    python benchmarks/bench_predict.py --table T --n 10 --sizes 224 --seed 2 --windows 1 --tag=-224   # ImageNet size
    python benchmarks/bench_predict.py --rescore benchmarks/results/predict-cpu-1thread.json   # add the MACs rival
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = ["resnet18", "mobilenet_v2", "efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x1_0"]


def draw(seed: int, n: int, sizes: list[int]) -> list[tuple[str, float, int, int]]:
    """The held-out candidates (arch, pruning ratio, input side, build seed): architectures in turn, ratios uniform in
    0-0.8, sides drawn from ``sizes`` (seeded). ``predict_breakdown.py --draw`` diagnoses another seed's draw."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        arch = ARCHS[i % len(ARCHS)]
        ratio = round(rng.uniform(0.0, 0.8), 2)
        out.append((arch, ratio, rng.choice(sizes), i))
    return out


def _measure_window(job_path: str, out_path: str) -> None:
    """One fresh process: measure every candidate of the job as the profile says."""
    from autocompress.config import load_profile
    from autocompress.measure.latency import measure_latency
    from autocompress.profiling.target import Target, feeds_for, time_session

    job = json.loads(Path(job_path).read_text())
    profile, _ = load_profile(job["profile"])
    target = Target.from_profile(profile)
    out = []
    for c in job["candidates"]:
        r = measure_latency(c["path"], profile, c["shape"], seed=c["seed"])
        ms = r.stat_ms(profile.latency.statistic)
        cpu = None
        if target.clock == "cpu":
            sess = target.session(c["path"])
            cpu = time_session(sess, feeds_for(sess), 9, 20.0, warmup=5, clock="cpu")
        out.append({"ms": ms, "cpu_ms": cpu, "cv": r.cv, "load_avg": r.load_avg,
                    "disturbed": bool(r.machine and r.machine.get("disturbed"))})
    from autocompress.measure.predict import read_table
    from autocompress.profiling.check import speed_now

    now = speed_now(read_table(job["table"]))  # the device's speed in this window against the table's build
    Path(out_path).write_text(json.dumps({"rows": out, "speed_now": now and now["factor"]}))


def candidate_macs(arch: str, ratio: float, size: int, seed: int) -> int:
    """The candidate's MACs, rebuilt as ``predict.build_candidate`` builds it (same seed, same pruning)."""
    import torch

    from autocompress.compress.prune import prune_model
    from autocompress.measure.cost import count_params_macs
    from autocompress.models.zoo import build_model

    torch.manual_seed(seed)
    model = build_model(arch, 10, (3, size, size)).eval()
    ex = torch.zeros(1, 3, size, size)
    if ratio > 0:
        model = prune_model(model, {"_default": ratio}, ex, inplace=True).model
    return count_params_macs(model, ex)[1]


def macs_rival(rows: list[dict]) -> list[float]:
    """Each row's latency from its MACs: per precision, log(ms) = a + b log(MACs) least-squares fitted on the rows
    of the other architectures (leave one architecture out), so no candidate's own family is in its fit."""
    out = []
    for r in rows:
        fit = [(np.log(o["macs"]), np.log(o["measured_ms"])) for o in rows
               if o["precision"] == r["precision"] and o["arch"] != r["arch"]]
        x, y = np.array(fit).T
        b, a = np.polyfit(x, y, 1)
        out.append(float(np.exp(a + b * np.log(r["macs"]))))
    return out


def score(res: dict, rows: list[dict]) -> None:
    """Summaries per group (all, per precision, per architecture) into ``res['summary']``, printed."""
    from autocompress.profiling.check import format_summary, summary

    res["summary"] = {}
    groups = {"all": rows, "fp32": [r for r in rows if r["precision"] == "fp32"],
              "int8": [r for r in rows if r["precision"] == "int8"]} | {a: [r for r in rows if r["arch"] == a] for a in ARCHS}
    n_cmp = sum(1 for k in rows[0] if k.startswith("predicted_compare"))
    extra = [("predicted_uncalibrated_ms", "measured_ms", "no calibration", "without the whole-model calibration")] + [
             (compare_key(j), "measured_ms", f"compare table {j + 1}", f"with --compare-table's table {j + 1}")
             for j in range(n_cmp)] + [
             ("predicted_unmarked_ms", "measured_ms", "no speed marks",
              "the grid's times as measured (the table's speed marks ignored; same in-network fit and calibration)"),
             ("predicted_at_speed_now_ms", "measured_ms", "at speed now",
              "scaled by the device's speed in these windows against the build (its reference networks re-timed)"),
             ("predicted_macs_ms", "measured_ms", "MACs rival", "the MACs rival (other architectures' fit)"),
             ("predicted_ms", "measured_median_ms", "median of windows",
              "against the windows' median (a window the shared machine ran slow throughout moves it)"),
             ("predicted_ms", "measured_cpu_ms", "cpu clock", "vs this thread's CPU time")]
    for name, sel in groups.items():
        if not sel:
            continue
        s = summary([r["predicted_ms"] for r in sel], [r["measured_ms"] for r in sel])
        res["summary"][name] = s
        print(f"{name:19s} {format_summary(s)}")
        for pk, mk, key, words in extra:
            if sel[0].get(pk) is not None and sel[0].get(mk) is not None:
                res["summary"][f"{name} ({key})"] = so = summary([r[pk] for r in sel], [r[mk] for r in sel])
                print(f"{'':19s} {words}: {format_summary(so)}")


def compare_key(j: int) -> str:
    """The row field of the ``j``-th --compare-table's prediction (the first one's name as in earlier results)."""
    return "predicted_compare_ms" if j == 0 else f"predicted_compare{j + 1}_ms"


def add_macs_rival(rows: list[dict]) -> None:
    for i, r in enumerate(rows):  # two rows (fp32, int8) per model, built with seed = the model's index
        r.setdefault("macs", candidate_macs(r["arch"], r["ratio"], r["size"], i // 2))
    for r, p in zip(rows, macs_rival(rows)):
        r["predicted_macs_ms"] = round(p, 4)


def write(res: dict, rows: list[dict], stem: str) -> None:
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1))
    with open(RESULTS / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "windows_ms"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {RESULTS / stem}.json and .csv")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu-1thread")
    ap.add_argument("--table", help="reuse a table (JSON Lines) instead of building benchmarks/results/<profile>.table.jsonl")
    ap.add_argument("--quick", action="store_true", help="small grid (the tests' table)")
    ap.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                    help="leave out the torch-side whole-model calibration (profile-device --calibrate: scored beside "
                         "the same predictions without it)")
    ap.add_argument("--n", type=int, default=20, help="pruned models (each in fp32 and int8)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sizes", default="32,64", help="input sides drawn from (e.g. 224: ImageNet-size models, whose "
                                                     "early layers run 56-112 px)")
    ap.add_argument("--tag", default="", help="suffix of the result files' names")
    ap.add_argument("--compare-table", nargs="+", default=[],
                    help="also predict with these tables (older builds, another build of the same grid) on the same "
                         "measurements: the machine's speed moves between runs, a comparison across runs does not hold")
    ap.add_argument("--windows", type=int, default=None, help="fresh processes per candidate (default 1 with one "
                                                                "intra-op thread, 3 otherwise)")
    ap.add_argument("--rescore", metavar="RESULT_JSON", help="score an earlier run's measurements again, the MACs "
                                                             "rival added (its candidates rebuilt for their MACs)")
    ap.add_argument("--measure-window", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure_window:
        return _measure_window(*args.measure_window)
    if args.rescore:
        from autocompress.measure.predict import across_windows

        res = json.loads(Path(args.rescore).read_text())
        for r in res["rows"]:  # the reference again from the windows, by today's rule (results before it: the median)
            r["measured_median_ms"] = round(float(np.median(r["windows_ms"])), 4)
            r["measured_ms"] = round(across_windows(r["windows_ms"], res.get("statistic", "median")), 4)
            r["error"] = round(r["predicted_ms"] / r["measured_ms"] - 1, 4)
        add_macs_rival(res["rows"])
        score(res, res["rows"])
        return write(res, res["rows"], Path(args.rescore).stem)

    from autocompress.config import load_profile
    from autocompress.measure import hardware, predict

    profile, _ = load_profile(args.profile)
    windows = args.windows or (1 if profile.intra_op_threads == 1 else 3)
    RESULTS.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    print(f"load average at start: {os.getloadavg()}; {hardware.fingerprint()['cpu']}", flush=True)
    if args.table:
        table = predict.read_table(args.table)
        if args.calibrate and table.get("calibration") is None:
            dts = ["fp32", "int8"]
            table = predict.append_calibration(table, predict.calibrate_table(table, profile, quick=args.quick, dtypes=dts))
    else:
        path = RESULTS / f"{profile.name}{'-quick' if args.quick else ''}.table.jsonl"
        table = predict.build_table(profile, path, quick=args.quick, calibrate=args.calibrate)  # opt-in in the product
    predict.check_table(table, profile)
    t_table = time.perf_counter() - t0
    uncalibrated = {k: v for k, v in table.items() if k != "calibration"}  # the same table, without it: compared
    compares = [predict.read_table(t) for t in args.compare_table]
    # the same table with its graphs at the speed each was timed at, not rescaled to the build's median speed: compared
    unmarked = {**table, "marks": []} if len(table.get("marks") or []) >= 2 else None
    sizes = [int(v) for v in args.sizes.split(",")]
    rows, cands = [], []
    with tempfile.TemporaryDirectory() as d:
        for arch, ratio, size, i in draw(args.seed, args.n, sizes):
            fp32, int8 = predict.build_candidate(arch, ratio, size, seed=i, out_dir=d)
            shape = list(hardware.input_shape_for(profile, (3, size, size)))
            macs = candidate_macs(arch, ratio, size, i)
            for prec, p in (("fp32", fp32), ("int8", int8)):
                assert predict.model_dtype(p) == prec, (p, prec)
                cands.append({"arch": arch, "ratio": ratio, "size": size, "precision": prec, "path": str(p),
                              "shape": shape, "seed": i, "macs": macs})
        print(f"{len(cands)} candidates built ({time.perf_counter() - t0 - t_table:.0f} s)", flush=True)
        job = Path(d) / "job.json"
        job.write_text(json.dumps({"profile": args.profile, "candidates": cands, "table": str(table["path"])}))
        per_window, factors = [], []
        for w in range(windows):
            out = Path(d) / f"w{w}.json"
            subprocess.run([sys.executable, __file__, "--measure-window", str(job), str(out)], check=True)
            got = json.loads(out.read_text())
            per_window.append(got["rows"])
            factors.append(got["speed_now"])
            print(f"window {w + 1}/{windows} measured (load {os.getloadavg()[0]:.1f}"
                  + (f"; the table's reference networks ran x{got['speed_now']:.3f} their build time)" if got["speed_now"]
                     else ")"), flush=True)
        factor = float(np.median(factors)) if all(factors) else None
        for i, c in enumerate(cands):
            ms = [pw[i]["ms"] for pw in per_window]
            meas = predict.across_windows(ms, profile.latency.statistic)  # the profile's statistic across windows too
            pred = predict.predict_latency(c["path"], profile, table, c["shape"])
            others = {compare_key(j): round(predict.predict_latency(c["path"], profile, t, c["shape"]), 4)
                      for j, t in enumerate(compares)}
            plain = predict.predict_latency(c["path"], profile, unmarked, c["shape"]) if unmarked else None
            raw = (predict.predict_latency(c["path"], profile, uncalibrated, c["shape"])
                   if table.get("calibration") else None)
            cpu = per_window[0][i]["cpu_ms"]
            rows.append({k: c[k] for k in ("arch", "ratio", "size", "precision", "macs")} | {
                "measured_ms": round(meas, 4), "measured_median_ms": round(float(np.median(ms)), 4),
                "windows_ms": [round(v, 4) for v in ms], "predicted_ms": round(pred, 4),
                "error": round(pred / meas - 1, 4),
                "predicted_uncalibrated_ms": round(raw, 4) if raw else None, "measured_cpu_ms": round(cpu, 4) if cpu else None,
                **others,
                "predicted_unmarked_ms": round(plain, 4) if plain else None,
                "predicted_at_speed_now_ms": round(pred * factor, 4) if factor else None,
                "error_vs_cpu": round(pred / cpu - 1, 4) if cpu else None,
                "cv": round(per_window[0][i]["cv"], 3), "load_avg": per_window[0][i]["load_avg"],
                "disturbed": any(pw[i]["disturbed"] for pw in per_window)})
            r = rows[-1]
            print(f"{r['arch']:19s} r={r['ratio']:.2f} {r['size']}px {r['precision']}: measured {meas:8.3f} ms  "
                  f"predicted {pred:8.3f} ms  error {r['error']:+.1%}" + (f"  (cpu clock {cpu:.3f} ms)" if cpu else ""),
                  flush=True)
    res = {"profile": profile.name, "statistic": profile.latency.statistic, "windows": windows,
           "table": str(table["path"]), "table_date": table["date"], "fingerprint": hardware.fingerprint(),
           "seconds": round(time.perf_counter() - t0, 1), "table_seconds": round(t_table, 1),
           "load_avg": [min(r["load_avg"] for r in rows), max(r["load_avg"] for r in rows)],
           "disturbed": sum(r["disturbed"] for r in rows), "speed_now": factors, "summary": {}, "rows": rows}
    if windows > 1:  # the measurement's own floor: how far a perfect predictor could be scored within +-10%
        w = np.array([r["windows_ms"] for r in rows], float)
        dev = np.abs(w / np.median(w, axis=1, keepdims=True) - 1)
        cv = w.std(axis=1) / w.mean(axis=1)
        res["repeat"] = {"windows_within_10pct": round(float((dev <= 0.10).mean()), 3),
                         "candidates_all_windows_within_10pct": round(float((dev <= 0.10).all(axis=1).mean()), 3),
                         "cv_median": round(float(np.median(cv)), 4), "cv_p90": round(float(np.percentile(cv, 90)), 4)}
        print(f"the measurement repeats: {res['repeat']['windows_within_10pct']:.0%} of the windows within +-10% of their "
              f"candidate's median ({res['repeat']['candidates_all_windows_within_10pct']:.0%} of candidates in every "
              f"window), CV across windows median {res['repeat']['cv_median']:.1%}, p90 {res['repeat']['cv_p90']:.1%}")
    add_macs_rival(rows)
    score(res, rows)
    write(res, rows, f"predict-{profile.name}{'-quick' if args.quick else ''}{args.tag}")
    print(f"load average over the measurements: {res['load_avg'][0]:.1f}-{res['load_avg'][1]:.1f}, "
          f"{res['disturbed']} candidates measured in a disturbed window; {res['seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
