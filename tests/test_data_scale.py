"""Data at scale: uint8 storage, per-batch normalisation, the memory budget and the disk-backed path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autocompress.data import clear_cache, load_data
from autocompress.data.bundle import channel_stats
from autocompress.data.images import FilePixels, memory_budget, parse_size, read_images
from autocompress.errors import ConfigError


def _folder(root: Path, per_class: int = 30, size: int = 10, seed: int = 0) -> Path:
    """Three classes of random-coloured PNGs (class = dominant channel), one subfolder per class."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("red", "green", "blue")):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            arr[..., c] = rng.integers(120, 256, (size, size), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def folder(tmp_path):
    clear_cache()
    yield _folder(tmp_path / "imgs")
    clear_cache()


def test_folder_pixels_are_uint8_and_normalise_as_the_float_path(folder):
    data = load_data(str(folder), image_size=12, seed=0)
    assert data.train.pixels.dtype == torch.uint8 and data.val.pixels.dtype == torch.uint8
    assert data.in_memory
    # the former path: decode, float / 255 over the whole split, torch statistics, normalise the whole tensor
    files = sorted(folder.rglob("*.png"))
    raw = read_images(files, 12, progress=None)  # every image, decoded as the former path did
    held = torch.cat([data.train.pixels.x, data.val.pixels.x])
    assert sorted(map(bytes, raw.flatten(1).numpy())) == sorted(map(bytes, held.flatten(1).numpy()))
    old = data.train.pixels.x.float() / 255.0
    mean, std = channel_stats(old)
    assert torch.allclose(torch.tensor(data.mean), mean, atol=1e-6)
    assert torch.allclose(torch.tensor(data.std), std, atol=1e-6)
    old_norm = (old - mean[None, :, None, None]) / std[None, :, None, None]
    assert torch.allclose(data.x_train, old_norm, atol=1e-5)
    # with the bundle's (exact) statistics the per-batch arithmetic is the same, bit for bit
    m, s = torch.tensor(data.mean)[None, :, None, None], torch.tensor(data.std)[None, :, None, None]
    assert torch.equal(data.x_train, (old - m) / s)
    got = torch.cat([x for x, _ in data.batches("train", 7)])
    assert torch.equal(got, data.x_train)
    ys = torch.cat([y for _, y in data.batches("train", 7)])
    assert torch.equal(ys, data.y_train) and len(files) == data.size("train") + data.size("val")
    idx = [5, 0, 17]
    assert torch.equal(data.take("train", idx), data.x_train[idx])
    assert data.x_calib.dtype == torch.float32 and len(data.x_calib) <= 256


def test_disk_backed_bundle_gives_the_same_batches_logits_and_accuracy(folder, monkeypatch):
    from autocompress.compress.distill import accuracy, compute_logits
    from autocompress.models.teacher import evaluate

    mem = load_data(str(folder), image_size=12, seed=0)
    monkeypatch.setenv("AUTOCOMPRESS_DATA_WORKERS", "2")  # worker processes decode (72 train images > 64)
    disk = load_data(str(folder), image_size=12, seed=0, memory_budget=0)
    assert isinstance(disk.train.pixels, FilePixels) and not disk.in_memory
    assert disk.fingerprint == mem.fingerprint  # a content hash: the same pixels whichever way they are held
    assert disk.mean == mem.mean and disk.std == mem.std
    assert torch.equal(disk.x_calib, mem.x_calib)
    order = np.random.default_rng(1).permutation(disk.size("train"))[:50]
    for (a, ya), (b, yb) in zip(disk.batches("train", 16, order), mem.batches("train", 16, order)):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    assert torch.equal(compute_logits(model, disk.train), compute_logits(model, mem.train))
    assert accuracy(model, disk.val) == accuracy(model, mem.val)
    assert evaluate(model, disk.val) == evaluate(model, mem.val)
    with pytest.raises(RuntimeError, match="read from disk"):
        disk.x_train  # noqa: B018 - never materialised silently


