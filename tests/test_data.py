from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from autocompress.data import DataBundle, clear_cache, load_data
from autocompress.errors import ConfigError


# ---------------------------------------------------------------- digits
def test_digits_shapes_split_and_normalisation(digits):
    assert isinstance(digits, DataBundle)
    assert digits.input_shape == (3, 16, 16)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    n_train, n_val = len(digits.y_train), len(digits.y_val)
    assert n_train + n_val == 1797
    assert abs(n_val / 1797 - 0.3) < 0.01
    assert digits.x_train.shape == (n_train, 3, 16, 16) and digits.x_val.shape == (n_val, 3, 16, 16)
    assert digits.num_classes == 10 and len(digits.class_names) == 10
    # stratified: every class in val with roughly 30% of its samples
    counts = torch.bincount(digits.y_val, minlength=10)
    assert counts.min() >= 50 and counts.max() <= 56
    # normalised with train statistics
    assert abs(float(digits.x_train.mean())) < 1e-3
    assert abs(float(digits.x_train.std()) - 1.0) < 1e-2
    # calibration subset from train, bounded
    assert 0 < len(digits.x_calib) <= 256
    assert (digits.x_calib[0][None] == digits.x_train).flatten(1).all(1).any()


def test_digits_deterministic_and_memoised(digits):
    again = load_data("digits", image_size=16)
    assert again is digits  # memoised per process
    clear_cache()
    fresh = load_data("digits", image_size=16)
    assert fresh is not digits
    assert torch.equal(fresh.x_train, digits.x_train) and torch.equal(fresh.y_val, digits.y_val)
    assert fresh.fingerprint == digits.fingerprint
    other = load_data("digits", image_size=16, seed=1)
    assert other.fingerprint != digits.fingerprint
    assert not torch.equal(other.y_train, digits.y_train)


def test_digits_image_size():
    d = load_data("digits", image_size=8)
    assert d.input_shape == (3, 8, 8)


