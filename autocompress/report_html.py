"""report.html: one self-contained page (plotly.js inlined, opens offline).

The first screen answers: what the best trade-offs are (headline figures, accuracy-vs-speedup and
accuracy-vs-size plots, each with its own 2-D non-dominated staircase), how they compare with the
reference points measured in the same run (fp32 baseline, ONNX Runtime int8 alone, the space's seeds),
and how to run the chosen model (a copy-paste ONNX Runtime snippet with the recorded preprocessing).
Below: the front as a table with units, per front model what was done to each layer, every trial's
status with stage and reason, where the time went and the hypervolume over trials.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from .config import RunSpec
from .results import feasible_mask, front_2d, hypervolume_history
from .tables import (against_int8, chosen, display_table, fmt_acc, fmt_drop, fmt_mb, fmt_speedup, percent_metric, reference_table,
                     seed_trials)

PRECISION_COLOURS = {"int8": "#1f77b4", "fp16": "#ff7f0e", "fp32": "#9e9e9e"}
STAGE_COLOURS = {"build": "#bcbd22", "prune": "#8c564b", "distill": "#d62728", "export": "#9467bd",
                 "quantize": "#1f77b4", "evaluate": "#2ca02c", "latency": "#ff7f0e"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:20px 28px;max-width:1400px;color:#222}
h1{font-size:1.45em;margin:0 0 4px} h2{font-size:1.15em;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:1em;margin:16px 0 6px} p{margin:6px 0} .muted{color:#666;font-size:.9em}
.verdict{font-size:1.05em;margin:6px 0 10px}
.cards{display:flex;gap:10px;flex-wrap:wrap;margin:8px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:7px 11px;min-width:170px;flex:1;background:#fafafa}
.card .k{font-size:.8em;color:#555;text-transform:uppercase;letter-spacing:.03em} .card .v{font-size:1.35em;font-weight:600}
.card .s{font-size:.85em;color:#444} .card.best{border-color:#c0392b;background:#fff5f4} .card.ref{border-color:#e67e22}
.row{display:grid;grid-template-columns:1fr 1fr;gap:14px} .row>div{min-width:0}
@media (max-width:1000px){.row{grid-template-columns:1fr}}
table.t{border-collapse:collapse;font-size:.9em;margin:4px 0} table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap}
table.t th{background:#f3f3f3} table.t td.l,table.t th.l{text-align:left;white-space:normal;min-width:9em}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:6px;padding:8px 10px;font-size:.82em;overflow-x:auto;margin:4px 0}
code{background:#f4f4f4;padding:1px 4px}
.COMPLETE{color:#2e7d32} .STOPPED{color:#b7791f} .FAILED{color:#c62828} .INFEASIBLE{color:#8e24aa}
details{margin:6px 0} summary{cursor:pointer;font-weight:600}
"""
LEFT = {"reference", "status", "stage", "reason", "bits", "seed", "note", "model", "layer", "what"}


def _e(v) -> str:
    return html.escape(str(v))


