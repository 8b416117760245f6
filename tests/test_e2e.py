"""End-to-end: a tiny real search through the CLI, checked against the results contract."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from autocompress.cli import main
from conftest import make_workspace

SPACE = {
    "kind": "search_space", "name": "tiny",
    "sparsity": {"granularity": "uniform", "range": {"low": 0.25, "high": 0.75, "step": 0.25}, "criterion": ["l1"]},
    "bits": {"choices": ["fp32", "int8"]},
    "distill": {"epochs": 2, "lr": 0.05},
    "seeds": [{"sparsity": 0.5, "bits": "int8"}],
}
PROFILE = {
    "kind": "hardware_profile", "name": "tiny-cpu", "intra_op_threads": 1, "precisions": ["fp32", "int8"],
    "int8_format": "qdq", "int8_types": "u8s8",
    # the tiny CNN's int8 alone runs about as fast as fp32: keep the spaces' int8 seeds as written (the rule that
    # runs them in fp32 where int8 does not pay, space.seeds_for_int8, has its own tests)
    "int8_seeds_min_speedup": 0,
    "latency": {"warmup": 2, "min_rounds": 3, "max_rounds": 6, "time_cap_s": 1.0, "block_ms": 5},
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Model file, space, profile and a teacher cache shared by the tests of this module."""
    return make_workspace(tmp_path_factory.mktemp("e2e"), SPACE, PROFILE)


def _args(ws, out, trials=4, extra=()):
    return ["run", "--model", f"{ws / 'models.py'}:tiny_cnn", "--data", "digits", "--image-size", "16",
            "--space", str(ws / "space.yaml"), "--profile", str(ws / "profile.yaml"), "--trials", str(trials),
            "--out", str(out), "--seed", "0", "--max-accuracy-drop", "60", *extra]


@pytest.fixture
def env(workspace, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(workspace / "cache"))
    return workspace


