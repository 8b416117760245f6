"""Reference points measured in a real tiny run: int8 alone beside the baseline, seed trials marked; the
terminal output (plain lines without a terminal, epochs only with --verbose) and `show`."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from autocompress.cli import main
from autocompress.store import RunStore
from conftest import FAST_PROFILE, make_workspace

SPACE = {
    "kind": "search_space", "name": "tiny-seeds",
    "sparsity": {"granularity": "uniform", "range": {"low": 0.25, "high": 0.75, "step": 0.25}, "criterion": ["l1"]},
    "bits": {"choices": ["fp32", "int8"]},
    "distill": {"epochs": 1, "lr": 0.05},
    "seeds": [{"sparsity": 0.0, "bits": "int8"}, {"sparsity": 0.5, "bits": "int8"}],
}


def _snippet_reproduces_the_accuracy(page: str, out, recs) -> None:
    """The report's copy-paste snippet, fed the raw validation pixels, scores what the run recorded."""
    import html as html_lib
    import re

    import numpy as np

    from autocompress.data import load_data

    code = html_lib.unescape(re.search(r"Run the chosen model: trial (\d+).*?<pre>(.*?)</pre>", page, re.S).group(2))
    n = int(re.search(r"Run the chosen model: trial (\d+)", page).group(1))
    assert f'"{out / "models" / f"trial_{n}.onnx"}"' in code and "MEAN = np.array([" in code
    data = load_data("digits", image_size=16, seed=0)
    raw = data.val.pixels.read(np.arange(len(data.val))).numpy()  # float pixels in [0, 1], as read
    ns: dict = {"RAW": raw}
    exec(code.replace("pixels = np.random.rand", "pixels = RAW  # np.random.rand"), ns)
    acc = float((ns["logits"].argmax(1) == data.val.labels.numpy()).mean())
    assert acc == pytest.approx(recs[n].metrics.accuracy, abs=1.5 / len(raw))


def run_args(ws, out) -> list[str]:
    """`autocompress run` on the workspace's tiny CNN and its saved teacher, digits at 16 px, any accuracy."""
    return ["run", "--model", f"{ws / 'models.py'}:tiny_cnn", "--checkpoint", str(ws / "teacher.pt"), "--data", "digits",
            "--image-size", "16", "--space", str(ws / "space.yaml"), "--profile", str(ws / "profile.yaml"),
            "--out", str(out), "--seed", "0", "--max-accuracy-drop", "100"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("refs"), SPACE, FAST_PROFILE, teacher="teacher.pt")
    out = ws / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    args = run_args(ws, out)
    yield ws, out, args, mp
    mp.undo()


def test_int8_alone_is_measured_beside_the_baseline_and_seeds_are_marked(finished_run, capsys):
    ws, out, args, _ = finished_run
    assert main([*args, "--trials", "3"]) == 0
    printed = capsys.readouterr().out
    from autocompress.compress.quantize import reduce_range_for
    from autocompress.records import QuantSpec

    seven = reduce_range_for(QuantSpec())  # this CPU: x86 without VNNI -> 7-bit weights, said in the line
    assert f"int8 alone (reference, ORT static qdq u8s8{', 7-bit weights' if seven else ''})" in printed
    assert ("x86 without VNNI" in printed) == seven
    assert "epoch 1/1" not in printed  # KD epochs only with --verbose
    assert printed.count("] trial ") == 3  # one summary line per trial, with what it ran
    base = RunStore(out).read_baseline()
    ref = base["int8_reference"]
    assert (out / "models" / "int8_reference.onnx").is_file() and ref["speedup"] > 0 and ref["size_mb"] < base["size_mb"]
    recs = {r.number: r for r in RunStore(out).records()}
    # the enqueued seeds ran first, and carry their labels; the sampler's trial does not
    assert recs[0].seed == "int8 alone" and recs[1].seed == "uniform 50% + int8" and recs[2].seed is None
    # int8 alone as a seed trial is the same model through the same quantizer: the same accuracy as the reference
    assert recs[0].metrics.accuracy == pytest.approx(ref["accuracy"], abs=1e-9)
    df = pd.read_csv(out / "trials.csv")
    assert df.set_index("number").loc[1, "seed"] == "uniform 50% + int8" and "time.quantize" in df
    page = (out / "report.html").read_text()
    assert "int8 alone" in page and "uniform 50% + int8" in page and "ort.InferenceSession" in page
    _snippet_reproduces_the_accuracy(page, out, recs)
    # a front model's card says what was done to each layer, read from its ONNX file
    front = pd.read_csv(out / "pareto.csv")
    n = int(front["number"].iloc[0])
    card = json.loads((out / "models" / f"trial_{n}.json").read_text())
    layers = card["layers"]
    assert [r["op"] for r in layers] == ["Conv", "Conv", "Gemm"]
    bits = set(recs[n].candidate.bits_map().values())
    assert {r["precision"] for r in layers} == bits
    sp = recs[n].candidate.sparsity_map().get("_default", 0.0)
    assert layers[0]["baseline_channels"] == 16 and layers[0]["kept"] == pytest.approx(1 - sp, abs=0.07)
    assert layers[-1]["out_channels"] == 10 and layers[-1]["kept"] == 1.0


