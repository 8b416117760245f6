"""Does the search beat random search? Hypervolume of autocompress at K trials vs random search at K and 3K.

For each sampler seed, runs (through bench_search.py, so each run also adds a row to results/search.csv)
the default search with K trials and a random search with 3K trials on the same task: same data split and
teacher (`--seed` fixed, `--sampler-seed` varied), the same space without its hand-picked seeds for the
random arm. Then scores each front with the same fixed reference point (10 pp below the baseline's
accuracy, speedup 1, the baseline's size). Random at K is the first K trials of the random run (K: the trials the autocompress arm ran).

    python benchmarks/bench_hv.py --task digits-mobilenet --trials 24 --seeds 0 1 2 -- --model mobilenet_v3_small
    python benchmarks/bench_hv.py --task T --score-only         # re-score the runs already in benchmarks/work/hv-T
    python benchmarks/bench_hv.py --task custom --trials 24 --timeout 420 --seeds 0 -- \
        --model benchmarks/models/custom_cnn.py:custom_cnn        # the one-click budget: random gets 3x the time too

A run folder already at benchmarks/work/hv-T/<arm>-s<seed> (or a link to one, e.g. a ladder comparison's run) is
kept and scored, not re-run.

Side by side (``--retime W``): each arm's speedups come from its own run, timed against its own baseline in its own
stretch of the machine's state, and a speedup measured once moves ~5-30% between such stretches here (issue 14). A
hypervolume on this task is mostly the fastest feasible model's speedup, so the two arms' scores differ by that
noise, and the arm with more trials also keeps its luckiest draw (the max of 72 noisy figures). With ``--retime W``
the models each arm kept (its front: the run folders hold only those ONNX files) are timed again, both arms' models
interleaved in the same W fresh processes against one baseline (autocompress.measure.retime), and the hypervolume is
scored again from those figures (columns ``*_retimed``). Random@K's own front is not kept on disk, so only
autocompress@K against random@3K is scored side by side.

Writes its rows to results/hv.csv (replacing earlier rows of the same task and seed) and prints a markdown table
with the median over the seeds it scored.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from datetime import datetime
from itertools import zip_longest
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autocompress.config import RunSpec, load_space  # noqa: E402
from autocompress.results import front_hypervolume, pareto_front  # noqa: E402


def noseed_space(space: str, work: Path) -> Path:
    """The same search space without its hand-picked seed candidates and without mutations (with ``--sampler random``
    and ``--no-finish``: a pure random search)."""
    sp = load_space(space)
    d = sp.model_dump(mode="json", exclude_none=True)
    d["seeds"] = []
    d["explore"] = 0.0  # no mutations of the best feasible model (search/explore.py): the sampler alone
    d["name"] = f"{sp.name}-noseeds"
    path = work / f"{sp.name}-noseeds.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def score(run: Path, first: int | None = None) -> tuple[float, int, float]:
    meta = yaml.safe_load((run / "run.yaml").read_text())
    spec = RunSpec.model_validate(meta["spec"])
    base = json.loads((run / "baseline.json").read_text())
    df = pd.read_csv(run / "trials.csv")
    if first is not None:
        df = df[df["number"] < first]
    front = pareto_front(df, list(spec.objectives), spec.constraints)
    hv = front_hypervolume(df, list(spec.objectives), spec.constraints, base)
    ok = df[(df["status"] == "COMPLETE") & (df["accuracy_drop"] <= 1.0)]
    return hv, len(front), float(ok["speedup"].max()) if len(ok) else float("nan")


def kept_models(run: Path) -> pd.DataFrame:
    """The run's trials whose ONNX file is in the run folder (the front and the seeds it kept)."""
    df = pd.read_csv(run / "trials.csv")
    return df[df["model"].map(lambda m: isinstance(m, str) and (run / m).is_file())]