def test_run_writes_the_results_contract_and_resumes(env, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(env, out, trials=3)) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and str(out / "report.html") in printed.replace("\n", "")

    meta = yaml.safe_load((out / "run.yaml").read_text())
    assert meta["spec"]["trials"] == 3 and meta["spec"]["seed"] == 0 and meta["spec"]["sampler"] == "nsga2"
    assert "torch" in meta["versions"] and "onnxruntime" in meta["versions"] and meta["machine"]

    df = pd.read_csv(out / "trials.csv")
    for col in ["number", "status", "accuracy", "accuracy_drop", "latency_ms", "speedup", "size_mb", "params",
                "macs", "duration_s", "param.sparsity", "param.bits"]:
        assert col in df.columns, col
    assert len(df) == 3 and df["number"].is_unique and 0 in set(df["number"])
    assert (out / "trials.parquet").is_file()
    # trial 0 is the enqueued seed: 50% sparsity, int8
    t0 = df[df["number"] == 0].iloc[0]
    assert t0["param.sparsity"] == 0.5 and t0["param.bits"] == "int8"
    done = df[df["status"] == "COMPLETE"]
    assert len(done) >= 2
    base = json.loads((out / "baseline.json").read_text())
    assert (out / "models" / "baseline.onnx").is_file()
    assert (done["size_mb"] < base["size_mb"]).all()  # pruned (and int8) models are smaller files
    assert (done["speedup"] > 0).all() and (done["latency_ms"] > 0).all()

    front = pd.read_csv(out / "pareto.csv")
    assert len(front) >= 1 and set(front["number"]) <= set(done["number"])
    for n in front["number"]:
        assert (out / "models" / f"trial_{n}.onnx").is_file()
        card = json.loads((out / "models" / f"trial_{n}.json").read_text())
        assert card["trial"] == n and "sparsity" in card["candidate"] and "bits" in card["candidate"]
        assert yaml.safe_load((out / "models" / f"trial_{n}.recipe.yaml").read_text())["candidate"]
    html = (out / "report.html").read_text()
    assert "pareto-plot" in html and "hv-plot" in html and "plotly" in html.lower()

    # resume with a larger budget: the three finished trials are kept, only two new ones run
    assert main(["resume", str(out), "--trials", "5"]) == 0
    df2 = pd.read_csv(out / "trials.csv")
    first = sorted(df["number"])
    assert len(df2) == 5 and sorted(df2["number"])[:3] == first
    old = df.set_index("number").loc[first, "accuracy"]
    assert (df2.set_index("number").loc[first, "accuracy"].fillna(-1) == old.fillna(-1)).all()
    lines = [json.loads(x)["number"] for x in (out / "trials.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and len(set(lines)) == 5  # nothing redone

    # the report rebuilds offline; export writes one trial's model, card and recipe
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()
    n = int(front["number"].iloc[0])
    dest = tmp_path / "exported"
    assert main(["export", str(out), "--trial", str(n), "--to", str(dest)]) == 0
    assert (dest / f"trial_{n}.onnx").stat().st_size > 0 and (dest / f"trial_{n}.recipe.yaml").is_file()


def test_a_failing_stage_is_recorded_and_the_study_goes_on(env, tmp_path, monkeypatch):
    import autocompress.compress.quantize as q

    real = q.quantize_model
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # call 1 quantizes the int8-alone reference beside the baseline
            raise RuntimeError("injected quantizer failure")
        return real(*a, **k)

    monkeypatch.setattr(q, "quantize_model", flaky)
    out = tmp_path / "run"
    assert main(_args(env, out, trials=3)) == 0
    df = pd.read_csv(out / "trials.csv")
    assert len(df) == 3
    failed = df[df["status"] == "FAILED"]
    assert len(failed) == 1 and failed.iloc[0]["stage"] == "quantize"
    assert "injected quantizer failure" in failed.iloc[0]["message"]
    assert (df["status"] == "COMPLETE").sum() >= 1


def test_export_recreates_a_model_missing_from_disk(env, tmp_path):
    out = tmp_path / "run"
    assert main(_args(env, out, trials=1)) == 0
    df = pd.read_csv(out / "trials.csv")
    n = int(df[df["status"] == "COMPLETE"]["number"].iloc[0])
    (out / df.set_index("number").loc[n, "model"]).unlink()
    dest = tmp_path / "x"
    assert main(["export", str(out), "--trial", str(n), "--to", str(dest)]) == 0
    assert (dest / f"trial_{n}.onnx").is_file()


def test_python_api_returns_the_front_and_model_paths(env, tmp_path):
    import autocompress

    res = autocompress.compress(
        f"{env / 'models.py'}:tiny_cnn", "digits", image_size=16, space=str(env / "space.yaml"),
        profile=str(env / "profile.yaml"), trials=2, out=tmp_path / "api", constraints={"max_accuracy_drop": 60},
        log=lambda s: None,
    )
    assert isinstance(res.front, pd.DataFrame) and len(res.front) >= 1
    assert all(p.is_file() and p.suffix == ".onnx" for p in res.model_paths())
    assert res.report is not None and res.report.is_file()
    assert autocompress.pareto_front(tmp_path / "api")["number"].tolist() == res.front["number"].tolist()


def test_sampler_seed_changes_the_proposals_not_the_split_or_teacher(env, tmp_path):
    """--sampler-seed repeats a search with other proposals on the same data split, teacher and baseline."""
    runs = {}
    for s in (1, 2):
        out = tmp_path / f"s{s}"
        assert main(_args(env, out, trials=4, extra=("--sampler", "random", "--sampler-seed", str(s)))) == 0
        meta = yaml.safe_load((out / "run.yaml").read_text())
        assert meta["spec"]["sampler_seed"] == s and meta["spec"]["seed"] == 0
        runs[s] = (json.loads((out / "baseline.json").read_text()), pd.read_csv(out / "trials.csv").sort_values("number"))
    (b1, t1), (b2, t2) = runs[1], runs[2]
    assert b1["accuracy"] == b2["accuracy"] and b1["teacher_fingerprint"] == b2["teacher_fingerprint"]
    assert t1.iloc[0]["param.sparsity"] == t2.iloc[0]["param.sparsity"] == 0.5  # the seed candidate comes first in both
    cols = ["param.sparsity", "param.bits"]
    assert t1.iloc[1:][cols].values.tolist() != t2.iloc[1:][cols].values.tolist()


def test_resume_follows_a_moved_run_folder(env, tmp_path):
    """A run folder moved (or copied) elsewhere resumes in its new place, with its study, not the old path."""
    import shutil

    old = tmp_path / "old"
    assert main(_args(env, old, trials=2)) == 0
    new = tmp_path / "moved" / "run"
    new.parent.mkdir()
    shutil.move(str(old), str(new))
    assert main(["resume", str(new), "--trials", "3"]) == 0
    assert not old.exists()
    df = pd.read_csv(new / "trials.csv")
    assert len(df) == 3 and {0, 1} <= set(df["number"])  # both finished trials kept, one more run
    meta = yaml.safe_load((new / "run.yaml").read_text())
    assert meta["spec"]["out"] == str(new.resolve()) and str(new.resolve()) in meta["spec"]["storage"]
