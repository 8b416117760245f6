"""Concurrency: one `autocompress run` on a shared storage plus N `autocompress worker` processes on the
same study. No trial is lost or duplicated, the budget is met exactly, and the front rebuilt by
`autocompress report` equals the one computed from the union of the processes' own records.

Storages: an Optuna journal file and SQLite (default run), PostgreSQL (slow; started locally from
Debian's postgresql package when it is installed, else skipped saying why).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import FAST_PROFILE, make_workspace

SPACE = {
    "kind": "search_space", "name": "tiny",
    "sparsity": {"granularity": "uniform", "range": {"low": 0.1, "high": 0.9, "step": 0.05}, "criterion": ["l1"]},
    "bits": {"choices": ["fp32", "int8"]},
    "distill": {"epochs": 1, "lr": 0.05},
}
PROFILE = FAST_PROFILE
STUDY = "concurrency-study"
# Every process (the run and each worker) enters its search loop only once all of them have reached it, so that
# all compete for the budget: a worker still computing its set-up (int8 reference, teacher logits) after its
# baseline is written once lost all six trials to a fast run (CI, 2026-12-04).
CHILD = """
import os, sys, time
from pathlib import Path
import autocompress.engine as engine

real = engine.search

def search(*a, **k):
    ready = Path(os.environ["READY_DIR"])
    (ready / str(os.getpid())).touch()
    end = time.time() + 240
    while time.time() < end and len(list(ready.iterdir())) < int(os.environ["PARTIES"]):
        time.sleep(0.05)
    return real(*a, **k)

engine.search = search
from autocompress.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = make_workspace(tmp_path_factory.mktemp("conc"), SPACE, PROFILE, teacher="teacher.pt")
    (d / "child.py").write_text(CHILD)
    return d


def _env(ws, ready: Path, parties: int):
    return {**os.environ, "AUTOCOMPRESS_CACHE": str(ws / "cache"), "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "READY_DIR": str(ready), "PARTIES": str(parties)}


def _study_ready(url: str) -> bool:
    import optuna

    from autocompress.search.optuna_backend import open_storage

    try:
        st = optuna.load_study(study_name=STUDY, storage=open_storage(url, heartbeat=False))
    except Exception:
        return False
    return bool(st.user_attrs.get("run_spec"))


def _records(folder: Path) -> list[dict]:
    p = folder / "trials.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


def run_shared(ws: Path, tmp: Path, url: str, n_workers: int, budget: int):
    out = tmp / "run"
    workers = [tmp / f"w{i}" for i in range(n_workers)]
    ready = tmp / "ready"
    ready.mkdir()
    env = _env(ws, ready, parties=1 + n_workers)
    procs = [subprocess.Popen(
        [sys.executable, str(ws / "child.py"), "run", "--model", f"{ws / 'models.py'}:tiny_cnn", "--checkpoint", str(ws / "teacher.pt"), "--data", "digits",
             "--image-size", "16", "--space", str(ws / "space.yaml"), "--profile", str(ws / "profile.yaml"),
             "--trials", str(budget), "--out", str(out), "--seed", "0", "--max-accuracy-drop", "90",
             "--storage", url, "--study", STUDY, "--sampler", "random"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env)]
    deadline = time.time() + 240
    while not _study_ready(url):
        assert procs[0].poll() is None, procs[0].communicate()
        assert time.time() < deadline, "the study never appeared"
        time.sleep(0.2)
    for w in workers:
        procs.append(subprocess.Popen([sys.executable, str(ws / "child.py"), "worker", "--storage", url, "--study", STUDY,
                                       "--out", str(w)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        outs = [p.communicate(timeout=480) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, (p.args, o[-2000:], e[-2000:])
        assert "Traceback" not in o + e
    return out, workers


def check_shared(out: Path, workers: list[Path], url: str, budget: int) -> None:
    import optuna

    from autocompress.cli import main
    from autocompress.config import RunSpec
    from autocompress.records import TrialRecord
    from autocompress.results import pareto_front, trials_frame
    from autocompress.search.optuna_backend import open_storage, record_of

    per_folder = {f: _records(f) for f in [out, *workers]}
    numbers = [r["number"] for recs in per_folder.values() for r in recs]
    assert len(numbers) == budget, {f.name: [r["number"] for r in v] for f, v in per_folder.items()}
    assert len(set(numbers)) == budget, sorted(numbers)  # no trial run twice
    assert sum(1 for recs in per_folder.values() if recs) >= 2  # the work was shared

    st = optuna.load_study(study_name=STUDY, storage=open_storage(url, heartbeat=False))
    in_study = sorted(t.number for t in st.get_trials(deepcopy=False)
                      if not t.user_attrs.get("discarded") and record_of(t) is not None)
    assert in_study == sorted(numbers)  # none lost between a process's log and the database

    # the union in the order the folders were read (workers first): the front must not depend on it
    union = [TrialRecord.from_dict(r) for recs in reversed(list(per_folder.values())) for r in recs]
    spec = RunSpec.model_validate(yaml.safe_load((out / "run.yaml").read_text())["spec"])
    expected = pareto_front(trials_frame(union), list(spec.objectives), spec.constraints)
    assert main(["report", str(out)]) == 0
    got = pd.read_csv(out / "pareto.csv")
    df = pd.read_csv(out / "trials.csv")
    assert sorted(df["number"]) == sorted(numbers)
    assert sorted(got["number"]) == sorted(expected["number"]) and len(got) >= 1


def test_two_workers_on_a_journal_file(ws, tmp_path):
    url = f"journal://{tmp_path / 'study.log'}"
    out, workers = run_shared(ws, tmp_path, url, n_workers=2, budget=6)
    check_shared(out, workers, url, budget=6)


@pytest.mark.slow
def test_four_workers_on_sqlite(ws, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    out, workers = run_shared(ws, tmp_path, url, n_workers=4, budget=12)
    check_shared(out, workers, url, budget=12)


@pytest.mark.slow
def test_four_workers_on_a_journal_file(ws, tmp_path):
    url = f"journal://{tmp_path / 'study.log'}"
    out, workers = run_shared(ws, tmp_path, url, n_workers=4, budget=12)
    check_shared(out, workers, url, budget=12)


# ---------------------------------------------------------------- PostgreSQL
def _pg_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


@pytest.fixture
def postgres(tmp_path):
    """A throw-away local PostgreSQL server (unix socket, its own data folder), stopped afterwards."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql); the journal/SQLite tests cover the logic")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install -e '.[postgres]')")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ac-pg-"))  # outside pytest's 0700 folders: the postgres user must reach it
    if as_user:
        shutil.chown(root, "postgres")
    data, sock = root / "data", root
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "ac"], check=True,
                   capture_output=True, timeout=120)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-p {port} -k {sock} -c listen_addresses=''", "start"], check=True, capture_output=True, timeout=120)
    try:
        subprocess.run([*as_user, str(bindir / "createdb"), "-h", str(sock), "-p", str(port), "-U", "ac", "optuna"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://ac@/optuna?host={sock}&port={port}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_on_postgresql(ws, tmp_path, postgres):
    out, workers = run_shared(ws, tmp_path, postgres, n_workers=2, budget=8)
    check_shared(out, workers, postgres, budget=8)
