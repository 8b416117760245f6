from __future__ import annotations

import time

import pytest
import torch

from autocompress.config import TeacherSpec
from autocompress.errors import ConfigError
from autocompress.models import Teacher, cache_dir_default, evaluate, get_teacher

FAST = TeacherSpec(max_epochs=2, patience=2, lr=0.1, batch_size=32, target_accuracy=0.999)


def test_cache_dir_default(tmp_cache):
    assert cache_dir_default() == tmp_cache


def test_train_then_cache(digits, tiny_model_file, tmp_path):
    spec = f"{tiny_model_file}:tiny_cnn"
    lines: list[str] = []
    t0 = time.perf_counter()
    first = get_teacher(spec, digits, train=FAST, seed=0, cache_dir=tmp_path, log=lines.append)
    t_first = time.perf_counter() - t0
    assert isinstance(first, Teacher) and first.source == "trained"
    assert first.epochs == 2 and first.train_seconds > 0
    assert first.val_accuracy > 0.4  # far above chance (0.1) after 2 epochs (0.66-0.82 over seeds)
    assert not first.model.training
    assert sum("epoch" in ln and "val_acc" in ln for ln in lines) == 2
    assert abs(first.val_accuracy - evaluate(first.model, digits.x_val, digits.y_val)) < 1e-9
    assert evaluate(first.model, digits.val) == evaluate(first.model, digits.x_val, digits.y_val)
    cached = list((tmp_path / "teachers").glob("*.pt"))
    assert len(cached) == 1 and not list((tmp_path / "teachers").glob("*.tmp"))

    t0 = time.perf_counter()
    second = get_teacher(spec, digits, train=FAST, seed=0, cache_dir=tmp_path, log=lines.append)
    t_second = time.perf_counter() - t0
    assert second.source == f"cache:{cached[0]}"
    assert second.val_accuracy == first.val_accuracy and second.epochs == first.epochs
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                 second.model.state_dict().values()))
    assert t_second < t_first / 2

    # another seed or training spec is another cache entry
    third = get_teacher(spec, digits, train=FAST.model_copy(update={"max_epochs": 1}), seed=0,
                        cache_dir=tmp_path, log=lines.append)
    assert third.source == "trained" and third.epochs == 1
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 2


def test_env_cache_and_corrupt_entry(digits, tiny_model_file, tmp_cache):
    spec = f"{tiny_model_file}:tiny_cnn"
    one = TeacherSpec(max_epochs=1)
    get_teacher(spec, digits, train=one, log=lambda s: None)
    (entry,) = (tmp_cache / "teachers").glob("*.pt")
    entry.write_bytes(b"garbage")
    lines: list[str] = []
    again = get_teacher(spec, digits, train=one, log=lines.append)
    assert again.source == "trained" and any("unreadable" in ln for ln in lines)


def test_checkpoint_teacher(digits, tiny_model_file, tmp_path):
    spec = f"{tiny_model_file}:tiny_cnn"
    trained = get_teacher(spec, digits, train=TeacherSpec(max_epochs=1), cache_dir=tmp_path, log=lambda s: None)
    ck = tmp_path / "teacher.pt"
    torch.save({"state_dict": trained.model.state_dict()}, ck)
    loaded = get_teacher(spec, digits, checkpoint=str(ck), log=lambda s: None)
    assert loaded.source == f"checkpoint:{ck}" and loaded.epochs == 0
    assert loaded.val_accuracy == pytest.approx(trained.val_accuracy)
    with pytest.raises(ConfigError, match="does not match"):
        get_teacher("resnet18", digits, checkpoint=str(ck), log=lambda s: None)


@pytest.mark.slow
def test_zoo_teacher_learns_digits(digits, tmp_path):
    """mobilenet_v3_small from scratch (BN momentum fix): well above chance in a few epochs."""
    t = get_teacher("mobilenet_v3_small", digits, train=TeacherSpec(max_epochs=4, patience=4),
                    cache_dir=tmp_path, log=lambda s: None)
    assert t.val_accuracy > 0.5