def retime_arms(runs: dict[str, Path], windows: int) -> tuple[dict, dict[str, pd.DataFrame]]:
    """The feasible kept models of several runs of one task (same teacher) re-timed in the same ``windows`` fresh
    processes against the first run's baseline, the arms' models alternating inside each window so that a drift
    reaches all arms. Returns (summary figures, {arm: its kept feasible rows with ``speedup`` re-timed})."""
    from autocompress.config import load_profile
    from autocompress.measure.hardware import check_available, fingerprint, input_shape_for
    from autocompress.measure.retime import retime
    from autocompress.results import feasible_mask

    first = next(iter(runs.values()))
    meta = yaml.safe_load((first / "run.yaml").read_text())
    spec = RunSpec.model_validate(meta["spec"])
    teachers = {json.loads((run / "baseline.json").read_text()).get("teacher_fingerprint") for run in runs.values()}
    if len(teachers) > 1:
        sys.exit(f"{', '.join(map(str, runs.values()))} distilled from different teachers: their fronts cannot be "
                 "compared side by side")
    kept = {arm: (df := kept_models(run))[feasible_mask(df, spec.constraints)].copy() for arm, run in runs.items()}
    paths = {f"{arm} trial {int(r['number'])}": runs[arm] / r["model"] for arm in kept for _, r in kept[arm].iterrows()}
    order = [x for group in zip_longest(*([k for k in paths if k.startswith(arm + " ")] for arm in kept)) for x in group if x]
    profile, _ = load_profile(spec.profile)  # a predict-mode arm is re-timed with the measuring profile of the first
    check_available(profile)
    shape = input_shape_for(profile, tuple(meta["data"]["input_shape"]))
    res = retime({k: paths[k] for k in order}, first / "models" / "baseline.onnx", profile, shape, windows=windows,
                 seed=spec.seed, log=lambda m: print("  " + m, flush=True))
    for k in order:
        r = res[k]
        print(f"  {k}: {r.speedup:.2f}x re-timed (windows {', '.join(f'{v:.2f}' for v in r.speedups)}; CV {r.cv:.1%})")
    fp = fingerprint()
    out = {"retime_windows": windows, "retime_models": len(order),
           "retime_cv_median": round(statistics.median(r.cv for r in res.values()), 4) if res else float("nan"),
           "machine": " ".join([fp.get("cpu") or "?", *fp.get("cpu_flags", [])])}
    for arm, df in kept.items():
        df["speedup"] = [res[f"{arm} trial {int(n)}"].speedup for n in df["number"]]
    return out, kept


def side_by_side(ac: Path, rn: Path, windows: int) -> dict:
    """Both arms' kept models re-timed in the same windows against one baseline, and each arm's hypervolume and
    fastest model within 1 pp scored from those figures (see the module's docstring)."""
    out, kept = retime_arms({"ac": ac, "rn": rn}, windows)
    spec = RunSpec.model_validate(yaml.safe_load((ac / "run.yaml").read_text())["spec"])
    base = json.loads((ac / "baseline.json").read_text())
    for arm, name in (("ac", "autocompress_K"), ("rn", "random_3K")):
        df = kept[arm]
        out[f"hv_{name}_retimed"] = round(front_hypervolume(df, list(spec.objectives), spec.constraints, base), 4)
        ok = df[df["accuracy_drop"] <= 1.0]
        out[f"best_speedup_1pp_{name}_retimed"] = round(float(ok["speedup"].max()), 2) if len(ok) else float("nan")
    return out


