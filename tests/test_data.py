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


# ---------------------------------------------------------------- folder layouts as people keep them
def _split_folder(root, splits: dict[str, dict[str, int]], ext="png"):
    """``splits``: split folder -> class -> number of images (JPEG or PNG, distinct colours)."""
    rng = np.random.default_rng(1)
    for split, classes in splits.items():
        for c, n in classes.items():
            for i in range(n):
                p = root / split / c / f"{i}.{ext}"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (9, 11), tuple(int(v) for v in rng.integers(0, 255, 3))).save(p)
    return root


ABC = {"airplane": 3, "bird": 3, "cat": 3}


@pytest.mark.parametrize("val_name", ["val", "valid", "validation", "test", "Test", "VALIDATION"])
def test_train_plus_validation_split_folder(tmp_path, val_name):
    root = _split_folder(tmp_path / "cifar", {"train": ABC, val_name: {"airplane": 1, "cat": 2}}, ext="jpg")
    d = load_data(str(root), image_size=8)
    assert d.num_classes == 3 and d.class_names == ("airplane", "bird", "cat")  # never "train" vs "test"
    assert len(d.y_train) == 9 and len(d.y_val) == 3
    assert d.y_val.tolist() == [0, 2, 2]  # labels follow train's class order
    assert d.info["layout"] == f"train+{val_name.lower()}" and d.info["val_dir"] == val_name
    assert d.info["split"] == f"train/ (9) + {val_name}/ (3) as validation"
    assert d.info["classes_without_val"] == ["bird"] and "no validation images for 1 class(es): bird" in d.info["notes"]


def test_validation_folder_preference_order(tmp_path):
    root = _split_folder(tmp_path / "three", {"train": ABC, "test": ABC, "valid": {"bird": 1}})
    d = load_data(str(root), image_size=8)
    assert d.info["val_dir"] == "valid" and len(d.y_val) == 1  # valid/ before test/
    assert d.info["unused_dirs"] == ["test"] and "not used: test/" in d.info["notes"]


def test_train_alone_is_split_seeded_and_stratified(tmp_path):
    root = _split_folder(tmp_path / "only_train", {"train": {"a": 5, "b": 10}})
    d = load_data(str(root), image_size=8)
    assert d.class_names == ("a", "b") and d.info["layout"] == "train" and d.info["val_dir"] is None
    assert len(d.y_train) == 12 and sorted(d.y_val.tolist()) == [0, 1, 1]  # 20% of each class
    assert d.info["split"] == "train/ (15) split seeded 80%/20% into 12 train / 3 val"
    from autocompress.data.folders import folder_splits

    a, b, c = folder_splits(root, 0), folder_splits(root, 0), folder_splits(root, 1)
    assert a.val_files == b.val_files and a.train_files == b.train_files  # deterministic for a seed
    assert a.val_files != c.val_files and sorted(a.val_files + a.train_files) == sorted(c.val_files + c.train_files)


@pytest.mark.parametrize(
    "splits, needle",
    [
        ({"test": ABC}, "has test/ but no train/; add a train/ folder"),
        ({"val": ABC, "Test": ABC}, "has Test/, val/ but no train/"),
        ({"train": ABC, "cat": {"x": 1}}, "mixes split folders (train/) with other folders (cat)"),
        ({"train": ABC, "val": {"dog": 1, "cat": 1}}, "val/ has classes missing from train/: dog"),
        ({"train": {"a": 2}}, "only 1 class with images"),
        ({"cifar10/train": ABC, "cifar10/test": ABC}, "holds one folder, cifar10/, with test/, train/ inside; pass --data"),
    ],
    ids=["test-alone", "val-and-test-alone", "split-and-class-mixed", "val-class-not-in-train", "one-class", "wrapped"],
)
def test_split_folder_errors(tmp_path, splits, needle):
    root = _split_folder(tmp_path / "bad", splits)
    with pytest.raises(ConfigError) as e:
        load_data(str(root))
    msg = str(e.value)
    assert needle in msg and "bad" in msg and "\n" not in msg


def test_flat_class_folders_info(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    d = load_data(str(root), image_size=8)
    assert d.class_names == ("cat", "dog", "eel") and d.info["layout"] == "classes"
    assert d.info["split"] == "class folders (15) split seeded 80%/20% into 12 train / 3 val" and d.info["notes"] == []


def test_digits_and_npz_describe_their_split(digits, tmp_path):
    assert digits.info["source"] == "digits" and "1797" in digits.info["split"]
    x = np.zeros((4, 3, 8, 8), np.float32)
    d = load_data(_npz(tmp_path / "s.npz", x_train=x, y_train=np.array([0, 1, 0, 1]), x_val=x[:2], y_val=np.array([0, 1])))
    assert d.info["split"] == "s.npz: x_train (4) + x_val (2) as validation"


def test_split_and_class_names_recorded_in_run_yaml(tmp_path, monkeypatch):
    """engine.prepare logs which folder is the validation split and writes it, with the class names, to run.yaml."""
    import yaml
    from conftest import make_workspace

    from autocompress.config import RunSpec, parse
    from autocompress.engine import prepare
    from autocompress.store import RunStore

    ws = make_workspace(tmp_path, {"kind": "search_space", "name": "q", "sparsity": None}, teacher="teacher.pt")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    root = _split_folder(tmp_path / "pets", {"train": {f"c{i}": 2 for i in range(10)}, "test": {f"c{i}": 1 for i in range(10)}})
    spec = parse(RunSpec, {"model": f"{ws / 'models.py'}:tiny_cnn", "checkpoint": str(ws / "teacher.pt"), "data": str(root),
                           "image_size": 16, "space": str(ws / "space.yaml"), "profile": str(ws / "profile.yaml"),
                           "out": str(tmp_path / "run")}, "test")
    store = RunStore(tmp_path / "run")
    store.create()
    store.write_run_yaml(spec.model_dump(mode="json"), {"versions": {}})
    lines: list[str] = []
    prepare(spec, tmp_path / "run", log=lines.append)
    assert f"data: {root}: train/ (20) + test/ (10) as validation, 10 classes, input (3, 16, 16)" in lines
    meta = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert meta["spec"]["data"] == str(root) and meta["versions"] == {}
    assert meta["data"]["class_names"] == [f"c{i}" for i in range(10)]
    assert meta["data"]["layout"] == "train+test" and meta["data"]["val_dir"] == "test"
    assert meta["data"]["train_size"] == 20 and meta["data"]["val_size"] == 10