# ---------------------------------------------------------------- image folders
def _png(path, color, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _make_folder(root, classes=("cat", "dog", "eel"), per_class=5):
    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        for i in range(per_class):
            _png(root / c / f"{i}.png", tuple(int(v) for v in rng.integers(0, 255, 3)) if ci else (ci * 80, 10, 200))
    return root


def test_image_folder_split(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    d = load_data(str(root), image_size=16)
    assert d.class_names == ("cat", "dog", "eel") and d.num_classes == 3
    assert d.input_shape == (3, 16, 16)
    assert len(d.y_train) == 12 and len(d.y_val) == 3  # 80/20 per class
    assert sorted(d.y_val.tolist()) == [0, 1, 2]
    x = torch.cat([d.x_train, d.x_val])
    assert abs(float(d.x_train.mean(dim=(0, 2, 3)).abs().max())) < 1e-4 and torch.isfinite(x).all()


def test_image_folder_train_val(tmp_path):
    root = tmp_path / "tv"
    _make_folder(root / "train", per_class=4)
    _make_folder(root / "val", classes=("cat", "eel"), per_class=2)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    d = load_data(str(root), image_size=8)
    assert len(d.y_train) == 12 and len(d.y_val) == 4
    assert sorted(set(d.y_val.tolist())) == [0, 2]  # labels follow train's class order


@pytest.mark.parametrize(
    "setup, needle",
    [
        (lambda r: r.mkdir(), "no class subfolders"),
        (lambda r: (r / "a").mkdir(parents=True), "no images found"),
        (lambda r: _make_folder(r, classes=("only",)), "at least 2"),
        (lambda r: (_make_folder(r / "train"), _make_folder(r / "val", classes=("cat", "zebra"))), "zebra"),
    ],
    ids=["empty", "no-images", "one-class", "val-class-not-in-train"],
)
def test_image_folder_errors(tmp_path, setup, needle):
    root = tmp_path / "bad"
    setup(root)
    with pytest.raises(ConfigError) as e:
        load_data(str(root))
    msg = str(e.value)
    assert needle in msg and str(root.name) in msg and "\n" not in msg


def test_unreadable_image(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="broken.png"):
        load_data(str(root))


# ---------------------------------------------------------------- npz
def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    y_tr, y_va = np.arange(20) % 4, np.arange(8) % 4
    nhwc = rng.integers(0, 256, (20, 12, 12, 3), dtype=np.uint8)
    d = load_data(_npz(tmp_path / "a.npz", x_train=nhwc, y_train=y_tr, x_val=nhwc[:8], y_val=y_va), image_size=32)
    assert d.input_shape == (3, 12, 12)  # keeps its own size
    assert d.num_classes == 4 and len(d.x_calib) == 20
    assert abs(float(d.x_train.mean())) < 1e-4
    nchw = rng.random((20, 1, 10, 10)).astype(np.float32)
    d = load_data(_npz(tmp_path / "b.npz", x_train=nchw, y_train=y_tr, x_val=nchw[:8], y_val=y_va))
    assert d.input_shape == (1, 10, 10)
    nhw = rng.random((20, 4, 4)).astype(np.float32)  # smaller than 8: resized to image_size
    d = load_data(_npz(tmp_path / "c.npz", x_train=nhw, y_train=y_tr, x_val=nhw[:8], y_val=y_va), image_size=16)
    assert d.input_shape == (1, 16, 16)


def test_npz_memo_tracks_mtime(tmp_path):
    x = np.zeros((4, 3, 8, 8), np.float32)
    x[2:] = 1
    path = _npz(tmp_path / "m.npz", x_train=x, y_train=np.array([0, 0, 1, 1]), x_val=x, y_val=np.array([0, 0, 1, 1]))
    a = load_data(path)
    assert load_data(path) is a
    _npz(tmp_path / "m.npz", x_train=x, y_train=np.array([0, 1, 0, 1]), x_val=x, y_val=np.array([0, 0, 1, 1]))
    st = os.stat(path)
    os.utime(path, (st.st_atime, st.st_mtime + 10))
    b = load_data(path)
    assert b is not a and b.y_train.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize(
    "arrays, needle",
    [
        (dict(x_train=np.zeros((4, 3, 8, 8))), "y_train, x_val, y_val"),
        (dict(x_train=np.zeros((4, 3, 8, 8)), y_train=np.array([0, 1, 0]), x_val=np.zeros((2, 3, 8, 8)),
              y_val=np.array([0, 1])), "3 labels but x_train has 4"),
        (dict(x_train=np.zeros((4, 3, 8, 8)), y_train=np.array([0, 1, 0, 1]), x_val=np.zeros((2, 3, 8, 8)),
              y_val=np.array([0, 5])), "label 5 outside 0..1"),
        (dict(x_train=np.zeros((4, 3, 8, 8)), y_train=np.array([0, -1, 0, 1]), x_val=np.zeros((2, 3, 8, 8)),
              y_val=np.array([0, 1])), "label -1"),
        (dict(x_train=np.zeros((4, 5, 8, 7)), y_train=np.array([0, 1, 0, 1]), x_val=np.zeros((2, 5, 8, 7)),
              y_val=np.array([0, 1])), "channels must be 1 or 3"),
        (dict(x_train=np.zeros((4, 3, 8, 8)), y_train=np.array([0, 0, 0, 0]), x_val=np.zeros((2, 3, 8, 8)),
              y_val=np.array([0, 0])), "single class"),
    ],
    ids=["missing-keys", "count-mismatch", "label-too-big", "label-negative", "bad-channels", "one-class"],
)
def test_npz_errors(tmp_path, arrays, needle):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError) as e:
        load_data(path)
    msg = str(e.value)
    assert needle in msg and "bad.npz" in msg and "\n" not in msg


def test_missing_path_and_unsupported_type(tmp_path):
    with pytest.raises(ConfigError, match="no such file or folder") as e:
        load_data(str(tmp_path / "nope"))
    assert "nope" in str(e.value)
    csv = tmp_path / "data.csv"
    csv.write_text("1,2,3\n")
    with pytest.raises(ConfigError, match=r"unsupported file type '\.csv'"):
        load_data(str(csv))
    with pytest.raises(ConfigError, match="cannot be read as .npz"):
        load_data(str(tmp_path / "fake.npz") if (tmp_path / "fake.npz").write_text("x") else "")
    with pytest.raises(ConfigError, match="image_size"):
        load_data("digits", image_size=4)


def test_folder_memo_sees_new_images(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    a = load_data(str(root), image_size=8)
    assert load_data(str(root), image_size=8) is a
    _png(root / "cat" / "extra.png", (1, 2, 3))
    b = load_data(str(root), image_size=8)
    assert b is not a and len(b.y_train) + len(b.y_val) == 16
