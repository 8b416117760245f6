"""How far to trust a table on its device: time held-out networks there and compare with the predictions."""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import nets
from .lookup import predict_raw, table_target
from .table import context_nets, time_sessions
from .target import blocks_for, feeds_for, statistic_of, time_session


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (scipy.stats.kendalltau when scipy is installed, else the exact O(n^2) count)."""
    try:
        from scipy.stats import kendalltau
    except ImportError:
        kendalltau = None
    if kendalltau is not None:
        return float(kendalltau(x, y).statistic)
    x, y = np.asarray(x, float), np.asarray(y, float)
    conc = disc = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            a, b = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if a == 0 and b == 0:
                continue
            if a == 0:
                tx += 1
            elif b == 0:
                ty += 1
            elif a == b:
                conc += 1
            else:
                disc += 1
    den = np.sqrt((conc + disc + tx) * (conc + disc + ty))
    return float((conc - disc) / den) if den else float("nan")


def summary(predicted, measured) -> dict:
    """Hit rates of ``predicted`` against ``measured``, and the same once one common factor (the median ratio) is
    divided out: a shared machine's speed moves between the table's build and a check (the same 20 models ran 15-18%
    faster half an hour later on the AVX2 EPYC here, benchmarks/README.md); what is left is what a search in predict
    mode, which reads speedups, can get wrong."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    e = p / m - 1
    factor = float(np.median(p / m))
    rel = p / m / factor - 1
    return {"n": int(len(e)), "within_10": float(np.mean(np.abs(e) <= 0.10)), "within_20": float(np.mean(np.abs(e) <= 0.20)),
            "median_abs_error": float(np.median(np.abs(e))), "median_error": float(np.median(e)),
            "worst_error": float(e[np.argmax(np.abs(e))]), "kendall_tau": kendall_tau(p, m) if len(e) > 1 else float("nan"),
            "common_factor": factor, "relative_within_10": float(np.mean(np.abs(rel) <= 0.10))}


def format_summary(s: dict) -> str:
    return (f"{s['n']} models: {s['within_10']:.0%} within +-10%, {s['within_20']:.0%} within +-20%, median |error| "
            f"{s['median_abs_error']:.1%} (median {s['median_error']:+.1%}, worst {s['worst_error']:+.1%}), "
            f"Kendall's tau {s['kendall_tau']:.2f}; {s['relative_within_10']:.0%} within +-10% once one common factor "
            f"(x{s['common_factor']:.3f}) is divided out")


def time_references(table: dict, names, *, repeats: int = 3) -> dict[str, float]:
    """The table's context networks named in ``names``, each timed whole as the build times them
    (:func:`.table.time_sessions`: ``repeats`` fresh sessions taken together with the target's statistic, the table's
    clock)."""
    target = table_target(table)
    quick = bool(table.get("quick"))
    return {name: time_sessions(model, target, quick, repeats)
            for name, model in context_nets(target.batch_size, target.int8) if name in set(names)}


def reference_times(table: dict) -> dict[str, float] | None:
    """The reference networks' times taken when the table's level was last set: by the whole-model calibration where
    there is one (fitted last, on the machine's speed of those minutes), else by the context networks."""
    return (table.get("calibration") or {}).get("reference_ms") or (table.get("context") or {}).get("measured_ms")


def speed_now(table: dict, *, repeats: int = 3) -> dict | None:
    """How fast the device runs now against the table's build: its reference networks (:func:`reference_times`)
    timed again the same way; ``factor`` = the median of now / then (1.15: 15% slower now). A shared machine's speed
    moves by as much as the +-10% band within half an hour (the AVX2 EPYC here, benchmarks/README.md), so a check
    says how much of its error is the device's day rather than the table. None for a table built before the build
    kept those times."""
    then = reference_times(table)
    if not then:
        return None
    now = time_references(table, then, repeats=repeats)
    ratios = {name: ms / then[name] for name, ms in now.items()}
    if not ratios:
        return None
    return {"factor": float(np.median(list(ratios.values()))), "nets": ratios}


def check(table: dict, *, predict: Callable[[bytes], float] | None = None, log: Callable = print,
          repeats: int = 3) -> dict:
    """Time each held-out network (``repeats`` fresh sessions, each its blocks' statistic as the profile reports it,
    taken together with the same statistic; the table's clock) and predict it
    (``predict(model_bytes)``, default: the plain kernel sum); returns the summary with the rows, and, where the
    table kept its reference times, the device's speed against the build (:func:`speed_now`) and the summary of the
    predictions scaled by it (``at_speed_now``)."""
    target = table_target(table)
    predict = predict or (lambda m: predict_raw(m, table))
    clock = table.get("clock", "wall")
    rows = []
    for name, model in nets.held_out(target.batch_size, int8=target.int8):
        meas = []
        for _ in range(repeats):
            sess = target.session(model)
            meas.append(time_session(sess, feeds_for(sess), blocks_for(target.statistic, 9), 20.0, warmup=5,
                                     clock=clock, statistic=target.statistic))
        m, p = float(statistic_of(np.array(meas), target.statistic)), float(predict(model))
        rows.append({"model": name, "measured_ms": m, "predicted_ms": p, "error": p / m - 1})
        log(f"  {name:38s} measured {m:8.3f} ms  predicted {p:8.3f} ms  error {p / m - 1:+.1%}")
    s = summary([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
    log(f"check ({clock} clock): " + format_summary(s))
    out = {**s, "clock": clock, "rows": rows}
    now = speed_now(table, repeats=repeats)
    if now is None:
        log("  (this table predates its reference times: rebuild it to have the check measure the device's speed "
            "against the build)")
        return out
    f = now["factor"]
    at = summary([r["predicted_ms"] * f for r in rows], [r["measured_ms"] for r in rows])
    log(f"the device runs the table's {len(now['nets'])} reference networks {abs(f - 1):.0%} "
        f"{'slower' if f > 1 else 'faster'} than at its build ({table.get('date', '?')}, x{f:.3f}); at today's speed: "
        f"{at['within_10']:.0%} within +-10%, {at['within_20']:.0%} within +-20%, median |error| "
        f"{at['median_abs_error']:.1%}" + ("; the difference is the device's speed, not the table: rebuild the table "
                                           "where the device runs as it will in use" if abs(f - 1) > 0.05 else ""))
    return {**out, "speed_now": now, "at_speed_now": at}