def replace_rows(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` to the CSV at ``path``, replacing the rows of the same (task, seed) and keeping the others."""
    done = {(str(r["task"]), str(r["seed"])) for r in rows}
    old = [r for r in (list(csv.DictReader(path.open())) if path.is_file() else []) if (r["task"], r["seed"]) not in done]
    keys = list(dict.fromkeys(k for r in old + rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows([{k: r.get(k, "") for k in keys} for r in old + rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--trials", type=int, default=24, help="K: the autocompress budget (random gets 3K)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--random-factor", type=int, default=3, help="random search gets this many times K trials")
    ap.add_argument("--timeout", type=float, default=None,
                    help="the autocompress arm's --timeout (s); random gets --random-factor times it (a budget in time)")
    ap.add_argument("--space", default="default")
    ap.add_argument("--score-only", action="store_true")
    ap.add_argument("--retime", type=int, default=0, metavar="W",
                    help="also re-time both arms' kept models side by side in W fresh processes and score from those")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="after --: flags for `autocompress run` (model, data...)")
    a = ap.parse_args()
    flags = [x for x in a.rest if x != "--"]
    work = ROOT / "benchmarks" / "work" / f"hv-{a.task}"
    work.mkdir(parents=True, exist_ok=True)
    k = a.trials
    if not a.score_only:
        rnd_space = noseed_space(a.space, work)
        for s in a.seeds:
            for arm, space, n, sampler in (("autocompress", a.space, k, None), ("random", str(rnd_space), a.random_factor * k, "random")):
                out = work / f"{arm}-s{s}"
                if (out / "trials.csv").is_file():
                    print(f"{out} exists: kept", flush=True)
                    continue
                cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_search.py"), "--tag", f"hv-{a.task}-{arm}-s{s}",
                       "--out", str(out), "--", *flags, "--space", space, "--trials", str(n), "--sampler-seed", str(s)]
                if sampler:
                    cmd += ["--sampler", sampler, "--no-finish"]
                if a.timeout:
                    cmd += ["--timeout", str(a.timeout * (a.random_factor if sampler else 1))]
                print("$", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)

    rows = []
    for s in a.seeds:
        ac, rn = work / f"autocompress-s{s}", work / f"random-s{s}"
        if not (ac / "trials.csv").is_file() or not (rn / "trials.csv").is_file():
            continue
        k_ran = len(pd.read_csv(ac / "trials.csv"))  # a time budget may end before K trials: random @K gets as many
        hv_ac, n_ac, sp_ac = score(ac)
        hv_rk, n_rk, sp_rk = score(rn, k_ran)
        hv_r3, n_r3, sp_r3 = score(rn, a.random_factor * k)
        rows.append({"task": a.task, "seed": s, "K": k_ran, "trials_random": len(pd.read_csv(rn / "trials.csv")), "hv_autocompress_K": round(hv_ac, 4), "hv_random_K": round(hv_rk, 4),
                     f"hv_random_{a.random_factor}K": round(hv_r3, 4), "front_autocompress": n_ac, f"front_random_{a.random_factor}K": n_r3,
                     "best_speedup_1pp_autocompress": round(sp_ac, 2), "best_speedup_1pp_random_K": round(sp_rk, 2),
                     f"best_speedup_1pp_random_{a.random_factor}K": round(sp_r3, 2)})
        if a.retime:
            print(f"seed {s}: re-timing both arms' kept models side by side", flush=True)
            rows[-1].update(side_by_side(ac, rn, a.retime))
        rows[-1]["date"] = datetime.now().isoformat(timespec="seconds")
    if not rows:
        sys.exit("no finished pair of runs to score")
    replace_rows(ROOT / "benchmarks" / "results" / "hv.csv", rows)
    cols = list(rows[0])[1:-1]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    f = a.random_factor
    med = {c: statistics.median(r[c] for r in rows) for c in ("hv_autocompress_K", "hv_random_K", f"hv_random_{f}K")}
    print(f"median over {len(rows)} seeds: autocompress@K {med['hv_autocompress_K']:.4f}, random@K {med['hv_random_K']:.4f}, "
          f"random@{f}K {med[f'hv_random_{f}K']:.4f} -> goal (autocompress@K >= random@{f}K) "
          f"{'met' if med['hv_autocompress_K'] >= med[f'hv_random_{f}K'] else 'MISSED'}")
    if a.retime:
        ac_, rn_ = (statistics.median(r[c] for r in rows) for c in ("hv_autocompress_K_retimed", "hv_random_3K_retimed"))
        print(f"side by side (re-timed in the same windows): autocompress@K {ac_:.4f}, random@{f}K {rn_:.4f} -> "
              f"{'met' if ac_ >= rn_ else 'MISSED'}")


if __name__ == "__main__":
    main()