def _table(frame: pd.DataFrame, cls_col: str | None = None) -> str:
    if frame.empty:
        return "<p class='muted'>None.</p>"
    head = "".join(f"<th class='{'l' if c in LEFT else ''}'>{_e(c)}</th>" for c in frame.columns)
    body = []
    for _, r in frame.iterrows():
        cells = []
        for c in frame.columns:
            cls = ("l " if c in LEFT else "") + (str(r[c]) if c == cls_col else "")
            cells.append(f"<td class='{cls.strip()}'>{_e(r[c])}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='t'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _plot(fig, div_id: str, first: bool, height: int, modebar: bool = True) -> str:
    import plotly.io as pio

    return pio.to_html(fig, include_plotlyjs=first, full_html=False, div_id=div_id, default_width="100%",
                       default_height=f"{height}px",
                       config={"displaylogo": False, "responsive": True, "displayModeBar": "hover" if modebar else False})


# ---------------------------------------------------------------------------- the two trade-off plots
def _tradeoff_fig(df, front3, spec: RunSpec, baseline: dict, x: str):
    import plotly.graph_objects as go

    pct = percent_metric(spec)
    acc_dir = next((o.resolved_direction for o in spec.objectives if o.name == "accuracy"), "maximize")
    x_dir = "maximize" if x == "speedup" else "minimize"
    done = df[df["status"] == "COMPLETE"]
    feas = feasible_mask(done, spec.constraints) if len(done) else pd.Series(dtype=bool)
    stairs = front_2d(done, x, x_dir, spec.constraints, y_direction=acc_dir)
    on3 = set(front3["number"]) if len(front3) else set()
    on2 = set(stairs["number"]) if len(stairs) else set()
    acc_fmt = ".2%" if pct else ".4g"
    hover = (f"trial %{{customdata[0]}}<br>accuracy %{{y:{acc_fmt}}} (drop %{{customdata[1]:+.2f}} pp)<br>"
             "speedup %{customdata[2]:.2f}x<br>size %{customdata[3]:.3g} MB<br>%{customdata[4]}<extra>%{fullData.name}</extra>")
    cols = ["number", "accuracy_drop", "speedup", "size_mb", "what"]

    def with_what(d):
        d = d.copy()
        blocks = d["dropped_blocks"] if "dropped_blocks" in d else [0] * len(d)
        d["what"] = [f"{b}, sparsity {float(s):.0%}" + (f", {int(nb)} blocks dropped" if nb else "") + f", KD {int(k)} ep"
                     + (f"<br>seed: {sd}" if sd else "")
                     for b, s, nb, k, sd in zip(d["bits"], d["sparsity"], blocks, d["kd_epochs"], d["seed"])]
        return d

    fig = go.Figure()

    def pts(d, name, **kw):
        if len(d):
            d = with_what(d)
            fig.add_trace(go.Scatter(x=d[x].astype(float), y=d["accuracy"].astype(float), name=name,
                                     customdata=d[cols].to_numpy(), hovertemplate=hover, **kw))

    if len(done):
        pts(done[~feas], "violates constraints", mode="markers", marker={"color": "#c8c8c8", "symbol": "x", "size": 7})
        rest = done[feas & ~done["number"].isin(on2)]
        pts(rest[rest["number"].isin(on3)], "on the 3-objective front (table)", mode="markers",
            marker={"color": "#e8a09a", "size": 9, "symbol": "diamond", "line": {"color": "#c0392b", "width": 1}})
        pts(rest[~rest["number"].isin(on3)], "meets constraints", mode="markers",
            marker={"color": "#7fa7cf", "size": 8, "opacity": 0.8})
    if len(stairs):
        pts(stairs, f"front: accuracy vs {'speedup' if x == 'speedup' else 'size'}", mode="lines+markers",
            line={"color": "#c0392b", "width": 2, "shape": "vh" if x_dir == "maximize" else "hv"},
            marker={"color": "#c0392b", "size": 10, "symbol": "diamond"})
    seeds = seed_trials(done)
    if len(seeds):
        pts(seeds, "seed settings (ringed)", mode="markers",
            marker={"color": "rgba(0,0,0,0)", "size": 18, "line": {"color": "#111", "width": 2}})
    bx = 1.0 if x == "speedup" else baseline["size_mb"]
    fig.add_trace(go.Scatter(x=[bx], y=[baseline["accuracy"]], mode="markers+text", name="fp32 baseline",
                             text=["fp32"], textposition="top center", hovertemplate="fp32 baseline<extra></extra>",
                             marker={"symbol": "star", "size": 17, "color": "#111"}))
    ref = baseline.get("int8_reference") or {}
    if ref.get(x) is not None and ref.get("accuracy") is not None:
        fig.add_trace(go.Scatter(
            x=[ref[x]], y=[ref["accuracy"]], mode="markers+text", name="int8 alone (ORT static)", text=["int8 alone"],
            textposition="bottom center", marker={"symbol": "square", "size": 13, "color": "#e67e22"},
            hovertemplate=(f"int8 alone (ORT static)<br>accuracy {fmt_acc(ref['accuracy'], pct)}<br>"
                           f"{fmt_speedup(ref['speedup'])}, {fmt_mb(ref['size_mb'])}<extra></extra>")))
        better = "faster" if x_dir == "maximize" else "smaller"
        fig.add_vline(x=ref[x], line={"color": "#e67e22", "dash": "dot", "width": 1.5})
        # annotations on a log axis take log10 of the position (shapes take the value itself)
        fig.add_annotation(x=math.log10(ref[x]), y=1, xref="x", yref="paper", yanchor="bottom", showarrow=False,
                           xanchor="left" if x_dir == "maximize" else "right", font={"size": 10, "color": "#b35900"},
                           text=f"{better} than int8 alone {'→' if x_dir == 'maximize' else '←'}")
    drop = spec.constraints.max_accuracy_drop
    ys = [float(baseline["accuracy"])]
    if drop is not None and pct:
        limit = baseline["accuracy"] - drop / 100.0
        ys.append(limit)
        fig.add_hline(y=limit, line={"color": "#888", "dash": "dash", "width": 1},
                      annotation_text=f"accuracy limit (-{drop:g} pp)", annotation_position="bottom left",
                      annotation_font={"size": 10, "color": "#555"})
    if len(done):
        ys += done[feas]["accuracy"].astype(float).tolist()
        if drop is not None and pct:  # trials that missed the limit by a little are worth seeing
            near = done[~feas]["accuracy"].astype(float)
            ys += near[near >= baseline["accuracy"] - 3 * drop / 100.0].tolist()
    if ref.get("accuracy") is not None:
        ys.append(float(ref["accuracy"]))
    lo, hi = min(ys), max(ys)
    pad = max((hi - lo) * 0.12, 0.002 if pct else abs(hi) * 0.002 + 1e-9)
    hidden = int((done["accuracy"].astype(float) < lo - pad).sum()) if len(done) else 0
    xs = [bx] + (done[x].astype(float).tolist() if len(done) else []) + ([ref[x]] if ref.get(x) else [])
    ticks = _log_ticks([v for v in xs if v and v > 0])
    title = ("accuracy vs speedup (higher and further right is better)" if x == "speedup"
             else "accuracy vs model size (higher and further left is better)")
    fig.update_layout(
        title={"text": title, "font": {"size": 14}}, template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 45},
        xaxis={"title": "speedup vs fp32 baseline (x, log scale)" if x == "speedup" else "ONNX file size (MB, log scale)",
               "type": "log", "tickvals": ticks, "ticktext": [f"{v:g}x" if x == "speedup" else f"{v:g}" for v in ticks]},
        yaxis={"title": "accuracy" if pct else "metric", "tickformat": ".1%" if pct else None, "range": [lo - pad, hi + pad]},
        legend={"orientation": "h", "yanchor": "top", "y": -0.16, "x": 0, "font": {"size": 10}})
    if hidden:
        fig.add_annotation(text=f"{hidden} trial(s) below the plotted range (see the trials table)", showarrow=False,
                           xref="paper", yref="paper", x=1, y=0, xanchor="right", yanchor="bottom",
                           font={"size": 10, "color": "#777"})
    return fig


