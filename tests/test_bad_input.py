"""Bad input catalogue: every case runs the real CLI and must end with a non-zero exit code, exactly one
line on stderr that names what is wrong (``validate`` prints one line per problem), no traceback, and
nothing already on disk changed. A few cases run as a subprocess to prove the same of the real process
(no traceback or library warning reaches stderr).

Also the safety rules: checkpoints load with weights_only unless --trust-checkpoint, YAML is read with
safe_load, user code is imported only when named, and names from configs never escape the run folder.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from autocompress.cli import main
from conftest import FAST_PROFILE, TINY_CNN_SOURCE, make_workspace

SPACE = {
    "kind": "search_space", "name": "tiny",
    "sparsity": {"granularity": "uniform", "range": {"low": 0.25, "high": 0.75, "step": 0.25}, "criterion": ["l1"]},
    "bits": {"choices": ["fp32", "int8"]},
    "distill": {"epochs": 1, "lr": 0.05},
    "seeds": [{"sparsity": 0.5, "bits": "fp32"}],
}
PROFILE = FAST_PROFILE

EXTRA_MODELS = textwrap.dedent(
    """
    import torch


    def not_a_module():
        return 42


    def wrong_input():  # expects 7 features: fails on (N, 3, 16, 16)
        return nn.Sequential(nn.Flatten(), nn.Linear(7, 10))


    def five_classes():
        return tiny_cnn(num_classes=5)


    class Svd(nn.Module):  # aten::linalg_svdvals has no ONNX export
        def __init__(self):
            super().__init__()
            self.net = tiny_cnn()

        def forward(self, x):
            y = self.net(x)
            return y + torch.linalg.svdvals(y[:, :2].unsqueeze(0)).sum()


    def no_export():
        return Svd()


    class NaNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_cnn()

        def forward(self, x):
            return self.net(x) * float("nan")


    def nan_model():
        return NaNNet()
    """
)


class _Options:
    """A training script's own class pickled beside the weights (harmless, but unpickling it is not data-only)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Evil:
    """A pickle that runs code when loaded: weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Inputs for every case: models, checkpoints (no teacher training anywhere), YAMLs, data files."""
    import torch

    d = make_workspace(tmp_path_factory.mktemp("bad"), SPACE, PROFILE, models_source=TINY_CNN_SOURCE + EXTRA_MODELS)
    ns: dict = {}
    exec(compile(TINY_CNN_SOURCE + EXTRA_MODELS, str(d / "models.py"), "exec"), ns)
    torch.manual_seed(0)
    torch.save(ns["tiny_cnn"]().state_dict(), d / "good.pt")
    torch.save(ns["tiny_cnn"](num_classes=5).state_dict(), d / "five.pt")
    torch.save(ns["no_export"]().state_dict(), d / "no_export.pt")
    torch.save(ns["nan_model"]().state_dict(), d / "nan.pt")
    sd = ns["tiny_cnn"]().state_dict()
    sd["0.weight"][:] = float("nan")
    torch.save(sd, d / "nan_weights.pt")
    torch.save({"state_dict": ns["tiny_cnn"]().state_dict(), "args": _Options(lr=0.1)}, d / "custom_class.pt")
    torch.save({"state_dict": ns["tiny_cnn"]().state_dict(), "x": _Evil(d / "PWNED")}, d / "evil.pt")
    (d / "not_a_ckpt.pt").write_text("hello")

    def y(name, obj):
        (d / name).write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))

    y("malformed.yaml", "kind: search_space\nsparsity: {range: [0.1, 0.2\n")
    y("misspelled.yaml", {"kind": "search_space", "sparsity": {"rnage": [0.1, 0.2]}})
    y("wrong_type.yaml", {"kind": "search_space", "distill": {"epochs": "three"}})
    y("reversed.yaml", {"kind": "search_space", "sparsity": {"range": {"low": 0.8, "high": 0.2}}})
    y("sparsity_one.yaml", {"kind": "search_space", "sparsity": {"range": [0.5, 1.0]}})
    y("sparsity_negative.yaml", {"kind": "search_space", "sparsity": {"layers": {"re:.*": -0.1}}})
    y("empty_choices.yaml", {"kind": "search_space", "bits": {"choices": []}})
    y("alpha.yaml", {"kind": "search_space", "distill": {"alpha": 1.5}})
    y("toplevel_list.yaml", "- a\n- b\n")
    y("python_tag.yaml", f"kind: search_space\nname: !!python/object/apply:os.system ['touch {d / 'PWNED_YAML'}']\n")
    y("fp16_space.yaml", {"kind": "search_space", "bits": {"choices": ["fp16"]}})
    y("fp32_profile.yaml", {"kind": "hardware_profile", "precisions": ["fp32"]})
    y("profile_misspelled.yaml", {"kind": "hardware_profile", "precison": ["fp32"]})
    y("profile_ep.yaml", {"kind": "hardware_profile", "execution_provider": "CPU"})
    y("profile_rounds.yaml", {"kind": "hardware_profile", "latency": {"min_rounds": 9, "max_rounds": 2}})
    y("profile_threads.yaml", {"kind": "hardware_profile", "intra_op_threads": "four"})
    y("profile_predict.yaml", {"kind": "hardware_profile", "latency": {"mode": "predict"}})
    y("profile_shape.yaml", {"kind": "hardware_profile", "input_shape": [3, 32]})
    y("profile_several.yaml", {"kind": "hardware_profile", "execution_provider": "CPU", "intra_op_threads": -1,
                               "latency": {"min_rounds": 9, "max_rounds": 2}})
    y("run_misspelled.yaml", {"kind": "run", "model": "resnet18", "trails": 3})
    y("run_constraints.yaml", {"kind": "run", "constraints": {"min_speedup": -2}})

    (d / "empty_folder").mkdir()
    (d / "one_class" / "cats").mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / "one_class" / "cats" / f"{i}.png")
    (d / "no_images" / "a").mkdir(parents=True)
    (d / "no_images" / "a" / "readme.txt").write_text("x")
    np.savez(d / "missing_keys.npz", x_train=np.zeros((4, 8, 8), np.float32))
    np.savez(d / "bad_labels.npz", x_train=np.zeros((6, 8, 8), np.float32), y_train=np.array([0, 1, 0, 1, 0, 1]),
             x_val=np.zeros((2, 8, 8), np.float32), y_val=np.array([0, 7]))
    np.savez(d / "label_count.npz", x_train=np.zeros((6, 8, 8), np.float32), y_train=np.array([0, 1, 0]),
             x_val=np.zeros((2, 8, 8), np.float32), y_val=np.array([0, 1]))
    (d / "garbage.npz").write_text("not a zip archive")
    (d / "data.csv").write_text("a,b\n1,2\n")
    (d / "a_file").write_text("x")
    return d


