"""Replay finished runs to ask: could the search distil fewer candidates without losing the front? (issue 15, goal 3)

The throughput goal (3x the candidates per hour on resnet18) needs most sampled candidates stopped before or early in
their distillation. Which candidates can be stopped is an accuracy forecast, and a forecast can be scored on runs
that already distilled everything: their records hold every candidate's speed, size, per-epoch validation accuracy
and final accuracy. Nothing is trained or timed here (seconds, any load). For each run folder (``trials.jsonl`` +
``baseline.json``), trials in the order they ran, each rule seeing only the trials before the candidate:

* **speed forecast, before training**: the final accuracy of the distilled peers fitted on log(speedup) (least
  squares); a candidate whose fit plus ``z`` residual standard deviations at its measured speed is below the
  accuracy target is not distilled;
* **recovery forecast, after each epoch**: a student at ``a`` after epoch ``e`` stops when even the largest share
  of its remaining error any same-budget peer closed from epoch ``e`` to its last epoch would leave it below the
  target minus ``margin``; optionally never for a candidate faster than every model meeting the target so far (the
  ones finishing may pick, ``--spare-fast``).

Per rule: candidates it stops, KD epochs it saves (of those run), and what it loses: candidates that ended meeting the
target, and the fastest of them. Also the rank correlation (Spearman) of the final accuracy with the speed and with
the accuracy after epochs 1-3, per KD budget, and with the sensitivity analysis's summed per-stage accuracy loss
where the run folder holds it (``cache/sensitivity-*.json``, or ``--sensitivity``).

    python benchmarks/replay_screening.py 'benchmarks/work/hv-oneclick-digits/*-s*'
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1]) if len(x) > 2 else float("nan")


def load(run: Path) -> tuple[float, list[dict]]:
    """(accuracy target, distilled or gated candidate rows in run order)."""
    base = json.loads((run / "baseline.json").read_text())
    target = base["accuracy"] - 0.01  # the default constraint: at most 1 pp below the baseline
    rows = []
    for line in (run / "trials.jsonl").read_text().splitlines():
        r = json.loads(line)
        c, m, h = r["candidate"], r["metrics"], r.get("kd_history") or []
        d = c.get("distill")
        full = d is not None and len(h) == d["epochs"]
        final = m["accuracy"] if r["status"] == "COMPLETE" else (h[-1] if full else None)
        rows.append(dict(number=r["number"], status=r["status"], stage=r.get("stage"), seed=r.get("seed"),
                         finish=r.get("finish_of") is not None, params=c.get("params") or {}, kd=d, history=h,
                         full=full, curve_end=h[-1] if full else None, final=final, speedup=m.get("speedup"),
                         size=m.get("size_mb"), meets=final is not None and final >= target and r["status"] == "COMPLETE"))
    return target, rows


def speed_forecast(target: float, rows: list[dict], z: float) -> dict:
    peers, stopped, saved, spent, lost = [], 0, 0, 0, []
    for r in rows:
        if r["kd"] is None or r["speedup"] is None or r["stage"] == "gate":
            continue
        spent += len(r["history"])
        sampled = not r["seed"] and not r["finish"]
        if sampled and len(peers) >= 4:
            x = np.array([[1.0, math.log(p[0])] for p in peers])
            y = np.array([p[1] for p in peers])
            w, *_ = np.linalg.lstsq(x, y, rcond=None)
            sd = max(0.005, float(np.sqrt(((y - x @ w) ** 2).sum() / max(1, len(peers) - 2))))
            if w[0] + w[1] * math.log(r["speedup"]) + z * sd < target:
                stopped += 1
                saved += len(r["history"])
                if r["meets"]:
                    lost.append(r)
                continue  # never distilled: not a peer
        if r["full"]:
            peers.append((r["speedup"], r["curve_end"]))
    return dict(stopped=stopped, saved=saved, spent=spent, lost=lost)


def recovery_forecast(target: float, rows: list[dict], margin: float, spare_fast: bool) -> dict:
    peers: dict[tuple, list] = {}
    best, stopped, saved, spent, lost = 0.0, 0, 0, 0, []
    for r in rows:
        if r["kd"] is None:
            best = max(best, r["speedup"] or 0.0) if r["meets"] else best
            continue
        h, key = r["history"], (r["kd"]["epochs"], r["kd"].get("samples_per_epoch"))
        spent += len(h)
        same = peers.get(key, [])
        exempt = spare_fast and (r["speedup"] or 0.0) >= best * 1.05
        stop_at = None
        if not exempt and len(same) >= 3:
            for e in range(1, min(len(h) + 1, key[0])):  # after epoch e (1-based), never after the last
                share = max((end - ph[e - 1]) / max(1e-6, 1.0 - ph[e - 1]) for ph, end in same)
                if h[e - 1] + max(0.0, share) * (1.0 - h[e - 1]) < target - margin:
                    stop_at = e
                    break
        if stop_at is not None:
            stopped += 1
            saved += len(h) - stop_at
            if r["meets"]:
                lost.append(r)
        elif r["full"]:
            peers.setdefault(key, []).append((h, r["curve_end"]))
        if r["meets"]:  # known once it finished: later candidates compare with it
            best = max(best, r["speedup"] or 0.0)
    return dict(stopped=stopped, saved=saved, spent=spent, lost=lost)


def rung_dominance(target: float, rows: list[dict], margin: float, rung: int) -> dict:
    """Successive halving's multi-objective promotion, the strict form: after epoch ``rung`` a student stops when any
    earlier same-budget candidate that reached that epoch (promoted or not) was ``margin`` more accurate there while
    at least as fast (5% speed noise) and at least as small."""
    seen: dict[tuple, list] = {}
    stopped, saved, spent, lost = 0, 0, 0, []
    for r in rows:
        if r["kd"] is None or r["speedup"] is None or r["stage"] == "gate":
            continue
        h, key = r["history"], (r["kd"]["epochs"], r["kd"].get("samples_per_epoch"))
        spent += len(h)
        if len(h) < rung or rung >= key[0]:
            continue
        acc = h[rung - 1]
        if any(a >= acc + margin and sp >= r["speedup"] * 0.95 and sz <= r["size"] for a, sp, sz in seen.get(key, [])):
            stopped += 1
            saved += len(h) - rung
            if r["meets"]:
                lost.append(r)
        seen.setdefault(key, []).append((acc, r["speedup"], r["size"]))
    return dict(stopped=stopped, saved=saved, spent=spent, lost=lost)


def damage(params: dict, sens: dict) -> float | None:
    """Summed accuracy loss (pp) of each stage pruned alone at the candidate's ratio, interpolated on the analysis's
    curves (:func:`autocompress.sensitivity._curve`, the ones its priors use)."""
    from autocompress.sensitivity import _curve

    stages = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("sparsity.")}
    if not stages or not all((sens["stages"].get(s) or {}).get("accuracy") for s in stages):
        return None
    out = 0.0
    for s, ratio in stages.items():
        xs, drops, _ = _curve(sens["stages"][s], sens["ratios"], sens["base_accuracy"])
        out += float(np.interp(ratio, xs, drops))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders or glob patterns")
    ap.add_argument("--z", type=float, nargs="+", default=[0.5, 1.0, 1.5], help="speed forecast: residual SDs of optimism")
    ap.add_argument("--margin", type=float, nargs="+", default=[0.0, 0.005, 0.025], help="recovery forecast margins")
    ap.add_argument("--sensitivity", type=Path, help="a sensitivity record for runs that lack one")
    args = ap.parse_args()
    runs = sorted({Path(p) for pat in args.runs for p in glob.glob(pat) if (Path(p) / "trials.jsonl").is_file()})
    data = [(run, *load(run)) for run in runs]
    print(f"{len(runs)} runs: {', '.join(str(r) for r in runs)}")

    def total(fn, *a):
        res = [fn(t, rows, *a) for _, t, rows in data]
        lost = [(run.name, x["number"], round(x["speedup"], 2)) for (run, _, _), r in zip(data, res) for x in r["lost"]]
        best_lost = []
        for (run, _, rows), r in zip(data, res):
            kept = [x["speedup"] for x in rows if x["meets"] and x not in r["lost"]]
            every = [x["speedup"] for x in rows if x["meets"]]
            if every and max(every) > max(kept, default=0.0):
                best_lost.append(f"{run.name}: {max(every):.2f}x -> {max(kept, default=0.0):.2f}x")
        st, sv, sp = (sum(r[k] for r in res) for k in ("stopped", "saved", "spent"))
        return (f"stops {st}, saves {sv} of {sp} KD epochs ({sv / max(1, sp):.0%}); candidates meeting the target lost: "
                f"{len(lost)} {lost if lost else ''}; fastest within the target lost: {'; '.join(best_lost) or 'none'}")

    for z in args.z:
        print(f"speed forecast before training, z={z:g}: {total(speed_forecast, z)}")
    for m in args.margin:
        for spare in (False, True):
            print(f"recovery forecast, margin {m * 100:g} pp{', sparing the fastest' if spare else ''}: "
                  f"{total(recovery_forecast, m, spare)}")
    for rung in (1, 2, 3):
        for m in (0.0, 0.02):
            print(f"rung dominance after epoch {rung}, margin {m * 100:g} pp: {total(rung_dominance, m, rung)}")
    by_budget: dict[int, list] = {}
    for run, _, rows in data:
        sfile = next(iter(sorted((run / "cache").glob("sensitivity-*.json"))), None) if (run / "cache").is_dir() else None
        sens = json.loads((sfile or args.sensitivity).read_text()) if (sfile or args.sensitivity) else None
        for r in rows:
            if r["full"] and r["kd"]["epochs"] >= 3 and r["speedup"]:
                dmg = damage(r["params"], sens) if sens else None
                by_budget.setdefault(r["kd"]["epochs"], []).append((r["curve_end"], r["speedup"], *r["history"][:3], dmg))
    for e, pts in sorted(by_budget.items()):
        if len(pts) < 5:
            continue
        a = np.array([p[:5] for p in pts], float)
        line = (f"KD {e} epochs, {len(pts)} candidates: Spearman of the final accuracy with speedup {spearman(a[:, 1], a[:, 0]):+.2f}, "
                f"with the accuracy after epoch 1/2/3 {spearman(a[:, 2], a[:, 0]):+.2f} / {spearman(a[:, 3], a[:, 0]):+.2f} / "
                f"{spearman(a[:, 4], a[:, 0]):+.2f}")
        dm = [(p[0], p[5]) for p in pts if p[5] is not None]
        if len(dm) >= 5:
            line += f", with the sensitivity analysis's summed stage loss {spearman([d for _, d in dm], [f for f, _ in dm]):+.2f} ({len(dm)})"
        print(line)


if __name__ == "__main__":
    main()
