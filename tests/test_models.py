from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn as nn

from autocompress.errors import ConfigError
from autocompress.models import MODELS, ModelInfo, build_model, family_of, load_checkpoint, resolve_model

REQUIRED = ["resnet18", "resnet34", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
            "shufflenet_v2_x1_0", "regnet_x_400mf"]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_zoo_has_required_families():
    assert set(REQUIRED) <= set(MODELS.names())
    assert family_of("resnet18") == family_of("resnet34") == "resnet"
    assert family_of("mobilenet_v3_small") == "mobilenet_v3"
    assert family_of("my.mod:fn") == "user"


@pytest.mark.parametrize("name", sorted(MODELS.names()))
def test_zoo_builds_runs_and_shrinks(name):
    torch.manual_seed(0)
    full = build_model(name, 7, (3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert full(x).shape == (2, 7)
    # pitfall 1: every BatchNorm trains with momentum 0.1
    bns = [m for m in full.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.momentum == 0.1 for m in bns)
    # small input: the stem keeps full resolution (3x3, stride 1)
    stem = next(m for m in full.modules() if isinstance(m, nn.Conv2d))
    assert stem.stride == (1, 1) and stem.kernel_size == (3, 3)
    assert not any(isinstance(m, nn.MaxPool2d) for m in full.modules())
    p = n_params(full)
    narrow = build_model(name, 7, (3, 32, 32), width_mult=0.5)
    shallow = build_model(name, 7, (3, 32, 32), depth_mult=0.5)
    assert n_params(narrow) < 0.6 * p
    assert n_params(shallow) < p
    with torch.no_grad():
        assert narrow.eval()(x).shape == (2, 7) and shallow.eval()(x).shape == (2, 7)


def test_large_inputs_keep_standard_stem_and_other_channels():
    m = build_model("resnet18", 10, (3, 64, 64))
    assert m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2) and isinstance(m.maxpool, nn.MaxPool2d)
    g = build_model("mobilenet_v3_small", 10, (1, 16, 16)).eval()
    with torch.no_grad():
        assert g(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_resnet_keeps_spatial_size_on_32px():
    m = build_model("resnet18", 10, (3, 32, 32)).eval()
    seen = {}
    m.layer4.register_forward_hook(lambda mod, i, o: seen.update(shape=o.shape))
    with torch.no_grad():
        m(torch.randn(1, 3, 32, 32))
    assert seen["shape"][-2:] == (4, 4)
    assert 10e6 < n_params(m) < 12e6  # ~11.2 M like torchvision's resnet18


def test_half_width_resnet18_is_resnet18_at_width_half_and_its_family_scales_from_there():
    half = build_model("resnet18_x0_5", 10, (3, 32, 32))
    assert [half.get_submodule(f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3, 4)] == [32, 64, 128, 256]
    assert n_params(half) == n_params(build_model("resnet18", 10, (3, 32, 32), width_mult=0.5))
    assert family_of("resnet18_x0_5") == "resnet"
    quarter = build_model("resnet18_x0_5", 10, (3, 32, 32), width_mult=0.5)  # a family student: half of the half
    assert quarter.layer4[0].conv1.out_channels == 128


def test_build_model_errors():
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_model("resnet81", 10)
    with pytest.raises(ConfigError, match="width_mult"):
        build_model("resnet18", 10, width_mult=0)


# ---------------------------------------------------------------- resolve_model
def test_resolve_zoo():
    model, info = resolve_model("mobilenet_v3_small", 10, (3, 32, 32))
    assert info == ModelInfo("mobilenet_v3_small", "mobilenet_v3", "zoo:mobilenet_v3_small")
    assert isinstance(model, nn.Module)


def test_resolve_user_file_and_module(tiny_model_file, monkeypatch):
    model, info = resolve_model(f"{tiny_model_file}:tiny_cnn", 10, (3, 16, 16))
    assert info.family == "user" and info.source.startswith("file:") and info.name.endswith(":tiny_cnn")
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    monkeypatch.syspath_prepend(str(tiny_model_file.parent))
    model2, info2 = resolve_model("tiny_models:tiny_cnn", 10, (3, 16, 16))
    assert info2.source == "module:tiny_models:tiny_cnn" and isinstance(model2, nn.Sequential)


def test_resolve_errors(tmp_path, tiny_model_file):
    cases = [
        ("resnet1", "did you mean"),
        (f"{tmp_path}/missing.py:fn", "not found"),
        (f"{tiny_model_file}:tiny_cnm", "has no function 'tiny_cnm' (did you mean 'tiny_cnn'?)"),
        ("no_such_pkg_xyz.mod:fn", "cannot import module 'no_such_pkg_xyz.mod'"),
    ]
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nraise RuntimeError('boom')\n")
    cases.append((f"{bad}:fn", "RuntimeError: boom"))
    notmod = tmp_path / "notmod.py"
    notmod.write_text("def fn():\n    return 42\n")
    cases.append((f"{notmod}:fn", "returned int, expected a torch.nn.Module"))
    for spec, needle in cases:
        with pytest.raises(ConfigError) as e:
            resolve_model(spec, 10, (3, 16, 16))
        assert needle in str(e.value) and "\n" not in str(e.value), (spec, str(e.value))


def test_resolve_checks_output_and_forward(tiny_model_file):
    with pytest.raises(ConfigError, match=r"outputs shape \(2, 10\).*expected \(2, 5\)"):
        resolve_model(f"{tiny_model_file}:tiny_cnn", 5, (3, 16, 16))
    with pytest.raises(ConfigError, match=r"fails on input of shape \(2, 1, 16, 16\)"):
        resolve_model(f"{tiny_model_file}:tiny_cnn", 10, (1, 16, 16))


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    a = build_model("shufflenet_v2_x0_5", 10, (3, 16, 16), width_mult=0.5)
    b = build_model("shufflenet_v2_x0_5", 10, (3, 16, 16), width_mult=0.5)
    assert not torch.equal(a.fc.weight, b.fc.weight)
    for i, wrap in enumerate([lambda sd: sd, lambda sd: {"state_dict": sd}, lambda sd: {"model": sd, "epoch": 3},
                              lambda sd: {f"module.{k}": v for k, v in sd.items()}]):
        path = tmp_path / f"ck{i}.pt"
        torch.save(wrap(a.state_dict()), path)
        c = build_model("shufflenet_v2_x0_5", 10, (3, 16, 16), width_mult=0.5)
        load_checkpoint(c, path)
        assert all(torch.equal(c.state_dict()[k], v) for k, v in a.state_dict().items())


def test_checkpoint_mismatch(tmp_path):
    path = tmp_path / "r.pt"
    torch.save(build_model("resnet18", 10, (3, 16, 16), width_mult=0.25).state_dict(), path)
    with pytest.raises(ConfigError, match=r"conv1\.weight: checkpoint \(16, 3, 3, 3\), model \(32, 3, 3, 3\)") as e:
        load_checkpoint(build_model("resnet18", 10, (3, 16, 16), width_mult=0.5), path)
    assert "r.pt" in str(e.value)
    with pytest.raises(ConfigError, match=r"missing: layer1\.1\.conv1\.weight \(16, 16, 3, 3\).*unexpected: extra\.weight \(1,\)"):
        load_checkpoint(build_model("resnet18", 10, (3, 16, 16), width_mult=0.25), _with_keys(tmp_path, path))
    with pytest.raises(ConfigError, match="no such file"):
        load_checkpoint(nn.Linear(2, 2), tmp_path / "none.pt")


def _with_keys(tmp_path, path):
    sd = torch.load(path, weights_only=True)
    sd = {k: v for k, v in sd.items() if not k.startswith("layer1.1.")}
    sd["extra.weight"] = torch.zeros(1)
    out = tmp_path / "r2.pt"
    torch.save(sd, out)
    return out


class _Pickled:  # an arbitrary object: refused by weights_only loading
    pass


def test_checkpoint_weights_only_by_default(tmp_path):
    m = nn.Linear(3, 2)
    path = tmp_path / "full.pt"
    torch.save({"state_dict": m.state_dict(), "extra": _Pickled()}, path)
    with pytest.raises(ConfigError, match="weights_only.*trust_checkpoint"):
        load_checkpoint(nn.Linear(3, 2), path)
    target = nn.Linear(3, 2)
    with pytest.warns(UserWarning, match="weights_only=False"):
        load_checkpoint(target, path, trust=True)
    assert torch.equal(target.weight, m.weight)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ConfigError, match="junk.pt"):
        load_checkpoint(nn.Linear(3, 2), junk)