def _log_ticks(values: list[float]) -> list[float]:
    """1-2-5 tick values spanning ``values`` (a log axis labelled with whole numbers, not minor digits)."""
    if not values:
        return []
    lo, hi = min(values) / 1.3, max(values) * 1.3
    out = []
    steps = (1, 2, 5) if hi / lo > 10 else (1, 1.5, 2, 3, 4, 5, 7)  # within a decade: more ticks
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        out += [float(f"{m * 10.0 ** e:.6g}") for m in steps if lo <= m * 10.0 ** e <= hi]
    return out


# ---------------------------------------------------------------------------- per front model
def _layers_fig(card: dict):
    import plotly.graph_objects as go

    layers = card.get("layers")
    if not isinstance(layers, list) or not layers:
        return None
    fig = go.Figure()
    names = [f"{i}: {r['module']}" for i, r in enumerate(layers)]
    for prec, colour in PRECISION_COLOURS.items():
        idx = [i for i, r in enumerate(layers) if r["precision"] == prec]
        if not idx:
            continue
        fig.add_trace(go.Bar(
            x=[names[i] for i in idx], y=[100 * (layers[i]["kept"] if layers[i]["kept"] is not None else 1.0) for i in idx],
            name=prec, marker={"color": colour}, showlegend=True, textposition="inside", insidetextanchor="end",
            text=[f"{layers[i]['out_channels']}/{layers[i]['baseline_channels'] or '?'}" for i in idx],
            customdata=[[layers[i]["out_channels"], layers[i]["baseline_channels"] or "?", layers[i]["op"]] for i in idx],
            hovertemplate="%{x}<br>%{customdata[2]}: %{customdata[0]} of %{customdata[1]} output channels kept (%{y:.0f}%)"
                          "<extra>" + prec + "</extra>"))
    fig.update_layout(template="plotly_white", barmode="overlay", margin={"l": 50, "r": 10, "t": 30, "b": 10},
                      title={"text": "output channels kept per layer (%), coloured by precision", "font": {"size": 12}},
                      yaxis={"range": [0, 105], "title": "kept %"},
                      xaxis={"categoryorder": "array", "categoryarray": names, "showticklabels": len(names) <= 24,
                             "tickangle": -45, "tickfont": {"size": 9}},
                      legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"})
    return fig


def _preprocessing(run_dir: Path, model: Path, meta: dict) -> dict:
    """What the model expects, from (in order) the ONNX file's metadata, run.yaml's preprocessing, run.yaml's data."""
    pre: dict = {}
    try:
        import onnx

        m = onnx.load(str(model), load_external_data=False)
        for p in m.metadata_props:
            if p.key == "autocompress.preprocessing":
                pre = json.loads(p.value)
        inp = m.graph.input[0]
        dims = [d.dim_value if d.dim_value > 0 else (d.dim_param or "N") for d in inp.type.tensor_type.shape.dim]
        pre = {**pre, "input_name": inp.name, "onnx_shape": dims}
    except Exception:
        pass
    for src in (meta.get("preprocessing") or {}, meta.get("data") or {}):
        for k in ("mean", "std", "input_shape", "class_names", "scale", "resize", "channel_order", "source"):
            if k not in pre and src.get(k) not in (None, [], ""):
                pre[k] = src[k]
    return pre


def snippet(run_dir: Path, model_rel: str, meta: dict) -> str:
    """A copy-paste script that runs the model with ONNX Runtime and the run's preprocessing."""
    model = (run_dir / model_rel).resolve()
    pre = _preprocessing(run_dir, model, meta)
    c, h, w = (list(pre.get("input_shape") or [])[-3:] or [3, 32, 32])
    name = pre.get("input_name", "input")
    batch = (pre.get("onnx_shape") or ["N"])[0]
    n = batch if isinstance(batch, int) else 1
    lines = ["import numpy as np", "import onnxruntime as ort", "",
             f'session = ort.InferenceSession("{model}", providers=["CPUExecutionProvider"])']
    mean, std = pre.get("mean"), pre.get("std")
    if mean and std:
        r = lambda v: ", ".join(f"{float(x):.6g}" for x in v)  # noqa: E731
        lines += [f"MEAN = np.array([{r(mean)}], np.float32).reshape(1, {len(mean)}, 1, 1)",
                  f"STD = np.array([{r(std)}], np.float32).reshape(1, {len(std)}, 1, 1)"]
    else:
        lines += ["MEAN, STD = 0.0, 1.0  # this run recorded no normalisation: feed inputs as in training"]
    classes = pre.get("class_names") or []
    if classes and len(classes) <= 100:
        lines.append(f"CLASSES = {json.dumps([str(x) for x in classes])}")
    lines += ["", "", "def preprocess(pixels):",
              f'    """pixels: N x {c} x {h} x {w} ({pre.get("channel_order", "RGB")}), uint8 0..255 or float 0..1 -> the model\'s input."""',
              "    x = np.asarray(pixels)",
              "    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)",
              "    return (x - MEAN) / STD", "", ""]
    if str(pre.get("source", "")) == "folder" or pre.get("resize"):
        lines += ["# an image file, read as the run read its images (RGB, bilinear resize):",
                  "# from PIL import Image",
                  f'# pixels = np.asarray(Image.open("photo.png").convert("RGB").resize(({w}, {h}), Image.BILINEAR)).transpose(2, 0, 1)[None]']
    lines += [f"pixels = np.random.rand({n}, {c}, {h}, {w}).astype(np.float32)  # replace with your images" +
              (f" (this model takes batches of {n})" if isinstance(batch, int) and batch > 1 else ""),
              f'logits = session.run(None, {{"{name}": preprocess(pixels)}})[0]',
              "print([CLASSES[i] for i in logits.argmax(1)])" if classes and len(classes) <= 100 else "print(logits.argmax(1))"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- time and hypervolume
STAGES = ("prune", "distill", "export", "quantize", "evaluate", "latency")


def _stage_seconds(df: pd.DataFrame) -> pd.DataFrame:
    """Seconds per stage per trial (``build`` = the student stage minus its prune/distill/export parts)."""
    out = pd.DataFrame({"number": df["number"].astype(int)})
    for s in ("student", *STAGES):
        out[s] = df[f"time.{s}"].astype(float).fillna(0.0) if f"time.{s}" in df else 0.0
    out["build"] = (out["student"] - out[["prune", "distill", "export"]].sum(axis=1)).clip(lower=0.0)
    return out.drop(columns=["student"])


def _time_figs(df: pd.DataFrame, baseline: dict, meta: dict, run_dir: Path):
    import plotly.graph_objects as go

    setup = meta.get("setup_s") or {}
    st = _stage_seconds(df) if len(df) else pd.DataFrame(columns=["number", *STAGES, "build"])
    items = []
    source = str(setup.get("teacher_source", ""))
    if source == "trained":
        items.append(("teacher training", setup.get("teacher", 0.0)))
    elif setup:
        how = "from cache" if source.startswith("cache") else source.split(":")[0] or "loaded"
        once = f"; trained once in {setup['teacher_train']:.0f} s" if setup.get("teacher_train") else ""
        items.append((f"teacher ({how}{once})", setup.get("teacher", 0.0)))
    items.append(("baseline: export, accuracy, latency", baseline.get("seconds") or 0.0))
    ref = baseline.get("int8_reference") or {}
    if ref:
        items.append(("int8 alone (reference)", ref.get("seconds") or 0.0))
    if "teacher_logits" in setup:
        items.append(("teacher logits", setup["teacher_logits"]))
    for s in ("build", *STAGES):
        items.append((f"trials: {s}", float(st[s].sum()) if len(st) else 0.0))
    timing = {}
    try:
        timing = json.loads((run_dir / "timing.json").read_text())
    except (OSError, ValueError):
        pass
    if timing:
        items.append(("engine overhead (asks, storage, logging)", timing.get("overhead_s", 0.0)))
    total = sum(v for _, v in items)
    bar = go.Figure(go.Bar(
        y=[k for k, _ in items][::-1], x=[v for _, v in items][::-1], orientation="h",
        marker={"color": "#4e79a7"}, text=[f"{v:.0f} s ({v / total:.0%})" if total else "" for _, v in items][::-1],
        textposition="auto", hovertemplate="%{y}: %{x:.1f} s<extra></extra>"))
    bar.update_layout(template="plotly_white", title={"text": f"where the time went ({total / 60:.1f} min counted)", "font": {"size": 14}},
                      xaxis={"title": "seconds"}, margin={"l": 10, "r": 10, "t": 40, "b": 40})
    per = go.Figure()
    for s in ("build", *STAGES):
        if len(st) and st[s].sum() > 0:
            per.add_trace(go.Bar(x=st["number"], y=st[s], name=s, marker={"color": STAGE_COLOURS[s]},
                                 hovertemplate="trial %{x}: " + s + " %{y:.1f} s<extra></extra>"))
    per.update_layout(template="plotly_white", barmode="stack", title={"text": "seconds per trial, by stage", "font": {"size": 14}},
                      xaxis={"title": "trial"}, yaxis={"title": "seconds"}, margin={"l": 50, "r": 10, "t": 40, "b": 40},
                      legend={"orientation": "h", "y": -0.22, "x": 0})
    return bar, per


def _hv_fig(df, spec: RunSpec, baseline: dict):
    import plotly.graph_objects as go

    hv = hypervolume_history(df, list(spec.objectives), spec.constraints, baseline)
    fig = go.Figure(go.Scatter(x=hv["number"], y=hv["hypervolume"], mode="lines+markers", line={"shape": "hv"},
                               name="hypervolume", hovertemplate="after trial %{x}: %{y:.4g}<extra></extra>"))
    fig.update_layout(template="plotly_white", title={"text": "hypervolume of the feasible front after each trial", "font": {"size": 14}},
                      xaxis={"title": "trial"}, yaxis={"title": "hypervolume"}, margin={"l": 60, "r": 10, "t": 40, "b": 40})
    return fig


# ---------------------------------------------------------------------------- sensitivity of the teacher
def _sensitivity_section(run_dir: Path, meta: dict) -> str:
    """Accuracy of each stage pruned alone vs ratio, and each layer's int8 logit error (autocompress/sensitivity.py)."""
    import plotly.graph_objects as go

    from .sensitivity import int8_ranking, read_for_report

    rec = read_for_report(run_dir, meta)
    if rec is None:
        return ""
    figs = []  # plotly.js is already on the page (the first trade-off plot carries it)
    base = rec.get("base_accuracy")
    if rec.get("stages") and base is not None:
        fig = go.Figure()
        for stage, v in rec["stages"].items():
            xs = [0.0] + list(rec["ratios"][: len(v["accuracy"])])
            fig.add_trace(go.Scatter(
                x=[100 * x for x in xs], y=[100 * a for a in [base, *v["accuracy"]]], mode="lines+markers", name=stage,
                customdata=[0.0, *[100 * m for m in v["macs_removed"]]],
                hovertemplate=stage + " pruned %{x:.0f}%: %{y:.1f}% top-1, %{customdata:.0f}% of MACs removed<extra></extra>"))
        fig.update_layout(template="plotly_white", margin={"l": 50, "r": 10, "t": 40, "b": 40},
                          title={"text": "each stage pruned alone (BatchNorm recalibrated, no distillation)", "font": {"size": 12}},
                          xaxis={"title": "channels removed in the stage (%)"}, yaxis={"title": "top-1 (%)", "range": [0, 101]})
        figs.append(_plot(fig, "sens-prune", False, 320, modebar=False))
    ranking = int8_ranking(rec)
    if ranking:
        layers = rec["int8"]["layers"]
        k = int((meta.get("sensitivity") or {}).get("keep_fp32_max") or 0)
        order = [n for n in layers if n in ranking]  # network order
        fig = go.Figure(go.Bar(
            x=[f"{i}: {n}" for i, n in enumerate(order)], y=[layers[n]["error"] for n in order],
            marker={"color": ["#c0392b" if n in ranking[:k] else PRECISION_COLOURS["int8"] for n in order]},
            customdata=[100 * layers[n]["accuracy"] for n in order],
            hovertemplate="%{x}: int8 alone adds %{y:.2e} relative logit error (top-1 %{customdata:.1f}%)<extra></extra>"))
        fig.update_layout(template="plotly_white", margin={"l": 60, "r": 10, "t": 40, "b": 10},
                          title={"text": "int8 sensitivity: each layer quantized alone" + (f" (red: the {k} that bits.keep_fp32 may keep in fp32)" if k else ""),
                                 "font": {"size": 12}},
                          yaxis={"title": "logit error", "type": "log"},
                          xaxis={"showticklabels": len(order) <= 30, "tickangle": -45, "tickfont": {"size": 9}})
        figs.append(_plot(fig, "sens-int8", False, 320, modebar=False))
    s = meta.get("sensitivity") or {}
    secs = rec.get("seconds", {})
    smp = rec.get("samples", {})
    added = ", ".join(s.get("seeds_added") or []) or "none"
    all8 = (rec.get("int8") or {}).get("all")
    note = (f"Measured once on the teacher in {secs.get('total', 0):.0f} s ({smp.get('val', '?')} validation samples, "
            f"BatchNorm re-estimated on {smp.get('calib', '?')} training samples, criterion {_e(rec.get('criterion'))}; "
            f"int8 points on {smp.get('int8', '?')} samples)"
            + (f"; everything int8: relative logit error {all8['error']:.2e}, top-1 {100 * all8['accuracy']:.1f}%" if all8 else "")
            + f". Seeds it added: {_e(added)}.")
    return (f"<h2>Sensitivity of the teacher</h2><div class='row'>{''.join(f'<div>{f}</div>' for f in figs)}</div>"
            f"<p class='muted'>{note}</p>")


# ---------------------------------------------------------------------------- the page
def _cards(df, front, spec: RunSpec, baseline: dict, timed: dict | None = None) -> tuple[str, str]:
    """Headline cards and a one-sentence verdict."""
    pct = percent_metric(spec)
    best = chosen(front, spec.constraints) if len(front) else None
    ref = baseline.get("int8_reference") or {}
    seeds = seed_trials(df[df["status"] == "COMPLETE"]) if len(df) else df
    seeds_ok = seeds[feasible_mask(seeds, spec.constraints)] if len(seeds) else seeds
    cons = spec.constraints.max_accuracy_drop
    within = f"within {cons:g} pp" if cons is not None else "meeting the constraints"

    def card(k, v, s, cls=""):
        return f"<div class='card {cls}'><div class='k'>{_e(k)}</div><div class='v'>{_e(v)}</div><div class='s'>{_e(s)}</div></div>"

    cards = []
    if best is not None:
        cards.append(card(f"fastest {within}", fmt_speedup(best["speedup"]) + " faster",
                          f"trial {int(best['number'])}: {fmt_acc(best['accuracy'], pct)} (drop {fmt_drop(best['accuracy_drop'])}), "
                          f"{fmt_mb(best['size_mb'])}", "best"))
        small = front.sort_values(["size_mb", "number"]).iloc[0]
        cards.append(card(f"smallest {within}", fmt_mb(small["size_mb"]),
                          f"trial {int(small['number'])}: {baseline['size_mb'] / float(small['size_mb']):.1f}x smaller, "
                          f"{fmt_speedup(small['speedup'])}, drop {fmt_drop(small['accuracy_drop'])}", "best"))
    else:
        cards.append(card(f"fastest {within}", "none yet", "no trial meets the constraints (see the trials below)"))
    if ref.get("speedup"):
        cards.append(card("int8 alone (ORT static)", fmt_speedup(ref["speedup"]) + " faster",
                          f"{fmt_acc(ref['accuracy'], pct)} (drop {fmt_drop(ref['accuracy_drop'])}), {fmt_mb(ref['size_mb'])}", "ref"))
    if len(seeds_ok):
        s = seeds_ok.sort_values(["speedup", "number"], ascending=[False, True]).iloc[0]
        cards.append(card("best seed setting", fmt_speedup(s["speedup"]) + " faster",
                          f"{s['seed']} (trial {int(s['number'])}): drop {fmt_drop(s['accuracy_drop'])}, {fmt_mb(s['size_mb'])}", "ref"))
    cards.append(card("fp32 baseline", fmt_acc(baseline["accuracy"], pct),
                      f"{baseline['latency_ms']:.3g} ms here, {fmt_mb(baseline['size_mb'])}, {baseline['params'] / 1e6:.2f} M params"))

    if best is None:
        verdict = "No trial meets the constraints yet: nothing beats the reference points below."
    else:
        parts = [f"The fastest model {within} of the fp32 baseline is <b>{_e(fmt_speedup(best['speedup']))} faster</b> "
                 f"(trial {int(best['number'])}, drop {_e(fmt_drop(best['accuracy_drop']))}, {_e(fmt_mb(best['size_mb']))})"]
        vs = against_int8(best, ref, timed)
        if vs is not None:
            parts.append(f"<b>{vs[0]:.2f}x</b> the speed of int8 alone ({_e(fmt_speedup(ref['speedup']))}; {_e(vs[1])})")
        if len(seeds_ok):
            s = seeds_ok["speedup"].astype(float).max()
            if best["seed"]:
                parts.append(f"it is itself a seed setting ({_e(best['seed'])}): the search found nothing faster")
            else:
                parts.append(f"{best['speedup'] / s:.2f}x the best seed setting ({_e(fmt_speedup(s))})")
        verdict = "; ".join(parts) + "."
    return "<div class='cards'>" + "".join(cards) + "</div>", verdict


def _retimed_note(front: pd.DataFrame, timed: dict | None) -> str:
    """The legend of the re-timed column, and why windows disagree when some did."""
    if "speedup_retimed" not in front.columns or not timed:
        return ""
    from .retiming import moved_since_search, threads_timed, why_disagree

    note = (" re-timed = the speedup measured again after the search against the baseline in several fresh "
            "processes: the median, and the range across them.")
    if not front["speedup_agree"].map(lambda v: str(v).lower() in ("true", "1")).all():
        why = why_disagree(threads_timed(timed)).strip().removeprefix("why: ")
        note += f" ? = those processes disagree by more than 5% (CV): {_e(why)}."
    moved = moved_since_search(timed)
    if moved:
        note += f" {_e(moved[0][0].upper() + moved[0][1:])}."
    return note


def write_html(run_dir: Path, df: pd.DataFrame, front: pd.DataFrame, spec: RunSpec, baseline: dict, meta: dict,
               cards: dict[int, dict] | None = None, timed: dict | None = None) -> Path:
    """``timed``: the final re-timing's models (retiming.py), for the legend of the re-timed column."""
    cards = cards or {}
    pct = percent_metric(spec)
    spec_d = meta.get("spec", {})
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    counts_txt = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"
    headline, verdict = _cards(df, front, spec, baseline, timed)
    best = chosen(front, spec.constraints) if len(front) else None

    speed = _plot(_tradeoff_fig(df, front, spec, baseline, "speedup"), "pareto-plot", True, 470)
    size = _plot(_tradeoff_fig(df, front, spec, baseline, "size_mb"), "size-plot", False, 470)
    if best is not None:
        run_it = (f"<h2>Run the chosen model: trial {int(best['number'])} ({_e(best['model'])})</h2>"
                  f"<pre>{_e(snippet(run_dir, best['model'], meta))}</pre>"
                  f"<p class='muted'>Every front model has the same snippet below; "
                  f"<code>autocompress export {_e(run_dir)} --trial {int(best['number'])} --to ship/</code> copies it with its card and recipe.</p>")
    else:
        run_it = "<h2>Run the chosen model</h2><p>No trial meets the constraints yet.</p>"

    front_tbl = _table(display_table(front, baseline, pct, model=False)) if len(front) else "<p>No feasible trial yet.</p>"
    refs_tbl = _table(reference_table(df, baseline, pct), cls_col="status")

    models = []
    for _, r in (front.sort_values(["speedup", "number"], ascending=[False, True]).iterrows() if len(front) else []):
        n = int(r["number"])
        card = cards.get(n, {})
        fig = _layers_fig(card)
        chart = _plot(fig, f"layers-{n}", False, 240, modebar=False) if fig is not None else "<p class='muted'>per-layer data unavailable (model file not on disk)</p>"
        cand = card.get("candidate", {})
        dropped = cand.get("drop") or []
        what = (f"bits {_e(r['bits'])}, mean sparsity {float(r['sparsity']):.0%}, criterion {_e(cand.get('criterion', '-'))}, "
                + (f"blocks dropped: {_e(', '.join(dropped))}, " if dropped else "")
                + (f"KD {int(r['kd_epochs'])} epochs" if int(r["kd_epochs"]) else "no distillation") + (f", seed setting <b>{_e(r['seed'])}</b>" if r["seed"] else "")
                + (f", <b>finishing of trial {int(r['finish_of'])}</b> (its candidate distilled again with a larger KD budget)"
                   if pd.notna(r.get("finish_of")) else "")
                + (f", <b>mutation of trial {int(r['parent'])}</b> (one stage pruned further, or one more block dropped, than "
                   "in that model, which met the constraints)" if pd.notna(r.get("parent")) else ""))
        models.append(
            f"<h3>trial {n}: {_e(fmt_speedup(r['speedup']))} faster, {_e(fmt_acc(r['accuracy'], pct))} "
            f"(drop {_e(fmt_drop(r['accuracy_drop']))}), {_e(fmt_mb(r['size_mb']))}</h3><p class='muted'>{what}; "
            f"<code>{_e(r['model'])}</code>, card <code>models/trial_{n}.json</code>, recipe <code>models/trial_{n}.recipe.yaml</code></p>"
            f"{chart}<details><summary>run it with ONNX Runtime</summary><pre>{_e(snippet(run_dir, r['model'], meta))}</pre></details>")

    not_done = df[df["status"] != "COMPLETE"] if len(df) else df
    problems = pd.DataFrame({"trial": not_done["number"].astype(int), "status": not_done["status"],
                             "stage": not_done["stage"].fillna("-"), "reason": not_done["message"].fillna("-"),
                             "after (s)": not_done["duration_s"].map(lambda v: f"{float(v):.0f}"),
                             "seed": not_done["seed"]}) if len(not_done) else pd.DataFrame()
    all_rows = display_table(df.sort_values("number"), baseline, pct, model=False) if len(df) else pd.DataFrame()
    if len(all_rows):
        srt = df.sort_values("number")
        all_rows.insert(1, "status", srt["status"].tolist())
        all_rows["time (s)"] = [f"{float(v):.0f}" for v in srt["duration_s"]]
        all_rows["stage: reason"] = [f"{s}: {m}" if st != "COMPLETE" else "" for st, s, m in zip(srt["status"], srt["stage"], srt["message"])]
    bar, per = _time_figs(df, baseline, meta, run_dir)
    cons = ", ".join(f"{k} {v}" for k, v in spec.constraints.model_dump(exclude_none=True).items()) or "none"

    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>autocompress report: {_e(run_dir.name)}</title>
<style>{CSS}</style></head><body>
<h1>autocompress: {_e(spec_d.get('model'))} on {_e(spec_d.get('data'))} (profile {_e(spec_d.get('profile'))})</h1>
<p class="muted">run <code>{_e(run_dir)}</code>; space {_e(spec_d.get('space'))}, sampler {_e(spec_d.get('sampler'))}, seed {_e(spec_d.get('seed'))};
trials: {_e(counts_txt)}; constraints: {_e(cons)}. Speedups are ratios to the fp32 baseline measured in the same process, interleaved;
absolute times hold only on the machine they were taken on.</p>
<p class="verdict">{verdict}</p>
{headline}
<div class="row"><div>{speed}</div><div>{size}</div></div>
{run_it}
<h2>Pareto front (accuracy, speedup, size)</h2>{front_tbl}
<p class="muted">drop = baseline accuracy minus the model's, in percentage points (negative: more accurate than the baseline);
sparsity = mean share of channels removed; smaller = baseline file size / model file size; the files are
<code>models/trial_N.onnx</code> with their cards (<code>.json</code>) and recipes (<code>.recipe.yaml</code>).{_retimed_note(front, timed)}</p>
<h2>Reference points (measured in this run)</h2>{refs_tbl}
<h2>Front models: what was done to each layer</h2>{''.join(models) or "<p>No feasible trial yet.</p>"}
<h2>Trials that did not complete ({len(not_done)} of {len(df)})</h2>{_table(problems, cls_col="status")}
<details><summary>all {len(df)} trials</summary>{_table(all_rows, cls_col="status")}</details>
{_sensitivity_section(run_dir, meta)}
<h2>Where the time went</h2>
<div class="row"><div>{_plot(bar, "time-plot", False, 360)}</div><div>{_plot(per, "stage-plot", False, 360)}</div></div>
{_plot(_hv_fig(df, spec, baseline), "hv-plot", False, 320)}
<p class="muted">Open the study in Optuna's dashboard: <code>pip install optuna-dashboard; optuna-dashboard {_e(spec_d.get('storage') or 'sqlite:///study.db')}</code></p>
</body></html>"""
    out = run_dir / "report.html"
    out.write_text(body)
    return out
