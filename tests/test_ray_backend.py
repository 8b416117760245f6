"""``--backend ray``: the same tiny search on a real Ray cluster (processes on this machine, no mocks).

1. a two-node cluster started with ``ray start`` (the second node carries the resource ``hw-test``):
   the results contract holds and every latency measurement ran on the second node;
2. a local Ray started by the engine with two trials in flight, then resumed with a larger budget.

Ray's session files go to a short private temp folder per cluster; the cluster's processes are stopped
by their process ids (those whose command line names that folder, and their descendants), never with
``ray stop``, which would kill every Ray process on the machine, other people's included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ray = pytest.importorskip("ray")

from autocompress.cli import main  # noqa: E402
from autocompress.search.ray_backend import read_placement  # noqa: E402
from conftest import TINY_CNN_SOURCE  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="cluster teardown reads /proc")

SPACE = {
    "kind": "search_space", "name": "tiny",
    "sparsity": {"granularity": "uniform", "range": {"low": 0.25, "high": 0.75, "step": 0.25}, "criterion": ["l1"]},
    "bits": {"choices": ["fp32", "int8"]},
    "distill": {"epochs": 1, "lr": 0.05},
    "seeds": [{"sparsity": 0.5, "bits": "int8"}],
}
LATENCY = {"warmup": 2, "min_rounds": 3, "max_rounds": 6, "time_cap_s": 1.0, "block_ms": 5}
PROFILE = {
    "kind": "hardware_profile", "name": "tiny-cpu", "intra_op_threads": 1, "precisions": ["fp32", "int8"],
    "int8_format": "qdq", "int8_types": "u8s8",
    # the tiny CNN's int8 alone runs about as fast as fp32: keep the spaces' int8 seeds as written (the rule that
    # runs them in fp32 where int8 does not pay, space.seeds_for_int8, has its own tests)
    "int8_seeds_min_speedup": 0, "latency": LATENCY,
}
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    (d / "models.py").write_text(TINY_CNN_SOURCE)
    (d / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (d / "profile.yaml").write_text(yaml.safe_dump(PROFILE))
    (d / "profile-hw.yaml").write_text(yaml.safe_dump({**PROFILE, "name": "tiny-hw", "ray_resource": "hw-test"}))
    (d / "cache").mkdir()
    return d


@pytest.fixture
def env(workspace, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(workspace / "cache"))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return workspace


def _args(ws, out, trials, extra=(), profile="profile.yaml"):
    return ["run", "--model", f"{ws / 'models.py'}:tiny_cnn", "--data", "digits", "--image-size", "16",
            "--space", str(ws / "space.yaml"), "--profile", str(ws / profile), "--trials", str(trials),
            "--out", str(out), "--seed", "0", "--max-accuracy-drop", "60", "--backend", "ray", *extra]


# ----------------------------------------------------------------------------- a private Ray cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of the processes visible in /proc."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(p.name)] = (ppid, cmd)
    return out


def _cluster_pids(marker: str) -> set[int]:
    """The processes whose command line names ``marker`` (our temp folder) and all their descendants."""
    procs = _procs()
    pids = {pid for pid, (_, cmd) in procs.items() if marker in cmd and pid != os.getpid()}
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in procs.items() if ppid in pids} - pids - {os.getpid()}
        grew = bool(kids)
        pids |= kids
    return pids


def _stop(pids: set[int], grace_s: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        t_end = time.time() + grace_s
        while time.time() < t_end and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)


@pytest.fixture
def ray_cluster(env, monkeypatch):
    """Head (1 CPU) + a second node (1 CPU, resource hw-test: 1) on 127.0.0.1; stopped even if the test fails."""
    tmp = tempfile.mkdtemp(prefix="acr", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 chars
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    # a loopback-only test cluster: no token auth (Ray enables it when ~/.ray/auth_token exists, and then a
    # node joining by explicit address needs the token too); real clusters should keep it on (docs/cluster.md)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("TMPDIR", tmp)  # the nodes' workers keep their run folders (stage caches) in there
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--temp-dir", tmp, "--disable-usage-stats", "--node-ip-address", "127.0.0.1", "--num-cpus", "1"]
    try:
        for cmd in ([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
                    [RAY, "start", "--address", address, "--resources", json.dumps({"hw-test": 1}), *common]):
            done = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(_cluster_pids(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


def _node_with(address: str, resource: str) -> tuple[str, int]:
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        return next(n["NodeID"] for n in nodes if resource in n["Resources"]), len(nodes)
    finally:
        ray.shutdown()


def _check_contract(out: Path, n: int) -> pd.DataFrame:
    df = pd.read_csv(out / "trials.csv")
    assert len(df) == n and df["number"].is_unique
    done = df[df["status"] == "COMPLETE"]
    assert len(done) >= 1 and (done["speedup"] > 0).all() and (done["latency_ms"] > 0).all()
    for m in done["model"]:
        assert (out / m).is_file() and (out / m).stat().st_size > 0  # shipped back as bytes by the driver
    front = pd.read_csv(out / "pareto.csv")
    assert len(front) >= 1 and set(front["number"]) <= set(done["number"])
    for k in front["number"]:
        assert (out / "models" / f"trial_{k}.onnx").is_file()
    assert (out / "report.html").is_file() and (out / "trials.jsonl").is_file()
    return df


# ----------------------------------------------------------------------------- tests
def test_cluster_runs_trials_and_measures_latency_only_on_the_resource_node(env, ray_cluster, tmp_path):
    out = tmp_path / "run"
    assert main(_args(env, out, 3, ["--address", ray_cluster, "--workers", "2"], profile="profile-hw.yaml")) == 0
    df = _check_contract(out, 3)
    hw_node, n_nodes = _node_with(ray_cluster, "hw-test")
    assert n_nodes == 2
    rows = read_placement(out)
    measured = set(df[df["status"] == "COMPLETE"]["number"])
    assert {r["trial"] for r in rows} == set(df["number"])
    assert measured and {r["node"] for r in rows if r["trial"] in measured} == {hw_node}
    assert all(r["trial_node"] for r in rows)


def test_local_ray_two_workers_then_resume(env, tmp_path, monkeypatch):
    tmp = tempfile.mkdtemp(prefix="acr", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    monkeypatch.setenv("TMPDIR", tmp)
    try:
        out = tmp_path / "run"
        assert main(_args(env, out, 3, ["--workers", "2"])) == 0
        df = _check_contract(out, 3)
        assert ray.is_initialized() is False  # the engine shut down the Ray it started
        rows = read_placement(out)
        assert len(rows) == 3 and all(r["node"] for r in rows)

        assert main(["resume", str(out), "--trials", "5"]) == 0
        df2 = _check_contract(out, 5)
        first = sorted(df["number"])
        assert sorted(df2["number"])[:3] == first
        old = df.set_index("number").loc[first, "accuracy"].fillna(-1)
        assert (df2.set_index("number").loc[first, "accuracy"].fillna(-1) == old).all()
        lines = [json.loads(x)["number"] for x in (out / "trials.jsonl").read_text().splitlines()]
        assert len(lines) == 5 and len(set(lines)) == 5  # nothing redone
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(_cluster_pids(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