def test_resume_reuses_the_reference_and_verbose_prints_epochs(finished_run, capsys):
    ws, out, args, _ = finished_run
    if not (out / "baseline.json").is_file():
        pytest.skip("needs the run of the previous test")
    mtime = (out / "models" / "int8_reference.onnx").stat().st_mtime_ns
    before = RunStore(out).read_baseline()["int8_reference"]
    capsys.readouterr()
    assert main(["resume", str(out), "--trials", "5", "--verbose"]) == 0
    printed = capsys.readouterr().out
    assert "int8 alone (reference): reused" in printed
    assert RunStore(out).read_baseline()["int8_reference"] == before
    assert (out / "models" / "int8_reference.onnx").stat().st_mtime_ns == mtime
    kd = [r for r in RunStore(out).records() if r.number >= 3 and r.candidate.distill]
    assert all(f"trial {r.number}: " in printed for r in RunStore(out).records() if r.number >= 3)
    if kd:
        assert "epoch 1/1" in printed
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "int8 alone" in shown and "seed: int8 alone" in shown and "seed: uniform 50% + int8" in shown


def test_where_int8_alone_does_not_pay_the_run_seeds_in_fp32(tmp_path, monkeypatch, capsys):
    """A profile whose bar int8 alone cannot reach (1000x): the measured reference decides, in a real run; the
    sensitivity analysis then skips its int8 ranking (half its time) and sampled int8 candidates are all int8."""
    space = {**SPACE, "bits": {"choices": ["fp32", "int8"], "keep_fp32": [0, 1]},
             "sensitivity": {"enabled": True, "ratios": [0.5], "calib_samples": 16, "val_samples": 32,
                             "int8_samples": 16, "seeds": []}}
    ws = make_workspace(tmp_path, space, {**FAST_PROFILE, "int8_seeds_min_speedup": 1000}, teacher="teacher.pt")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    out = ws / "run"
    assert main(run_args(ws, out) + ["--trials", "2"]) == 0
    printed = capsys.readouterr().out
    ref = RunStore(out).read_baseline()["int8_reference"]
    assert (f"seeds: int8 alone ran {ref['speedup']:.2f}x the fp32 baseline on this target, under the profile's "
            "int8_seeds_min_speedup (1000x): int8 does not pay here, so the int8 seeds run in fp32; left out: "
            "'int8 alone' (the set-up measured it)") in printed
    recs = sorted(RunStore(out).records(), key=lambda r: r.number)
    assert recs[0].seed == "uniform 50% + fp32" and set(recs[0].candidate.bits_map().values()) == {"fp32"}
    assert [r.seed for r in recs[1:]] == [None]  # int8 alone did not run as a trial; the sampler may still pick int8
    assert f"sensitivity: int8 not ranked: int8 alone is {ref['speedup']:.2f}x the fp32 baseline here" in printed
    sens = json.loads((out / yaml.safe_load((out / "run.yaml").read_text())["sensitivity"]["file"]).read_text())
    assert sens["int8"] is None and sens["int8_skipped"]["bar"] == 1000 and sens["stages"]
    for r in recs:  # nothing ranks layers for bits.keep_fp32: an int8 candidate is int8 throughout
        assert "bits.keep_fp32" not in dict(r.candidate.params) and len(set(r.candidate.bits_map().values())) == 1