def test_in_memory_instance_is_used_as_given(digits, tiny_model_file, tmp_path):
    from autocompress.models import register_instance, resolve_model

    trained = get_teacher(f"{tiny_model_file}:tiny_cnn", digits, train=TeacherSpec(max_epochs=1),
                          cache_dir=tmp_path, log=lambda s: None)
    user_model = trained.model.train()
    name = register_instance(user_model)
    t = get_teacher(name, digits, cache_dir=tmp_path, log=lambda s: None)
    assert t.source == "instance" and t.epochs == 0 and t.info.family == "user"
    assert t.model is not user_model and user_model.training  # a copy; the caller's module is untouched
    assert t.val_accuracy == pytest.approx(trained.val_accuracy)
    with pytest.raises(ConfigError, match="no such in-memory model"):
        resolve_model("instance:Gone@0", 10, digits.input_shape)


def test_train_device_choice_here():
    from autocompress.devices import cuda_available, resolve_train_device
    from autocompress.errors import ConfigError

    assert resolve_train_device("cpu") == "cpu"
    if cuda_available():
        assert resolve_train_device("auto") == resolve_train_device("cuda") == "cuda"
    else:  # CI: no GPU
        assert resolve_train_device("auto") == resolve_train_device(None) == "cpu"
        with pytest.raises(ConfigError) as e:
            resolve_train_device("cuda")
        assert str(e.value).startswith("--train-device cuda: no CUDA GPU") and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="use one of auto, cpu, cuda"):
        resolve_train_device("tpu")


def test_run_refuses_cuda_without_a_gpu_before_making_a_folder(tmp_path):
    from autocompress.config import RunSpec
    from autocompress.devices import cuda_available
    from autocompress.engine import run

    if cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="--train-device cuda: no CUDA GPU"):
        run(RunSpec(train_device="cuda", out=str(tmp_path / "run")), log=lambda s: None)
    assert not (tmp_path / "run").exists()


MULTI_CLASS_MODEL = '''
import torch
from torch import nn

class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)
    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))

class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.se = nn.Conv2d(c, c, 3, padding=1), SE(c)
    def forward(self, x):
        return x + self.se(self.conv(x))

class Head(nn.Module):
    def __init__(self, c, n):
        super().__init__()
        self.fc = nn.Linear(c, n)
    def forward(self, x):
        return self.fc(x.mean((2, 3)))

class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 8, 3, padding=1), Block(8), Head(8, num_classes)
    def forward(self, x):
        return self.head(self.block(self.stem(x)))

def net(num_classes=10):
    return Net(num_classes)
'''


def test_a_user_model_has_the_same_signature_in_every_process(tmp_path):
    # the teacher's cache key: with several user classes it once depended on their order in a set (ids), so a
    # user's teacher was retrained by every run
    import subprocess
    import sys

    f = tmp_path / "multi.py"
    f.write_text(MULTI_CLASS_MODEL)
    code = ("import sys; from autocompress.models.loader import architecture_signature, import_callable; "
            f"print(architecture_signature(import_callable('{f}:net')[0]()))")
    sigs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(3)}
    assert len(sigs) == 1 and len(next(iter(sigs))) == 16, sigs


def test_a_checkpoint_trained_on_other_input_statistics_is_refused(digits, tiny_model_file, tmp_path):
    """Weights trained on raw 0..1 pixels, fed the default per-dataset normalisation, lose accuracy silently: the
    run stops with one line naming the preset they score well under; fed that preset, they load."""
    spec = f"{tiny_model_file}:tiny_cnn"
    raw = digits.renormalised("none", (0.0,) * 3, (1.0,) * 3)
    trained = get_teacher(spec, raw, train=FAST, seed=0, cache_dir=tmp_path, log=lambda s: None)
    ck = tmp_path / "raw_pixels.pt"
    torch.save(trained.model.state_dict(), ck)
    with pytest.raises(ConfigError) as e:
        get_teacher(spec, digits, checkpoint=str(ck), log=lambda s: None)
    msg = str(e.value)
    assert "\n" not in msg and "with --normalize dataset but" in msg and "rerun with --normalize none" in msg
    ok = get_teacher(spec, raw, checkpoint=str(ck), log=lambda s: None)
    assert ok.val_accuracy == pytest.approx(trained.val_accuracy)
    explicit = digits.renormalised("explicit", digits.mean, digits.std)  # statistics the user gave: as given
    assert get_teacher(spec, explicit, checkpoint=str(ck), log=lambda s: None).val_accuracy < trained.val_accuracy