@pytest.fixture
def env(ws, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    monkeypatch.chdir(ws)
    return ws


def run_args(ws: Path, out_dir: Path, **over) -> list[str]:
    """A valid, fast `run` command (a checkpoint, so no teacher training); ``over`` replaces or adds flags."""
    flags = {"model": f"{ws / 'models.py'}:tiny_cnn", "checkpoint": str(ws / "good.pt"), "data": "digits",
             "image-size": "16", "space": str(ws / "space.yaml"), "profile": str(ws / "profile.yaml"), "trials": "1",
             "out": str(out_dir), "seed": "0", "max-accuracy-drop": "90"}
    for k, v in over.items():
        k = k.replace("_", "-")
        if v is None:
            flags.pop(k, None)
        else:
            flags[k] = str(v)
    argv = ["run"]
    for k, v in flags.items():
        argv += [f"--{k}", v]
    return argv


@pytest.fixture(scope="module")
def finished(ws, tmp_path_factory):
    """A finished 1-trial run (its study name tries to escape the folder: it must not)."""
    os.environ["AUTOCOMPRESS_CACHE"] = str(ws / "cache")
    root = tmp_path_factory.mktemp("finished")
    out = root / "run"
    try:
        assert main(run_args(ws, out, study="../../escaped-study")) == 0
    finally:
        del os.environ["AUTOCOMPRESS_CACHE"]
    return out


def _snapshot(run_dir: Path) -> dict[str, str]:
    """Content hashes of the files a later command must not change."""
    out = {}
    for name in ("run.yaml", "trials.jsonl", "baseline.json", "study.db", "models/baseline.onnx"):
        p = run_dir / name
        out[name] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


# (id, argv builder(ws, tmp) -> argv, substrings the one stderr line must contain, exit code or None for any non-zero)
def _r(**over):
    return lambda ws, tmp: run_args(ws, tmp / "out", **{k: (v.format(ws=ws) if isinstance(v, str) else v) for k, v in over.items()})


CASES = [
    # ---- CLI flags
    ("trials-0", _r(trials=0), ["trials", "got 0", "greater than or equal to 1"], 2),
    ("trials-not-int", _r(trials="abc"), ["--trials", "integer"], 2),
    ("misspelled-flag", lambda ws, tmp: run_args(ws, tmp / "o") + ["--trails", "3"], ["--trails", "--trials"], 2),
    ("negative-accuracy-drop", _r(max_accuracy_drop=-1), ["max_accuracy_drop", "got -1"], 2),
    ("zero-speedup", _r(min_speedup=0), ["min_speedup", "greater than 0"], 2),
    ("image-size-too-small", _r(image_size=4), ["image_size", "got 4"], 2),
    ("unknown-sampler", _r(sampler="nsga22"), ["sampler", "did you mean 'nsga2'"], 2),
    ("unknown-backend", _r(backend="rai"), ["backend", "optuna", "ray"], 2),
    ("out-under-a-file", _r(out="{ws}/a_file/run"), ["not writable", "--out"], 2),
    ("out-in-proc", _r(out="/proc/autocompress-test/run"), ["not writable", "--out"], 2),
    ("run-yaml-misspelled-key", lambda ws, tmp: ["run", "--config", str(ws / "run_misspelled.yaml"), "--out", str(tmp / "o")],
     ["trails", "did you mean 'trials'"], 2),
    ("run-yaml-bad-constraint", lambda ws, tmp: ["run", "--config", str(ws / "run_constraints.yaml"), "--out", str(tmp / "o")],
     ["constraints.min_speedup", "got -2"], 2),
    ("config-file-missing", lambda ws, tmp: ["run", "--config", str(ws / "nope.yaml")], ["nope.yaml", "no such file"], 2),
    # ---- search-space YAML
    ("space-malformed", _r(space="{ws}/malformed.yaml"), ["malformed.yaml", "line 3", "malformed YAML"], 2),
    ("space-misspelled-key", _r(space="{ws}/misspelled.yaml"), ["sparsity.rnage", "did you mean 'range'"], 2),
    ("space-wrong-type", _r(space="{ws}/wrong_type.yaml"), ["distill.epochs", "got 'three'"], 2),
    ("space-range-reversed", _r(space="{ws}/reversed.yaml"), ["sparsity.range", "swap them"], 2),
    ("space-sparsity-one", _r(space="{ws}/sparsity_one.yaml"), ["sparsity 1.0 is outside [0, 1)"], 2),
    ("space-sparsity-negative", _r(space="{ws}/sparsity_negative.yaml"), ["sparsity -0.1 is outside [0, 1)"], 2),
    ("space-empty-choices", _r(space="{ws}/empty_choices.yaml"), ["bits.choices", "at least one value"], 2),
    ("space-alpha-out-of-range", _r(space="{ws}/alpha.yaml"), ["distill.alpha", "alpha 1.5 must be in [0, 1]"], 2),
    ("space-toplevel-list", _r(space="{ws}/toplevel_list.yaml"), ["toplevel_list.yaml", "mapping"], 2),
    ("space-python-tag", _r(space="{ws}/python_tag.yaml"), ["python_tag.yaml", "refused", "safe_load"], 2),
    ("space-unknown-name", _r(space="defualt"), ["unknown search space 'defualt'", "did you mean 'default'"], 2),
    ("space-file-missing", _r(space="{ws}/nope.yaml"), ["nope.yaml", "not found"], 2),
    # ---- hardware-profile YAML
    ("profile-cannot-run-precision", _r(space="{ws}/fp16_space.yaml", profile="{ws}/fp32_profile.yaml"),
     ["['fp16']", "runs only ['fp32']", "bits.choices"], 2),
    ("profile-misspelled-key", _r(profile="{ws}/profile_misspelled.yaml"), ["precison", "did you mean 'precisions'"], 2),
    ("profile-bad-ep", _r(profile="{ws}/profile_ep.yaml"), ["execution_provider", "CPUExecutionProvider"], 2),
    ("profile-rounds-reversed", _r(profile="{ws}/profile_rounds.yaml"), ["min_rounds (9) must be <= max_rounds (2)"], 2),
    ("profile-wrong-type", _r(profile="{ws}/profile_threads.yaml"), ["intra_op_threads", "got 'four'"], 2),
    ("profile-predict-without-table", _r(profile="{ws}/profile_predict.yaml"), ["lookup_table", "profile-device"], 2),
    ("profile-bad-input-shape", _r(profile="{ws}/profile_shape.yaml"), ["input_shape", "[channels, height, width]"], 2),
    ("profile-unknown-name", _r(profile="cpuu"), ["unknown hardware profile 'cpuu'", "did you mean 'cpu'"], 2),
    ("profile-device-absent", _r(profile="tensorrt-fp16"), ["TensorrtExecutionProvider", "--profile cpu"], 4),
    # ---- model entrypoints and checkpoints
    ("model-unknown-zoo-name", _r(model="resnet19", checkpoint=None), ["unknown model 'resnet19'", "did you mean 'resnet18'"], 2),
    ("model-file-missing", _r(model="{ws}/nope.py:tiny_cnn"), ["nope.py", "not found"], 2),
    ("model-function-missing", _r(model="{ws}/models.py:tiny_cnnn"), ["no function 'tiny_cnnn'", "did you mean 'tiny_cnn'"], 2),
    ("model-not-a-module", _r(model="{ws}/models.py:not_a_module"), ["returned int", "nn.Module"], 2),
    ("model-forward-fails-on-shape", _r(model="{ws}/models.py:wrong_input"), ["fails on input of shape (2, 3, 16, 16)", "channels"], 2),
    ("model-wrong-num-classes", _r(model="{ws}/models.py:five_classes", checkpoint="{ws}/five.pt"),
     ["outputs shape (2, 5)", "num_classes=10"], 2),
    ("model-cannot-export", _r(model="{ws}/models.py:no_export", checkpoint="{ws}/no_export.pt"),
     ["export", "cannot be exported to ONNX", "linalg_svdvals"], 3),
    ("model-nan-outputs", _r(model="{ws}/models.py:nan_model", checkpoint="{ws}/nan.pt"), ["non-finite", "NaN"], None),
    ("checkpoint-nan-weights", _r(checkpoint="{ws}/nan_weights.pt"), ["non-finite", "NaN"], None),
    ("checkpoint-does-not-match", _r(checkpoint="{ws}/five.pt"), ["does not match", "9.weight: checkpoint (5, 32), model (10, 32)", "this exact architecture"], 2),
    ("checkpoint-missing", _r(checkpoint="{ws}/nope.pt"), ["checkpoint", "nope.pt", "no such file"], 2),
    ("checkpoint-not-a-checkpoint", _r(checkpoint="{ws}/not_a_ckpt.pt"), ["not_a_ckpt.pt", "cannot be read"], 2),
    ("checkpoint-custom-class-refused", _r(checkpoint="{ws}/custom_class.pt"), ["refused by weights_only", "trust_checkpoint"], 2),
    ("metric-file-missing", _r(metric="{ws}/nope.py:f"), ["metric", "nope.py", "not found"], 2),
    # ---- data sources
    ("data-missing", _r(data="{ws}/nothere"), ["no such file or folder", "digits"], 2),
    ("data-empty-folder", _r(data="{ws}/empty_folder"), ["no class subfolders", "one subfolder per class"], 2),
    ("data-one-class", _r(data="{ws}/one_class"), ["only 1 class", "at least 2"], 2),
    ("data-no-images", _r(data="{ws}/no_images"), ["no images found", "extensions"], 2),
    ("data-npz-missing-keys", _r(data="{ws}/missing_keys.npz"), ["missing key(s) y_train, x_val, y_val", "numpy.savez"], 2),
    ("data-npz-label-out-of-range", _r(data="{ws}/bad_labels.npz"), ["y_val has label 7", "0..K-1"], 2),
    ("data-npz-label-count", _r(data="{ws}/label_count.npz"), ["3 labels but x_train has 6", "one label per sample"], 2),
    ("data-npz-malformed", _r(data="{ws}/garbage.npz"), ["garbage.npz", "cannot be read as .npz"], 2),
    ("data-unsupported-file", _r(data="{ws}/data.csv"), ["unsupported file type '.csv'"], 2),
    # ---- other commands
    ("resume-not-a-run", lambda ws, tmp: ["resume", str(ws / "empty_folder")], ["not an autocompress run folder"], 2),
    ("report-not-a-run", lambda ws, tmp: ["report", str(tmp / "nothing")], ["not an autocompress run folder"], 2),
    ("worker-unknown-study", lambda ws, tmp: ["worker", "--storage", f"sqlite:///{tmp / 'x.db'}", "--study", "nope"],
     ["no study 'nope'", "autocompress run --storage"], 2),
    ("worker-bad-storage-url", lambda ws, tmp: ["worker", "--storage", "foo://x", "--study", "s"],
     ["cannot open storage 'foo://x'", "check the URL"], 2),
    ("list-unknown-kind", lambda ws, tmp: ["list", "modles"], ["modles"], 2),
]


def _check_one_line(rc, out: str, err: str, expect: list[str], code) -> str:
    assert "Traceback" not in out + err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0, (rc, out[-2000:])
    if code is not None:
        assert rc == code, (rc, err)
    assert len(lines) == 1, lines
    for s in expect:
        assert s in lines[0], (s, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(case, env, tmp_path, capsys):
    _, build, expect, code = case
    before = {p for p in env.rglob("*") if "cache" not in p.parts}
    rc = main(build(env, tmp_path))
    cap = capsys.readouterr()
    _check_one_line(rc, cap.out, cap.err, expect, code)
    assert not (env / "PWNED_YAML").exists()
    after = {p for p in env.rglob("*") if "cache" not in p.parts}
    assert {p for p in after - before if "__pycache__" not in p.parts} == set()  # inputs' folder untouched


def test_a_model_that_cannot_export_fails_before_the_search(env, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(run_args(env, out, model=f"{env / 'models.py'}:no_export", checkpoint=str(env / "no_export.pt"))) == 3
    assert "export" in capsys.readouterr().err
    assert not (out / "trials.jsonl").exists() and not (out / "trials").exists()


SUBPROCESS_CASES = ["unknown-sampler", "space-malformed", "model-cannot-export", "checkpoint-custom-class-refused"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process(name, env, tmp_path):
    """The console entry point: one line on stderr, no traceback, no library warnings."""
    _, build, expect, code = next(c for c in CASES if c[0] == name)
    r = subprocess.run([sys.executable, "-m", "autocompress.cli", *build(env, tmp_path)], capture_output=True,
                       text=True, cwd=env, env={**os.environ, "AUTOCOMPRESS_CACHE": str(env / "cache")}, timeout=300)
    _check_one_line(r.returncode, r.stdout, r.stderr, expect, code)


def test_validate_prints_one_line_per_problem(env, capsys):
    files = [env / "profile_several.yaml", env / "misspelled.yaml", env / "space.yaml"]
    assert main(["validate", *map(str, files)]) == 1
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(lines) == 4 and "Traceback" not in cap.err + cap.out, lines
    assert sum("profile_several.yaml" in ln for ln in lines) == 3 and "sparsity.rnage" in lines[3]
    assert any("execution_provider" in ln for ln in lines) and any("intra_op_threads: got -1" in ln for ln in lines)
    assert "space.yaml: ok (search_space)" in cap.out


# ---------------------------------------------------------------- an existing run folder is never damaged
def test_incompatible_run_folder_is_refused_and_left_as_is(finished, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished, old)
    meta = yaml.safe_load((old / "run.yaml").read_text())
    meta["format_version"] = 99
    (old / "run.yaml").write_text(yaml.safe_dump(meta))
    before = _snapshot(old)
    for argv in (["resume", str(old)], ["report", str(old)], ["export", str(old), "--trial", "0", "--to", str(tmp_path / "x")]):
        assert main(argv) == 2
        line = _check_one_line(2, *capsys.readouterr(), ["format 99", "incompatible"], 2)
        assert str(old) in line
    assert _snapshot(old) == before


@pytest.mark.parametrize("over, expect", [
    ({"model": "{ws}/models.py:wrong_input"}, "model="),
    ({"space": "{ws}/reversed.yaml"}, "space="),
    ({"sampler": "tpe_"}, "unknown sampler"),
    ({"max_accuracy_drop": 5}, "constraints="),
    ({"storage": "foo://x"}, "storage="),
    ({"trials": 0}, "got 0"),
], ids=["other-model", "bad-space", "bad-sampler", "other-constraints", "other-storage", "trials-0"])
def test_a_second_bad_command_leaves_a_finished_run_intact(over, expect, finished, ws, monkeypatch, capsys):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    before = _snapshot(finished)
    over = {k: (v.format(ws=ws) if isinstance(v, str) else v) for k, v in over.items()}
    rc = main(run_args(ws, finished, study="../../escaped-study", **over))
    line = _check_one_line(rc, *capsys.readouterr(), [expect], 2)
    assert _snapshot(finished) == before, line
    # and the run still resumes with its own configuration
    assert main(["resume", str(finished)]) == 0
    assert _snapshot(finished)["trials.jsonl"] == before["trials.jsonl"]


def test_export_of_a_trial_that_does_not_exist(finished, tmp_path, capsys):
    assert main(["export", str(finished), "--trial", "7", "--to", str(tmp_path / "x")]) == 2
    _check_one_line(2, *capsys.readouterr(), ["has no trial 7", "trials: 0"], 2)


# ---------------------------------------------------------------- safety
def test_a_pickle_that_runs_code_is_refused_by_default(env, tmp_path, capsys):
    rc = main(run_args(env, tmp_path / "o", checkpoint=str(env / "evil.pt")))
    _check_one_line(rc, *capsys.readouterr(), ["evil.pt", "refused by weights_only"], 2)
    assert not (env / "PWNED").exists()


def test_trust_checkpoint_allows_a_full_pickle_with_a_warning(env, capsys):
    import torch

    from autocompress.models.loader import load_checkpoint

    ns: dict = {}
    exec(TINY_CNN_SOURCE, ns)
    model = ns["tiny_cnn"]()
    with pytest.warns(UserWarning, match="weights_only=False"):
        load_checkpoint(model, env / "custom_class.pt", trust=True)
    assert "WARNING" in capsys.readouterr().err
    ref = torch.load(env / "custom_class.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    # off by default in the config and on the command line
    from autocompress.config import RunSpec

    assert RunSpec().trust_checkpoint is False


def test_user_code_is_imported_only_when_named(env, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "imported"
    side = tmp_path / "side"
    side.mkdir()
    src = f"from pathlib import Path\nPath({str(marker)!r}).touch()\n" + TINY_CNN_SOURCE
    for name in ("models.py", "autocompress_plugins.py", "conftest_user.py"):
        (side / name).write_text(src)
    monkeypatch.chdir(side)
    missing = str(tmp_path / "none.pt")  # fails right after the model is resolved
    assert main(run_args(env, tmp_path / "o", model="resnet18", checkpoint=missing)) == 2
    assert main(["list", "models"]) == 0
    assert not marker.exists()
    # named explicitly: imported (the marker proves the check above can fail)
    assert main(run_args(env, tmp_path / "o2", model="models.py:tiny_cnn", checkpoint=missing)) == 2
    assert marker.exists()
    capsys.readouterr()


def test_names_from_configs_stay_inside_the_run_folder(finished):
    root = finished.parent
    assert sorted(p.name for p in root.iterdir()) == ["run"]
    assert not list(root.parent.glob("escaped-study*")) and not list(root.parent.parent.glob("escaped-study*"))
    meta = yaml.safe_load((finished / "run.yaml").read_text())
    assert meta["spec"]["study"] == "../../escaped-study"  # a database key, never a path
    from autocompress.config import RunSpec
    from autocompress.engine import default_run_dir

    d = default_run_dir(RunSpec(model="../../../evil/../x y.py:tiny_cnn", data="../../d/../etc.npz"))
    assert ".." not in d.name and "/" not in d.name and d.parent.name == "results"


def test_the_budget_is_said_and_a_run_naming_neither_trials_nor_timeout_gets_the_one_click_budget(env, tmp_path, capsys):
    from autocompress.config import DEFAULT_TIMEOUT_S, RunSpec, load_run_spec
    from autocompress.engine import budget_line

    default = load_run_spec()
    assert default.timeout == DEFAULT_TIMEOUT_S and default.trials == 24 and default.default_budget
    assert RunSpec().timeout == DEFAULT_TIMEOUT_S
    assert load_run_spec(trials=40).timeout is None  # a trial budget of your own: no time limit added
    assert load_run_spec(timeout=900).trials == 24 and load_run_spec(timeout=900).timeout == 900
    assert "7 min" in budget_line(default) and "names neither" in budget_line(default)
    assert "names neither" not in budget_line(default, resume=True)
    # the end-of-run re-timing is not in the budget: the line says it follows (one-click runs of 7 minutes took 10.5-11.3 here)
    assert "re-timing (3 fresh processes) and the report follow" in budget_line(default.model_copy(update={"retime_windows": 3}))
    assert "re-timing" not in budget_line(default.model_copy(update={"retime_windows": 0}))
    assert budget_line(load_run_spec(trials=40)) == "budget: 40 trials (no time limit)"
    # the deadline counts the set-up: a budget shorter than any set-up (a warm process sets this one up in ~1 s) ends
    # before the first trial and says how to go on
    main(run_args(env, tmp_path / "o", timeout=0.01, trials=3))
    out = " ".join(capsys.readouterr().out.split())  # a console may wrap long lines
    assert "budget: 3 trials or 0.01 s for the whole run" in out, out
    assert "time budget reached (timeout 0.01 s) before the first trial" in out and "autocompress resume" in out, out
    # one line for what did not run, not the seeds' own message on top (found by the README's main command on an
    # AVX2 CPU, where the teacher's training took the one-click budget)
    assert "before the space's seeds did" not in out and "not run (the budget ended" not in out, out
    assert "seeds: none of the space's 1 ran (the budget ended before the first trial)" in out, out