def test_an_int8_reference_near_the_bar_is_timed_again_before_it_decides(finished_run):
    import statistics

    from autocompress.config import HardwareProfile
    from autocompress.records import Baseline
    from autocompress.references import int8_speedup_for_seeds

    ws, out, args, _ = finished_run
    if not (out / "baseline.json").is_file():
        pytest.skip("needs the run of the first test")
    store = RunStore(out)
    saved = store.read_baseline()
    ref = {k: v for k, v in saved["int8_reference"].items() if k != "confirmed"}
    baseline = Baseline.from_dict(saved, path=out / "models" / "baseline.onnx")
    near = HardwareProfile(**{**FAST_PROFILE, "int8_seeds_min_speedup": ref["speedup"]})
    far = near.model_copy(update={"int8_seeds_min_speedup": 1000.0})
    shape, said = (1, 3, 16, 16), []

    def decide(r, profile, measured=True):
        return int8_speedup_for_seeds(r, store, baseline, profile, shape, seed=0, measured=measured, log=said.append)

    assert decide(ref, far) == ref["speedup"] and decide(ref, near, measured=False) == ref["speedup"] and not said
    assert decide(None, near) is None and decide({"error": "x"}, near) is None
    got = decide(ref, near)  # within 1.25x of the bar: two more fresh processes, the median of the three (or more)
    conf = store.read_baseline()["int8_reference"]["confirmed"]
    assert got == conf["speedup"] == statistics.median(conf["windows"]) and conf["windows"][0] == ref["speedup"]
    assert len(conf["windows"]) >= 3 and len(said) == 1 and said[0].startswith(f"int8 alone: {ref['speedup']:.2f}x is near")
    # stored beside the reference: a resume decides from the same figure without timing again
    assert decide(store.read_baseline()["int8_reference"], near) == got and len(said) == 1


def test_a_budget_that_ends_before_the_seeds_says_so(tmp_path, monkeypatch, capsys):
    """One trial for two seeds: the run says the search proper never started, which seed did not run, and how to
    go on; the resume it names runs the seed left and then the sampler."""
    ws = make_workspace(tmp_path, SPACE, FAST_PROFILE, teacher="teacher.pt")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    out = ws / "run"
    assert main(run_args(ws, out) + ["--trials", "1"]) == 0
    printed = capsys.readouterr().out
    assert ("the budget ended before the space's seeds did: 1 seed(s) ran, 1 did not ('uniform 50% + int8'); the "
            f"search proper (the sampler) starts after them, so every model of this run is a seed: continue with "
            f"`autocompress resume {out} --trials 4` "
            "(every seed, and as many trials again for the search)") in printed
    # and the summary at the end lists it beside the seed that ran
    assert "seed int8 alone (trial 0): " in printed
    assert printed.rstrip().count("seed uniform 50% + int8: not run (the budget ended before it)") == 1
    # a budget that ends just as the last seed does says the same of the search proper
    assert main(["resume", str(out), "--trials", "2"]) == 0
    printed = capsys.readouterr().out
    assert ("the budget ended as the space's seeds did: all 2 seed(s) ran and the search proper (the sampler) did not "
            f"start, so every model of this run is a seed: continue with `autocompress resume {out} --trials 4`") in printed
    assert "before the space's seeds did" not in printed and "not run (the budget ended" not in printed
    assert main(["resume", str(out), "--trials", "3"]) == 0
    printed = capsys.readouterr().out
    assert "the space's seeds did" not in printed and "not run (the budget ended" not in printed
    recs = sorted(RunStore(out).records(), key=lambda r: r.number)
    assert [r.seed for r in recs] == ["int8 alone", "uniform 50% + int8", None]