def test_budget_is_per_split_and_env_overridable(folder, monkeypatch):
    n_train = 72  # 90 images, 20% of each class to val
    monkeypatch.setenv("AUTOCOMPRESS_DATA_MEMORY", str(n_train * 3 * 12 * 12))
    data = load_data(str(folder), image_size=12, seed=0)
    assert data.size("train") == n_train
    assert data.train.in_memory and not data.val.in_memory
    monkeypatch.setenv("AUTOCOMPRESS_DATA_MEMORY", "1.5G")
    assert memory_budget() == int(1.5 * (1 << 30))
    assert memory_budget(123) == 123
    assert parse_size("512M") == 512 << 20 and parse_size("0") == 0
    monkeypatch.setenv("AUTOCOMPRESS_DATA_MEMORY", "lots")
    with pytest.raises(ConfigError, match="AUTOCOMPRESS_DATA_MEMORY='lots': not a size"):
        memory_budget()
    monkeypatch.delenv("AUTOCOMPRESS_DATA_MEMORY")
    assert memory_budget() > 0


def test_unreadable_image_on_the_disk_path_is_one_line(folder, monkeypatch):
    bad = folder / "red" / "999.png"
    bad.write_bytes(b"not an image")
    monkeypatch.setenv("AUTOCOMPRESS_DATA_WORKERS", "2")
    with pytest.raises(ConfigError) as e:
        load_data(str(folder), image_size=12, seed=0, memory_budget=0)
    msg = str(e.value)
    assert "999.png" in msg and "cannot be read" in msg and "\n" not in msg


def test_uint8_npz_is_held_as_uint8_with_the_float_values(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 3, 9, 9), dtype=np.uint8)
    y = np.arange(40) % 4
    np.savez(tmp_path / "u8.npz", x_train=x[:30], y_train=y[:30], x_val=x[30:], y_val=y[30:])
    np.savez(tmp_path / "f32.npz", x_train=x[:30] / np.float32(255), y_train=y[:30], x_val=x[30:] / np.float32(255),
             y_val=y[30:])
    u8, f32 = load_data(str(tmp_path / "u8.npz")), load_data(str(tmp_path / "f32.npz"))
    assert u8.train.pixels.dtype == torch.uint8 and f32.train.pixels.dtype == torch.float32
    assert torch.allclose(u8.x_train, f32.x_train, atol=1e-5) and torch.allclose(u8.x_val, f32.x_val, atol=1e-5)
    assert torch.allclose(u8.x_calib, f32.x_calib, atol=1e-5)


def test_fingerprint_is_a_content_hash(folder):
    a = load_data(str(folder), image_size=12, seed=0).fingerprint
    clear_cache()
    f = next((folder / "green").glob("*.png"))
    arr = np.asarray(Image.open(f)).copy()
    arr[0, 0, 0] ^= 1  # one pixel value changes by one
    Image.fromarray(arr).save(f)
    assert load_data(str(folder), image_size=12, seed=0).fingerprint != a


def test_samples_per_epoch_is_searched_like_the_other_distill_params():
    import optuna

    from autocompress.config import SAMPLES_PER_EPOCH, HardwareProfile, SearchSpace, load_space
    from autocompress.space import sample_candidate

    def ask(space):
        t = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        return t, sample_candidate(t, space, HardwareProfile(), {}, layer_names=["conv1"])

    base = {"sparsity": {"granularity": "uniform", "range": {"low": 0.5, "high": 0.5}}}
    t, c = ask(SearchSpace(**base, distill={"samples_per_epoch": [1000, 5000]}))
    assert t.params["kd.samples_per_epoch"] in (1000, 5000) and c.distill.samples_per_epoch == t.params["kd.samples_per_epoch"]
    t, c = ask(SearchSpace(**base, distill={"samples_per_epoch": None}))
    assert c.distill.samples_per_epoch is None and "kd.samples_per_epoch" not in t.params
    _, c = ask(load_space("default"))
    if c.distill is not None:
        assert c.distill.samples_per_epoch == SAMPLES_PER_EPOCH
    with pytest.raises(Exception, match="must be >= 1"):
        SearchSpace(**base, distill={"samples_per_epoch": 0})
